package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/kiln-ci/kiln/schemas"
)

// WorkRequest is a stored work request.
type WorkRequest struct {
	ID                 int64          `db:"id"`
	TaskName           string         `db:"task_name"`
	TaskType           string         `db:"task_type"`
	TaskData           string         `db:"task_data"`
	DynamicTaskData    sql.NullString `db:"dynamic_task_data"`
	Status             string         `db:"status"`
	Result             string         `db:"result"`
	PriorityBase       int            `db:"priority_base"`
	PriorityAdjustment int            `db:"priority_adjustment"`
	Priority           int            `db:"priority"`
	WorkerID           sql.NullInt64  `db:"worker_id"`
	Workspace          string         `db:"workspace"`
	CreatedBy          sql.NullInt64  `db:"created_by"`
	AbortedBy          sql.NullInt64  `db:"aborted_by"`
	CreatedAt          time.Time      `db:"created_at"`
	AssignedAt         sql.NullTime   `db:"assigned_at"`
	StartedAt          sql.NullTime   `db:"started_at"`
	CompletedAt        sql.NullTime   `db:"completed_at"`
	Attempt            int            `db:"attempt"`
	Supersedes         sql.NullInt64  `db:"supersedes"`
	SupersededBy       sql.NullInt64  `db:"superseded_by"`
	Shape              string         `db:"shape"`
	Output             string         `db:"output"`
	Reason             string         `db:"reason"`
	ErrorType          string         `db:"error_type"`
	TimeoutSeconds     int            `db:"timeout_seconds"`
	DeadlineAt         sql.NullTime   `db:"deadline_at"`
	KillPending        bool           `db:"kill_pending"`
	KillDeadlineAt     sql.NullTime   `db:"kill_deadline_at"`
	KillConfirmedAt    sql.NullTime   `db:"kill_confirmed_at"`
	KillOverdue        bool           `db:"kill_overdue"`
	WaitingReason      sql.NullString `db:"waiting_reason"`
	LeaseRenewedAt     sql.NullTime   `db:"lease_renewed_at"`
	WorkerLostRetries  int            `db:"worker_lost_retries"`
}

const wrColumns = `work_requests.*, CASE WHEN work_requests.status = 'pending' AND work_requests.worker_id IS NULL
	THEN waiting_reasons.reason END AS waiting_reason`
const wrFrom = ` FROM work_requests LEFT JOIN waiting_reasons ON waiting_reasons.shape = work_requests.shape`

// NewWorkRequest is what CreateWorkRequest needs.
type NewWorkRequest struct {
	TaskName     string
	TaskType     string
	TaskData     string
	Workspace    string
	PriorityBase int
	CreatedBy    int64
	Shape        string
	// TimeoutSeconds limits the run time; the deadline is set at start.
	TimeoutSeconds int
}

// CreateWorkRequest stores a new pending work request.
func (s *Store) CreateWorkRequest(ctx context.Context, n NewWorkRequest) (WorkRequest, error) {
	var id int64
	err := s.tx(ctx, func(tx *sqlx.Tx) error {
		var err error
		id, err = insertWorkRequest(ctx, tx, n, sql.NullInt64{})
		return err
	})
	if err != nil {
		return WorkRequest{}, fmt.Errorf("create work request: %w", err)
	}
	return s.WorkRequest(ctx, id)
}

func insertWorkRequest(ctx context.Context, tx *sqlx.Tx, n NewWorkRequest, supersedes sql.NullInt64) (int64, error) {
	var createdBy any
	if n.CreatedBy != 0 {
		createdBy = n.CreatedBy
	}
	var id int64
	err := tx.GetContext(ctx, &id, tx.Rebind(`INSERT INTO work_requests
		(task_name, task_type, task_data, status, priority_base, priority_adjustment, priority, workspace, created_by, created_at, attempt, supersedes, shape, timeout_seconds)
		VALUES (?, ?, ?, 'pending', ?, 0, ?, ?, ?, ?, 1, ?, ?, ?) RETURNING id`),
		n.TaskName, n.TaskType, n.TaskData, n.PriorityBase, n.PriorityBase, n.Workspace, createdBy, now(), supersedes, n.Shape, n.TimeoutSeconds)
	return id, err
}

