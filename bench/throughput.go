package bench

// Scenarios 2 to 4: how fast Kiln takes work requests through its API, how
// fast it runs them end to end, and how long one waits on an idle and on a
// loaded system. One load generator (loadGen, with a backlog or a pace as its
// gate) drives all three.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
)

// baselineE2E is the name under which scenario 3 records its end-to-end rate
// (req/s) for the load of scenario 4.
const baselineE2E = "kiln-e2e"

// Polling periods.
const (
	// backlogPoll is how often a full backlog gate counts the completed
	// requests (one indexed COUNT).
	backlogPoll = 50 * time.Millisecond
	// idlePoll is that period when one request at a time is outstanding.
	idlePoll = 2 * time.Millisecond
	// drainPoll is how often drain counts what is left.
	drainPoll = 20 * time.Millisecond
)

// idleTarget is the goal of the idle submit→start p99.
const idleTarget = 50 * time.Millisecond

// runSubmit is scenario 2: requests created per second through the REST API
// by Clients concurrent clients, with no worker, so that only submission is
// measured.
func runSubmit(ctx context.Context, e *Env) ([]Row, error) {
	k, err := e.StartServer(ctx, nil)
	if err != nil {
		return nil, err
	}
	l := newLoadGen(k, e.Scale.Clients, nil, 0)
	lctx, stop := l.start(ctx)
	rate, err := measureRate(lctx, warmUpOf(e.Scale), e.Scale.Duration, l.createdCount)
	if err := stopped(stop, err); err != nil {
		return nil, err
	}
	return []Row{{
		Metric: fmt.Sprintf("submit via API, %d clients", e.Scale.Clients), Value: rate, Unit: "req/s",
		Note: "noop, task data {}, schema validation on, no workers",
	}}, nil
}

// runEndToEnd is scenario 3: noop requests submitted, scheduled, dispatched,
// run and completed per second by Workers workers of Concurrency, with the
// queue kept fed. It records its rate for scenario 4 and, when it misses its
// target, profiles a second, shorter window.
func runEndToEnd(ctx context.Context, e *Env) ([]Row, error) {
	k, err := startWithWorkers(ctx, e)
	if err != nil {
		return nil, err
	}
	l, err := saturate(ctx, e, k)
	if err != nil {
		return nil, err
	}
	lctx, stop := l.start(ctx)
	rate, err := measureRate(lctx, warmUpOf(e.Scale), e.Scale.Duration, completedCount(k.Store))
	if err != nil {
		return nil, stopped(stop, err)
	}
	e.SetBaseline(baselineE2E, rate)
	row := Row{
		Metric: fmt.Sprintf("end-to-end noop, %d workers × %d", e.Scale.Workers, e.Scale.Concurrency),
		Value:  rate, Unit: "req/s",
		Note: fmt.Sprintf("%d clients, backlog ≤ %d, window %s after %s warm-up",
			e.Scale.Clients, backlogOf(e.Scale), e.Scale.Duration, warmUpOf(e.Scale)),
	}
	if base := e.Baseline(BaselinePipeline); base > 0 {
		row.Baseline, row.Target, row.Met = base, "≥ 50% of the baseline pipeline", Met(rate >= 0.5*base)
		if rate < 0.5*base {
			row.Note += "; " + profileWindow(lctx, e, "e2e", max(e.Scale.Duration/2, time.Second))
		}
	}
	if err := stop(); err != nil {
		return nil, err
	}
	if err := checkSucceeded(ctx, k.Store); err != nil {
		return nil, err
	}
	return []Row{row}, nil
}

