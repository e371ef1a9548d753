package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
	"github.com/kiln-ci/kiln/tasks"
)

// Pre-job policies: what runs on a device before a job takes it.
const (
	// PreJobAlways verifies the device before every job (a dirty one gets
	// a cleanup, which verifies it too).
	PreJobAlways = "always"
	// PreJobDirty cleans up a device that a job used before the next job.
	PreJobDirty = "dirty"
	// PreJobNever runs nothing before a job but the provision it asks for.
	PreJobNever = "never"
)

// DevicePolicy is the scheduler's device upkeep: pre-job special tasks and
// health checks, LAVA- and Autotest-style. Zero values take the defaults.
type DevicePolicy struct {
	// PreJob is always, dirty (default) or never.
	PreJob string
	// HealthCheckInterval: a good device is verified when its last check
	// is older than this (default 24h; negative: never by time).
	HealthCheckInterval time.Duration
	// HealthCheckJobs: a good device is verified after this many jobs
	// since its last check (0: never by count).
	HealthCheckJobs int
	// BadRecheck: a bad device is verified again this long after its last
	// check, and returns to service when it passes (default 1h; negative:
	// never).
	BadRecheck time.Duration
	// TaskTimeout limits each special task's run (default 30m).
	TaskTimeout time.Duration
	// Workspace is the workspace of the special tasks' requests.
	Workspace string
}

// Default device policy values.
const (
	DefaultHealthCheckInterval = 24 * time.Hour
	DefaultBadRecheck          = time.Hour
	DefaultDeviceTaskTimeout   = 30 * time.Minute
)

// ValidPreJob reports whether p is a pre-job policy.
func ValidPreJob(p string) bool {
	return p == PreJobAlways || p == PreJobDirty || p == PreJobNever
}

func (p *DevicePolicy) defaults() {
	if p.PreJob == "" {
		p.PreJob = PreJobDirty
	}
	if p.HealthCheckInterval == 0 {
		p.HealthCheckInterval = DefaultHealthCheckInterval
	}
	if p.BadRecheck == 0 {
		p.BadRecheck = DefaultBadRecheck
	}
	if p.TaskTimeout <= 0 {
		p.TaskTimeout = DefaultDeviceTaskTimeout
	}
}

// deviceTaskPriority puts special tasks before jobs: a job waits for them
// anyway, and they only compete for their own device.
const deviceTaskPriority = 1000

// upkeep asks for the health checks that are due and creates the request
// of every special task a device needs, so that this pass can assign it.
// Only the devices of connected workers (live) are looked after: a worker
// that is away would leave a pile of checks behind, stale by the time it
// comes back.
func (s *Scheduler) upkeep(ctx context.Context, pool *devicePool, live map[int64]bool, now time.Time) error {
	for _, d := range pool.all {
		if !d.d.Declared || !live[d.d.WorkerID] ||
			d.d.Health == string(schemas.HealthMaintenance) || d.d.Health == string(schemas.HealthRetired) {
			continue
		}
		if d.d.Needs == "" && d.idle() && !d.d.HeldFor.Valid && !d.d.UpkeepWorkRequestID.Valid {
			if why := s.healthCheckDue(d.d, now); why != "" {
				changed, err := s.st.SetDeviceNeeds(ctx, d.d.ID, schemas.DeviceTaskVerify, why)
				if errors.Is(err, store.ErrConflict) {
					continue
				}
				if err != nil {
					return err
				}
				if changed {
					d.d.Needs, d.d.NeedsReason = schemas.DeviceTaskVerify, why
				}
			}
		}
		if d.d.Needs == "" || d.d.UpkeepWorkRequestID.Valid {
			continue
		}
		id, err := s.createDeviceTask(ctx, d.d)
		var unknown *unknownTaskError
		switch {
		case errors.Is(err, store.ErrConflict):
			continue // changed meanwhile: the next pass sees it
		case errors.As(err, &unknown):
			// A server without the special tasks: the device waits,
			// and says so in the log; the other devices go on.
			s.log.Error().Err(err).Str("device", d.d.Name).Msg("device special task")
			continue
		case err != nil:
			return err
		}
		d.d.UpkeepWorkRequestID.Int64, d.d.UpkeepWorkRequestID.Valid = id, true
		s.log.Info().Str("device", d.d.Name).Str("task", d.d.Needs).Int64("work_request", id).Str("reason", d.d.NeedsReason).Msg("device special task")
	}
	return nil
}

