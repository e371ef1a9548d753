package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/jmoiron/sqlx"

	"github.com/kiln-ci/kiln/schemas"
)

// DeviceEventNeeds is the device_events kind of a change of what special
// task a device needs next.
const DeviceEventNeeds = "needs"

// setNeedsTx sets the special task device deviceID needs next, with the
// reason, and records the change in its history.
func setNeedsTx(ctx context.Context, tx *sqlx.Tx, deviceID int64, needs, reason string, wr *int64) error {
	var cur string
	if err := tx.GetContext(ctx, &cur, tx.Rebind(`SELECT needs FROM devices WHERE id = ?`), deviceID); err != nil {
		return notFound("device", deviceID, err)
	}
	if _, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE devices SET needs = ?, needs_reason = ?, updated_at = ? WHERE id = ?`),
		needs, reason, now(), deviceID); err != nil {
		return fmt.Errorf("set needs of device %d: %w", deviceID, err)
	}
	if cur == needs {
		return nil
	}
	return recordDeviceEvent(ctx, tx, deviceID, DeviceEventNeeds, cur, needs, reason, wr)
}

// SetDeviceNeeds asks for special task needs on a device that needs none
// yet: the scheduler's health checks and an admin's "health check now".
// It reports whether it changed anything: a device that already needs a
// special task keeps it (that one checks the device too). A device out of
// service (maintenance, retired) or no longer declared is ErrConflict.
func (s *Store) SetDeviceNeeds(ctx context.Context, deviceID int64, needs, reason string) (bool, error) {
	changed := false
	err := s.tx(ctx, func(tx *sqlx.Tx) error {
		var d struct {
			Name     string `db:"name"`
			Health   string `db:"health"`
			Declared bool   `db:"declared"`
			Needs    string `db:"needs"`
		}
		if err := tx.GetContext(ctx, &d, tx.Rebind(`SELECT name, health, declared, needs FROM devices WHERE id = ?`+s.forUpdate()), deviceID); err != nil {
			return notFound("device", deviceID, err)
		}
		switch {
		case !d.Declared:
			return fmt.Errorf("device %s is no longer declared by its worker: %w", d.Name, ErrConflict)
		case d.Health == string(schemas.HealthMaintenance) || d.Health == string(schemas.HealthRetired):
			return fmt.Errorf("device %s is in %s: %w", d.Name, d.Health, ErrConflict)
		case d.Needs != "":
			return nil
		}
		changed = true
		return setNeedsTx(ctx, tx, deviceID, needs, reason, nil)
	})
	if err != nil {
		return false, fmt.Errorf("device %d needs %s: %w", deviceID, needs, err)
	}
	return changed, nil
}

// HoldDevice holds a free, good device for job jobID and asks for the
// special task needs to prepare it (pre-job policy): no other job may take
// the device until the job does or goes away. ErrConflict when the device
// is not free any more.
func (s *Store) HoldDevice(ctx context.Context, deviceID, jobID int64, needs, reason string) error {
	err := s.tx(ctx, func(tx *sqlx.Tx) error {
		res, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE devices SET held_for = ?, updated_at = ?
			WHERE id = ? AND declared AND state = 'idle' AND lease_work_request_id IS NULL AND health = 'good'
			AND needs = '' AND upkeep_work_request_id IS NULL AND held_for IS NULL`), jobID, now(), deviceID)
		if n, err := rowsAffected(res, err); err != nil || n == 0 {
			if err == nil {
				err = fmt.Errorf("device %d is not free: %w", deviceID, ErrConflict)
			}
			return err
		}
		return setNeedsTx(ctx, tx, deviceID, needs, reason, &jobID)
	})
	if err != nil {
		return fmt.Errorf("hold device %d for work request %d: %w", deviceID, jobID, err)
	}
	return nil
}

