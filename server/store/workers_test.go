package store

import (
	"database/sql"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// newWorker registers and enables a worker.
func newWorker(t *testing.T, st *Store, name string) Worker {
	t.Helper()
	w, err := st.RegisterWorker(t.Context(), name, "external", NewSecret(), "")
	require.NoError(t, err)
	require.NoError(t, st.SetWorkerEnabled(t.Context(), w.ID, true))
	w, err = st.WorkerByID(t.Context(), w.ID)
	require.NoError(t, err)
	return w
}

func TestWorkerEffectiveConcurrency(t *testing.T) {
	override := func(n int64) sql.NullInt64 { return sql.NullInt64{Int64: n, Valid: true} }
	cases := []struct {
		name     string
		w        Worker
		expected int
	}{
		{"reported", Worker{Concurrency: 4}, 4},
		{"override wins", Worker{Concurrency: 4, ConcurrencyOverride: override(2)}, 2},
		{"override can raise", Worker{Concurrency: 1, ConcurrencyOverride: override(8)}, 8},
		{"zero reported is one", Worker{Concurrency: 0}, 1},
		{"zero override is one", Worker{Concurrency: 4, ConcurrencyOverride: override(0)}, 1},
		{"negative is one", Worker{Concurrency: -3}, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.expected, tc.w.EffectiveConcurrency())
		})
	}
}

func TestWorkerMetadataMerge(t *testing.T) {
	cases := []struct {
		name            string
		static, dynamic string
		expected        map[string]any
	}{
		{"both empty", "{}", "{}", map[string]any{}},
		{"invalid JSON is ignored", "not json", "", map[string]any{}},
		{"dynamic only", "{}", `{"a":1,"b":"x"}`, map[string]any{"a": float64(1), "b": "x"}},
		{"static only", `{"a":2}`, "{}", map[string]any{"a": float64(2)}},
		{"static wins", `{"a":"static","tasks_denylist":["noop"]}`, `{"a":"dynamic","b":true}`,
			map[string]any{"a": "static", "b": true, "tasks_denylist": []any{"noop"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := Worker{StaticMetadata: tc.static, DynamicMetadata: tc.dynamic}
			require.Equal(t, tc.expected, w.Metadata())
		})
	}
}

func TestRegisterWorker(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		secret := NewSecret()
		w, err := st.RegisterWorker(ctx, "host", "external", secret, "")
		require.NoError(t, err)
		require.Equal(t, "host", w.Name)
		require.Equal(t, "external", w.WorkerType)
		require.False(t, w.Enabled, "a self-registered worker waits for an admin")
		require.NotNil(t, w.TokenHash)
		require.Equal(t, HashToken(secret), *w.TokenHash)
		require.False(t, w.ConnectedAt.Valid)
		require.Zero(t, w.Active)

		// Two machines with the same host name: suffixes.
		w2, err := st.RegisterWorker(ctx, "host", "external", NewSecret(), "")
		require.NoError(t, err)
		require.Equal(t, "host-2", w2.Name)
		w3, err := st.RegisterWorker(ctx, "host", "signing", NewSecret(), "")
		require.NoError(t, err)
		require.Equal(t, "host-3", w3.Name)
		require.Equal(t, "signing", w3.WorkerType)

		// The same token twice is a conflict, and registers nothing.
		_, err = st.RegisterWorker(ctx, "elsewhere", "external", secret, "")
		require.ErrorIs(t, err, ErrConflict)
		_, err = st.WorkerByName(ctx, "elsewhere")
		require.ErrorIs(t, err, ErrNotFound)

		got, err := st.WorkerForToken(ctx, secret)
		require.NoError(t, err, "a disabled worker still authenticates")
		require.Equal(t, w.ID, got.ID)
		_, err = st.WorkerForToken(ctx, NewSecret())
		require.ErrorIs(t, err, ErrNotFound)

		byName, err := st.WorkerByName(ctx, "host-2")
		require.NoError(t, err)
		require.Equal(t, w2.ID, byName.ID)
		_, err = st.WorkerByName(ctx, "nope")
		require.ErrorIs(t, err, ErrNotFound)
		_, err = st.WorkerByID(ctx, 999999)
		require.ErrorIs(t, err, ErrNotFound)

		all, err := st.Workers(ctx)
		require.NoError(t, err)
		require.Len(t, all, 3)
		require.Equal(t, []int64{w.ID, w2.ID, w3.ID}, []int64{all[0].ID, all[1].ID, all[2].ID})

		require.NoError(t, st.SetWorkerEnabled(ctx, w.ID, true))
		got, err = st.WorkerByID(ctx, w.ID)
		require.NoError(t, err)
		require.True(t, got.Enabled)
		require.NoError(t, st.SetWorkerEnabled(ctx, w.ID, false))
		got, err = st.WorkerByID(ctx, w.ID)
		require.NoError(t, err)
		require.False(t, got.Enabled)
		require.ErrorIs(t, st.SetWorkerEnabled(ctx, 999999, true), ErrNotFound)
	})
}

