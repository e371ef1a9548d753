package bench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "github.com/lib/pq" // PostgreSQL for the fresh schemas
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/server"
	"github.com/kiln-ci/kiln/server/store"
	"github.com/kiln-ci/kiln/worker"
)

// Env is what a scenario gets: its configuration and backend, and helpers
// that start Kiln on that backend and undo everything at the end.
type Env struct {
	Config
	Backend  string
	Scenario Scenario

	shared   *shared
	mu       sync.Mutex
	cleanups []func()
}

// shared holds what scenarios reuse: built binaries, the baselines.
type shared struct {
	mu        sync.Mutex
	bins      map[string]string
	binsD     string
	baselines map[string]float64
}

// SetBaseline records a raw-engine figure (per second) of this backend for
// later scenarios, under name (BaselinePipeline, …).
func (e *Env) SetBaseline(name string, v float64) {
	e.shared.mu.Lock()
	defer e.shared.mu.Unlock()
	if e.shared.baselines == nil {
		e.shared.baselines = map[string]float64{}
	}
	e.shared.baselines[e.Backend+"/"+name] = v
}

// Baseline returns a figure SetBaseline recorded for this backend, 0 when
// the baseline scenario did not run.
func (e *Env) Baseline(name string) float64 {
	e.shared.mu.Lock()
	defer e.shared.mu.Unlock()
	return e.shared.baselines[e.Backend+"/"+name]
}

// Names of the baselines.
const (
	// BaselineSQL is request lives per second in bare SQL (insert, claim,
	// complete).
	BaselineSQL = "sql"
	// BaselineJetStream is messages per second published, pulled from a
	// durable consumer and acknowledged.
	BaselineJetStream = "jetstream"
	// BaselinePipeline combines the two as one request needs both in turn:
	// 1 / (1/sql + 1/jetstream).
	BaselinePipeline = "pipeline"
)

func (s *shared) close() {
	if s.binsD != "" {
		os.RemoveAll(s.binsD)
	}
}

var seq atomic.Int64

// Defer runs f when the scenario ends, the last deferred first.
func (e *Env) Defer(f func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cleanups = append(e.cleanups, f)
}