// runLatency is scenario 4: submit→start and submit→completed, from the
// server's own timestamps, first one request at a time on an idle system,
// then under a paced load of half the end-to-end maximum.
func runLatency(ctx context.Context, e *Env) ([]Row, error) {
	k, err := startWithWorkers(ctx, e)
	if err != nil {
		return nil, err
	}

	// Idle: one client, one request outstanding at a time.
	begin := time.Now()
	b, err := newBacklogGate(ctx, 1, idlePoll, completedCount(k.Store))
	if err != nil {
		return nil, err
	}
	l := newLoadGen(k, 1, b, int64(e.Scale.LatencySamples))
	lctx, stop := l.start(ctx)
	<-lctx.Done() // the limit, a failure or ctx
	if err := stop(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := drainQueue(ctx, k.Store); err != nil {
		return nil, err
	}
	idle, err := createdBetween(ctx, k.Store, begin, time.Now())
	if err != nil {
		return nil, err
	}
	rows, err := latencyRows("idle", idle, fmt.Sprintf("one at a time, %d samples", len(idle)))
	if err != nil {
		return nil, err
	}
	rows[0].Target, rows[0].Met = "< 50 ms", Met(rows[0].Value < latencyMs(idleTarget))

	// Under load: half the maximum rate, measured now when scenario 3 has not.
	maxRate := e.Baseline(baselineE2E)
	src := "scenario 3"
	if maxRate == 0 {
		if maxRate, err = quickMax(ctx, e, k); err != nil {
			return nil, err
		}
		src = "a quick measurement"
	}
	rate := maxRate / 2
	if rate <= 0 {
		return nil, fmt.Errorf("no end-to-end rate to load the system with (max %.1f req/s)", maxRate)
	}
	l = newLoadGen(k, e.Scale.Clients, newPaceGate(rate), 0)
	lctx, stop = l.start(ctx)
	if err := pause(lctx, warmUpOf(e.Scale)); err != nil {
		return nil, stopped(stop, err)
	}
	from, n0 := time.Now(), l.created.Load()
	err = pause(lctx, e.Scale.Duration)
	to, n1 := time.Now(), l.created.Load()
	if err := stopped(stop, err); err != nil {
		return nil, err
	}
	if err := drainQueue(ctx, k.Store); err != nil {
		return nil, err
	}
	loaded, err := createdBetween(ctx, k.Store, from, to)
	if err != nil {
		return nil, err
	}
	offered := float64(n1-n0) / to.Sub(from).Seconds()
	more, err := latencyRows("under load", loaded, fmt.Sprintf("%.0f req/s asked, %.0f submitted (50%% of %.0f req/s from %s), %d samples",
		rate, offered, maxRate, src, len(loaded)))
	if err != nil {
		return nil, err
	}
	return append(rows, more...), nil
}

// warmUpOf is the time a sustained phase runs before its window opens.
func warmUpOf(s Scale) time.Duration {
	return min(max(s.Duration/5, 200*time.Millisecond), 3*time.Second)
}

// backlogOf is how many requests the end-to-end load keeps outstanding:
// enough for every slot and the pipeline before them, few enough that the
// queue does not grow without bound.
func backlogOf(s Scale) int {
	return max(4*s.Workers*s.Concurrency, 200)
}

// startWithWorkers starts Kiln with the scale's workers.
func startWithWorkers(ctx context.Context, e *Env) (*Kiln, error) {
	k, err := e.StartServer(ctx, nil)
	if err != nil {
		return nil, err
	}
	if _, err := k.StartWorkers(ctx, e.Scale.Workers, e.Scale.Concurrency, nil); err != nil {
		return nil, err
	}
	return k, nil
}

// saturate returns a load that keeps k's queue fed from Clients clients.
func saturate(ctx context.Context, e *Env, k *Kiln) (*loadGen, error) {
	b, err := newBacklogGate(ctx, backlogOf(e.Scale), backlogPoll, completedCount(k.Store))
	if err != nil {
		return nil, err
	}
	return newLoadGen(k, e.Scale.Clients, b, 0), nil
}

// quickMax measures the end-to-end rate over a short window and waits for
// its backlog to drain.
func quickMax(ctx context.Context, e *Env, k *Kiln) (float64, error) {
	l, err := saturate(ctx, e, k)
	if err != nil {
		return 0, err
	}
	lctx, stop := l.start(ctx)
	rate, err := measureRate(lctx, warmUpOf(e.Scale), max(e.Scale.Duration/4, time.Second), completedCount(k.Store))
	if err := stopped(stop, err); err != nil {
		return 0, err
	}
	return rate, drainQueue(ctx, k.Store)
}

// loadGen submits noop work requests through the API from several clients
// until its context ends or it has sent limit of them.
type loadGen struct {
	clients []*client.Client
	tr      *http.Transport
	// gate, when not nil, holds each submission back until it may go.
	gate loadGate
	// limit, when not zero, is the number of requests to send.
	limit int64

	issued  atomic.Int64
	created atomic.Int64
}

// A loadGate paces submissions; wait returns when one more may be sent.
type loadGate interface {
	wait(ctx context.Context) error
}

func newLoadGen(k *Kiln, clients int, g loadGate, limit int64) *loadGen {
	// One transport keeps a connection per client alive (the default keeps
	// two per host and would open a new one for most requests).
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = clients + 1
	l := &loadGen{tr: tr, gate: g, limit: limit}
	for range max(clients, 1) {
		l.clients = append(l.clients, client.New(k.Srv.APIURL(), k.Token,
			client.WithHTTPClient(&http.Client{Transport: tr}), client.WithUserAgent("kiln-bench")))
	}
	return l
}

// createdCount counts the requests the load has created.
func (l *loadGen) createdCount(context.Context) (int64, error) { return l.created.Load(), nil }

// start starts the submitters. The returned context ends when they stop:
// with ctx, at the limit, or at the first failed submission, which is its
// cause. stop ends them, waits for them, and returns that failure.
func (l *loadGen) start(ctx context.Context) (context.Context, func() error) {
	lctx, cancel := context.WithCancelCause(ctx)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		failure error
	)
	for _, c := range l.clients {
		wg.Go(func() {
			if err := l.submit(lctx, c); err != nil && lctx.Err() == nil {
				mu.Lock()
				if failure == nil {
					failure = err
				}
				mu.Unlock()
				cancel(err)
			}
		})
	}
	go func() {
		wg.Wait()
		cancel(errLoadDone)
	}()
	var once sync.Once
	return lctx, func() error {
		once.Do(func() {
			cancel(errLoadDone)
			wg.Wait()
			l.tr.CloseIdleConnections()
		})
		mu.Lock()
		defer mu.Unlock()
		return failure
	}
}

