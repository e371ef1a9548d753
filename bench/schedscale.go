package bench

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/kiln-ci/kiln/bus"
	"github.com/kiln-ci/kiln/server/scheduler"
	"github.com/kiln-ci/kiln/server/store"
	"github.com/kiln-ci/kiln/tasks"
	"github.com/kiln-ci/kiln/tasks/taskstest"
)

// Parameters of the scheduler scenario.
const (
	// schedFreeEvery: one simulated worker in this many (the ones whose
	// index is 2 modulo it, a mix of architectures that the first shapes
	// ask for) has one free slot; the others are busy to the brim, as in a
	// farm with a backlog where passes follow completions.
	schedFreeEvery = 10
	// schedWarmPasses are timed after the first pass, each on the same
	// data (the pass's assignments withdrawn in between).
	schedWarmPasses = 3
	// schedTarget is the goal for one pass with 100,000 pending requests.
	schedTarget = 100 * time.Millisecond
	// schedBudget: a first pass slower than this is the figure on its own,
	// without the further passes, so that the run stays bounded.
	schedBudget = 5 * time.Second
)

// runSchedulerScale times one pass of the real scheduler over
// Scale.Pending pending requests of Scale.Shapes shapes, with
// Scale.SimWorkers simulated connected workers of varied metadata, on a
// fresh database for each count.
func runSchedulerScale(ctx context.Context, e *Env) ([]Row, error) {
	reg := tasks.Default()
	shapes, err := simShapes(reg, max(e.Scale.Shapes, 1))
	if err != nil {
		return nil, err
	}
	pending := slices.Clone(e.Scale.Pending)
	slices.Sort(pending)
	if len(pending) == 0 {
		return nil, fmt.Errorf("%w: no pending counts in scale %s", errSkip, e.Scale.Name)
	}
	var rows []Row
	points := make([]schedPoint, len(pending))
	for i, n := range pending {
		largest := i == len(pending)-1
		pt, err := schedulerPoint(ctx, e, reg, shapes, n, largest && n >= 100000)
		if err != nil {
			return rows, fmt.Errorf("%d pending: %w", n, err)
		}
		points[i] = pt
		what := fmt.Sprintf("median of %d passes on the same data (assignments withdrawn, worker heartbeats renewed between them; shape cache warm); "+
			"first pass %.1f ms; store.Workers alone %.1f ms, store.WaitingShapes %.1f ms",
			pt.passes, schedMillis(pt.cold), schedMillis(pt.workersRead), schedMillis(pt.shapesRead))
		if pt.passes == 0 {
			what = fmt.Sprintf("first pass only (over %s, so not repeated)", schedBudget)
		}
		row := Row{
			Metric: fmt.Sprintf("one pass, %d pending", n),
			Value:  schedMillis(pt.warm),
			Unit:   "ms",
			Note: fmt.Sprintf("%s; each pass assigned %d (%d free slots among %d busy workers, %d shapes); set-up %s",
				what, pt.assigned, pt.free, pt.workers, len(shapes), pt.setup.Round(time.Millisecond)),
		}
		if largest && n >= 100000 {
			row.Target = fmt.Sprintf("< %d ms", schedTarget.Milliseconds())
			row.Met = Met(pt.warm < schedTarget)
			if pt.profile != "" {
				row.Note += "; profile of the first pass: " + pt.profile
			}
		}
		rows = append(rows, row)
	}
	if len(points) >= 2 {
		// Like with like: the repeated passes' medians, or the first
		// passes when a count was too slow to repeat.
		which, at := "median passes", func(p schedPoint) time.Duration { return p.warm }
		for _, p := range points {
			if p.passes == 0 {
				which, at = "first passes (a count was too slow to repeat)", func(p schedPoint) time.Duration { return p.cold }
			}
		}
		first, last := points[0], points[len(points)-1]
		nFirst, nLast := pending[0], pending[len(pending)-1]
		if at(first) > 0 {
			growth := (float64(at(last)) / float64(at(first))) / (float64(nLast) / float64(nFirst))
			rows = append(rows, Row{
				Metric: fmt.Sprintf("growth %s→%s (pass time ratio / pending ratio)", schedCount(nFirst), schedCount(nLast)),
				Value:  growth, Unit: "×", Target: "≤ 1 (linear or better)", Met: Met(growth <= 1),
				Note: fmt.Sprintf("%s: %.1f ms → %.1f ms for %.0f× the pending requests", which,
					schedMillis(at(first)), schedMillis(at(last)), float64(nLast)/float64(nFirst)),
			})
		}
	}
	return rows, nil
}

