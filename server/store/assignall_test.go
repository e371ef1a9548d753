package store

import (
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestAssignAll(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w := newWorker(t, st, "w")
		full := newWorker(t, st, "full")
		other := newWorker(t, st, "other")
		var wrs []WorkRequest
		for range 6 {
			wrs = append(wrs, newWR(t, st, wrOpts{}))
		}
		assign(t, st, wrs[0], full) // full's only slot
		taken := wrs[1]
		assign(t, st, taken, other)

		as := []Assignment{
			{ID: wrs[2].ID, Attempt: wrs[2].Attempt, WorkerID: w.ID, Limit: 2, Msg: assignMsg(wrs[2])},
			{ID: wrs[3].ID, Attempt: wrs[3].Attempt, WorkerID: full.ID, Limit: 1, Msg: assignMsg(wrs[3])},      // no slot
			{ID: taken.ID, Attempt: taken.Attempt, WorkerID: w.ID, Limit: 2, Msg: assignMsg(taken)},            // no longer waits
			{ID: wrs[4].ID, Attempt: wrs[4].Attempt + 1, WorkerID: other.ID, Limit: 5, Msg: assignMsg(wrs[4])}, // stale attempt
			{ID: wrs[5].ID, Attempt: wrs[5].Attempt, WorkerID: w.ID, Limit: 2, Msg: assignMsg(wrs[5])},         // w's second slot
			{ID: wrs[4].ID, Attempt: wrs[4].Attempt, WorkerID: w.ID, Limit: 2, Msg: assignMsg(wrs[4])},         // w is full now
			{ID: wrs[2].ID, Attempt: wrs[2].Attempt, WorkerID: other.ID, Limit: 5, Msg: assignMsg(wrs[2])},     // twice in one call
		}
		before := len(outbox(t, st))
		msgs, refused, err := st.AssignAll(ctx, as)
		require.NoError(t, err)
		require.Equal(t, []int{1, 2, 3, 5, 6}, refused)
		require.Len(t, msgs, 2)
		box := outbox(t, st)
		require.Len(t, box, before+2)
		for i, want := range []WorkRequest{wrs[2], wrs[5]} {
			require.Equal(t, assignMsg(want).MsgID, msgs[i].MsgID)
			require.Equal(t, box[before+i].ID, msgs[i].ID, "the message's outbox id")
			require.False(t, msgs[i].CreatedAt.IsZero())
			got, err := st.WorkRequest(ctx, want.ID)
			require.NoError(t, err)
			require.Equal(t, w.ID, got.WorkerID.Int64)
			require.True(t, got.AssignedAt.Valid)
			require.True(t, got.LeaseRenewedAt.Valid)
		}
		for _, id := range []int64{wrs[3].ID, wrs[4].ID} {
			got, err := st.WorkRequest(ctx, id)
			require.NoError(t, err)
			require.False(t, got.WorkerID.Valid, "refused assignments change nothing")
		}
		got, err := st.WorkRequest(ctx, taken.ID)
		require.NoError(t, err)
		require.Equal(t, other.ID, got.WorkerID.Int64)

		msgs, refused, err = st.AssignAll(ctx, nil)
		require.NoError(t, err)
		require.Empty(t, msgs)
		require.Empty(t, refused)
	})
}

// More assignments than one batch, racing Assign calls for the same worker:
// the worker never holds more than its limit and every slot is used.
func TestAssignAllBatchesAndLimit(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		const limit = assignBatch + 50
		w := newWorker(t, st, "big")
		var as []Assignment
		var singles []WorkRequest
		for i := range limit + 30 {
			wr := newWR(t, st, wrOpts{shape: "batch"})
			if i%10 == 0 {
				singles = append(singles, wr)
				continue
			}
			as = append(as, Assignment{ID: wr.ID, Attempt: wr.Attempt, WorkerID: w.ID, Limit: limit,
				Msg: Message{Subject: "s", MsgID: fmt.Sprintf("m-%d", wr.ID), Payload: "{}"}})
		}
		var wg sync.WaitGroup
		var single int
		wg.Go(func() {
			for _, wr := range singles {
				if _, err := st.Assign(ctx, wr.ID, wr.Attempt, w.ID, limit, assignMsg(wr)); err == nil {
					single++
				}
			}
		})
		msgs, refused, err := st.AssignAll(ctx, as)
		wg.Wait()
		require.NoError(t, err)
		require.Equal(t, len(as), len(msgs)+len(refused))
		require.Equal(t, limit, len(msgs)+single, "every slot used once")
		active, err := st.ActiveForWorker(ctx, w.ID)
		require.NoError(t, err)
		require.Len(t, active, limit)
		ids := map[int64]bool{}
		for _, m := range msgs {
			require.NotZero(t, m.ID)
			require.False(t, ids[m.ID])
			ids[m.ID] = true
		}
	})
}

// Regression (e2e TestWorkerConfinedOnEmbeddedNATS, once in CI): a pass
// that read a worker as enabled assigned to it after it was disabled, when
// disabling had already withdrawn its assignments; the request then waited
// on a worker that refused to start it.
func TestNoAssignmentToADisabledWorker(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		off := newWorker(t, st, "off")
		on := newWorker(t, st, "on")
		require.NoError(t, st.SetWorkerEnabled(ctx, off.ID, false))
		a, b, c := newWR(t, st, wrOpts{}), newWR(t, st, wrOpts{}), newWR(t, st, wrOpts{})

		_, err := st.Assign(ctx, a.ID, a.Attempt, off.ID, 5, assignMsg(a))
		require.ErrorIs(t, err, ErrConflict)
		msgs, refused, err := st.AssignAll(ctx, []Assignment{
			{ID: b.ID, Attempt: b.Attempt, WorkerID: off.ID, Limit: 5, Msg: assignMsg(b)},
			{ID: c.ID, Attempt: c.Attempt, WorkerID: on.ID, Limit: 5, Msg: assignMsg(c)},
		})
		require.NoError(t, err)
		require.Equal(t, []int{0}, refused)
		require.Len(t, msgs, 1)
		for _, wr := range []WorkRequest{a, b} {
			got, err := st.WorkRequest(ctx, wr.ID)
			require.NoError(t, err)
			require.False(t, got.WorkerID.Valid, "work request %d assigned to a disabled worker", wr.ID)
		}
	})
}
