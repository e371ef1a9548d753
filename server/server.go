package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"

	"github.com/kiln-ci/kiln/bus"
	"github.com/kiln-ci/kiln/server/artifacts"
	"github.com/kiln-ci/kiln/server/scheduler"
	"github.com/kiln-ci/kiln/server/store"
	"github.com/kiln-ci/kiln/server/web"
	"github.com/kiln-ci/kiln/tasks"
)

// Config is kiln-server's configuration. Every field is a flag, a KILN_*
// environment variable and a config-file key (see cmd/kiln-server); the
// defaults below are the documented ones.
type Config struct {
	// Listen is the HTTP address (default 127.0.0.1:8080).
	Listen string
	// TLSCert and TLSKey, both set, make the server listen with HTTPS
	// (PEM files: the certificate chain and its key).
	TLSCert, TLSKey string
	// DataDir holds SQLite, the embedded JetStream store and artifacts
	// (default ./kiln-data).
	DataDir string
	// DatabaseURL selects PostgreSQL (postgres://…); empty means SQLite in
	// DataDir.
	DatabaseURL string
	// NATSURL points at an external NATS; empty starts an embedded one.
	NATSURL string
	// NATSListen is the embedded NATS address (default 127.0.0.1:4223).
	NATSListen string
	// NATSTLSCert and NATSTLSKey, both set, make the embedded NATS server
	// require TLS from workers.
	NATSTLSCert, NATSTLSKey string
	// NATSCreds is a NATS credentials file (user JWT and nkey seed) with
	// which the server connects to an external NATS that uses accounts.
	NATSCreds string
	// NATSAdvertise is the NATS URL handed to workers (default: NATSURL or
	// the embedded server's URL).
	NATSAdvertise string
	// NATSPrefix starts every subject and stream name (default "kiln").
	NATSPrefix string
	// NATSReplicas is the JetStream stream replica count (default 1; 3 on a
	// 3-node cluster).
	NATSReplicas int
	// PublicURL is the server's external base URL, used for absolute links
	// such as pagination; empty derives it from each request.
	PublicURL string
	// MaxBodyBytes caps request bodies (default 1 MiB); larger ones get 413.
	MaxBodyBytes int64
	// HeartbeatInterval is how often workers heartbeat (default 5s).
	HeartbeatInterval time.Duration
	// HeartbeatTimeout marks a silent worker disconnected (default 30s).
	HeartbeatTimeout time.Duration
	// WorkerLostAfter stops new assignments to a worker silent this long
	// (default 5m).
	WorkerLostAfter time.Duration
	// SchedulerSweep is the period of the scheduler's safety-net pass
	// (default 10s).
	SchedulerSweep time.Duration
	// TaskTimeout is the run-time limit of requests whose task data sets no
	// "timeout" and whose task has none in TaskTimeouts (default 24h).
	TaskTimeout time.Duration
	// TaskTimeouts are per-task default run-time limits.
	TaskTimeouts map[string]time.Duration
	// KillConfirmTimeout is how long a worker has to confirm that an aborted
	// or timed-out run is gone; its slot stays taken meanwhile, and past it
	// the worker is flagged (default 2m: above the worker's grace period and
	// finalize step).
	KillConfirmTimeout time.Duration
	// LeaseTimeout: a request whose worker has not shown for this long that
	// it holds it (heartbeats listing it) is taken back: retried as a new
	// attempt, or withdrawn if never started (default 60s; above
	// HeartbeatTimeout).
	LeaseTimeout time.Duration
	// WorkerLostRetries is how many times a request is retried
	// automatically after its worker was lost (default 3; negative:
	// never); past it, the request ends in error, reason worker-lost.
	WorkerLostRetries int
	// InfrastructureRetries is how many times a request that failed for
	// the lab's sake (error_type infrastructure) is retried automatically,
	// on another device (default 2; negative: never).
	InfrastructureRetries int
	// Devices is the device upkeep policy (pre-job special tasks, health
	// checks); zero values take the scheduler's defaults.
	Devices scheduler.DevicePolicy
	// LogMaxBytes caps the live-log stream; the oldest chunks go first
	// (default 1 GiB).
	LogMaxBytes int64
	// LogMaxAge is how long live logs are kept (default 7 days).
	LogMaxAge time.Duration
	// Scope is the single scope this server serves (default "debusine", the
	// debusine client's default).
	Scope string
	// Workspace is the default workspace (default "System").
	Workspace string
	// Dev starts a local worker in-process, creates a "dev" admin user and
	// writes DataDir/client.ini; it also turns WebAnonymous on.
	Dev bool
	// WebAnonymous lets visitors of the web dashboard who have not logged
	// in read every page (default false; on with Dev). Actions always need
	// a login.
	WebAnonymous bool

	// Artifacts.

	// ArtifactMaxFileBytes caps the size of one artifact file (default
	// 4 GiB); an artifact that declares a larger file gets 413.
	ArtifactMaxFileBytes int64
	// ArtifactGCInterval is the period of the artifact garbage collector,
	// which deletes expired artifacts and the file contents no artifact
	// lists any more (default 10m).
	ArtifactGCInterval time.Duration

	// Logger receives all logs (default: a disabled logger).
	Logger zerolog.Logger
	// Registry holds the tasks (default tasks.Default()).
	Registry *tasks.Registry
}