// CreateDeviceTask stores the special task request that device deviceID
// needs (n.TaskName must be what it needs) and makes it the device's
// upkeep request, in one transaction. ErrConflict when the device needs
// something else now or already has its request.
func (s *Store) CreateDeviceTask(ctx context.Context, deviceID int64, n NewWorkRequest) (int64, error) {
	var id int64
	err := s.tx(ctx, func(tx *sqlx.Tx) error {
		var d struct {
			Needs  string        `db:"needs"`
			Upkeep sql.NullInt64 `db:"upkeep_work_request_id"`
		}
		if err := tx.GetContext(ctx, &d, tx.Rebind(`SELECT needs, upkeep_work_request_id FROM devices WHERE id = ?`+s.forUpdate()), deviceID); err != nil {
			return notFound("device", deviceID, err)
		}
		if d.Needs != n.TaskName || d.Upkeep.Valid {
			return fmt.Errorf("device %d needs %q and has upkeep request %v: %w", deviceID, d.Needs, d.Upkeep.Int64, ErrConflict)
		}
		var err error
		if id, err = insertWorkRequest(ctx, tx, n, sql.NullInt64{}); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, tx.Rebind(`UPDATE devices SET upkeep_work_request_id = ?, updated_at = ? WHERE id = ?`), id, now(), deviceID)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("create %s for device %d: %w", n.TaskName, deviceID, err)
	}
	return id, nil
}

// QueueItems returns those of requests ids that are still pending and
// unassigned, as queue items: the jobs the scheduler holds devices for,
// which must be looked at whatever their place in their shape's queue.
func (s *Store) QueueItems(ctx context.Context, ids []int64) ([]QueueItem, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	q, args, err := sqlx.In(`SELECT id, shape, priority, created_at, attempt FROM work_requests
		WHERE status = 'pending' AND worker_id IS NULL AND id IN (?)`, ids)
	if err != nil {
		return nil, err
	}
	var out []QueueItem
	if err := s.r.SelectContext(ctx, &out, s.rebind(q), args...); err != nil {
		return nil, fmt.Errorf("queue items: %w", err)
	}
	return out, nil
}