// stopped stops a load and returns its failure, if any, or else err.
func stopped(stop func() error, err error) error {
	if serr := stop(); serr != nil {
		return serr
	}
	return err
}

// errLoadDone is the cause of a load's context once its submitters stopped
// without failing.
var errLoadDone = errors.New("load stopped")

var noopData = json.RawMessage(`{}`)

func (l *loadGen) submit(ctx context.Context, c *client.Client) error {
	for ctx.Err() == nil {
		if l.limit > 0 && l.issued.Add(1) > l.limit {
			return nil
		}
		if l.gate != nil {
			if err := l.gate.wait(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
		if _, err := c.CreateWorkRequest(ctx, schemas.WorkRequestCreate{TaskName: "noop", TaskData: noopData}); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		l.created.Add(1)
	}
	return nil
}

// backlogGate is a loadGate that keeps at most max requests submitted and not
// completed.
type backlogGate struct {
	max   int64
	poll  time.Duration
	count func(context.Context) (int64, error)

	mu     sync.Mutex
	issued int64
	done   int64
	base   int64
}

func newBacklogGate(ctx context.Context, n int, poll time.Duration, count func(context.Context) (int64, error)) (*backlogGate, error) {
	base, err := count(ctx)
	if err != nil {
		return nil, err
	}
	return &backlogGate{max: int64(n), poll: poll, count: count, base: base}, nil
}

// wait counts completions, one waiter at a time, only while the backlog is
// full.
func (b *backlogGate) wait(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.issued-b.done >= b.max {
		if err := pause(ctx, b.poll); err != nil {
			return err
		}
		n, err := b.count(ctx)
		if err != nil {
			return err
		}
		b.done = n - b.base
	}
	b.issued++
	return nil
}

// paceGate is a loadGate that lets submissions go at a steady rate; one that
// fell behind (slow submitters) catches up by at most paceSlack.
type paceGate struct {
	every time.Duration
	mu    sync.Mutex
	next  time.Time
}

const paceSlack = 100 * time.Millisecond

func newPaceGate(perSecond float64) *paceGate {
	return &paceGate{every: time.Duration(float64(time.Second) / perSecond)}
}

func (p *paceGate) wait(ctx context.Context) error {
	p.mu.Lock()
	now := time.Now()
	at := p.next
	if at.Before(now.Add(-paceSlack)) {
		at = now
	}
	p.next = at.Add(p.every)
	p.mu.Unlock()
	return pause(ctx, time.Until(at))
}

// measureRate waits warm, then returns how fast count grew over window, per
// second. It fails with ctx's cause when ctx ends first.
func measureRate(ctx context.Context, warm, window time.Duration, count func(context.Context) (int64, error)) (float64, error) {
	if err := pause(ctx, warm); err != nil {
		return 0, err
	}
	n0, err := count(ctx)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	if err := pause(ctx, window); err != nil {
		return 0, err
	}
	n1, err := count(ctx)
	if err != nil {
		return 0, err
	}
	return float64(n1-n0) / time.Since(t0).Seconds(), nil
}

// pause waits d, or fails with ctx's cause.
func pause(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return context.Cause(ctx)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// completedCount counts the completed requests (an index range scan).
func completedCount(st *store.Store) func(context.Context) (int64, error) {
	return func(ctx context.Context) (int64, error) {
		return st.CountWorkRequests(ctx, string(schemas.StatusCompleted))
	}
}

// drainQueue waits until no request is pending or running.
func drainQueue(ctx context.Context, st *store.Store) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		var left int64
		for _, s := range []schemas.Status{schemas.StatusPending, schemas.StatusRunning} {
			n, err := st.CountWorkRequests(ctx, string(s))
			if err != nil {
				return fmt.Errorf("drain: %w", err)
			}
			left += n
		}
		if left == 0 {
			return nil
		}
		if err := pause(ctx, drainPoll); err != nil {
			return fmt.Errorf("drain: %d requests still pending or running: %w", left, err)
		}
	}
}

// checkSucceeded fails when the newest completed request did not succeed:
// a rate of failing noops would measure nothing.
func checkSucceeded(ctx context.Context, st *store.Store) error {
	wrs, err := st.ListWorkRequests(ctx, store.ListFilter{Status: string(schemas.StatusCompleted), Limit: 1})
	if err != nil {
		return err
	}
	if len(wrs) == 0 {
		return errors.New("no work request completed")
	}
	if r := wrs[0].Result; r != string(schemas.ResultSuccess) {
		return fmt.Errorf("work request %d completed with result %q (%s)", wrs[0].ID, r, wrs[0].Reason)
	}
	return nil
}

// createdBetween returns the requests created in [from, to], oldest first.
func createdBetween(ctx context.Context, st *store.Store, from, to time.Time) ([]store.WorkRequest, error) {
	var out []store.WorkRequest
	var after int64
	for {
		page, err := st.ListWorkRequests(ctx, store.ListFilter{AfterID: after, Limit: 1000})
		if err != nil {
			return nil, err
		}
		if len(page) == 0 {
			return out, nil
		}
		for _, wr := range page {
			after = max(after, wr.ID)
			if !wr.CreatedAt.Before(from) && !wr.CreatedAt.After(to) {
				out = append(out, wr)
			}
		}
	}
}

// latencyRows turns requests' server timestamps into two rows, submit→start
// and submit→completed, each with its p99 as value and p50 and p95 in the
// note.
func latencyRows(phase string, wrs []store.WorkRequest, note string) ([]Row, error) {
	if len(wrs) == 0 {
		return nil, fmt.Errorf("%s: no work request to measure", phase)
	}
	var toStart, toDone []time.Duration
	whole := true // every timestamp on a millisecond: too coarse to use
	for _, wr := range wrs {
		if !wr.StartedAt.Valid || !wr.CompletedAt.Valid {
			return nil, fmt.Errorf("%s: work request %d is %s without start or completion time", phase, wr.ID, wr.Status)
		}
		for _, t := range []time.Time{wr.CreatedAt, wr.StartedAt.Time, wr.CompletedAt.Time} {
			whole = whole && t.Nanosecond()%int(time.Millisecond) == 0
		}
		toStart = append(toStart, wr.StartedAt.Time.Sub(wr.CreatedAt))
		toDone = append(toDone, wr.CompletedAt.Time.Sub(wr.CreatedAt))
	}
	if whole && len(wrs) > 1 {
		return nil, fmt.Errorf("%s: the server's timestamps have millisecond resolution or coarser", phase)
	}
	row := func(what string, ds []time.Duration) Row {
		slices.Sort(ds)
		return Row{
			Metric: fmt.Sprintf("%s: submit→%s p99", phase, what), Value: latencyMs(latencyPercentile(ds, 99)), Unit: "ms",
			Note: fmt.Sprintf("p50 %.1f ms, p95 %.1f ms; %s", latencyMs(latencyPercentile(ds, 50)), latencyMs(latencyPercentile(ds, 95)), note),
		}
	}
	return []Row{row("start", toStart), row("completed", toDone)}, nil
}

// latencyPercentile is the nearest-rank p-th percentile of sorted ds.
func latencyPercentile(ds []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p/100*float64(len(ds)))) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}

