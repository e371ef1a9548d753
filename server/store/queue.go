package store

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
)

// Shape is a group of unassigned pending requests that CanRunOn cannot tell
// apart: same task, same requirements.
type Shape struct {
	Shape    string `db:"shape"`
	TaskName string `db:"task_name"`
	// SampleID is one request of the group, whose task data stands for all.
	SampleID int64 `db:"sample_id"`
	// Count is the number of requests of the group (PendingShapes only).
	Count int64 `db:"n"`
	// TopPriority is the highest effective priority in the group
	// (PendingShapes only).
	TopPriority int `db:"top_priority"`
}

// PendingShapes returns the groups of unassigned pending requests.
func (s *Store) PendingShapes(ctx context.Context) ([]Shape, error) {
	// Only columns of the partial index work_requests_queue, so that the
	// group-by reads the index alone (100k pending: a third of the time
	// of reading the rows); the task names come from the samples.
	var out []Shape
	err := s.r.SelectContext(ctx, &out, `SELECT shape, MIN(id) AS sample_id, COUNT(*) AS n, MAX(priority) AS top_priority
		FROM work_requests WHERE status = 'pending' AND worker_id IS NULL GROUP BY shape`)
	if err != nil {
		return nil, fmt.Errorf("pending shapes: %w", err)
	}
	if len(out) == 0 {
		return out, nil
	}
	ids := make([]int64, len(out))
	for i, sh := range out {
		ids[i] = sh.SampleID
	}
	q, args, err := sqlx.In(`SELECT id, task_name FROM work_requests WHERE id IN (?)`, ids)
	if err != nil {
		return nil, err
	}
	var names []struct {
		ID   int64  `db:"id"`
		Task string `db:"task_name"`
	}
	if err := s.r.SelectContext(ctx, &names, s.rebind(q), args...); err != nil {
		return nil, fmt.Errorf("pending shapes' tasks: %w", err)
	}
	task := make(map[int64]string, len(names))
	for _, n := range names {
		task[n.ID] = n.Task
	}
	// A sample deleted in between drops its shape from this pass.
	shapes := out[:0]
	for _, sh := range out {
		if name, ok := task[sh.SampleID]; ok {
			sh.TaskName = name
			shapes = append(shapes, sh)
		}
	}
	return shapes, nil
}

// WaitingShapes returns the groups of unassigned pending requests with a
// sample each (the first in scheduling order), without counting them: the
// scheduler's way. It seeks from one shape to the next in the queue index,
// so its cost grows with the number of shapes, not of requests (100k
// pending: PendingShapes' group-by took 40 to 100 ms, most of a pass).
func (s *Store) WaitingShapes(ctx context.Context) ([]Shape, error) {
	var out []Shape
	if err := s.r.SelectContext(ctx, &out, waitingShapesQuery(s.dialect)); err != nil {
		return nil, fmt.Errorf("waiting shapes: %w", err)
	}
	return out, nil
}

func waitingShapesQuery(d Dialect) string {
	const waiting = `status = 'pending' AND worker_id IS NULL`
	// SQLite, without statistics, would rather read every pending request
	// through work_requests_status.
	queue := `work_requests`
	if d == SQLite {
		queue = `work_requests INDEXED BY work_requests_queue`
	}
	return `WITH RECURSIVE s(shape) AS (
			SELECT MIN(shape) FROM ` + queue + ` WHERE ` + waiting + `
			UNION ALL
			SELECT (SELECT MIN(shape) FROM ` + queue + ` WHERE ` + waiting + ` AND shape > s.shape)
			FROM s WHERE s.shape IS NOT NULL
		)
		SELECT q.shape, q.sample_id, wr.task_name FROM (
			SELECT s.shape, (SELECT id FROM ` + queue + ` WHERE ` + waiting + ` AND shape = s.shape
				ORDER BY priority DESC, created_at, id LIMIT 1) AS sample_id
			FROM s WHERE s.shape IS NOT NULL
		) AS q JOIN work_requests wr ON wr.id = q.sample_id
		ORDER BY q.shape`
}

