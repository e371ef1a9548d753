package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jmoiron/sqlx"
)

// RunRef is one run a worker holds: a request and its attempt. Attempt 0
// stands for whatever attempt is current (a worker that does not say).
type RunRef struct {
	ID      int64
	Attempt int
}

// ReasonWorkerLost is the reason of a request taken back from a worker
// whose lease expired.
const ReasonWorkerLost = "worker-lost"

// RenewLeases records that worker workerID is alive at t and holds runs:
// the leases of its assigned requests and of the listed running ones are
// renewed. It returns the listed runs that are not the worker's to run any
// more (another attempt or worker has the request, or it ended and no kill
// is awaited): the worker must stop them. A running request the worker
// does not list is not renewed, and expires.
func (s *Store) RenewLeases(ctx context.Context, workerID int64, runs []RunRef, t time.Time) ([]RunRef, error) {
	t = t.UTC().Truncate(time.Microsecond)
	var stale []RunRef
	err := s.tx(ctx, func(tx *sqlx.Tx) error {
		if _, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE work_requests SET lease_renewed_at = ?
			WHERE worker_id = ? AND status = 'pending'`), t, workerID); err != nil {
			return err
		}
		if len(runs) == 0 {
			return nil
		}
		ids := make([]int64, 0, len(runs))
		for _, r := range runs {
			ids = append(ids, r.ID)
		}
		q, args, err := sqlx.In(`SELECT id, attempt, status, worker_id, kill_pending FROM work_requests WHERE id IN (?)`, ids)
		if err != nil {
			return err
		}
		var rows []struct {
			ID          int64  `db:"id"`
			Attempt     int    `db:"attempt"`
			Status      string `db:"status"`
			WorkerID    *int64 `db:"worker_id"`
			KillPending bool   `db:"kill_pending"`
		}
		if err := tx.SelectContext(ctx, &rows, tx.Rebind(q), args...); err != nil {
			return err
		}
		byID := map[int64]int{}
		for i, r := range rows {
			byID[r.ID] = i
		}
		var renew []int64
		for _, run := range runs {
			i, ok := byID[run.ID]
			if !ok {
				stale = append(stale, run)
				continue
			}
			r := rows[i]
			mine := r.WorkerID != nil && *r.WorkerID == workerID && (run.Attempt == 0 || run.Attempt == r.Attempt)
			switch {
			case mine && r.Status == "running":
				renew = append(renew, r.ID)
			case mine && (r.Status == "pending" || r.KillPending):
				// Starting, or being killed on the server's request.
			default:
				stale = append(stale, run)
			}
		}
		if len(renew) == 0 {
			return nil
		}
		q, args, err = sqlx.In(`UPDATE work_requests SET lease_renewed_at = ? WHERE worker_id = ? AND status = 'running' AND id IN (?)`,
			t, workerID, renew)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, tx.Rebind(q), args...)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("renew leases of worker %d: %w", workerID, err)
	}
	return stale, nil
}

// Lease expiry outcomes.
const (
	// LeaseWithdrawn: an assignment its worker never started goes back to
	// the queue, as a new attempt.
	LeaseWithdrawn = "withdrawn"
	// LeaseRetried: a running request goes back to the queue as a new
	// attempt, reason worker-lost.
	LeaseRetried = "retried"
	// LeaseFailed: a running request past its retries ends in error,
	// reason worker-lost.
	LeaseFailed = "failed"
)

// LeaseExpiry is a request taken back from its worker: as it was before,
// and what became of it.
type LeaseExpiry struct {
	WorkRequest WorkRequest
	Outcome     string
}

// ExpireLeases takes back the requests whose lease was last renewed before
// cutoff: assignments never started are withdrawn; running requests are
// retried as a new attempt while they have had fewer than maxRetries such
// retries, else completed in error. Each change is conditional on the
// request's attempt and worker, so that a worker that reports meanwhile
// wins or loses cleanly. Requests whose kill is awaited are left to the
// kill deadline.
func (s *Store) ExpireLeases(ctx context.Context, cutoff time.Time, maxRetries int) ([]LeaseExpiry, error) {
	var due []WorkRequest
	err := s.r.SelectContext(ctx, &due, s.rebind(`SELECT `+wrColumns+wrFrom+`
		WHERE work_requests.status IN ('pending', 'running') AND work_requests.worker_id IS NOT NULL
		AND NOT work_requests.kill_pending
		AND COALESCE(work_requests.lease_renewed_at, work_requests.assigned_at) < ?
		ORDER BY work_requests.id LIMIT 500`), cutoff.UTC())
	if err != nil {
		return nil, fmt.Errorf("expired leases: %w", err)
	}
	var out []LeaseExpiry
	for _, wr := range due {
		outcome, err := s.takeBack(ctx, wr, maxRetries)
		if err != nil {
			return out, err
		}
		if outcome != "" {
			out = append(out, LeaseExpiry{WorkRequest: wr, Outcome: outcome})
		}
	}
	return out, nil
}

// takeBack takes request wr (as read) back from its worker: withdrawn if
// it never started, retried as a new attempt within maxRetries, else
// completed in error, all with reason worker-lost. It returns the outcome,
// or "" when the request changed meanwhile (its worker reported first).
func (s *Store) takeBack(ctx context.Context, wr WorkRequest, maxRetries int) (string, error) {
	outcome, q := LeaseWithdrawn, `UPDATE work_requests SET worker_id = NULL, assigned_at = NULL, lease_renewed_at = NULL,
		attempt = attempt + 1 WHERE id = ? AND attempt = ? AND worker_id = ? AND status = ?`
	args := []any{wr.ID, wr.Attempt, wr.WorkerID.Int64, wr.Status}
	if wr.Status == "running" {
		if wr.WorkerLostRetries < maxRetries {
			outcome, q = LeaseRetried, `UPDATE work_requests SET status = 'pending', worker_id = NULL, assigned_at = NULL,
				started_at = NULL, deadline_at = NULL, lease_renewed_at = NULL, attempt = attempt + 1,
				worker_lost_retries = worker_lost_retries + 1, reason = ?
				WHERE id = ? AND attempt = ? AND worker_id = ? AND status = ?`
		} else {
			outcome, q = LeaseFailed, `UPDATE work_requests SET status = 'completed', result = 'error', reason = ?,
				completed_at = ?, lease_renewed_at = NULL WHERE id = ? AND attempt = ? AND worker_id = ? AND status = ?`
			args = append([]any{now()}, args...)
		}
		args = append([]any{ReasonWorkerLost}, args...)
	}
	res, err := s.w.ExecContext(ctx, s.rebind(q), args...)
	n, err := rowsAffected(res, err)
	if err != nil {
		return "", fmt.Errorf("take work request %d back: %w", wr.ID, err)
	}
	if n == 0 {
		return "", nil
	}
	return outcome, nil
}

// Abandon is a worker saying that it lost attempt of request id (it
// restarted, or stopped the run to shut down): the request is taken back
// at once, as when its lease expires. ErrNotAssigned when the request is
// not that worker's; ErrStale when the attempt is not current; nothing
// when it already ended.
func (s *Store) Abandon(ctx context.Context, id, workerID int64, attempt, maxRetries int) (string, error) {
	wr, err := s.WorkRequest(ctx, id)
	if err != nil {
		return "", err
	}
	switch {
	case wr.Status != "pending" && wr.Status != "running":
		return "", nil
	case !wr.WorkerID.Valid || wr.WorkerID.Int64 != workerID:
		return "", fmt.Errorf("work request %d: %w", id, ErrNotAssigned)
	case attempt != wr.Attempt:
		return "", fmt.Errorf("attempt %d of work request %d, the current attempt is %d: %w", attempt, id, wr.Attempt, ErrStale)
	}
	return s.takeBack(ctx, wr, maxRetries)
}