func latencyMs(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// profileWindow profiles the process for d while the load goes on and
// returns a note: the profile's path, its top functions and where the store
// spends its time.
func profileWindow(ctx context.Context, e *Env, name string, d time.Duration) string {
	if e.ProfileDir == "" {
		return "target missed; no profile (no profile directory)"
	}
	stop := e.Profile(name)
	err := pause(ctx, d)
	path := stop()
	switch {
	case path == "":
		return "target missed; profiling failed"
	case err != nil:
		return "target missed; profile " + path + " cut short: " + err.Error()
	}
	note := "target missed; profile " + path
	if top := profileTop(ctx, path, false, 5, ""); top != "" {
		note += "; top: " + top
	}
	if top := profileTop(ctx, path, true, 5, `kiln/server/store\.\(\*Store\)\.[A-Z][A-Za-z]*$`); top != "" {
		note += "; store: " + top
	}
	return note
}

// profileTop lists the n functions of a profile with the most CPU time,
// their own (flat) or with their callees (cum), among those matching show
// when it is set, by go tool pprof; "" when the go tool is not at hand.
func profileTop(ctx context.Context, path string, cum bool, n int, show string) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	args := []string{"tool", "pprof", "-top", fmt.Sprintf("-nodecount=%d", n)}
	col := 1 // flat%
	if cum {
		args, col = append(args, "-cum"), 4 // cum%
	}
	if show != "" {
		args = append(args, "-show="+show)
	}
	out, err := exec.CommandContext(ctx, "go", append(args, path)...).Output()
	if err != nil {
		return ""
	}
	var top []string
	table := false
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		switch {
		case len(f) == 5 && f[0] == "flat" && f[1] == "flat%":
			table = true
		case table && len(f) >= 6:
			fn := strings.Join(f[5:], " ")
			fn = fn[strings.LastIndex(fn, "/")+1:]
			top = append(top, fn+" "+f[col])
		}
	}
	return strings.Join(top, ", ")
}
