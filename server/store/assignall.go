package store

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jmoiron/sqlx"
)

// Assignment is one work request to hand to a worker, for AssignAll.
type Assignment struct {
	ID       int64
	Attempt  int
	WorkerID int64
	// Limit is the worker's number of slots.
	Limit int
	Msg   Message
}

// assignBatch bounds how long AssignAll holds the workers' rows (and, on
// SQLite, the database's write lock) in one transaction, and the number of
// parameters of its statements.
const assignBatch = 256

// AssignAll makes many assignments as Assign makes one, with the same
// checks, but with a handful of statements and one commit per batch instead
// of four statements and a commit per request: that was most of a
// scheduling pass's time (kiln-bench, scheduler scale). It returns the
// recorded messages and the indexes in as of the assignments refused (the
// request no longer waits, the worker's slots are taken, or it is disabled),
// which change nothing. Any other error undoes the batch it happened in;
// the messages of earlier batches stand.
func (s *Store) AssignAll(ctx context.Context, as []Assignment) (msgs []Message, refused []int, err error) {
	for start := 0; start < len(as); start += assignBatch {
		batch := as[start:min(start+assignBatch, len(as))]
		var done []Message
		var no []int
		err := s.tx(ctx, func(tx *sqlx.Tx) error {
			var err error
			done, no, err = s.assignBatchTx(ctx, tx, batch)
			return err
		})
		if err != nil {
			return msgs, refused, fmt.Errorf("assign %d work requests: %w", len(batch), err)
		}
		msgs = append(msgs, done...)
		for _, i := range no {
			refused = append(refused, start+i)
		}
	}
	return msgs, refused, nil
}

// assignBatchTx is one batch of AssignAll in its transaction.
func (s *Store) assignBatchTx(ctx context.Context, tx *sqlx.Tx, batch []Assignment) ([]Message, []int, error) {
	var workers []int64
	for _, a := range batch {
		workers = append(workers, a.WorkerID)
	}
	slices.Sort(workers)
	workers = slices.Compact(workers)
	// Lock the enabled workers' rows, in id order so that two lockers
	// cannot deadlock, before counting their slots (see assignTx): a
	// worker disabled since the pass read it gets nothing.
	lock := `SELECT id FROM workers WHERE id IN (?) AND enabled ORDER BY id FOR UPDATE`
	if s.dialect == SQLite {
		lock = `UPDATE workers SET id = id WHERE id IN (?) AND enabled RETURNING id`
	}
	q, args, err := sqlx.In(lock, workers)
	if err != nil {
		return nil, nil, err
	}
	var locked []int64
	if err := tx.SelectContext(ctx, &locked, tx.Rebind(q), args...); err != nil {
		return nil, nil, fmt.Errorf("lock workers: %w", err)
	}
	enabled := make(map[int64]bool, len(locked))
	for _, id := range locked {
		enabled[id] = true
	}
	q, args, err = sqlx.In(`SELECT worker_id, COUNT(*) AS n FROM work_requests WHERE worker_id IN (?) AND `+holdsSlot+` GROUP BY worker_id`, workers)
	if err != nil {
		return nil, nil, err
	}
	var counts []struct {
		Worker int64 `db:"worker_id"`
		N      int   `db:"n"`
	}
	if err := tx.SelectContext(ctx, &counts, tx.Rebind(q), args...); err != nil {
		return nil, nil, fmt.Errorf("count busy slots: %w", err)
	}
	active := map[int64]int{}
	for _, c := range counts {
		active[c.Worker] = c.N
	}

	// Which requests still wait, with which attempt: those take a slot.
	ids := make([]int64, len(batch))
	for i, a := range batch {
		ids[i] = a.ID
	}
	waitingQ := `SELECT id, attempt FROM work_requests WHERE id IN (?) AND status = 'pending' AND worker_id IS NULL`
	if s.dialect == Postgres {
		waitingQ += ` ORDER BY id FOR UPDATE`
	}
	q, args, err = sqlx.In(waitingQ, ids)
	if err != nil {
		return nil, nil, err
	}
	var waitingRows []struct {
		ID      int64 `db:"id"`
		Attempt int   `db:"attempt"`
	}
	if err := tx.SelectContext(ctx, &waitingRows, tx.Rebind(q), args...); err != nil {
		return nil, nil, fmt.Errorf("waiting requests: %w", err)
	}
	waiting := map[int64]int{}
	for _, r := range waitingRows {
		waiting[r.ID] = r.Attempt
	}

	var refused, take []int
	seen := map[int64]bool{}
	for i, a := range batch {
		if attempt, ok := waiting[a.ID]; !ok || attempt != a.Attempt || seen[a.ID] || !enabled[a.WorkerID] || active[a.WorkerID] >= a.Limit {
			refused = append(refused, i)
			continue
		}
		seen[a.ID] = true
		active[a.WorkerID]++
		take = append(take, i)
	}
	if len(take) == 0 {
		return nil, refused, nil
	}

	// One update for all, still conditional: a request that stopped
	// waiting in between (SQLite's write lock and PostgreSQL's row locks
	// rule it out, but the condition costs nothing) is left alone and
	// refused.
	t := now()
	var rows []string
	args = []any{t, t}
	for _, i := range take {
		a := batch[i]
		rows = append(rows, `SELECT CAST(? AS BIGINT) AS id, CAST(? AS INTEGER) AS attempt, CAST(? AS BIGINT) AS worker`)
		args = append(args, a.ID, a.Attempt, a.WorkerID)
	}
	var assigned []int64
	err = tx.SelectContext(ctx, &assigned, tx.Rebind(`UPDATE work_requests SET worker_id = v.worker, assigned_at = ?, lease_renewed_at = ?
		FROM (`+strings.Join(rows, " UNION ALL ")+`) AS v
		WHERE work_requests.id = v.id AND work_requests.attempt = v.attempt
			AND work_requests.status = 'pending' AND work_requests.worker_id IS NULL
		RETURNING work_requests.id`), args...)
	if err != nil {
		return nil, nil, fmt.Errorf("assign: %w", err)
	}
	ok := map[int64]bool{}
	for _, id := range assigned {
		ok[id] = true
	}

	var msgs []Message
	var values []string
	args = nil
	for _, i := range take {
		if !ok[batch[i].ID] {
			refused = append(refused, i)
			continue
		}
		m := batch[i].Msg
		m.CreatedAt = t
		msgs = append(msgs, m)
		values = append(values, "(?, ?, ?, ?)")
		args = append(args, m.Subject, m.MsgID, m.Payload, t)
	}
	slices.Sort(refused)
	if len(msgs) == 0 {
		return nil, refused, nil
	}
	var boxed []struct {
		ID    int64  `db:"id"`
		MsgID string `db:"msg_id"`
	}
	err = tx.SelectContext(ctx, &boxed, tx.Rebind(`INSERT INTO outbox (subject, msg_id, payload, created_at)
		VALUES `+strings.Join(values, ", ")+` RETURNING id, msg_id`), args...)
	if err != nil {
		return nil, nil, fmt.Errorf("outbox: %w", err)
	}
	byMsg := map[string]int64{}
	for _, r := range boxed {
		byMsg[r.MsgID] = r.ID
	}
	for i := range msgs {
		msgs[i].ID = byMsg[msgs[i].MsgID]
	}
	return msgs, refused, nil
}
