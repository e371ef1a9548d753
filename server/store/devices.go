package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/kiln-ci/kiln/schemas"
)

// ErrDeviceOwned is the ErrConflict of a worker declaring a device whose
// name another worker has declared.
var ErrDeviceOwned = fmt.Errorf("%w: device owned by another worker", ErrConflict)

// Device event kinds (device_events.kind).
const (
	DeviceEventState  = "state"
	DeviceEventHealth = "health"
	DeviceEventDirty  = "dirty"
)

// Device is a stored device under test. Labels and Power hold JSON text (an
// object of strings and a list of power actions).
type Device struct {
	ID       int64  `db:"id"`
	Name     string `db:"name"`
	WorkerID int64  `db:"worker_id"`
	// WorkerName is its worker's name (filled by Devices, DeviceByName and
	// SetDeviceHealth).
	WorkerName           string        `db:"worker_name"`
	DeviceType           string        `db:"device_type"`
	Labels               string        `db:"labels"`
	Connection           string        `db:"connection"`
	Power                string        `db:"power"`
	Declared             bool          `db:"declared"`
	State                string        `db:"state"`
	Health               string        `db:"health"`
	Dirty                bool          `db:"dirty"`
	LeaseWorkRequestID   sql.NullInt64 `db:"lease_work_request_id"`
	JobsSinceHealthCheck int           `db:"jobs_since_health_check"`
	LastHealthCheckAt    sql.NullTime  `db:"last_health_check_at"`
	// Needs is the special task the device needs next ("" for none), and
	// NeedsReason why.
	Needs       string `db:"needs"`
	NeedsReason string `db:"needs_reason"`
	// UpkeepWorkRequestID is the special task's request, once created.
	UpkeepWorkRequestID sql.NullInt64 `db:"upkeep_work_request_id"`
	// HeldFor is the job the device is being prepared for.
	HeldFor   sql.NullInt64 `db:"held_for"`
	CreatedAt time.Time     `db:"created_at"`
	UpdatedAt time.Time     `db:"updated_at"`
}

// Wire is the JSON form of d, without its history.
func (d Device) Wire() schemas.Device {
	out := schemas.Device{
		ID:                   d.ID,
		Name:                 d.Name,
		DeviceType:           d.DeviceType,
		Labels:               map[string]string{},
		Connection:           d.Connection,
		Power:                []string{},
		Worker:               d.WorkerName,
		WorkerID:             d.WorkerID,
		Declared:             d.Declared,
		State:                schemas.DeviceState(d.State),
		Health:               schemas.DeviceHealth(d.Health),
		Dirty:                d.Dirty,
		JobsSinceHealthCheck: d.JobsSinceHealthCheck,
		Needs:                d.Needs,
		NeedsReason:          d.NeedsReason,
		UpdatedAt:            d.UpdatedAt.UTC(),
	}
	_ = json.Unmarshal([]byte(d.Labels), &out.Labels)
	_ = json.Unmarshal([]byte(d.Power), &out.Power)
	if out.Labels == nil { // the JSON was null
		out.Labels = map[string]string{}
	}
	if out.Power == nil {
		out.Power = []string{}
	}
	if d.LeaseWorkRequestID.Valid {
		v := d.LeaseWorkRequestID.Int64
		out.LeaseWorkRequest = &v
	}
	if d.UpkeepWorkRequestID.Valid {
		v := d.UpkeepWorkRequestID.Int64
		out.UpkeepWorkRequest = &v
	}
	if d.HeldFor.Valid {
		v := d.HeldFor.Int64
		out.HeldFor = &v
	}
	if d.LastHealthCheckAt.Valid {
		v := d.LastHealthCheckAt.Time.UTC()
		out.LastHealthCheckAt = &v
	}
	return out
}

// deviceSelect reads devices with their worker's name; add WHERE, ORDER BY.
// The columns are named so that a later migration adding one does not break
// reading into Device.
const deviceSelect = `SELECT devices.id, devices.name, devices.worker_id, workers.name AS worker_name,
	devices.device_type, devices.labels, devices.connection, devices.power, devices.declared, devices.state,
	devices.health, devices.dirty, devices.lease_work_request_id, devices.jobs_since_health_check,
	devices.last_health_check_at, devices.needs, devices.needs_reason, devices.upkeep_work_request_id,
	devices.held_for, devices.created_at, devices.updated_at
	FROM devices JOIN workers ON workers.id = devices.worker_id`