// Defaults of the durations in Config.
const (
	DefaultHeartbeatInterval  = 5 * time.Second
	DefaultHeartbeatTimeout   = 30 * time.Second
	DefaultWorkerLostAfter    = 5 * time.Minute
	DefaultSchedulerSweep     = 10 * time.Second
	DefaultTaskTimeout        = 24 * time.Hour
	DefaultKillConfirmTimeout = 2 * time.Minute
	DefaultLeaseTimeout       = 60 * time.Second
	// DefaultWorkerLostRetries is Config.WorkerLostRetries' default.
	DefaultWorkerLostRetries = 3
	// DefaultInfrastructureRetries is Config.InfrastructureRetries' default.
	DefaultInfrastructureRetries = 2
)

// Defaults of the artifact settings in Config.
const (
	DefaultArtifactMaxFileBytes = 4 << 30
	DefaultArtifactGCInterval   = 10 * time.Minute
)

func (c *Config) setDefaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8080"
	}
	if c.DataDir == "" {
		c.DataDir = "kiln-data"
	}
	if c.NATSListen == "" {
		c.NATSListen = "127.0.0.1:4223"
	}
	if c.NATSPrefix == "" {
		c.NATSPrefix = "kiln"
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.HeartbeatTimeout <= 0 {
		c.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if c.WorkerLostAfter <= 0 {
		c.WorkerLostAfter = DefaultWorkerLostAfter
	}
	if c.SchedulerSweep <= 0 {
		c.SchedulerSweep = DefaultSchedulerSweep
	}
	if c.TaskTimeout <= 0 {
		c.TaskTimeout = DefaultTaskTimeout
	}
	if c.KillConfirmTimeout <= 0 {
		c.KillConfirmTimeout = DefaultKillConfirmTimeout
	}
	if c.LeaseTimeout <= 0 {
		c.LeaseTimeout = max(DefaultLeaseTimeout, 2*c.HeartbeatTimeout)
	}
	if c.WorkerLostRetries == 0 {
		c.WorkerLostRetries = DefaultWorkerLostRetries
	}
	if c.InfrastructureRetries == 0 {
		c.InfrastructureRetries = DefaultInfrastructureRetries
	}
	if c.LogMaxBytes <= 0 {
		c.LogMaxBytes = 1 << 30
	}
	if c.LogMaxAge <= 0 {
		c.LogMaxAge = 7 * 24 * time.Hour
	}
	if c.Scope == "" {
		c.Scope = "debusine"
	}
	if c.Workspace == "" {
		c.Workspace = "System"
	}
	if c.Registry == nil {
		c.Registry = tasks.Default()
	}
	if c.ArtifactMaxFileBytes <= 0 {
		c.ArtifactMaxFileBytes = DefaultArtifactMaxFileBytes
	}
	if c.ArtifactGCInterval <= 0 {
		c.ArtifactGCInterval = DefaultArtifactGCInterval
	}
	if c.Dev {
		c.WebAnonymous = true
	}
}

// Server is a running kiln-server.
type Server struct {
	cfg      Config
	log      zerolog.Logger
	store    *store.Store
	names    bus.Names
	embedded *bus.Embedded
	tls      *tls.Config
	nc       *nats.Conn
	js       jetstream.JetStream
	natsURL  string
	sched    *scheduler.Scheduler
	metrics  *metrics
	reg      *prometheus.Registry
	listener net.Listener
	http     *http.Server
	// artifacts holds artifact file contents (artifacts_api.go).
	artifacts *artifacts.Manager
	// dashboard is the web dashboard, served at / (dashboard.go).
	dashboard *web.Dashboard
	// heartbeatsSince is since when (Unix ns) heartbeats have been
	// recorded without a failure: leases expire only after a whole lease
	// timeout of it (leases.go).
	heartbeatsSince atomic.Int64

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// New opens the store, starts or connects to NATS, and starts the scheduler,
// the dispatcher, the heartbeat listener and the HTTP server. Close stops
// them all.
func New(ctx context.Context, cfg Config) (*Server, error) {
	cfg.setDefaults()
	if p := cfg.Devices.PreJob; p != "" && !scheduler.ValidPreJob(p) {
		return nil, fmt.Errorf("device pre-job policy %q: want always, dirty or never", p)
	}
	if cfg.LeaseTimeout <= 2*cfg.HeartbeatInterval {
		return nil, fmt.Errorf("lease timeout %s: must be more than two heartbeat intervals (%s)", cfg.LeaseTimeout, cfg.HeartbeatInterval)
	}
	s := &Server{cfg: cfg, log: cfg.Logger}
	s.heartbeatsSince.Store(time.Now().UnixNano())
	names, err := bus.NewNames(cfg.NATSPrefix)
	if err != nil {
		return nil, err
	}
	s.names = names
	if s.tls, err = loadTLS("HTTP", cfg.TLSCert, cfg.TLSKey); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()
	if s.store, err = store.Open(ctx, cfg.DatabaseURL, cfg.DataDir); err != nil {
		return nil, err
	}
	s.natsURL = cfg.NATSURL
	var natsOpts []nats.Option
	if s.natsURL == "" {
		if s.embedded, err = s.startEmbedded(); err != nil {
			return nil, err
		}
		s.natsURL = s.embedded.URL()
		natsOpts = s.embedded.ConnectOptions()
		s.log.Info().Str("url", s.natsURL).Msg("embedded nats started")
	} else if cfg.NATSCreds != "" {
		natsOpts = append(natsOpts, nats.UserCredentials(cfg.NATSCreds))
	}
	// Heartbeats sent while this server was cut off from NATS never
	// arrived: no lease may expire for that.
	dial := s.natsURL
	if s.embedded != nil {
		dial = s.embedded.LocalURL()
	}
	if s.nc, err = bus.Connect(dial, "kiln-server", s.log, natsOpts, s.heartbeatLost); err != nil {
		return nil, err
	}
	if s.js, err = jetstream.New(s.nc); err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if err := s.ensureStream(ctx); err != nil {
		return nil, err
	}

	s.reg = prometheus.NewRegistry()
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.metrics = newMetrics(s.reg, s.store)
	devicePolicy := cfg.Devices
	devicePolicy.Workspace = cfg.Workspace
	s.sched = scheduler.New(s.store, cfg.Registry, s, s.names, scheduler.Options{
		Sweep: cfg.SchedulerSweep, HeartbeatTimeout: cfg.HeartbeatTimeout, LostAfter: cfg.WorkerLostAfter,
		Logger: s.log.With().Str("component", "scheduler").Logger(), Registerer: s.reg, Devices: devicePolicy,
	})

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	if err := s.subscribe(runCtx); err != nil {
		return nil, err
	}
	s.goRun(func() { s.sched.Run(runCtx) })
	s.goRun(func() { s.everyAsLeader(runCtx, 2*time.Second, s.relay) })
	if err := s.startArtifacts(runCtx); err != nil {
		return nil, err
	}
	s.goRun(func() { s.everyAsLeader(runCtx, time.Second, s.enforceDeadlines) })

	if s.dashboard, err = s.newDashboard(); err != nil {
		return nil, err
	}
	if s.listener, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	s.http = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	// The dashboard's event streams never go idle: end them first.
	s.http.RegisterOnShutdown(s.dashboard.Close)
	if s.tls != nil {
		s.http.TLSConfig = s.tls
		s.listener = tls.NewListener(s.listener, s.tls)
	}
	s.goRun(func() {
		if err := s.http.Serve(s.listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error().Err(err).Msg("http server")
		}
	})
	s.log.Info().Str("url", s.URL()).Str("database", string(s.store.Dialect())).Msg("kiln-server listening")
	ok = true
	return s, nil
}

// ensureStream creates the work-queue stream, retrying while an external
// NATS is still starting.
func (s *Server) ensureStream(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := bus.EnsureStream(sctx, s.js, s.names, s.cfg.NATSReplicas)
		if err == nil {
			_, err = bus.EnsureLogStream(sctx, s.js, s.names, s.cfg.NATSReplicas, s.cfg.LogMaxBytes, s.cfg.LogMaxAge)
		}
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		s.log.Warn().Err(err).Msg("waiting for jetstream")
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func (s *Server) goRun(f func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
}

// URL is the server's base URL, for example http://127.0.0.1:8080.
func (s *Server) URL() string {
	if s.cfg.PublicURL != "" {
		return strings.TrimRight(s.cfg.PublicURL, "/")
	}
	if s.tls != nil {
		return "https://" + s.listener.Addr().String()
	}
	return "http://" + s.listener.Addr().String()
}

// APIURL is the api-url a client config needs (URL + "/api").
func (s *Server) APIURL() string { return s.URL() + "/api" }

// NATSURL is the NATS URL handed to workers.
func (s *Server) NATSURL() string {
	if s.cfg.NATSAdvertise != "" {
		return s.cfg.NATSAdvertise
	}
	return s.natsURL
}

// Store gives tests and admin commands the store.
func (s *Server) Store() *store.Store { return s.store }

// Names returns the NATS names the server uses.
func (s *Server) Names() bus.Names { return s.names }

// Scheduler returns the scheduler.
func (s *Server) Scheduler() *scheduler.Scheduler { return s.sched }

// Close stops everything New started, in reverse order. It is safe to call
// more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Server) close() error {
	if s.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = s.http.Shutdown(ctx)
		cancel()
	}
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	if s.nc != nil {
		_ = s.nc.Drain()
		s.nc.Close()
	}
	if s.embedded != nil {
		s.embedded.Shutdown()
	}
	if s.store != nil {
		return s.store.Close()
	}
	return nil
}
