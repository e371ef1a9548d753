// Command kiln-worker is the worker daemon of a build or lab machine.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/kiln-ci/kiln/config"
	"github.com/kiln-ci/kiln/worker"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newCommand().ExecuteContext(ctx); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "kiln-worker:", err)
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	var cfg worker.Config
	var configFile, logLevel, logFormat string
	cmd := &cobra.Command{
		Use:   "kiln-worker",
		Short: "Kiln worker daemon: registers, takes assignments over NATS and runs tasks",
		Long: "kiln-worker registers with a kiln-server (generating its token on first start), waits\n" +
			"until an admin enables it, then runs the work requests assigned to it. Every option is\n" +
			"also an environment variable KILN_<OPTION> and a key in the YAML config file (--config).",
		SilenceUsage: true,
		Args:         cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := config.Apply(cmd.Flags(), "KILN_", configFile, cmd.Flags().Changed("config")); err != nil {
				return err
			}
			log, err := config.Logger(logLevel, logFormat, os.Stderr)
			if err != nil {
				return err
			}
			cfg.Logger = log
			return worker.Run(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "/etc/kiln/worker.conf", "YAML config file (keys are option names); the default is read when it exists, a file named here must exist")
	f.StringVar(&cfg.APIURL, "api-url", "http://127.0.0.1:8080/api", "the server's API URL")
	f.StringVar(&cfg.NATSURL, "nats-url", "", "NATS URL (default: the one the server advertises)")
	f.StringVar(&cfg.TokenFile, "token-file", "/var/lib/kiln-worker/token", "file holding the worker's token (created, mode 0600, on first start)")
	f.StringVar(&cfg.ActivationTokenFile, "activation-token-file", "/etc/kiln/activation-token", "one-time activation token from 'kiln-server admin worker create'; used once, then removed")
	f.StringVar(&cfg.Name, "name", "", "worker name (default: the host name)")
	f.IntVar(&cfg.Concurrency, "concurrency", 1, "work requests run at once")
	f.StringVar(&cfg.WorkerType, "worker-type", "external", "external, celery or signing")
	f.StringVar(&cfg.WorkDir, "work-dir", "", "directory for the runs' working directories (default: work/ next to the token file)")
	f.DurationVar(&cfg.Grace, "grace-period", 10*time.Second, "time a killed command gets between SIGTERM and SIGKILL")
	f.StringVar(&cfg.CgroupParent, "cgroup-parent", "", "cgroup v2 directory for the runs' cgroups (default: kiln/ below the worker's own cgroup)")
	f.StringVar(&cfg.BuildUser, "build-user", "", "unprivileged user (with a subuid/subgid range) that sbuild, mmdebstrap and lintian run as when the worker runs as root")
	f.StringVar(&cfg.ScratchDir, "scratch-dir", "", "directory for build trees and unpacked build environments, reachable by the build user; a tmpfs makes builds faster (default: $TMPDIR or /tmp)")
	f.StringVar(&cfg.CacheDir, "cache-dir", "", "cache of build environment tarballs and other shared inputs, by SHA-256, readable by the build user (default: cache/ next to the work directory)")
	f.Int64Var(&cfg.CacheMaxBytes, "cache-max-bytes", 20<<30, "size cap of the cache; least recently used files are evicted first")
	f.StringVar(&cfg.DevicesFile, "devices-file", "", "YAML file of the devices under test this lab worker controls (see docs/lab.md)")
	f.Int64Var(&cfg.LiveLogMax, "live-log-max", 64<<20, "bytes of a run's output streamed as its live log; the rest is only in its debug logs")
	f.StringVar(&logLevel, "log-level", "info", "trace, debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "auto", "json, console, or auto (console on a terminal)")
	return cmd
}