// WorkRequest returns one work request.
func (s *Store) WorkRequest(ctx context.Context, id int64) (WorkRequest, error) {
	var wr WorkRequest
	err := s.r.GetContext(ctx, &wr, s.rebind(`SELECT `+wrColumns+wrFrom+` WHERE work_requests.id = ?`), id)
	if err != nil {
		return WorkRequest{}, notFound("work request", id, err)
	}
	return wr, nil
}

// ListFilter selects work requests for ListWorkRequests.
type ListFilter struct {
	// BeforeID, when non-zero, returns only ids below it (the cursor).
	BeforeID int64
	// AfterID, when non-zero, returns only ids above it (paging back).
	AfterID  int64
	Limit    int
	Status   string
	TaskName string
	WorkerID int64
}

// ListWorkRequests returns work requests newest first (oldest first when
// paging back with AfterID, which the caller reverses).
func (s *Store) ListWorkRequests(ctx context.Context, f ListFilter) ([]WorkRequest, error) {
	var where []string
	var args []any
	order := "DESC"
	if f.BeforeID > 0 {
		where = append(where, "work_requests.id < ?")
		args = append(args, f.BeforeID)
	}
	if f.AfterID > 0 {
		where = append(where, "work_requests.id > ?")
		args = append(args, f.AfterID)
		order = "ASC"
	}
	if f.Status != "" {
		where = append(where, "work_requests.status = ?")
		args = append(args, f.Status)
	}
	if f.TaskName != "" {
		where = append(where, "work_requests.task_name = ?")
		args = append(args, f.TaskName)
	}
	if f.WorkerID != 0 {
		where = append(where, "work_requests.worker_id = ?")
		args = append(args, f.WorkerID)
	}
	q := `SELECT ` + wrColumns + wrFrom
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY work_requests.id " + order + " LIMIT ?"
	args = append(args, max(f.Limit, 1))
	var out []WorkRequest
	if err := s.r.SelectContext(ctx, &out, s.rebind(q), args...); err != nil {
		return nil, fmt.Errorf("list work requests: %w", err)
	}
	return out, nil
}

// CountWorkRequests counts work requests, optionally of one status.
func (s *Store) CountWorkRequests(ctx context.Context, status string) (int64, error) {
	var n int64
	var err error
	if status == "" {
		err = s.r.GetContext(ctx, &n, `SELECT COUNT(*) FROM work_requests`)
	} else {
		err = s.r.GetContext(ctx, &n, s.rebind(`SELECT COUNT(*) FROM work_requests WHERE status = ?`), status)
	}
	if err != nil {
		return 0, fmt.Errorf("count work requests: %w", err)
	}
	return n, nil
}

// SetPriorityAdjustment changes a request's priority adjustment.
func (s *Store) SetPriorityAdjustment(ctx context.Context, id int64, adj int) error {
	return s.execOne(ctx, "work request", id,
		`UPDATE work_requests SET priority_adjustment = ?, priority = priority_base + ? WHERE id = ?`, adj, adj, id)
}