// schedPoint is what one pending count measured.
type schedPoint struct {
	// cold is the first pass (the shape cache empty), warm the median of
	// the passes after it, or cold again when there are none.
	cold, warm, setup time.Duration
	passes            int
	// workersRead and shapesRead time store.Workers and
	// store.WaitingShapes on their own, after the passes.
	workersRead, shapesRead time.Duration
	assigned, free          int
	workers                 int
	profile                 string
}

// schedulerPoint fills a fresh database with n pending requests and the
// simulated workers, then times passes.
func schedulerPoint(ctx context.Context, e *Env, reg *tasks.Registry, shapes []simShape, n int, profile bool) (schedPoint, error) {
	var pt schedPoint
	start := time.Now()
	dbURL, err := e.Database(ctx)
	if err != nil {
		return pt, err
	}
	dir, err := e.TempDir()
	if err != nil {
		return pt, err
	}
	st, err := store.Open(ctx, dbURL, dir)
	if err != nil {
		return pt, err
	}
	defer st.Close()
	// A second handle on the same database for the bulk set-up and the
	// resets, which the store has no methods for.
	pg := dbURL != ""
	driver, dsn := "sqlite", storeSQLiteDSN(filepath.Join(dir, "kiln.sqlite3"))
	if pg {
		driver, dsn = "postgres", dbURL
	}
	raw, err := sql.Open(driver, dsn)
	if err != nil {
		return pt, err
	}
	defer raw.Close()
	if !pg {
		raw.SetMaxOpenConns(1)
	}
	fill := &simFill{db: raw, pg: pg}
	pt.workers, pt.free, err = fill.workers(ctx, reg, max(e.Scale.SimWorkers, 1))
	if err != nil {
		return pt, fmt.Errorf("simulated workers: %w", err)
	}
	if err := fill.pending(ctx, shapes, n); err != nil {
		return pt, fmt.Errorf("pending requests: %w", err)
	}
	if pg {
		// What autovacuum would soon do after such a bulk load.
		if _, err := raw.ExecContext(ctx, "ANALYZE"); err != nil {
			return pt, err
		}
	}
	pt.setup = time.Since(start)

	sched := scheduler.New(st, reg, schedDiscard{}, bus.Names{Prefix: "kiln"}, scheduler.Options{Logger: zerolog.Nop()})
	pass := func() (time.Duration, int, error) {
		t := time.Now()
		got, err := sched.Pass(ctx)
		return time.Since(t), got, err
	}
	// The largest count's first pass runs under the profiler; the profile
	// is kept only if the target is missed.
	var stop func() string
	if profile {
		stop = e.Profile("scheduler")
	}
	pt.cold, pt.assigned, err = pass()
	if stop != nil {
		pt.profile = stop()
	}
	if err != nil {
		return pt, err
	}
	pt.warm = pt.cold
	if pt.cold <= schedBudget {
		var warm []time.Duration
		for range schedWarmPasses {
			if err := fill.reset(ctx); err != nil {
				return pt, err
			}
			d, got, err := pass()
			if err != nil {
				return pt, err
			}
			if got != pt.assigned {
				return pt, fmt.Errorf("a pass on the same data assigned %d, the first %d", got, pt.assigned)
			}
			warm = append(warm, d)
		}
		slices.Sort(warm)
		pt.warm = warm[len(warm)/2]
		pt.passes = len(warm)
		// Where a pass's time goes, roughly: its two whole-table reads
		// (the rest is mostly the assignments, a transaction each).
		t := time.Now()
		if _, err := st.Workers(ctx); err != nil {
			return pt, err
		}
		pt.workersRead = time.Since(t)
		t = time.Now()
		if _, err := st.WaitingShapes(ctx); err != nil {
			return pt, err
		}
		pt.shapesRead = time.Since(t)
	}
	if pt.profile != "" && pt.warm < schedTarget {
		_ = os.Remove(pt.profile)
		pt.profile = ""
	}
	return pt, nil
}

