package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/lib/pq"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server"
	"github.com/kiln-ci/kiln/server/store"
	"github.com/kiln-ci/kiln/server/store/storetest"
	"github.com/kiln-ci/kiln/tasks"
	"github.com/kiln-ci/kiln/tasks/runner"
	"github.com/kiln-ci/kiln/worker"
)

// backend names a store + NATS combination a scenario runs on.
type backend struct {
	name string
	// setup returns the database URL and external NATS URL for a fresh,
	// isolated namespace, or skips.
	setup func(t *testing.T) (dbURL, natsURL, prefix string)
}

var backends = []backend{
	{name: "sqlite+embedded", setup: func(t *testing.T) (string, string, string) { return "", "", "kiln" }},
	{name: "postgres+external", setup: externalServices},
}

func unavailable(t *testing.T, what string, err error) { storetest.Unavailable(t, what, err) }

// PostgresURL is a fresh schema on the test PostgreSQL server.
func PostgresURL(t *testing.T) string { return storetest.PostgresURL(t) }

// externalNATS returns the URL of the external nats-server (KILN_TEST_NATS_URL,
// default 127.0.0.1:4222) and a unique prefix whose stream is deleted at
// cleanup.
func externalNATS(t *testing.T) (string, string) {
	t.Helper()
	u := os.Getenv("KILN_TEST_NATS_URL")
	if u == "" {
		u = "nats://127.0.0.1:4222"
	}
	nc, err := nats.Connect(u, nats.Timeout(3*time.Second))
	if err != nil {
		unavailable(t, "external NATS", err)
	}
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := js.AccountInfo(ctx); err != nil {
		nc.Close()
		unavailable(t, "JetStream on the external NATS", err)
	}
	prefix := fmt.Sprintf("kilntest%d", time.Now().UnixNano())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, suffix := range []string{"_WORKERS", "_LOGS"} {
			_ = js.DeleteStream(ctx, strings.ToUpper(prefix)+suffix)
		}
		nc.Close()
	})
	return u, prefix
}

func externalServices(t *testing.T) (string, string, string) {
	db := PostgresURL(t)
	nu, prefix := externalNATS(t)
	return db, nu, prefix
}

// bundle is a running server plus an admin client.
type bundle struct {
	t     *testing.T
	ctx   context.Context
	srv   *server.Server
	st    *store.Store
	admin *client.Client
	user  *client.Client
	dir   string
	dbURL string
	cfg   server.Config
	// registry, when set, holds the tasks of the server and the workers.
	registry *tasks.Registry
}

func testLogger(t *testing.T) zerolog.Logger {
	if os.Getenv("KILN_TEST_LOG") != "" {
		return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel).With().Timestamp().Logger()
	}
	return zerolog.Nop()
}

func setup(t *testing.T, be backend) *bundle {
	t.Helper()
	return setupWith(t, be, nil)
}

