package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// syncBuffer is a bytes.Buffer the test may read while Run writes to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestRunExitAndOutput(t *testing.T) {
	var seq strings.Builder
	for i := 1; i <= 20000; i++ {
		fmt.Fprintf(&seq, "%d\n", i)
	}
	tests := []struct {
		name       string
		script     string
		wantCode   int
		wantSignal string
		wantOutput string
	}{
		{name: "success", script: "echo out\necho err >&2\nexit 0\n", wantCode: 0, wantOutput: "out\nerr\n"},
		{name: "failure", script: "echo failing >&2\nexit 3\n", wantCode: 3, wantOutput: "failing\n"},
		// More than a pipe buffer, written right before exit: all of it
		// must arrive, in order, stdout and stderr interleaved as written.
		{name: "large output", script: "echo first >&2\nseq 1 20000\necho last >&2\n", wantOutput: "first\n" + seq.String() + "last\n"},
		{name: "killed by a signal", script: "echo bye\nkill -KILL $$\n", wantCode: -1, wantSignal: "SIGKILL", wantOutput: "bye\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd, _ := scriptCommand(t, tt.script)
			var out syncBuffer
			cmd.Output = &out
			res, err := Run(context.Background(), cmd, Options{})
			require.NoError(t, err)
			require.Equal(t, tt.wantCode, res.ExitCode)
			require.Equal(t, tt.wantSignal, res.Signal)
			require.Equal(t, tt.wantOutput, out.String())
			require.False(t, res.Killed)
			require.NoError(t, res.Cause)
			require.Zero(t, res.Leftovers)
			require.NoError(t, res.OutputErr)
		})
	}
}

func TestRunArgsDirEnvStdin(t *testing.T) {
	dir := t.TempDir()
	var out syncBuffer
	res, err := Run(context.Background(), Command{
		Path:   "sh",
		Args:   []string{"-c", `echo "$1 $(pwd) $KILN_X"; cat`, "sh", "arg"},
		Dir:    dir,
		Env:    []string{"KILN_X=env", "PATH=" + os.Getenv("PATH")},
		Stdin:  strings.NewReader("from stdin\n"),
		Output: &out,
	}, Options{})
	require.NoError(t, err)
	require.Equal(t, 0, res.ExitCode)
	require.Equal(t, "arg "+dir+" env\nfrom stdin\n", out.String())
}

func TestRunAbort(t *testing.T) {
	const grace = 300 * time.Millisecond
	tests := []struct {
		name       string
		script     string
		extra      int // processes listed beyond the tree
		wantSignal string
		waitsGrace bool // something ignores SIGTERM until SIGKILL
	}{
		// sh dies of SIGTERM, and so do its sleeps.
		{name: "terminates on SIGTERM", script: treeScript, wantSignal: "SIGTERM"},
		// Ignored signals stay ignored across fork and exec, so the whole
		// tree ignores SIGTERM and must be SIGKILLed after the grace.
		{name: "ignores SIGTERM", script: "trap '' TERM\n" + treeScript, wantSignal: "SIGKILL", waitsGrace: true},
		// The main process ends on SIGTERM, a child that ignores it is
		// SIGKILLed when the same grace period is over.
		{
			name:       "child ignores SIGTERM",
			script:     treeSpawn + "sh -c 'trap \"\" TERM; echo \"stubborn $$\" >> \"$PIDS\"; exec sleep 1000' &\nwait\n",
			extra:      1,
			wantSignal: "SIGTERM",
			waitsGrace: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd, pidFile := scriptCommand(t, tt.script)
			var out syncBuffer
			cmd.Output = &out
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			abort := errors.New("aborted by user")

			type ran struct {
				res Result
				err error
			}
			done := make(chan ran, 1)
			go func() {
				res, err := Run(ctx, cmd, Options{Grace: grace})
				done <- ran{res, err}
			}()
			procs := waitPids(t, pidFile, treeSize+tt.extra)
			waitOutput(t, &out, "ready")

			cancelled := time.Now()
			cancel(abort)
			r := <-done
			require.NoError(t, r.err)
			res := r.res

			require.True(t, res.Killed)
			require.ErrorIs(t, res.Cause, abort)
			require.Equal(t, -1, res.ExitCode)
			require.Equal(t, tt.wantSignal, res.Signal)
			if tt.waitsGrace {
				require.GreaterOrEqual(t, time.Since(cancelled), grace, "SIGKILL came before the grace period was over")
			}
			if tt.extra > 0 {
				require.Positive(t, res.Leftovers)
			}

			require.Equal(t, cgroupOK(), res.Cgroup, res.CgroupReason)
			group, escaped := split(procs)
			if res.Cgroup {
				group = append(group, escaped...)
			} else {
				t.Logf("no cgroup (%s): only the process group is checked; the setsid escapee is killed by the test", res.CgroupReason)
			}
			allGone := waitGone(t, group, cancelled.Add(grace+time.Second))
			require.LessOrEqual(t, allGone.Sub(cancelled), grace+time.Second)
		})
	}
}

