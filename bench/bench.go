// Package bench is Kiln's benchmark harness (cmd/kiln-bench, make bench): it
// measures Kiln and, in the same run, the raw limits of the engines under it
// (the SQL a request's life needs, a JetStream round trip), and reports
// ratios, which stay meaningful on shared machines where absolute times do
// not.
package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/rs/zerolog"
)

// Backend names.
const (
	SQLite   = "sqlite"   // SQLite + embedded NATS
	Postgres = "postgres" // PostgreSQL + an external nats-server
)

// Scale sizes every scenario; Full is the documented run, Tiny the smoke
// test make test runs so that the harness never rots.
type Scale struct {
	Name string
	// Duration of each sustained phase (throughput, the baselines).
	Duration time.Duration
	// Conns is N, the baselines' database connections.
	Conns int
	// MsgSize is the size of the baseline JetStream messages (that of an
	// assignment).
	MsgSize int
	// Clients is K, concurrent submitting API clients.
	Clients int
	// Workers is W, in-process workers, each of Concurrency C.
	Workers, Concurrency int
	// LatencySamples per latency measurement.
	LatencySamples int
	// Pending are the pending-request counts of the scheduler curve, over
	// Shapes task/version/architecture shapes and SimWorkers simulated
	// worker records.
	Pending            []int
	Shapes, SimWorkers int
	// AbortRuns runs of AbortChildren children each are aborted.
	AbortRuns, AbortChildren int
	// FootprintWorkers simulated workers heartbeat to the measured server.
	FootprintWorkers int
}

// Full is the scale the targets are stated for.
func Full() Scale {
	return Scale{Name: "full", Duration: 20 * time.Second, Conns: 8, MsgSize: 128, Clients: 8, Workers: 4, Concurrency: 8,
		LatencySamples: 200, Pending: []int{1000, 10000, 100000}, Shapes: 50, SimWorkers: 1000,
		AbortRuns: 20, AbortChildren: 50, FootprintWorkers: 1000}
}

// Tiny runs every scenario in seconds.
func Tiny() Scale {
	return Scale{Name: "tiny", Duration: time.Second, Conns: 2, MsgSize: 128, Clients: 2, Workers: 1, Concurrency: 2,
		LatencySamples: 5, Pending: []int{100, 300}, Shapes: 5, SimWorkers: 20,
		AbortRuns: 2, AbortChildren: 5, FootprintWorkers: 20}
}

// Config is one harness run.
type Config struct {
	Scale Scale
	// Backends to measure, SQLite and/or Postgres.
	Backends []string
	// DatabaseURL is the PostgreSQL server; each scenario gets a fresh
	// schema on it.
	DatabaseURL string
	// NATSURL is the external nats-server of the Postgres backend.
	NATSURL string
	// Scenarios, when set, run only these (by Scenario.Key).
	Scenarios []string
	// ProfileDir, when set, receives a CPU profile of every scenario that
	// misses its target.
	ProfileDir string
	// KilnServer and KilnWorker are the binaries the footprint scenario
	// runs (built by kiln-bench when empty).
	KilnServer, KilnWorker string
	// WorkDir holds data directories; removed by the caller.
	WorkDir string
	Log     zerolog.Logger
}

// Row is one measured figure of the report.
type Row struct {
	Scenario string
	Backend  string
	Metric   string
	Value    float64
	Unit     string
	// Baseline, when not zero, is the raw engine figure Value is compared
	// with; Ratio = Value / Baseline.
	Baseline float64
	// Target states the goal in words ("≥ 50% of baseline"); Met is nil
	// when the row has no target.
	Target string
	Met    *bool
	// Note is free text: a profile's path, the reason a target is missed.
	Note string
}

// Ratio is Value / Baseline, or 0 without a baseline.
func (r Row) Ratio() float64 {
	if r.Baseline == 0 {
		return 0
	}
	return r.Value / r.Baseline
}

// Met returns a pointer to ok, for Row.Met.
func Met(ok bool) *bool { return &ok }

// Scenario is one numbered scenario of the issue.
type Scenario struct {
	// Key selects it on the command line (baseline, submit, e2e, latency,
	// scheduler, abort, footprint).
	Key  string
	Name string
	// PerBackend scenarios run once for each backend; the others once.
	PerBackend bool
	Run        func(ctx context.Context, e *Env) ([]Row, error)
}

// Scenarios lists them in the report's order.
func Scenarios() []Scenario {
	return []Scenario{
		{Key: "baseline", Name: "1. Baseline (raw engines)", PerBackend: true, Run: runBaseline},
		{Key: "submit", Name: "2. Submit throughput", PerBackend: true, Run: runSubmit},
		{Key: "e2e", Name: "3. End-to-end throughput", PerBackend: true, Run: runEndToEnd},
		{Key: "latency", Name: "4. Latency", PerBackend: true, Run: runLatency},
		{Key: "scheduler", Name: "5. Scheduler scale", PerBackend: true, Run: runSchedulerScale},
		{Key: "abort", Name: "6. Abort latency", Run: runAbort},
		{Key: "footprint", Name: "7. Footprint", Run: runFootprint},
	}
}

// Run runs the selected scenarios and returns their rows. A scenario that
// fails is reported as a row with its error and the run goes on.
func Run(ctx context.Context, cfg Config) ([]Row, error) {
	if len(cfg.Backends) == 0 {
		cfg.Backends = []string{SQLite}
	}
	shared := &shared{}
	defer shared.close()
	var rows []Row
	for _, sc := range Scenarios() {
		if len(cfg.Scenarios) > 0 && !contains(cfg.Scenarios, sc.Key) {
			continue
		}
		backends := cfg.Backends
		if !sc.PerBackend {
			backends = backends[:1]
		}
		for _, be := range backends {
			if ctx.Err() != nil {
				return rows, ctx.Err()
			}
			e := &Env{Config: cfg, Backend: be, Scenario: sc, shared: shared}
			cfg.Log.Info().Str("scenario", sc.Name).Str("backend", be).Msg("running")
			start := time.Now()
			got, err := e.run(ctx)
			e.cleanup()
			if err != nil {
				got = append(got, Row{Scenario: sc.Name, Backend: be, Metric: "failed", Note: err.Error()})
				cfg.Log.Error().Err(err).Str("scenario", sc.Name).Str("backend", be).Msg("scenario failed")
			}
			for i := range got {
				got[i].Scenario, got[i].Backend = sc.Name, be
			}
			cfg.Log.Info().Str("scenario", sc.Name).Str("backend", be).Dur("took", time.Since(start)).Msg("done")
			rows = append(rows, got...)
		}
	}
	return rows, nil
}

// Failed lists the rows that record a failed scenario.
func Failed(rows []Row) []Row {
	var out []Row
	for _, r := range rows {
		if r.Metric == "failed" {
			out = append(out, r)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (e *Env) run(ctx context.Context) (rows []Row, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return e.Scenario.Run(ctx, e)
}
