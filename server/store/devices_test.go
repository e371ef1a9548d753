package store

import (
	"errors"
	"sync"
	"testing"

	"github.com/jmoiron/sqlx"
	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
)

// deviceNames lists the names of ds, in order.
func deviceNames(ds []Device) []string {
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		out = append(out, d.Name)
	}
	return out
}

func deviceByName(t *testing.T, st *Store, name string) Device {
	t.Helper()
	d, err := st.DeviceByName(t.Context(), name)
	require.NoError(t, err)
	return d
}

func TestUpsertDevices(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w := newWorker(t, st, "lab-1")

		decl := []schemas.DeviceDeclaration{
			{Name: "rpi4-02", DeviceType: "rpi4"},
			{Name: "rpi4-01", DeviceType: "rpi4", Labels: map[string]string{"ram": "8G", "board": "b"},
				Connection: "ssh://root@10.0.0.5:22", Power: []string{"on", "off", "reset"}},
		}
		require.NoError(t, st.UpsertDevices(ctx, w.ID, decl))

		ds, err := st.Devices(ctx)
		require.NoError(t, err)
		require.Equal(t, []string{"rpi4-01", "rpi4-02"}, deviceNames(ds), "ordered by name")
		one := ds[0].Wire()
		require.Equal(t, "rpi4-01", one.Name)
		require.Equal(t, "rpi4", one.DeviceType)
		require.Equal(t, map[string]string{"ram": "8G", "board": "b"}, one.Labels)
		require.Equal(t, "ssh://root@10.0.0.5:22", one.Connection)
		require.Equal(t, []string{"on", "off", "reset"}, one.Power)
		require.Equal(t, "lab-1", one.Worker)
		require.Equal(t, w.ID, one.WorkerID)
		require.True(t, one.Declared)
		require.Equal(t, schemas.DeviceIdle, one.State)
		require.Equal(t, schemas.HealthUnknown, one.Health)
		require.False(t, one.Dirty)
		require.Nil(t, one.LeaseWorkRequest)
		require.Nil(t, one.LastHealthCheckAt)
		require.Zero(t, one.JobsSinceHealthCheck)
		require.False(t, one.UpdatedAt.IsZero())
		require.Nil(t, one.History)

		two := ds[1].Wire()
		require.Equal(t, map[string]string{}, two.Labels, "no labels is {}, not null")
		require.Equal(t, []string{}, two.Power, "no power actions is [], not null")
		require.Equal(t, "", two.Connection)

		// The same declaration again changes nothing, not even updated_at.
		require.NoError(t, st.UpsertDevices(ctx, w.ID, decl))
		again := deviceByName(t, st, "rpi4-01")
		require.Equal(t, ds[0].UpdatedAt, again.UpdatedAt)
		require.Equal(t, ds[0].ID, again.ID)

		// Declaring one device, changed, drops the other.
		rawExec(t, st, `UPDATE devices SET health = 'good', dirty = ? WHERE name = 'rpi4-02'`, true)
		require.NoError(t, st.UpsertDevices(ctx, w.ID, []schemas.DeviceDeclaration{
			{Name: "rpi4-01", DeviceType: "rpi4b", Labels: map[string]string{"ram": "4G"}, Connection: "serial"},
		}))
		got := deviceByName(t, st, "rpi4-01").Wire()
		require.Equal(t, "rpi4b", got.DeviceType)
		require.Equal(t, map[string]string{"ram": "4G"}, got.Labels)
		require.Equal(t, "serial", got.Connection)
		require.Equal(t, []string{}, got.Power)
		require.True(t, got.Declared)
		require.Equal(t, ds[0].ID, got.ID, "updated in place")
		dropped := deviceByName(t, st, "rpi4-02")
		require.False(t, dropped.Declared)
		require.Equal(t, "good", dropped.Health, "an undeclared device keeps its health")
		require.True(t, dropped.Dirty)

		// Declared again, it comes back as it was.
		require.NoError(t, st.UpsertDevices(ctx, w.ID, decl[:1]))
		back := deviceByName(t, st, "rpi4-02")
		require.True(t, back.Declared)
		require.Equal(t, "good", back.Health)
		require.Equal(t, dropped.ID, back.ID)
		require.False(t, deviceByName(t, st, "rpi4-01").Declared)

		// No devices at all.
		require.NoError(t, st.UpsertDevices(ctx, w.ID, nil))
		ds, err = st.Devices(ctx)
		require.NoError(t, err)
		require.Len(t, ds, 2, "undeclared devices are kept")
		for _, d := range ds {
			require.False(t, d.Declared, d.Name)
		}
	})
}