// declaredDevice is what UpsertDevices compares a declaration with.
type declaredDevice struct {
	ID         int64  `db:"id"`
	Name       string `db:"name"`
	WorkerID   int64  `db:"worker_id"`
	DeviceType string `db:"device_type"`
	Labels     string `db:"labels"`
	Connection string `db:"connection"`
	Power      string `db:"power"`
	Declared   bool   `db:"declared"`
}

// UpsertDevices makes decl the devices that worker workerID declares: new
// names are inserted (idle, health unknown), the worker's devices that are
// declared again get the declared type, labels, connection and power and
// are declared, and the worker's devices that decl leaves out are no longer
// declared (their state, health and history stay). A name that another
// worker declared is an error wrapping ErrDeviceOwned, and nothing changes.
// The caller checks the names (unique within decl, well formed).
func (s *Store) UpsertDevices(ctx context.Context, workerID int64, decl []schemas.DeviceDeclaration) error {
	err := s.tx(ctx, func(tx *sqlx.Tx) error {
		// Lock the worker: its declarations apply one at a time.
		var wid int64
		if err := tx.GetContext(ctx, &wid, tx.Rebind(`SELECT id FROM workers WHERE id = ?`+s.forUpdate()), workerID); err != nil {
			return notFound("worker", workerID, err)
		}
		names := make([]string, 0, len(decl))
		for _, d := range decl {
			names = append(names, d.Name)
		}
		existing := map[string]declaredDevice{}
		if len(names) > 0 {
			q, args, err := sqlx.In(`SELECT id, name, worker_id, device_type, labels, connection, power, declared
				FROM devices WHERE name IN (?)`+s.forUpdate(), names)
			if err != nil {
				return err
			}
			var rows []declaredDevice
			if err := tx.SelectContext(ctx, &rows, tx.Rebind(q), args...); err != nil {
				return fmt.Errorf("read devices: %w", err)
			}
			for _, r := range rows {
				existing[r.Name] = r
			}
		}
		t := now()
		for _, d := range decl {
			labels, power, err := declarationJSON(d)
			if err != nil {
				return err
			}
			cur, ok := existing[d.Name]
			switch {
			case !ok:
				_, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO devices
					(name, worker_id, device_type, labels, connection, power, declared, state, health, created_at, updated_at)
					VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
					d.Name, workerID, d.DeviceType, labels, d.Connection, power, true,
					string(schemas.DeviceIdle), string(schemas.HealthUnknown), t, t)
				if isUnique(err) {
					// Inserted meanwhile, by another worker (this one's
					// declarations are serialised by the lock above).
					return fmt.Errorf("device %q: %w", d.Name, ErrDeviceOwned)
				}
				if err != nil {
					return fmt.Errorf("insert device %q: %w", d.Name, err)
				}
			case cur.WorkerID != workerID:
				return fmt.Errorf("device %q: %w", d.Name, ErrDeviceOwned)
			case cur.Declared && cur.DeviceType == d.DeviceType && cur.Labels == labels &&
				cur.Connection == d.Connection && cur.Power == power:
				// Unchanged.
			default:
				_, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE devices SET device_type = ?, labels = ?, connection = ?,
					power = ?, declared = ?, updated_at = ? WHERE id = ?`),
					d.DeviceType, labels, d.Connection, power, true, t, cur.ID)
				if err != nil {
					return fmt.Errorf("update device %q: %w", d.Name, err)
				}
			}
		}
		q, args := `UPDATE devices SET declared = ?, updated_at = ? WHERE worker_id = ? AND declared`, []any{false, t, workerID}
		if len(names) > 0 {
			var err error
			q, args, err = sqlx.In(q+` AND name NOT IN (?)`, false, t, workerID, names)
			if err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, tx.Rebind(q), args...); err != nil {
			return fmt.Errorf("undeclare devices: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("declare devices of worker %d: %w", workerID, err)
	}
	return nil
}

// declarationJSON returns the stored JSON of d's labels and power actions:
// {} and [] when there are none.
func declarationJSON(d schemas.DeviceDeclaration) (labels, power string, err error) {
	l := d.Labels
	if l == nil {
		l = map[string]string{}
	}
	p := d.Power
	if p == nil {
		p = []string{}
	}
	lb, err := json.Marshal(l) // keys sorted: equal labels give equal text
	if err != nil {
		return "", "", fmt.Errorf("device %q labels: %w", d.Name, err)
	}
	pb, err := json.Marshal(p)
	if err != nil {
		return "", "", fmt.Errorf("device %q power: %w", d.Name, err)
	}
	return string(lb), string(pb), nil
}

// Devices lists all devices, declared or not, by name.
func (s *Store) Devices(ctx context.Context) ([]Device, error) {
	var ds []Device
	if err := s.r.SelectContext(ctx, &ds, deviceSelect+` ORDER BY devices.name`); err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return ds, nil
}

// DeviceByName returns one device; ErrNotFound when there is none.
func (s *Store) DeviceByName(ctx context.Context, name string) (Device, error) {
	var d Device
	if err := s.r.GetContext(ctx, &d, s.rebind(deviceSelect+` WHERE devices.name = ?`), name); err != nil {
		return Device{}, notFound("device", name, err)
	}
	return d, nil
}

// deviceEvent is a stored device_events row.
type deviceEvent struct {
	ID            int64         `db:"id"`
	DeviceID      int64         `db:"device_id"`
	At            time.Time     `db:"at"`
	Kind          string        `db:"kind"`
	From          string        `db:"from_value"`
	To            string        `db:"to_value"`
	Reason        string        `db:"reason"`
	WorkRequestID sql.NullInt64 `db:"work_request_id"`
}

// DeviceEvents returns the latest limit changes of a device, newest first
// (all of them when limit <= 0).
func (s *Store) DeviceEvents(ctx context.Context, deviceID int64, limit int) ([]schemas.DeviceEvent, error) {
	q := `SELECT id, device_id, at, kind, from_value, to_value, reason, work_request_id FROM device_events WHERE device_id = ? ORDER BY id DESC`
	args := []any{deviceID}
	if limit > 0 {
		q += ` LIMIT ?`
		args = append(args, limit)
	}
	var rows []deviceEvent
	if err := s.r.SelectContext(ctx, &rows, s.rebind(q), args...); err != nil {
		return nil, fmt.Errorf("history of device %d: %w", deviceID, err)
	}
	out := make([]schemas.DeviceEvent, 0, len(rows))
	for _, r := range rows {
		e := schemas.DeviceEvent{At: r.At.UTC(), Kind: r.Kind, From: r.From, To: r.To, Reason: r.Reason}
		if r.WorkRequestID.Valid {
			v := r.WorkRequestID.Int64
			e.WorkRequest = &v
		}
		out = append(out, e)
	}
	return out, nil
}

// recordDeviceEvent adds a change to a device's history inside tx. It does
// not touch the device row: the caller changes it in the same transaction.
func recordDeviceEvent(ctx context.Context, tx *sqlx.Tx, deviceID int64, kind, from, to, reason string, workRequest *int64) error {
	var wr any
	if workRequest != nil {
		wr = *workRequest
	}
	_, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO device_events (device_id, at, kind, from_value, to_value, reason, work_request_id)
		VALUES (?, ?, ?, ?, ?, ?, ?)`), deviceID, now(), kind, from, to, reason, wr)
	if err != nil {
		return fmt.Errorf("record %s event of device %d: %w", kind, deviceID, err)
	}
	return nil
}

// SetDeviceHealth sets a device's health and records the change, with
// reason, in its history. Setting the health it already has changes
// nothing. Which healths a caller may set is the caller's business (admins:
// maintenance, retired, unknown; health checks: good, bad).
func (s *Store) SetDeviceHealth(ctx context.Context, name string, health schemas.DeviceHealth, reason string) (Device, error) {
	if !health.Valid() {
		return Device{}, fmt.Errorf("set health of device %q: invalid health %q", name, health)
	}
	err := s.tx(ctx, func(tx *sqlx.Tx) error {
		var cur struct {
			ID     int64  `db:"id"`
			Health string `db:"health"`
		}
		if err := tx.GetContext(ctx, &cur, tx.Rebind(`SELECT id, health FROM devices WHERE name = ?`+s.forUpdate()), name); err != nil {
			return notFound("device", name, err)
		}
		if cur.Health == string(health) {
			return nil
		}
		if _, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE devices SET health = ?, updated_at = ? WHERE id = ?`),
			string(health), now(), cur.ID); err != nil {
			return fmt.Errorf("update device %q: %w", name, err)
		}
		if err := recordDeviceEvent(ctx, tx, cur.ID, DeviceEventHealth, cur.Health, string(health), reason, nil); err != nil {
			return err
		}
		if health != schemas.HealthMaintenance && health != schemas.HealthRetired {
			return nil
		}
		// Out of service: no special task is due any more, and the job
		// it was being prepared for looks for another device.
		if _, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE devices SET held_for = NULL WHERE id = ?`), cur.ID); err != nil {
			return err
		}
		return setNeedsTx(ctx, tx, cur.ID, "", "device taken out of service", nil)
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return Device{}, err
		}
		return Device{}, fmt.Errorf("set health of device %q: %w", name, err)
	}
	return s.DeviceByName(ctx, name)
}
