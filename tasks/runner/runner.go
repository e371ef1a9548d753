package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// Defaults of the Options fields; a zero field means its default.
const (
	DefaultGrace           = 10 * time.Second
	DefaultLeftoverGrace   = 1 * time.Second
	DefaultWaitDelay       = 2 * time.Second
	DefaultFinalizeTimeout = 30 * time.Second
)

// killTimeout bounds how long Run waits for processes to disappear after
// SIGKILL. Only a process stuck in uninterruptible sleep (a hung NFS mount, a
// broken device) takes longer; Run then gives up and logs rather than hang the
// worker.
const killTimeout = 5 * time.Second

// pollInterval is how often Run looks at the process group or the cgroup
// while waiting for them to empty. Processes exit in microseconds to a few
// milliseconds after a signal, so 10ms keeps the added latency small without
// scanning /proc in a tight loop.
const pollInterval = 10 * time.Millisecond

// ErrOutputHeld is reported in Result.OutputErr when the output pipe was
// still open WaitDelay after the command and its leftovers were killed: some
// process that escaped the run still holds it.
var ErrOutputHeld = errors.New("output pipe still held open")

// Options says how Run contains and stops a command. The zero value is
// ready to use: every zero field means the documented default.
type Options struct {
	// Grace is how long the process group has between SIGTERM and SIGKILL
	// when ctx is done. Default DefaultGrace (10s).
	Grace time.Duration
	// LeftoverGrace is the same for processes left behind after the main
	// process exited on its own (a backgrounded daemon). Default
	// DefaultLeftoverGrace (1s).
	LeftoverGrace time.Duration
	// WaitDelay bounds how long Run keeps reading output after the command
	// and its leftovers were killed, for a process that escaped the kill
	// and still holds the pipe. Default DefaultWaitDelay (2s).
	WaitDelay time.Duration
	// Cgroup says whether the run gets its own cgroup v2. Default
	// CgroupAuto.
	Cgroup CgroupMode
	// CgroupParent is the cgroup v2 directory under which each run gets its
	// own child cgroup. It is created if missing (its parent must exist).
	// Default: "kiln" below this process's own cgroup v2 directory.
	CgroupParent string
	// Finalize, if set, runs exactly once after everything else, whatever
	// happened (even when the command could not start): for example to
	// power off a device under test. Its error goes to Result.FinalizeErr.
	Finalize func(context.Context) error
	// FinalizeTimeout bounds Finalize: its context is cancelled then, and Run
	// returns then even if Finalize ignores its context. Default
	// DefaultFinalizeTimeout (30s).
	FinalizeTimeout time.Duration
	// Logger receives what happened (signals sent, leftovers, cgroup
	// fallbacks). Default: the zero zerolog.Logger, which logs nothing.
	Logger zerolog.Logger
	// OnStart, if set, is called once the command has started, before Run
	// waits for it, with what identifies its process group and cgroup: a
	// worker journals it so that, should it die, its next life can kill
	// what the run left (KillLeftovers). Run waits for it to return.
	OnStart func(Process)
}

func (o Options) withDefaults() Options {
	if o.Grace <= 0 {
		o.Grace = DefaultGrace
	}
	if o.LeftoverGrace <= 0 {
		o.LeftoverGrace = DefaultLeftoverGrace
	}
	if o.WaitDelay <= 0 {
		o.WaitDelay = DefaultWaitDelay
	}
	if o.FinalizeTimeout <= 0 {
		o.FinalizeTimeout = DefaultFinalizeTimeout
	}
	return o
}

// Command is the program to run.
type Command struct {
	// Path is the program; without a slash it is looked up in PATH.
	Path string
	// Args are the arguments after the program name.
	Args []string
	// Dir is the working directory; empty means the caller's.
	Dir string
	// Env is the environment; nil means the caller's environment.
	Env []string
	// Stdin is the standard input; nil means /dev/null. A reader that is not
	// an *os.File is copied by a goroutine, as in os/exec.
	Stdin io.Reader
	// Output receives standard output and standard error, combined through
	// one pipe, so it is only ever called from one goroutine at a time. It
	// gets everything the command wrote before it exited. Nil discards.
	// Output must not block forever: Run waits for it.
	Output io.Writer
}