func TestUpsertDevicesOwnership(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w1 := newWorker(t, st, "lab-1")
		w2 := newWorker(t, st, "lab-2")
		require.NoError(t, st.UpsertDevices(ctx, w1.ID, []schemas.DeviceDeclaration{{Name: "dut", DeviceType: "rpi4"}}))
		require.NoError(t, st.UpsertDevices(ctx, w2.ID, []schemas.DeviceDeclaration{{Name: "other", DeviceType: "qemu"}}))

		err := st.UpsertDevices(ctx, w2.ID, []schemas.DeviceDeclaration{
			{Name: "fresh", DeviceType: "qemu"},
			{Name: "dut", DeviceType: "x86"},
		})
		require.ErrorIs(t, err, ErrDeviceOwned)
		require.ErrorIs(t, err, ErrConflict)
		require.Contains(t, err.Error(), `"dut"`)

		// Nothing of the refused declaration was applied.
		_, err = st.DeviceByName(ctx, "fresh")
		require.ErrorIs(t, err, ErrNotFound)
		require.True(t, deviceByName(t, st, "other").Declared, "the refused declaration did not drop other")
		dut := deviceByName(t, st, "dut")
		require.Equal(t, w1.ID, dut.WorkerID)
		require.Equal(t, "rpi4", dut.DeviceType)
		require.Equal(t, "lab-1", dut.WorkerName)

		// The owner may still change it.
		require.NoError(t, st.UpsertDevices(ctx, w1.ID, []schemas.DeviceDeclaration{{Name: "dut", DeviceType: "rpi5"}}))
		require.Equal(t, "rpi5", deviceByName(t, st, "dut").DeviceType)

		// An undeclared device still belongs to its worker.
		require.NoError(t, st.UpsertDevices(ctx, w1.ID, []schemas.DeviceDeclaration{}))
		err = st.UpsertDevices(ctx, w2.ID, []schemas.DeviceDeclaration{{Name: "dut", DeviceType: "rpi5"}})
		require.ErrorIs(t, err, ErrDeviceOwned)

		err = st.UpsertDevices(ctx, 999999, []schemas.DeviceDeclaration{{Name: "ghost", DeviceType: "qemu"}})
		require.ErrorIs(t, err, ErrNotFound)
	})
}

// Two workers declaring the same new name at the same moment: one gets it,
// the other ErrDeviceOwned, never a raw unique violation.
func TestUpsertDevicesConcurrentSameName(t *testing.T) {
	const n, rounds = 6, 5
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		workers := make([]Worker, n)
		for i := range workers {
			workers[i] = newWorker(t, st, "lab-"+string(rune('a'+i)))
		}
		for round := range rounds {
			name := "dut-" + string(rune('0'+round))
			gate := make(chan struct{})
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i, w := range workers {
				wg.Go(func() {
					<-gate
					errs[i] = st.UpsertDevices(ctx, w.ID, []schemas.DeviceDeclaration{{Name: name, DeviceType: "qemu"}})
				})
			}
			close(gate)
			wg.Wait()
			won := -1
			for i, err := range errs {
				if err == nil {
					require.Equal(t, -1, won, "round %d: two workers got %s", round, name)
					won = i
					continue
				}
				require.ErrorIs(t, err, ErrDeviceOwned, "round %d", round)
			}
			require.NotEqual(t, -1, won, "round %d: nobody got %s", round, name)
			require.Equal(t, workers[won].ID, deviceByName(t, st, name).WorkerID)
		}
	})
}

func TestDeviceByNameNotFound(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		_, err := st.DeviceByName(t.Context(), "nope")
		require.ErrorIs(t, err, ErrNotFound)
		ds, err := st.Devices(t.Context())
		require.NoError(t, err)
		require.Empty(t, ds)
	})
}

