// Package cli is the kiln-worker command: it reads the options (flags,
// KILN_* variables, the YAML config file), sets up logging, turns SIGTERM
// and SIGINT into a drain (the first) and a stop (the second), and calls
// worker.Run. It holds no behaviour of the worker itself. cmd/kiln-worker
// runs it with the default tasks; a test binary can give it more.
package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/kiln-ci/kiln/config"
	"github.com/kiln-ci/kiln/tasks"
	"github.com/kiln-ci/kiln/worker"
)

// Main runs kiln-worker with args (without the program name) and the tasks
// of registry (nil: tasks.Default()), and returns the exit status.
func Main(args []string, registry *tasks.Registry) int {
	cmd := Command(registry)
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "kiln-worker:", err)
		return 1
	}
	return 0
}

// Command returns the kiln-worker command, running the tasks of registry
// (nil: tasks.Default()).
func Command(registry *tasks.Registry) *cobra.Command {
	var cfg worker.Config
	var configFile, logLevel, logFormat string
	cmd := &cobra.Command{
		Use:   "kiln-worker",
		Short: "Kiln worker daemon: registers, takes assignments over NATS and runs tasks",
		Long: "kiln-worker registers with a kiln-server (generating its token on first start), waits\n" +
			"until an admin enables it, then runs the work requests assigned to it. Every option is\n" +
			"also an environment variable KILN_<OPTION> and a key in the YAML config file (--config).\n" +
			"\n" +
			"SIGTERM or SIGINT drains the worker: it takes no new work, lets the running work finish\n" +
			"and report, then exits. A second SIGTERM or SIGINT stops the running work now (SIGTERM,\n" +
			"--grace-period, SIGKILL) and hands it back to the server, which runs it again; later\n" +
			"signals are ignored meanwhile. A result the server could not take yet stays in the\n" +
			"journal (--journal-dir) and is sent at the next start; after a crash, the next start\n" +
			"kills what the runs left and hands them back.",
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
			cfg.Registry = registry
			ctx, stop := context.WithCancel(context.Background())
			defer stop()
			drain, release := onSignals(stop, log)
			defer release()
			cfg.Drain = drain
			return worker.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "/etc/kiln/worker.conf", "YAML config file (keys are option names); the default is read when it exists, a file named here must exist")
	f.StringVar(&cfg.APIURL, "api-url", "http://127.0.0.1:8080/api", "the server's API URL")
	f.StringVar(&cfg.NATSURL, "nats-url", "", "NATS URL (default: the one the server advertises)")
	f.StringVar(&cfg.NATSCreds, "nats-creds", "", "NATS credentials file, for an external NATS that uses accounts (default: the worker's token on Kiln's embedded NATS)")
	f.StringVar(&cfg.TokenFile, "token-file", "/var/lib/kiln-worker/token", "file holding the worker's token (created, mode 0600, on first start)")
	f.StringVar(&cfg.ActivationTokenFile, "activation-token-file", "/etc/kiln/activation-token", "one-time activation token from 'kiln-server admin worker create'; used once, then removed")
	f.StringVar(&cfg.Name, "name", "", "worker name (default: the host name)")
	f.IntVar(&cfg.Concurrency, "concurrency", 1, "work requests run at once")
	f.StringVar(&cfg.WorkerType, "worker-type", "external", "external, celery or signing")
	f.StringVar(&cfg.WorkDir, "work-dir", "", "directory for the runs' working directories (default: work/ next to the token file)")
	f.StringVar(&cfg.JournalDir, "journal-dir", "", "journal of the runs (their process groups and cgroups, results not yet sent), read at start to clean up after a crash (default: journal/ next to the token file)")
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

// onSignals turns SIGTERM and SIGINT into the worker's shutdown protocol:
// the first closes the returned drain channel, the second calls stop (the
// running work is stopped and handed back). Later ones are logged and
// ignored until release is called when the worker has returned: with
// Go's default handling back, a third signal (systemctl stop during a
// manual drain) would kill the worker in the middle of handing back.
func onSignals(stop context.CancelFunc, log zerolog.Logger) (drain <-chan struct{}, release func()) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, os.Interrupt)
	drained := make(chan struct{})
	finished := make(chan struct{})
	var once sync.Once
	go func() {
		defer signal.Stop(sigs)
		select {
		case sig := <-sigs:
			log.Info().Stringer("signal", sig).Msg("signal received: draining; a second one stops the running work now")
			close(drained)
		case <-finished:
			return
		}
		select {
		case sig := <-sigs:
			log.Warn().Stringer("signal", sig).Msg("second signal received: stopping the running work now")
			stop()
		case <-finished:
			return
		}
		for {
			select {
			case sig := <-sigs:
				log.Warn().Stringer("signal", sig).Msg("signal received while stopping: the running work is being stopped and handed back")
			case <-finished:
				return
			}
		}
	}()
	return drained, func() { once.Do(func() { close(finished) }) }
}
