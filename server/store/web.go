package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
)

// The web dashboard's reads (server/web): work request lists with more
// filters than the API's and without the large columns, the overview's
// counts, and browser sessions.

// DashboardFilter selects work requests for DashboardWorkRequests. Zero
// fields select everything.
type DashboardFilter struct {
	Status    string
	Results   []string
	TaskName  string
	Workspace string
	WorkerID  int64
	CreatedBy int64
	// BeforeID returns only ids below it (the next, older page); AfterID
	// only ids above it (the previous page), oldest first.
	BeforeID, AfterID int64
	Limit             int
}

// WorkRequestSummary is a work request as a list shows it: no task data
// and no output, with the names of its worker and creator.
type WorkRequestSummary struct {
	ID            int64          `db:"id"`
	TaskName      string         `db:"task_name"`
	Status        string         `db:"status"`
	Result        string         `db:"result"`
	Workspace     string         `db:"workspace"`
	Priority      int            `db:"priority"`
	Attempt       int            `db:"attempt"`
	WorkerID      sql.NullInt64  `db:"worker_id"`
	CreatedBy     sql.NullInt64  `db:"created_by"`
	CreatedAt     time.Time      `db:"created_at"`
	StartedAt     sql.NullTime   `db:"started_at"`
	CompletedAt   sql.NullTime   `db:"completed_at"`
	KillPending   bool           `db:"kill_pending"`
	Reason        string         `db:"reason"`
	ErrorType     string         `db:"error_type"`
	WaitingReason sql.NullString `db:"waiting_reason"`
	WorkerName    sql.NullString `db:"worker_name"`
	CreatedByName sql.NullString `db:"created_by_name"`
}