// Abort marks a pending, blocked or running request aborted by user by. A
// running request also gets a pending kill: its worker's slot stays taken
// until the worker confirms the kill (ConfirmKill) or killDeadline passes
// (ExpireKills). It returns the request as it was before, so the caller knows
// which worker (if any) to tell. ErrConflict when it has already finished.
func (s *Store) Abort(ctx context.Context, id int64, by int64, killDeadline time.Time) (WorkRequest, error) {
	var before WorkRequest
	err := s.tx(ctx, func(tx *sqlx.Tx) error {
		if err := tx.GetContext(ctx, &before, tx.Rebind(`SELECT * FROM work_requests WHERE id = ?`+s.forUpdate()), id); err != nil {
			return notFound("work request", id, err)
		}
		var abortedBy any
		if by != 0 {
			abortedBy = by
		}
		running := before.Status == "running"
		var deadline any
		if running {
			deadline = killDeadline.UTC()
		}
		res, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE work_requests SET status = 'aborted', aborted_by = ?, completed_at = ?,
			kill_pending = ?, kill_deadline_at = ?
			WHERE id = ? AND status IN ('pending', 'blocked', 'running')`), abortedBy, now(), running, deadline, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("work request %d is %s: %w", id, before.Status, ErrConflict)
		}
		return nil
	})
	if err != nil {
		return WorkRequest{}, fmt.Errorf("abort: %w", err)
	}
	return before, nil
}

// Retry creates a new request that supersedes id, which must have ended in
// failure, error or aborted and not have been retried already.
func (s *Store) Retry(ctx context.Context, id int64, by int64) (WorkRequest, error) {
	var newID int64
	err := s.tx(ctx, func(tx *sqlx.Tx) error {
		var err error
		newID, err = retryTx(ctx, tx, id, by)
		return err
	})
	if err != nil {
		return WorkRequest{}, fmt.Errorf("retry: %w", err)
	}
	return s.WorkRequest(ctx, newID)
}

// retryTx is Retry inside a transaction; it returns the new request's id.
func retryTx(ctx context.Context, tx *sqlx.Tx, id int64, by int64) (int64, error) {
	var old WorkRequest
	if err := tx.GetContext(ctx, &old, tx.Rebind(`SELECT `+wrColumns+wrFrom+` WHERE work_requests.id = ?`), id); err != nil {
		return 0, notFound("work request", id, err)
	}
	retriable := old.Status == "aborted" || (old.Status == "completed" && (old.Result == "failure" || old.Result == "error"))
	if !retriable {
		what := old.Status
		if old.Result != "" {
			what += "/" + old.Result
		}
		return 0, fmt.Errorf("work request %d is %s, only failed, errored or aborted requests can be retried: %w", id, what, ErrConflict)
	}
	if old.SupersededBy.Valid {
		return 0, fmt.Errorf("work request %d was already retried as %d: %w", id, old.SupersededBy.Int64, ErrConflict)
	}
	createdBy := by
	if createdBy == 0 && old.CreatedBy.Valid {
		createdBy = old.CreatedBy.Int64
	}
	newID, err := insertWorkRequest(ctx, tx, NewWorkRequest{
		TaskName: old.TaskName, TaskType: old.TaskType, TaskData: old.TaskData, Workspace: old.Workspace,
		PriorityBase: old.PriorityBase, CreatedBy: createdBy, Shape: old.Shape, TimeoutSeconds: old.TimeoutSeconds,
	}, sql.NullInt64{Int64: id, Valid: true})
	if err != nil {
		return 0, err
	}
	if _, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE work_requests SET superseded_by = ? WHERE id = ?`), newID, id); err != nil {
		return 0, err
	}
	// Keep the adjustment: a retry should not lose its place.
	_, err = tx.ExecContext(ctx, tx.Rebind(`UPDATE work_requests SET priority_adjustment = ?, priority = ? WHERE id = ?`),
		old.PriorityAdjustment, old.PriorityBase+old.PriorityAdjustment, newID)
	return newID, err
}

