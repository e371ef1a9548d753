package web

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/rs/zerolog"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
)

//go:embed templates static
var assets embed.FS

// Defaults of Options.
const (
	DefaultPollInterval = time.Second
	DefaultSessionTTL   = 12 * time.Hour
)

// Options configures the dashboard.
type Options struct {
	// Anonymous lets visitors who have not logged in read every page
	// (default false: they are sent to the login form). Actions always
	// need a login.
	Anonymous bool
	// Secure marks the cookies Secure; set it when browsers reach the
	// server over HTTPS (default false).
	Secure bool
	// PollInterval is how often a live page looks for changes (default
	// DefaultPollInterval).
	PollInterval time.Duration
	// SessionTTL is how long a login lasts at most (default
	// DefaultSessionTTL); it ends earlier with its token.
	SessionTTL time.Duration
	// Logger receives the dashboard's logs (default: none).
	Logger zerolog.Logger
}

// Backend is what the dashboard needs of the server beyond the store: the
// server's own rules and its actions, so that a click does exactly what
// the same call of the REST API does.
type Backend interface {
	// WorkRequestWire and WorkerWire are the API's JSON forms (the waiting
	// reason of a request, whether a worker is connected).
	WorkRequestWire(wr store.WorkRequest) schemas.WorkRequest
	WorkerWire(wk store.Worker) schemas.Worker
	// MayManage says whether u may abort or retry wr.
	MayManage(u *store.User, wr store.WorkRequest) bool
	// TaskNames lists the registered tasks, for the list's filter.
	TaskNames() []string

	// Abort aborts a work request as u.
	Abort(ctx context.Context, u *store.User, id int64) error
	// Retry retries a work request as u and returns the new request's id.
	Retry(ctx context.Context, u *store.User, id int64) (int64, error)
	// SetWorkerEnabled enables or disables a worker (admins).
	SetWorkerEnabled(ctx context.Context, u *store.User, id int64, enabled bool) error
	// SetDeviceHealth takes a device out of service (maintenance,
	// retired) or returns it (unknown) (admins).
	SetDeviceHealth(ctx context.Context, u *store.User, device string, health schemas.DeviceHealth, reason string) error
	// RequestHealthCheck asks for a health check of a device (admins).
	RequestHealthCheck(ctx context.Context, u *store.User, device, reason string) error

	// OpenLog reads the live log of wr from the first chunk after stream
	// sequence after (0: from the start).
	OpenLog(ctx context.Context, wr store.WorkRequest, after uint64) (LogCursor, error)
	// ServeArtifactFile and ServeArtifactTarball answer downloads as the
	// API does.
	ServeArtifactFile(w http.ResponseWriter, r *http.Request, id int64, path string)
	ServeArtifactTarball(w http.ResponseWriter, r *http.Request, id int64)
}

// ErrNoChunk is LogCursor.Next's answer when no chunk came in time.
var ErrNoChunk = errors.New("no log chunk yet")

// LogCursor reads a work request's live log in order.
type LogCursor interface {
	// Next returns the next chunk and its stream sequence number, waiting
	// up to wait: ErrNoChunk when none came, io.EOF once the log of a
	// request that had ended when the cursor was opened is read to its end.
	Next(wait time.Duration) (schemas.LogChunk, uint64, error)
	// Stop releases the cursor.
	Stop()
}

// Refusal is an action the server refused, with what to tell the user.
type Refusal struct {
	// Status is the HTTP status the API answers with.
	Status int
	// Message says why, for the user.
	Message string
}

func (r *Refusal) Error() string { return fmt.Sprintf("refused (%d): %s", r.Status, r.Message) }

// Dashboard serves the web dashboard. It is an http.Handler for every
// path outside the API.
type Dashboard struct {
	st     *store.Store
	be     Backend
	opts   Options
	log    zerolog.Logger
	pages  map[string]*pageTemplate
	router chi.Router
	static fs.FS

	done      chan struct{}
	closeOnce sync.Once
	overview  overviewCache
}

// New makes the dashboard of a server.
func New(st *store.Store, be Backend, opts Options) (*Dashboard, error) {
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.SessionTTL <= 0 {
		opts.SessionTTL = DefaultSessionTTL
	}
	d := &Dashboard{st: st, be: be, opts: opts, log: opts.Logger, done: make(chan struct{})}
	var err error
	if d.pages, err = loadTemplates(); err != nil {
		return nil, err
	}
	if d.static, err = fs.Sub(assets, "static"); err != nil {
		return nil, err
	}
	d.router = d.routes()
	return d, nil
}

// ServeHTTP serves a dashboard page, an asset or an event stream.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) { d.router.ServeHTTP(w, r) }

// Close ends the live event streams, so that a server shutting down does
// not wait for browsers to go.
func (d *Dashboard) Close() { d.closeOnce.Do(func() { close(d.done) }) }

func (d *Dashboard) routes() chi.Router {
	r := chi.NewRouter()
	r.Use(securityHeaders)
	r.Get("/static/{file}", d.serveStatic)
	r.Group(func(r chi.Router) {
		r.Use(d.session)
		r.Get("/login", d.loginForm)
		r.Post("/login", d.login)
		r.With(d.requireCSRF).Post("/logout", d.logout)
		r.Group(func(r chi.Router) {
			r.Use(d.requireViewer)
			d.live(r, "/", overviewPage)
			d.live(r, "/work-requests/", workRequestsPage)
			r.Get("/work-requests/{id}/", d.workRequestPage)
			r.Get("/work-requests/{id}/events", d.workRequestEvents)
			r.Get("/work-requests/{id}/log.txt", d.rawLog)
			d.live(r, "/workers/", workersPage)
			d.live(r, "/workers/{id}/", workerPage)
			d.live(r, "/devices/", devicesPage)
			d.live(r, "/devices/{name}/", devicePage)
			d.live(r, "/artifacts/{id}/", artifactPage)
			r.Get("/artifacts/{id}/files/*", d.artifactFile)
			r.Get("/artifacts/{id}/download", d.artifactTarball)
			r.Group(func(r chi.Router) {
				r.Use(d.requireUser, d.requireCSRF)
				r.Post("/work-requests/{id}/abort", d.abort)
				r.Post("/work-requests/{id}/retry", d.retry)
				r.Post("/workers/{id}/enable", d.setWorkerEnabled(true))
				r.Post("/workers/{id}/disable", d.setWorkerEnabled(false))
				r.Post("/devices/{name}/health", d.setDeviceHealth)
				r.Post("/devices/{name}/health-check", d.requestHealthCheck)
			})
		})
	})
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		d.errorPage(w, r, http.StatusNotFound, "There is no such page.")
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		d.errorPage(w, r, http.StatusMethodNotAllowed, "Method "+r.Method+" is not allowed here.")
	})
	return r
}

// securityHeaders keeps the pages from running anything but the embedded
// scripts, from being framed, and their answers from being cached.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
			"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "same-origin")
		next.ServeHTTP(w, r)
	})
}

func (d *Dashboard) serveStatic(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "file")
	if name == "README.md" {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Cache-Control", "public, max-age=300")
	http.ServeFileFS(w, r, d.static, name)
}