// Result is what happened to a command that started.
type Result struct {
	// ExitCode is the main process's exit status, -1 if a signal ended it.
	ExitCode int
	// Signal names the signal that ended the main process ("SIGTERM",
	// "SIGKILL", …), empty if it exited.
	Signal string
	// Killed is true when Run signalled the command because ctx was done.
	Killed bool
	// Cause is why Run stopped the command (context.Cause of ctx), nil when
	// the command exited on its own.
	Cause error
	// Leftovers counts the processes of the run still alive when the main
	// process had exited; Run killed them.
	Leftovers int
	// Cgroup is true when the run had its own cgroup v2, so that processes
	// that left the process group were killed too.
	Cgroup bool
	// CgroupReason says why Cgroup is false.
	CgroupReason string
	// Duration runs from start until the command and its leftovers were gone
	// and output was read; it does not include Finalize.
	Duration time.Duration
	// OutputErr is the first error writing to Command.Output, or
	// ErrOutputHeld.
	OutputErr error
	// FinalizeErr is the error of Options.Finalize, if it failed or timed
	// out.
	FinalizeErr error
}

// Run runs cmd and returns when it, every process it started and its output
// pipe are done, and Finalize has run. When ctx is done, the process group
// gets SIGTERM, then SIGKILL after Options.Grace; with a cgroup, the whole
// cgroup is killed too. Processes left after the main process exits get the
// same treatment with Options.LeftoverGrace. Run returns an error only when
// the command could not be started; the Result then carries at most
// FinalizeErr and CgroupReason.
func Run(ctx context.Context, cmd Command, opt Options) (res Result, err error) {
	opt = opt.withDefaults()
	log := opt.Logger.With().Str("command", cmd.Path).Logger()
	if opt.Finalize != nil {
		defer func() { res.FinalizeErr = finalize(ctx, opt, log) }()
	}
	if ctx.Err() != nil {
		return res, fmt.Errorf("run %s: not started: %w", cmd.Path, context.Cause(ctx))
	}
	p, err := start(cmd, opt, &res, log)
	if err != nil {
		return res, err
	}
	started := time.Now()
	p.log.Debug().Int("pid", p.pgid).Bool("cgroup", p.cg != nil).Msg("command started")
	if opt.OnStart != nil {
		opt.OnStart(p.process)
	}

	termSent := false
	var killAt time.Time
	select {
	case <-p.done:
	case <-ctx.Done():
		select {
		case <-p.done:
			// The command exited on its own while ctx was being cancelled:
			// report the exit, not an abort.
		default:
			res.Killed = true
			res.Cause = context.Cause(ctx)
			p.log.Info().AnErr("cause", res.Cause).Dur("grace", opt.Grace).Msg("stopping command: SIGTERM to its process group")
			p.signalGroup(syscall.SIGTERM)
			termSent = true
			killAt = time.Now().Add(opt.Grace)
			t := time.NewTimer(opt.Grace)
			select {
			case <-p.done:
				t.Stop()
			case <-t.C:
				p.log.Warn().Msg("grace period over: SIGKILL to the command")
				p.killAll()
				<-p.done
			}
		}
	}
	res.ExitCode, res.Signal = exitStatus(p.cmd.ProcessState)
	if p.waitErr != nil {
		var exitErr *exec.ExitError
		if !errors.As(p.waitErr, &exitErr) {
			p.log.Warn().Err(p.waitErr).Msg("waiting for command")
		}
	}

	res.Leftovers = p.stopLeftovers(termSent, killAt, opt.LeftoverGrace)
	if p.out != nil {
		res.OutputErr = p.out.wait(opt.WaitDelay)
	}
	if p.cg != nil {
		if err := p.cg.remove(killTimeout); err != nil {
			p.log.Error().Err(err).Msg("removing the run's cgroup")
		}
	}
	res.Duration = time.Since(started)
	return res, nil
}

// proc is one started command.
type proc struct {
	cmd  *exec.Cmd
	pgid int        // the main process's pid, which is also its session and group id
	cg   *runCgroup // nil without a cgroup
	out  *output    // nil without Output
	log  zerolog.Logger
	// process identifies the group and cgroup for Options.OnStart.
	process Process

	done    chan struct{} // closed when cmd.Wait has returned
	waitErr error         // cmd.Wait's error, read after done
}