func TestWorkerActivation(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		pre, err := st.CreateWorker(ctx, "builder-1", "external")
		require.NoError(t, err)
		require.True(t, pre.Enabled, "pre-created workers are enabled")
		require.Nil(t, pre.TokenHash)

		_, err = st.CreateWorker(ctx, "builder-1", "external")
		require.ErrorIs(t, err, ErrConflict, "duplicate pre-created name")

		activation, err := st.CreateActivationToken(ctx, pre.ID)
		require.NoError(t, err)

		// An unknown activation token registers nothing.
		_, err = st.RegisterWorker(ctx, "whatever", "external", NewSecret(), NewSecret())
		require.ErrorIs(t, err, ErrNotFound)

		// A token already used by another worker: conflict, and the
		// activation token is not spent (the transaction rolled back).
		taken := NewSecret()
		other, err := st.RegisterWorker(ctx, "other", "external", taken, "")
		require.NoError(t, err)
		_, err = st.RegisterWorker(ctx, "whatever", "external", taken, activation)
		require.ErrorIs(t, err, ErrConflict)
		got, err := st.WorkerForToken(ctx, taken)
		require.NoError(t, err)
		require.Equal(t, other.ID, got.ID)

		secret := NewSecret()
		w, err := st.RegisterWorker(ctx, "ignored-name", "signing", secret, activation)
		require.NoError(t, err)
		require.Equal(t, pre.ID, w.ID, "activation claims the pre-created record")
		require.Equal(t, "builder-1", w.Name)
		require.Equal(t, "signing", w.WorkerType)
		require.True(t, w.Enabled)
		require.NotNil(t, w.TokenHash)
		require.Equal(t, HashToken(secret), *w.TokenHash)
		_, err = st.WorkerByName(ctx, "ignored-name")
		require.ErrorIs(t, err, ErrNotFound)

		got, err = st.WorkerForToken(ctx, secret)
		require.NoError(t, err)
		require.Equal(t, pre.ID, got.ID)

		// Single use.
		_, err = st.RegisterWorker(ctx, "again", "external", NewSecret(), activation)
		require.ErrorIs(t, err, ErrNotFound)
		var n int
		require.NoError(t, st.r.GetContext(ctx, &n, st.rebind(`SELECT COUNT(*) FROM tokens WHERE kind = ?`), TokenActivation))
		require.Zero(t, n, "the activation token is deleted once used")

		// An activation token cannot be used as a worker token.
		_, err = st.WorkerForToken(ctx, activation)
		require.ErrorIs(t, err, ErrNotFound)
	})
}