// Start moves a request assigned to workerID with that attempt to running.
// ErrConflict when it is no longer assigned to that worker and attempt, or
// was already started: the assignment message is stale.
func (s *Store) Start(ctx context.Context, id, workerID int64, attempt int) (WorkRequest, error) {
	var started bool
	err := s.tx(ctx, func(tx *sqlx.Tx) error {
		var timeout int
		err := tx.GetContext(ctx, &timeout, tx.Rebind(`SELECT timeout_seconds FROM work_requests WHERE id = ?`), id)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		t := now()
		var deadline any
		if timeout > 0 {
			deadline = t.Add(time.Duration(timeout) * time.Second)
		}
		res, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE work_requests SET status = 'running', started_at = ?, deadline_at = ?,
			lease_renewed_at = ? WHERE id = ? AND worker_id = ? AND attempt = ? AND status = 'pending'`), t, deadline, t, id, workerID, attempt)
		if err != nil {
			return err
		}
		n, _ := res.RowsAffected()
		started = n == 1
		return nil
	})
	if err != nil {
		return WorkRequest{}, fmt.Errorf("start work request %d: %w", id, err)
	}
	if !started {
		wr, err := s.WorkRequest(ctx, id)
		if err != nil {
			return WorkRequest{}, err
		}
		return wr, fmt.Errorf("start work request %d (status %s, attempt %d): %w", id, wr.Status, wr.Attempt, ErrConflict)
	}
	return s.WorkRequest(ctx, id)
}

// Completion is what a worker reports at the end of a run.
type Completion struct {
	Result string
	// Output is the end of the run's output.
	Output string
	// Reason says why the run ended in error ("" for none).
	Reason string
	// ErrorType classifies an error: "infrastructure" for the lab's own
	// failures (a device that does not answer), "" otherwise.
	ErrorType string
	// InfrastructureRetries is how many automatic retries in a row an
	// infrastructure error may have (0: none).
	InfrastructureRetries int
}

// Complete records the result reported by workerID for attempt (0: the
// current one). ErrNotFound when there is no such request, ErrNotAssigned
// (also an ErrNotFound) when it is not assigned to that worker;
// ErrConflict when the attempt is stale or the request already finished (for
// example aborted).
func (s *Store) Complete(ctx context.Context, id, workerID int64, attempt int, c Completion) (WorkRequest, error) {
	var wr WorkRequest
	err := s.tx(ctx, func(tx *sqlx.Tx) error {
		if err := tx.GetContext(ctx, &wr, tx.Rebind(`SELECT `+wrColumns+wrFrom+` WHERE work_requests.id = ?`), id); err != nil {
			return notFound("work request", id, err)
		}
		if !wr.WorkerID.Valid || wr.WorkerID.Int64 != workerID {
			return fmt.Errorf("work request %d: %w", id, ErrNotAssigned)
		}
		if attempt != 0 && attempt != wr.Attempt {
			return fmt.Errorf("attempt %d of work request %d, the current attempt is %d: %w", attempt, id, wr.Attempt, ErrStale)
		}
		if wr.Status != "running" && wr.Status != "pending" {
			if wr.Status == "completed" && wr.Result == c.Result {
				return nil // a repeated report of the same result is not an error
			}
			return fmt.Errorf("work request %d is already %s: %w", id, wr.Status, ErrConflict)
		}
		t := now()
		_, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE work_requests SET status = 'completed', result = ?, output = ?, reason = ?,
			error_type = ?, completed_at = ?, started_at = COALESCE(started_at, ?) WHERE id = ?`), c.Result, c.Output, c.Reason, c.ErrorType, t, t, id)
		switch {
		case err != nil:
			return err
		case schemas.IsDeviceTask(wr.TaskName):
			return s.deviceTaskDone(ctx, tx, wr, c)
		case c.ErrorType == "infrastructure":
			return infrastructureErrorTx(ctx, tx, id, c)
		}
		return nil
	})
	if err != nil {
		return WorkRequest{}, fmt.Errorf("complete: %w", err)
	}
	return s.WorkRequest(ctx, id)
}

// NextForWorker returns the oldest request assigned to workerID that it has
// not started, or ErrNotFound.
func (s *Store) NextForWorker(ctx context.Context, workerID int64) (WorkRequest, error) {
	var wr WorkRequest
	err := s.r.GetContext(ctx, &wr, s.rebind(`SELECT `+wrColumns+wrFrom+`
		WHERE work_requests.worker_id = ? AND work_requests.status = 'pending'
		ORDER BY work_requests.priority DESC, work_requests.created_at, work_requests.id LIMIT 1`), workerID)
	if err != nil {
		return WorkRequest{}, notFound("next work request for worker", workerID, err)
	}
	return wr, nil
}

// ActiveForWorker lists the requests assigned to or running on a worker.
func (s *Store) ActiveForWorker(ctx context.Context, workerID int64) ([]WorkRequest, error) {
	var out []WorkRequest
	err := s.r.SelectContext(ctx, &out, s.rebind(`SELECT `+wrColumns+wrFrom+`
		WHERE work_requests.worker_id = ? AND work_requests.status IN ('pending', 'running') ORDER BY work_requests.id`), workerID)
	if err != nil {
		return nil, fmt.Errorf("active work requests of worker %d: %w", workerID, err)
	}
	return out, nil
}

