package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/kiln-ci/kiln/bus"
	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/tasks"
	"github.com/kiln-ci/kiln/tasks/runner"
	"github.com/kiln-ci/kiln/worker/cache"
	"github.com/kiln-ci/kiln/worker/journal"
)

// Config is kiln-worker's configuration; each field is also a flag, a KILN_*
// variable and a config-file key (see cmd/kiln-worker).
type Config struct {
	// APIURL is the server's api-url, for example http://127.0.0.1:8080/api.
	APIURL string
	// NATSURL overrides the NATS URL the server advertises (default: ask
	// the server).
	NATSURL string
	// NATSCreds is a NATS credentials file for an external NATS that uses
	// accounts (nats-server's decentralised JWT authentication).
	NATSCreds string
	// TokenFile holds the worker's token; created (mode 0600) on first start.
	TokenFile string
	// ActivationTokenFile, when it exists, holds a one-time token that
	// registers the worker enabled at once; it is removed after use.
	ActivationTokenFile string
	// Name is the name the worker registers with (default: the host name).
	Name string
	// Concurrency is how many work requests it runs at once (default 1).
	Concurrency int
	// WorkerType is external (default), celery or signing.
	WorkerType string
	// Metadata is extra dynamic metadata to report (tests, lab settings).
	Metadata schemas.Metadata

	Logger     zerolog.Logger
	Registry   *tasks.Registry
	HTTPClient *http.Client
	// RetryMax caps the backoff between retries (default 30s).
	RetryMax time.Duration
	// LiveLogMax caps the live log of one run (default 64 MiB); the rest is
	// only in the run's debug logs.
	LiveLogMax int64
	// WorkDir holds a directory per run, removed when the run ends (default
	// "work" next to the token file).
	WorkDir string
	// Grace is the time a killed command gets between SIGTERM and SIGKILL
	// (default 10s).
	Grace time.Duration
	// CgroupParent is the cgroup v2 directory under which each run gets its
	// own cgroup (default: "kiln" below the worker's own cgroup).
	CgroupParent string
	// BuildUser is the unprivileged user that builds and checks run as when
	// the worker runs as root (default: none; see tasks.Host).
	BuildUser string
	// ScratchDir holds build trees and unpacked build environments
	// (default: the system's temporary directory; a tmpfs is faster).
	ScratchDir string
	// CacheDir holds big inputs that runs share, such as build environment
	// tarballs, by SHA-256 (default "cache" next to the work directory).
	// The build user must be able to read it.
	CacheDir string
	// CacheMaxBytes caps the cache; the least recently used files go first
	// (default 20 GiB).
	CacheMaxBytes int64
	// DevicesFile, when set, is the YAML file of the devices under test
	// this (lab) worker controls (see tasks.DeviceFile).
	DevicesFile string
	// JournalDir holds the journal of the runs: what each started, and
	// results the server has not accepted yet (default "journal" next to
	// the token file). One worker at a time may use it.
	JournalDir string
	// Drain, when closed, makes the worker drain: it takes no new
	// assignments, lets its runs finish and report, then Run returns. The
	// end of Run's context is the hard stop: runs are stopped (SIGTERM,
	// grace period, SIGKILL) and handed back to the server. Nil: never.
	Drain <-chan struct{}
}

func (c *Config) setDefaults() error {
	if c.APIURL == "" {
		return errors.New("worker: an API URL is required (--api-url)")
	}
	if c.TokenFile == "" {
		return errors.New("worker: a token file is required (--token-file)")
	}
	if c.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("worker name: %w", err)
		}
		c.Name = h
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 1
	}
	if c.WorkerType == "" {
		c.WorkerType = "external"
	}
	if c.Registry == nil {
		c.Registry = tasks.Default()
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 30 * time.Second
	}
	if c.LiveLogMax <= 0 {
		c.LiveLogMax = 64 << 20
	}
	if c.WorkDir == "" {
		c.WorkDir = filepath.Join(filepath.Dir(c.TokenFile), "work")
	}
	if c.CacheDir == "" {
		c.CacheDir = filepath.Join(filepath.Dir(c.WorkDir), "cache")
	}
	if c.JournalDir == "" {
		c.JournalDir = filepath.Join(filepath.Dir(c.TokenFile), "journal")
	}
	if c.CacheMaxBytes == 0 {
		c.CacheMaxBytes = 20 << 30
	}
	if c.Grace <= 0 {
		c.Grace = 10 * time.Second
	}
	return nil
}

