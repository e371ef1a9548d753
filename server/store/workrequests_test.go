package store

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type wrOpts struct {
	task      string
	shape     string
	priority  int
	createdBy int64
}

// newWR creates a pending noop work request.
func newWR(t *testing.T, st *Store, o wrOpts) WorkRequest {
	t.Helper()
	if o.task == "" {
		o.task = "noop"
	}
	if o.shape == "" {
		o.shape = o.task
	}
	wr, err := st.CreateWorkRequest(t.Context(), NewWorkRequest{
		TaskName: o.task, TaskType: "Worker", TaskData: `{"result":true}`, Workspace: "System",
		PriorityBase: o.priority, CreatedBy: o.createdBy, Shape: o.shape,
	})
	require.NoError(t, err)
	return wr
}

func assignMsg(wr WorkRequest) Message {
	return Message{Subject: "kiln.worker.assign", MsgID: fmt.Sprintf("assign-%d-%d", wr.ID, wr.Attempt), Payload: `{"id":1}`}
}

// assign gives wr to w with room to spare.
func assign(t *testing.T, st *Store, wr WorkRequest, w Worker) Message {
	t.Helper()
	m, err := st.Assign(t.Context(), wr.ID, wr.Attempt, w.ID, 1000, assignMsg(wr))
	require.NoError(t, err)
	return m
}

func start(t *testing.T, st *Store, wr WorkRequest, w Worker) WorkRequest {
	t.Helper()
	got, err := st.Start(t.Context(), wr.ID, w.ID, wr.Attempt)
	require.NoError(t, err)
	return got
}

// Request states the tests drive a request into.
const (
	statePending   = "pending"
	stateAssigned  = "assigned"
	stateRunning   = "running"
	stateBlocked   = "blocked"
	stateSuccess   = "completed/success"
	stateFailure   = "completed/failure"
	stateError     = "completed/error"
	stateSkipped   = "completed/skipped"
	stateAborted   = "aborted"
	stateAbortedRn = "aborted while running"
)

// inState returns a request (and its worker) in the named state.
func inState(t *testing.T, st *Store, state string) (WorkRequest, Worker) {
	t.Helper()
	ctx := t.Context()
	w := newWorker(t, st, "w")
	wr := newWR(t, st, wrOpts{})
	complete := func(result string) {
		_, err := st.Complete(ctx, wr.ID, w.ID, wr.Attempt, Completion{Result: result, Output: "out"})
		require.NoError(t, err)
	}
	switch state {
	case statePending:
	case stateAssigned:
		assign(t, st, wr, w)
	case stateRunning:
		assign(t, st, wr, w)
		start(t, st, wr, w)
	case stateBlocked:
		rawExec(t, st, `UPDATE work_requests SET status = 'blocked' WHERE id = ?`, wr.ID)
	case stateSuccess, stateFailure, stateError, stateSkipped:
		assign(t, st, wr, w)
		start(t, st, wr, w)
		complete(state[len("completed/"):])
	case stateAborted:
		_, err := st.Abort(ctx, wr.ID, 0, time.Now().Add(time.Minute))
		require.NoError(t, err)
	case stateAbortedRn:
		assign(t, st, wr, w)
		start(t, st, wr, w)
		_, err := st.Abort(ctx, wr.ID, 0, time.Now().Add(time.Minute))
		require.NoError(t, err)
	default:
		t.Fatalf("unknown state %q", state)
	}
	wr, err := st.WorkRequest(ctx, wr.ID)
	require.NoError(t, err)
	return wr, w
}

func ids(wrs []WorkRequest) []int64 {
	out := make([]int64, len(wrs))
	for i, wr := range wrs {
		out[i] = wr.ID
	}
	return out
}

