package bench

import (
	"bytes"
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/server/store/storetest"
)

// TestHarnessSmoke runs every scenario once at the tiny scale, on SQLite
// and (when its services are there, always under KILN_REQUIRE_ALL=1) on
// PostgreSQL + the external nats-server, so that the harness never rots.
// It checks that each scenario ran and reported, not the figures.
func TestHarnessSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("the harness smoke test starts servers and workers")
	}
	backends := []string{SQLite}
	if err := reachable(); err == nil || storetest.RequireAll() {
		backends = append(backends, Postgres)
	} else {
		t.Logf("PostgreSQL backend left out (set KILN_REQUIRE_ALL=1 to fail instead): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cfg := Config{Scale: Tiny(), Backends: backends, WorkDir: t.TempDir(), ProfileDir: t.TempDir()}
	rows, err := Run(ctx, cfg)
	require.NoError(t, err)
	for _, r := range rows {
		t.Logf("%s | %s | %s | %s %s | baseline %s | %s", r.Scenario, r.Backend, r.Metric, num(r.Value), r.Unit, num(r.Baseline), r.Note)
	}
	require.Empty(t, Failed(rows), "scenarios that failed to run")
	for _, sc := range Scenarios() {
		for _, be := range backends {
			if !sc.PerBackend && be != backends[0] {
				continue
			}
			found := false
			for _, r := range rows {
				found = found || (r.Scenario == sc.Name && r.Backend == be)
			}
			require.True(t, found, "no figure from %s on %s", sc.Name, be)
		}
	}
	var buf bytes.Buffer
	Markdown(&buf, Describe(ctx, cfg), "make bench", cfg.Scale, rows)
	require.Contains(t, buf.String(), "| scenario | backend |")
}

// reachable tells whether PostgreSQL and the external nats-server answer.
func reachable() error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	db, err := sql.Open("postgres", defaultPostgres)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := db.PingContext(ctx); err != nil {
		return err
	}
	nc, err := nats.Connect(nats.DefaultURL, nats.Timeout(3*time.Second))
	if err != nil {
		return err
	}
	nc.Close()
	return nil
}

func TestMarkdownSaysWhatWasMissed(t *testing.T) {
	rows := []Row{
		{Scenario: "3. End-to-end throughput", Backend: SQLite, Metric: "noop completed", Value: 40, Unit: "req/s", Baseline: 100, Target: "≥ 50% of the baseline pipeline", Met: Met(false), Note: "profile: x.pprof"},
		{Scenario: "7. Footprint", Backend: SQLite, Metric: "idle worker RSS", Value: 20, Unit: "MB", Target: "< 30 MB", Met: Met(true)},
		{Scenario: "6. Abort latency", Backend: SQLite, Metric: "failed", Note: "boom | bang"},
	}
	var buf bytes.Buffer
	Markdown(&buf, Machine{Cores: 2, Go: "go1.26"}, "make bench", Tiny(), rows)
	out := buf.String()
	require.Contains(t, out, "| 40.0 req/s | 100 req/s | 40% |")
	require.Contains(t, out, "**no**")
	require.Contains(t, out, "## Missed targets")
	require.Equal(t, 1, strings.Count(out, "profile: x.pprof"))
	require.Contains(t, out, "failed to run: boom | bang")
	require.Equal(t, 1, strings.Count(out, "**failed**"))
}
