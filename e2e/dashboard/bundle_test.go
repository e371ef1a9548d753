package dashboard

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/e2e/testtasks"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server"
	"github.com/kiln-ci/kiln/server/store"
	"github.com/kiln-ci/kiln/tasks/runner"
	"github.com/kiln-ci/kiln/worker"
)

// bundle is a running kiln-server with the test tasks, an admin "admin"
// and a user "alice".
type bundle struct {
	t      *testing.T
	ctx    context.Context
	srv    *server.Server
	st     *store.Store
	dir    string
	tokens map[string]string
}

func testLogger(t *testing.T) zerolog.Logger {
	if os.Getenv("KILN_TEST_LOG") != "" {
		return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel).With().Timestamp().Logger()
	}
	return zerolog.Nop()
}

func setup(t *testing.T, change func(*server.Config)) *bundle {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cfg := server.Config{
		Listen: "127.0.0.1:0", DataDir: dir, NATSListen: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond, SchedulerSweep: time.Second, LogMaxBytes: 8 << 20,
		Registry: testtasks.Registry(), Logger: testLogger(t).With().Str("component", "server").Logger(),
	}
	if change != nil {
		change(&cfg)
	}
	srv, err := server.New(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	b := &bundle{t: t, ctx: ctx, srv: srv, st: srv.Store(), dir: dir, tokens: map[string]string{}}
	for _, u := range []struct {
		name  string
		admin bool
	}{{"admin", true}, {"alice", false}} {
		usr, err := b.st.CreateUser(ctx, u.name, u.name+"@example.org", u.admin)
		require.NoError(t, err)
		tok, err := b.st.CreateUserToken(ctx, usr.ID, "test")
		require.NoError(t, err)
		b.tokens[u.name] = tok
	}
	return b
}

func (b *bundle) api(user string) *client.Client { return client.New(b.srv.APIURL(), b.tokens[user]) }

func (b *bundle) create(user, task, data string) schemas.WorkRequest {
	b.t.Helper()
	wr, err := b.api(user).CreateWorkRequest(b.ctx, schemas.WorkRequestCreate{TaskName: task, TaskData: []byte(data)})
	require.NoError(b.t, err)
	return wr
}

func (b *bundle) get(id int64) schemas.WorkRequest {
	b.t.Helper()
	wr, err := b.api("admin").GetWorkRequest(b.ctx, id)
	require.NoError(b.t, err)
	return wr
}

// waitFor polls cond until it holds or 30s pass.
func (b *bundle) waitFor(what string, cond func() bool) {
	b.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			b.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testWorker is an in-process kiln-worker.
type testWorker struct {
	b      *bundle
	id     int64
	cfg    worker.Config
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan error
}

// startWorker creates an enabled worker record with an activation token
// and runs a worker daemon that claims it, then waits until it has
// connected.
func (b *bundle) startWorker(name string, change func(*worker.Config)) *testWorker {
	b.t.Helper()
	wk, err := b.st.CreateWorker(b.ctx, name, "external")
	require.NoError(b.t, err)
	act, err := b.st.CreateActivationToken(b.ctx, wk.ID)
	require.NoError(b.t, err)
	wdir := filepath.Join(b.dir, "workers", name)
	require.NoError(b.t, os.MkdirAll(wdir, 0o700))
	require.NoError(b.t, os.WriteFile(filepath.Join(wdir, "activation-token"), []byte(act), 0o600))
	w := &testWorker{b: b, id: wk.ID, cfg: worker.Config{
		APIURL: b.srv.APIURL(), TokenFile: filepath.Join(wdir, "token"), ActivationTokenFile: filepath.Join(wdir, "activation-token"),
		Name: name, Concurrency: 1, WorkDir: filepath.Join(wdir, "work"), RetryMax: 200 * time.Millisecond,
		Logger: testLogger(b.t).With().Str("component", "worker").Logger(), Registry: testtasks.Registry(),
		Grace: 500 * time.Millisecond, CgroupParent: cgroupParent(b.t),
	}}
	if change != nil {
		change(&w.cfg)
	}
	ctx, cancel := context.WithCancel(b.ctx)
	w.cancel, w.done = cancel, make(chan error, 1)
	go func() { w.done <- worker.Run(ctx, w.cfg) }()
	b.t.Cleanup(w.stop)
	b.waitFor("worker "+name+" to connect", func() bool {
		got, err := b.st.WorkerByID(b.ctx, wk.ID)
		return err == nil && got.LastSeenAt.Valid && got.DynamicMetadataUpdatedAt.Valid
	})
	return w
}

func (w *testWorker) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cancel == nil {
		return
	}
	w.cancel()
	<-w.done
	w.cancel = nil
}

// runDir is where the worker runs attempt 1 of a request (run-command
// tasks run in its exec directory).
func (w *testWorker) runDir(id int64) string {
	return filepath.Join(w.cfg.WorkDir, fmt.Sprintf("%d-1", id), "exec")
}

// cgroupParent gives the test workers' runs a cgroup parent of their own,
// away from the runner's default that the runner's tests inspect.
func cgroupParent(t *testing.T) string {
	def, err := runner.DefaultCgroupParent()
	if err != nil {
		return ""
	}
	dir := filepath.Join(filepath.Dir(def), fmt.Sprintf("kiln-test-dashboard-%d", os.Getpid()))
	t.Cleanup(func() { _ = os.Remove(dir) })
	return dir
}

// pidsGone reports whether none of the pids in a file is alive (zombies
// count as gone: they run nothing).
func pidsGone(pids []int) bool {
	for _, p := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err == nil && !strings.Contains(string(b), "State:\tZ") {
			return false
		}
	}
	return true
}
