package e2e

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server"
	"github.com/kiln-ci/kiln/worker/journal"
)

// withScriptLeases gives the server the script task and withLeases's
// short heartbeat timeout, with leases of the given length: a minute when
// a test must show that the worker, not a lease expiry, handed a request
// back.
func withScriptLeases(lease time.Duration) func(*server.Config) {
	return func(c *server.Config) {
		withLeases(c)
		c.LeaseTimeout = lease
		withScript(c)
	}
}

// scriptData is the task data of a script request.
func scriptData(script string) string {
	b, _ := json.Marshal(map[string]string{"script": script})
	return string(b)
}

// lines waits until file has at least n lines and returns them.
func (b *bundle) lines(file string, n int) []string {
	b.t.Helper()
	var lines []string
	b.waitFor("lines in "+filepath.Base(file), func() bool {
		data, err := os.ReadFile(file)
		lines = strings.Split(strings.TrimSpace(string(data)), "\n")
		return err == nil && len(lines) >= n
	})
	return lines
}

// pidFrom waits for the pid a script writes to file.
func (b *bundle) pidFrom(file string) int {
	b.t.Helper()
	var pid int
	b.waitFor("the pid in "+filepath.Base(file), func() bool {
		data, err := os.ReadFile(file)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(data)))
		return err == nil && pid > 0
	})
	b.t.Cleanup(func() {
		if !gone(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return pid
}

// journal returns the entries in the worker's journal, read directly (the
// worker process holds the journal's lock).
func (p *workerProcess) journal() []journal.Entry {
	p.b.t.Helper()
	files, err := filepath.Glob(filepath.Join(p.dir, "journal", "*.json"))
	require.NoError(p.b.t, err)
	var out []journal.Entry
	for _, f := range files {
		data, err := os.ReadFile(f)
		require.NoError(p.b.t, err)
		var e journal.Entry
		require.NoError(p.b.t, json.Unmarshal(data, &e), f)
		out = append(out, e)
	}
	return out
}

// A worker killed with kill -9 in the middle of a run leaves the run's
// processes running; started again, it kills them, hands the request back
// at once (the lease alone would take a minute), and the request runs
// again as attempt 2.
func TestWorkerRestartKillsLeftoversAndHandsBack(t *testing.T) {
	forEachBackendWith(t, withScriptLeases(time.Minute), func(t *testing.T, b *bundle) {
		dir := t.TempDir()
		runs, pidFile := filepath.Join(dir, "runs"), filepath.Join(dir, "pid")
		script := `echo "start $KILN_ATTEMPT" >> ` + runs + `
if [ "$KILN_ATTEMPT" = 1 ]; then sleep 600 & echo $! > ` + pidFile + `; wait; fi
echo "end $KILN_ATTEMPT" >> ` + runs
		p := b.startWorkerProcess("phoenix")
		wr := b.create(b.user, "script", scriptData(script))
		b.runningOn(wr.ID, p.id)
		pid := b.pidFrom(pidFile)
		entries := p.journal()
		require.Len(t, entries, 1)
		require.Equal(t, wr.ID, entries[0].WorkRequest)
		require.Equal(t, 1, entries[0].Attempt)
		require.Len(t, entries[0].Processes, 1, "the journal names the run's process group")
		require.NotZero(t, entries[0].Processes[0].StartTime)

		p.kill()
		require.False(t, gone(pid), "the run outlives its worker")
		require.Equal(t, 1, b.get(wr.ID).Attempt)

		p.start()
		b.waitFor("the leftover to be killed", func() bool { return gone(pid) })
		done := b.wait(wr.ID)
		require.Equal(t, schemas.ResultSuccess, done.Result, "output: %s", done.Output)
		require.Equal(t, 2, done.Attempt)
		require.Equal(t, p.id, *done.Worker)
		require.Equal(t, 1, done.WorkerLostRetries)
		require.Equal(t, []string{"start 1", "start 2", "end 2"}, b.lines(runs, 3))
		b.waitFor("an empty journal", func() bool { return len(p.journal()) == 0 })
	})
}

// SIGTERM drains: the running request finishes and is reported before the
// worker exits 0, and a queued one is left for another worker.
func TestWorkerDrainsOnSIGTERM(t *testing.T) {
	forEachBackendWith(t, withScriptLeases(2*time.Second), func(t *testing.T, b *bundle) {
		dir := t.TempDir()
		runs, release := filepath.Join(dir, "runs"), filepath.Join(dir, "release")
		script := `echo "start $KILN_WORK_REQUEST $KILN_ATTEMPT" >> ` + runs + `
until [ -e ` + release + ` ]; do sleep 0.05; done
echo "end $KILN_WORK_REQUEST $KILN_ATTEMPT" >> ` + runs
		p := b.startWorkerProcess("drainer")
		first := b.create(b.user, "script", scriptData(script))
		b.runningOn(first.ID, p.id)
		b.lines(runs, 1)
		second := b.create(b.user, "script", scriptData(script))

		p.signal(syscall.SIGTERM)
		p.logged("draining: taking no new work")
		require.NoError(t, os.WriteFile(release, nil, 0o644))
		require.Equal(t, 0, p.waitExit(30*time.Second))
		got := b.get(first.ID)
		require.Equal(t, schemas.StatusCompleted, got.Status, "reported before the worker exited")
		require.Equal(t, schemas.ResultSuccess, got.Result)
		require.Equal(t, 1, got.Attempt)
		require.Equal(t, p.id, *got.Worker)
		require.Empty(t, p.journal())

		other := b.startWorker("after-drain", 1, nil)
		done := b.wait(second.ID)
		require.Equal(t, schemas.ResultSuccess, done.Result)
		require.Equal(t, other.id, *done.Worker)
		require.Equal(t, []string{
			"start " + strconv.FormatInt(first.ID, 10) + " 1",
			"end " + strconv.FormatInt(first.ID, 10) + " 1",
			"start " + strconv.FormatInt(second.ID, 10) + " " + strconv.Itoa(done.Attempt),
			"end " + strconv.FormatInt(second.ID, 10) + " " + strconv.Itoa(done.Attempt),
		}, b.lines(runs, 4), "the second request ran once, on the other worker")
	})
}

// A second SIGTERM stops the running work: its processes are gone and the
// request handed back when the worker exits, and it runs again elsewhere.
func TestWorkerSecondSIGTERMStopsAndHandsBack(t *testing.T) {
	forEachBackendWith(t, withScriptLeases(2*time.Second), func(t *testing.T, b *bundle) {
		dir := t.TempDir()
		runs, pidFile := filepath.Join(dir, "runs"), filepath.Join(dir, "pid")
		script := `echo "start $KILN_ATTEMPT" >> ` + runs + `
if [ "$KILN_ATTEMPT" = 1 ]; then sleep 600 & echo $! > ` + pidFile + `; wait; fi
echo "end $KILN_ATTEMPT" >> ` + runs
		p := b.startWorkerProcess("stopper")
		wr := b.create(b.user, "script", scriptData(script))
		b.runningOn(wr.ID, p.id)
		pid := b.pidFrom(pidFile)

		p.signal(syscall.SIGTERM)
		p.logged("draining: taking no new work")
		p.signal(syscall.SIGTERM)
		require.Equal(t, 0, p.waitExit(30*time.Second))
		require.True(t, gone(pid), "the run's processes are gone when the worker exits")
		// Heartbeats renewed the lease up to the exit: only the hand-back
		// can have taken the request back already.
		got := b.get(wr.ID)
		require.Equal(t, 2, got.Attempt, "handed back before the worker exited")
		require.NotEqual(t, schemas.StatusCompleted, got.Status)
		require.Equal(t, 1, got.WorkerLostRetries)
		require.Empty(t, p.journal())

		other := b.startWorker("takes-over", 1, nil)
		done := b.wait(wr.ID)
		require.Equal(t, schemas.ResultSuccess, done.Result, "output: %s", done.Output)
		require.Equal(t, other.id, *done.Worker)
		n := strconv.Itoa(done.Attempt)
		require.Equal(t, []string{"start 1", "start " + n, "end " + n}, b.lines(runs, 3))
	})
}

// apiProxy forwards to the server's API until it is cut: then every
// request fails as if the server were unreachable.
type apiProxy struct {
	srv *httptest.Server
	cut atomic.Bool
}

func newAPIProxy(t *testing.T, apiURL string) (*apiProxy, string) {
	u, err := url.Parse(apiURL)
	require.NoError(t, err)
	p := &apiProxy{}
	forward := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: u.Scheme, Host: u.Host})
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.cut.Load() {
			panic(http.ErrAbortHandler) // the connection is dropped
		}
		forward.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p, p.srv.URL + u.Path
}