// where is the filter's condition (without the page bounds) and its
// arguments.
func (f DashboardFilter) where() (string, []any) {
	var conds []string
	var args []any
	add := func(cond string, arg any) {
		conds = append(conds, cond)
		args = append(args, arg)
	}
	if f.Status != "" {
		add("work_requests.status = ?", f.Status)
	}
	if len(f.Results) > 0 {
		conds = append(conds, "work_requests.result IN (?"+strings.Repeat(", ?", len(f.Results)-1)+")")
		for _, r := range f.Results {
			args = append(args, r)
		}
	}
	if f.TaskName != "" {
		add("work_requests.task_name = ?", f.TaskName)
	}
	if f.Workspace != "" {
		add("work_requests.workspace = ?", f.Workspace)
	}
	if f.WorkerID != 0 {
		add("work_requests.worker_id = ?", f.WorkerID)
	}
	if f.CreatedBy != 0 {
		add("work_requests.created_by = ?", f.CreatedBy)
	}
	if len(conds) == 0 {
		return "", nil
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

// DashboardWorkRequests returns a page of work requests newest first (oldest
// first when paging back with AfterID; the caller reverses it). Each filter
// has an index that ends in id, so that a page reads about Limit index
// entries whatever the table's size.
func (s *Store) DashboardWorkRequests(ctx context.Context, f DashboardFilter) ([]WorkRequestSummary, error) {
	where, args := f.where()
	order := "DESC"
	bound := func(cond string, id int64) {
		if where == "" {
			where = " WHERE " + cond
		} else {
			where += " AND " + cond
		}
		args = append(args, id)
	}
	if f.BeforeID > 0 {
		bound("work_requests.id < ?", f.BeforeID)
	}
	if f.AfterID > 0 {
		bound("work_requests.id > ?", f.AfterID)
		order = "ASC"
	}
	q := `SELECT work_requests.id, work_requests.task_name, work_requests.status, work_requests.result,
		work_requests.workspace, work_requests.priority, work_requests.attempt, work_requests.worker_id,
		work_requests.created_by, work_requests.created_at, work_requests.started_at, work_requests.completed_at,
		work_requests.kill_pending, work_requests.reason, work_requests.error_type,
		CASE WHEN work_requests.status = 'pending' AND work_requests.worker_id IS NULL
			THEN waiting_reasons.reason END AS waiting_reason,
		workers.name AS worker_name, users.username AS created_by_name
		FROM work_requests
		LEFT JOIN waiting_reasons ON waiting_reasons.shape = work_requests.shape
		LEFT JOIN workers ON workers.id = work_requests.worker_id
		LEFT JOIN users ON users.id = work_requests.created_by` + where +
		` ORDER BY work_requests.id ` + order + ` LIMIT ?`
	args = append(args, max(f.Limit, 1))
	var out []WorkRequestSummary
	if err := s.r.SelectContext(ctx, &out, s.rebind(q), args...); err != nil {
		return nil, fmt.Errorf("dashboard work requests: %w", err)
	}
	return out, nil
}

// CountDashboardWorkRequests counts the work requests that f selects (its
// page bounds ignored), stopping at upTo: more reports that there are more
// than that. Counting stops early so that a count costs at most upTo index
// entries on a large table.
func (s *Store) CountDashboardWorkRequests(ctx context.Context, f DashboardFilter, upTo int) (n int64, more bool, err error) {
	where, args := f.where()
	args = append(args, upTo+1)
	err = s.r.GetContext(ctx, &n, s.rebind(`SELECT COUNT(*) FROM (SELECT 1 FROM work_requests`+where+` LIMIT ?) AS matching`), args...)
	if err != nil {
		return 0, false, fmt.Errorf("count dashboard work requests: %w", err)
	}
	if n > int64(upTo) {
		return int64(upTo), true, nil
	}
	return n, false, nil
}

// StatusCount is how many work requests have one status and result.
type StatusCount struct {
	Status string `db:"status"`
	Result string `db:"result"`
	N      int64  `db:"n"`
}

// StatusCounts counts the work requests by status and result.
func (s *Store) StatusCounts(ctx context.Context) ([]StatusCount, error) {
	var out []StatusCount
	if err := s.r.SelectContext(ctx, &out, `SELECT status, result, COUNT(*) AS n FROM work_requests
		GROUP BY status, result ORDER BY status, result`); err != nil {
		return nil, fmt.Errorf("work request counts: %w", err)
	}
	return out, nil
}

// WaitingReasons maps each shape of pending request to the scheduler's
// latest reason why none of them is assigned.
func (s *Store) WaitingReasons(ctx context.Context) (map[string]string, error) {
	var rows []struct {
		Shape  string `db:"shape"`
		Reason string `db:"reason"`
	}
	if err := s.r.SelectContext(ctx, &rows, `SELECT shape, reason FROM waiting_reasons`); err != nil {
		return nil, fmt.Errorf("waiting reasons: %w", err)
	}
	out := make(map[string]string, len(rows))
	for _, r := range rows {
		out[r.Shape] = r.Reason
	}
	return out, nil
}

// ErrSessionUnusable is the ErrNotFound of a token that cannot open a
// session: unknown or disabled.
var ErrSessionUnusable = fmt.Errorf("%w: unknown or disabled token", ErrNotFound)

// CreateWebSession opens a browser session for the owner of a user token
// and returns its secret (only its hash is stored) and the user. The
// session ends at expires or with the token, whichever is first. An
// expired token is an *ExpiredTokenError, an unknown or disabled one
// ErrSessionUnusable. Sessions that have ended are deleted on the way.
func (s *Store) CreateWebSession(ctx context.Context, tokenSecret string, expires time.Time) (string, User, error) {
	u, err := s.UserForToken(ctx, tokenSecret)
	if errors.Is(err, ErrNotFound) {
		return "", User{}, ErrSessionUnusable
	}
	if err != nil {
		return "", User{}, err
	}
	secret := NewSecret()
	t := now()
	err = s.tx(ctx, func(tx *sqlx.Tx) error {
		if _, err := tx.ExecContext(ctx, tx.Rebind(`DELETE FROM web_sessions WHERE expires_at <= ?`), t); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO web_sessions (hash, user_id, token_id, created_at, expires_at)
			SELECT ?, tokens.user_id, tokens.id, ?, ? FROM tokens WHERE tokens.hash = ? AND tokens.kind = ? AND tokens.enabled`),
			HashToken(secret), t, expires.UTC().Truncate(time.Microsecond), HashToken(tokenSecret), TokenUser)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return ErrSessionUnusable // the token went meanwhile
		}
		return nil
	})
	if errors.Is(err, ErrSessionUnusable) {
		return "", User{}, err
	}
	if err != nil {
		return "", User{}, fmt.Errorf("create web session for user %d: %w", u.ID, err)
	}
	return secret, u, nil
}

// WebSessionUser returns the user of a session that has not ended, and
// when it ends; ErrNotFound for an unknown or ended one.
func (s *Store) WebSessionUser(ctx context.Context, secret string) (User, time.Time, error) {
	var row struct {
		User
		ExpiresAt time.Time `db:"session_expires_at"`
	}
	t := now()
	err := s.r.GetContext(ctx, &row, s.rebind(`SELECT users.*, web_sessions.expires_at AS session_expires_at
		FROM web_sessions JOIN users ON users.id = web_sessions.user_id JOIN tokens ON tokens.id = web_sessions.token_id
		WHERE web_sessions.hash = ? AND web_sessions.expires_at > ? AND tokens.enabled
		AND (tokens.expires_at IS NULL OR tokens.expires_at > ?)`), HashToken(secret), t, t)
	if err != nil {
		return User{}, time.Time{}, notFound("web session", "(hidden)", err)
	}
	return row.User, row.ExpiresAt, nil
}

// DeleteWebSession ends a session (logging out). An unknown session is not
// an error.
func (s *Store) DeleteWebSession(ctx context.Context, secret string) error {
	if _, err := s.w.ExecContext(ctx, s.rebind(`DELETE FROM web_sessions WHERE hash = ?`), HashToken(secret)); err != nil {
		return fmt.Errorf("delete web session: %w", err)
	}
	return nil
}
