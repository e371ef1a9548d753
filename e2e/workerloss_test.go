package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server"
)

var workerBinary struct {
	once sync.Once
	path string
	err  error
}

// kilnWorkerBinary builds e2e/cmd/kiln-test-worker (kiln-worker with the
// test tasks too, such as script) once per test binary: a worker that a
// test can kill -9, stop or restart must be a process of its own.
func kilnWorkerBinary(t *testing.T) string {
	t.Helper()
	workerBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "kiln-e2e-bin-")
		if err != nil {
			workerBinary.err = err
			return
		}
		workerBinary.path = filepath.Join(dir, "kiln-test-worker")
		out, err := exec.Command("go", "build", "-o", workerBinary.path, "github.com/kiln-ci/kiln/e2e/cmd/kiln-test-worker").CombinedOutput()
		if err != nil {
			workerBinary.err = &buildError{out: string(out), err: err}
		}
	})
	require.NoError(t, workerBinary.err)
	return workerBinary.path
}

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string {
	return "go build kiln-test-worker: " + e.err.Error() + "\n" + e.out
}

// workerProcess is a kiln-worker running as a process of its own. Its
// process is cmd; a test may kill and wait for it itself, or use the
// methods, which also restart it.
type workerProcess struct {
	b    *bundle
	name string
	id   int64
	// dir holds its token, journal (dir/journal), work directories and
	// log (dir/worker.log).
	dir  string
	args []string
	env  []string
	cmd  *exec.Cmd
	logf *os.File
	// exited is closed once waitExit has seen cmd exit; nil until
	// waitExit is called.
	exited  chan struct{}
	waitErr error
}

// startWorkerProcess creates an enabled worker record and starts a
// kiln-worker process (the test worker binary) that claims it, and waits
// until it reported. extra are more options, after (and so overriding)
// the defaults.
func (b *bundle) startWorkerProcess(name string, extra ...string) *workerProcess {
	b.t.Helper()
	return b.startWorkerProcessEnv(name, nil, extra...)
}

// startWorkerProcessEnv is startWorkerProcess with more environment
// variables (NAME=VALUE) for the process.
func (b *bundle) startWorkerProcessEnv(name string, env []string, extra ...string) *workerProcess {
	b.t.Helper()
	wk, wdir := b.newWorkerRecord(name)
	// Its own, empty, config file: never the machine's /etc/kiln/worker.conf.
	require.NoError(b.t, os.WriteFile(filepath.Join(wdir, "worker.conf"), []byte("{}\n"), 0o600))
	logf, err := os.Create(filepath.Join(wdir, "worker.log"))
	require.NoError(b.t, err)
	args := []string{"--config", filepath.Join(wdir, "worker.conf"), "--api-url", b.srv.APIURL(),
		"--token-file", filepath.Join(wdir, "token"), "--activation-token-file", filepath.Join(wdir, "activation-token"),
		"--name", name, "--work-dir", filepath.Join(wdir, "work"), "--grace-period", "2s",
		"--log-format", "json", "--log-level", "debug"}
	if parent := e2eCgroupParent(b.t); parent != "" {
		args = append(args, "--cgroup-parent", parent)
	}
	p := &workerProcess{b: b, name: name, id: wk.ID, dir: wdir, args: append(args, extra...), env: env, logf: logf}
	b.t.Cleanup(func() {
		p.kill()
		logf.Close()
		if b.t.Failed() {
			out, _ := os.ReadFile(logf.Name())
			b.t.Logf("worker %s log:\n%s", name, out)
		}
	})
	p.start()
	b.waitConnected(name, wk.ID)
	return p
}

// start starts the worker process, with the same options, token and
// directories as before.
func (p *workerProcess) start(extra ...string) {
	p.b.t.Helper()
	fmt.Fprintf(p.logf, "---- kiln-worker %s starts\n", p.name)
	cmd := exec.Command(kilnWorkerBinary(p.b.t), append(slices.Clone(p.args), extra...)...)
	cmd.Stdout, cmd.Stderr = p.logf, p.logf
	if p.env != nil {
		cmd.Env = append(os.Environ(), p.env...)
	}
	require.NoError(p.b.t, cmd.Start())
	p.cmd, p.exited, p.waitErr = cmd, nil, nil
}

// signal sends sig to the worker process.
func (p *workerProcess) signal(sig syscall.Signal) {
	p.b.t.Helper()
	require.NoError(p.b.t, p.cmd.Process.Signal(sig))
}

