// Package cli is the kiln-server command, shared by cmd/kiln-server and
// the test binaries that add tasks of their own.
package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/kiln-ci/kiln/config"
	"github.com/kiln-ci/kiln/server"
	"github.com/kiln-ci/kiln/server/admin"
	"github.com/kiln-ci/kiln/server/scheduler"
	"github.com/kiln-ci/kiln/server/store"
	"github.com/kiln-ci/kiln/tasks"
)

// Main runs kiln-server with args (without the program name) and returns
// its exit status; SIGINT and SIGTERM stop the server.
func Main(args []string, registry *tasks.Registry) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := Command(registry)
	cmd.SetArgs(args)
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "kiln-server:", err)
		return 1
	}
	return 0
}

// Command is kiln-server's cobra command, running the tasks of registry
// (nil: tasks.Default()).
func Command(registry *tasks.Registry) *cobra.Command {
	cfg := server.Config{Registry: registry}
	var configFile, logLevel, logFormat string
	root := &cobra.Command{
		Use:   "kiln-server",
		Short: "Kiln server: REST API, scheduler and NATS dispatch",
		Long: "kiln-server stores work requests, schedules them onto workers and dispatches them over\n" +
			"NATS JetStream. Every option is also an environment variable KILN_<OPTION> (for example\n" +
			"KILN_DATABASE_URL) and a key in the YAML config file (--config).",
		SilenceUsage: true,
		Args:         cobra.NoArgs,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			// Shell completion needs no configuration, and a user who
			// may not read the config file still gets completions.
			if cmd.Name() == cobra.ShellCompRequestCmd || cmd.Name() == cobra.ShellCompNoDescRequestCmd ||
				(cmd.Parent() != nil && cmd.Parent().Name() == "completion") {
				return nil
			}
			// Root's flag set holds every option, so one pass covers the
			// server and the admin commands alike.
			return config.Apply(cmd.Root().Flags(), "KILN_", configFile, cmd.Root().Flags().Changed("config"))
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := config.Logger(logLevel, logFormat, os.Stderr)
			if err != nil {
				return err
			}
			cfg.Logger = log
			return server.Run(cmd.Context(), cfg)
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&configFile, "config", "/etc/kiln/server.conf", "YAML config file (keys are option names); the default is read when it exists, a file named here must exist")
	pf.StringVar(&cfg.DataDir, "data-dir", "kiln-data", "directory for SQLite, the embedded JetStream store and artifacts")
	pf.StringVar(&cfg.DatabaseURL, "database-url", "", "postgres://… for PostgreSQL; empty for SQLite in the data directory")

	f := root.Flags()
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:8080", "HTTP listen address")
	f.StringVar(&cfg.TLSCert, "tls-cert", "", "PEM certificate chain: serve HTTPS (with --tls-key)")
	f.StringVar(&cfg.TLSKey, "tls-key", "", "PEM private key of --tls-cert")
	f.StringVar(&cfg.PublicURL, "public-url", "", "external base URL (for absolute links); default: from each request")
	f.StringVar(&cfg.NATSURL, "nats-url", "", "external NATS URL; empty starts an embedded nats-server")
	f.StringVar(&cfg.NATSListen, "nats-listen", "127.0.0.1:4223", "listen address of the embedded nats-server")
	f.StringVar(&cfg.NATSTLSCert, "nats-tls-cert", "", "PEM certificate chain: the embedded nats-server requires TLS (with --nats-tls-key)")
	f.StringVar(&cfg.NATSTLSKey, "nats-tls-key", "", "PEM private key of --nats-tls-cert")
	f.StringVar(&cfg.NATSCreds, "nats-creds", "", "NATS credentials file for an external NATS that uses accounts")
	f.StringVar(&cfg.NATSAdvertise, "nats-advertise", "", "NATS URL given to workers (default: --nats-url or the embedded server's)")
	f.StringVar(&cfg.NATSPrefix, "nats-prefix", "kiln", "prefix of every NATS subject and stream name")
	f.IntVar(&cfg.NATSReplicas, "nats-replicas", 1, "JetStream stream replicas (3 on a 3-node cluster)")
	f.Int64Var(&cfg.MaxBodyBytes, "max-body-bytes", 1<<20, "largest accepted request body; larger bodies get 413")
	f.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", server.DefaultHeartbeatInterval, "how often workers heartbeat")
	f.DurationVar(&cfg.HeartbeatTimeout, "heartbeat-timeout", server.DefaultHeartbeatTimeout, "a worker silent this long is disconnected")
	f.DurationVar(&cfg.WorkerLostAfter, "worker-lost-after", server.DefaultWorkerLostAfter, "a worker silent this long gets no new assignments")
	f.DurationVar(&cfg.SchedulerSweep, "scheduler-sweep", server.DefaultSchedulerSweep, "period of the scheduler's safety-net pass")
	f.DurationVar(&cfg.TaskTimeout, "task-timeout", server.DefaultTaskTimeout, "run-time limit of requests whose task data sets no timeout")
	f.Var(&durationMap{m: &cfg.TaskTimeouts}, "task-timeouts", "per-task run-time limits, e.g. noop=1h,sbuild=12h")
	f.DurationVar(&cfg.LeaseTimeout, "lease-timeout", server.DefaultLeaseTimeout, "a request whose worker has not heartbeated it for this long is taken back and retried (keep it above heartbeat-timeout)")
	f.IntVar(&cfg.WorkerLostRetries, "worker-lost-retries", server.DefaultWorkerLostRetries, "automatic retries of a request whose worker was lost (-1: none); past them it ends in error, reason worker-lost")
	f.IntVar(&cfg.InfrastructureRetries, "infrastructure-retries", server.DefaultInfrastructureRetries, "automatic retries, on another device, of a request that ended in an infrastructure error (-1: none)")
	f.StringVar(&cfg.Devices.PreJob, "device-prejob", scheduler.PreJobDirty, "special task before a job takes a device: always (verify; cleanup when dirty), dirty (cleanup a device a job used) or never")
	f.DurationVar(&cfg.Devices.HealthCheckInterval, "device-health-check-interval", scheduler.DefaultHealthCheckInterval, "verify a good device when its last check is older than this (negative: never)")
	f.IntVar(&cfg.Devices.HealthCheckJobs, "device-health-check-jobs", 0, "verify a good device after this many jobs since its last check (0: never)")
	f.DurationVar(&cfg.Devices.BadRecheck, "device-bad-recheck", scheduler.DefaultBadRecheck, "verify a bad device again this long after its last check; it returns to service when it passes (negative: never)")
	f.DurationVar(&cfg.Devices.TaskTimeout, "device-task-timeout", scheduler.DefaultDeviceTaskTimeout, "run-time limit of each device special task (verify, cleanup, reset, repair, provision)")
	f.DurationVar(&cfg.KillConfirmTimeout, "kill-confirm-timeout", server.DefaultKillConfirmTimeout, "how long a worker has to confirm that an aborted run is gone before it is flagged")
	f.Int64Var(&cfg.LogMaxBytes, "log-max-bytes", 1<<30, "size cap of the live-log stream (oldest chunks go first)")
	f.DurationVar(&cfg.LogMaxAge, "log-max-age", 7*24*time.Hour, "how long live logs are kept")
	f.Int64Var(&cfg.ArtifactMaxFileBytes, "artifact-max-file-bytes", server.DefaultArtifactMaxFileBytes, "largest artifact file accepted; an artifact declaring a larger one gets 413")
	f.DurationVar(&cfg.ArtifactGCInterval, "artifact-gc-interval", server.DefaultArtifactGCInterval, "period of the artifact garbage collector (expired artifacts, unused files)")
	f.StringVar(&cfg.Scope, "scope", "debusine", "the scope this server serves (X-Debusine-Scope)")
	f.StringVar(&cfg.Workspace, "workspace", "System", "default workspace of new work requests")
	f.BoolVar(&cfg.Dev, "dev", false, "single-node development mode: local worker, a 'dev' admin user, DATA_DIR/client.ini, --web-anonymous")
	f.BoolVar(&cfg.WebAnonymous, "web-anonymous", false, "let visitors of the web dashboard read every page without logging in (actions always need a login)")
	f.StringVar(&logLevel, "log-level", "info", "trace, debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "auto", "json, console, or auto (console on a terminal)")

	root.AddCommand(admin.Command(func(ctx context.Context) (*store.Store, error) {
		return store.Open(ctx, cfg.DatabaseURL, cfg.DataDir)
	}))
	return root
}

// durationMap is a flag of TASK=DURATION pairs separated by commas.
type durationMap struct{ m *map[string]time.Duration }

func (d *durationMap) String() string {
	if d.m == nil || *d.m == nil {
		return ""
	}
	parts := make([]string, 0, len(*d.m))
	for k, v := range *d.m {
		parts = append(parts, k+"="+v.String())
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func (d *durationMap) Set(s string) error {
	m := map[string]time.Duration{}
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("%q: use TASK=DURATION", kv)
		}
		dur, err := time.ParseDuration(v)
		if err != nil || dur <= 0 {
			return fmt.Errorf("%q: %q is not a positive duration", kv, v)
		}
		m[strings.TrimSpace(k)] = dur
	}
	*d.m = m
	return nil
}

func (d *durationMap) Type() string { return "task=duration,..." }
