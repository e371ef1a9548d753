// Command kiln-bench measures Kiln beside the raw limits of its engines and
// writes a Markdown report (make bench; docs/benchmarks.md).
package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kiln-ci/kiln/bench"
	"github.com/kiln-ci/kiln/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := command().ExecuteContext(ctx); err != nil {
		os.Exit(1)
	}
}

func command() *cobra.Command {
	var (
		cfg      bench.Config
		scale    string
		out      string
		logLevel string
	)
	cmd := &cobra.Command{
		Use:   "kiln-bench",
		Short: "Measure Kiln's throughput, latency and scale beside the raw limits of its engines",
		Long: `kiln-bench runs the benchmark scenarios (baseline, submit, e2e, latency,
scheduler, abort, footprint) on SQLite + embedded NATS and/or PostgreSQL + an
external nats-server, and writes a Markdown table to stdout and to --out.
Ratios to the raw engines, measured in the same run, are the figures to
compare; absolute times on a shared machine are noise.

It exits non-zero when a scenario fails to run. A missed target is reported
in the table, not as a failure.`,
		Example: `  kiln-bench --backends sqlite,postgres --out docs/benchmarks.md
  kiln-bench --scale tiny --scenarios baseline,e2e --out -`,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := config.Logger(logLevel, "auto", os.Stderr)
			if err != nil {
				return err
			}
			cfg.Log = log
			switch scale {
			case "full":
				cfg.Scale = bench.Full()
			case "tiny":
				cfg.Scale = bench.Tiny()
			default:
				return fmt.Errorf("--scale %q: want full or tiny", scale)
			}
			for _, be := range cfg.Backends {
				if be != bench.SQLite && be != bench.Postgres {
					return fmt.Errorf("--backends: %q is neither sqlite nor postgres", be)
				}
			}
			known := map[string]bool{}
			for _, sc := range bench.Scenarios() {
				known[sc.Key] = true
			}
			for _, s := range cfg.Scenarios {
				if !known[s] {
					return fmt.Errorf("--scenarios: no scenario %q", s)
				}
			}
			if cfg.WorkDir, err = os.MkdirTemp("", "kiln-bench-"); err != nil {
				return err
			}
			defer os.RemoveAll(cfg.WorkDir)
			if cfg.ProfileDir != "" {
				if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
					return err
				}
			}
			rows, err := bench.Run(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			var buf bytes.Buffer
			bench.Markdown(&buf, bench.Describe(cmd.Context(), cfg), rerun(os.Args[1:]), cfg.Scale, rows)
			os.Stdout.Write(buf.Bytes())
			if out != "" && out != "-" {
				if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
					return err
				}
				log.Info().Str("file", out).Msg("report written")
			}
			if failed := bench.Failed(rows); len(failed) > 0 {
				return fmt.Errorf("%d scenario(s) failed to run", len(failed))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&scale, "scale", "full", "full (the documented targets) or tiny (a smoke test in seconds)")
	f.StringSliceVar(&cfg.Backends, "backends", []string{bench.SQLite, bench.Postgres}, "sqlite (SQLite + embedded NATS) and/or postgres (PostgreSQL + external nats-server)")
	f.StringVar(&cfg.DatabaseURL, "database-url", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "PostgreSQL server; each scenario uses a fresh schema, dropped at the end")
	f.StringVar(&cfg.NATSURL, "nats-url", "nats://127.0.0.1:4222", "external nats-server (JetStream) of the postgres backend")
	f.StringSliceVar(&cfg.Scenarios, "scenarios", nil, "only these: baseline, submit, e2e, latency, scheduler, abort, footprint (default all; e2e's target needs baseline)")
	f.StringVar(&cfg.ProfileDir, "profile-dir", "bench-profiles", "CPU profiles of scenarios that miss their target")
	f.StringVar(&cfg.KilnServer, "kiln-server", "", "kiln-server binary for the footprint scenario (default: built from this tree)")
	f.StringVar(&cfg.KilnWorker, "kiln-worker", "", "kiln-worker binary for the footprint scenario (default: built from this tree)")
	f.StringVar(&out, "out", "docs/benchmarks.md", "also write the report here (- for stdout only)")
	f.StringVar(&logLevel, "log-level", "info", "progress on stderr: debug, info, warn or error")
	return cmd
}

// rerun is the command that repeats this run: KILN_BENCH_RERUN when make
// bench set it, else this command line.
func rerun(args []string) string {
	if r := os.Getenv("KILN_BENCH_RERUN"); r != "" {
		return r
	}
	return strings.TrimSpace("kiln-bench " + strings.Join(args, " "))
}
