package store

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
)

// runDeviceTask creates the special task device name needs, runs it on w
// and completes it with result, as the scheduler and the worker would; it
// returns the device after the lease is released.
func runDeviceTask(t *testing.T, st *Store, w Worker, name string, c Completion) (WorkRequest, Device) {
	t.Helper()
	ctx := t.Context()
	dev, err := st.DeviceByName(ctx, name)
	require.NoError(t, err)
	require.NotEmpty(t, dev.Needs, "device %s needs nothing", name)
	td := schemas.DeviceTaskData{Device: name, Reason: dev.NeedsReason}
	if dev.HeldFor.Valid {
		td.ForWorkRequest = dev.HeldFor.Int64
	}
	data, err := json.Marshal(td)
	require.NoError(t, err)
	n := NewWorkRequest{TaskName: dev.Needs, TaskType: "Worker", TaskData: string(data), Workspace: "System",
		PriorityBase: 1000, Shape: dev.Needs + "|" + name}
	id, err := st.CreateDeviceTask(ctx, dev.ID, n)
	require.NoError(t, err)
	_, err = st.CreateDeviceTask(ctx, dev.ID, n)
	require.ErrorIs(t, err, ErrConflict, "one upkeep request at a time")
	wr, err := st.WorkRequest(ctx, id)
	require.NoError(t, err)
	_, err = st.AssignDevice(ctx, wr.ID, wr.Attempt, w.ID, 10, dev.ID, assignMsg(wr))
	require.NoError(t, err)
	start(t, st, wr, w)
	if c.InfrastructureRetries == 0 {
		c.InfrastructureRetries = 2
	}
	wr, err = st.Complete(ctx, wr.ID, w.ID, wr.Attempt, c)
	require.NoError(t, err)
	_, err = st.ReconcileDeviceLeases(ctx)
	require.NoError(t, err)
	dev, err = st.DeviceByName(ctx, name)
	require.NoError(t, err)
	require.False(t, dev.UpkeepWorkRequestID.Valid)
	require.False(t, dev.LeaseWorkRequestID.Valid)
	return wr, dev
}

var (
	passed = Completion{Result: "success"}
	failed = Completion{Result: "failure", Output: "kiln: verify command exited 1\n"}
	lost   = Completion{Result: "error", ErrorType: "infrastructure", Reason: "infrastructure: device does not answer"}
)

func TestDeviceUpkeepEscalatesToBadAndRetriesTheJob(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w := newWorker(t, st, "lab")
		dev := goodDevice(t, st, w, "dut-1", "on", "off")
		job := newWR(t, st, wrOpts{task: "dut-test"})

		require.NoError(t, st.HoldDevice(ctx, dev.ID, job.ID, schemas.DeviceTaskVerify, "verify before the job"))
		require.ErrorIs(t, st.HoldDevice(ctx, dev.ID, job.ID, schemas.DeviceTaskVerify, "again"), ErrConflict)
		_, err := st.AssignDevice(ctx, job.ID, job.Attempt, w.ID, 10, dev.ID, assignMsg(job))
		require.ErrorIs(t, err, ErrConflict, "not before its verify")

		v, dev := runDeviceTask(t, st, w, "dut-1", failed)
		require.Equal(t, "failure", v.Result)
		require.Equal(t, "reset", dev.Needs, "on and off make a power cycle")
		require.Contains(t, dev.NeedsReason, "verify command exited 1")
		require.False(t, dev.Dirty, "a special task does not dirty the device")
		require.Zero(t, dev.JobsSinceHealthCheck)
		require.Equal(t, job.ID, dev.HeldFor.Int64, "still held for the job")

		_, dev = runDeviceTask(t, st, w, "dut-1", failed)
		require.Equal(t, "repair", dev.Needs)
		_, dev = runDeviceTask(t, st, w, "dut-1", lost)
		require.Equal(t, "bad", dev.Health)
		require.Empty(t, dev.Needs)
		require.False(t, dev.HeldFor.Valid)

		got, err := st.WorkRequest(ctx, job.ID)
		require.NoError(t, err)
		require.Equal(t, "completed", got.Status)
		require.Equal(t, "error", got.Result)
		require.Equal(t, "infrastructure", got.ErrorType)
		require.Contains(t, got.Reason, "dut-1")
		require.True(t, got.SupersededBy.Valid, "retried on another device")

		// Re-verification of the bad device: a failure keeps it bad with
		// no escalation, a pass returns it to service.
		changed, err := st.SetDeviceNeeds(ctx, dev.ID, schemas.DeviceTaskVerify, "re-verification")
		require.NoError(t, err)
		require.True(t, changed)
		_, dev = runDeviceTask(t, st, w, "dut-1", failed)
		require.Equal(t, "bad", dev.Health)
		require.Empty(t, dev.Needs)
		require.True(t, dev.LastHealthCheckAt.Valid)
		_, err = st.SetDeviceNeeds(ctx, dev.ID, schemas.DeviceTaskVerify, "re-verification")
		require.NoError(t, err)
		_, dev = runDeviceTask(t, st, w, "dut-1", passed)
		require.Equal(t, "good", dev.Health)

		events, err := st.DeviceEvents(ctx, dev.ID, 0)
		require.NoError(t, err)
		var needs []string
		for i := len(events) - 1; i >= 0; i-- {
			if events[i].Kind == DeviceEventNeeds || events[i].Kind == DeviceEventHealth {
				needs = append(needs, events[i].Kind+":"+events[i].To)
			}
		}
		require.Equal(t, []string{"health:good", "needs:verify", "needs:reset", "needs:repair", "health:bad", "needs:",
			"needs:verify", "needs:", "needs:verify", "health:good", "needs:"}, needs)
	})
}

