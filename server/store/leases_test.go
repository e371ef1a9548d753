package store

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
)

func TestDeviceLeases(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w := newWorker(t, st, "lab")
		dev := goodDevice(t, st, w, "dut-1")
		first, second := newWR(t, st, wrOpts{task: "dut-test"}), newWR(t, st, wrOpts{task: "dut-test"})

		_, err := st.AssignDevice(ctx, first.ID, first.Attempt, w.ID, 10, dev.ID, assignMsg(first))
		require.NoError(t, err)
		_, err = st.AssignDevice(ctx, second.ID, second.Attempt, w.ID, 10, dev.ID, assignMsg(second))
		require.ErrorIs(t, err, ErrConflict, "one device, one lease")
		got, err := st.WorkRequest(ctx, second.ID)
		require.NoError(t, err)
		require.False(t, got.WorkerID.Valid, "the refused assignment left no trace")
		dev, err = st.DeviceByName(ctx, "dut-1")
		require.NoError(t, err)
		require.Equal(t, first.ID, dev.LeaseWorkRequestID.Int64, "leased to the first request")

		// reserved -> running -> idle and dirty, one job counted.
		start(t, st, first, w)
		_, err = st.ReconcileDeviceLeases(ctx)
		require.NoError(t, err)
		dev, _ = st.DeviceByName(ctx, "dut-1")
		require.Equal(t, "running", dev.State)
		_, err = st.Complete(ctx, first.ID, w.ID, first.Attempt, Completion{Result: "success"})
		require.NoError(t, err)
		n, err := st.ReconcileDeviceLeases(ctx)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		dev, _ = st.DeviceByName(ctx, "dut-1")
		require.Equal(t, "idle", dev.State)
		require.False(t, dev.LeaseWorkRequestID.Valid)
		require.True(t, dev.Dirty)
		require.Equal(t, 1, dev.JobsSinceHealthCheck)

		// An aborted running request keeps its device until the kill is
		// confirmed.
		_, err = st.AssignDevice(ctx, second.ID, second.Attempt, w.ID, 10, dev.ID, assignMsg(second))
		require.NoError(t, err)
		start(t, st, second, w)
		_, err = st.ReconcileDeviceLeases(ctx)
		require.NoError(t, err)
		_, err = st.Abort(ctx, second.ID, 0, time.Now().Add(time.Minute))
		require.NoError(t, err)
		n, err = st.ReconcileDeviceLeases(ctx)
		require.NoError(t, err)
		require.Zero(t, n, "the run may still be on the device")
		require.NoError(t, st.ConfirmKill(ctx, second.ID, w.ID, second.Attempt))
		n, err = st.ReconcileDeviceLeases(ctx)
		require.NoError(t, err)
		require.Equal(t, 1, n)

		// A device out of service is not leased.
		_, err = st.SetDeviceHealth(ctx, "dut-1", schemas.HealthMaintenance, "test")
		require.NoError(t, err)
		third := newWR(t, st, wrOpts{task: "dut-test"})
		_, err = st.AssignDevice(ctx, third.ID, third.Attempt, w.ID, 10, dev.ID, assignMsg(third))
		require.ErrorIs(t, err, ErrConflict)

		events, err := st.DeviceEvents(ctx, dev.ID, 0)
		require.NoError(t, err)
		var seq []string
		for i := len(events) - 1; i >= 0; i-- {
			seq = append(seq, events[i].Kind+":"+events[i].To)
		}
		require.Equal(t, []string{"health:good", "state:reserved", "state:running", "state:idle", "dirty:true",
			"state:reserved", "state:running", "state:idle", "dirty:true", "health:maintenance"}, seq)
	})
}

func countInfrastructureRetries(t *testing.T, st *Store, id int64) (int, error) {
	t.Helper()
	var n int
	err := st.tx(t.Context(), func(tx *sqlx.Tx) error {
		var err error
		n, err = infrastructureRetries(t.Context(), tx, id)
		return err
	})
	return n, err
}

