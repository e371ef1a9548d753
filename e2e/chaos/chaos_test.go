// Package chaos is Kiln's fault-injection suite: a real kiln-server, a real
// nats-server, a PostgreSQL of its own and several kiln-worker processes on
// loopback run a few hundred requests while the suite kills and stops them,
// then checks that nothing was lost, nothing ran twice at once, every
// result came from its request's final attempt, and no process was left.
//
// make chaos runs it at full size; make test at a size that fits CI
// (KILN_CHAOS_SIZE requests).
package chaos

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/e2e/pgtest"
	"github.com/kiln-ci/kiln/schemas"
)

// Timings of the suite's servers: short, so that faults are found out in
// seconds.
const (
	heartbeatInterval = 300 * time.Millisecond
	leaseTimeout      = 3 * time.Second
	workers           = 3
	concurrency       = 2
)

// size is how many requests a run submits (KILN_CHAOS_SIZE, default 60).
func size() int {
	if n, err := strconv.Atoi(os.Getenv("KILN_CHAOS_SIZE")); err == nil && n > 0 {
		return n
	}
	return 60
}

// binaries are the test builds of kiln-server and kiln-worker (with the
// script task), built once.
var binaries struct {
	once           sync.Once
	server, worker string
	err            error
}

func build(t *testing.T) (server, worker string) {
	t.Helper()
	binaries.once.Do(func() {
		dir, err := os.MkdirTemp("", "kiln-chaos-bin-")
		if err != nil {
			binaries.err = err
			return
		}
		for _, b := range []struct {
			out *string
			pkg string
		}{{&binaries.server, "kiln-test-server"}, {&binaries.worker, "kiln-test-worker"}} {
			*b.out = filepath.Join(dir, b.pkg)
			if out, err := exec.Command("go", "build", "-o", *b.out, "github.com/kiln-ci/kiln/e2e/cmd/"+b.pkg).CombinedOutput(); err != nil {
				binaries.err = fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
				return
			}
		}
	})
	require.NoError(t, binaries.err)
	return binaries.server, binaries.worker
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// proc is a process the suite starts, kills and starts again.
type proc struct {
	t    *testing.T
	name string
	argv []string
	log  string
	mu   sync.Mutex
	cmd  *exec.Cmd
}

func (p *proc) start() {
	p.t.Helper()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(p.t, err)
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	require.NoError(p.t, cmd.Start())
	f.Close()
	p.mu.Lock()
	p.cmd = cmd
	p.mu.Unlock()
}

// kill sends SIGKILL and reaps the process.
func (p *proc) kill() {
	p.mu.Lock()
	cmd := p.cmd
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGCONT)
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}

func (p *proc) signal(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		_ = p.cmd.Process.Signal(sig)
	}
}

// stop sends SIGTERM twice (drain, then abort) and waits.
func (p *proc) stop() {
	p.mu.Lock()
	cmd := p.cmd
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGCONT)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
}

// waitPort waits until something listens on port.
func waitPort(t *testing.T, port int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
		if err == nil {
			c.Close()
			return
		}
		require.True(t, time.Now().Before(deadline), "nothing listens on port %d", port)
		time.Sleep(50 * time.Millisecond)
	}
}