// QueueItem is an unassigned pending request as the scheduler sees it.
type QueueItem struct {
	ID        int64     `db:"id"`
	Shape     string    `db:"shape"`
	Priority  int       `db:"priority"`
	CreatedAt time.Time `db:"created_at"`
	Attempt   int       `db:"attempt"`
}

// queueQuery reads one shape's queue, in its part of the queue index.
const queueQuery = `SELECT id, shape, priority, created_at, attempt FROM work_requests
	WHERE status = 'pending' AND worker_id IS NULL AND shape = ?
	ORDER BY priority DESC, created_at, id LIMIT ?`

// queueShapes bounds the shapes QueueAll reads in one statement (its
// parameters).
const queueShapes = 200

// QueueAll returns up to limits[shape] unassigned pending requests of each
// shape, grouped by shape, each group in scheduling order: effective
// priority descending, then oldest first. It takes one statement per 200
// shapes, not a round trip per shape.
func (s *Store) QueueAll(ctx context.Context, limits map[string]int) ([]QueueItem, error) {
	shapes := make([]string, 0, len(limits))
	for sh, n := range limits {
		if n > 0 {
			shapes = append(shapes, sh)
		}
	}
	slices.Sort(shapes)
	var out []QueueItem
	for start := 0; start < len(shapes); start += queueShapes {
		part := shapes[start:min(start+queueShapes, len(shapes))]
		parts := make([]string, len(part))
		args := make([]any, 0, 2*len(part))
		for i, sh := range part {
			parts[i] = fmt.Sprintf(`SELECT * FROM (%s) AS q%d`, queueQuery, i)
			args = append(args, sh, limits[sh])
		}
		var items []QueueItem
		if err := s.r.SelectContext(ctx, &items, s.rebind(strings.Join(parts, " UNION ALL ")), args...); err != nil {
			return nil, fmt.Errorf("queues of %d shapes: %w", len(part), err)
		}
		out = append(out, items...)
	}
	return out, nil
}

// Message is a NATS message recorded in the outbox in the same transaction as
// the state change it announces.
type Message struct {
	ID        int64     `db:"id"`
	Subject   string    `db:"subject"`
	MsgID     string    `db:"msg_id"`
	Payload   string    `db:"payload"`
	CreatedAt time.Time `db:"created_at"`
}

// Assign gives request id to worker workerID, provided the request is still
// unassigned and pending with that attempt and the worker has fewer than
// limit active requests, and records msg in the outbox in the same
// transaction. ErrConflict when either condition fails or the worker is
// disabled (or gone).
func (s *Store) Assign(ctx context.Context, id int64, attempt int, workerID int64, limit int, msg Message) (Message, error) {
	err := s.tx(ctx, func(tx *sqlx.Tx) error { return assignTx(ctx, tx, id, attempt, workerID, limit, &msg) })
	if err != nil {
		return Message{}, fmt.Errorf("assign work request %d to worker %d: %w", id, workerID, err)
	}
	return msg, nil
}

