package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/tasks/runner"
	"github.com/kiln-ci/kiln/worker/journal"
)

// fakeAPI answers the worker endpoints of settle with the statuses a test
// gives per path, in order (the last one repeats), and records the calls.
type fakeAPI struct {
	t       *testing.T
	mu      sync.Mutex
	answers map[string][]int
	calls   []string
	bodies  map[string][]byte
	// onCall, if set, runs at each call, before the answer.
	onCall func(path string)
}

func newFakeAPI(t *testing.T, answers map[string][]int) (*fakeAPI, *httptest.Server) {
	f := &fakeAPI{t: t, answers: answers, bodies: map[string][]byte{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		path := strings.TrimPrefix(r.URL.Path, "/api/1.0/")
		f.mu.Lock()
		f.calls = append(f.calls, r.Method+" "+path)
		f.bodies[path] = body
		statuses := f.answers[path]
		status := http.StatusNotFound
		if len(statuses) > 0 {
			status = statuses[0]
			if len(statuses) > 1 {
				f.answers[path] = statuses[1:]
			}
		}
		onCall := f.onCall
		f.mu.Unlock()
		if onCall != nil {
			onCall(path)
		}
		if status >= 400 {
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(status)
			fmt.Fprintf(w, `{"title": "no", "detail": "status %d"}`, status)
			return
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *fakeAPI) setOnCall(onCall func(path string)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.onCall = onCall
}

func (f *fakeAPI) body(path string) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bodies[path]
}

func (f *fakeAPI) count(call string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if c == call {
			n++
		}
	}
	return n
}

// testWorker is a Worker with what settle needs: a journal and an API.
func testWorker(t *testing.T, apiURL string) *Worker {
	t.Helper()
	dir := t.TempDir()
	j, err := journal.Open(filepath.Join(dir, "journal"))
	require.NoError(t, err)
	t.Cleanup(func() { j.Close() })
	return &Worker{
		cfg: Config{RetryMax: 20 * time.Millisecond, WorkDir: filepath.Join(dir, "work")},
		log: zerolog.Nop(), api: client.New(apiURL, "worker-token"), journal: j,
		runs: map[int64]run{}, reporting: map[int64]int{},
	}
}

// leftover starts a long sleep as a run's command, with runner.Run in the
// background as the worker's earlier life did, and returns what OnStart
// reported and its pid: all that its next life knows of it.
func leftover(t *testing.T) (runner.Process, int) {
	t.Helper()
	var p runner.Process
	started := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = runner.Run(context.Background(), runner.Command{Path: "sleep", Args: []string{"600"}},
			runner.Options{Cgroup: runner.CgroupOff, OnStart: func(pr runner.Process) { p = pr; close(started) }})
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("sleep did not start")
	}
	t.Cleanup(func() {
		_ = syscall.Kill(p.PGID, syscall.SIGKILL)
		<-done
	})
	return p, p.PGID
}

func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	return err == nil && !strings.Contains(string(b), ") Z ")
}