func TestCreateAndGetWorkRequest(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		u, err := st.CreateUser(ctx, "alice", "", false)
		require.NoError(t, err)
		before := time.Now().Add(-time.Minute)
		wr, err := st.CreateWorkRequest(ctx, NewWorkRequest{
			TaskName: "noop", TaskType: "Worker", TaskData: `{"result":false}`, Workspace: "System",
			PriorityBase: 7, CreatedBy: u.ID, Shape: "noop|arch=amd64",
		})
		require.NoError(t, err)
		require.NotZero(t, wr.ID)
		require.Equal(t, "noop", wr.TaskName)
		require.Equal(t, "Worker", wr.TaskType)
		require.Equal(t, `{"result":false}`, wr.TaskData)
		require.Equal(t, "System", wr.Workspace)
		require.Equal(t, "noop|arch=amd64", wr.Shape)
		require.Equal(t, "pending", wr.Status)
		require.Equal(t, "", wr.Result)
		require.Equal(t, 7, wr.PriorityBase)
		require.Equal(t, 0, wr.PriorityAdjustment)
		require.Equal(t, 7, wr.Priority)
		require.Equal(t, 1, wr.Attempt)
		require.Equal(t, u.ID, wr.CreatedBy.Int64)
		require.False(t, wr.WorkerID.Valid)
		require.False(t, wr.AssignedAt.Valid)
		require.False(t, wr.StartedAt.Valid)
		require.False(t, wr.CompletedAt.Valid)
		require.False(t, wr.Supersedes.Valid)
		require.False(t, wr.SupersededBy.Valid)
		require.False(t, wr.AbortedBy.Valid)
		require.False(t, wr.DynamicTaskData.Valid)
		require.False(t, wr.WaitingReason.Valid)
		require.True(t, wr.CreatedAt.After(before))

		got, err := st.WorkRequest(ctx, wr.ID)
		require.NoError(t, err)
		require.Equal(t, wr.ID, got.ID)
		require.True(t, got.CreatedAt.Equal(wr.CreatedAt))

		anon := newWR(t, st, wrOpts{})
		require.False(t, anon.CreatedBy.Valid, "CreatedBy 0 is stored as NULL")

		_, err = st.WorkRequest(ctx, 999999)
		require.ErrorIs(t, err, ErrNotFound)
	})
}

func TestListWorkRequests(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w := newWorker(t, st, "w")
		var all []WorkRequest
		for i := range 6 {
			task := "noop"
			if i%2 == 1 {
				task = "sbuild"
			}
			all = append(all, newWR(t, st, wrOpts{task: task}))
		}
		// all[0..5]: noop, sbuild, noop, sbuild, noop, sbuild
		assign(t, st, all[1], w)
		assign(t, st, all[2], w)
		start(t, st, all[2], w)
		_, err := st.Abort(ctx, all[3].ID, 0, time.Now().Add(time.Minute))
		require.NoError(t, err)

		rev := func(is ...int) []int64 {
			out := make([]int64, len(is))
			for i, n := range is {
				out[i] = all[n].ID
			}
			return out
		}
		cases := []struct {
			name     string
			f        ListFilter
			expected []int64
		}{
			{"newest first", ListFilter{Limit: 100}, rev(5, 4, 3, 2, 1, 0)},
			{"limit", ListFilter{Limit: 2}, rev(5, 4)},
			{"before cursor", ListFilter{Limit: 2, BeforeID: all[4].ID}, rev(3, 2)},
			{"before cursor last page", ListFilter{Limit: 10, BeforeID: all[1].ID}, rev(0)},
			{"before the first", ListFilter{Limit: 10, BeforeID: all[0].ID}, nil},
			{"after cursor is oldest first", ListFilter{Limit: 2, AfterID: all[1].ID}, rev(2, 3)},
			{"after the last", ListFilter{Limit: 10, AfterID: all[5].ID}, nil},
			{"between", ListFilter{Limit: 10, AfterID: all[1].ID, BeforeID: all[4].ID}, rev(2, 3)},
			{"status pending", ListFilter{Limit: 10, Status: "pending"}, rev(5, 4, 1, 0)},
			{"status running", ListFilter{Limit: 10, Status: "running"}, rev(2)},
			{"status aborted", ListFilter{Limit: 10, Status: "aborted"}, rev(3)},
			{"task name", ListFilter{Limit: 10, TaskName: "sbuild"}, rev(5, 3, 1)},
			{"worker", ListFilter{Limit: 10, WorkerID: w.ID}, rev(2, 1)},
			{"status and task", ListFilter{Limit: 10, Status: "pending", TaskName: "noop"}, rev(4, 0)},
			{"no match", ListFilter{Limit: 10, TaskName: "nothing"}, nil},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				got, err := st.ListWorkRequests(ctx, tc.f)
				require.NoError(t, err)
				if tc.expected == nil {
					require.Empty(t, got)
					return
				}
				require.Equal(t, tc.expected, ids(got))
			})
		}

		counts := map[string]int64{"": 6, "pending": 4, "running": 1, "aborted": 1, "completed": 0}
		for status, want := range counts {
			n, err := st.CountWorkRequests(ctx, status)
			require.NoError(t, err)
			require.Equal(t, want, n, "count %q", status)
		}
	})
}

