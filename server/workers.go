package server

import (
	"errors"
	"net/http"
	"regexp"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
)

// ConcurrencyKey is the dynamic metadata key in which a worker reports how
// many work requests it runs at once.
const ConcurrencyKey = "kiln:concurrency"

var (
	workerTokenRE = regexp.MustCompile(`^[A-Za-z0-9_-]{32,128}$`)
	workerNameRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`)
	workerTypes   = map[string]bool{"external": true, "celery": true, "signing": true}
)

func (s *Server) registerWorker(w http.ResponseWriter, r *http.Request) {
	var in schemas.WorkerRegister
	const title = "Cannot deserialize worker"
	if !s.decodeBody(w, r, &in, title) {
		return
	}
	if in.WorkerType == "" {
		in.WorkerType = "external"
	}
	ve := map[string][]string{}
	if !workerTokenRE.MatchString(in.Token) {
		ve["/token"] = []string{"must be 32 to 128 letters, digits, '-' or '_'"}
	}
	if !workerNameRE.MatchString(in.FQDN) {
		ve["/fqdn"] = []string{"must be a host name"}
	}
	if !workerTypes[in.WorkerType] {
		ve["/worker_type"] = []string{"must be external, celery or signing"}
	}
	if len(ve) > 0 {
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: title, Detail: "invalid registration", ValidationErrors: ve})
		return
	}
	activation := r.Header.Get("Token")
	if workerFrom(r.Context()) != nil || userFrom(r.Context()) != nil {
		activation = "" // a regular token in the header is not an activation
	}
	wk, err := s.store.RegisterWorker(r.Context(), in.FQDN, in.WorkerType, in.Token, activation)
	switch {
	case errors.Is(err, store.ErrNotFound):
		forbidden(w, "unknown-activation-token", "the activation token is unknown or was used already")
		return
	case errors.Is(err, store.ErrConflict):
		writeProblem(w, schemas.Problem{Status: http.StatusConflict, Title: "Cannot register worker", Detail: err.Error(), Code: "token-registered"})
		return
	case err != nil:
		s.internal(w, err)
		return
	}
	s.log.Info().Str("worker", wk.Name).Bool("enabled", wk.Enabled).Msg("worker registered")
	w.WriteHeader(http.StatusCreated)
}

func (s *Server) putDynamicMetadata(w http.ResponseWriter, r *http.Request) {
	wk := workerFrom(r.Context())
	var md map[string]any
	if !s.decodeBody(w, r, &md, "Cannot deserialize dynamic metadata") {
		return
	}
	if md == nil {
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: "Cannot deserialize dynamic metadata",
			Detail: "the body must be a JSON object", ValidationErrors: map[string][]string{"": {"must be a JSON object"}}})
		return
	}
	conc := 1
	if v, ok := md[ConcurrencyKey].(float64); ok && v >= 1 {
		conc = int(v)
	}
	if err := s.store.SetDynamicMetadata(r.Context(), wk.ID, md, conc); err != nil {
		s.internal(w, err)
		return
	}
	s.kickScheduler()
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) workerConfig(w http.ResponseWriter, r *http.Request) {
	wk := workerFrom(r.Context())
	writeJSON(w, http.StatusOK, schemas.WorkerConfig{
		WorkerID:          wk.ID,
		WorkerName:        wk.Name,
		NATSURL:           s.NATSURL(),
		Stream:            s.names.Stream(),
		AssignSubject:     s.names.AssignSubject(wk.ID),
		Consumer:          s.names.AssignConsumer(wk.ID),
		HeartbeatSubject:  s.names.HeartbeatSubject(wk.ID),
		HeartbeatInterval: s.cfg.HeartbeatInterval.String(),
		Concurrency:       wk.EffectiveConcurrency(),
		NATSAuth:          s.natsAuth(),
		NATSInbox:         s.names.WorkerInbox(wk.ID),
	})
}

// getNextForWorker is debusine's pull protocol: the oldest request assigned
// to this worker, marked running; the body shows it as it was before, as
// debusine's does. Kiln's own workers take assignments from NATS instead.
func (s *Server) getNextForWorker(w http.ResponseWriter, r *http.Request) {
	wk := workerFrom(r.Context())
	for range 3 {
		wr, err := s.store.NextForWorker(r.Context(), wk.ID)
		if errors.Is(err, store.ErrNotFound) {
			break
		}
		if err != nil {
			s.internal(w, err)
			return
		}
		if _, err := s.store.Start(r.Context(), wr.ID, wk.ID, wr.Attempt); errors.Is(err, store.ErrConflict) {
			continue // taken or withdrawn meanwhile: look again
		} else if err != nil {
			s.internal(w, err)
			return
		}
		s.writeWorkRequest(w, r, wr)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) startWorkRequest(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	wk := workerFrom(r.Context())
	var in schemas.WorkRequestStart
	if !s.decodeBody(w, r, &in, "Cannot start work request") {
		return
	}
	if in.Attempt < 1 {
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: "Cannot start work request",
			Detail: "attempt is required", ValidationErrors: map[string][]string{"/attempt": {"must be a positive integer"}}})
		return
	}
	wr, err := s.store.Start(r.Context(), id, wk.ID, in.Attempt)
	switch {
	case errors.Is(err, store.ErrConflict):
		writeProblem(w, schemas.Problem{Status: http.StatusConflict, Title: "Cannot start work request",
			Detail: "the assignment is stale: " + err.Error(), Code: "stale-assignment"})
		return
	case err != nil:
		s.storeError(w, err)
		return
	}
	s.log.Info().Int64("work_request", id).Str("worker", wk.Name).Int("attempt", wr.Attempt).Msg("work request started")
	s.writeWorkRequest(w, r, wr)
}

func (s *Server) completeWorkRequest(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	wk := workerFrom(r.Context())
	var in schemas.WorkRequestCompleted
	const title = "Cannot change work request as completed"
	if !s.decodeBody(w, r, &in, title) {
		return
	}
	if !in.Result.Valid() {
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: title, Detail: "result must be success, failure, error or skipped",
			ValidationErrors: map[string][]string{"/result": {"must be success, failure, error or skipped"}}})
		return
	}
	if len(in.Output) > maxOutputBytes {
		in.Output = in.Output[len(in.Output)-maxOutputBytes:]
	}
	if in.ErrorType != "" && (in.ErrorType != schemas.ErrorInfrastructure || in.Result != schemas.ResultError) {
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: title, Detail: "error_type must be infrastructure, with result error",
			ValidationErrors: map[string][]string{"/error_type": {"must be infrastructure, with result error"}}})
		return
	}
	if len(in.Reason) > maxReasonBytes {
		in.Reason = in.Reason[:maxReasonBytes]
	}
	wr, err := s.store.Complete(r.Context(), id, wk.ID, in.Attempt, store.Completion{Result: string(in.Result), Output: in.Output,
		Reason: in.Reason, ErrorType: in.ErrorType, InfrastructureRetries: max(s.cfg.InfrastructureRetries, 0)})
	switch {
	case errors.Is(err, store.ErrNotAssigned):
		writeProblem(w, schemas.Problem{Status: http.StatusUnauthorized, Title: "Invalid worker to update the work request",
			Detail: err.Error(), Code: "not-assigned"})
		return
	case errors.Is(err, store.ErrNotFound):
		problem(w, http.StatusNotFound, "Work request not found", "No WorkRequest matches the given query.")
		return
	case errors.Is(err, store.ErrStale):
		writeProblem(w, schemas.Problem{Status: http.StatusConflict, Title: title, Detail: err.Error(), Code: "stale-attempt"})
		return
	case errors.Is(err, store.ErrConflict):
		writeProblem(w, schemas.Problem{Status: http.StatusConflict, Title: title, Detail: err.Error(), Code: "already-finished"})
		return
	case err != nil:
		s.internal(w, err)
		return
	}
	if wr.ErrorType == schemas.ErrorInfrastructure {
		ev := s.log.Warn().Int64("work_request", id).Str("reason", wr.Reason)
		if wr.SupersededBy.Valid {
			ev = ev.Int64("retry", wr.SupersededBy.Int64)
		}
		ev.Msg("infrastructure error: device out of service")
	}
	s.metrics.completed.WithLabelValues(wr.TaskName, wr.Result).Inc()
	s.log.Info().Int64("work_request", id).Str("worker", wk.Name).Str("result", wr.Result).Msg("work request completed")
	s.kickScheduler()
	w.WriteHeader(http.StatusOK)
}

func (s *Server) listWorkers(w http.ResponseWriter, r *http.Request) {
	ws, err := s.store.Workers(r.Context())
	if err != nil {
		s.internal(w, err)
		return
	}
	overdue, err := s.store.OverdueKills(r.Context())
	if err != nil {
		s.internal(w, err)
		return
	}
	out := make([]schemas.Worker, 0, len(ws))
	for _, wk := range ws {
		ww := s.workerToWire(wk)
		ww.OverdueKills = append([]int64{}, overdue[wk.ID]...)
		out = append(out, ww)
	}
	writeJSON(w, http.StatusOK, out)
}
