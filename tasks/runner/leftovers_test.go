package runner

import (
	"context"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRunOnStart(t *testing.T) {
	modes := []CgroupMode{CgroupOff}
	if ok, reason := CgroupSupport(""); ok {
		modes = append(modes, CgroupRequire)
	} else {
		t.Logf("cgroup v2 unavailable, testing the process group only: %s", reason)
	}
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			opt := Options{Cgroup: mode, Grace: time.Second}
			if mode == CgroupRequire {
				opt.CgroupParent = cgroupParent(t)
			}
			cmd, pidFile := scriptCommand(t, treeScript)
			started := make(chan Process, 1)
			calls := 0
			opt.OnStart = func(p Process) { calls++; started <- p }
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan Result, 1)
			go func() {
				res, err := Run(ctx, cmd, opt)
				if err != nil {
					t.Errorf("Run: %v", err)
				}
				done <- res
			}()
			var p Process
			select {
			case p = <-started:
			case <-time.After(10 * time.Second):
				t.Fatal("OnStart was not called")
			}
			procs := waitPids(t, pidFile, treeSize)
			st, err := readStat(p.PGID)
			require.NoError(t, err)
			require.Equal(t, p.PGID, st.pgrp, "the main process leads its group")
			require.NotZero(t, p.StartTime)
			require.Equal(t, st.startTime, p.StartTime)
			require.Equal(t, bootID(), p.BootID)
			require.NotEmpty(t, p.BootID)
			if mode == CgroupRequire {
				require.Equal(t, opt.CgroupParent, filepath.Dir(p.Cgroup))
				require.DirExists(t, p.Cgroup)
			} else {
				require.Empty(t, p.Cgroup)
			}
			cancel()
			res := <-done
			require.True(t, res.Killed)
			require.Equal(t, 1, calls)
			group, _ := split(procs)
			waitGone(t, group, time.Now().Add(time.Second))
		})
	}
}

// TestKillLeftovers plays a worker's next life: a command that a dead
// worker started still runs, and KillLeftovers, given only the Process that
// OnStart reported, kills it.
func TestKillLeftovers(t *testing.T) {
	modes := []CgroupMode{CgroupOff}
	if ok, reason := CgroupSupport(""); ok {
		modes = append(modes, CgroupRequire)
	} else {
		t.Logf("cgroup v2 unavailable, testing the process group only: %s", reason)
	}
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			var cg *runCgroup
			if mode == CgroupRequire {
				var err error
				cg, err = newRunCgroup(cgroupParent(t))
				require.NoError(t, err)
			}
			cmd, pidFile := scriptCommand(t, treeScript)
			c := newCmd(cmd, Options{}.withDefaults(), nil, cg)
			require.NoError(t, c.Start())
			waited := false
			t.Cleanup(func() {
				if !waited {
					_ = c.Process.Kill()
					_ = c.Wait()
				}
			})
			if cg != nil {
				cg.closeFD()
			}
			p := newProcess(c.Process.Pid, cg)
			procs := waitPids(t, pidFile, treeSize)

			// Another boot: nothing of it can be left, nothing is done.
			other := p
			other.BootID = "another-boot"
			n, err := KillLeftovers(other)
			require.NoError(t, err)
			require.Zero(t, n)
			// A reused pid (another start time) is never signalled.
			reused := p
			reused.StartTime++
			reused.Cgroup = ""
			n, err = KillLeftovers(reused)
			require.NoError(t, err)
			require.Zero(t, n)
			for _, proc := range procs {
				require.False(t, gone(proc.pid), "%v killed through a reused pid", proc)
			}

			n, err = KillLeftovers(p)
			require.NoError(t, err)
			group, escaped := split(procs)
			require.GreaterOrEqual(t, n, len(group))
			waitGone(t, group, time.Now().Add(time.Second))
			if mode == CgroupRequire {
				// The whole cgroup: the escapee too, and the directory.
				waitGone(t, escaped, time.Now().Add(time.Second))
				require.NoDirExists(t, p.Cgroup)
			} else {
				for _, proc := range escaped {
					require.False(t, gone(proc.pid), "the escapee left the group: only a cgroup reaches it")
				}
			}
			waited = true
			require.Error(t, c.Wait())
			// Again: nothing left, nothing to do.
			n, err = KillLeftovers(p)
			require.NoError(t, err)
			require.Zero(t, n)
		})
	}
}

// TestKillLeftoversLeaderGone: a group whose leader has gone cannot be told
// from the group of a process that reused the pid, so without a cgroup its
// members are left alone and the error says so.
func TestKillLeftoversLeaderGone(t *testing.T) {
	c := exec.Command("sh", "-c", `sleep 1000 >/dev/null 2>&1 & echo $!`)
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	out, err := c.Output()
	require.NoError(t, err)
	orphan, err := strconv.Atoi(strings.TrimSpace(string(out)))
	require.NoError(t, err)
	t.Cleanup(func() {
		if isSleep(orphan) {
			_ = syscall.Kill(orphan, syscall.SIGKILL)
		}
	})
	st, err := readStat(orphan)
	require.NoError(t, err)
	require.Equal(t, c.Process.Pid, st.pgrp)

	n, err := KillLeftovers(Process{PGID: c.Process.Pid, StartTime: 1, BootID: bootID()})
	require.ErrorContains(t, err, "outlived its leader")
	require.Zero(t, n)
	require.False(t, gone(orphan))
}

func TestKillLeftoversRefusesOtherCgroups(t *testing.T) {
	for _, dir := range []string{"/sys/fs/cgroup", "relative/run-1", "/sys/fs/cgroup/x/../run-1", t.TempDir()} {
		n, err := KillLeftovers(Process{Cgroup: dir})
		require.ErrorContains(t, err, "left alone", dir)
		require.Zero(t, n)
	}
	// A run-* directory that is not a cgroup is left alone too.
	dir := filepath.Join(t.TempDir(), "run-123")
	require.NoError(t, exec.Command("mkdir", dir).Run())
	_, err := KillLeftovers(Process{Cgroup: dir})
	require.ErrorContains(t, err, "not on a cgroup2 file system")
	require.DirExists(t, dir)
	// One that is gone already is nothing to do.
	n, err := KillLeftovers(Process{Cgroup: "/sys/fs/cgroup/kiln/run-gone"})
	require.NoError(t, err)
	require.Zero(t, n)
}