func TestRunLeftoversAfterExit(t *testing.T) {
	const (
		leftoverGrace = 200 * time.Millisecond
		waitDelay     = 500 * time.Millisecond
	)
	// Both leftovers inherit stdout: the sleep in the group and the setsid
	// escapee hold the pipe open after the script exits.
	const script = `
sleep 1000 &
echo "child $!" >> "$PIDS"
setsid sh -c 'echo "escapee $$" >> "$PIDS"; exec sleep 1000' &
until [ "$(wc -l < "$PIDS")" -ge 2 ]; do sleep 0.01; done
echo bye
exit 0
`
	modes := []CgroupMode{CgroupOff}
	if ok, reason := CgroupSupport(""); ok {
		modes = append(modes, CgroupRequire)
	} else {
		t.Logf("cgroup v2 unavailable, testing the process group only: %s", reason)
	}
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			cmd, pidFile := scriptCommand(t, script)
			var out syncBuffer
			cmd.Output = &out
			opt := Options{LeftoverGrace: leftoverGrace, WaitDelay: waitDelay, Cgroup: mode}
			if mode == CgroupRequire {
				opt.CgroupParent = cgroupParent(t)
			}

			started := time.Now()
			res, err := Run(context.Background(), cmd, opt)
			require.NoError(t, err)
			// Even with an escapee holding the pipe, Run returns after the
			// leftover grace and WaitDelay, not when the escapee ends.
			require.Less(t, time.Since(started), leftoverGrace+waitDelay+2*time.Second)

			require.Equal(t, 0, res.ExitCode)
			require.False(t, res.Killed)
			require.NoError(t, res.Cause)
			require.Equal(t, "bye\n", out.String())
			procs := waitPids(t, pidFile, 2)
			group, escaped := split(procs)
			waitGone(t, group, time.Now().Add(time.Second))

			if mode == CgroupRequire {
				require.True(t, res.Cgroup)
				require.Equal(t, 2, res.Leftovers)
				waitGone(t, escaped, time.Now().Add(time.Second))
				require.NoError(t, res.OutputErr)
				return
			}
			// Without a cgroup the escapee survives and keeps the pipe:
			// that is the documented limit of the process group.
			require.False(t, res.Cgroup)
			require.NotEmpty(t, res.CgroupReason)
			require.Equal(t, 1, res.Leftovers)
			for _, p := range escaped {
				require.False(t, gone(p.pid), "escapee %d died without a cgroup", p.pid)
			}
			require.ErrorIs(t, res.OutputErr, ErrOutputHeld)
		})
	}
}

func TestRunFinalize(t *testing.T) {
	errPowerOff := errors.New("power off failed")
	withCgroup := cgroupOK()
	tests := []struct {
		name       string
		abort      bool
		finalize   func(ctx context.Context) error
		timeout    time.Duration
		wantErr    error
		wantErrMsg string
	}{
		{name: "after exit", finalize: func(context.Context) error { return nil }},
		{name: "after abort", abort: true, finalize: func(context.Context) error { return nil }},
		{name: "error is reported", finalize: func(context.Context) error { return errPowerOff }, wantErr: errPowerOff},
		{
			name:     "bounded by its context",
			finalize: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() },
			timeout:  100 * time.Millisecond,
			wantErr:  context.DeadlineExceeded,
		},
		{name: "panic is reported", finalize: func(context.Context) error { panic("relay stuck") }, wantErrMsg: "relay stuck"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// After exit, the tree is left behind; after an abort, it is
			// killed with the main process. Either way Finalize must find
			// every process gone.
			script := treeSpawn + "exit 0\n"
			if tt.abort {
				script = treeScript
			}
			cmd, pidFile := scriptCommand(t, script)
			var out syncBuffer
			cmd.Output = &out
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)

			// What Finalize saw, sent before it calls tt.finalize so that
			// the test can read it even when Run abandons Finalize.
			type seen struct {
				ctxErr error
				alive  []testProc
				err    error
			}
			seenc := make(chan seen, 1)
			opt := Options{
				Grace:           200 * time.Millisecond,
				LeftoverGrace:   100 * time.Millisecond,
				FinalizeTimeout: tt.timeout,
				Finalize: func(fctx context.Context) error {
					s := seen{ctxErr: fctx.Err()}
					var procs []testProc
					procs, s.err = readPids(pidFile)
					if !withCgroup {
						procs, _ = split(procs)
					}
					for _, p := range procs {
						if !gone(p.pid) {
							s.alive = append(s.alive, p)
						}
					}
					seenc <- s
					return tt.finalize(fctx)
				},
			}
			type ran struct {
				res Result
				err error
			}
			done := make(chan ran, 1)
			go func() {
				res, err := Run(ctx, cmd, opt)
				done <- ran{res, err}
			}()
			if tt.abort {
				waitOutput(t, &out, "ready")
				cancel(errors.New("stop"))
			}
			r := <-done
			require.NoError(t, r.err)
			waitPids(t, pidFile, treeSize) // kills survivors at the end of a failed test
			require.Len(t, seenc, 1, "Finalize must run exactly once")
			s := <-seenc
			require.NoError(t, s.err)
			require.NoError(t, s.ctxErr, "Finalize got a cancelled context")
			require.Empty(t, s.alive, "Finalize ran while processes of the run were alive")
			require.Equal(t, tt.abort, r.res.Killed)
			switch {
			case tt.wantErr != nil:
				require.ErrorIs(t, r.res.FinalizeErr, tt.wantErr)
			case tt.wantErrMsg != "":
				require.ErrorContains(t, r.res.FinalizeErr, tt.wantErrMsg)
			default:
				require.NoError(t, r.res.FinalizeErr)
			}
		})
	}
}

