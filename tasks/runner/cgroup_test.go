package runner

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestCgroupKillsEscapee(t *testing.T) {
	const grace = 300 * time.Millisecond
	parent := cgroupParent(t)
	cmd, pidFile := scriptCommand(t, treeScript)
	var out syncBuffer
	cmd.Output = &out
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)

	type ran struct {
		res Result
		err error
	}
	done := make(chan ran, 1)
	go func() {
		res, err := Run(ctx, cmd, Options{Grace: grace, Cgroup: CgroupRequire, CgroupParent: parent})
		done <- ran{res, err}
	}()
	procs := waitPids(t, pidFile, treeSize)
	waitOutput(t, &out, "ready")
	_, escaped := split(procs)
	require.Len(t, escaped, 1)
	st, err := readStat(escaped[0].pid)
	require.NoError(t, err)
	require.NotEqual(t, st.pgrp, readPgrpOfRun(t, procs), "the escapee must have left the process group")

	cancelled := time.Now()
	abort := errors.New("work request aborted")
	cancel(abort)
	r := <-done
	require.NoError(t, r.err)
	require.True(t, r.res.Cgroup)
	require.Empty(t, r.res.CgroupReason)
	require.ErrorIs(t, r.res.Cause, abort)
	allGone := waitGone(t, procs, cancelled.Add(grace+time.Second))
	require.LessOrEqual(t, allGone.Sub(cancelled), grace+time.Second)
	// cgroupParent's clean-up fails the test if the run cgroup is left.
}

// readPgrpOfRun is the process group of the run: that of the first child.
func readPgrpOfRun(t *testing.T, procs []testProc) int {
	t.Helper()
	for _, p := range procs {
		if p.kind == "child" {
			st, err := readStat(p.pid)
			require.NoError(t, err)
			return st.pgrp
		}
	}
	t.Fatal("no child listed")
	return 0
}

func TestCgroupSupport(t *testing.T) {
	parent := cgroupParent(t)
	ok, reason := CgroupSupport(parent)
	require.True(t, ok, reason)
	require.Contains(t, reason, parent)

	ok, reason = CgroupSupport(t.TempDir())
	require.False(t, ok)
	require.Contains(t, reason, "process group only")
}

// TestCgroupKillWithoutCgroupKill runs the fallback for kernels before 5.14,
// which have no cgroup.kill: every pid in cgroup.procs gets SIGKILL until
// none is left, including a process that left the process group.
func TestCgroupKillWithoutCgroupKill(t *testing.T) {
	parent := cgroupParent(t)
	cg, err := newRunCgroup(parent)
	require.NoError(t, err)
	cg.hasKill = false

	cmd, pidFile := scriptCommand(t, treeScript)
	c := exec.Command(cmd.Path)
	c.Env = cmd.Env
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, UseCgroupFD: true, CgroupFD: int(cg.fd.Fd())}
	require.NoError(t, c.Start())
	waited := false
	t.Cleanup(func() {
		if !waited {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	})
	cg.closeFD()
	procs := waitPids(t, pidFile, treeSize)

	require.NoError(t, cg.kill())
	pids, err := cg.procs()
	require.NoError(t, err)
	require.Empty(t, pids)
	// The main process is the test's own child and a zombie until reaped:
	// that must not keep the cgroup from being removed.
	require.NoError(t, cg.remove(time.Second))
	waitGone(t, procs, time.Now().Add(time.Second))
	waited = true
	require.Error(t, c.Wait())
	require.NoDirExists(t, cg.dir)
}

func TestCgroupDefaultParent(t *testing.T) {
	cgroupParent(t) // skips without cgroup v2
	res, err := Run(context.Background(), Command{Path: "true"}, Options{})
	require.NoError(t, err)
	require.True(t, res.Cgroup, res.CgroupReason)
	def, err := defaultCgroupParent()
	require.NoError(t, err)
	entries, err := os.ReadDir(def)
	require.NoError(t, err)
	for _, e := range entries {
		require.False(t, e.IsDir(), "run cgroup left behind: %s", e.Name())
	}
}