// Worker is one worker daemon.
type Worker struct {
	cfg    Config
	log    zerolog.Logger
	api    *client.Client
	token  string
	wcfg   schemas.WorkerConfig
	names  bus.Names
	nc     *nats.Conn
	js     jetstream.JetStream
	slots  chan struct{}
	runsMu sync.Mutex
	runs   map[int64]run
	// reporting are the runs of an earlier life whose results are being
	// sent again: heartbeats list them too, so that their leases hold.
	reporting map[int64]int
	wg        sync.WaitGroup
	cache     *cache.Cache
	journal   *journal.Journal
	// devices are the devices under test of this worker, by name.
	devices map[string]tasks.Device
}

// ErrAborted is the cancellation cause of a run aborted through the API.
var ErrAborted = errors.New("aborted")

// ErrStopping is the cancellation cause of the runs when the worker stops
// (the end of Run's context): they are handed back to the server.
var ErrStopping = errors.New("kiln-worker stopping")

// Run runs the worker until ctx ends, or until cfg.Drain is closed and its
// runs have finished and reported. First it kills what an earlier life of
// the worker left running (from the journal) and settles that life's runs
// with the server; then it takes assignments. When ctx ends, the runs are
// stopped and handed back to the server, which retries them at once.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	w := &Worker{cfg: cfg, log: cfg.Logger.With().Str("worker", cfg.Name).Logger(), runs: map[int64]run{}, reporting: map[int64]int{}}
	j, err := journal.Open(cfg.JournalDir)
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	defer j.Close()
	w.journal = j
	// Before anything else, and without the server: nothing of an
	// earlier life may run on next to new work.
	earlier := w.killLeftovers()
	c, err := cache.Open(cfg.CacheDir, cfg.CacheMaxBytes)
	if err != nil {
		return fmt.Errorf("worker cache: %w", err)
	}
	w.cache = c
	w.devices = map[string]tasks.Device{}
	if cfg.DevicesFile != "" {
		devs, err := tasks.LoadDevices(cfg.DevicesFile)
		if err != nil {
			return err
		}
		for _, d := range devs {
			w.devices[d.Name] = d
		}
	}
	token, err := w.ensureToken()
	if err != nil {
		return err
	}
	opts := []client.Option{}
	if cfg.HTTPClient != nil {
		opts = append(opts, client.WithHTTPClient(cfg.HTTPClient))
	}
	w.token = token
	w.api = client.New(cfg.APIURL, token, opts...)

	// taking ends on drain or stop; it also bounds connecting, when
	// nothing runs yet.
	taking, stopTaking := context.WithCancel(ctx)
	defer stopTaking()
	// Heartbeats and control messages go on until Run returns, also
	// while runs are being stopped: leases hold until the runs are gone.
	life, endLife := context.WithCancel(context.WithoutCancel(ctx))
	defer endLife()
	go func() {
		select {
		case <-cfg.Drain:
			w.log.Info().Int("running", len(w.running())).
				Msg("draining: taking no new work; running work finishes and reports, then the worker exits (stop it again to stop that work now)")
			stopTaking()
		case <-taking.Done():
		}
	}()
	if err := w.connect(taking, life); err != nil {
		if w.nc != nil {
			w.nc.Close()
		}
		if taking.Err() != nil {
			w.log.Info().Msg("stopped before connecting")
			return nil
		}
		return err
	}
	defer w.nc.Close()
	w.slots = make(chan struct{}, cfg.Concurrency)
	var background sync.WaitGroup
	background.Go(func() { w.heartbeat(life) })
	background.Go(func() { w.control(life) })

	// The runs' contexts end, with ErrStopping, when ctx does.
	runs, stopRuns := context.WithCancelCause(context.WithoutCancel(ctx))
	defer stopRuns(nil)
	stopping := context.AfterFunc(ctx, func() {
		if n := len(w.running()); n > 0 {
			w.log.Warn().Int("running", n).Msg("stopping now: the running work is stopped (SIGTERM, grace period, SIGKILL) and handed back to the server, which runs it again")
		}
		stopRuns(ErrStopping)
	})
	defer stopping()

	w.settle(ctx, earlier)
	if taking.Err() == nil {
		w.consume(ctx, taking, runs)
	}
	w.wg.Wait()
	endLife()
	background.Wait()
	if ctx.Err() != nil {
		w.log.Info().Msg("stopped")
	} else {
		w.log.Info().Msg("drained: the running work finished and reported; exiting")
	}
	return nil
}