// reconcileUpkeep drops what points at requests that went away: a device
// held for a job that is no longer waiting (it completed, was aborted, or
// runs elsewhere) is released, and a provision for it is not needed any
// more; an upkeep request that ended without its completion (aborted) is
// forgotten, so that the scheduler creates the special task again.
func (s *Store) reconcileUpkeep(ctx context.Context) error {
	var held []struct {
		ID      int64  `db:"id"`
		HeldFor int64  `db:"held_for"`
		Needs   string `db:"needs"`
	}
	err := s.r.SelectContext(ctx, &held, `SELECT devices.id, devices.held_for, devices.needs FROM devices
		LEFT JOIN work_requests ON work_requests.id = devices.held_for
		WHERE devices.held_for IS NOT NULL AND (work_requests.id IS NULL OR work_requests.status <> 'pending'
		  OR work_requests.worker_id IS NOT NULL)`)
	if err != nil {
		return fmt.Errorf("held devices: %w", err)
	}
	for _, h := range held {
		err := s.tx(ctx, func(tx *sqlx.Tx) error {
			res, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE devices SET held_for = NULL, updated_at = ? WHERE id = ? AND held_for = ?`),
				now(), h.ID, h.HeldFor)
			if n, err := rowsAffected(res, err); err != nil || n == 0 {
				return err
			}
			if h.Needs == schemas.DeviceTaskProvision {
				return setNeedsTx(ctx, tx, h.ID, "", fmt.Sprintf("work request %d no longer waits for the device", h.HeldFor), &h.HeldFor)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("release device %d held for %d: %w", h.ID, h.HeldFor, err)
		}
	}
	_, err = s.w.ExecContext(ctx, s.rebind(`UPDATE devices SET upkeep_work_request_id = NULL, updated_at = ?
		WHERE upkeep_work_request_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM work_requests
		  WHERE work_requests.id = devices.upkeep_work_request_id AND work_requests.status IN ('pending', 'running'))`), now())
	if err != nil {
		return fmt.Errorf("forget ended upkeep requests: %w", err)
	}
	return nil
}

// deviceTaskDone is what a special task's completion does to its device,
// in the completion's transaction: success makes the device good and says
// what comes next (the job's provision, or nothing: the job may take it);
// failure escalates (verify or cleanup -> reset -> repair), and a failed
// repair makes the device bad and fails the job it was being prepared for
// with an infrastructure error, which retries that job on another device.
func (s *Store) deviceTaskDone(ctx context.Context, tx *sqlx.Tx, wr WorkRequest, c Completion) error {
	var td schemas.DeviceTaskData
	if err := json.Unmarshal([]byte(wr.TaskData), &td); err != nil || td.Device == "" {
		return nil // not bound to a device: nothing to update
	}
	var d struct {
		ID      int64         `db:"id"`
		Health  string        `db:"health"`
		Dirty   bool          `db:"dirty"`
		Power   string        `db:"power"`
		Upkeep  sql.NullInt64 `db:"upkeep_work_request_id"`
		HeldFor sql.NullInt64 `db:"held_for"`
	}
	err := tx.GetContext(ctx, &d, tx.Rebind(`SELECT id, health, dirty, power, upkeep_work_request_id, held_for
		FROM devices WHERE name = ?`+s.forUpdate()), td.Device)
	if err != nil {
		return notFound("device", td.Device, err)
	}
	if !d.Upkeep.Valid || d.Upkeep.Int64 != wr.ID {
		return nil // an older request of this device, already replaced
	}
	id := wr.ID
	t := now()
	if _, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE devices SET upkeep_work_request_id = NULL, updated_at = ? WHERE id = ?`), t, d.ID); err != nil {
		return err
	}
	kind := wr.TaskName
	inService := d.Health != string(schemas.HealthMaintenance) && d.Health != string(schemas.HealthRetired)
	job, err := heldJob(ctx, tx, d.HeldFor)
	if err != nil {
		return err
	}
	if c.Result == string(schemas.ResultSuccess) {
		if kind != schemas.DeviceTaskProvision {
			if err := deviceCheckedTx(ctx, tx, d.ID, d.Health, inService, fmt.Sprintf("%s passed (work request %d)", kind, id), id); err != nil {
				return err
			}
		}
		if kind == schemas.DeviceTaskCleanup || kind == schemas.DeviceTaskRepair {
			if err := setDirtyTx(ctx, tx, d.ID, d.Dirty, false, fmt.Sprintf("%s passed", kind), id); err != nil {
				return err
			}
		}
		next, reason := "", fmt.Sprintf("%s passed", kind)
		if job != nil && kind != schemas.DeviceTaskProvision && schemas.JobProvision(job.TaskData) != nil && inService {
			next, reason = schemas.DeviceTaskProvision, fmt.Sprintf("work request %d asks for a provision", job.ID)
		}
		if kind == schemas.DeviceTaskProvision {
			// What the job installed stays: the device needs a cleanup
			// after it.
			if err := setDirtyTx(ctx, tx, d.ID, d.Dirty, true, "provisioned", id); err != nil {
				return err
			}
		}
		return setNeedsTx(ctx, tx, d.ID, next, reason, &id)
	}

	why := c.Reason
	if why == "" {
		why = lastLine(c.Output)
	}
	failed := fmt.Sprintf("%s failed (work request %d, %s)", kind, id, c.Result)
	if why != "" {
		failed += ": " + why
	}
	next := ""
	var jobErrType, jobReason string
	switch kind {
	case schemas.DeviceTaskVerify, schemas.DeviceTaskCleanup:
		if d.Health == string(schemas.HealthBad) {
			// The re-verification of a device already out of service:
			// it stays bad until the next one.
			if _, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE devices SET last_health_check_at = ? WHERE id = ?`), t, d.ID); err != nil {
				return err
			}
			break
		}
		next = schemas.DeviceTaskRepair
		if hasPowerCycle(d.Power) {
			next = schemas.DeviceTaskReset
		}
	case schemas.DeviceTaskReset:
		next = schemas.DeviceTaskRepair
	case schemas.DeviceTaskRepair:
		if inService && d.Health != string(schemas.HealthBad) {
			if _, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE devices SET health = 'bad', last_health_check_at = ?, updated_at = ? WHERE id = ?`), t, t, d.ID); err != nil {
				return err
			}
			if err := recordDeviceEvent(ctx, tx, d.ID, DeviceEventHealth, d.Health, string(schemas.HealthBad), failed, &id); err != nil {
				return err
			}
		}
		jobErrType, jobReason = "infrastructure", fmt.Sprintf("device %s failed its checks and its repair and is out of service: %s", td.Device, why)
	case schemas.DeviceTaskProvision:
		if c.ErrorType == "infrastructure" {
			next = schemas.DeviceTaskRepair
			jobErrType, jobReason = "infrastructure", fmt.Sprintf("the provision of device %s lost the device: %s", td.Device, why)
		} else {
			jobReason = fmt.Sprintf("the provision of device %s failed: %s", td.Device, why)
		}
		if err := setDirtyTx(ctx, tx, d.ID, d.Dirty, true, "provision attempted", id); err != nil {
			return err
		}
	}
	if !inService {
		next = ""
	}
	if err := setNeedsTx(ctx, tx, d.ID, next, failed, &id); err != nil {
		return err
	}
	if job == nil || jobReason == "" {
		return nil
	}
	// The job never got its device: it ends in error, and an
	// infrastructure error is retried elsewhere.
	if _, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE devices SET held_for = NULL WHERE id = ?`), d.ID); err != nil {
		return err
	}
	res, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE work_requests SET status = 'completed', result = 'error', reason = ?,
		error_type = ?, completed_at = ? WHERE id = ? AND status = 'pending' AND worker_id IS NULL`), jobReason, jobErrType, t, job.ID)
	if n, err := rowsAffected(res, err); err != nil || n == 0 || jobErrType != "infrastructure" {
		return err
	}
	return infrastructureRetryTx(ctx, tx, job.ID, c.InfrastructureRetries)
}