// schedDiscard is the scheduler's publisher: assignments go nowhere (the
// outbox keeps them until the next reset).
type schedDiscard struct{}

func (schedDiscard) Publish(context.Context, []store.Message) {}

// simShape is one task/requirements shape of the pending requests.
type simShape struct {
	task, data, key, arch string
}

// schedArchs are the host architectures the shapes ask for; beyond them
// made-up ones, which no worker has.
var schedArchs = []string{"amd64", "arm64", "i386", "armhf", "armel", "ppc64el", "s390x", "riscv64", "mips64el",
	"loong64", "x32", "alpha", "hppa", "m68k", "powerpc", "ppc64", "sh4", "sparc64", "hurd-amd64"}

// simShapes returns n distinct shapes: noop, sbuild and mmdebstrap for each
// architecture in turn, with task data the registry accepts.
func simShapes(reg *tasks.Registry, n int) ([]simShape, error) {
	names := []string{"noop", "sbuild", "mmdebstrap"}
	out := make([]simShape, 0, n)
	for i := range n {
		task := names[i%len(names)]
		arch := fmt.Sprintf("arch%d", i/len(names))
		if i/len(names) < len(schedArchs) {
			arch = schedArchs[i/len(names)]
		}
		var data string
		switch task {
		case "noop":
			data = fmt.Sprintf(`{"host_architecture":%q}`, arch)
		case "sbuild":
			data = fmt.Sprintf(`{"input":{"source_artifact":%d},"host_architecture":%q,"environment":%d}`, 1000+i, arch, 7)
		case "mmdebstrap":
			data = fmt.Sprintf(`{"bootstrap_options":{"architecture":%q,"variant":"buildd"},"suite":"trixie"}`, arch)
		}
		if err := reg.Validate(task, json.RawMessage(data)); err != nil {
			return nil, err
		}
		t, err := reg.Get(task)
		if err != nil {
			return nil, err
		}
		req, err := t.Requirements(json.RawMessage(data))
		if err != nil {
			return nil, err
		}
		out = append(out, simShape{task: task, data: data, key: tasks.ShapeKey(task, req), arch: arch})
	}
	return out, nil
}

// simFill writes the scenario's rows with multi-row INSERTs in one
// transaction (CreateWorkRequest per row would take minutes at 100,000).
type simFill struct {
	db *sql.DB
	pg bool
}

func (f *simFill) q(q string) string {
	if f.pg {
		return sqlDollar(q)
	}
	return q
}

// insert adds rows of len(cols) values each to table, in batches.
func (f *simFill) insert(ctx context.Context, table string, cols []string, rows [][]any) error {
	const batch = 500
	tx, err := f.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	one := "(" + strings.TrimSuffix(strings.Repeat("?, ", len(cols)), ", ") + ")"
	stmts := map[int]*sql.Stmt{}
	for len(rows) > 0 {
		k := min(batch, len(rows))
		stmt, ok := stmts[k]
		if !ok {
			q := "INSERT INTO " + table + " (" + strings.Join(cols, ", ") + ") VALUES " +
				strings.TrimSuffix(strings.Repeat(one+", ", k), ", ")
			if stmt, err = tx.PrepareContext(ctx, f.q(q)); err != nil {
				return err
			}
			stmts[k] = stmt
		}
		args := make([]any, 0, k*len(cols))
		for _, r := range rows[:k] {
			args = append(args, r...)
		}
		if _, err := stmt.ExecContext(ctx, args...); err != nil {
			return err
		}
		rows = rows[k:]
	}
	return tx.Commit()
}