// cluster is the system under test.
type cluster struct {
	t        *testing.T
	dir      string
	pg       *pgtest.Server
	nats     *proc
	natsPort int
	server   *proc
	apiPort  int
	admin    []string
	workers  []*proc
	api      *client.Client
	marker   string
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	serverBin, workerBin := build(t)
	natsBin, err := exec.LookPath("nats-server")
	if err != nil {
		natsBin = "/usr/sbin/nats-server"
	}
	if _, err := os.Stat(natsBin); err != nil {
		if os.Getenv("KILN_REQUIRE_ALL") == "1" {
			t.Fatalf("chaos: no nats-server (KILN_REQUIRE_ALL=1): %v", err)
		}
		t.Skipf("chaos: no nats-server: %v", err)
	}
	c := &cluster{t: t, dir: t.TempDir(), marker: fmt.Sprintf("kiln-chaos-%d-%d", os.Getpid(), time.Now().UnixNano())}
	c.pg = pgtest.Start(t)
	c.natsPort = freePort(t)
	c.nats = &proc{t: t, name: "nats", log: filepath.Join(c.dir, "nats.log"),
		argv: []string{natsBin, "-a", "127.0.0.1", "-p", strconv.Itoa(c.natsPort), "-js", "-sd", filepath.Join(c.dir, "jetstream")}}
	c.nats.start()
	t.Cleanup(c.nats.kill)
	waitPort(t, c.natsPort)

	c.apiPort = freePort(t)
	common := []string{"--config", filepath.Join(c.dir, "server.conf"), "--database-url", c.pg.URL, "--data-dir", filepath.Join(c.dir, "server")}
	require.NoError(t, os.WriteFile(filepath.Join(c.dir, "server.conf"), []byte("{}\n"), 0o600))
	c.server = &proc{t: t, name: "server", log: filepath.Join(c.dir, "server.log"), argv: append([]string{serverBin}, append(common,
		"--listen", "127.0.0.1:"+strconv.Itoa(c.apiPort), "--nats-url", "nats://127.0.0.1:"+strconv.Itoa(c.natsPort),
		"--nats-prefix", "chaos", "--heartbeat-interval", heartbeatInterval.String(), "--heartbeat-timeout", (3*heartbeatInterval).String(),
		"--lease-timeout", leaseTimeout.String(), "--worker-lost-retries", "20", "--scheduler-sweep", "500ms",
		"--kill-confirm-timeout", "20s", "--log-format", "json", "--log-level", "info")...)}
	c.admin = append([]string{serverBin}, common...)
	c.server.start()
	t.Cleanup(c.server.kill)
	waitPort(t, c.apiPort)

	token := strings.TrimSpace(lastLine(c.adminCmd("admin", "create-user", "chaos", "--admin")))
	c.api = client.New("http://127.0.0.1:"+strconv.Itoa(c.apiPort)+"/api", token)

	for i := range workers {
		name := fmt.Sprintf("w%d", i)
		act := strings.TrimSpace(lastLine(c.adminCmd("admin", "worker", "create", name)))
		wdir := filepath.Join(c.dir, name)
		require.NoError(t, os.MkdirAll(wdir, 0o700))
		require.NoError(t, os.WriteFile(filepath.Join(wdir, "activation-token"), []byte(act), 0o600))
		require.NoError(t, os.WriteFile(filepath.Join(wdir, "worker.conf"), []byte("{}\n"), 0o600))
		w := &proc{t: t, name: name, log: filepath.Join(wdir, "worker.log"), argv: []string{workerBin,
			"--config", filepath.Join(wdir, "worker.conf"), "--api-url", "http://127.0.0.1:" + strconv.Itoa(c.apiPort) + "/api",
			"--token-file", filepath.Join(wdir, "token"), "--activation-token-file", filepath.Join(wdir, "activation-token"),
			"--name", name, "--work-dir", filepath.Join(wdir, "work"), "--concurrency", strconv.Itoa(concurrency),
			"--grace-period", "1s", "--log-format", "json", "--log-level", "info"}}
		w.start()
		t.Cleanup(w.kill)
		c.workers = append(c.workers, w)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range append([]*proc{c.server, c.nats}, c.workers...) {
				out, _ := os.ReadFile(p.log)
				t.Logf("%s log (end):\n%s", p.name, tail(string(out), 6000))
			}
		}
	})
	return c
}

func (c *cluster) adminCmd(args ...string) string {
	c.t.Helper()
	out, err := exec.Command(c.admin[0], append(args, c.admin[1:]...)...).CombinedOutput()
	require.NoError(c.t, err, "%v: %s", args, out)
	return string(out)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// recordScript is each request's task: it records its start, a tick every
// 100 ms while it runs, and its end, with its request, attempt and process
// id, in the shared record file.
func (c *cluster) recordScript(i int) string {
	rec := filepath.Join(c.dir, "records")
	ms := 300 + (i%7)*150
	return fmt.Sprintf(`# %s
r() { echo "$1 $KILN_WORK_REQUEST $KILN_ATTEMPT $$ $(date +%%s%%N)" >> %s; }
r start
n=0
while [ $n -lt %d ]; do sleep 0.1; n=$((n+100)); r tick; done
r end
`, c.marker, rec, ms)
}

// event is one line of the record file.
type event struct {
	kind    string
	id      int64
	attempt int
	at      int64
}

func (c *cluster) records() []event {
	c.t.Helper()
	f, err := os.Open(filepath.Join(c.dir, "records"))
	require.NoError(c.t, err)
	defer f.Close()
	var out []event
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 5 {
			continue // a line cut by a kill
		}
		id, _ := strconv.ParseInt(fs[1], 10, 64)
		att, _ := strconv.Atoi(fs[2])
		at, _ := strconv.ParseInt(fs[4], 10, 64)
		out = append(out, event{kind: fs[0], id: id, attempt: att, at: at})
	}
	require.NoError(c.t, sc.Err())
	return out
}

// fault is one injected fault: what it does and which automatic retries it
// may cause (worker-lost retries: at most the runs of the killed or
// stopped worker).
type fault struct {
	name        string
	maxRetries  int
	inject      func(c *cluster)
	workerFault bool
}