func TestSetDeviceHealthAndHistory(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w := newWorker(t, st, "lab-1")
		require.NoError(t, st.UpsertDevices(ctx, w.ID, []schemas.DeviceDeclaration{
			{Name: "dut", DeviceType: "rpi4"}, {Name: "quiet", DeviceType: "rpi4"},
		}))
		dut := deviceByName(t, st, "dut")

		d, err := st.SetDeviceHealth(ctx, "dut", schemas.HealthMaintenance, "reflashing the bootloader")
		require.NoError(t, err)
		require.Equal(t, "maintenance", d.Health)
		require.Equal(t, "lab-1", d.WorkerName)
		require.False(t, d.UpdatedAt.Before(dut.UpdatedAt))

		// The health it has already: no change, no event.
		_, err = st.SetDeviceHealth(ctx, "dut", schemas.HealthMaintenance, "again")
		require.NoError(t, err)

		_, err = st.SetDeviceHealth(ctx, "dut", schemas.HealthRetired, "")
		require.NoError(t, err)
		d, err = st.SetDeviceHealth(ctx, "dut", schemas.HealthUnknown, "back in service")
		require.NoError(t, err)
		require.Equal(t, "unknown", d.Health)

		events, err := st.DeviceEvents(ctx, dut.ID, 0)
		require.NoError(t, err)
		require.Len(t, events, 3)
		want := []struct{ from, to, reason string }{
			{"retired", "unknown", "back in service"},
			{"maintenance", "retired", ""},
			{"unknown", "maintenance", "reflashing the bootloader"},
		}
		for i, e := range events {
			require.Equal(t, "health", e.Kind, i)
			require.Equal(t, want[i].from, e.From, i)
			require.Equal(t, want[i].to, e.To, i)
			require.Equal(t, want[i].reason, e.Reason, i)
			require.Nil(t, e.WorkRequest)
			require.False(t, e.At.IsZero())
			require.Equal(t, "UTC", e.At.Location().String())
			if i > 0 {
				require.False(t, e.At.After(events[i-1].At), "newest first")
			}
		}

		limited, err := st.DeviceEvents(ctx, dut.ID, 2)
		require.NoError(t, err)
		require.Equal(t, events[:2], limited)

		quiet := deviceByName(t, st, "quiet")
		none, err := st.DeviceEvents(ctx, quiet.ID, 50)
		require.NoError(t, err)
		require.NotNil(t, none)
		require.Empty(t, none)

		_, err = st.SetDeviceHealth(ctx, "nope", schemas.HealthRetired, "")
		require.ErrorIs(t, err, ErrNotFound)
		_, err = st.SetDeviceHealth(ctx, "dut", schemas.DeviceHealth("broken"), "")
		require.Error(t, err)
		require.Equal(t, "unknown", deviceByName(t, st, "dut").Health)
	})
}

// recordDeviceEvent is what the scheduler's lease changes call inside their
// own transactions; a failed transaction leaves no event behind.
func TestRecordDeviceEvent(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w := newWorker(t, st, "lab-1")
		require.NoError(t, st.UpsertDevices(ctx, w.ID, []schemas.DeviceDeclaration{{Name: "dut", DeviceType: "rpi4"}}))
		dut := deviceByName(t, st, "dut")
		wr := newWR(t, st, wrOpts{})

		require.NoError(t, st.tx(ctx, func(tx *sqlx.Tx) error {
			if err := recordDeviceEvent(ctx, tx, dut.ID, DeviceEventState, "idle", "reserved", "leased", &wr.ID); err != nil {
				return err
			}
			return recordDeviceEvent(ctx, tx, dut.ID, DeviceEventDirty, "false", "true", "", &wr.ID)
		}))
		boom := errors.New("boom")
		err := st.tx(ctx, func(tx *sqlx.Tx) error {
			if err := recordDeviceEvent(ctx, tx, dut.ID, DeviceEventState, "reserved", "running", "", nil); err != nil {
				return err
			}
			return boom
		})
		require.ErrorIs(t, err, boom)

		events, err := st.DeviceEvents(ctx, dut.ID, 10)
		require.NoError(t, err)
		require.Len(t, events, 2, "the rolled back event is gone")
		require.Equal(t, "dirty", events[0].Kind)
		require.Equal(t, "state", events[1].Kind)
		require.Equal(t, "idle", events[1].From)
		require.Equal(t, "reserved", events[1].To)
		require.Equal(t, "leased", events[1].Reason)
		require.NotNil(t, events[1].WorkRequest)
		require.Equal(t, wr.ID, *events[1].WorkRequest)
	})
}

// The columns the scheduler sets show in the wire form.
func TestDeviceWireLease(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w := newWorker(t, st, "lab-1")
		require.NoError(t, st.UpsertDevices(ctx, w.ID, []schemas.DeviceDeclaration{{Name: "dut", DeviceType: "rpi4"}}))
		wr := newWR(t, st, wrOpts{})
		checked := now()
		rawExec(t, st, `UPDATE devices SET state = 'running', lease_work_request_id = ?, jobs_since_health_check = 3,
			last_health_check_at = ?, dirty = ? WHERE name = 'dut'`, wr.ID, checked, true)
		got := deviceByName(t, st, "dut").Wire()
		require.Equal(t, schemas.DeviceRunning, got.State)
		require.NotNil(t, got.LeaseWorkRequest)
		require.Equal(t, wr.ID, *got.LeaseWorkRequest)
		require.Equal(t, 3, got.JobsSinceHealthCheck)
		require.NotNil(t, got.LastHealthCheckAt)
		require.True(t, checked.Equal(*got.LastHealthCheckAt))
		require.True(t, got.Dirty)
	})
}