func TestSetPriorityAdjustment(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		wr := newWR(t, st, wrOpts{priority: 5})
		for _, adj := range []int{10, -20, 0} {
			require.NoError(t, st.SetPriorityAdjustment(ctx, wr.ID, adj))
			got, err := st.WorkRequest(ctx, wr.ID)
			require.NoError(t, err)
			require.Equal(t, 5, got.PriorityBase)
			require.Equal(t, adj, got.PriorityAdjustment)
			require.Equal(t, 5+adj, got.Priority)
		}
		require.ErrorIs(t, st.SetPriorityAdjustment(ctx, 999999, 1), ErrNotFound)
	})
}

func TestAbort(t *testing.T) {
	cases := []struct {
		state      string
		ok         bool
		wantStatus string // of the returned before-state
		hasWorker  bool
	}{
		{statePending, true, "pending", false},
		{stateAssigned, true, "pending", true},
		{stateRunning, true, "running", true},
		{stateBlocked, true, "blocked", false},
		{stateSuccess, false, "", false},
		{stateFailure, false, "", false},
		{stateAborted, false, "", false},
	}
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		admin, err := st.CreateUser(ctx, "admin", "", true)
		require.NoError(t, err)
		for _, tc := range cases {
			t.Run(tc.state, func(t *testing.T) {
				wr, w := inState(t, st, tc.state)
				before, err := st.Abort(ctx, wr.ID, admin.ID, time.Now().Add(time.Minute))
				if !tc.ok {
					require.ErrorIs(t, err, ErrConflict)
					after, err := st.WorkRequest(ctx, wr.ID)
					require.NoError(t, err)
					require.Equal(t, wr.Status, after.Status, "a refused abort changes nothing")
					require.Equal(t, wr.Result, after.Result)
					return
				}
				require.NoError(t, err)
				require.Equal(t, wr.ID, before.ID)
				require.Equal(t, tc.wantStatus, before.Status, "Abort returns the state before")
				require.Equal(t, tc.hasWorker, before.WorkerID.Valid)
				if tc.hasWorker {
					require.Equal(t, w.ID, before.WorkerID.Int64, "so the caller knows whom to tell")
				}
				after, err := st.WorkRequest(ctx, wr.ID)
				require.NoError(t, err)
				require.Equal(t, "aborted", after.Status)
				require.Equal(t, admin.ID, after.AbortedBy.Int64)
				require.True(t, after.CompletedAt.Valid)
				active, err := st.ActiveForWorker(ctx, w.ID)
				require.NoError(t, err)
				require.Empty(t, active, "an aborted request no longer takes a slot")
			})
		}
		t.Run("by nobody", func(t *testing.T) {
			wr := newWR(t, st, wrOpts{})
			_, err := st.Abort(ctx, wr.ID, 0, time.Now().Add(time.Minute))
			require.NoError(t, err)
			after, err := st.WorkRequest(ctx, wr.ID)
			require.NoError(t, err)
			require.False(t, after.AbortedBy.Valid)
		})
		t.Run("unknown", func(t *testing.T) {
			_, err := st.Abort(ctx, 999999, 0, time.Now().Add(time.Minute))
			require.ErrorIs(t, err, ErrNotFound)
		})
	})
}