func TestDeviceUpkeepPreparesTheJob(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w := newWorker(t, st, "lab")
		dev := goodDevice(t, st, w, "dut-1")
		first := newWR(t, st, wrOpts{task: "dut-test"})
		_, err := st.AssignDevice(ctx, first.ID, first.Attempt, w.ID, 10, dev.ID, assignMsg(first))
		require.NoError(t, err)
		start(t, st, first, w)
		_, err = st.Complete(ctx, first.ID, w.ID, first.Attempt, passed)
		require.NoError(t, err)
		_, err = st.ReconcileDeviceLeases(ctx)
		require.NoError(t, err)

		// The job asks for a provision: cleanup, then provision, then it
		// takes the device.
		job, err := st.CreateWorkRequest(ctx, NewWorkRequest{TaskName: "dut-test", TaskType: "Worker", Workspace: "System",
			TaskData: `{"device":"dut-1","command":"true","provision":{"artifact":7,"command":"sh install.sh"}}`, Shape: "dut-test"})
		require.NoError(t, err)
		require.NoError(t, st.HoldDevice(ctx, dev.ID, job.ID, schemas.DeviceTaskCleanup, "dirty"))
		_, dev = runDeviceTask(t, st, w, "dut-1", passed)
		require.False(t, dev.Dirty, "cleaned up")
		require.Equal(t, "provision", dev.Needs)
		_, dev = runDeviceTask(t, st, w, "dut-1", passed)
		require.Empty(t, dev.Needs)
		require.True(t, dev.Dirty, "what the provision installed stays until a cleanup")
		require.Equal(t, job.ID, dev.HeldFor.Int64)

		other := newWR(t, st, wrOpts{task: "dut-test"})
		_, err = st.AssignDevice(ctx, other.ID, other.Attempt, w.ID, 10, dev.ID, assignMsg(other))
		require.ErrorIs(t, err, ErrConflict, "held for the job")
		_, err = st.AssignDevice(ctx, job.ID, job.Attempt, w.ID, 10, dev.ID, assignMsg(job))
		require.NoError(t, err)
		dev, _ = st.DeviceByName(ctx, "dut-1")
		require.False(t, dev.HeldFor.Valid)
		require.Equal(t, job.ID, dev.LeaseWorkRequestID.Int64)
	})
}

func TestDeviceUpkeepReconciles(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w := newWorker(t, st, "lab")
		dev := goodDevice(t, st, w, "dut-1")
		job, err := st.CreateWorkRequest(ctx, NewWorkRequest{TaskName: "dut-test", TaskType: "Worker", Workspace: "System",
			TaskData: `{"device":"dut-1","command":"true","provision":{"artifact":7,"command":"sh install.sh"}}`, Shape: "dut-test"})
		require.NoError(t, err)
		require.NoError(t, st.HoldDevice(ctx, dev.ID, job.ID, schemas.DeviceTaskProvision, "provision"))
		id, err := st.CreateDeviceTask(ctx, dev.ID, NewWorkRequest{TaskName: "provision", TaskType: "Worker",
			TaskData: `{"device":"dut-1","artifact":7,"command":"sh install.sh"}`, Workspace: "System", Shape: "provision|dut-1"})
		require.NoError(t, err)

		// The job goes away: the device is released and its provision
		// forgotten; the aborted upkeep request too.
		_, err = st.Abort(ctx, job.ID, 0, time.Now().Add(time.Minute))
		require.NoError(t, err)
		_, err = st.Abort(ctx, id, 0, time.Now().Add(time.Minute))
		require.NoError(t, err)
		_, err = st.ReconcileDeviceLeases(ctx)
		require.NoError(t, err)
		dev, err = st.DeviceByName(ctx, "dut-1")
		require.NoError(t, err)
		require.False(t, dev.HeldFor.Valid)
		require.False(t, dev.UpkeepWorkRequestID.Valid)
		require.Empty(t, dev.Needs)

		// Maintenance drops what was due; a device out of service gets no
		// health check.
		_, err = st.SetDeviceNeeds(ctx, dev.ID, schemas.DeviceTaskVerify, "periodic")
		require.NoError(t, err)
		_, err = st.SetDeviceHealth(ctx, "dut-1", schemas.HealthMaintenance, "bench")
		require.NoError(t, err)
		dev, _ = st.DeviceByName(ctx, "dut-1")
		require.Empty(t, dev.Needs)
		_, err = st.SetDeviceNeeds(ctx, dev.ID, schemas.DeviceTaskVerify, "admin")
		require.ErrorIs(t, err, ErrConflict)
	})
}
