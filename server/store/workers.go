package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jmoiron/sqlx"
)

// Worker is a stored worker.
type Worker struct {
	ID                       int64         `db:"id"`
	Name                     string        `db:"name"`
	TokenHash                *string       `db:"token_hash"`
	WorkerType               string        `db:"worker_type"`
	Enabled                  bool          `db:"enabled"`
	StaticMetadata           string        `db:"static_metadata"`
	DynamicMetadata          string        `db:"dynamic_metadata"`
	DynamicMetadataUpdatedAt sql.NullTime  `db:"dynamic_metadata_updated_at"`
	Concurrency              int           `db:"concurrency"`
	ConcurrencyOverride      sql.NullInt64 `db:"concurrency_override"`
	RegisteredAt             time.Time     `db:"registered_at"`
	ConnectedAt              sql.NullTime  `db:"connected_at"`
	LastSeenAt               sql.NullTime  `db:"last_seen_at"`
	// Active counts its assigned and running work requests (filled by
	// Workers and WorkerByID).
	Active int `db:"active"`
}

// EffectiveConcurrency is the admin's override when set, else what the worker
// reported, and at least 1.
func (w Worker) EffectiveConcurrency() int {
	c := w.Concurrency
	if w.ConcurrencyOverride.Valid {
		c = int(w.ConcurrencyOverride.Int64)
	}
	return max(c, 1)
}

// Metadata merges dynamic and static metadata; static keys win.
func (w Worker) Metadata() map[string]any {
	md := map[string]any{}
	_ = json.Unmarshal([]byte(w.DynamicMetadata), &md)
	static := map[string]any{}
	_ = json.Unmarshal([]byte(w.StaticMetadata), &static)
	for k, v := range static {
		md[k] = v
	}
	return md
}

const workerColumns = `workers.*, (SELECT COUNT(*) FROM work_requests
	WHERE work_requests.worker_id = workers.id AND ` + holdsSlot + `) AS active`

// holdsSlot is the condition of a request that takes one of its worker's
// slots: waiting to start, running, or aborted with the kill not yet
// confirmed. It is, word for word, the predicate of the partial index
// work_requests_worker_active (migration 00009): SQLite uses a partial
// index only for a query that repeats its condition.
const holdsSlot = `(status IN ('pending', 'running') OR kill_pending)`

// RegisterWorker stores a new, disabled worker that authenticates with
// tokenSecret. A name that is taken gets a numeric suffix, as two machines
// may share a host name. With a non-empty activation secret the worker
// record pre-created by an admin receives the token and is enabled at once.
func (s *Store) RegisterWorker(ctx context.Context, name, workerType, tokenSecret, activation string) (Worker, error) {
	var id int64
	err := s.tx(ctx, func(tx *sqlx.Tx) error {
		if activation != "" {
			wid, err := consumeActivation(ctx, tx, activation)
			if err != nil {
				return err
			}
			res, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE workers SET token_hash = ?, worker_type = ?, enabled = ?, registered_at = ? WHERE id = ?`),
				HashToken(tokenSecret), workerType, true, now(), wid)
			if err != nil {
				if isUnique(err) {
					return fmt.Errorf("worker token already registered: %w", ErrConflict)
				}
				return err
			}
			if n, _ := res.RowsAffected(); n != 1 {
				return fmt.Errorf("activated worker %d: %w", wid, ErrNotFound)
			}
			id = wid
			return nil
		}
		for i := 1; i < 1000; i++ {
			candidate := name
			if i > 1 {
				candidate = name + "-" + strconv.Itoa(i)
			}
			// ON CONFLICT on the name only: two machines registering the
			// same name at once get different suffixes, while a token that
			// is already registered still fails as a unique violation.
			err := tx.GetContext(ctx, &id, tx.Rebind(`INSERT INTO workers (name, token_hash, worker_type, enabled, registered_at)
				VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING RETURNING id`), candidate, HashToken(tokenSecret), workerType, false, now())
			if errors.Is(err, sql.ErrNoRows) {
				continue
			}
			if isUnique(err) {
				return fmt.Errorf("worker token already registered: %w", ErrConflict)
			}
			return err
		}
		return fmt.Errorf("worker name %q: %w", name, ErrConflict)
	})
	if err != nil {
		return Worker{}, fmt.Errorf("register worker %q: %w", name, err)
	}
	return s.WorkerByID(ctx, id)
}

// CreateWorker pre-creates an enabled worker record without a token; the
// worker claims it with an activation token (see CreateActivationToken).
func (s *Store) CreateWorker(ctx context.Context, name, workerType string) (Worker, error) {
	var id int64
	err := s.w.GetContext(ctx, &id, s.rebind(`INSERT INTO workers (name, worker_type, enabled, registered_at)
		VALUES (?, ?, ?, ?) RETURNING id`), name, workerType, true, now())
	if isUnique(err) {
		return Worker{}, fmt.Errorf("worker %q: %w", name, ErrConflict)
	}
	if err != nil {
		return Worker{}, fmt.Errorf("create worker %q: %w", name, err)
	}
	return s.WorkerByID(ctx, id)
}

// WorkerForToken returns the worker that authenticates with secret, enabled
// or not.
func (s *Store) WorkerForToken(ctx context.Context, secret string) (Worker, error) {
	var w Worker
	err := s.r.GetContext(ctx, &w, s.rebind(`SELECT `+workerColumns+` FROM workers WHERE token_hash = ?`), HashToken(secret))
	if err != nil {
		return Worker{}, notFound("worker token", "(hidden)", err)
	}
	return w, nil
}

// WorkerByID returns one worker.
func (s *Store) WorkerByID(ctx context.Context, id int64) (Worker, error) {
	var w Worker
	err := s.r.GetContext(ctx, &w, s.rebind(`SELECT `+workerColumns+` FROM workers WHERE id = ?`), id)
	if err != nil {
		return Worker{}, notFound("worker", id, err)
	}
	return w, nil
}

// WorkerByName returns one worker.
func (s *Store) WorkerByName(ctx context.Context, name string) (Worker, error) {
	var w Worker
	err := s.r.GetContext(ctx, &w, s.rebind(`SELECT `+workerColumns+` FROM workers WHERE name = ?`), name)
	if err != nil {
		return Worker{}, notFound("worker", name, err)
	}
	return w, nil
}

// Workers lists all workers by id.
func (s *Store) Workers(ctx context.Context) ([]Worker, error) {
	var ws []Worker
	if err := s.r.SelectContext(ctx, &ws, `SELECT `+workerColumns+` FROM workers ORDER BY id`); err != nil {
		return nil, fmt.Errorf("list workers: %w", err)
	}
	return ws, nil
}

// SetWorkerEnabled enables or disables a worker. Disabling it also withdraws
// the assignments it has not started, so that they go to other workers; the
// worker drops their messages when the server refuses to start them.
func (s *Store) SetWorkerEnabled(ctx context.Context, id int64, enabled bool) error {
	return s.tx(ctx, func(tx *sqlx.Tx) error {
		res, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE workers SET enabled = ? WHERE id = ?`), enabled, id)
		if err != nil {
			return fmt.Errorf("update worker %d: %w", id, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("worker %d: %w", id, ErrNotFound)
		}
		if enabled {
			return nil
		}
		_, err = tx.ExecContext(ctx, tx.Rebind(`UPDATE work_requests SET worker_id = NULL, assigned_at = NULL
			WHERE worker_id = ? AND status = 'pending'`), id)
		return err
	})
}