func TestRetry(t *testing.T) {
	cases := []struct {
		state string
		ok    bool
	}{
		{stateAborted, true},
		{stateAbortedRn, true},
		{stateFailure, true},
		{stateError, true},
		{stateSuccess, false},
		{stateSkipped, false},
		{statePending, false},
		{stateAssigned, false},
		{stateRunning, false},
		{stateBlocked, false},
	}
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		for _, tc := range cases {
			t.Run(tc.state, func(t *testing.T) {
				old, _ := inState(t, st, tc.state)
				retry, err := st.Retry(ctx, old.ID, 0)
				if !tc.ok {
					require.ErrorIs(t, err, ErrConflict)
					after, err := st.WorkRequest(ctx, old.ID)
					require.NoError(t, err)
					require.False(t, after.SupersededBy.Valid)
					return
				}
				require.NoError(t, err)
				require.NotEqual(t, old.ID, retry.ID)
				require.Equal(t, "pending", retry.Status)
				require.False(t, retry.WorkerID.Valid)
				require.Equal(t, old.ID, retry.Supersedes.Int64)
				require.Equal(t, old.TaskName, retry.TaskName)
				require.Equal(t, old.TaskData, retry.TaskData)
				require.Equal(t, old.Shape, retry.Shape)
				after, err := st.WorkRequest(ctx, old.ID)
				require.NoError(t, err)
				require.Equal(t, retry.ID, after.SupersededBy.Int64)
				require.Equal(t, old.Status, after.Status, "the old request keeps its outcome")

				_, err = st.Retry(ctx, old.ID, 0)
				require.ErrorIs(t, err, ErrConflict, "a second retry of the same request")
			})
		}

		t.Run("keeps priority and creator", func(t *testing.T) {
			alice, err := st.CreateUser(ctx, "alice", "", false)
			require.NoError(t, err)
			bob, err := st.CreateUser(ctx, "bob", "", false)
			require.NoError(t, err)
			wr := newWR(t, st, wrOpts{priority: 3, createdBy: alice.ID, shape: "noop|x"})
			require.NoError(t, st.SetPriorityAdjustment(ctx, wr.ID, 4))
			_, err = st.Abort(ctx, wr.ID, 0, time.Now().Add(time.Minute))
			require.NoError(t, err)
			r1, err := st.Retry(ctx, wr.ID, 0)
			require.NoError(t, err)
			require.Equal(t, 3, r1.PriorityBase)
			require.Equal(t, 4, r1.PriorityAdjustment)
			require.Equal(t, 7, r1.Priority)
			require.Equal(t, alice.ID, r1.CreatedBy.Int64, "by 0 keeps the original creator")
			require.Equal(t, "noop|x", r1.Shape)

			// The retry can itself be retried, by someone else.
			_, err = st.Abort(ctx, r1.ID, 0, time.Now().Add(time.Minute))
			require.NoError(t, err)
			r2, err := st.Retry(ctx, r1.ID, bob.ID)
			require.NoError(t, err)
			require.Equal(t, bob.ID, r2.CreatedBy.Int64)
			require.Equal(t, r1.ID, r2.Supersedes.Int64)
		})
		t.Run("unknown", func(t *testing.T) {
			_, err := st.Retry(ctx, 999999, 0)
			require.ErrorIs(t, err, ErrNotFound)
		})
	})
}

func TestStart(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w := newWorker(t, st, "w")
		other := newWorker(t, st, "other")

		unassigned := newWR(t, st, wrOpts{})
		_, err := st.Start(ctx, unassigned.ID, w.ID, 1)
		require.ErrorIs(t, err, ErrConflict, "not assigned")

		wr := newWR(t, st, wrOpts{})
		assign(t, st, wr, w)
		cases := []struct {
			name    string
			worker  int64
			attempt int
		}{
			{"other worker", other.ID, wr.Attempt},
			{"stale attempt", w.ID, wr.Attempt + 1},
			{"attempt zero", w.ID, 0},
		}
		for _, tc := range cases {
			got, err := st.Start(ctx, wr.ID, tc.worker, tc.attempt)
			require.ErrorIs(t, err, ErrConflict, tc.name)
			require.Equal(t, "pending", got.Status, tc.name)
		}

		got, err := st.Start(ctx, wr.ID, w.ID, wr.Attempt)
		require.NoError(t, err)
		require.Equal(t, "running", got.Status)
		require.True(t, got.StartedAt.Valid)

		got, err = st.Start(ctx, wr.ID, w.ID, wr.Attempt)
		require.ErrorIs(t, err, ErrConflict, "already started")
		require.Equal(t, "running", got.Status)

		_, err = st.Start(ctx, 999999, w.ID, 1)
		require.ErrorIs(t, err, ErrNotFound)
	})
}