func (e *Env) cleanup() {
	e.mu.Lock()
	fs := e.cleanups
	e.cleanups = nil
	e.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

// TempDir is a fresh directory below WorkDir, removed at the end.
func (e *Env) TempDir() (string, error) {
	base := e.WorkDir
	if base == "" {
		base = os.TempDir()
	}
	dir, err := os.MkdirTemp(base, "kiln-bench-")
	if err != nil {
		return "", err
	}
	e.Defer(func() { os.RemoveAll(dir) })
	return dir, nil
}

// Database returns the database URL for this backend: "" (SQLite in the
// data directory) or a fresh PostgreSQL schema, dropped at the end.
func (e *Env) Database(ctx context.Context) (string, error) {
	if e.Backend != Postgres {
		return "", nil
	}
	base := e.DatabaseURL
	if base == "" {
		base = defaultPostgres
	}
	db, err := sql.Open("postgres", base)
	if err != nil {
		return "", err
	}
	schema := fmt.Sprintf("kiln_bench_%d_%d_%d", os.Getpid(), time.Now().UnixNano(), seq.Add(1))
	if _, err := db.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		db.Close()
		return "", fmt.Errorf("PostgreSQL %s: %w", redact(base), err)
	}
	e.Defer(func() {
		_, _ = db.Exec("DROP SCHEMA " + schema + " CASCADE")
		db.Close()
	})
	u, err := url.Parse(base)
	if err != nil {
		return "", err
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

func redact(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(database URL)"
	}
	return p.Redacted()
}

// NATS returns the external NATS URL and a fresh subject prefix for this
// backend ("" and "kiln" for the embedded server); the prefix's streams are
// deleted at the end.
func (e *Env) NATS(ctx context.Context) (string, string, error) {
	if e.Backend != Postgres {
		return "", "kiln", nil
	}
	u := e.NATSURL
	if u == "" {
		u = nats.DefaultURL
	}
	prefix := fmt.Sprintf("kilnbench%d", seq.Add(1)+time.Now().UnixNano()%1e9)
	e.Defer(func() {
		nc, err := nats.Connect(u)
		if err != nil {
			return
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, suffix := range []string{"_WORKERS", "_LOGS"} {
			_ = js.DeleteStream(ctx, strings.ToUpper(prefix)+suffix)
		}
	})
	return u, prefix, nil
}

// Kiln is an in-process kiln-server with a user.
type Kiln struct {
	Srv   *server.Server
	Store *store.Store
	// Token is a token of user "bench" (an admin).
	Token string
	dir   string
	e     *Env
}

// Client is an API client of the bench user.
func (k *Kiln) Client() *client.Client { return client.New(k.Srv.APIURL(), k.Token) }

// StartServer starts kiln-server on this backend (fresh database, data
// directory and NATS prefix); change may adjust its configuration.
func (e *Env) StartServer(ctx context.Context, change func(*server.Config)) (*Kiln, error) {
	dir, err := e.TempDir()
	if err != nil {
		return nil, err
	}
	dbURL, err := e.Database(ctx)
	if err != nil {
		return nil, err
	}
	natsURL, prefix, err := e.NATS(ctx)
	if err != nil {
		return nil, err
	}
	cfg := server.Config{
		Listen: "127.0.0.1:0", DataDir: dir, DatabaseURL: dbURL, NATSURL: natsURL, NATSListen: "127.0.0.1:0",
		NATSPrefix: prefix, LogMaxBytes: 64 << 20, Logger: e.Log.With().Str("component", "server").Logger().Level(max(e.Log.GetLevel(), 2)),
	}
	if change != nil {
		change(&cfg)
	}
	srv, err := server.New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	e.Defer(func() { srv.Close() })
	st := srv.Store()
	u, err := st.CreateUser(ctx, "bench", "bench@example.org", true)
	if err != nil {
		return nil, err
	}
	tok, err := st.CreateUserToken(ctx, u.ID, "kiln-bench")
	if err != nil {
		return nil, err
	}
	return &Kiln{Srv: srv, Store: st, Token: tok, dir: dir, e: e}, nil
}

// StartWorkers runs n in-process workers (the real kiln-worker code) of
// concurrency conc against k and waits until they have all reported.
func (k *Kiln) StartWorkers(ctx context.Context, n, conc int, change func(*worker.Config)) ([]int64, error) {
	var ids []int64
	for i := range n {
		name := fmt.Sprintf("bench-%d-%d", seq.Add(1), i)
		wk, err := k.Store.CreateWorker(ctx, name, "external")
		if err != nil {
			return nil, err
		}
		act, err := k.Store.CreateActivationToken(ctx, wk.ID)
		if err != nil {
			return nil, err
		}
		wdir := filepath.Join(k.dir, "workers", name)
		if err := os.MkdirAll(wdir, 0o700); err != nil {
			return nil, err
		}
		actFile := filepath.Join(wdir, "activation-token")
		if err := os.WriteFile(actFile, []byte(act), 0o600); err != nil {
			return nil, err
		}
		cfg := worker.Config{
			APIURL: k.Srv.APIURL(), TokenFile: filepath.Join(wdir, "token"), ActivationTokenFile: actFile,
			Name: name, Concurrency: conc, RetryMax: 200 * time.Millisecond, Grace: time.Second,
			Logger: k.e.Log.With().Str("component", "worker").Logger().Level(max(k.e.Log.GetLevel(), 2)),
		}
		if change != nil {
			change(&cfg)
		}
		wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = worker.Run(wctx, cfg)
		}()
		k.e.Defer(func() { cancel(); <-done })
		ids = append(ids, wk.ID)
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, id := range ids {
		for {
			w, err := k.Store.WorkerByID(ctx, id)
			if err == nil && w.LastSeenAt.Valid && w.DynamicMetadataUpdatedAt.Valid {
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("worker %d did not connect within 60s", id)
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return ids, nil
}

// Profile starts a CPU profile named name when ProfileDir is set; stop
// ends it and returns its path ("" without one). Only one runs at a time.
func (e *Env) Profile(name string) (stop func() string) {
	if e.ProfileDir == "" {
		return func() string { return "" }
	}
	path := filepath.Join(e.ProfileDir, fmt.Sprintf("%s-%s.pprof", name, e.Backend))
	f, err := os.Create(path)
	if err != nil {
		return func() string { return "" }
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		os.Remove(path)
		return func() string { return "" }
	}
	return func() string {
		pprof.StopCPUProfile()
		f.Close()
		return path
	}
}

// errSkip ends a scenario that cannot run here, with the reason as a note.
var errSkip = errors.New("skipped")
