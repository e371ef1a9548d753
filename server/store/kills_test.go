package store

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestAbortOfARunningRequestHoldsItsSlot(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w := newWorker(t, st, "w")
		running := newWR(t, st, wrOpts{})
		assign(t, st, running, w)
		start(t, st, running, w)
		queued := newWR(t, st, wrOpts{})
		assign(t, st, queued, w)

		_, err := st.Abort(ctx, running.ID, 0, time.Now().Add(time.Minute))
		require.NoError(t, err)
		_, err = st.Abort(ctx, queued.ID, 0, time.Now().Add(time.Minute))
		require.NoError(t, err)
		got, err := st.WorkRequest(ctx, running.ID)
		require.NoError(t, err)
		require.True(t, got.KillPending)
		got, err = st.WorkRequest(ctx, queued.ID)
		require.NoError(t, err)
		require.False(t, got.KillPending, "nothing ran, nothing to kill")

		wk, err := st.WorkerByID(ctx, w.ID)
		require.NoError(t, err)
		require.Equal(t, 1, wk.Active, "the aborted run keeps its slot until the kill is confirmed")
		_, err = st.Assign(ctx, newWR(t, st, wrOpts{}).ID, 1, w.ID, 1, assignMsg(running))
		require.ErrorIs(t, err, ErrConflict)

		other := newWorker(t, st, "other")
		require.ErrorIs(t, st.ConfirmKill(ctx, running.ID, other.ID, 1), ErrNotFound)
		require.NoError(t, st.ConfirmKill(ctx, running.ID, w.ID, 1))
		require.NoError(t, st.ConfirmKill(ctx, running.ID, w.ID, 1), "confirming twice is fine")
		wk, err = st.WorkerByID(ctx, w.ID)
		require.NoError(t, err)
		require.Zero(t, wk.Active)
	})
}

func TestTimeOutAndExpireKills(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w := newWorker(t, st, "w")
		wr, err := st.CreateWorkRequest(ctx, NewWorkRequest{TaskName: "noop", TaskType: "Worker", TaskData: `{}`,
			Workspace: "System", Shape: "noop", TimeoutSeconds: 5})
		require.NoError(t, err)
		assign(t, st, wr, w)
		started := start(t, st, wr, w)
		require.True(t, started.DeadlineAt.Valid)
		require.WithinDuration(t, started.StartedAt.Time.Add(5*time.Second), started.DeadlineAt.Time, time.Millisecond)

		due, err := st.TimeOut(ctx, time.Now(), time.Now().Add(time.Minute))
		require.NoError(t, err)
		require.Empty(t, due, "not due yet")
		due, err = st.TimeOut(ctx, time.Now().Add(10*time.Second), time.Now().Add(time.Minute))
		require.NoError(t, err)
		require.Len(t, due, 1)
		got, err := st.WorkRequest(ctx, wr.ID)
		require.NoError(t, err)
		require.Equal(t, "completed", got.Status)
		require.Equal(t, "error", got.Result)
		require.Equal(t, "timeout", got.Reason)
		require.True(t, got.KillPending)

		expired, err := st.ExpireKills(ctx, time.Now())
		require.NoError(t, err)
		require.Empty(t, expired)
		expired, err = st.ExpireKills(ctx, time.Now().Add(2*time.Minute))
		require.NoError(t, err)
		require.Len(t, expired, 1)
		overdue, err := st.OverdueKills(ctx)
		require.NoError(t, err)
		require.Equal(t, []int64{wr.ID}, overdue[w.ID])
		wk, err := st.WorkerByID(ctx, w.ID)
		require.NoError(t, err)
		require.Zero(t, wk.Active, "past the deadline the slot is freed")

		require.NoError(t, st.ConfirmKill(ctx, wr.ID, w.ID, 0))
		overdue, err = st.OverdueKills(ctx)
		require.NoError(t, err)
		require.Empty(t, overdue)
	})
}