// start starts the command in a new session and, if possible and wanted, in
// a new cgroup.
func start(c Command, opt Options, res *Result, log zerolog.Logger) (*proc, error) {
	p := &proc{log: log, done: make(chan struct{})}
	var pw *os.File
	if c.Output != nil {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("run %s: output pipe: %w", c.Path, err)
		}
		p.out = newOutput(r, c.Output)
		pw = w
	}
	// The child has its own copies of the write end; the parent's must go,
	// or the pipe never reports EOF.
	closeWriter := func() {
		if pw != nil {
			_ = pw.Close()
		}
	}

	switch opt.Cgroup {
	case CgroupOff:
		res.CgroupReason = "cgroups disabled by configuration"
	default:
		cg, err := newCgroup(opt.CgroupParent)
		if err != nil {
			if opt.Cgroup == CgroupRequire {
				closeWriter()
				p.closeOutput()
				return nil, fmt.Errorf("run %s: %w", c.Path, err)
			}
			res.CgroupReason = err.Error()
			log.Debug().Err(err).Msg("no cgroup for this run, process group only")
		} else {
			p.cg = cg
		}
	}

	p.cmd = newCmd(c, opt, pw, p.cg)
	err := p.cmd.Start()
	if err != nil && p.cg != nil && opt.Cgroup == CgroupAuto && !errors.Is(err, fs.ErrNotExist) {
		// clone3 with CLONE_INTO_CGROUP needs Linux 5.7 and may be refused
		// by a seccomp filter; the error cannot be told apart from an exec
		// failure, so try once more without the cgroup. A real exec failure
		// fails again, and that error is the one returned.
		log.Debug().Err(err).Msg("start in cgroup failed, retrying without")
		res.CgroupReason = fmt.Sprintf("start in cgroup %s: %v", p.cg.dir, err)
		p.dropCgroup()
		p.cmd = newCmd(c, opt, pw, nil)
		err = p.cmd.Start()
	}
	closeWriter()
	if p.cg != nil {
		p.cg.closeFD()
	}
	if err != nil {
		p.dropCgroup()
		p.closeOutput()
		return nil, fmt.Errorf("run %s: %w", c.Path, err)
	}
	res.Cgroup = p.cg != nil
	if res.Cgroup {
		res.CgroupReason = ""
	}
	p.pgid = p.cmd.Process.Pid
	p.log = log.With().Int("pid", p.pgid).Logger()
	if opt.OnStart != nil {
		// Read before Wait can reap the process: until then its
		// /proc entry exists, even if it has exited already.
		p.process = newProcess(p.pgid, p.cg)
	}
	if p.out != nil {
		go p.out.copy()
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// newCgroup creates a run's cgroup. Tests replace it to make starting in the
// cgroup fail as it does on kernels without CLONE_INTO_CGROUP.
var newCgroup = newRunCgroup

// newCmd builds the exec.Cmd; a Cmd cannot be started twice, so a retry
// needs a fresh one.
func newCmd(c Command, opt Options, out *os.File, cg *runCgroup) *exec.Cmd {
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Dir = c.Dir
	cmd.Env = c.Env
	cmd.Stdin = c.Stdin
	if out != nil {
		// One *os.File for both: the child writes to one pipe, so there
		// is one reader and the order of its writes is kept.
		cmd.Stdout = out
		cmd.Stderr = out
	}
	// Only a Stdin that is not a file leaves a goroutine for Wait to wait
	// on; WaitDelay keeps a Stdin that never ends from holding Wait.
	cmd.WaitDelay = opt.WaitDelay
	// A new session rather than only a new process group: the command has
	// no controlling terminal, so a program that opens /dev/tty fails at
	// once instead of stopping on SIGTTIN, and a terminal hangup of the
	// worker does not reach it. Signals to the group (-pid) still reach every
	// descendant that did not call setsid or setpgid itself.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if cg != nil {
		// CLONE_INTO_CGROUP: the child is born in the cgroup, so there is no
		// moment when it could fork outside it.
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(cg.fd.Fd())
	}
	return cmd
}

func (p *proc) dropCgroup() {
	if p.cg == nil {
		return
	}
	p.cg.closeFD()
	if err := p.cg.remove(killTimeout); err != nil {
		p.log.Error().Err(err).Msg("removing unused cgroup")
	}
	p.cg = nil
}

func (p *proc) closeOutput() {
	if p.out != nil {
		_ = p.out.r.Close()
		p.out = nil
	}
}

// signalGroup sends sig to the command's process group. It must only be
// called while the group may still exist: once the group is empty its id can
// be reused by an unrelated process.
func (p *proc) signalGroup(sig syscall.Signal) {
	if err := syscall.Kill(-p.pgid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		p.log.Warn().Err(err).Stringer("signal", sig).Msg("signalling the process group")
	}
}

// killAll SIGKILLs the process group and, with a cgroup, the whole cgroup.
func (p *proc) killAll() {
	p.signalGroup(syscall.SIGKILL)
	if p.cg != nil {
		if err := p.cg.kill(); err != nil {
			p.log.Error().Err(err).Msg("killing the run's cgroup")
		}
	}
}

