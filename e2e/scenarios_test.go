package e2e

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
)

func TestSuccessAndFailure(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		w := b.startWorker("alpha", 1, nil)

		ok := b.create(b.user, "noop", `{"result": true, "sleep_seconds": 1}`)
		require.Equal(t, schemas.StatusPending, ok.Status)
		b.waitFor("request to run", func() bool { return b.get(ok.ID).Status == schemas.StatusRunning })
		got := b.wait(ok.ID)
		require.Equal(t, schemas.StatusCompleted, got.Status)
		require.Equal(t, schemas.ResultSuccess, got.Result)
		require.NotNil(t, got.Worker)
		require.Equal(t, w.id, *got.Worker)
		require.NotNil(t, got.AssignedAt)
		require.NotNil(t, got.StartedAt)
		require.NotNil(t, got.CompletedAt)
		require.False(t, got.StartedAt.Before(*got.AssignedAt))
		require.False(t, got.CompletedAt.Before(*got.StartedAt))
		require.Contains(t, got.Output, "noop: success")
		require.Equal(t, 1, got.Attempt)

		bad := b.wait(b.create(b.user, "noop", `{"result": false}`).ID)
		require.Equal(t, schemas.StatusCompleted, bad.Status)
		require.Equal(t, schemas.ResultFailure, bad.Result)
	})
}

func TestVersionMismatchNeverReceives(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		old := b.startWorker("old-noop", 4, schemas.Metadata{"noop:version": 2})
		wr := b.create(b.user, "noop", `{}`)
		b.waitFor("a waiting reason naming the version", func() bool {
			return strings.Contains(b.get(wr.ID).WaitingReason, "noop:version 2, the server needs 1")
		})
		got := b.get(wr.ID)
		require.Equal(t, schemas.StatusPending, got.Status)
		require.Nil(t, got.Worker)
		require.Contains(t, got.WaitingReason, "old-noop")

		good := b.startWorker("new-noop", 1, nil)
		var ids []int64
		for range 3 {
			ids = append(ids, b.create(b.user, "noop", `{}`).ID)
		}
		for _, id := range append(ids, wr.ID) {
			done := b.wait(id)
			require.Equal(t, schemas.ResultSuccess, done.Result)
			require.Equal(t, good.id, *done.Worker, "request %d ran on the wrong worker", id)
		}
		active, err := b.st.ActiveForWorker(b.ctx, old.id)
		require.NoError(t, err)
		require.Empty(t, active)
		list, err := b.admin.IterWorkRequests(b.ctx, client.ListOptions{}, 100)
		require.NoError(t, err)
		for _, wr := range list {
			require.True(t, wr.Worker == nil || *wr.Worker != old.id, "request %d went to the old worker", wr.ID)
		}
	})
}

func TestArchitectureMatching(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		b.startWorker("amd64-only", 1, schemas.Metadata{"system:architectures": []string{"amd64"}})
		wr := b.create(b.user, "noop", `{"host_architecture": "riscv64"}`)
		b.waitFor("a waiting reason naming the architecture", func() bool {
			return strings.Contains(b.get(wr.ID).WaitingReason, "do not include riscv64")
		})
		amd := b.wait(b.create(b.user, "noop", `{"host_architecture": "amd64"}`).ID)
		require.Equal(t, schemas.ResultSuccess, amd.Result)
		require.Equal(t, schemas.StatusPending, b.get(wr.ID).Status)

		rv := b.startWorker("riscv", 1, schemas.Metadata{"system:architectures": []string{"riscv64", "amd64"}})
		got := b.wait(wr.ID)
		require.Equal(t, schemas.ResultSuccess, got.Result)
		require.Equal(t, rv.id, *got.Worker)
	})
}