// healthCheckDue says why device d needs a health check now, or "".
func (s *Scheduler) healthCheckDue(d store.Device, now time.Time) string {
	p := s.opt.Devices
	last := d.LastHealthCheckAt
	switch d.Health {
	case string(schemas.HealthUnknown):
		return "health unknown: first check"
	case string(schemas.HealthBad):
		if p.BadRecheck > 0 && (!last.Valid || now.Sub(last.Time) >= p.BadRecheck) {
			return "re-verification of a bad device"
		}
	case string(schemas.HealthGood):
		if p.HealthCheckJobs > 0 && d.JobsSinceHealthCheck >= p.HealthCheckJobs {
			return fmt.Sprintf("health check: %d jobs since the last one", d.JobsSinceHealthCheck)
		}
		if p.HealthCheckInterval > 0 && (!last.Valid || now.Sub(last.Time) >= p.HealthCheckInterval) {
			return fmt.Sprintf("health check: every %s", p.HealthCheckInterval)
		}
	}
	return ""
}

// createDeviceTask stores the request of the special task d needs.
func (s *Scheduler) createDeviceTask(ctx context.Context, d store.Device) (int64, error) {
	td := schemas.DeviceTaskData{Device: d.Name, Reason: d.NeedsReason}
	if d.HeldFor.Valid {
		td.ForWorkRequest = d.HeldFor.Int64
	}
	if d.Needs == schemas.DeviceTaskProvision {
		job, err := s.st.WorkRequest(ctx, d.HeldFor.Int64)
		if err != nil {
			return 0, fmt.Errorf("provision of device %s: %w", d.Name, err)
		}
		p := schemas.JobProvision(job.TaskData)
		if p == nil {
			return 0, fmt.Errorf("provision of device %s: work request %d asks for none: %w", d.Name, job.ID, store.ErrConflict)
		}
		td.Artifact, td.Command = p.Artifact, p.Command
	}
	task, err := s.reg.Get(d.Needs)
	if err != nil {
		return 0, &unknownTaskError{device: d.Name, task: d.Needs, err: err}
	}
	data, err := json.Marshal(td)
	if err != nil {
		return 0, err
	}
	req, err := task.Requirements(data)
	if err != nil {
		return 0, fmt.Errorf("device %s needs %s: %w", d.Name, d.Needs, err)
	}
	return s.st.CreateDeviceTask(ctx, d.ID, store.NewWorkRequest{
		TaskName: d.Needs, TaskType: string(task.Type()), TaskData: string(data),
		Workspace: s.opt.Devices.Workspace, PriorityBase: deviceTaskPriority,
		Shape: tasks.ShapeKey(d.Needs, req), TimeoutSeconds: int(s.opt.Devices.TaskTimeout / time.Second),
	})
}

// preJob says which special task must run on device d before job id takes
// it, per the policy and the job's provision, and why; "" for none.
func (s *Scheduler) preJob(ctx context.Context, d *poolDevice, id int64) (string, string, error) {
	p := s.opt.Devices.PreJob
	switch {
	case d.d.HeldFor.Valid:
		return "", "", nil // held for this job: it was prepared
	case d.d.Dirty && p != PreJobNever:
		return schemas.DeviceTaskCleanup, fmt.Sprintf("cleanup before work request %d: a job used the device", id), nil
	case p == PreJobAlways:
		return schemas.DeviceTaskVerify, fmt.Sprintf("verify before work request %d", id), nil
	}
	wr, err := s.st.WorkRequest(ctx, id)
	if err != nil {
		return "", "", err
	}
	if schemas.JobProvision(wr.TaskData) != nil {
		return schemas.DeviceTaskProvision, fmt.Sprintf("work request %d asks for a provision", id), nil
	}
	return "", "", nil
}

// unknownTaskError is a special task this server's registry lacks.
type unknownTaskError struct {
	device, task string
	err          error
}

func (e *unknownTaskError) Error() string {
	return fmt.Sprintf("device %s needs %s: %v", e.device, e.task, e.err)
}

func (e *unknownTaskError) Unwrap() error { return e.err }
