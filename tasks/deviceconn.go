package tasks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Bounds of what the worker does on a device. Every SSH call has one, so
// that a device that stops answering in the middle of a command cannot
// hold a run forever (ServerAliveInterval catches a dead link, not a
// command that never ends).
const (
	// remoteTimeout bounds short commands: probes, copies of small files,
	// kills, removals.
	remoteTimeout = 2 * time.Minute
	// probeMinTimeout is the least a probe gets while waiting for a device,
	// even when the boot timeout is nearly over: a device that just started
	// to answer may take a few seconds for the SSH handshake.
	probeMinTimeout = 15 * time.Second
	// commandTimeout bounds the configured commands (verify_command,
	// cleanup_command, repair_command), provision's copy and command, on top
	// of the server's run-time limit, so that a hung command cannot hold a
	// device for the server's default limit of a day.
	commandTimeout = 30 * time.Minute
	// killTimeout bounds the kill of a remote session after an abort, past
	// the grace it gives the session: the abort is waiting for it.
	killTimeout = 30 * time.Second
	// waitDelay bounds how long a local command's output is read after it
	// exited or was killed, for a grandchild that still holds the pipe.
	waitDelay = 5 * time.Second
)

// keySSHAvailable is the worker metadata key that says whether the worker
// has an ssh client, which dut-test and the device tasks need. It keeps
// dut-test's name: workers already report it.
const keySSHAvailable = "dut-test:ssh_available"

// errCommandTimeout is the cause of a configured command's context when
// commandTimeout ends it, so that a timeout is told from an abort.
var errCommandTimeout = errors.New("command timeout")

// deviceConn reaches one device under test from the worker: commands over
// SSH with the device's known host key enforced, and its power commands.
// It holds no connection: each command is an ssh process of its own, so a
// dropped connection costs one command and a power cycle needs no
// reconnection logic.
type deviceConn struct {
	dev Device
	// knownHosts is the known_hosts file that holds only the device's key.
	knownHosts string
	// say writes a line that explains a step to the run's live log.
	say func(format string, args ...any)
}