func TestPriorityThenFIFO(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		// No worker yet: everything queues.
		first := b.create(b.user, "noop", `{}`)
		second := b.create(b.user, "noop", `{}`)
		lowered := b.create(b.user, "noop", `{}`)
		adj := -1
		_, err := b.user.UpdateWorkRequest(b.ctx, lowered.ID, schemas.WorkRequestPatch{PriorityAdjustment: &adj})
		require.NoError(t, err)
		prio := 5
		urgent, err := b.admin.CreateWorkRequest(b.ctx, schemas.WorkRequestCreate{TaskName: "noop", TaskData: []byte(`{}`), PriorityBase: &prio})
		require.NoError(t, err)
		third := b.create(b.user, "noop", `{}`)
		b.waitFor("a waiting reason", func() bool { return b.get(first.ID).WaitingReason == "no enabled worker" })

		b.startWorker("solo", 1, nil)
		want := []int64{urgent.ID, first.ID, second.ID, third.ID, lowered.ID}
		var done []schemas.WorkRequest
		for _, id := range want {
			done = append(done, b.wait(id))
		}
		sort.Slice(done, func(i, j int) bool { return done[i].StartedAt.Before(*done[j].StartedAt) })
		var order []int64
		for _, wr := range done {
			order = append(order, wr.ID)
		}
		require.Equal(t, want, order)
	})
}

func TestConcurrencyNeverExceeded(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		w := b.startWorker("pair", 2, nil)
		var ids []int64
		for range 7 {
			ids = append(ids, b.create(b.user, "noop", `{"sleep_seconds": 0.2}`).ID)
		}
		type ev struct {
			at    time.Time
			delta int
		}
		var evs []ev
		for _, id := range ids {
			wr := b.wait(id)
			require.Equal(t, schemas.ResultSuccess, wr.Result)
			require.Equal(t, w.id, *wr.Worker)
			evs = append(evs, ev{*wr.StartedAt, +1}, ev{*wr.CompletedAt, -1})
		}
		sort.Slice(evs, func(i, j int) bool {
			if evs[i].at.Equal(evs[j].at) {
				return evs[i].delta < evs[j].delta
			}
			return evs[i].at.Before(evs[j].at)
		})
		cur, peak := 0, 0
		for _, e := range evs {
			cur += e.delta
			peak = max(peak, cur)
		}
		require.LessOrEqual(t, peak, 2, "more than 2 runs at once on a worker of concurrency 2")
		require.Equal(t, 2, peak, "the worker never used its second slot")
	})
}

func TestAssignedWhileOfflineRunsOnReturn(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		w := b.startWorker("s390x-box", 1, schemas.Metadata{"system:architectures": []string{"s390x"}})
		w.stop()
		wr := b.create(b.user, "noop", `{"host_architecture": "s390x"}`)
		b.waitFor("the assignment to the offline worker", func() bool {
			got := b.get(wr.ID)
			return got.Worker != nil && *got.Worker == w.id
		})
		require.Equal(t, schemas.StatusPending, b.get(wr.ID).Status)
		w.start()
		got := b.wait(wr.ID)
		require.Equal(t, schemas.ResultSuccess, got.Result)
		require.Equal(t, w.id, *got.Worker)
	})
}

func TestCannotCompleteAnotherWorkersRequest(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		a := b.startWorker("a", 1, schemas.Metadata{"system:architectures": []string{"amd64", "mips64el"}})
		other := b.startWorker("b", 1, schemas.Metadata{"system:architectures": []string{"armhf"}})
		wr := b.create(b.user, "noop", `{"sleep_seconds": 30, "host_architecture": "mips64el"}`)
		b.waitFor("the request to run on a", func() bool { return b.get(wr.ID).Status == schemas.StatusRunning })

		intruder := client.New(b.srv.APIURL(), other.token())
		err := intruder.CompleteWorkRequest(b.ctx, wr.ID, schemas.WorkRequestCompleted{Result: schemas.ResultSuccess})
		require.Equal(t, http.StatusUnauthorized, client.StatusCode(err), "got %v", err)
		got := b.get(wr.ID)
		require.Equal(t, schemas.StatusRunning, got.Status)
		require.Equal(t, a.id, *got.Worker)

		// A user cannot either: completion needs a worker token.
		err = b.user.CompleteWorkRequest(b.ctx, wr.ID, schemas.WorkRequestCompleted{Result: schemas.ResultSuccess})
		require.Equal(t, http.StatusForbidden, client.StatusCode(err))

		// Abort reaches the running worker, which frees its slot.
		_, err = b.user.AbortWorkRequest(b.ctx, wr.ID)
		require.NoError(t, err)
		require.Equal(t, schemas.StatusAborted, b.get(wr.ID).Status)
		next := b.wait(b.create(b.user, "noop", `{"host_architecture": "mips64el"}`).ID)
		require.Equal(t, schemas.ResultSuccess, next.Result)
	})
}

