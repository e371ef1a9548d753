package server

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
)

type ctxKey int

const (
	userKey ctxKey = iota
	workerKey
)

func userFrom(ctx context.Context) *store.User {
	u, _ := ctx.Value(userKey).(*store.User)
	return u
}

func workerFrom(ctx context.Context) *store.Worker {
	w, _ := ctx.Value(workerKey).(*store.Worker)
	return w
}

// Handler returns the HTTP handler: the API under /api/1.0/, /metrics and
// /healthz, and the web dashboard (server/web) for every other path.
func (s *Server) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(middleware.Recoverer, s.instrument)
	r.Get("/healthz", s.healthz)
	r.Method(http.MethodGet, "/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	r.Route("/api/1.0", func(r chi.Router) {
		r.Use(s.authenticate, s.checkScope)
		r.Get("/whoami/", s.whoami)
		r.Post("/worker/register/", s.registerWorker)
		r.Group(func(r chi.Router) {
			r.Use(s.requireUser)
			r.Post("/work-request/", s.createWorkRequest)
			r.Patch("/work-request/{id}/", s.patchWorkRequest)
			r.Post("/work-request/{id}/abort/", s.abortWorkRequest)
			r.Post("/work-request/{id}/retry/", s.retryWorkRequest)
			r.Get("/worker/", s.listWorkers)
		})
		r.Group(func(r chi.Router) {
			r.Use(s.requireUserOrWorker)
			r.Get("/work-request/", s.listWorkRequests)
			r.Get("/work-request/{id}/", s.getWorkRequest)
			r.Get("/work-request/{id}/log/", s.getLog)
		})
		r.Group(func(r chi.Router) {
			r.Use(s.requireWorker)
			r.Put("/worker/dynamic-metadata/", s.putDynamicMetadata)
			r.Get("/worker/config/", s.workerConfig)
			r.Get("/work-request/get-next-for-worker/", s.getNextForWorker)
			r.Post("/work-request/{id}/start/", s.startWorkRequest)
			r.Put("/work-request/{id}/completed/", s.completeWorkRequest)
			r.Post("/work-request/{id}/killed/", s.killedWorkRequest)
			r.Post("/work-request/{id}/abandoned/", s.abandonedWorkRequest)
		})
		s.artifactRoutes(r)

		// Devices under test (Kiln): PUT worker/devices/, GET device/,
		// GET device/{name}/, POST device/{name}/health/ (server/devices.go).
		s.deviceRoutes(r)
	})
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		// The dashboard takes what the API does not route, so that its
		// pages stay out of the API's router (and its OpenAPI document).
		if s.dashboard != nil && !isAPIPath(r.URL.Path) {
			s.dashboard.ServeHTTP(w, r)
			return
		}
		problem(w, http.StatusNotFound, "Error", "no such endpoint")
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		problem(w, http.StatusMethodNotAllowed, "Error", "method "+r.Method+" is not allowed here")
	})
	return r
}

func (s *Server) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		start := time.Now()
		next.ServeHTTP(ww, r)
		route := chi.RouteContext(r.Context()).RoutePattern()
		if route == "" {
			route = "unmatched"
		}
		s.metrics.requests.WithLabelValues(route, r.Method, strconv.Itoa(ww.Status())).Inc()
		s.log.Debug().Str("method", r.Method).Str("route", route).Int("status", ww.Status()).
			Dur("duration", time.Since(start)).Msg("http")
	})
}