// newDeviceConn makes a connection to dev whose known_hosts file is written
// in dir (the run's work directory); say tells the live log what it does.
func newDeviceConn(dev Device, dir string, say func(format string, args ...any)) (*deviceConn, error) {
	s := dev.SSH
	if s == nil {
		return nil, fmt.Errorf("%w: device %s has no SSH connection", ErrInfrastructure, dev.Name)
	}
	if dir == "" {
		return nil, errors.New("no work directory for the device's known_hosts file")
	}
	host := s.Host
	if s.Port != 22 {
		host = "[" + s.Host + "]:" + strconv.Itoa(s.Port)
	}
	path := filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(path, []byte(host+" "+s.KnownHostKey+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("known_hosts of device %s: %w", dev.Name, err)
	}
	if say == nil {
		say = func(string, ...any) {}
	}
	return &deviceConn{dev: dev, knownHosts: path, say: say}, nil
}

// sayTo returns a say function that writes lines starting with prefix to w.
func sayTo(w io.Writer, prefix string) func(format string, args ...any) {
	if w == nil {
		w = io.Discard
	}
	return func(format string, args ...any) {
		fmt.Fprint(w, prefix+fmt.Sprintf(format, args...)+"\n")
	}
}

// ssh returns the ssh command line that runs remote on the device.
func (c *deviceConn) ssh(remote string) []string {
	s := c.dev.SSH
	return []string{"ssh", "-i", s.KeyFile, "-p", strconv.Itoa(s.Port),
		"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + c.knownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
		"-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR",
		s.User + "@" + s.Host, remote}
}

// remote runs a short command on the device and returns its standard
// output; failures to connect (ssh's exit status 255, or no exit status at
// all) are infrastructure errors, other exit statuses plain errors.
func (c *deviceConn) remote(ctx context.Context, stdin io.Reader, remote string) ([]byte, error) {
	return c.output(ctx, stdin, remote, remoteTimeout)
}

// output is remote with another time limit.
func (c *deviceConn) output(ctx context.Context, stdin io.Reader, remote string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	argv := c.ssh(remote)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = stdin
	cmd.WaitDelay = waitDelay
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() != 255 && ee.ExitCode() != -1 {
			return out, fmt.Errorf("%s: exit %d: %s", remote, ee.ExitCode(), strings.TrimSpace(stderr.String()))
		}
		return out, fmt.Errorf("%w: device %s does not answer over SSH: %v: %s", ErrInfrastructure, c.dev.Name, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// probe checks that the device answers over SSH as itself (its known host
// key).
func (c *deviceConn) probe(ctx context.Context) error {
	_, err := c.remote(ctx, nil, "true")
	return err
}

// reach checks that the device answers. One that does not is switched on,
// or reset when it has no power on, and given its boot timeout to come up:
// the previous job may have powered it off. Without either power action
// the probe's error stands.
func (c *deviceConn) reach(ctx context.Context) error {
	err := c.probe(ctx)
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	if err == nil || !errors.Is(err, ErrInfrastructure) {
		return err
	}
	action := "on"
	if !c.dev.HasPower("on") {
		action = "reset"
	}
	if !c.dev.HasPower(action) {
		return err
	}
	c.say("device %s does not answer; power %s", c.dev.Name, action)
	if perr := PowerAction(ctx, c.dev, action); perr != nil {
		return perr
	}
	if err := c.waitUp(ctx, c.dev.BootTimeout()); err != nil {
		return fmt.Errorf("after power %s: %w", action, err)
	}
	return nil
}

// waitUp probes the device every second until it answers, for at most
// timeout. Its error wraps ErrInfrastructure when the device did not answer
// in time, or is the cause of ctx.
func (c *deviceConn) waitUp(ctx context.Context, timeout time.Duration) error {
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		probeCtx, cancel := context.WithTimeout(ctx, min(max(time.Until(deadline), probeMinTimeout), remoteTimeout))
		err := c.probe(probeCtx)
		cancel()
		if err == nil {
			c.say("device %s answers over SSH after %s", c.dev.Name, time.Since(start).Round(100*time.Millisecond))
			return nil
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if !errors.Is(err, ErrInfrastructure) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("device %s did not answer within %s (boot_timeout): %w", c.dev.Name, timeout, err)
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(time.Second):
		}
	}
}

// stream runs remote on the device with its standard output and error
// going to out as they come, and returns its exit status. The error is
// ctx's cause when ctx ended it, and wraps ErrInfrastructure when ssh
// failed (exit status 255: a command's own 255 cannot be told from it).
func (c *deviceConn) stream(ctx context.Context, out io.Writer, remote string) (int, error) {
	argv := c.ssh(remote)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	// ssh's own messages (Connection refused) end the output: keep them
	// for the error too.
	tail := &tailWriter{max: 512}
	w := io.MultiWriter(out, tail)
	cmd.Stdout, cmd.Stderr = w, w
	cmd.WaitDelay = waitDelay
	err := cmd.Run()
	if err != nil && cmd.ProcessState != nil && errors.Is(err, exec.ErrWaitDelay) {
		err = nil // it exited; something on the worker held the pipe
	}
	if ctx.Err() != nil {
		return -1, context.Cause(ctx)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return cmd.ProcessState.ExitCode(), nil
	case errors.As(err, &ee) && ee.ExitCode() != 255 && ee.ExitCode() != -1:
		return ee.ExitCode(), nil
	case errors.As(err, &ee):
		return ee.ExitCode(), fmt.Errorf("%w: device %s: the SSH connection failed (%v): %s", ErrInfrastructure, c.dev.Name, err, tail.lastLine())
	default:
		return -1, fmt.Errorf("ssh to device %s: %w", c.dev.Name, err)
	}
}

// sessionLine returns the remote shell line that runs command in a session
// of its own whose process group id it records in ~/dir/.kiln-pgid, so that
// an abort, a timeout or a later cleanup can kill everything it started on
// the device. It runs in dir when inDir, else in the home directory, and
// then dir is only the record: it goes when the command ends. The line
// exits with the command's status.
//
// setsid runs as a child of the login shell, never exec'd by it: the login
// shell leads its own process group (sshd made it a session leader), and
// setsid forks from a group leader and returns 0 at once, which would lose
// the command's status.
func sessionLine(dir, command string, inDir bool) string {
	d := shQuote(dir)
	line := "mkdir -p " + d + " && "
	if inDir {
		line += "cd " + d + " && "
	}
	line += "setsid sh -c " + shQuote(`echo $$ > "$HOME/$1/.kiln-pgid" && exec sh -c "$2"`) + " kiln " + d + " " + shQuote(command)
	if inDir {
		return line + "; exit $?"
	}
	return line + "; s=$?; rm -rf " + d + "; exit $s"
}

// runSession runs command on the device as sessionLine does, with its
// output to out, and returns its exit status. When ctx ends first, the
// session gets SIGTERM, grace, then SIGKILL, before runSession returns.
func (c *deviceConn) runSession(ctx context.Context, out io.Writer, dir, command string, inDir bool, grace time.Duration) (int, error) {
	code, err := c.stream(ctx, out, sessionLine(dir, command, inDir))
	if ctx.Err() != nil {
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace+killTimeout)
		defer cancel()
		if kerr := c.killSession(kctx, dir, grace, !inDir); kerr != nil {
			c.say("could not stop the command on device %s: %v", c.dev.Name, kerr)
		}
	}
	return code, err
}

// killSession kills the session recorded in ~/dir/.kiln-pgid: SIGTERM to
// its process group, up to grace for it to end, then SIGKILL. With remove,
// dir goes too.
//
// The kills are spelt "kill -s SIG -- -PGID": dash's kill takes "--" only
// after "-s SIG", and reads "-PGID" as an option without "--".
func (c *deviceConn) killSession(ctx context.Context, dir string, grace time.Duration, remove bool) error {
	d := shQuote(dir)
	secs := max(int(grace/time.Second), 1)
	script := fmt.Sprintf(`p=$(cat %s/.kiln-pgid 2>/dev/null)
if [ -n "$p" ] && kill -s TERM -- -"$p" 2>/dev/null; then
	i=0
	while kill -s 0 -- -"$p" 2>/dev/null && [ "$i" -lt %d ]; do sleep 1; i=$((i + 1)); done
	kill -s KILL -- -"$p" 2>/dev/null
fi
true`, d, secs)
	if remove {
		script += "; rm -rf " + d
	}
	_, err := c.output(ctx, nil, script, grace+killTimeout)
	return err
}

// power takes power action on the device, saying so.
func (c *deviceConn) power(ctx context.Context, action string) error {
	c.say("power %s", action)
	return PowerAction(ctx, c.dev, action)
}

// PowerAction runs a device's power command for action (on, off, reset)
// with sh -c on the worker, bounded by two minutes. Its errors wrap
// ErrInfrastructure and carry the command's output. The command runs in a
// process group of its own that is killed when ctx ends, but not when the
// command exits: a power command may leave a daemon behind on purpose.
func PowerAction(ctx context.Context, dev Device, action string) error {
	cmdline := dev.Power.Command(action)
	if cmdline == "" {
		return fmt.Errorf("%w: device %s has no power %s command", ErrInfrastructure, dev.Name, action)
	}
	ctx, cancel := context.WithTimeout(ctx, remoteTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", cmdline)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = waitDelay
	out, err := cmd.CombinedOutput()
	if err != nil && cmd.ProcessState != nil && cmd.ProcessState.Success() && errors.Is(err, exec.ErrWaitDelay) {
		err = nil // it succeeded; what it started holds the output
	}
	if err != nil {
		return fmt.Errorf("%w: power %s of device %s: %v: %s", ErrInfrastructure, action, dev.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// tailWriter keeps the last max bytes written to it.
type tailWriter struct {
	max int
	buf []byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(p), nil
}

// lastLine returns the last non-empty line written.
func (t *tailWriter) lastLine() string {
	s := strings.TrimSpace(string(t.buf))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}
