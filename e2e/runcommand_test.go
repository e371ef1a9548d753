package e2e

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/e2e/testtasks"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server"
	"github.com/kiln-ci/kiln/tasks"
)

// withScript gives the server (and the in-process workers) the test task
// "script" (testtasks.Script).
func withScript(c *server.Config) {
	c.Registry = testtasks.Registry()
}

// gone reports whether no process with that pid is alive (zombies count as
// gone: they run nothing).
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	return err != nil || strings.Contains(string(b), "State:\tZ")
}

// runPids waits for the pids the script writes to its pids file.
func runPids(b *bundle, w *testWorker, wr schemas.WorkRequest, n int) []int {
	path := filepath.Join(w.cfg.WorkDir, strconv.FormatInt(wr.ID, 10)+"-1", "exec", "pids")
	var pids []int
	b.waitFor("the pids", func() bool {
		data, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		pids = pids[:0]
		for _, f := range strings.Fields(string(data)) {
			p, err := strconv.Atoi(f)
			if err == nil {
				pids = append(pids, p)
			}
		}
		return len(pids) >= n
	})
	return pids
}

// The script: a child, a setsid escapee and a nohup orphan in the
// background, then the main shell ignores SIGTERM and sleeps.
const treeScript = `sleep 600 & echo $! >> pids
setsid sleep 600 & echo $! >> pids
(nohup sleep 600 >/dev/null 2>&1 & echo $! >> pids) 
trap '' TERM
echo started
sleep 600`

func TestAbortKillsTheWholeRun(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			b := setupWith(t, be, withScript)
			w := b.startWorker("runner", 1, nil)
			wr := b.create(b.user, "script", `{"script": `+strconv.Quote(treeScript)+`}`)
			pids := runPids(b, w, wr, 3)
			b.waitFor("the output", func() bool {
				var sb strings.Builder
				return b.user.Log(b.ctx, wr.ID, &sb) == nil && strings.Contains(sb.String(), "started")
			})

			start := time.Now()
			_, err := b.user.AbortWorkRequest(b.ctx, wr.ID)
			require.NoError(t, err)
			b.waitFor("every process of the run to be gone", func() bool {
				for _, p := range pids {
					if !gone(p) {
						return false
					}
				}
				return true
			})
			took := time.Since(start)
			t.Logf("abort -> all %d processes gone: %v (grace %v)", len(pids), took, w.cfg.Grace)
			require.Less(t, took, w.cfg.Grace+2*time.Second, "the kill must follow the abort within about a second plus the grace period")
			b.waitFor("the kill confirmation", func() bool { return !b.get(wr.ID).KillPending })
			b.requireDebugLogs(b.get(wr.ID), "aborted: True")

			// The worker is free for the next run.
			next := b.wait(b.create(b.user, "script", `{"script": "echo next"}`).ID)
			require.Equal(t, schemas.ResultSuccess, next.Result)
		})
	}
}

func TestRunCommandResults(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			b := setupWith(t, be, withScript)
			w := b.startWorker("runner", 1, nil)

			ok := b.wait(b.create(b.user, "script", `{"script": "echo hello"}`).ID)
			require.Equal(t, schemas.ResultSuccess, ok.Result)
			require.Contains(t, ok.Output, "hello")
			b.requireDebugLogs(ok, "returncode: 0")
			bad := b.wait(b.create(b.user, "script", `{"script": "echo oops; exit 3"}`).ID)
			require.Equal(t, schemas.ResultFailure, bad.Result)
			b.requireDebugLogs(bad, "returncode: 3")

			// A grandchild that keeps stdout open does not hang the worker.
			held := b.wait(b.create(b.user, "script", `{"script": "sleep 600 & echo $! > pids; echo done"}`).ID)
			require.Equal(t, schemas.ResultSuccess, held.Result)

			// A timeout ends the request as error/timeout, and the run is gone.
			timed := b.create(b.user, "script", `{"script": "sleep 600 & echo $! > pids; sleep 600", "timeout": 1}`)
			pids := runPids(b, w, timed, 1)
			got := b.wait(timed.ID)
			require.Equal(t, schemas.ResultError, got.Result)
			require.Equal(t, "timeout", got.Reason)
			b.waitFor("the timed-out run to be gone", func() bool { return gone(pids[0]) })
		})
	}
}

// requireDebugLogs checks that a finished run uploaded its debug logs as a
// debusine:work-request-debug-logs artifact whose cmd-output.log says want.
func (b *bundle) requireDebugLogs(wr schemas.WorkRequest, want string) {
	b.t.Helper()
	require.Len(b.t, wr.Artifacts, 1, "work request %d: one debug-logs artifact", wr.ID)
	a, err := b.admin.GetArtifact(b.ctx, wr.Artifacts[0])
	require.NoError(b.t, err)
	require.Equal(b.t, tasks.DebugLogsCategory, a.Category)
	require.Contains(b.t, a.Files, tasks.StagesLog)
	require.Contains(b.t, a.Files, tasks.CmdOutputLog)
	dir := b.t.TempDir()
	_, err = b.admin.DownloadArtifact(b.ctx, a.ID, dir)
	require.NoError(b.t, err)
	cmdLog, err := os.ReadFile(filepath.Join(dir, tasks.CmdOutputLog))
	require.NoError(b.t, err)
	require.Contains(b.t, string(cmdLog), want)
}

func TestLiveLogCapSaysSoAndDebugLogsKeepAll(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			b := setupWith(t, be, withScript)
			w := b.startWorker("chatty", 1, nil)
			w.stop()
			w.cfg.LiveLogMax = 1000
			w.start()
			wr := b.wait(b.create(b.user, "script", `{"script": "for i in $(seq 1 200); do echo line $i; done"}`).ID)
			require.Equal(t, schemas.ResultSuccess, wr.Result)
			var live strings.Builder
			require.NoError(t, b.user.Log(b.ctx, wr.ID, &live))
			require.Contains(t, live.String(), "[kiln: the live log stops here at 1000 bytes; the full output is in the debug-log artifact]")
			require.NotContains(t, live.String(), "line 200\n")
			b.requireDebugLogs(wr, "line 200\n")
		})
	}
}