// waitExit waits until the worker process has exited, at most d, and
// returns its exit code (-1 when a signal ended it).
func (p *workerProcess) waitExit(d time.Duration) int {
	p.b.t.Helper()
	if p.exited == nil {
		exited, cmd := make(chan struct{}), p.cmd
		p.exited = exited
		go func() {
			p.waitErr = cmd.Wait()
			close(exited)
		}()
	}
	select {
	case <-p.exited:
	case <-time.After(d):
		p.b.t.Fatalf("worker %s did not exit within %s", p.name, d)
	}
	return p.cmd.ProcessState.ExitCode()
}

// kill kill -9s the worker process and waits for it (it may have exited).
func (p *workerProcess) kill() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	_ = p.cmd.Process.Kill()
	if p.exited != nil {
		<-p.exited
	} else {
		_ = p.cmd.Wait()
	}
}

// logged waits until the worker's log has a line containing every one of
// want, the sign that the worker got that far.
func (p *workerProcess) logged(want ...string) {
	p.b.t.Helper()
	p.b.waitFor(fmt.Sprintf("worker %s to log %q", p.name, want), func() bool {
		b, err := os.ReadFile(p.logf.Name())
		if err != nil {
			return false
		}
		for _, line := range strings.Split(string(b), "\n") {
			found := true
			for _, w := range want {
				found = found && strings.Contains(line, w)
			}
			if found {
				return true
			}
		}
		return false
	})
}

// withLeases gives the server short leases, so that a lost worker is
// found out in seconds.
func withLeases(c *server.Config) {
	c.HeartbeatTimeout = time.Second
	c.LeaseTimeout = 2 * time.Second
	c.WorkerLostRetries = 1
}

// runningOn waits until request id runs on worker workerID and returns it.
func (b *bundle) runningOn(id, workerID int64) schemas.WorkRequest {
	b.t.Helper()
	var wr schemas.WorkRequest
	b.waitFor("the request to run on its worker", func() bool {
		wr = b.get(id)
		return wr.Status == schemas.StatusRunning && wr.Worker != nil && *wr.Worker == workerID
	})
	return wr
}

func TestWorkerKilledMidTaskIsRetried(t *testing.T) {
	forEachBackendWith(t, withLeases, func(t *testing.T, b *bundle) {
		lost := b.startWorkerProcess("doomed")
		wr := b.create(b.user, "noop", `{"sleep_seconds": 3}`)
		b.runningOn(wr.ID, lost.id)
		// Another worker takes it once the lease has expired.
		other := b.startWorker("survivor", 1, nil)
		require.NoError(t, lost.cmd.Process.Kill())
		_ = lost.cmd.Wait()
		done := b.wait(wr.ID)
		require.Equal(t, schemas.ResultSuccess, done.Result)
		require.Equal(t, 2, done.Attempt)
		require.Equal(t, other.id, *done.Worker)
		require.Equal(t, 1, done.WorkerLostRetries)

		// A request whose workers keep dying ends in error, worker-lost.
		second := b.startWorkerProcess("doomed-2")
		other.stop()
		wr = b.create(b.user, "noop", `{"sleep_seconds": 3}`)
		b.runningOn(wr.ID, second.id)
		third := b.startWorkerProcess("doomed-3")
		require.NoError(t, second.cmd.Process.Kill())
		_ = second.cmd.Wait()
		b.runningOn(wr.ID, third.id)
		require.NoError(t, third.cmd.Process.Kill())
		_ = third.cmd.Wait()
		done = b.wait(wr.ID)
		require.Equal(t, schemas.ResultError, done.Result)
		require.Equal(t, "worker-lost", done.Reason)
	})
}

func TestWorkerStoppedPastItsLeaseLosesTheRequest(t *testing.T) {
	forEachBackendWith(t, withLeases, func(t *testing.T, b *bundle) {
		frozen := b.startWorkerProcess("frozen")
		wr := b.create(b.user, "noop", `{"sleep_seconds": 4}`)
		b.runningOn(wr.ID, frozen.id)
		other := b.startWorker("thawed", 1, nil)
		require.NoError(t, frozen.cmd.Process.Signal(syscall.SIGSTOP))
		b.runningOn(wr.ID, other.id)
		// Back: its attempt 1 finishes, and its result is refused.
		require.NoError(t, frozen.cmd.Process.Signal(syscall.SIGCONT))
		done := b.wait(wr.ID)
		require.Equal(t, schemas.ResultSuccess, done.Result)
		require.Equal(t, 2, done.Attempt)
		require.Equal(t, other.id, *done.Worker)
		// The frozen worker is alive and well afterwards: it takes new work.
		other.stop()
		next := b.create(b.user, "noop", `{}`)
		require.Equal(t, schemas.ResultSuccess, b.wait(next.ID).Result)
		require.Equal(t, frozen.id, *b.get(next.ID).Worker)
	})
}