// alive counts the run's live processes: the cgroup's when there is one
// (it also holds those that left the group), else the process group's.
func (p *proc) alive() int {
	if p.cg != nil {
		pids, err := p.cg.procs()
		if err != nil {
			p.log.Warn().Err(err).Msg("reading cgroup.procs")
		}
		return len(pids)
	}
	return len(groupMembers(p.pgid))
}

// stopLeftovers kills what the main process left behind, after it has been
// reaped. If the group already got SIGTERM (an abort), it keeps the abort's
// deadline; otherwise it sends SIGTERM and allows leftoverGrace. It returns
// how many processes were left.
func (p *proc) stopLeftovers(termSent bool, killAt time.Time, leftoverGrace time.Duration) int {
	n := p.alive()
	if n == 0 {
		return 0
	}
	p.log.Info().Int("leftovers", n).Msg("main process gone, stopping leftover processes")
	// The group is signalled only while it has members: once it is empty
	// its id, the reaped main process's pid, may be reused by another
	// process's group.
	groupGone := func() bool { return len(groupMembers(p.pgid)) == 0 }
	if !groupGone() {
		if !termSent {
			p.signalGroup(syscall.SIGTERM)
			killAt = time.Now().Add(leftoverGrace)
		}
		// Only group members got SIGTERM; processes that left the group
		// (found only through the cgroup) gain nothing from waiting, so
		// the wait ends as soon as the group is empty.
		if !pollUntil(killAt, groupGone) {
			p.log.Warn().Msg("leftover grace over: SIGKILL")
			p.signalGroup(syscall.SIGKILL)
		}
	}
	if p.cg != nil {
		if err := p.cg.kill(); err != nil {
			p.log.Error().Err(err).Msg("killing the run's cgroup")
		}
	}
	if !pollUntil(time.Now().Add(killTimeout), func() bool { return p.alive() == 0 }) {
		p.log.Error().Int("alive", p.alive()).Msg("processes survive SIGKILL")
	}
	return n
}

// pollUntil calls cond every pollInterval until it is true or deadline has
// passed, and reports whether it became true.
func pollUntil(deadline time.Time, cond func() bool) bool {
	for {
		if cond() {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		t := time.NewTimer(min(left, pollInterval))
		<-t.C
	}
}

// exitStatus turns a process state into (exit code, signal name).
func exitStatus(ps *os.ProcessState) (int, string) {
	if ps == nil {
		return -1, ""
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return -1, signalName(ws.Signal())
	}
	return ps.ExitCode(), ""
}

// signalNames covers the signals a command realistically dies from; syscall
// only knows descriptions ("killed"), and the names are what people grep for.
var signalNames = map[syscall.Signal]string{
	syscall.SIGHUP: "SIGHUP", syscall.SIGINT: "SIGINT", syscall.SIGQUIT: "SIGQUIT",
	syscall.SIGILL: "SIGILL", syscall.SIGTRAP: "SIGTRAP", syscall.SIGABRT: "SIGABRT",
	syscall.SIGBUS: "SIGBUS", syscall.SIGFPE: "SIGFPE", syscall.SIGKILL: "SIGKILL",
	syscall.SIGUSR1: "SIGUSR1", syscall.SIGSEGV: "SIGSEGV", syscall.SIGUSR2: "SIGUSR2",
	syscall.SIGPIPE: "SIGPIPE", syscall.SIGALRM: "SIGALRM", syscall.SIGTERM: "SIGTERM",
	syscall.SIGXCPU: "SIGXCPU", syscall.SIGXFSZ: "SIGXFSZ", syscall.SIGSYS: "SIGSYS",
}

func signalName(sig syscall.Signal) string {
	if name, ok := signalNames[sig]; ok {
		return name
	}
	return fmt.Sprintf("signal %d", int(sig))
}

// finalize runs opt.Finalize bounded by opt.FinalizeTimeout. Its context is
// detached from ctx, which is usually cancelled by now (an abort), and a
// Finalize that ignores its context is abandoned at the deadline so that the
// worker is not held by it.
func finalize(ctx context.Context, opt Options, log zerolog.Logger) error {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opt.FinalizeTimeout)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				errc <- fmt.Errorf("panic: %v", r)
			}
		}()
		errc <- opt.Finalize(fctx)
	}()
	var err error
	select {
	case err = <-errc:
	case <-fctx.Done():
		select {
		case err = <-errc:
		default:
			err = fmt.Errorf("did not return within %s: %w", opt.FinalizeTimeout, fctx.Err())
		}
	}
	if err != nil {
		log.Warn().Err(err).Msg("finalize failed")
		return fmt.Errorf("finalize: %w", err)
	}
	return nil
}