func TestComplete(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()

		t.Run("running", func(t *testing.T) {
			wr, w := inState(t, st, stateRunning)
			got, err := st.Complete(ctx, wr.ID, w.ID, wr.Attempt, Completion{Result: "failure", Output: "log text"})
			require.NoError(t, err)
			require.Equal(t, "completed", got.Status)
			require.Equal(t, "failure", got.Result)
			require.Equal(t, "log text", got.Output)
			require.True(t, got.CompletedAt.Valid)
			require.True(t, got.StartedAt.Time.Equal(wr.StartedAt.Time), "started_at kept")

			again, err := st.Complete(ctx, wr.ID, w.ID, wr.Attempt, Completion{Result: "failure", Output: "log text"})
			require.NoError(t, err, "a repeated identical report is fine")
			require.Equal(t, "failure", again.Result)
			require.True(t, again.CompletedAt.Time.Equal(got.CompletedAt.Time), "and changes nothing")

			_, err = st.Complete(ctx, wr.ID, w.ID, wr.Attempt, Completion{Result: "success", Output: ""})
			require.ErrorIs(t, err, ErrConflict, "a different result after completion")
		})

		t.Run("error with a reason", func(t *testing.T) {
			wr, w := inState(t, st, stateRunning)
			got, err := st.Complete(ctx, wr.ID, w.ID, wr.Attempt, Completion{Result: "error", Reason: "given-back at install-deps: foo"})
			require.NoError(t, err)
			require.Equal(t, "error", got.Result)
			require.Equal(t, "given-back at install-deps: foo", got.Reason)
		})

		t.Run("assigned but not started", func(t *testing.T) {
			wr, w := inState(t, st, stateAssigned)
			got, err := st.Complete(ctx, wr.ID, w.ID, 0, Completion{Result: "error", Output: ""})
			require.NoError(t, err, "attempt 0 matches any attempt")
			require.Equal(t, "completed", got.Status)
			require.True(t, got.StartedAt.Valid, "started_at filled in")
		})

		t.Run("not this worker or attempt", func(t *testing.T) {
			wr, w := inState(t, st, stateRunning)
			other := newWorker(t, st, "other")
			_, err := st.Complete(ctx, wr.ID, other.ID, wr.Attempt, Completion{Result: "success", Output: ""})
			require.ErrorIs(t, err, ErrNotFound, "wrong worker")
			_, err = st.Complete(ctx, wr.ID, other.ID, 0, Completion{Result: "success", Output: ""})
			require.ErrorIs(t, err, ErrNotFound, "wrong worker, any attempt")
			_, err = st.Complete(ctx, wr.ID, w.ID, wr.Attempt+1, Completion{Result: "success", Output: ""})
			require.ErrorIs(t, err, ErrStale, "stale attempt")
			require.ErrorIs(t, err, ErrConflict, "ErrStale is a conflict")
			got, err := st.WorkRequest(ctx, wr.ID)
			require.NoError(t, err)
			require.Equal(t, "running", got.Status)
		})

		t.Run("unassigned", func(t *testing.T) {
			wr, w := inState(t, st, statePending)
			_, err := st.Complete(ctx, wr.ID, w.ID, wr.Attempt, Completion{Result: "success", Output: ""})
			require.ErrorIs(t, err, ErrNotFound)
		})

		t.Run("aborted", func(t *testing.T) {
			wr, w := inState(t, st, stateAbortedRn)
			_, err := st.Complete(ctx, wr.ID, w.ID, wr.Attempt, Completion{Result: "success", Output: ""})
			require.ErrorIs(t, err, ErrConflict)
			got, err := st.WorkRequest(ctx, wr.ID)
			require.NoError(t, err)
			require.Equal(t, "aborted", got.Status)
			require.Equal(t, "", got.Result)
		})

		t.Run("unknown", func(t *testing.T) {
			_, err := st.Complete(ctx, 999999, 1, 1, Completion{Result: "success", Output: ""})
			require.ErrorIs(t, err, ErrNotFound)
		})
	})
}

func TestNextAndActiveForWorker(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		w := newWorker(t, st, "w")
		other := newWorker(t, st, "other")

		_, err := st.NextForWorker(ctx, w.ID)
		require.ErrorIs(t, err, ErrNotFound)
		active, err := st.ActiveForWorker(ctx, w.ID)
		require.NoError(t, err)
		require.Empty(t, active)

		low1 := newWR(t, st, wrOpts{priority: 0})
		high := newWR(t, st, wrOpts{priority: 5})
		low2 := newWR(t, st, wrOpts{priority: 0})
		running := newWR(t, st, wrOpts{priority: 9})
		done := newWR(t, st, wrOpts{priority: 9})
		elsewhere := newWR(t, st, wrOpts{priority: 9})
		_ = newWR(t, st, wrOpts{priority: 9}) // unassigned
		for _, wr := range []WorkRequest{low1, high, low2, running, done} {
			assign(t, st, wr, w)
		}
		assign(t, st, elsewhere, other)
		start(t, st, running, w)
		_, err = st.Complete(ctx, done.ID, w.ID, done.Attempt, Completion{Result: "success", Output: ""})
		require.NoError(t, err)

		active, err = st.ActiveForWorker(ctx, w.ID)
		require.NoError(t, err)
		require.Equal(t, []int64{low1.ID, high.ID, low2.ID, running.ID}, ids(active), "assigned and running, by id")

		var order []int64
		for {
			next, err := st.NextForWorker(ctx, w.ID)
			if err != nil {
				require.ErrorIs(t, err, ErrNotFound)
				break
			}
			require.Equal(t, "pending", next.Status)
			require.Equal(t, w.ID, next.WorkerID.Int64)
			order = append(order, next.ID)
			start(t, st, next, w)
		}
		require.Equal(t, []int64{high.ID, low1.ID, low2.ID}, order, "priority first, then oldest; never a started one")
	})
}
