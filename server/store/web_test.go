package store

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func summaryIDs(rows []WorkRequestSummary) []int64 {
	out := make([]int64, 0, len(rows))
	for _, r := range rows {
		out = append(out, r.ID)
	}
	return out
}

func TestDashboardWorkRequests(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		alice, err := st.CreateUser(ctx, "alice", "", false)
		require.NoError(t, err)
		bob, err := st.CreateUser(ctx, "bob", "", false)
		require.NoError(t, err)
		w := newWorker(t, st, "builder")

		// 1 noop alice, 2 sbuild bob, 3 noop bob (completed/failure on
		// builder), 4 noop alice (waiting, with a reason), 5 lintian nobody.
		one := newWR(t, st, wrOpts{createdBy: alice.ID})
		two := newWR(t, st, wrOpts{task: "sbuild", createdBy: bob.ID})
		three := newWR(t, st, wrOpts{createdBy: bob.ID})
		four := newWR(t, st, wrOpts{createdBy: alice.ID, shape: "noop-big"})
		five := newWR(t, st, wrOpts{task: "lintian"})
		assign(t, st, three, w)
		start(t, st, three, w)
		_, err = st.Complete(ctx, three.ID, w.ID, three.Attempt, Completion{Result: "failure", Output: "big output"})
		require.NoError(t, err)
		require.NoError(t, st.SetWaitingReasons(ctx, map[string]string{"noop-big": "no worker has 64 GiB"}))

		list := func(f DashboardFilter) []int64 {
			t.Helper()
			if f.Limit == 0 {
				f.Limit = 10
			}
			rows, err := st.DashboardWorkRequests(ctx, f)
			require.NoError(t, err)
			return summaryIDs(rows)
		}
		cases := []struct {
			name string
			f    DashboardFilter
			want []int64
		}{
			{"all, newest first", DashboardFilter{}, []int64{five.ID, four.ID, three.ID, two.ID, one.ID}},
			{"status", DashboardFilter{Status: "completed"}, []int64{three.ID}},
			{"results", DashboardFilter{Results: []string{"failure", "error"}}, []int64{three.ID}},
			{"task", DashboardFilter{TaskName: "noop"}, []int64{four.ID, three.ID, one.ID}},
			{"worker", DashboardFilter{WorkerID: w.ID}, []int64{three.ID}},
			{"creator", DashboardFilter{CreatedBy: alice.ID}, []int64{four.ID, one.ID}},
			{"workspace", DashboardFilter{Workspace: "System"}, []int64{five.ID, four.ID, three.ID, two.ID, one.ID}},
			{"other workspace", DashboardFilter{Workspace: "Elsewhere"}, []int64{}},
			{"two filters", DashboardFilter{TaskName: "noop", CreatedBy: bob.ID}, []int64{three.ID}},
			{"page", DashboardFilter{Limit: 2}, []int64{five.ID, four.ID}},
			{"next page", DashboardFilter{Limit: 2, BeforeID: four.ID}, []int64{three.ID, two.ID}},
			{"previous page, oldest first", DashboardFilter{Limit: 2, AfterID: two.ID}, []int64{three.ID, four.ID}},
			{"filtered next page", DashboardFilter{TaskName: "noop", BeforeID: four.ID}, []int64{three.ID, one.ID}},
		}
		for _, tc := range cases {
			require.Equal(t, tc.want, list(tc.f), tc.name)
		}

		rows, err := st.DashboardWorkRequests(ctx, DashboardFilter{Limit: 10})
		require.NoError(t, err)
		byID := map[int64]WorkRequestSummary{}
		for _, r := range rows {
			byID[r.ID] = r
		}
		require.Equal(t, "builder", byID[three.ID].WorkerName.String)
		require.Equal(t, "bob", byID[three.ID].CreatedByName.String)
		require.Equal(t, "failure", byID[three.ID].Result)
		require.True(t, byID[three.ID].CompletedAt.Valid)
		require.False(t, byID[five.ID].CreatedByName.Valid)
		require.False(t, byID[five.ID].WorkerName.Valid)
		require.Equal(t, "no worker has 64 GiB", byID[four.ID].WaitingReason.String)
		require.False(t, byID[one.ID].WaitingReason.Valid)

		for _, tc := range []struct {
			f     DashboardFilter
			upTo  int
			n     int64
			more  bool
			label string
		}{
			{DashboardFilter{}, 100, 5, false, "all"},
			{DashboardFilter{}, 3, 3, true, "capped"},
			{DashboardFilter{}, 5, 5, false, "exactly the cap"},
			{DashboardFilter{TaskName: "noop", BeforeID: 1}, 100, 3, false, "page bounds ignored"},
			{DashboardFilter{Status: "running"}, 100, 0, false, "none"},
		} {
			n, more, err := st.CountDashboardWorkRequests(ctx, tc.f, tc.upTo)
			require.NoError(t, err)
			require.Equal(t, tc.n, n, tc.label)
			require.Equal(t, tc.more, more, tc.label)
		}
	})
}

func TestDashboardFiltersUseTheirIndexes(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		for _, tc := range []struct {
			cond, index string
		}{
			{"task_name = 'noop'", "work_requests_task"},
			{"created_by = 1", "work_requests_created_by"},
			{"status = 'pending'", "work_requests_status"},
			{"worker_id = 1", "work_requests_worker"},
		} {
			plan := queryPlan(t, st, `SELECT id FROM work_requests WHERE `+tc.cond+` ORDER BY id DESC LIMIT 50`)
			require.Regexp(t, tc.index+`([^_a-z]|$)`, plan, "%s: plan:\n%s", tc.cond, plan)
		}
	})
}