func TestWorkerMetadataAndConcurrency(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w := newWorker(t, st, "w")
		require.Equal(t, 1, w.Concurrency)
		require.False(t, w.DynamicMetadataUpdatedAt.Valid)
		require.Equal(t, map[string]any{}, w.Metadata())

		require.NoError(t, st.SetDynamicMetadata(ctx, w.ID, map[string]any{
			"system:worker_type": "external", "system:cpu_count": 8, "noop:version": 1,
		}, 4))
		w, err := st.WorkerByID(ctx, w.ID)
		require.NoError(t, err)
		require.Equal(t, 4, w.Concurrency)
		require.Equal(t, 4, w.EffectiveConcurrency())
		require.True(t, w.DynamicMetadataUpdatedAt.Valid)
		require.True(t, w.ConnectedAt.Valid, "reporting metadata connects the worker")
		require.True(t, w.LastSeenAt.Valid)
		connected := w.ConnectedAt.Time

		require.NoError(t, st.SetStaticMetadata(ctx, w.ID, map[string]any{
			"system:cpu_count": 2, "tasks_allowlist": []string{"noop"},
		}))
		w, err = st.WorkerByID(ctx, w.ID)
		require.NoError(t, err)
		require.Equal(t, map[string]any{
			"system:worker_type": "external",
			"system:cpu_count":   float64(2), // static wins over dynamic
			"noop:version":       float64(1),
			"tasks_allowlist":    []any{"noop"},
		}, w.Metadata())

		// Reporting again keeps the first connection time and clamps the
		// concurrency to at least 1.
		require.NoError(t, st.SetDynamicMetadata(ctx, w.ID, map[string]any{"system:cpu_count": 16}, 0))
		w, err = st.WorkerByID(ctx, w.ID)
		require.NoError(t, err)
		require.Equal(t, 1, w.Concurrency)
		require.True(t, w.ConnectedAt.Time.Equal(connected))
		require.Equal(t, float64(2), w.Metadata()["system:cpu_count"])
		require.NotContains(t, w.Metadata(), "noop:version", "dynamic metadata is replaced, not merged")

		require.NoError(t, st.SetConcurrencyOverride(ctx, w.ID, 3))
		w, err = st.WorkerByID(ctx, w.ID)
		require.NoError(t, err)
		require.True(t, w.ConcurrencyOverride.Valid)
		require.Equal(t, 3, w.EffectiveConcurrency())
		require.NoError(t, st.SetConcurrencyOverride(ctx, w.ID, 0))
		w, err = st.WorkerByID(ctx, w.ID)
		require.NoError(t, err)
		require.False(t, w.ConcurrencyOverride.Valid, "n <= 0 clears the override")
		require.Equal(t, 1, w.EffectiveConcurrency())

		require.ErrorIs(t, st.SetDynamicMetadata(ctx, 999999, nil, 1), ErrNotFound)
		require.ErrorIs(t, st.SetStaticMetadata(ctx, 999999, nil), ErrNotFound)
		require.ErrorIs(t, st.SetConcurrencyOverride(ctx, 999999, 2), ErrNotFound)
		require.Error(t, st.SetStaticMetadata(ctx, w.ID, map[string]any{"bad": make(chan int)}), "unmarshalable metadata")
	})
}

func TestTouchWorker(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w := newWorker(t, st, "w")
		const timeout = time.Minute
		t1 := time.Now().UTC().Truncate(time.Second)

		touch := func(at time.Time) bool {
			t.Helper()
			reconnected, err := st.TouchWorker(ctx, w.ID, at, at.Add(-timeout))
			require.NoError(t, err)
			return reconnected
		}
		get := func() Worker {
			t.Helper()
			got, err := st.WorkerByID(ctx, w.ID)
			require.NoError(t, err)
			return got
		}

		require.True(t, touch(t1), "first heartbeat connects")
		got := get()
		require.True(t, got.ConnectedAt.Valid)
		require.True(t, got.ConnectedAt.Time.Equal(t1), "connected_at %v, want %v", got.ConnectedAt.Time, t1)
		require.True(t, got.LastSeenAt.Time.Equal(t1))

		t2 := t1.Add(10 * time.Second)
		require.False(t, touch(t2), "a heartbeat within the timeout is not a reconnection")
		got = get()
		require.True(t, got.ConnectedAt.Time.Equal(t1), "connected_at kept")
		require.True(t, got.LastSeenAt.Time.Equal(t2), "last_seen_at %v, want %v", got.LastSeenAt.Time, t2)

		t3 := t2.Add(timeout + time.Second)
		require.True(t, touch(t3), "a heartbeat after the timeout is a reconnection")
		got = get()
		require.True(t, got.ConnectedAt.Time.Equal(t3))
		require.True(t, got.LastSeenAt.Time.Equal(t3))

		// Exactly at the boundary (last seen == staleBefore) is still connected.
		t4 := t3.Add(timeout)
		require.False(t, touch(t4))

		_, err := st.TouchWorker(ctx, 999999, t1, t1)
		require.ErrorIs(t, err, ErrNotFound)

		require.NoError(t, st.DisconnectWorker(ctx, w.ID))
		require.False(t, get().ConnectedAt.Valid)
		require.ErrorIs(t, st.DisconnectWorker(ctx, 999999), ErrNotFound)
	})
}

