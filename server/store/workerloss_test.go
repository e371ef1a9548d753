package store

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestLeasesExpireIntoRetries(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w, other := newWorker(t, st, "w1"), newWorker(t, st, "w2")
		running, waiting := newWR(t, st, wrOpts{}), newWR(t, st, wrOpts{})
		assign(t, st, running, w)
		start(t, st, running, w)
		assign(t, st, waiting, w)

		// A heartbeat that lists the run renews both leases.
		later := time.Now().Add(time.Minute)
		stale, err := st.RenewLeases(ctx, w.ID, []RunRef{{ID: running.ID, Attempt: 1}}, later)
		require.NoError(t, err)
		require.Empty(t, stale)
		got, err := st.ExpireLeases(ctx, later.Add(-time.Second), 1)
		require.NoError(t, err)
		require.Empty(t, got, "renewed")

		// Silence past the lease: the run is retried as attempt 2, the
		// assignment withdrawn as attempt 2.
		got, err = st.ExpireLeases(ctx, later.Add(time.Second), 1)
		require.NoError(t, err)
		require.Len(t, got, 2)
		require.Equal(t, LeaseRetried, got[0].Outcome)
		require.Equal(t, LeaseWithdrawn, got[1].Outcome)
		r, err := st.WorkRequest(ctx, running.ID)
		require.NoError(t, err)
		require.Equal(t, "pending", r.Status)
		require.False(t, r.WorkerID.Valid)
		require.False(t, r.StartedAt.Valid)
		require.Equal(t, 2, r.Attempt)
		require.Equal(t, 1, r.WorkerLostRetries)
		require.Equal(t, ReasonWorkerLost, r.Reason)
		wt, err := st.WorkRequest(ctx, waiting.ID)
		require.NoError(t, err)
		require.Equal(t, 2, wt.Attempt)
		require.Zero(t, wt.WorkerLostRetries, "a withdrawal is not a retry")

		// The lost worker comes back: its old attempt is refused, and its
		// heartbeat learns that the run is not its own any more.
		_, err = st.Complete(ctx, running.ID, w.ID, 1, Completion{Result: "success"})
		require.Error(t, err)
		stale, err = st.RenewLeases(ctx, w.ID, []RunRef{{ID: running.ID, Attempt: 1}}, time.Now())
		require.NoError(t, err)
		require.Equal(t, []RunRef{{ID: running.ID, Attempt: 1}}, stale)

		// Attempt 2 on another worker, lost too: past the limit of one
		// retry it ends in error.
		r.WorkerID.Valid = false
		assign(t, st, r, other)
		start(t, st, r, other)
		got, err = st.ExpireLeases(ctx, time.Now().Add(time.Minute), 1)
		require.NoError(t, err)
		require.Len(t, got, 1)
		require.Equal(t, LeaseFailed, got[0].Outcome)
		r, err = st.WorkRequest(ctx, running.ID)
		require.NoError(t, err)
		require.Equal(t, "completed", r.Status)
		require.Equal(t, "error", r.Result)
		require.Equal(t, ReasonWorkerLost, r.Reason)
		require.Equal(t, 2, r.Attempt)
	})
}

func TestAbandon(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w, other := newWorker(t, st, "w1"), newWorker(t, st, "w2")
		wr := newWR(t, st, wrOpts{})
		assign(t, st, wr, w)
		start(t, st, wr, w)

		_, err := st.Abandon(ctx, wr.ID, other.ID, 1, 3)
		require.ErrorIs(t, err, ErrNotAssigned)
		_, err = st.Abandon(ctx, wr.ID, w.ID, 2, 3)
		require.ErrorIs(t, err, ErrStale)
		outcome, err := st.Abandon(ctx, wr.ID, w.ID, 1, 3)
		require.NoError(t, err)
		require.Equal(t, LeaseRetried, outcome)
		got, err := st.WorkRequest(ctx, wr.ID)
		require.NoError(t, err)
		require.Equal(t, 2, got.Attempt)
		require.Equal(t, "pending", got.Status)

		// Once ended, abandoning changes nothing.
		got.WorkerID.Valid = false
		assign(t, st, got, w)
		start(t, st, got, w)
		_, err = st.Complete(ctx, wr.ID, w.ID, 2, Completion{Result: "success"})
		require.NoError(t, err)
		outcome, err = st.Abandon(ctx, wr.ID, w.ID, 2, 3)
		require.NoError(t, err)
		require.Empty(t, outcome)
	})
}
