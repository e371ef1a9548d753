package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
	"github.com/kiln-ci/kiln/server/web"
)

// The web dashboard (server/web) is served at / for every path that is not
// the API's; this is the server as it sees it (web.Backend). Its actions go
// through the API's own handlers, as the user who clicked, so that a click
// does what the same API call does, with the same rules.

// newDashboard makes the dashboard of s.
func (s *Server) newDashboard() (*web.Dashboard, error) {
	return web.New(s.store, dashboardBackend{s}, web.Options{
		Anonymous: s.cfg.WebAnonymous,
		Secure:    s.tls != nil || strings.HasPrefix(s.cfg.PublicURL, "https://"),
		Logger:    s.log.With().Str("component", "web").Logger(),
	})
}

// isAPIPath says whether a path is the API's (or /metrics, /healthz): it
// gets the API's problem answers, never a dashboard page.
func isAPIPath(p string) bool {
	return p == "/api" || strings.HasPrefix(p, "/api/") || p == "/metrics" || p == "/healthz"
}

type dashboardBackend struct{ s *Server }

func (b dashboardBackend) WorkRequestWire(wr store.WorkRequest) schemas.WorkRequest {
	return b.s.toWire(wr)
}
func (b dashboardBackend) WorkerWire(wk store.Worker) schemas.Worker { return b.s.workerToWire(wk) }
func (b dashboardBackend) MayManage(u *store.User, wr store.WorkRequest) bool {
	return b.s.mayManage(u, wr)
}
func (b dashboardBackend) TaskNames() []string { return b.s.cfg.Registry.Names() }

func (b dashboardBackend) Abort(ctx context.Context, u *store.User, id int64) error {
	_, err := b.callAPI(ctx, u, b.s.abortWorkRequest, map[string]string{"id": strconv.FormatInt(id, 10)}, nil)
	return err
}

func (b dashboardBackend) Retry(ctx context.Context, u *store.User, id int64) (int64, error) {
	body, err := b.callAPI(ctx, u, b.s.retryWorkRequest, map[string]string{"id": strconv.FormatInt(id, 10)}, nil)
	if err != nil {
		return 0, err
	}
	var wr schemas.WorkRequest
	if err := json.Unmarshal(body, &wr); err != nil {
		return 0, fmt.Errorf("retry of work request %d: %w", id, err)
	}
	return wr.ID, nil
}

// SetWorkerEnabled is `kiln-server admin worker enable|disable` for admins
// of the dashboard; disabling withdraws the assignments the worker has not
// started, which the scheduler then gives to others.
func (b dashboardBackend) SetWorkerEnabled(ctx context.Context, u *store.User, id int64, enabled bool) error {
	if !u.IsAdmin {
		return &web.Refusal{Status: http.StatusForbidden, Message: "Only admins may enable or disable workers."}
	}
	wk, err := b.s.store.WorkerByID(ctx, id)
	if err != nil {
		return err
	}
	if err := b.s.store.SetWorkerEnabled(ctx, id, enabled); err != nil {
		return err
	}
	b.s.log.Info().Str("worker", wk.Name).Bool("enabled", enabled).Str("user", u.Username).Msg("worker enabled changed")
	b.s.kickScheduler()
	return nil
}

func (b dashboardBackend) SetDeviceHealth(ctx context.Context, u *store.User, device string, health schemas.DeviceHealth, reason string) error {
	_, err := b.callAPI(ctx, u, b.s.setDeviceHealth, map[string]string{"name": device},
		schemas.DeviceHealthChange{Health: health, Reason: reason})
	return err
}

func (b dashboardBackend) RequestHealthCheck(ctx context.Context, u *store.User, device, reason string) error {
	_, err := b.callAPI(ctx, u, b.s.requestHealthCheck, map[string]string{"name": device},
		schemas.DeviceHealthCheck{Reason: reason})
	return err
}

func (b dashboardBackend) ServeArtifactFile(w http.ResponseWriter, r *http.Request, id int64, path string) {
	ctx := withRouteParams(r.Context(), map[string]string{"id": strconv.FormatInt(id, 10)})
	b.s.downloadArtifactFile(w, r.WithContext(context.WithValue(ctx, artifactPathKey{}, path)))
}

func (b dashboardBackend) ServeArtifactTarball(w http.ResponseWriter, r *http.Request, id int64) {
	ctx := withRouteParams(r.Context(), map[string]string{"id": strconv.FormatInt(id, 10)})
	b.s.downloadArtifactTarball(w, r.WithContext(ctx))
}

func withRouteParams(ctx context.Context, params map[string]string) context.Context {
	rctx := chi.NewRouteContext()
	for k, v := range params {
		rctx.URLParams.Add(k, v)
	}
	return context.WithValue(ctx, chi.RouteCtxKey, rctx)
}