// SetStaticMetadata replaces a worker's static metadata (admin overrides).
func (s *Store) SetStaticMetadata(ctx context.Context, id int64, md map[string]any) error {
	b, err := json.Marshal(md)
	if err != nil {
		return fmt.Errorf("static metadata: %w", err)
	}
	return s.execOne(ctx, "worker", id, `UPDATE workers SET static_metadata = ? WHERE id = ?`, string(b), id)
}

// SetConcurrencyOverride sets (n > 0) or clears (n <= 0) the admin's
// concurrency for a worker.
func (s *Store) SetConcurrencyOverride(ctx context.Context, id int64, n int) error {
	var v any
	if n > 0 {
		v = n
	}
	return s.execOne(ctx, "worker", id, `UPDATE workers SET concurrency_override = ? WHERE id = ?`, v, id)
}

// SetDynamicMetadata stores what the worker reported and the concurrency it
// asks for.
func (s *Store) SetDynamicMetadata(ctx context.Context, id int64, md map[string]any, concurrency int) error {
	b, err := json.Marshal(md)
	if err != nil {
		return fmt.Errorf("dynamic metadata: %w", err)
	}
	t := now()
	return s.execOne(ctx, "worker", id, `UPDATE workers SET dynamic_metadata = ?, dynamic_metadata_updated_at = ?,
		concurrency = ?, connected_at = COALESCE(connected_at, ?), last_seen_at = ? WHERE id = ?`,
		string(b), t, max(concurrency, 1), t, t, id)
}

// TouchWorker records that the worker was seen at t (a heartbeat). It returns
// true when the worker was not connected before, so that the scheduler can
// look for work for it.
func (s *Store) TouchWorker(ctx context.Context, id int64, t time.Time, staleBefore time.Time) (reconnected bool, err error) {
	var prev struct {
		LastSeen  sql.NullTime `db:"last_seen_at"`
		Connected sql.NullTime `db:"connected_at"`
	}
	err = s.tx(ctx, func(tx *sqlx.Tx) error {
		if err := tx.GetContext(ctx, &prev, tx.Rebind(`SELECT last_seen_at, connected_at FROM workers WHERE id = ?`), id); err != nil {
			return notFound("worker", id, err)
		}
		reconnected = !prev.Connected.Valid || !prev.LastSeen.Valid || prev.LastSeen.Time.Before(staleBefore)
		q := `UPDATE workers SET last_seen_at = ? WHERE id = ?`
		seen := t.UTC().Truncate(time.Microsecond)
		args := []any{seen, id}
		if reconnected {
			q = `UPDATE workers SET last_seen_at = ?, connected_at = ? WHERE id = ?`
			args = []any{seen, seen, id}
		}
		_, err := tx.ExecContext(ctx, tx.Rebind(q), args...)
		return err
	})
	return reconnected, err
}

// DisconnectWorker marks a worker as not connected (it said goodbye).
func (s *Store) DisconnectWorker(ctx context.Context, id int64) error {
	return s.execOne(ctx, "worker", id, `UPDATE workers SET connected_at = NULL WHERE id = ?`, id)
}

func (s *Store) execOne(ctx context.Context, what string, id any, q string, args ...any) error {
	res, err := s.w.ExecContext(ctx, s.rebind(q), args...)
	if err != nil {
		return fmt.Errorf("update %s %v: %w", what, id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("update %s %v: %w", what, id, err)
	}
	if n == 0 {
		return fmt.Errorf("%s %v: %w", what, id, ErrNotFound)
	}
	return nil
}