// ConfirmKill records that workerID has stopped everything attempt of request
// id ran, freeing its slot. A confirmation for a request with no pending kill
// is accepted and changes nothing, so workers may confirm every abort they
// receive. ErrNotFound when the request is not (or no longer) that worker's.
func (s *Store) ConfirmKill(ctx context.Context, id, workerID int64, attempt int) error {
	res, err := s.w.ExecContext(ctx, s.rebind(`UPDATE work_requests SET kill_pending = ?, kill_overdue = ?, kill_confirmed_at = ?
		WHERE id = ? AND worker_id = ? AND (attempt = ? OR ? = 0) AND (kill_pending OR kill_overdue)`),
		false, false, now(), id, workerID, attempt, attempt)
	if err != nil {
		return fmt.Errorf("confirm kill of work request %d: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return nil
	}
	wr, err := s.WorkRequest(ctx, id)
	if err != nil {
		return err
	}
	if !wr.WorkerID.Valid || wr.WorkerID.Int64 != workerID {
		return fmt.Errorf("work request %d: %w", id, ErrNotAssigned)
	}
	return nil
}

// TimeOut ends running requests whose deadline has passed: completed with
// result error and reason "timeout", with a pending kill until killDeadline.
// It returns them as they were before, for the caller to tell their workers.
func (s *Store) TimeOut(ctx context.Context, at, killDeadline time.Time) ([]WorkRequest, error) {
	var due []WorkRequest
	err := s.r.SelectContext(ctx, &due, s.rebind(`SELECT `+wrColumns+wrFrom+`
		WHERE work_requests.status = 'running' AND work_requests.deadline_at < ? ORDER BY work_requests.id LIMIT 500`), at.UTC())
	if err != nil {
		return nil, fmt.Errorf("due work requests: %w", err)
	}
	var out []WorkRequest
	for _, wr := range due {
		res, err := s.w.ExecContext(ctx, s.rebind(`UPDATE work_requests SET status = 'completed', result = 'error', reason = 'timeout',
			completed_at = ?, kill_pending = ?, kill_deadline_at = ? WHERE id = ? AND status = 'running' AND attempt = ?`),
			now(), true, killDeadline.UTC(), wr.ID, wr.Attempt)
		if err != nil {
			return out, fmt.Errorf("time out work request %d: %w", wr.ID, err)
		}
		if n, _ := res.RowsAffected(); n == 1 {
			out = append(out, wr)
		}
	}
	return out, nil
}

// ExpireKills gives up waiting for kill confirmations whose deadline has
// passed: the slot is freed and the request is flagged kill_overdue, which
// shows on its worker. It returns the requests concerned.
func (s *Store) ExpireKills(ctx context.Context, at time.Time) ([]WorkRequest, error) {
	var due []WorkRequest
	err := s.r.SelectContext(ctx, &due, s.rebind(`SELECT `+wrColumns+wrFrom+`
		WHERE work_requests.kill_pending AND work_requests.kill_deadline_at < ? ORDER BY work_requests.id`), at.UTC())
	if err != nil {
		return nil, fmt.Errorf("overdue kills: %w", err)
	}
	var out []WorkRequest
	for _, wr := range due {
		res, err := s.w.ExecContext(ctx, s.rebind(`UPDATE work_requests SET kill_pending = ?, kill_overdue = ?
			WHERE id = ? AND kill_pending`), false, true, wr.ID)
		if err != nil {
			return out, fmt.Errorf("expire kill of work request %d: %w", wr.ID, err)
		}
		if n, _ := res.RowsAffected(); n == 1 {
			out = append(out, wr)
		}
	}
	return out, nil
}

// OverdueKills maps worker ids to the requests whose kill they never
// confirmed.
func (s *Store) OverdueKills(ctx context.Context) (map[int64][]int64, error) {
	var rows []struct {
		ID       int64 `db:"id"`
		WorkerID int64 `db:"worker_id"`
	}
	if err := s.r.SelectContext(ctx, &rows, `SELECT id, worker_id FROM work_requests WHERE kill_overdue AND worker_id IS NOT NULL ORDER BY id`); err != nil {
		return nil, fmt.Errorf("overdue kills: %w", err)
	}
	out := map[int64][]int64{}
	for _, r := range rows {
		out[r.WorkerID] = append(out[r.WorkerID], r.ID)
	}
	return out, nil
}