// callAPI runs an API handler for user u, as if u had sent the request
// with a token, and returns the body of its answer; an answer of 400 or
// more is a *web.Refusal with the problem's title and detail.
func (b dashboardBackend) callAPI(ctx context.Context, u *store.User, h http.HandlerFunc, params map[string]string, body any) ([]byte, error) {
	var in bytes.Buffer
	if body != nil {
		if err := json.NewEncoder(&in).Encode(body); err != nil {
			return nil, err
		}
	}
	ctx = context.WithValue(withRouteParams(ctx, params), userKey, u)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "/", &in)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	rec := &answer{header: http.Header{}, status: http.StatusOK}
	h(rec, req)
	if rec.status < http.StatusBadRequest {
		return rec.body.Bytes(), nil
	}
	var p schemas.Problem
	_ = json.Unmarshal(rec.body.Bytes(), &p)
	msg := p.Title
	if p.Detail != "" {
		msg += ": " + p.Detail
	}
	return nil, &web.Refusal{Status: rec.status, Message: msg}
}

// answer keeps what an API handler answers to callAPI.
type answer struct {
	header http.Header
	status int
	wrote  bool
	body   bytes.Buffer
}

func (a *answer) Header() http.Header { return a.header }

func (a *answer) WriteHeader(status int) {
	if !a.wrote {
		a.status, a.wrote = status, true
	}
}

func (a *answer) Write(p []byte) (int, error) {
	a.wrote = true
	return a.body.Write(p)
}

// OpenLog reads a request's live log as GET …/log/ does, with the same
// check of who sent each chunk.
func (b dashboardBackend) OpenLog(ctx context.Context, wr store.WorkRequest, after uint64) (web.LogCursor, error) {
	s := b.s
	subject := s.names.RequestLogSubjects(wr.ID)
	c := &logCursor{s: s, ctx: context.WithoutCancel(ctx), wr: wr}
	if schemas.Status(wr.Status).Terminal() {
		// Ended: read to the last chunk there is now.
		stream, err := s.js.Stream(ctx, s.names.LogStream())
		if err != nil {
			return nil, fmt.Errorf("live log of work request %d: %w", wr.ID, err)
		}
		last, err := stream.GetLastMsgForSubject(ctx, subject)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			c.done = true
			return c, nil
		}
		if err != nil {
			return nil, fmt.Errorf("live log of work request %d: %w", wr.ID, err)
		}
		if c.last = last.Sequence; after >= c.last {
			c.done = true
			return c, nil
		}
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}, InactiveThreshold: 30 * time.Second}
	if after > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, after+1
	}
	cons, err := s.js.OrderedConsumer(ctx, s.names.LogStream(), cfg)
	if err != nil {
		return nil, fmt.Errorf("live log of work request %d: %w", wr.ID, err)
	}
	if c.it, err = cons.Messages(); err != nil {
		return nil, fmt.Errorf("live log of work request %d: %w", wr.ID, err)
	}
	c.cons = cons
	return c, nil
}

// logCursor is web.LogCursor on the live-log stream.
type logCursor struct {
	s    *Server
	ctx  context.Context
	wr   store.WorkRequest
	cons jetstream.Consumer
	it   jetstream.MessagesContext
	// last, when set, is the stream sequence of the log's last chunk: the
	// request had ended when the cursor was opened.
	last uint64
	done bool
}

func (c *logCursor) Next(wait time.Duration) (schemas.LogChunk, uint64, error) {
	deadline := time.Now().Add(wait)
	for !c.done {
		left := time.Until(deadline)
		if left <= 0 {
			return schemas.LogChunk{}, 0, web.ErrNoChunk
		}
		msg, err := c.it.Next(jetstream.NextMaxWait(left))
		if errors.Is(err, nats.ErrTimeout) {
			return schemas.LogChunk{}, 0, web.ErrNoChunk
		}
		if err != nil {
			return schemas.LogChunk{}, 0, err
		}
		meta, err := msg.Metadata()
		if err != nil {
			return schemas.LogChunk{}, 0, err
		}
		seq := meta.Sequence.Stream
		c.done = c.last > 0 && seq >= c.last
		ch := chunkOf(msg)
		if c.s.fromItsWorker(c.ctx, msg, ch, &c.wr) {
			return ch, seq, nil
		}
	}
	return schemas.LogChunk{}, 0, io.EOF
}

func (c *logCursor) Stop() {
	if c.it == nil {
		return
	}
	c.it.Stop()
	// The ephemeral consumer would otherwise stay until its inactivity
	// threshold.
	if info := c.cons.CachedInfo(); info != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = c.s.js.DeleteConsumer(ctx, c.s.names.LogStream(), info.Name)
	}
}
