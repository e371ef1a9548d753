package e2e

import (
	"io"
	"net/http"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/schemas"
)

// TestWorkerActsOnItsOwnRequestsOnly: a worker token cannot read, start,
// complete, abandon or upload for another worker's request; a user token
// cannot call the worker endpoints.
func TestWorkerActsOnItsOwnRequestsOnly(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		owner := b.startWorker("owner", 1, nil)
		intruder := b.startWorker("intruder", 1, nil)
		// The intruder is busy, so that the owner gets the request.
		require.NoError(t, b.st.SetWorkerEnabled(b.ctx, intruder.id, false))
		wr := b.create(b.user, "noop", `{"sleep_seconds": 3}`)
		b.runningOn(wr.ID, owner.id)
		require.NoError(t, b.st.SetWorkerEnabled(b.ctx, intruder.id, true))
		other := clientFor(b, intruder.token())
		ctx := b.ctx

		_, err := other.GetWorkRequest(ctx, wr.ID)
		require.True(t, client.IsNotFound(err), "read: %v", err)
		page, err := other.ListWorkRequests(ctx, client.ListOptions{})
		require.NoError(t, err)
		for _, got := range page.Results {
			require.NotEqual(t, wr.ID, got.ID, "listed another worker's request")
		}
		err = other.Log(ctx, wr.ID, io.Discard)
		require.True(t, client.IsNotFound(err), "log: %v", err)
		_, err = other.StartWorkRequest(ctx, wr.ID, wr.Attempt)
		require.Error(t, err, "start")
		err = other.CompleteWorkRequest(ctx, wr.ID, schemas.WorkRequestCompleted{Result: schemas.ResultFailure, Attempt: 1})
		require.Equal(t, http.StatusUnauthorized, client.StatusCode(err), "complete: %v", err)
		err = other.AbandonWorkRequest(ctx, wr.ID, 1, "")
		require.True(t, client.IsNotFound(err), "abandon: %v", err)
		err = other.ConfirmKill(ctx, wr.ID, 1)
		require.True(t, client.IsNotFound(err), "kill: %v", err)
		id := wr.ID
		resp, body := b.raw("POST", "artifact/", intruder.token(),
			[]byte(`{"category":"x","files":{},"work_request":`+strconv.FormatInt(id, 10)+`}`), "Content-Type", "application/json")
		require.Equal(t, http.StatusForbidden, resp.StatusCode, string(body))

		done := b.wait(wr.ID)
		require.Equal(t, schemas.ResultSuccess, done.Result, "the intruder changed nothing")
		require.Equal(t, owner.id, *done.Worker)
		_, err = clientFor(b, owner.token()).GetWorkRequest(ctx, wr.ID)
		require.NoError(t, err, "the owner reads its own request")

		// User tokens are refused on the worker endpoints.
		u, err := b.st.UserByName(ctx, "alice")
		require.NoError(t, err)
		tok, err := b.st.CreateUserToken(ctx, u.ID, "intruder")
		require.NoError(t, err)
		for _, c := range []struct{ method, path string }{
			{"PUT", "worker/dynamic-metadata/"}, {"GET", "worker/config/"}, {"GET", "work-request/get-next-for-worker/"},
			{"POST", "work-request/1/start/"}, {"PUT", "work-request/1/completed/"}, {"POST", "work-request/1/killed/"},
			{"POST", "work-request/1/abandoned/"}, {"PUT", "worker/devices/"},
		} {
			resp, body := b.raw(c.method, c.path, tok, []byte(`{}`), "Content-Type", "application/json")
			require.Equal(t, http.StatusForbidden, resp.StatusCode, "%s %s: %s", c.method, c.path, body)
			require.Contains(t, string(body), "worker-token-required", "%s %s", c.method, c.path)
		}

	})
}