// workers registers n connected, enabled workers with varied metadata
// (architectures, task versions, installed tools, allow- and denylists),
// of concurrency 1 to 4, busy with running requests except for one free
// slot on one in schedFreeEvery. It returns n and the free slots.
func (f *simFill) workers(ctx context.Context, reg *tasks.Registry, n int) (int, int, error) {
	now := time.Now().UTC()
	cols := []string{"name", "token_hash", "worker_type", "enabled", "dynamic_metadata", "dynamic_metadata_updated_at",
		"concurrency", "registered_at", "connected_at", "last_seen_at"}
	rows := make([][]any, 0, n)
	conc := make([]int, n)
	for i := range n {
		md, err := taskstest.WorkerMetadata(reg, i)
		if err != nil {
			return 0, 0, err
		}
		b, err := json.Marshal(md)
		if err != nil {
			return 0, 0, err
		}
		conc[i] = 1 + i%4
		rows = append(rows, []any{fmt.Sprintf("sim-%05d", i), store.HashToken(store.NewSecret()), "external", true,
			string(b), now, conc[i], now, now, now})
	}
	if err := f.insert(ctx, "workers", cols, rows); err != nil {
		return 0, 0, err
	}
	ids := map[string]int64{}
	res, err := f.db.QueryContext(ctx, "SELECT id, name FROM workers")
	if err != nil {
		return 0, 0, err
	}
	defer res.Close()
	for res.Next() {
		var id int64
		var name string
		if err := res.Scan(&id, &name); err != nil {
			return 0, 0, err
		}
		ids[name] = id
	}
	if err := res.Err(); err != nil {
		return 0, 0, err
	}
	// The running requests that keep the workers busy.
	free := 0
	var busy [][]any
	for i := range n {
		c := conc[i]
		if i%schedFreeEvery == 2 {
			c--
			free++
		}
		arch := taskstest.HostArchitecture(i)
		data := fmt.Sprintf(`{"host_architecture":%q}`, arch)
		key := tasks.ShapeKey("noop", tasks.Requirements{HostArchitecture: arch})
		for range c {
			busy = append(busy, []any{"noop", "Worker", data, "running", ids[fmt.Sprintf("sim-%05d", i)], "System",
				now.Add(-time.Minute), now, now, now, 1, key})
		}
	}
	err = f.insert(ctx, "work_requests", []string{"task_name", "task_type", "task_data", "status", "worker_id", "workspace",
		"created_at", "assigned_at", "started_at", "lease_renewed_at", "attempt", "shape"}, busy)
	return n, free, err
}

// pending adds n unassigned pending requests spread evenly over shapes,
// with priorities 0 to 4, oldest first in id order.
func (f *simFill) pending(ctx context.Context, shapes []simShape, n int) error {
	base := time.Now().UTC().Add(-time.Hour)
	rows := make([][]any, 0, n)
	for k := range n {
		sh := shapes[k%len(shapes)]
		prio := (k * 7) % 5
		rows = append(rows, []any{sh.task, "Worker", sh.data, "pending", prio, 0, prio, "System",
			base.Add(time.Duration(k) * time.Microsecond), 1, sh.key})
	}
	return f.insert(ctx, "work_requests", []string{"task_name", "task_type", "task_data", "status", "priority_base",
		"priority_adjustment", "priority", "workspace", "created_at", "attempt", "shape"}, rows)
}

// reset withdraws the assignments of the last pass, empties the outbox and
// renews the workers' heartbeats, so that the next pass finds the same work
// and the same free slots.
func (f *simFill) reset(ctx context.Context) error {
	for _, q := range []string{
		`UPDATE work_requests SET worker_id = NULL, assigned_at = NULL, lease_renewed_at = NULL
			WHERE status = 'pending' AND worker_id IS NOT NULL`,
		`DELETE FROM outbox`,
		`UPDATE workers SET last_seen_at = ?`,
	} {
		var args []any
		if strings.Contains(q, "?") {
			args = append(args, time.Now().UTC())
		}
		if _, err := f.db.ExecContext(ctx, f.q(q), args...); err != nil {
			return fmt.Errorf("reset: %w", err)
		}
	}
	return nil
}

func schedMillis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// schedCount writes 1000 as 1k and 100000 as 100k.
func schedCount(n int) string {
	switch {
	case n >= 1000000 && n%1000000 == 0:
		return fmt.Sprintf("%dM", n/1000000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}