// setupWith is setup with a chance to change the server's configuration.
func setupWith(t *testing.T, be backend, change func(*server.Config)) *bundle {
	t.Helper()
	dbURL, natsURL, prefix := be.setup(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cfg := server.Config{
		Listen: "127.0.0.1:0", DataDir: dir, DatabaseURL: dbURL, NATSURL: natsURL, NATSListen: "127.0.0.1:0",
		NATSPrefix: prefix, HeartbeatInterval: 200 * time.Millisecond, SchedulerSweep: time.Second,
		// JetStream reserves a stream's MaxBytes up front: keep the test
		// servers' reservations small.
		LogMaxBytes: 8 << 20,
		Logger:      testLogger(t).With().Str("component", "server").Logger(),
	}
	if change != nil {
		change(&cfg)
	}
	srv, err := server.New(ctx, cfg)
	require.NoError(t, err)
	b := &bundle{t: t, ctx: ctx, srv: srv, st: srv.Store(), dir: dir, dbURL: dbURL, cfg: cfg, registry: cfg.Registry}
	t.Cleanup(func() { b.srv.Close() })
	b.admin = b.newUser("admin", true)
	b.user = b.newUser("alice", false)
	return b
}

// restart stops the server and starts it again on the same addresses, data
// directory, database and NATS, as a crash and a service restart would.
func (b *bundle) restart(between func()) {
	b.t.Helper()
	cfg := b.cfg
	cfg.Listen = strings.TrimPrefix(b.srv.URL(), "http://")
	if cfg.NATSURL == "" {
		cfg.NATSListen = strings.TrimPrefix(b.srv.NATSURL(), "nats://")
	}
	require.NoError(b.t, b.srv.Close())
	if between != nil {
		between()
	}
	srv, err := server.New(b.ctx, cfg)
	require.NoError(b.t, err)
	b.srv, b.st = srv, srv.Store()
}

func (b *bundle) newUser(name string, admin bool) *client.Client {
	u, err := b.st.CreateUser(b.ctx, name, name+"@example.org", admin)
	require.NoError(b.t, err)
	tok, err := b.st.CreateUserToken(b.ctx, u.ID, "test")
	require.NoError(b.t, err)
	return client.New(b.srv.APIURL(), tok)
}

// testWorker is an in-process kiln-worker.
type testWorker struct {
	b         *bundle
	cfg       worker.Config
	cancel    context.CancelFunc
	done      chan error
	tokenFile string
	id        int64
	mu        sync.Mutex
}

// startWorker creates an enabled worker record with an activation token and
// runs a worker daemon that claims it.
func (b *bundle) startWorker(name string, concurrency int, md schemas.Metadata) *testWorker {
	b.t.Helper()
	return b.startWorkerWith(name, concurrency, md, nil)
}

// startWorkerWith is startWorker with a chance to change the worker's
// configuration.
func (b *bundle) startWorkerWith(name string, concurrency int, md schemas.Metadata, change func(*worker.Config)) *testWorker {
	b.t.Helper()
	wk, wdir := b.newWorkerRecord(name)
	w := &testWorker{b: b, id: wk.ID, tokenFile: filepath.Join(wdir, "token")}
	w.cfg = w.cfgFor(name, concurrency, md)
	w.cfg.ActivationTokenFile = filepath.Join(wdir, "activation-token")
	if change != nil {
		change(&w.cfg)
	}
	w.start()
	b.t.Cleanup(w.stop)
	b.waitConnected(name, wk.ID)
	return w
}

// newWorkerRecord creates an enabled worker record and its directory,
// holding a one-time activation token (activation-token) for it.
func (b *bundle) newWorkerRecord(name string) (store.Worker, string) {
	b.t.Helper()
	wk, err := b.st.CreateWorker(b.ctx, name, "external")
	require.NoError(b.t, err)
	act, err := b.st.CreateActivationToken(b.ctx, wk.ID)
	require.NoError(b.t, err)
	wdir := filepath.Join(b.dir, "workers", name)
	require.NoError(b.t, os.MkdirAll(wdir, 0o700))
	require.NoError(b.t, os.WriteFile(filepath.Join(wdir, "activation-token"), []byte(act), 0o600))
	return wk, wdir
}

// waitConnected waits until worker id has heartbeated and reported its
// metadata.
func (b *bundle) waitConnected(name string, id int64) {
	b.t.Helper()
	b.waitFor("worker "+name+" to connect", func() bool {
		got, err := b.st.WorkerByID(b.ctx, id)
		return err == nil && got.LastSeenAt.Valid && got.DynamicMetadataUpdatedAt.Valid
	})
}

func (w *testWorker) cfgFor(name string, concurrency int, md schemas.Metadata) worker.Config {
	return worker.Config{
		APIURL: w.b.srv.APIURL(), TokenFile: w.tokenFile, Name: name, Concurrency: concurrency, Metadata: md,
		WorkDir:  filepath.Join(filepath.Dir(w.tokenFile), "work-"+name),
		RetryMax: 200 * time.Millisecond, Logger: testLogger(w.b.t).With().Str("component", "worker").Logger(),
		Registry: w.b.registry, Grace: 500 * time.Millisecond, CgroupParent: e2eCgroupParent(w.b.t),
	}
}

func clientFor(b *bundle, token string) *client.Client { return client.New(b.srv.APIURL(), token) }

func (w *testWorker) start() {
	w.mu.Lock()
	defer w.mu.Unlock()
	ctx, cancel := context.WithCancel(w.b.ctx)
	w.cancel = cancel
	w.done = make(chan error, 1)
	go func() { w.done <- worker.Run(ctx, w.cfg) }()
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

// token returns the worker's own token, as written to its token file.
func (w *testWorker) token() string {
	b, err := os.ReadFile(w.tokenFile)
	require.NoError(w.b.t, err)
	return strings.TrimSpace(string(b))
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

func (b *bundle) create(c *client.Client, task, data string) schemas.WorkRequest {
	b.t.Helper()
	wr, err := c.CreateWorkRequest(b.ctx, schemas.WorkRequestCreate{TaskName: task, TaskData: []byte(data)})
	require.NoError(b.t, err)
	return wr
}

func (b *bundle) get(id int64) schemas.WorkRequest {
	b.t.Helper()
	wr, err := b.admin.GetWorkRequest(b.ctx, id)
	require.NoError(b.t, err)
	return wr
}

// wait follows a request until it reaches a terminal status.
func (b *bundle) wait(id int64) schemas.WorkRequest {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	wr, err := b.admin.WaitWorkRequest(ctx, id, nil)
	require.NoError(b.t, err, "waiting for work request %d", id)
	return wr
}

// forEachBackend runs a scenario on every backend.
func forEachBackend(t *testing.T, f func(t *testing.T, b *bundle)) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			f(t, setup(t, be))
		})
	}
}

// e2eCgroupParent gives the test workers' runs a cgroup parent of their
// own, away from the runner's default that the runner's tests inspect.
func e2eCgroupParent(t *testing.T) string {
	def, err := runner.DefaultCgroupParent()
	if err != nil {
		return ""
	}
	dir := filepath.Join(filepath.Dir(def), fmt.Sprintf("kiln-test-e2e-%d", os.Getpid()))
	t.Cleanup(func() { _ = os.Remove(dir) })
	return dir
}