// assignTx is Assign inside a transaction.
func assignTx(ctx context.Context, tx *sqlx.Tx, id int64, attempt int, workerID int64, limit int, msg *Message) error {
	// Lock the worker row first (PostgreSQL row lock; SQLite's write
	// lock), so that two assignments to one worker cannot both count
	// the same free slot, and so that a worker disabled meanwhile (which
	// withdraws its unstarted assignments) gets none: a pass reads the
	// workers before it assigns.
	res, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE workers SET id = id WHERE id = ? AND enabled`), workerID)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("worker %d is disabled or gone: %w", workerID, ErrConflict)
	}
	var active int
	if err := tx.GetContext(ctx, &active, tx.Rebind(`SELECT COUNT(*) FROM work_requests WHERE worker_id = ? AND `+holdsSlot), workerID); err != nil {
		return err
	}
	if active >= limit {
		return fmt.Errorf("worker %d has %d of %d slots taken: %w", workerID, active, limit, ErrConflict)
	}
	t := now()
	res, err = tx.ExecContext(ctx, tx.Rebind(`UPDATE work_requests SET worker_id = ?, assigned_at = ?, lease_renewed_at = ?
		WHERE id = ? AND attempt = ? AND status = 'pending' AND worker_id IS NULL`), workerID, t, t, id, attempt)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("work request %d is no longer waiting: %w", id, ErrConflict)
	}
	msg.CreatedAt = t
	return tx.GetContext(ctx, &msg.ID, tx.Rebind(`INSERT INTO outbox (subject, msg_id, payload, created_at)
		VALUES (?, ?, ?, ?) RETURNING id`), msg.Subject, msg.MsgID, msg.Payload, t)
}

// Enqueue records a message in the outbox on its own (an abort, say).
func (s *Store) Enqueue(ctx context.Context, msg Message) (Message, error) {
	msg.CreatedAt = now()
	err := s.w.GetContext(ctx, &msg.ID, s.rebind(`INSERT INTO outbox (subject, msg_id, payload, created_at)
		VALUES (?, ?, ?, ?) RETURNING id`), msg.Subject, msg.MsgID, msg.Payload, msg.CreatedAt)
	if err != nil {
		return Message{}, fmt.Errorf("outbox: %w", err)
	}
	return msg, nil
}

// Outbox returns up to limit messages recorded before the given time, oldest
// first: those whose publication was not confirmed.
func (s *Store) Outbox(ctx context.Context, before time.Time, limit int) ([]Message, error) {
	var out []Message
	err := s.r.SelectContext(ctx, &out, s.rebind(`SELECT * FROM outbox WHERE created_at < ? ORDER BY id LIMIT ?`), before.UTC(), limit)
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	return out, nil
}

// Published removes a message from the outbox once JetStream has stored it.
func (s *Store) Published(ctx context.Context, id int64) error {
	_, err := s.w.ExecContext(ctx, s.rebind(`DELETE FROM outbox WHERE id = ?`), id)
	if err != nil {
		return fmt.Errorf("outbox delete %d: %w", id, err)
	}
	return nil
}

// SetWaitingReasons replaces the reasons why groups of pending requests wait.
// Shapes not in reasons lose theirs.
func (s *Store) SetWaitingReasons(ctx context.Context, reasons map[string]string) error {
	var existing []struct {
		Shape  string `db:"shape"`
		Reason string `db:"reason"`
	}
	if err := s.r.SelectContext(ctx, &existing, `SELECT shape, reason FROM waiting_reasons`); err != nil {
		return fmt.Errorf("waiting reasons: %w", err)
	}
	have := make(map[string]string, len(existing))
	for _, e := range existing {
		have[e.Shape] = e.Reason
	}
	changed := false
	for k, v := range reasons {
		if have[k] != v {
			changed = true
		}
	}
	for k := range have {
		if _, ok := reasons[k]; !ok {
			changed = true
		}
	}
	if !changed {
		return nil
	}
	return s.tx(ctx, func(tx *sqlx.Tx) error {
		t := now()
		for k := range have {
			if _, ok := reasons[k]; !ok {
				if _, err := tx.ExecContext(ctx, tx.Rebind(`DELETE FROM waiting_reasons WHERE shape = ?`), k); err != nil {
					return err
				}
			}
		}
		for k, v := range reasons {
			old, ok := have[k]
			switch {
			case !ok:
				if _, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO waiting_reasons (shape, reason, updated_at) VALUES (?, ?, ?)`), k, v, t); err != nil {
					return err
				}
			case old != v:
				if _, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE waiting_reasons SET reason = ?, updated_at = ? WHERE shape = ?`), v, t, k); err != nil {
					return err
				}
			}
		}
		return nil
	})
}
