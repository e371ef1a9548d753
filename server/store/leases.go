package store

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/jmoiron/sqlx"

	"github.com/kiln-ci/kiln/schemas"
)

// AssignDevice is Assign that also leases device deviceID to the request,
// in the same transaction: the device must belong to the worker, be
// declared, idle and unleased, else ErrConflict. A job also needs the
// device good, with nothing to run on it first (needs), and not held for
// another job; a special task needs to be the device's upkeep request, and
// the device not retired. A device is never leased to two requests: the
// lease is a conditional update of the device's row.
func (s *Store) AssignDevice(ctx context.Context, id int64, attempt int, workerID int64, limit int, deviceID int64, msg Message) (Message, error) {
	err := s.tx(ctx, func(tx *sqlx.Tx) error {
		var task string
		if err := tx.GetContext(ctx, &task, tx.Rebind(`SELECT task_name FROM work_requests WHERE id = ?`), id); err != nil {
			return notFound("work request", id, err)
		}
		if err := assignTx(ctx, tx, id, attempt, workerID, limit, &msg); err != nil {
			return err
		}
		// A job takes the device from its hold; a special task leaves
		// the hold to the job it prepares the device for.
		set, cond := `held_for = NULL`, `health = 'good' AND needs = '' AND upkeep_work_request_id IS NULL AND (held_for IS NULL OR held_for = ?)`
		if schemas.IsDeviceTask(task) {
			set, cond = `held_for = held_for`, `health <> 'retired' AND upkeep_work_request_id = ?`
		}
		res, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE devices SET state = 'reserved', lease_work_request_id = ?, `+set+`, updated_at = ?
			WHERE id = ? AND worker_id = ? AND declared AND state = 'idle' AND lease_work_request_id IS NULL AND `+cond),
			id, now(), deviceID, workerID, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("device %d is not free: %w", deviceID, ErrConflict)
		}
		return recordDeviceEvent(ctx, tx, deviceID, DeviceEventState, "idle", "reserved", fmt.Sprintf("leased to work request %d (%s)", id, task), &id)
	})
	if err != nil {
		return Message{}, fmt.Errorf("assign work request %d to worker %d with device %d: %w", id, workerID, deviceID, err)
	}
	return msg, nil
}

type leaseRow struct {
	DeviceID  int64  `db:"device_id"`
	State     string `db:"state"`
	RequestID int64  `db:"wr_id"`
	Status    string `db:"status"`
	Started   bool   `db:"started"`
	Free      bool   `db:"free"`
	Task      string `db:"task_name"`
}

// ReconcileDeviceLeases moves leased devices along with their requests:
// reserved -> running once the request runs, and back to idle once nothing
// of it runs any more (completed or aborted with no kill pending, or
// withdrawn from its worker). A device that ran a job comes back dirty and
// counts the job. It returns how many devices it released. Doing this in
// one place, from the database, also repairs leases after a crash.
func (s *Store) ReconcileDeviceLeases(ctx context.Context) (int, error) {
	var rows []leaseRow
	err := s.r.SelectContext(ctx, &rows, `SELECT devices.id AS device_id, devices.state, work_requests.id AS wr_id,
		work_requests.status, work_requests.task_name, work_requests.started_at IS NOT NULL AS started,
		((work_requests.status IN ('completed', 'aborted') AND NOT work_requests.kill_pending)
		  OR (work_requests.status = 'pending' AND work_requests.worker_id IS NULL)) AS free
		FROM devices JOIN work_requests ON work_requests.id = devices.lease_work_request_id`)
	if err != nil {
		return 0, fmt.Errorf("device leases: %w", err)
	}
	released := 0
	for _, r := range rows {
		if !r.Free && !(r.State == "reserved" && r.Status == "running") {
			continue
		}
		err := s.tx(ctx, func(tx *sqlx.Tx) error {
			wr := r.RequestID
			if !r.Free {
				res, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE devices SET state = 'running', updated_at = ?
					WHERE id = ? AND lease_work_request_id = ? AND state = 'reserved'`), now(), r.DeviceID, wr)
				if n, _ := rowsAffected(res, err); n == 0 {
					return err
				}
				return recordDeviceEvent(ctx, tx, r.DeviceID, DeviceEventState, "reserved", "running", fmt.Sprintf("work request %d started", wr), &wr)
			}
			// A job that ran leaves the device dirty; a special task
			// does not (cleanup and repair clean it on completion).
			used := r.Started && !schemas.IsDeviceTask(r.Task)
			jobs := 0
			if used {
				jobs = 1
			}
			res, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE devices SET state = 'idle', lease_work_request_id = NULL,
				dirty = dirty OR ?, jobs_since_health_check = jobs_since_health_check + ?, updated_at = ?
				WHERE id = ? AND lease_work_request_id = ?`), used, jobs, now(), r.DeviceID, wr)
			if n, _ := rowsAffected(res, err); n == 0 {
				return err
			}
			released++
			reason := fmt.Sprintf("released: work request %d is %s", wr, r.Status)
			if err := recordDeviceEvent(ctx, tx, r.DeviceID, DeviceEventState, r.State, "idle", reason, &wr); err != nil {
				return err
			}
			if used {
				return recordDeviceEvent(ctx, tx, r.DeviceID, DeviceEventDirty, "false", "true", fmt.Sprintf("work request %d used it", wr), &wr)
			}
			return nil
		})
		if err != nil {
			return released, fmt.Errorf("device %d: %w", r.DeviceID, err)
		}
	}
	return released, s.reconcileUpkeep(ctx)
}

func rowsAffected(res interface{ RowsAffected() (int64, error) }, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// infrastructureErrorTx is the rest of a completion with an infrastructure
// error, in its transaction so that none of it can be lost: the device the
// request held needs a repair before any other job (a failed repair takes
// it out of service), and the request is retried, within the limit, so
// that the retry runs on another device.
func infrastructureErrorTx(ctx context.Context, tx *sqlx.Tx, id int64, c Completion) error {
	var devs []int64
	if err := tx.SelectContext(ctx, &devs, tx.Rebind(`SELECT id FROM devices WHERE lease_work_request_id = ?`), id); err != nil {
		return err
	}
	for _, d := range devs {
		reason := fmt.Sprintf("infrastructure error in work request %d: %s", id, c.Reason)
		if err := setNeedsTx(ctx, tx, d, schemas.DeviceTaskRepair, reason, &id); err != nil {
			return err
		}
	}
	return infrastructureRetryTx(ctx, tx, id, c.InfrastructureRetries)
}

// infrastructureRetryTx retries request id after an infrastructure error
// unless it used up its limit of such retries in a row.
func infrastructureRetryTx(ctx context.Context, tx *sqlx.Tx, id int64, limit int) error {
	n, err := infrastructureRetries(ctx, tx, id)
	if err != nil || n >= limit {
		return err
	}
	_, err = retryTx(ctx, tx, id, 0)
	return err
}

// infrastructureRetries counts the requests that request id retried
// automatically after an infrastructure error: its predecessors, following
// supersedes, that ended with error_type infrastructure.
func infrastructureRetries(ctx context.Context, tx *sqlx.Tx, id int64) (int, error) {
	n := 0
	for {
		var prev sql.NullInt64
		if err := tx.GetContext(ctx, &prev, tx.Rebind(`SELECT supersedes FROM work_requests WHERE id = ?`), id); err != nil {
			return n, fmt.Errorf("infrastructure retries of %d: %w", id, err)
		}
		if !prev.Valid {
			return n, nil
		}
		var errorType string
		if err := tx.GetContext(ctx, &errorType, tx.Rebind(`SELECT error_type FROM work_requests WHERE id = ?`), prev.Int64); err != nil {
			return n, fmt.Errorf("infrastructure retries of %d: %w", id, err)
		}
		if errorType != "infrastructure" {
			return n, nil
		}
		n++
		id = prev.Int64
	}
}
