package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/kiln-ci/kiln/bus"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
)

// enforceDeadlines (run every second on the scheduler leader) ends runs
// past their run-time limit (result error, reason timeout, and an abort to
// their worker), stops waiting for kill confirmations past their deadline,
// and takes back the requests of lost workers (expireLeases).
func (s *Server) enforceDeadlines(ctx context.Context) {
	now := time.Now()
	timedOut, err := s.store.TimeOut(ctx, now, now.Add(s.cfg.KillConfirmTimeout))
	if err != nil && ctx.Err() == nil {
		s.log.Error().Err(err).Msg("run-time limits")
	}
	for _, wr := range timedOut {
		s.log.Warn().Int64("work_request", wr.ID).Int("timeout_seconds", wr.TimeoutSeconds).Msg("work request timed out")
		s.metrics.completed.WithLabelValues(wr.TaskName, string(schemas.ResultError)).Inc()
		if wr.WorkerID.Valid {
			s.sendControl(ctx, wr.WorkerID.Int64,
				bus.Control{Type: bus.ControlAbort, WorkRequestID: wr.ID, Attempt: wr.Attempt, Reason: "timeout"},
				fmt.Sprintf("abort-%d-%d", wr.ID, wr.Attempt))
		}
	}
	expired, err := s.store.ExpireKills(ctx, now)
	if err != nil && ctx.Err() == nil {
		s.log.Error().Err(err).Msg("kill confirmations")
	}
	for _, wr := range expired {
		s.log.Warn().Int64("work_request", wr.ID).Int64("worker", wr.WorkerID.Int64).
			Msg("worker never confirmed the kill of an aborted run; its slot is freed and the worker is flagged")
	}
	if len(timedOut) > 0 || len(expired) > 0 {
		s.kickScheduler()
	}
	s.expireLeases(ctx)
}

// killedWorkRequest is the worker's confirmation that an aborted or
// timed-out run is gone: its slot is free again.
func (s *Server) killedWorkRequest(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	wk := workerFrom(r.Context())
	var in schemas.WorkRequestKilled
	if !s.decodeBody(w, r, &in, "Cannot confirm the kill") {
		return
	}
	err := s.store.ConfirmKill(r.Context(), id, wk.ID, in.Attempt)
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeProblem(w, schemas.Problem{Status: http.StatusNotFound, Title: "Error",
			Detail: "No WorkRequest of this worker matches the given query.", Code: "not-assigned"})
		return
	case err != nil:
		s.internal(w, err)
		return
	}
	s.log.Info().Int64("work_request", id).Str("worker", wk.Name).Msg("kill confirmed")
	s.kickScheduler()
	w.WriteHeader(http.StatusNoContent)
}