// BUG: TouchWorker decides "reconnected" from last_seen_at only. After
// DisconnectWorker (connected_at = NULL, "it said goodbye") a worker that comes
// back within the heartbeat timeout is reported as not reconnected and
// connected_at stays NULL, so the scheduler (which requires ConnectedAt.Valid)
// treats it as offline until the timeout has passed, and no kick is sent.
// Fix: in TouchWorker also select connected_at and set
// reconnected = !connectedAt.Valid || !prev.Valid || prev.Time.Before(staleBefore).
func TestBugTouchWorkerAfterDisconnect(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w := newWorker(t, st, "w")
		t1 := time.Now().UTC().Truncate(time.Second)
		_, err := st.TouchWorker(ctx, w.ID, t1, t1.Add(-time.Minute))
		require.NoError(t, err)
		require.NoError(t, st.DisconnectWorker(ctx, w.ID))

		t2 := t1.Add(5 * time.Second)
		reconnected, err := st.TouchWorker(ctx, w.ID, t2, t2.Add(-time.Minute))
		require.NoError(t, err)
		got, err := st.WorkerByID(ctx, w.ID)
		require.NoError(t, err)
		require.True(t, reconnected, "a heartbeat after a goodbye is a reconnection")
		require.True(t, got.ConnectedAt.Valid, "connected_at is set again")
	})
}

func TestWorkerActiveCount(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w := newWorker(t, st, "w")
		other := newWorker(t, st, "other")
		a := newWR(t, st, wrOpts{})
		b := newWR(t, st, wrOpts{})
		c := newWR(t, st, wrOpts{})
		d := newWR(t, st, wrOpts{})
		assign(t, st, a, w)
		assign(t, st, b, w)
		assign(t, st, c, w)
		assign(t, st, d, other)
		start(t, st, b, w)
		_, err := st.Complete(ctx, c.ID, w.ID, c.Attempt, Completion{Result: "success", Output: ""})
		require.NoError(t, err)

		got, err := st.WorkerByID(ctx, w.ID)
		require.NoError(t, err)
		require.Equal(t, 2, got.Active, "assigned + running, not completed")

		_, err = st.Abort(ctx, a.ID, 0, time.Now().Add(time.Minute))
		require.NoError(t, err)
		all, err := st.Workers(ctx)
		require.NoError(t, err)
		require.Equal(t, 1, all[0].Active)
		require.Equal(t, 1, all[1].Active)
		byToken, err := st.WorkerByName(ctx, "w")
		require.NoError(t, err)
		require.Equal(t, 1, byToken.Active)
	})
}

// BUG (PostgreSQL): RegisterWorker checks that a name is free and then
// inserts, so two machines with the same host name registering at the same
// moment both pick the name; the loser's INSERT hits the unique index on
// workers.name and is reported as "worker token already registered"
// (ErrConflict) instead of getting the next suffix. SQLite passes because its
// writes are serialised. Fix: insert with
// `INSERT ... ON CONFLICT (name) DO NOTHING RETURNING id` (both dialects) and
// try the next suffix when no row comes back, so that only a token clash is a
// unique violation.
func TestBugRegisterWorkerConcurrentSameName(t *testing.T) {
	const n, rounds = 12, 5
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		for round := range rounds {
			host := fmt.Sprintf("host%d", round)
			gate := make(chan struct{})
			errs := make(chan error, n)
			names := make(chan string, n)
			var wg sync.WaitGroup
			for range n {
				wg.Go(func() {
					<-gate
					w, err := st.RegisterWorker(ctx, host, "external", NewSecret(), "")
					if err != nil {
						errs <- err
						return
					}
					names <- w.Name
				})
			}
			close(gate)
			wg.Wait()
			close(errs)
			close(names)
			for err := range errs {
				t.Errorf("round %d: concurrent registration with a fresh token failed: %v", round, err)
			}
			seen := map[string]bool{}
			for name := range names {
				require.False(t, seen[name], "name %s given twice", name)
				seen[name] = true
			}
		}
	})
}