func TestAbortRetryAndPagination(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		wr := b.create(b.user, "noop", `{"result": false}`)
		_, err := b.user.RetryWorkRequest(b.ctx, wr.ID)
		require.Equal(t, http.StatusBadRequest, client.StatusCode(err), "a pending request cannot be retried")
		aborted, err := b.user.AbortWorkRequest(b.ctx, wr.ID)
		require.NoError(t, err)
		require.Equal(t, schemas.StatusAborted, aborted.Status)
		require.NotNil(t, aborted.AbortedBy)
		_, err = b.user.AbortWorkRequest(b.ctx, wr.ID)
		require.Equal(t, http.StatusBadRequest, client.StatusCode(err))

		retry, err := b.user.RetryWorkRequest(b.ctx, wr.ID)
		require.NoError(t, err)
		require.NotEqual(t, wr.ID, retry.ID)
		require.Equal(t, wr.ID, *retry.Supersedes)
		require.Equal(t, retry.ID, *b.get(wr.ID).SupersededBy)
		_, err = b.user.RetryWorkRequest(b.ctx, wr.ID)
		require.Equal(t, http.StatusBadRequest, client.StatusCode(err), "retried twice")
		require.ErrorContains(t, err, "Cannot retry old superseded tasks")

		for range 12 {
			b.create(b.user, "noop", `{}`)
		}
		page, err := b.user.ListWorkRequests(b.ctx, client.ListOptions{Limit: 5})
		require.NoError(t, err)
		require.Len(t, page.Results, 5)
		require.NotNil(t, page.Next)
		require.True(t, strings.HasPrefix(*page.Next, "http://"), "next must be absolute: %s", *page.Next)
		all, err := b.user.IterWorkRequests(b.ctx, client.ListOptions{Limit: 5}, 1000)
		require.NoError(t, err)
		require.Len(t, all, 14)
		for i := 1; i < len(all); i++ {
			require.Greater(t, all[i-1].ID, all[i].ID, "newest first")
		}
		second, err := b.user.NextPage(b.ctx, *page.Next)
		require.NoError(t, err)
		require.NotNil(t, second.Previous)
		back, err := b.user.NextPage(b.ctx, *second.Previous)
		require.NoError(t, err)
		require.Equal(t, page.Results[0].ID, back.Results[0].ID)
	})
}