// heldJob returns the job a device is held for while it still waits for
// it, or nil.
func heldJob(ctx context.Context, tx *sqlx.Tx, heldFor sql.NullInt64) (*WorkRequest, error) {
	if !heldFor.Valid {
		return nil, nil
	}
	var job WorkRequest
	err := tx.GetContext(ctx, &job, tx.Rebind(`SELECT `+wrColumns+wrFrom+` WHERE work_requests.id = ?`), heldFor.Int64)
	if err == sql.ErrNoRows || (err == nil && (job.Status != "pending" || job.WorkerID.Valid)) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &job, nil
}

// deviceCheckedTx records a passed check: health good (for a device in
// service) and the health-check counters start again.
func deviceCheckedTx(ctx context.Context, tx *sqlx.Tx, deviceID int64, health string, inService bool, reason string, wr int64) error {
	t := now()
	if _, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE devices SET last_health_check_at = ?, jobs_since_health_check = 0, updated_at = ? WHERE id = ?`),
		t, t, deviceID); err != nil {
		return err
	}
	if !inService || health == string(schemas.HealthGood) {
		return nil
	}
	if _, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE devices SET health = 'good' WHERE id = ?`), deviceID); err != nil {
		return err
	}
	return recordDeviceEvent(ctx, tx, deviceID, DeviceEventHealth, health, string(schemas.HealthGood), reason, &wr)
}

// setDirtyTx sets a device's dirty flag and records a change.
func setDirtyTx(ctx context.Context, tx *sqlx.Tx, deviceID int64, was, dirty bool, reason string, wr int64) error {
	if was == dirty {
		return nil
	}
	if _, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE devices SET dirty = ? WHERE id = ?`), dirty, deviceID); err != nil {
		return err
	}
	return recordDeviceEvent(ctx, tx, deviceID, DeviceEventDirty, fmt.Sprint(was), fmt.Sprint(dirty), reason, &wr)
}

// hasPowerCycle reports whether a device's declared power actions (JSON
// list) can power-cycle it, which reset needs.
func hasPowerCycle(power string) bool {
	var acts []string
	_ = json.Unmarshal([]byte(power), &acts)
	has := map[string]bool{}
	for _, a := range acts {
		has[a] = true
	}
	return has["reset"] || (has["off"] && has["on"])
}

// lastLine is the last non-empty line of a run's output, to say why it
// failed when the worker gave no reason.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