func TestParseCgroup2Mounts(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []cgroupMount
		wantErr bool
	}{
		{
			name: "hybrid",
			in: `30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`,
			want: []cgroupMount{{root: "/", point: "/sys/fs/cgroup/unified"}},
		},
		{
			name: "unified with optional fields",
			in:   "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 master:2 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n",
			want: []cgroupMount{{root: "/", point: "/sys/fs/cgroup"}},
		},
		{
			name: "bind mount of a sub-tree with a space",
			in:   `50 24 0:30 /kiln.slice /srv/my\040cgroup rw - cgroup2 cgroup2 rw` + "\n",
			want: []cgroupMount{{root: "/kiln.slice", point: "/srv/my cgroup"}},
		},
		{
			name:    "v1 only",
			in:      "31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n",
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseCgroup2Mounts(strings.NewReader(tt.in))
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestParseOwnCgroup(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr bool
	}{
		{name: "hybrid root", in: "4:memory:/x\n1:cpu:/\n0::/\n", want: "/"},
		{name: "systemd service", in: "0::/system.slice/kiln-worker.service\n", want: "/system.slice/kiln-worker.service"},
		{name: "v1 only", in: "4:memory:/x\n1:cpu:/\n", wantErr: true},
		{name: "outside the namespace root", in: "0::/../../user.slice\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseOwnCgroup(strings.NewReader(tt.in))
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestCgroupPath(t *testing.T) {
	tests := []struct {
		name    string
		mounts  []cgroupMount
		own     string
		want    string
		wantErr bool
	}{
		{name: "root mount", mounts: []cgroupMount{{"/", "/sys/fs/cgroup/unified"}}, own: "/", want: "/sys/fs/cgroup/unified"},
		{name: "service", mounts: []cgroupMount{{"/", "/sys/fs/cgroup"}}, own: "/system.slice/w.service", want: "/sys/fs/cgroup/system.slice/w.service"},
		{name: "sub-tree mount", mounts: []cgroupMount{{"/a", "/mnt"}}, own: "/a/b", want: "/mnt/b"},
		{name: "sub-tree mount, same path", mounts: []cgroupMount{{"/a", "/mnt"}}, own: "/a", want: "/mnt"},
		{name: "prefix is not a parent", mounts: []cgroupMount{{"/a", "/mnt"}}, own: "/ab", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := cgroupPath(tt.mounts, tt.own)
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestCgroupModeText(t *testing.T) {
	for _, m := range []CgroupMode{CgroupAuto, CgroupOff, CgroupRequire} {
		b, err := m.MarshalText()
		require.NoError(t, err)
		var got CgroupMode
		require.NoError(t, got.UnmarshalText(b))
		require.Equal(t, m, got)
	}
	var m CgroupMode
	require.Error(t, m.UnmarshalText([]byte("yes")))
	_, err := CgroupMode(7).MarshalText()
	require.Error(t, err)
}

func TestParseStat(t *testing.T) {
	tests := []struct {
		in      string
		want    procStat
		wantErr bool
	}{
		{in: "42 (sleep) S 1 40 40 0 -1", want: procStat{state: 'S', pgrp: 40}},
		{in: "42 (a) (b) c) Z 1 7 7 0", want: procStat{state: 'Z', pgrp: 7}},
		{in: "42 (sleep) S 1 40 40 0 -1 4194560 107 0 0 0 0 0 0 0 20 0 1 0 8812345 2445312 128", want: procStat{state: 'S', pgrp: 40, startTime: 8812345}},
		{in: "42 (sleep) S 1 40 40 0 -1 4194560 107 0 0 0 0 0 0 0 20 0 1 0 x 2445312 128", wantErr: true},
		{in: "42 (sh", wantErr: true},
		{in: "42 (sh) R 1", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseStat([]byte(tt.in))
		if tt.wantErr {
			require.Error(t, err, tt.in)
			continue
		}
		require.NoError(t, err, tt.in)
		require.Equal(t, tt.want, got, tt.in)
	}
}

func TestEnsureCgroupDirOutsideCgroupfs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "kiln")
	require.ErrorContains(t, ensureCgroupDir(dir), "not on a cgroup2 file system")
	require.NoDirExists(t, dir, "must not create directories outside cgroupfs")
}
