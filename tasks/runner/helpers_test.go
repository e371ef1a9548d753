package runner

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestMain removes the default cgroup parent if the tests created it, so
// that a test run leaves no cgroup directory behind.
func TestMain(m *testing.M) {
	parent, err := defaultCgroupParent()
	existed := err == nil && dirExists(parent)
	code := m.Run()
	if err == nil && !existed && dirExists(parent) {
		if left := removeCgroupTree(parent); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "run cgroups left behind in %s: %v\n", parent, left)
			code = 1
		}
		if err := syscall.Rmdir(parent); err != nil {
			fmt.Fprintf(os.Stderr, "remove %s: %v\n", parent, err)
			code = 1
		}
	}
	os.Exit(code)
}

// removeCgroupTree kills and removes the cgroups below dir, so that even a
// failed test leaves nothing running, and returns their names.
func removeCgroupTree(dir string) []string {
	var left []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		left = append(left, e.Name())
		sub := filepath.Join(dir, e.Name())
		_ = os.WriteFile(filepath.Join(sub, "cgroup.kill"), []byte("1"), 0)
		deadline := time.Now().Add(5 * time.Second)
		for syscall.Rmdir(sub) != nil && time.Now().Before(deadline) {
			pause()
		}
	}
	return left
}

func dirExists(dir string) bool {
	st, err := os.Stat(dir)
	return err == nil && st.IsDir()
}

// treeSpawn starts, then prints "ready", every kind of descendant a real
// command leaves: a child, a grandchild through a subshell, an orphan that
// double-forked with nohup (still in the process group), and an escapee that
// called setsid (out of the group, still holding stdout). Each writes
// "KIND PID" to $PIDS before "ready".
const treeSpawn = `
sleep 1000 &
echo "child $!" >> "$PIDS"
( sleep 1000 & echo "grandchild $!" >> "$PIDS"; wait ) &
echo "subshell $!" >> "$PIDS"
( nohup sh -c 'echo "orphan $$" >> "$PIDS"; exec sleep 1000' >/dev/null 2>&1 & )
setsid sh -c 'echo "escapee $$" >> "$PIDS"; exec sleep 1000' &
until [ "$(wc -l < "$PIDS")" -ge 5 ]; do sleep 0.01; done
echo ready
`

// treeScript is treeSpawn, then waiting for the whole tree.
const treeScript = treeSpawn + "wait\n"

// treeSize is how many lines treeScript writes to $PIDS.
const treeSize = 5

// scriptCommand writes body as a shell script into a temporary directory and
// returns a Command that runs it with $PIDS set, and the path of $PIDS.
func scriptCommand(t *testing.T, body string) (Command, string) {
	t.Helper()
	dir := t.TempDir()
	script := filepath.Join(dir, "run.sh")
	require.NoError(t, os.WriteFile(script, []byte("#!/bin/sh\n"+body), 0o755))
	pids := filepath.Join(dir, "pids")
	require.NoError(t, os.WriteFile(pids, nil, 0o644))
	return Command{Path: script, Env: append(os.Environ(), "PIDS="+pids)}, pids
}

// proc is a process the test command reported.
type testProc struct {
	kind string
	pid  int
}

// readPids returns the processes listed in $PIDS so far.
func readPids(file string) ([]testProc, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var procs []testProc
	s := bufio.NewScanner(strings.NewReader(string(b)))
	for s.Scan() {
		kind, num, ok := strings.Cut(s.Text(), " ")
		if pid, err := strconv.Atoi(num); ok && err == nil {
			procs = append(procs, testProc{kind, pid})
		}
	}
	return procs, s.Err()
}

// waitPids polls $PIDS until it lists n processes and returns them. Every
// listed process is killed when the test ends, should Run have let any
// survive, so that a failing test leaves nothing running.
func waitPids(t *testing.T, file string, n int) []testProc {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		procs, err := readPids(file)
		require.NoError(t, err)
		if len(procs) >= n {
			t.Cleanup(func() {
				for _, p := range procs {
					if !gone(p.pid) && isSleep(p.pid) {
						_ = syscall.Kill(p.pid, syscall.SIGKILL)
					}
				}
			})
			return procs
		}
		require.True(t, time.Now().Before(deadline), "only %d of %d processes reported: %v", len(procs), n, procs)
		pause()
	}
}

// pause is the poll interval of the tests' deadline loops.
func pause() {
	t := time.NewTimer(5 * time.Millisecond)
	<-t.C
}

// isSleep guards the clean-up kill against a pid reused by an unrelated
// process.
func isSleep(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.HasPrefix(string(b), "sleep\x00")
}

// gone reports whether pid no longer runs: it does not exist, or it is a
// zombie. A zombie counts as gone because none of these processes is the
// test's own child (Run reaps the one that is); orphans wait for init.
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return true
	}
	for _, line := range strings.Split(string(b), "\n") {
		if state, ok := strings.CutPrefix(line, "State:"); ok {
			state = strings.TrimSpace(state)
			return strings.HasPrefix(state, "Z") || strings.HasPrefix(state, "X")
		}
	}
	return false
}

// waitGone polls until every process in procs is gone and returns when that
// was seen; it fails the test at deadline naming the survivors.
func waitGone(t *testing.T, procs []testProc, deadline time.Time) time.Time {
	t.Helper()
	for {
		var alive []testProc
		for _, p := range procs {
			if !gone(p.pid) {
				alive = append(alive, p)
			}
		}
		if len(alive) == 0 {
			return time.Now()
		}
		require.True(t, time.Now().Before(deadline), "still running: %v", alive)
		pause()
	}
}

// waitOutput polls until buf contains want, for commands whose readiness is
// announced on their output.
func waitOutput(t *testing.T, buf *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(buf.String(), want) {
		require.True(t, time.Now().Before(deadline), "output %q never contained %q", buf.String(), want)
		pause()
	}
}

// split separates the processes that stayed in the process group from the
// setsid escapee.
func split(procs []testProc) (group, escaped []testProc) {
	for _, p := range procs {
		if p.kind == "escapee" {
			escaped = append(escaped, p)
		} else {
			group = append(group, p)
		}
	}
	return group, escaped
}

// cgroupParent returns a fresh cgroup parent for one test, removed when the
// test ends. Without cgroup v2 support it skips the test, or fails it when
// KILN_REQUIRE_ALL=1.
func cgroupParent(t *testing.T) string {
	t.Helper()
	if ok, reason := CgroupSupport(""); !ok {
		if os.Getenv("KILN_REQUIRE_ALL") == "1" {
			t.Fatalf("cgroup v2 required (KILN_REQUIRE_ALL=1) but unavailable: %s", reason)
		}
		t.Skipf("cgroup v2 unavailable: %s", reason)
	}
	def, err := defaultCgroupParent()
	require.NoError(t, err)
	parent, err := os.MkdirTemp(filepath.Dir(def), "kiln-test-")
	require.NoError(t, err)
	t.Cleanup(func() {
		if left := removeCgroupTree(parent); len(left) > 0 {
			t.Errorf("run cgroups left behind: %v", left)
		}
		require.NoError(t, syscall.Rmdir(parent))
	})
	return parent
}