func TestInfrastructureRetries(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w := newWorker(t, st, "lab")
		wr := newWR(t, st, wrOpts{task: "dut-test"})
		for i := range 3 {
			n, err := countInfrastructureRetries(t, st, wr.ID)
			require.NoError(t, err)
			require.Equal(t, i, n)
			assign(t, st, wr, w)
			start(t, st, wr, w)
			got, err := st.Complete(ctx, wr.ID, w.ID, wr.Attempt, Completion{Result: "error", Reason: "infrastructure: no answer",
				ErrorType: "infrastructure"})
			require.NoError(t, err)
			require.Equal(t, "infrastructure", got.ErrorType)
			wr, err = st.Retry(ctx, wr.ID, 0)
			require.NoError(t, err)
		}
		// A retry by hand of a request that failed otherwise ends the chain.
		assign(t, st, wr, w)
		start(t, st, wr, w)
		_, err := st.Complete(ctx, wr.ID, w.ID, wr.Attempt, Completion{Result: "error", Reason: "crash"})
		require.NoError(t, err)
		wr, err = st.Retry(ctx, wr.ID, 0)
		require.NoError(t, err)
		n, err := countInfrastructureRetries(t, st, wr.ID)
		require.NoError(t, err)
		require.Zero(t, n)
	})
}

func TestInfrastructureErrorInOneTransaction(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w := newWorker(t, st, "lab")
		dev := goodDevice(t, st, w, "dut-1")
		wr := newWR(t, st, wrOpts{task: "dut-test"})
		for i := range 2 {
			_, err := st.AssignDevice(ctx, wr.ID, wr.Attempt, w.ID, 10, dev.ID, assignMsg(wr))
			require.NoError(t, err)
			start(t, st, wr, w)
			got, err := st.Complete(ctx, wr.ID, w.ID, wr.Attempt, Completion{Result: "error", Reason: "infrastructure: no answer",
				ErrorType: "infrastructure", InfrastructureRetries: 1})
			require.NoError(t, err)
			dev, _ = st.DeviceByName(ctx, "dut-1")
			require.Equal(t, "repair", dev.Needs, "the completion sent the device to repair")
			require.Contains(t, dev.NeedsReason, "no answer")
			if i == 1 {
				require.False(t, got.SupersededBy.Valid, "the limit of one retry is reached")
				break
			}
			require.True(t, got.SupersededBy.Valid, "the completion made the retry")
			_, err = st.ReconcileDeviceLeases(ctx)
			require.NoError(t, err)
			// Out of service and back: no repair due any more.
			_, err = st.SetDeviceHealth(ctx, "dut-1", schemas.HealthMaintenance, "repaired by hand")
			require.NoError(t, err)
			dev = goodDevice(t, st, w, "dut-1")
			require.Empty(t, dev.Needs)
			wr, err = st.WorkRequest(ctx, got.SupersededBy.Int64)
			require.NoError(t, err)
		}
	})
}

// goodDevice declares device name for w (keeping w's other devices) and
// makes it good, as a passed health check would.
func goodDevice(t *testing.T, st *Store, w Worker, name string, power ...string) Device {
	t.Helper()
	ctx := t.Context()
	all, err := st.Devices(ctx)
	require.NoError(t, err)
	decl := []schemas.DeviceDeclaration{{Name: name, DeviceType: "board", Power: power}}
	for _, d := range all {
		if d.WorkerID == w.ID && d.Name != name && d.Declared {
			var p []string
			require.NoError(t, json.Unmarshal([]byte(d.Power), &p))
			decl = append(decl, schemas.DeviceDeclaration{Name: d.Name, DeviceType: d.DeviceType, Power: p})
		}
	}
	require.NoError(t, st.UpsertDevices(ctx, w.ID, decl))
	d, err := st.SetDeviceHealth(ctx, name, schemas.HealthGood, "test")
	require.NoError(t, err)
	return d
}