// A run that ends while the server cannot be reached keeps its result: the
// worker journals it and keeps trying; stopped, it keeps it, and started
// again it sends it, and the request completes with attempt 1's result.
func TestWorkerResultSurvivesServerOutageAndRestart(t *testing.T) {
	forEachBackendWith(t, withScriptLeases(time.Minute), func(t *testing.T, b *bundle) {
		release := filepath.Join(t.TempDir(), "release")
		script := `echo "attempt $KILN_ATTEMPT"
until [ -e ` + release + ` ]; do sleep 0.05; done
echo "finished attempt $KILN_ATTEMPT"`
		proxy, apiURL := newAPIProxy(t, b.srv.APIURL())
		p := b.startWorkerProcess("cut-off", "--api-url", apiURL)
		wr := b.create(b.user, "script", scriptData(script))
		b.runningOn(wr.ID, p.id)

		proxy.cut.Store(true)
		require.NoError(t, os.WriteFile(release, nil, 0o644))
		var entry journal.Entry
		b.waitFor("the result in the journal", func() bool {
			entries := p.journal()
			if len(entries) == 1 && entries[0].Result != nil {
				entry = entries[0]
				return true
			}
			return false
		})
		require.Equal(t, schemas.ResultSuccess, entry.Result.Result)
		require.Equal(t, 1, entry.Result.Attempt)
		p.logged("report result", `"level":"warn"`)
		require.Equal(t, schemas.StatusRunning, b.get(wr.ID).Status, "the server has not heard of it")

		// Draining waits for the report; the second SIGTERM gives up,
		// and the result stays in the journal.
		p.signal(syscall.SIGTERM)
		p.logged("draining: taking no new work")
		p.signal(syscall.SIGTERM)
		require.Equal(t, 0, p.waitExit(30*time.Second))
		p.logged("it stays in the journal and the next start sends it")
		require.Len(t, p.journal(), 1)
		require.Equal(t, schemas.StatusRunning, b.get(wr.ID).Status)

		proxy.cut.Store(false)
		p.start()
		done := b.wait(wr.ID)
		require.Equal(t, schemas.ResultSuccess, done.Result)
		require.Equal(t, 1, done.Attempt, "the result of attempt 1, not a retry")
		require.Equal(t, p.id, *done.Worker)
		require.Zero(t, done.WorkerLostRetries)
		require.Contains(t, done.Output, "finished attempt 1")
		b.waitFor("an empty journal", func() bool { return len(p.journal()) == 0 })
	})
}