func TestRestartKillsLeftoversAndSettlesWithTheServer(t *testing.T) {
	api, srv := newFakeAPI(t, map[string][]int{
		// The result: the server is away twice, then takes it.
		"work-request/5/completed/": {http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusOK},
		// The run that was running: handed back.
		"work-request/6/abandoned/": {http.StatusNoContent},
		// A run the server gave to another worker meanwhile: refused
		// for good.
		"work-request/7/abandoned/": {http.StatusConflict},
		// An abort: confirmed.
		"work-request/8/killed/": {http.StatusNoContent},
	})
	w := testWorker(t, srv.URL+"/api")
	proc, pid := leftover(t)
	report := schemas.WorkRequestCompleted{Result: schemas.ResultSuccess, Attempt: 1, Output: "all good\n"}
	for _, e := range []journal.Entry{
		{WorkRequest: 5, Attempt: 1, Task: "noop", Result: &report},
		{WorkRequest: 6, Attempt: 2, Task: "script", Processes: []runner.Process{proc}},
		{WorkRequest: 7, Attempt: 1, Task: "noop"},
		{WorkRequest: 8, Attempt: 3, Task: "noop", Aborted: true},
	} {
		require.NoError(t, w.journal.Write(e))
	}
	workDir := filepath.Join(w.cfg.WorkDir, "6-2")
	require.NoError(t, os.MkdirAll(filepath.Join(workDir, "exec"), 0o700))
	require.True(t, alive(pid))

	entries := w.killLeftovers()
	require.Len(t, entries, 4)
	require.False(t, alive(pid), "the leftover of the earlier life is killed")
	require.NoDirExists(t, workDir)

	var heldMu sync.Mutex
	var heldWhileSending []schemas.RunRef
	api.setOnCall(func(path string) {
		if path == "work-request/5/completed/" {
			heldMu.Lock()
			heldWhileSending = w.running()
			heldMu.Unlock()
		}
	})
	w.settle(context.Background(), entries)
	require.Equal(t, 3, api.count("PUT work-request/5/completed/"), "retried through the outage")
	require.Equal(t, 1, api.count("POST work-request/6/abandoned/"))
	require.Equal(t, 1, api.count("POST work-request/7/abandoned/"), "a refusal is final")
	require.Equal(t, 1, api.count("POST work-request/8/killed/"))
	var sent schemas.WorkRequestCompleted
	require.NoError(t, json.Unmarshal(api.body("work-request/5/completed/"), &sent))
	require.Equal(t, report, sent)
	var abandoned schemas.WorkRequestAbandoned
	require.NoError(t, json.Unmarshal(api.body("work-request/6/abandoned/"), &abandoned))
	require.Equal(t, 2, abandoned.Attempt)
	require.Contains(t, abandoned.Reason, "restarted")
	heldMu.Lock()
	require.Equal(t, []schemas.RunRef{{ID: 5, Attempt: 1}}, heldWhileSending, "heartbeats hold the lease of a result being sent")
	heldMu.Unlock()
	require.Empty(t, w.running())

	left, err := w.journal.Entries()
	require.NoError(t, err)
	require.Empty(t, left, "all settled")
}

func TestSettleKeepsWhatTheServerDidNotTake(t *testing.T) {
	api, srv := newFakeAPI(t, map[string][]int{
		"work-request/5/completed/": {http.StatusServiceUnavailable},
		"work-request/6/abandoned/": {http.StatusServiceUnavailable},
	})
	w := testWorker(t, srv.URL+"/api")
	report := schemas.WorkRequestCompleted{Result: schemas.ResultFailure, Attempt: 4}
	keep := []journal.Entry{
		{WorkRequest: 5, Attempt: 4, Result: &report},
		{WorkRequest: 6, Attempt: 1},
	}
	for _, e := range keep {
		require.NoError(t, w.journal.Write(e))
	}
	ctx, cancel := context.WithCancel(context.Background())
	api.setOnCall(func(string) {
		if api.count("PUT work-request/5/completed/") >= 3 && api.count("POST work-request/6/abandoned/") >= 3 {
			cancel() // the worker stops while the server is away
		}
	})
	w.settle(ctx, w.killLeftovers())
	require.ErrorIs(t, ctx.Err(), context.Canceled)
	left, err := w.journal.Entries()
	require.NoError(t, err)
	require.Equal(t, keep, left, "kept for the next start")
}

// TestStopSettlesWithinABound: once the worker stops (ctx ended), what is
// still to tell the server gets a fresh, bounded context.
func TestStopSettlesWithinABound(t *testing.T) {
	w := &Worker{}
	ctx, cancel := context.WithCancel(context.Background())
	sctx, done := w.settling(ctx)
	require.Equal(t, ctx, sctx, "while the worker runs, its own context")
	done()
	cancel()
	sctx, done = w.settling(ctx)
	defer done()
	require.NoError(t, sctx.Err())
	deadline, ok := sctx.Deadline()
	require.True(t, ok)
	require.WithinDuration(t, time.Now().Add(settleTimeout), deadline, time.Second)
	require.False(t, errors.Is(sctx.Err(), context.Canceled))
}