// authenticate resolves the Token header (any case, as debusine) to a user or
// a worker. An unknown token is not an error here: endpoints that need one
// say so. An expired user token is: 403 token-expired (tokenexpiry.go).
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := r.Header.Get("Token")
		ctx := r.Context()
		// Workers first: they make most calls (start, completed, logs,
		// artifacts), and a user lookup that misses costs a join.
		if tok != "" {
			if wk, err := s.store.WorkerForToken(ctx, tok); err == nil {
				ctx = context.WithValue(ctx, workerKey, &wk)
			} else if !errors.Is(err, store.ErrNotFound) {
				s.tokenCheckFailed(w, err)
				return
			} else if u, err := s.store.UserForToken(ctx, tok); err == nil {
				ctx = context.WithValue(ctx, userKey, &u)
			} else if errors.Is(err, store.ErrTokenExpired) {
				s.tokenExpired(w, err)
				return
			} else if !errors.Is(err, store.ErrNotFound) {
				s.tokenCheckFailed(w, err)
				return
			}
		}
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// tokenCheckFailed answers a request whose token could not be checked:
// 503 with Retry-After, the database being away (or failing).
func (s *Server) tokenCheckFailed(w http.ResponseWriter, err error) {
	s.log.Warn().Err(err).Msg("cannot check a token")
	w.Header().Set("Retry-After", retryAfterSeconds)
	problem(w, http.StatusServiceUnavailable, "Error", "cannot check the token: database unavailable")
}

// checkScope accepts requests without X-Debusine-Scope or naming this
// server's scope; others get 404 as from debusine.
func (s *Server) checkScope(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if sc := r.Header.Get("X-Debusine-Scope"); sc != "" && sc != s.cfg.Scope {
			problem(w, http.StatusNotFound, "Error", "scope "+strconv.Quote(sc)+" not found; this server serves "+strconv.Quote(s.cfg.Scope))
			return
		}
		next.ServeHTTP(w, r)
	})
}

const noCredentials = "Authentication credentials were not provided."

func (s *Server) requireUser(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if userFrom(r.Context()) == nil {
			if workerFrom(r.Context()) != nil {
				forbidden(w, "user-token-required", "You do not have permission to perform this action: a user token is required.")
				return
			}
			s.denyCredentials(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) requireUserOrWorker(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if userFrom(r.Context()) == nil {
			wk := workerFrom(r.Context())
			if wk == nil {
				s.denyCredentials(w, r)
				return
			}
			if !wk.Enabled {
				s.workerDisabled(w, wk)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) requireWorker(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wk := workerFrom(r.Context())
		switch {
		case wk == nil && userFrom(r.Context()) != nil:
			forbidden(w, "worker-token-required", "You do not have permission to perform this action: a worker token is required.")
		case wk == nil:
			s.denyCredentials(w, r)
		case !wk.Enabled:
			s.workerDisabled(w, wk)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

func (s *Server) workerDisabled(w http.ResponseWriter, wk *store.Worker) {
	forbidden(w, "worker-disabled", "Worker "+wk.Name+" is not enabled: an admin must enable it (kiln-server admin worker enable "+wk.Name+").")
}

func (s *Server) denyCredentials(w http.ResponseWriter, r *http.Request) {
	code := "missing-token"
	if r.Header.Get("Token") != "" {
		code = "unknown-token"
	}
	forbidden(w, code, noCredentials)
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.store.Ping(ctx); err != nil {
		problem(w, http.StatusServiceUnavailable, "Database unavailable", err.Error())
		return
	}
	if !s.nc.IsConnected() {
		problem(w, http.StatusServiceUnavailable, "NATS unavailable", "not connected to "+s.natsURL)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "database": s.store.Dialect(), "scheduler_leader": s.sched.Leader()})
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request) {
	out := schemas.WhoAmI{User: "<anonymous>", Auth: r.Header.Get("Token") != ""}
	if u := userFrom(r.Context()); u != nil {
		out.User, out.UserID, out.Admin = u.Username, u.ID, u.IsAdmin
	}
	if wk := workerFrom(r.Context()); wk != nil {
		out.WorkerToken, out.Worker, out.WorkerID = true, wk.Name, wk.ID
	}
	writeJSON(w, http.StatusOK, out)
}

func pathID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil || id <= 0 {
		problem(w, http.StatusNotFound, "Error", "No WorkRequest matches the given query.")
		return 0, false
	}
	return id, true
}