func cgroupOK() bool {
	ok, _ := CgroupSupport("")
	return ok
}

func TestRunFinalizeIgnoringItsContext(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	const timeout = 100 * time.Millisecond
	started := time.Now()
	res, err := Run(context.Background(), Command{Path: "true"}, Options{
		FinalizeTimeout: timeout,
		Finalize:        func(context.Context) error { <-release; return nil },
	})
	require.NoError(t, err)
	require.ErrorIs(t, res.FinalizeErr, context.DeadlineExceeded)
	require.Less(t, time.Since(started), timeout+5*time.Second)
}

func TestRunNotStarted(t *testing.T) {
	cancelled, cancel := context.WithCancelCause(context.Background())
	cause := errors.New("aborted before start")
	cancel(cause)
	tests := []struct {
		name    string
		ctx     context.Context
		cmd     Command
		opt     Options
		wantErr error
	}{
		{name: "missing program", ctx: context.Background(), cmd: Command{Path: "/nonexistent/kiln-test"}, wantErr: os.ErrNotExist},
		{name: "cancelled before start", ctx: cancelled, cmd: Command{Path: "true"}, wantErr: cause},
		{name: "cgroup required but parent is no cgroup", ctx: context.Background(), cmd: Command{Path: "true"}, opt: Options{Cgroup: CgroupRequire, CgroupParent: t.TempDir()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			tt.opt.Finalize = func(context.Context) error { calls.Add(1); return nil }
			var out syncBuffer
			tt.cmd.Output = &out
			_, err := Run(tt.ctx, tt.cmd, tt.opt)
			require.Error(t, err)
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
			}
			require.EqualValues(t, 1, calls.Load(), "Finalize must run even when nothing started")
		})
	}
}

func TestRunCgroupFallback(t *testing.T) {
	// A parent that is no cgroup: Auto runs the command anyway and says why
	// it had no cgroup.
	res, err := Run(context.Background(), Command{Path: "true"}, Options{CgroupParent: t.TempDir()})
	require.NoError(t, err)
	require.Equal(t, 0, res.ExitCode)
	require.False(t, res.Cgroup)
	require.Contains(t, res.CgroupReason, "not on a cgroup2 file system")

	res, err = Run(context.Background(), Command{Path: "true"}, Options{Cgroup: CgroupOff})
	require.NoError(t, err)
	require.False(t, res.Cgroup)
	require.NotEmpty(t, res.CgroupReason)
}

func TestSignalName(t *testing.T) {
	require.Equal(t, "SIGTERM", signalName(syscall.SIGTERM))
	require.Equal(t, "signal 64", signalName(syscall.Signal(64)))
}

// On kernels before 5.7 (no CLONE_INTO_CGROUP), or under a seccomp filter
// that refuses clone3, starting in the cgroup fails: Auto must run the
// command without one and say why; Require must not run it.
func TestRunStartInCgroupFails(t *testing.T) {
	defer func(orig func(string) (*runCgroup, error)) { newCgroup = orig }(newCgroup)
	newCgroup = func(string) (*runCgroup, error) {
		// A directory that is no cgroup: clone3 rejects its descriptor.
		dir := filepath.Join(t.TempDir(), "fake")
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, err
		}
		fd, err := os.Open(dir)
		if err != nil {
			return nil, err
		}
		return &runCgroup{dir: dir, fd: fd, hasKill: true}, nil
	}

	var out syncBuffer
	res, err := Run(context.Background(), Command{Path: "sh", Args: []string{"-c", "echo ran"}, Output: &out}, Options{})
	require.NoError(t, err)
	require.Equal(t, 0, res.ExitCode)
	require.Equal(t, "ran\n", out.String())
	require.False(t, res.Cgroup)
	require.Contains(t, res.CgroupReason, "start in cgroup")

	var calls atomic.Int32
	_, err = Run(context.Background(), Command{Path: "sh", Args: []string{"-c", "echo ran"}}, Options{
		Cgroup:   CgroupRequire,
		Finalize: func(context.Context) error { calls.Add(1); return nil },
	})
	require.Error(t, err)
	require.EqualValues(t, 1, calls.Load())
}
