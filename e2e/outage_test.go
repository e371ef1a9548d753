package e2e

import (
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/bus"
	"github.com/kiln-ci/kiln/e2e/pgtest"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server"
)

// TestDatabaseOutage stops the server's PostgreSQL (one of the test's own)
// under a running request: the API answers 503 with Retry-After, nothing
// crashes, the finished run's result waits in the worker, and all resumes
// when the database is back.
func TestDatabaseOutage(t *testing.T) {
	pg := pgtest.Start(t)
	be := backends[1]
	b := setupWith(t, be, func(c *server.Config) { c.DatabaseURL = pg.URL })
	b.startWorker("w", 1, nil)
	u, err := b.st.UserByName(b.ctx, "alice")
	require.NoError(t, err)
	tok, err := b.st.CreateUserToken(b.ctx, u.ID, "outage")
	require.NoError(t, err)
	require.Equal(t, schemas.ResultSuccess, b.wait(b.create(b.user, "noop", `{}`).ID).Result)

	names, err := bus.NewNames(b.cfg.NATSPrefix)
	require.NoError(t, err)
	nc, err := nats.Connect(b.cfg.NATSURL)
	require.NoError(t, err)
	defer nc.Close()
	running := b.create(b.user, "noop", `{"sleep_seconds": 3}`)
	logs, err := nc.SubscribeSync(names.RequestLogSubjects(running.ID))
	require.NoError(t, err)
	b.waitFor("the request to run", func() bool { return b.get(running.ID).Status == schemas.StatusRunning })
	pg.Stop()

	for _, c := range []struct{ method, path, body string }{
		{"GET", "work-request/", ""},
		{"GET", "work-request/1/", ""},
		{"POST", "work-request/", `{"task_name": "noop", "task_data": {}}`},
	} {
		resp, body := b.raw(c.method, c.path, tok, []byte(c.body), "Content-Type", "application/json")
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "%s %s: %s", c.method, c.path, body)
		require.Equal(t, "5", resp.Header.Get("Retry-After"))
		require.Equal(t, "application/problem+json", resp.Header.Get("Content-Type"))
	}
	hz, err := http.Get(b.srv.URL() + "/healthz")
	require.NoError(t, err)
	hz.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, hz.StatusCode)
	// The run ends during the outage (its live log's end shows it), and its
	// result waits in the worker.
	for {
		m, err := logs.NextMsg(30 * time.Second)
		require.NoError(t, err, "the run's live log")
		if m.Header.Get(bus.HeaderLogEOF) == "1" {
			break
		}
	}

	pg.StartAgain()
	done := b.wait(running.ID)
	require.Equal(t, schemas.ResultSuccess, done.Result, "the result reported during the outage arrived")
	require.Equal(t, 1, done.Attempt, "no lease expired for an outage of the server's own")
	require.Equal(t, schemas.ResultSuccess, b.wait(b.create(b.user, "noop", `{}`).ID).Result, "scheduling resumed")
}