func faults() []fault {
	return []fault{
		{name: "kill -9 of a worker mid-task, restarted", maxRetries: concurrency, workerFault: true, inject: func(c *cluster) {
			w := c.workers[0]
			w.kill()
			w.start()
		}},
		{name: "kill -9 of the server, restarted", inject: func(c *cluster) {
			c.server.kill()
			time.Sleep(500 * time.Millisecond) // the outage itself
			c.server.start()
			waitPort(c.t, c.apiPort)
		}},
		{name: "kill -9 of nats-server, restarted", inject: func(c *cluster) {
			c.nats.kill()
			time.Sleep(500 * time.Millisecond) // the outage itself
			c.nats.start()
			waitPort(c.t, c.natsPort)
		}},
		{name: "PostgreSQL restart", inject: func(c *cluster) {
			c.pg.Stop()
			time.Sleep(500 * time.Millisecond) // the outage itself
			c.pg.StartAgain()
		}},
		{name: "worker stopped with SIGSTOP past its lease, resumed", maxRetries: concurrency, workerFault: true, inject: func(c *cluster) {
			w := c.workers[1]
			w.signal(syscall.SIGSTOP)
			time.Sleep(leaseTimeout + 2*time.Second) // past its lease: the fault itself
			w.signal(syscall.SIGCONT)
		}},
	}
}

func TestChaos(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	n := size()
	ids := make([]int64, 0, n)
	for i := range n {
		wr, err := c.api.CreateWorkRequest(ctx, schemas.WorkRequestCreate{TaskName: "script",
			TaskData: []byte(fmt.Sprintf(`{"script": %q}`, c.recordScript(i)))})
		require.NoError(t, err)
		ids = append(ids, wr.ID)
	}

	// One fault after another while the requests run, each once some of
	// them have run since the last.
	budget := 0
	for _, f := range faults() {
		c.waitProgress(ids, 2*workers)
		t.Logf("fault: %s", f.name)
		f.inject(c)
		budget += f.maxRetries
	}

	// Every request ends.
	final := map[int64]schemas.WorkRequest{}
	deadline := time.Now().Add(time.Duration(n)*time.Second + 3*time.Minute)
	for len(final) < n {
		require.True(t, time.Now().Before(deadline), "only %d of %d requests ended", len(final), n)
		for _, id := range ids {
			if _, ok := final[id]; ok {
				continue
			}
			wr, err := c.api.GetWorkRequest(ctx, id)
			if err != nil {
				continue // an outage's tail
			}
			if schemas.Status(wr.Status).Terminal() {
				final[id] = wr
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, w := range c.workers {
		w.stop()
	}

	// The counts.
	ev := c.records()
	byReq := map[int64][]event{}
	for _, e := range ev {
		byReq[e.id] = append(byReq[e.id], e)
	}
	var success, failed, overlaps, notFinal, retries int
	for _, id := range ids {
		wr := final[id]
		retries += wr.WorkerLostRetries
		if wr.Result == schemas.ResultSuccess {
			success++
		} else {
			failed++
			t.Logf("request %d: %s/%s %s", id, wr.Status, wr.Result, wr.Reason)
		}
		// Each attempt's span: from its start to its last record.
		spans := map[int][2]int64{}
		ended := map[int]bool{}
		for _, e := range byReq[id] {
			s, ok := spans[e.attempt]
			if !ok || e.at < s[0] {
				s[0] = e.at
			}
			if e.at > s[1] {
				s[1] = e.at
			}
			spans[e.attempt] = s
			if e.kind == "end" {
				ended[e.attempt] = true
			}
		}
		atts := make([]int, 0, len(spans))
		for a := range spans {
			atts = append(atts, a)
		}
		sort.Ints(atts)
		for i := 1; i < len(atts); i++ {
			if spans[atts[i]][0] <= spans[atts[i-1]][1] {
				overlaps++
				t.Logf("request %d: attempts %d and %d ran at the same time", id, atts[i-1], atts[i])
			}
		}
		if wr.Result == schemas.ResultSuccess && !ended[wr.Attempt] {
			notFinal++
			t.Logf("request %d: success, but its final attempt %d did not run to its end (attempts %v)", id, wr.Attempt, atts)
		}
	}
	out, _ := exec.Command("pgrep", "-f", c.marker).Output()
	left := len(strings.Fields(string(out)))

	t.Logf("chaos: %d requests, %d faults: %d success, %d not success, %d lost, %d overlapping runs, %d results not from the final attempt, %d worker-lost retries (at most %d), %d processes left",
		n, len(faults()), success, failed, n-len(final), overlaps, notFinal, retries, budget, left)
	require.Equal(t, n, len(final), "lost requests")
	require.Equal(t, n, success, "every request succeeds in the end")
	require.Zero(t, overlaps, "runs of one request at the same time")
	require.Zero(t, notFinal, "results not from the final attempt")
	require.LessOrEqual(t, retries, budget, "more worker-lost retries than the faults explain")
	require.Zero(t, left, "processes left behind")
}

// waitProgress waits until k more runs have ended than when it was
// called, so that each fault strikes while work runs.
func (c *cluster) waitProgress(ids []int64, k int) {
	c.t.Helper()
	count := func() int {
		data, _ := os.ReadFile(filepath.Join(c.dir, "records"))
		return strings.Count(string(data), "end ")
	}
	start := count()
	deadline := time.Now().Add(2 * time.Minute)
	for count() < min(start+k, len(ids)) {
		require.True(c.t, time.Now().Before(deadline), "no progress")
		time.Sleep(100 * time.Millisecond)
	}
}