func TestBadRequests(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		post := func(token, body string) (*http.Response, schemas.Problem) {
			req, err := http.NewRequestWithContext(b.ctx, http.MethodPost, b.srv.APIURL()+"/1.0/work-request/", strings.NewReader(body))
			require.NoError(t, err)
			req.Header.Set("Content-Type", "application/json")
			if token != "" {
				req.Header.Set("Token", token)
			}
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			var p schemas.Problem
			var buf bytes.Buffer
			_, _ = buf.ReadFrom(resp.Body)
			if resp.Header.Get("Content-Type") == schemas.ProblemContentType {
				require.NoError(t, jsonUnmarshal(buf.Bytes(), &p), buf.String())
			}
			return resp, p
		}
		u, err := b.st.UserByName(b.ctx, "alice")
		require.NoError(t, err)
		tok, err := b.st.CreateUserToken(b.ctx, u.ID, "raw http")
		require.NoError(t, err)

		cases := []struct {
			name, token, body string
			status            int
			pointer           string
			title             string
		}{
			{"invalid task data", tok, `{"task_name": "noop", "task_data": {"result": "yes"}}`, 400, "/task_data/result", "invalid task data"},
			{"schema extra key", tok, `{"task_name": "noop", "task_data": {"bogus": 1}}`, 400, "/task_data", "invalid task data"},
			{"unknown task", tok, `{"task_name": "nope", "task_data": {}}`, 400, "/task_name", "not registered"},
			{"unknown field", tok, `{"task_name": "noop", "task_data": {}, "colour": "red"}`, 400, "/colour", "Cannot deserialize"},
			{"malformed JSON", tok, `{"task_name": "noop", `, 400, "", "Malformed JSON"},
			{"too deep", tok, `{"task_name": "noop", "task_data": {"x": ` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}}`, 400, "", "Cannot deserialize"},
			{"oversized body", tok, `{"task_name": "noop", "task_data": {"x": "` + strings.Repeat("a", 2<<20) + `"}}`, 413, "", "too large"},
			{"unknown workspace", tok, `{"task_name": "noop", "task_data": {}, "workspace": "Nope"}`, 404, "", "Workspace not found"},
			{"missing token", "", `{"task_name": "noop", "task_data": {}}`, 403, "", "Error"},
			{"bad token", "not-a-token", `{"task_name": "noop", "task_data": {}}`, 403, "", "Error"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				resp, p := post(c.token, c.body)
				require.Equal(t, c.status, resp.StatusCode)
				require.Equal(t, schemas.ProblemContentType, resp.Header.Get("Content-Type"))
				require.Contains(t, p.Title, c.title)
				if c.pointer != "" {
					require.Contains(t, p.ValidationErrors, c.pointer, "problem: %+v", p)
				}
			})
		}
		n, err := b.st.CountWorkRequests(context.Background(), "")
		require.NoError(t, err)
		require.Zero(t, n, "no bad request may create a work request")
	})
}

func TestServerRestartLosesNothing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		w := b.startWorker("survivor", 1, nil)
		wr := b.create(b.user, "noop", `{"sleep_seconds": 1}`)
		b.waitFor("the request to run", func() bool { return b.get(wr.ID).Status == schemas.StatusRunning })

		// The server goes away while the request runs; the worker must keep
		// its result and report it once the server is back.
		b.restart(func() {
			time.Sleep(1500 * time.Millisecond) // an outage longer than the run, not a synchronisation
		})
		got := b.wait(wr.ID)
		require.Equal(t, schemas.StatusCompleted, got.Status)
		require.Equal(t, schemas.ResultSuccess, got.Result)

		// And the worker takes new work from the restarted server.
		next := b.wait(b.create(b.user, "noop", `{}`).ID)
		require.Equal(t, schemas.ResultSuccess, next.Result)
		require.Equal(t, w.id, *next.Worker)
	})
}

func TestDisablingWithdrawsUnstartedAssignments(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		w := b.startWorker("flaky", 1, schemas.Metadata{"system:architectures": []string{"sparc64"}})
		w.stop()
		wr := b.create(b.user, "noop", `{"host_architecture": "sparc64"}`)
		b.waitFor("the assignment to the stopped worker", func() bool { return b.get(wr.ID).Worker != nil })

		_, err := b.adminCmd("worker", "disable", "flaky")
		require.NoError(t, err)
		got := b.get(wr.ID)
		require.Nil(t, got.Worker, "disabling a worker must withdraw what it has not started")
		b.srv.Scheduler().Trigger()
		b.waitFor("the reason", func() bool { return b.get(wr.ID).WaitingReason == "no enabled worker" })

		// Another worker takes it; the stopped one, back and re-enabled,
		// drops its stale message.
		other := b.startWorker("steady", 1, schemas.Metadata{"system:architectures": []string{"sparc64"}})
		require.Equal(t, other.id, *b.wait(wr.ID).Worker)
		_, err = b.adminCmd("worker", "enable", "flaky")
		require.NoError(t, err)
		w.start()
		next := b.wait(b.create(b.user, "noop", `{}`).ID)
		require.Equal(t, schemas.ResultSuccess, next.Result)
		require.Equal(t, schemas.ResultSuccess, b.get(wr.ID).Result)
	})
}

func TestWorkerRegistersTheTokenItKeeps(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		// A token file the server has never seen (a server that lost its
		// database, or a token file made by an installer): the worker
		// registers that very token instead of failing forever with 403.
		w := &testWorker{b: b, tokenFile: filepath.Join(b.dir, "kept-token")}
		require.NoError(t, os.WriteFile(w.tokenFile, []byte(strings.Repeat("ab", 32)+"\n"), 0o600))
		w.cfg = w.cfgFor("kept", 1, nil)
		w.start()
		t.Cleanup(w.stop)
		var wk store.Worker
		b.waitFor("the registration", func() bool {
			var err error
			wk, err = b.st.WorkerForToken(b.ctx, strings.Repeat("ab", 32))
			return err == nil
		})
		require.Equal(t, "kept", wk.Name)
		require.False(t, wk.Enabled)
		fi, err := os.Stat(w.tokenFile)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	})
}

func TestWorkerTokenFileIsPrivate(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		w := b.startWorker("private", 1, nil)
		fi, err := os.Stat(w.tokenFile)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
		_, err = os.Stat(w.cfg.ActivationTokenFile)
		require.True(t, os.IsNotExist(err), "the activation token is removed once used")
	})
}