func TestStatusCountsAndWaitingReasons(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		counts, err := st.StatusCounts(ctx)
		require.NoError(t, err)
		require.Empty(t, counts)
		w := newWorker(t, st, "w")
		newWR(t, st, wrOpts{})
		newWR(t, st, wrOpts{shape: "other"})
		done := newWR(t, st, wrOpts{})
		assign(t, st, done, w)
		_, err = st.Complete(ctx, done.ID, w.ID, 0, Completion{Result: "success"})
		require.NoError(t, err)
		counts, err = st.StatusCounts(ctx)
		require.NoError(t, err)
		require.Equal(t, []StatusCount{{Status: "completed", Result: "success", N: 1}, {Status: "pending", N: 2}}, counts)

		reasons, err := st.WaitingReasons(ctx)
		require.NoError(t, err)
		require.Empty(t, reasons)
		require.NoError(t, st.SetWaitingReasons(ctx, map[string]string{"noop": "all busy", "other": "no enabled worker"}))
		reasons, err = st.WaitingReasons(ctx)
		require.NoError(t, err)
		require.Equal(t, map[string]string{"noop": "all busy", "other": "no enabled worker"}, reasons)
	})
}

func TestWebSessions(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		u, err := st.CreateUser(ctx, "carol", "", true)
		require.NoError(t, err)
		tok, err := st.CreateUserToken(ctx, u.ID, "browser")
		require.NoError(t, err)

		secret, got, err := st.CreateWebSession(ctx, tok, time.Now().Add(time.Hour))
		require.NoError(t, err)
		require.Equal(t, u.ID, got.ID)
		require.Len(t, secret, 64)
		require.NotEqual(t, tok, secret)
		var stored int
		require.NoError(t, st.r.GetContext(ctx, &stored, st.rebind(`SELECT COUNT(*) FROM web_sessions WHERE hash = ?`), secret))
		require.Zero(t, stored, "the secret itself is never stored")

		who, until, err := st.WebSessionUser(ctx, secret)
		require.NoError(t, err)
		require.Equal(t, "carol", who.Username)
		require.True(t, who.IsAdmin)
		require.WithinDuration(t, time.Now().Add(time.Hour), until, time.Minute)

		_, _, err = st.WebSessionUser(ctx, NewSecret())
		require.ErrorIs(t, err, ErrNotFound, "an unknown session")
		_, _, err = st.CreateWebSession(ctx, NewSecret(), time.Now().Add(time.Hour))
		require.ErrorIs(t, err, ErrSessionUnusable, "an unknown token")

		// An ended session is not found, and goes at the next login.
		old, _, err := st.CreateWebSession(ctx, tok, time.Now().Add(-time.Second))
		require.NoError(t, err)
		_, _, err = st.WebSessionUser(ctx, old)
		require.ErrorIs(t, err, ErrNotFound, "an expired session")
		_, _, err = st.CreateWebSession(ctx, tok, time.Now().Add(time.Hour))
		require.NoError(t, err)
		require.NoError(t, st.r.GetContext(ctx, &stored, st.rebind(`SELECT COUNT(*) FROM web_sessions WHERE hash = ?`), HashToken(old)))
		require.Zero(t, stored, "expired sessions are deleted at a login")

		// Logging out.
		require.NoError(t, st.DeleteWebSession(ctx, secret))
		_, _, err = st.WebSessionUser(ctx, secret)
		require.ErrorIs(t, err, ErrNotFound)
		require.NoError(t, st.DeleteWebSession(ctx, secret), "twice")

		// A session ends with its token: disabled, or expired.
		live, _, err := st.CreateWebSession(ctx, tok, time.Now().Add(time.Hour))
		require.NoError(t, err)
		rawExec(t, st, `UPDATE tokens SET enabled = ? WHERE hash = ?`, false, HashToken(tok))
		_, _, err = st.WebSessionUser(ctx, live)
		require.ErrorIs(t, err, ErrNotFound, "the token was disabled")
		_, _, err = st.CreateWebSession(ctx, tok, time.Now().Add(time.Hour))
		require.ErrorIs(t, err, ErrSessionUnusable, "a disabled token")

		expiring, err := st.CreateUserTokenExpiring(ctx, u.ID, "short", time.Now().Add(time.Hour))
		require.NoError(t, err)
		live, _, err = st.CreateWebSession(ctx, expiring, time.Now().Add(2*time.Hour))
		require.NoError(t, err)
		_, _, err = st.WebSessionUser(ctx, live)
		require.NoError(t, err)
		rawExec(t, st, `UPDATE tokens SET expires_at = ? WHERE hash = ?`, time.Now().Add(-time.Minute).UTC(), HashToken(expiring))
		_, _, err = st.WebSessionUser(ctx, live)
		require.ErrorIs(t, err, ErrNotFound, "the token expired")
		_, _, err = st.CreateWebSession(ctx, expiring, time.Now().Add(time.Hour))
		require.True(t, errors.Is(err, ErrTokenExpired), "an expired token: %v", err)
	})
}