// ensureToken reads the token file, or creates a token and writes it (mode
// 0600) before anything else, so that a token the server learns is never one
// the worker failed to keep.
func (w *Worker) ensureToken() (string, error) {
	if b, err := os.ReadFile(w.cfg.TokenFile); err == nil {
		if tok := strings.TrimSpace(string(b)); tok != "" {
			return tok, nil
		}
	} else if !os.IsNotExist(err) {
		return "", fmt.Errorf("token file: %w", err)
	}
	token := newToken()
	if err := os.MkdirAll(filepath.Dir(w.cfg.TokenFile), 0o700); err != nil {
		return "", fmt.Errorf("token directory: %w", err)
	}
	if err := os.WriteFile(w.cfg.TokenFile, []byte(token+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write token file: %w", err)
	}
	w.log.Info().Str("token_file", w.cfg.TokenFile).Msg("created a new worker token")
	return token, nil
}

// register makes the server know token: with the activation token when there
// is one (enabled at once), otherwise as a new, disabled worker.
func (w *Worker) register(ctx context.Context, token string) error {
	activation := ""
	if w.cfg.ActivationTokenFile != "" {
		if b, err := os.ReadFile(w.cfg.ActivationTokenFile); err == nil {
			activation = strings.TrimSpace(string(b))
		}
	}
	api := client.New(w.cfg.APIURL, "", w.clientOpts()...)
	err := api.RegisterWorker(ctx, schemas.WorkerRegister{Token: token, FQDN: w.cfg.Name, WorkerType: w.cfg.WorkerType}, activation)
	switch {
	case client.IsForbidden(err) && activation != "":
		return permanent(fmt.Errorf("activation token in %s refused: %w", w.cfg.ActivationTokenFile, err))
	case client.IsConflict(err):
		// Registered already (an earlier attempt whose answer was lost).
	case err != nil:
		return err
	}
	if activation != "" {
		_ = os.Remove(w.cfg.ActivationTokenFile)
	}
	w.log.Info().Bool("activated", activation != "").Msg("registered with the server")
	return nil
}

func (w *Worker) clientOpts() []client.Option {
	if w.cfg.HTTPClient != nil {
		return []client.Option{client.WithHTTPClient(w.cfg.HTTPClient)}
	}
	return nil
}

// connect waits until the worker is enabled, reports its metadata, learns the
// NATS names and creates its durable consumers. It gives up when ctx ends;
// life bounds what it leaves behind (metadata after a NATS reconnection).
func (w *Worker) connect(ctx, life context.Context) error {
	if err := w.retry(ctx, "report metadata", func() error { return w.sendMetadata(ctx) }); err != nil {
		return err
	}
	decl := []schemas.DeviceDeclaration{}
	for _, d := range w.devices {
		decl = append(decl, d.Declaration())
	}
	if err := w.retry(ctx, "declare devices", func() error { return w.api.DeclareDevices(ctx, decl) }); err != nil {
		return err
	}
	err := w.retry(ctx, "fetch worker config", func() error {
		c, err := w.api.WorkerConfig(ctx)
		if err == nil {
			w.wcfg = c
		}
		return err
	})
	if err != nil {
		return err
	}
	w.log = w.log.With().Int64("worker_id", w.wcfg.WorkerID).Logger()
	url := w.wcfg.NATSURL
	if w.cfg.NATSURL != "" {
		url = w.cfg.NATSURL
	}
	prefix, _, _ := strings.Cut(w.wcfg.AssignSubject, ".")
	if w.names, err = bus.NewNames(prefix); err != nil {
		return err
	}
	var natsOpts []nats.Option
	if w.wcfg.NATSInbox != "" {
		natsOpts = append(natsOpts, nats.CustomInboxPrefix(w.wcfg.NATSInbox))
	}
	switch {
	case w.cfg.NATSCreds != "":
		natsOpts = append(natsOpts, nats.UserCredentials(w.cfg.NATSCreds))
	case w.wcfg.NATSAuth == schemas.NATSAuthWorkerToken:
		natsOpts = append(natsOpts, nats.Token(w.token))
	}
	if w.nc, err = bus.Connect(url, "kiln-worker "+w.wcfg.WorkerName, w.log, natsOpts); err != nil {
		return err
	}
	// Re-send metadata after a NATS reconnection: the server may have
	// restarted and lost track of this worker.
	w.nc.SetReconnectHandler(func(*nats.Conn) {
		go func() {
			if err := w.sendMetadata(life); err != nil {
				w.log.Warn().Err(err).Msg("metadata after reconnect")
			}
		}()
	})
	if w.js, err = jetstream.New(w.nc); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	w.log.Info().Str("nats", url).Int("concurrency", w.cfg.Concurrency).Msg("worker connected")
	if ok, reason := runner.CgroupSupport(w.cfg.CgroupParent); ok {
		w.log.Info().Msg("each run gets its own cgroup v2; aborts kill everything a run started")
	} else {
		w.log.Warn().Str("reason", reason).Msg("runs get no cgroup of their own: processes that leave a run's process group (setsid, su, daemons) survive its abort; see docs/processes.md")
	}
	return nil
}

func (w *Worker) sendMetadata(ctx context.Context) error {
	md := tasks.AnalyzeSystem(ctx, w.cfg.WorkerType)
	for k, v := range w.cfg.Registry.Analyze(ctx, w.host()) {
		md[k] = v
	}
	for k, v := range w.cfg.Metadata {
		md[k] = v
	}
	md["kiln:concurrency"] = w.cfg.Concurrency
	if len(w.devices) > 0 {
		var types []string
		for _, d := range w.devices {
			if !slices.Contains(types, d.Type) {
				types = append(types, d.Type)
			}
		}
		slices.Sort(types)
		md[tasks.KeyDeviceTypes] = types
	}
	// Whether runs get a cgroup of their own (so that even processes that
	// leave the process group die with the run): a lab can require it.
	cg, _ := runner.CgroupSupport(w.cfg.CgroupParent)
	md["kiln:cgroup"] = cg
	err := w.api.PutDynamicMetadata(ctx, md)
	if problemCode(err) == "unknown-token" {
		// First start, or a server that lost its database: register the
		// token this worker keeps, then try again.
		if err := w.register(ctx, w.token); err != nil {
			return err
		}
		err = w.api.PutDynamicMetadata(ctx, md)
	}
	if problemCode(err) == "worker-disabled" {
		return fmt.Errorf("waiting for an admin to enable this worker (kiln-server admin worker enable %s)", w.cfg.Name)
	}
	return err
}

// problemCode returns the problem code of an API error, or "".
func problemCode(err error) string {
	var pe *client.ProblemError
	if errors.As(err, &pe) {
		return pe.Problem.Code
	}
	return ""
}

func (w *Worker) heartbeat(ctx context.Context) {
	interval, err := time.ParseDuration(w.wcfg.HeartbeatInterval)
	if err != nil || interval <= 0 {
		interval = 5 * time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		runs := w.running()
		hb := schemas.Heartbeat{WorkerID: w.wcfg.WorkerID, Running: make([]int64, 0, len(runs)), Runs: runs}
		for _, r := range runs {
			hb.Running = append(hb.Running, r.ID)
		}
		b, _ := json.Marshal(hb)
		if err := w.nc.Publish(w.wcfg.HeartbeatSubject, b); err != nil {
			w.log.Debug().Err(err).Msg("heartbeat")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// run is a work request this worker runs: its attempt, and how to stop it.
type run struct {
	attempt int
	cancel  context.CancelCauseFunc
}

// running lists the runs the worker holds: those it runs, and those of an
// earlier life whose results it is sending.
func (w *Worker) running() []schemas.RunRef {
	w.runsMu.Lock()
	defer w.runsMu.Unlock()
	out := make([]schemas.RunRef, 0, len(w.runs)+len(w.reporting))
	for id, r := range w.runs {
		out = append(out, schemas.RunRef{ID: id, Attempt: r.attempt})
	}
	for id, attempt := range w.reporting {
		if _, ok := w.runs[id]; !ok {
			out = append(out, schemas.RunRef{ID: id, Attempt: attempt})
		}
	}
	return out
}

// consumer (re)creates a durable consumer, retrying through NATS outages.
func (w *Worker) consumer(ctx context.Context, name, subject string) (jetstream.Consumer, error) {
	var c jetstream.Consumer
	err := w.retry(ctx, "create consumer "+name, func() error {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		var err error
		c, err = bus.WorkerConsumer(cctx, w.js, w.wcfg.Stream, name, subject)
		return err
	})
	return c, err
}

// messages iterates over a consumer's messages, one at a time, until ctx
// ends; it recreates the consumer when it disappears (a NATS server that lost
// its state) and rides out outages.
func (w *Worker) messages(ctx context.Context, name, subject string, handle func(jetstream.Msg), acquire func() bool, release func()) {
	for ctx.Err() == nil {
		cons, err := w.consumer(ctx, name, subject)
		if err != nil {
			return
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(1), jetstream.PullExpiry(30*time.Second))
		if err != nil {
			w.log.Warn().Err(err).Str("consumer", name).Msg("consume")
			sleep(ctx, time.Second)
			continue
		}
		stop := context.AfterFunc(ctx, it.Stop)
		for ctx.Err() == nil {
			if !acquire() {
				break
			}
			msg, err := it.Next()
			if err != nil {
				release()
				if ctx.Err() == nil {
					w.log.Warn().Err(err).Str("consumer", name).Msg("consume; starting again")
					sleep(ctx, time.Second)
				}
				break
			}
			handle(msg)
		}
		stop()
		it.Stop()
	}
}

// consume takes assignments, one free slot at a time, until taking ends
// (drain or stop); the messages it did not take stay in the durable
// consumer. Runs get contexts below runs; ctx is the worker's.
func (w *Worker) consume(ctx, taking, runs context.Context) {
	w.messages(taking, w.wcfg.Consumer, w.wcfg.AssignSubject, func(msg jetstream.Msg) { w.take(ctx, runs, msg) },
		func() bool {
			select {
			case w.slots <- struct{}{}:
				return true
			case <-taking.Done():
				return false
			}
		}, func() { <-w.slots })
}

// take confirms an assignment with the server and, if it still holds, runs
// it. The slot taken by consume is released when the run ends.
func (w *Worker) take(ctx, runs context.Context, msg jetstream.Msg) {
	var a schemas.Assignment
	if err := json.Unmarshal(msg.Data(), &a); err != nil || a.WorkRequestID == 0 {
		w.log.Warn().Str("subject", msg.Subject()).Msg("malformed assignment dropped")
		_ = msg.Term()
		<-w.slots
		return
	}
	log := w.log.With().Int64("work_request", a.WorkRequestID).Int("attempt", a.Attempt).Logger()
	if a.WorkerID != w.wcfg.WorkerID {
		log.Warn().Int64("for_worker", a.WorkerID).Msg("assignment for another worker dropped")
		_ = msg.Term()
		<-w.slots
		return
	}
	// Journaled before the server hears of it: should the worker die from
	// here on, its next life hands the request back.
	rec := w.record(journal.Entry{WorkRequest: a.WorkRequestID, Attempt: a.Attempt, Started: time.Now().UTC()}, log)
	rec.write()
	wr, err := w.api.StartWorkRequest(ctx, a.WorkRequestID, a.Attempt)
	if err != nil {
		rec.drop()
	}
	switch {
	case client.IsConflict(err) || client.IsNotFound(err):
		log.Info().Err(err).Msg("stale assignment dropped")
		_ = msg.Ack()
		<-w.slots
		return
	case client.IsForbidden(err):
		// Disabled meanwhile: the server withdrew the assignment or will
		// refuse it; look again later rather than spin.
		log.Info().Err(err).Msg("not allowed to start work; assignment postponed")
		_ = msg.NakWithDelay(30 * time.Second)
		<-w.slots
		return
	case err != nil:
		log.Warn().Err(err).Msg("cannot confirm the assignment; it will be redelivered")
		_ = msg.NakWithDelay(2 * time.Second)
		<-w.slots
		return
	}
	_ = msg.Ack()
	runCtx, cancel := context.WithCancelCause(runs)
	w.runsMu.Lock()
	if old, ok := w.runs[wr.ID]; ok {
		// An older attempt of this request still runs here: the server
		// took it back and gave it to us again; the old one must go.
		old.cancel(fmt.Errorf("%w (superseded by attempt %d)", ErrAborted, wr.Attempt))
	}
	w.runs[wr.ID] = run{attempt: wr.Attempt, cancel: cancel}
	w.runsMu.Unlock()
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer func() { <-w.slots }()
		// Heartbeats list the run until its result is reported.
		end := w.execute(runCtx, ctx, wr, a.Device, rec, log)
		w.runsMu.Lock()
		if r, ok := w.runs[wr.ID]; ok && r.attempt == wr.Attempt {
			delete(w.runs, wr.ID)
		}
		w.runsMu.Unlock()
		cancel(nil)
		sctx, done := w.settling(ctx)
		defer done()
		switch {
		case end == endAborted:
			// Everything the run started is gone once execute returns:
			// say so, so that the server frees this slot.
			rec.update(func(e *journal.Entry) { e.Aborted = true })
			if w.confirmKill(sctx, wr.ID, wr.Attempt, log) {
				rec.drop()
			}
		case end == endStopped:
			w.handBack(sctx, rec, "kiln-worker stopped: the run was stopped before it ended")
		case errors.Is(context.Cause(runCtx), ErrAborted):
			// Aborted while its result was being reported.
			w.confirmKill(sctx, wr.ID, wr.Attempt, log)
		}
	}()
}

// runEnd is how a run ended for the worker.
type runEnd int

const (
	// endReported: the run's result was accepted, refused for good, or
	// (the worker stopping) kept in the journal for the next start.
	endReported runEnd = iota
	// endAborted: aborted through the API; no result is due.
	endAborted
	// endStopped: stopped because the worker stops; no result, the run
	// is to be handed back.
	endStopped
)

// execute runs one work request and reports its result. runCtx ends on
// abort and when the worker stops; ctx on stop.
func (w *Worker) execute(runCtx, ctx context.Context, wr schemas.WorkRequest, device string, rec *runRecord, log zerolog.Logger) runEnd {
	log = log.With().Str("task", wr.TaskName).Logger()
	tailBuf := newTail(64 << 10)
	live := newLiveLog(w.js, w.names.LogSubject(w.wcfg.WorkerID, wr.ID), wr.ID, wr.Attempt, w.cfg.LiveLogMax, log)
	out := io.MultiWriter(tailBuf, live)
	result := schemas.ResultError
	task, err := w.cfg.Registry.Get(wr.TaskName)
	if err == nil {
		err = w.cfg.Registry.Validate(wr.TaskName, wr.TaskData)
	}
	var workDir string
	if err == nil {
		workDir, err = w.makeWorkDir(wr)
		if workDir != "" {
			defer func() {
				if err := os.RemoveAll(workDir); err != nil {
					log.Warn().Err(err).Msg("remove work directory")
				}
			}()
		}
	}
	var dev *tasks.Device
	if err == nil && device != "" {
		if d, ok := w.devices[device]; ok {
			dev = &d
			log = log.With().Str("device", device).Logger()
		} else {
			err = fmt.Errorf("%w: the server leased device %s, which this worker does not control", tasks.ErrInfrastructure, device)
		}
	}
	if err != nil {
		fmt.Fprintf(out, "cannot run: %v\n", err)
		err = fmt.Errorf("cannot run: %w", err)
	} else {
		log.Info().Msg("running")
		result, err = task.Execute(runCtx, wr.TaskData, tasks.Env{
			WorkRequestID: wr.ID, Attempt: wr.Attempt, Output: out, Logger: log,
			WorkDir: workDir, Grace: w.cfg.Grace, CgroupParent: w.cfg.CgroupParent, Artifacts: w.artifacts(wr),
			Host: w.host(), Device: dev,
			OnStart: func(p runner.Process) {
				rec.update(func(e *journal.Entry) {
					e.Task = wr.TaskName
					e.Processes = append(e.Processes, p)
				})
			},
		})
		if err != nil {
			fmt.Fprintf(out, "error: %v\n", err)
			if result == schemas.ResultNone || result == schemas.ResultSuccess {
				result = schemas.ResultError
			}
		}
	}
	live.Close(context.WithoutCancel(ctx))
	cause := context.Cause(runCtx)
	if errors.Is(cause, ErrAborted) {
		log.Info().Msg("aborted; not reporting a result")
		return endAborted
	}
	if errors.Is(cause, ErrStopping) && (err != nil || (result != schemas.ResultSuccess && result != schemas.ResultFailure)) {
		// Most likely the stop ended the run: its error is no result
		// of the request. A verdict that came first is reported.
		log.Warn().Err(err).Msg("stopped by the worker's stop; the run is handed back")
		return endStopped
	}
	log.Info().Str("result", string(result)).Msg("finished")
	report := schemas.WorkRequestCompleted{Result: result, Attempt: wr.Attempt, Output: tailBuf.String()}
	if result == schemas.ResultError && err != nil {
		report.Reason = err.Error()
		if errors.Is(err, tasks.ErrInfrastructure) {
			report.ErrorType = schemas.ErrorInfrastructure
		}
	}
	sctx, done := w.settling(ctx)
	defer done()
	w.report(sctx, rec, report)
	return endReported
}

// confirmKill tells the server, with retries, that a run is gone. It
// reports whether that is settled: confirmed, or refused for good.
func (w *Worker) confirmKill(ctx context.Context, id int64, attempt int, log zerolog.Logger) bool {
	err := w.retry(ctx, "confirm kill", func() error {
		err := w.api.ConfirmKill(ctx, id, attempt)
		if code := client.StatusCode(err); code == http.StatusNotFound || code == http.StatusUnauthorized {
			return permanent(err)
		}
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			log.Warn().Msg("kill not confirmed before the worker stopped: the next start confirms it")
			return false
		}
		log.Warn().Err(err).Msg("kill confirmation refused")
		return true
	}
	log.Info().Msg("kill confirmed")
	return true
}

// makeWorkDir creates the empty directory of one run.
func (w *Worker) makeWorkDir(wr schemas.WorkRequest) (string, error) {
	dir := filepath.Join(w.cfg.WorkDir, fmt.Sprintf("%d-%d", wr.ID, wr.Attempt))
	// A directory left by an earlier life of this worker is stale.
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("clean work directory: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("work directory: %w", err)
	}
	return dir, nil
}

// control handles aborts and requests for metadata.
func (w *Worker) control(ctx context.Context) {
	w.messages(ctx, w.names.ControlConsumer(w.wcfg.WorkerID), w.names.ControlSubject(w.wcfg.WorkerID), func(msg jetstream.Msg) {
		var c bus.Control
		if err := json.Unmarshal(msg.Data(), &c); err != nil {
			_ = msg.Term()
			return
		}
		switch c.Type {
		case bus.ControlAbort:
			w.runsMu.Lock()
			r, ok := w.runs[c.WorkRequestID]
			w.runsMu.Unlock()
			// An abort of another attempt is not for this run.
			ok = ok && (c.Attempt == 0 || c.Attempt == r.attempt)
			log := w.log.With().Int64("work_request", c.WorkRequestID).Int("attempt", c.Attempt).Str("reason", c.Reason).Logger()
			if ok {
				log.Info().Msg("abort received; stopping the run")
				r.cancel(fmt.Errorf("%w (%s)", ErrAborted, c.Reason))
			} else {
				// Nothing of it runs here (finished, never started, or
				// from before a restart): confirm at once.
				go w.confirmKill(ctx, c.WorkRequestID, c.Attempt, log)
			}
		case bus.ControlRequestMetadata:
			if err := w.sendMetadata(ctx); err != nil {
				w.log.Warn().Err(err).Msg("metadata on request")
			}
		}
		_ = msg.Ack()
	}, func() bool { return true }, func() {})
}
