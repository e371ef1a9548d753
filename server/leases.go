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

// renewLeases records what a heartbeat says the worker runs, and tells the
// worker to stop the runs that are not its own any more: a worker that was
// taken for lost and comes back must not go on with a request that runs
// elsewhere now.
func (s *Server) renewLeases(ctx context.Context, hb schemas.Heartbeat, t time.Time) error {
	runs := make([]store.RunRef, 0, max(len(hb.Runs), len(hb.Running)))
	if len(hb.Runs) > 0 {
		for _, r := range hb.Runs {
			runs = append(runs, store.RunRef{ID: r.ID, Attempt: r.Attempt})
		}
	} else {
		for _, id := range hb.Running {
			runs = append(runs, store.RunRef{ID: id})
		}
	}
	stale, err := s.store.RenewLeases(ctx, hb.WorkerID, runs, t)
	if err != nil {
		return err
	}
	for _, r := range stale {
		s.log.Warn().Int64("worker", hb.WorkerID).Int64("work_request", r.ID).Int("attempt", r.Attempt).
			Msg("worker runs a request that is not its own any more; telling it to stop")
		// The message id makes repeats within JetStream's duplicate
		// window one message: heartbeats repeat until the run is gone.
		s.sendControl(ctx, hb.WorkerID,
			bus.Control{Type: bus.ControlAbort, WorkRequestID: r.ID, Attempt: r.Attempt, Reason: "stale attempt"},
			fmt.Sprintf("stale-%d-%d-%d", r.ID, r.Attempt, hb.WorkerID))
	}
	return nil
}

// heartbeatLost notes that a heartbeat could not be recorded (the database
// is away): leases then look older than they are, and none may expire
// until heartbeats have been recorded for a whole lease timeout again.
func (s *Server) heartbeatLost() {
	s.heartbeatsSince.Store(time.Now().UnixNano())
}

// expireLeases (run every second on the scheduler leader) takes back the
// requests of workers that stopped showing that they hold them: never
// started ones go back to the queue, running ones are retried as a new
// attempt within the limit, else end in error (worker-lost). Not while
// this server is cut off from NATS, nor in the first lease timeout after
// it started, reconnected or failed to record heartbeats: the workers'
// heartbeats of that time were not recorded.
func (s *Server) expireLeases(ctx context.Context) {
	now := time.Now()
	if !s.nc.IsConnected() || now.Sub(time.Unix(0, s.heartbeatsSince.Load())) < s.cfg.LeaseTimeout {
		return // cut off from the heartbeats, or not long enough back
	}
	expired, err := s.store.ExpireLeases(ctx, now.Add(-s.cfg.LeaseTimeout), max(s.cfg.WorkerLostRetries, 0))
	if err != nil && ctx.Err() == nil {
		s.log.Error().Err(err).Msg("lease expiry")
	}
	for _, e := range expired {
		wr := e.WorkRequest
		s.log.Warn().Int64("work_request", wr.ID).Int("attempt", wr.Attempt).Int64("worker", wr.WorkerID.Int64).
			Str("outcome", e.Outcome).Msg("lease expired: the worker is lost")
		if e.Outcome == store.LeaseFailed {
			s.metrics.completed.WithLabelValues(wr.TaskName, string(schemas.ResultError)).Inc()
		}
		// Should the worker be alive after all, it stops the run.
		s.sendControl(ctx, wr.WorkerID.Int64,
			bus.Control{Type: bus.ControlAbort, WorkRequestID: wr.ID, Attempt: wr.Attempt, Reason: store.ReasonWorkerLost},
			fmt.Sprintf("stale-%d-%d-%d", wr.ID, wr.Attempt, wr.WorkerID.Int64))
	}
	if len(expired) > 0 {
		s.kickScheduler()
	}
}

// abandonedWorkRequest is a worker saying that it lost a run: after a
// restart its journal named it, or it stopped it to shut down. The request
// is taken back at once rather than after its lease.
func (s *Server) abandonedWorkRequest(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	wk := workerFrom(r.Context())
	var in schemas.WorkRequestAbandoned
	const title = "Cannot abandon the work request"
	if !s.decodeBody(w, r, &in, title) {
		return
	}
	outcome, err := s.store.Abandon(r.Context(), id, wk.ID, in.Attempt, max(s.cfg.WorkerLostRetries, 0))
	switch {
	case errors.Is(err, store.ErrNotAssigned):
		writeProblem(w, schemas.Problem{Status: http.StatusNotFound, Title: "Error",
			Detail: "No WorkRequest of this worker matches the given query.", Code: "not-assigned"})
		return
	case errors.Is(err, store.ErrNotFound):
		problem(w, http.StatusNotFound, "Work request not found", "No WorkRequest matches the given query.")
		return
	case errors.Is(err, store.ErrStale):
		writeProblem(w, schemas.Problem{Status: http.StatusConflict, Title: title, Detail: err.Error(), Code: "stale-attempt"})
		return
	case err != nil:
		s.internal(w, err)
		return
	}
	s.log.Warn().Int64("work_request", id).Int("attempt", in.Attempt).Str("worker", wk.Name).
		Str("reason", truncate(in.Reason, maxReasonBytes)).Str("outcome", outcome).Msg("worker abandoned a run")
	if outcome != "" {
		s.kickScheduler()
	}
	w.WriteHeader(http.StatusNoContent)
}
