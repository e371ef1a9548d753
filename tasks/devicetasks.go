package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/tasks/runner"
)

// DeviceTask is one of the device special tasks (schemas.DeviceTasks, as
// Autotest's special tasks): the scheduler runs them on one device, named by
// the task data's "device", to check it (verify), clean it after jobs
// (cleanup), power-cycle it (reset), recover it (repair) or install what a
// job needs on it (provision). Each ends in
//
//   - success only when the device was checked to work at the end (for
//     provision: when its command succeeded);
//   - failure when the device answered but a check failed: verify_command,
//     cleanup_command, repair_command, Kiln's own cleanup, or provision's
//     command exited non-zero or did not end within 30 minutes;
//   - error, with an error that wraps ErrInfrastructure (error_type
//     infrastructure), when the lab failed: the device did not answer over
//     SSH, a power command failed or is missing.
//
// Each writes its steps to the live log as "kiln: KIND of device NAME: …".
type DeviceTask struct {
	// Kind is the task's name: one of schemas.DeviceTasks.
	Kind string
}

// deviceTasks returns the device special tasks, in schemas.DeviceTasks
// order.
func deviceTasks() []DeviceTask {
	out := make([]DeviceTask, len(schemas.DeviceTasks))
	for i, k := range schemas.DeviceTasks {
		out[i] = DeviceTask{Kind: k}
	}
	return out
}

// Name implements Task.
func (t DeviceTask) Name() string { return t.Kind }

// Version implements Task.
func (DeviceTask) Version() int { return 1 }

// Type implements Task.
func (DeviceTask) Type() Type { return TypeWorker }

// AnalyzeWorker implements Task: whether the worker has an SSH client.
func (DeviceTask) AnalyzeWorker(context.Context, Host) schemas.Metadata {
	return schemas.Metadata{keySSHAvailable: commandAvailable("ssh")}
}

// parse reads and checks the task data of a device task of this kind.
func (t DeviceTask) parse(data json.RawMessage) (schemas.DeviceTaskData, error) {
	var d schemas.DeviceTaskData
	if err := json.Unmarshal(data, &d); err != nil {
		return d, fmt.Errorf("%s task data: %w", t.Kind, err)
	}
	switch {
	case !schemas.IsDeviceTask(t.Kind):
		return d, fmt.Errorf("%q is not a device task", t.Kind)
	case !ValidDeviceName(d.Device):
		return d, fmt.Errorf("%s task data: device %s", t.Kind, DeviceNameRule)
	case t.Kind == schemas.DeviceTaskProvision && d.Artifact < 1:
		return d, errors.New("provision task data: artifact is required")
	case t.Kind == schemas.DeviceTaskProvision && d.Command == "":
		return d, errors.New("provision task data: command is required")
	}
	return d, nil
}

// Requirements implements Task: the one device the request is bound to,
// encoded as dut-test encodes its match.
func (t DeviceTask) Requirements(data json.RawMessage) (Requirements, error) {
	d, err := t.parse(data)
	if err != nil {
		return Requirements{}, err
	}
	m, err := json.Marshal(DeviceMatch{Name: d.Device})
	if err != nil {
		return Requirements{}, err
	}
	return Requirements{Extra: map[string]string{"device": string(m)}}, nil
}

// NeedsDevice implements DeviceNeeds: the device named in the task data.
func (DeviceTask) NeedsDevice(req Requirements) DeviceMatch {
	var m DeviceMatch
	_ = json.Unmarshal([]byte(req.Extra["device"]), &m)
	return m
}

// CanRunOn implements Task: the base rules and an SSH client.
func (t DeviceTask) CanRunOn(req Requirements, md schemas.Metadata) error {
	if err := BaseCanRunOn(t, req, md); err != nil {
		return err
	}
	if MetaString(md, keySSHAvailable) != "true" {
		return refuse("the worker has no ssh client (%s is not true)", keySSHAvailable)
	}
	return nil
}

// Execute implements Task.
func (t DeviceTask) Execute(ctx context.Context, data json.RawMessage, env Env) (schemas.Result, error) {
	d, err := t.parse(data)
	if err != nil {
		return schemas.ResultError, err
	}
	if env.Output == nil {
		env.Output = io.Discard
	}
	switch {
	case env.Device == nil:
		return schemas.ResultError, fmt.Errorf("%w: the worker leased no device to this %s", ErrInfrastructure, t.Kind)
	case env.Device.Name != d.Device:
		return schemas.ResultError, fmt.Errorf("%w: the worker leased device %s to a %s of device %s", ErrInfrastructure, env.Device.Name, t.Kind, d.Device)
	case env.Device.SSH == nil:
		return schemas.ResultError, fmt.Errorf("%w: device %s has no SSH connection, which %s needs", ErrInfrastructure, d.Device, t.Kind)
	}
	say := sayTo(env.Output, fmt.Sprintf("kiln: %s of device %s: ", t.Kind, d.Device))
	conn, err := newDeviceConn(*env.Device, env.WorkDir, say)
	if err != nil {
		return schemas.ResultError, err
	}
	r := &deviceRun{kind: t.Kind, data: d, env: env, conn: conn, say: say}
	switch {
	case d.Reason != "" && d.ForWorkRequest != 0:
		say("started (%s; for work request %d)", d.Reason, d.ForWorkRequest)
	case d.Reason != "":
		say("started (%s)", d.Reason)
	case d.ForWorkRequest != 0:
		say("started (for work request %d)", d.ForWorkRequest)
	default:
		say("started")
	}

	err = r.run(ctx)
	var failed *checkFailed
	switch {
	case ctx.Err() != nil:
		say("stopped: %v", context.Cause(ctx))
		return schemas.ResultError, context.Cause(ctx)
	case err == nil:
		say("success: the device works")
		return schemas.ResultSuccess, nil
	case errors.As(err, &failed):
		say("failure: %v", err)
		return schemas.ResultFailure, nil
	default:
		say("error: %v", err)
		return schemas.ResultError, err
	}
}

// checkFailed is a check that did not pass on a device that answered: the
// task ends in failure, where a lab problem ends it in error.
type checkFailed struct{ msg string }

func (e *checkFailed) Error() string { return e.msg }

// deviceRun is one run of a device task.
type deviceRun struct {
	kind string
	data schemas.DeviceTaskData
	env  Env
	conn *deviceConn
	say  func(format string, args ...any)
}

// dev is the device the run works on.
func (r *deviceRun) dev() Device { return r.conn.dev }

// recordDir is the directory below the device user's home that records
// the sessions of this run's commands (sessionLine), named like dut-test's
// run directories so that cleanup kills what an interrupted run left.
func (r *deviceRun) recordDir() string {
	return fmt.Sprintf("kiln-run-%d-%d", r.env.WorkRequestID, r.env.Attempt)
}

// run does the task's steps; see DeviceTask for what its error means.
func (r *deviceRun) run(ctx context.Context) error {
	switch r.kind {
	case schemas.DeviceTaskVerify:
		// No power actions: verify says how the device is, and changes
		// nothing.
		r.say("connecting over SSH to %s (known host key enforced)", r.address())
		if err := r.conn.probe(ctx); err != nil {
			return err
		}
		return r.verify(ctx)
	case schemas.DeviceTaskCleanup:
		r.say("connecting over SSH to %s (known host key enforced)", r.address())
		if err := r.conn.reach(ctx); err != nil {
			return err
		}
		if err := r.cleanup(ctx); err != nil {
			return err
		}
		return r.verify(ctx)
	case schemas.DeviceTaskReset:
		if err := r.powerCycle(ctx); err != nil {
			return err
		}
		if err := r.waitUp(ctx); err != nil {
			return err
		}
		return r.verify(ctx)
	case schemas.DeviceTaskRepair:
		return r.repair(ctx)
	case schemas.DeviceTaskProvision:
		return r.provision(ctx)
	}
	return fmt.Errorf("%q is not a device task", r.kind)
}

// address is the device's SSH address, for the log.
func (r *deviceRun) address() string {
	s := r.dev().SSH
	return fmt.Sprintf("%s@%s port %d", s.User, s.Host, s.Port)
}

// waitUp waits up to the device's boot timeout for it to answer.
func (r *deviceRun) waitUp(ctx context.Context) error {
	r.say("waiting up to %s (boot_timeout) for the device to answer over SSH", r.dev().BootTimeout())
	return r.conn.waitUp(ctx, r.dev().BootTimeout())
}

// powerCycle resets the device: its power reset, or off then on. A device
// with neither cannot be reset: an infrastructure error. The wait for the
// device starts when the commands return, so they should return once the
// power was cut and restored, as a PDU's do: a soft "reboot" as the reset
// command could leave the old system answering for a moment.
func (r *deviceRun) powerCycle(ctx context.Context) error {
	dev := r.dev()
	switch {
	case dev.HasPower("reset"):
		return r.conn.power(ctx, "reset")
	case dev.HasPower("off") && dev.HasPower("on"):
		if err := r.conn.power(ctx, "off"); err != nil {
			return err
		}
		return r.conn.power(ctx, "on")
	}
	return fmt.Errorf("%w: device %s has no power reset or off/on commands", ErrInfrastructure, dev.Name)
}

// verify runs the device's verify_command on it.
func (r *deviceRun) verify(ctx context.Context) error {
	cmd := r.dev().VerifyCommand()
	r.say("running verify_command on the device: %s", cmd)
	return r.onDevice(ctx, "verify_command", cmd, r.recordDir(), false)
}

// cleanupScript is Kiln's own cleanup on a device: kill the process group
// that each run recorded (dut-test's and provision's directories, and the
// records of the device tasks' own commands), then remove those
// directories. It runs in the login user's home.
const cleanupScript = `cd || exit 1
for f in kiln-run-*/.kiln-pgid kiln-provision-*/.kiln-pgid; do
	[ -f "$f" ] || continue
	p=$(cat "$f")
	case "$p" in '' | *[!0-9]*) continue ;; esac
	if kill -s KILL -- -"$p" 2>/dev/null; then
		echo "$1killed process group $p, left by ${f%/.kiln-pgid}"
	fi
done
rm -rf kiln-run-* kiln-provision-*`

// cleanup removes what jobs left on the device: Kiln's own cleanup, then
// the device's cleanup_command.
func (r *deviceRun) cleanup(ctx context.Context) error {
	r.say("killing what Kiln runs left on the device and removing ~/kiln-run-* and ~/kiln-provision-*")
	prefix := fmt.Sprintf("kiln: %s of device %s: ", r.kind, r.dev().Name)
	cctx, cancel := context.WithTimeout(ctx, remoteTimeout)
	defer cancel()
	code, err := r.conn.stream(cctx, r.env.Output, "sh -c "+shQuote(cleanupScript)+" kiln "+shQuote(prefix))
	switch {
	case ctx.Err() != nil:
		return context.Cause(ctx)
	case err != nil && cctx.Err() != nil:
		return &checkFailed{fmt.Sprintf("Kiln's cleanup did not finish within %s", remoteTimeout)}
	case err != nil:
		return err
	case code != 0:
		return &checkFailed{fmt.Sprintf("Kiln's cleanup exited with status %d", code)}
	}
	if cmd := r.dev().CleanupCmd; cmd != "" {
		r.say("running cleanup_command on the device: %s", cmd)
		return r.onDevice(ctx, "cleanup_command", cmd, r.recordDir(), false)
	}
	return nil
}

// onDevice runs a command on the device with its output in the live log,
// in a session recorded in dir (sessionLine), bounded by commandTimeout.
// A non-zero exit status or the timeout is a checkFailed; what names the
// command in its message.
func (r *deviceRun) onDevice(ctx context.Context, what, command, dir string, inDir bool) error {
	cctx, cancel := context.WithTimeoutCause(ctx, commandTimeout, errCommandTimeout)
	defer cancel()
	code, err := r.conn.runSession(cctx, r.env.Output, dir, command, inDir, r.env.Grace)
	switch {
	case ctx.Err() != nil:
		return context.Cause(ctx)
	case errors.Is(context.Cause(cctx), errCommandTimeout):
		return &checkFailed{fmt.Sprintf("%s did not finish within %s", what, commandTimeout)}
	case err != nil:
		return err
	case code != 0:
		return &checkFailed{fmt.Sprintf("%s exited with status %d", what, code)}
	}
	return nil
}

// repair is the strongest recovery: the worker's repair_command (reflash
// the device, say), a power cycle, a wait for the device, Kiln's cleanup
// and the device's cleanup_command, then verify. A device without power
// commands still gets the rest.
func (r *deviceRun) repair(ctx context.Context) error {
	dev := r.dev()
	if dev.RepairCmd != "" {
		r.say("running repair_command on the worker: %s", dev.RepairCmd)
		if err := r.repairCommand(ctx); err != nil {
			return err
		}
	}
	switch {
	case dev.HasPower("on"):
		if dev.HasPower("off") {
			if err := r.conn.power(ctx, "off"); err != nil {
				return err
			}
		}
		if err := r.conn.power(ctx, "on"); err != nil {
			return err
		}
	case dev.HasPower("reset"):
		if err := r.conn.power(ctx, "reset"); err != nil {
			return err
		}
	default:
		r.say("no power on or reset command: no power cycle")
	}
	if err := r.waitUp(ctx); err != nil {
		return err
	}
	if err := r.cleanup(ctx); err != nil {
		return err
	}
	return r.verify(ctx)
}

// repairCommand runs the device's repair_command on the worker, in a
// process group (and where possible a cgroup) of its own that an abort or
// commandTimeout kills whole, with its output in the live log.
func (r *deviceRun) repairCommand(ctx context.Context) error {
	cctx, cancel := context.WithTimeoutCause(ctx, commandTimeout, errCommandTimeout)
	defer cancel()
	res, err := runner.Run(cctx, runner.Command{
		Path:   "sh",
		Args:   []string{"-c", r.dev().RepairCmd},
		Dir:    r.env.WorkDir,
		Output: r.env.Output,
	}, runner.Options{Grace: r.env.Grace, CgroupParent: r.env.CgroupParent, Logger: r.env.Logger, OnStart: r.env.OnStart})
	switch {
	case ctx.Err() != nil:
		return context.Cause(ctx)
	case err != nil:
		return fmt.Errorf("repair_command: %w", err)
	case res.Killed:
		return &checkFailed{fmt.Sprintf("repair_command did not finish within %s", commandTimeout)}
	case res.ExitCode != 0:
		if res.Signal != "" {
			return &checkFailed{"repair_command was killed by " + res.Signal}
		}
		return &checkFailed{fmt.Sprintf("repair_command exited with status %d", res.ExitCode)}
	}
	return nil
}

// provision copies an artifact's files to a directory of their own on the
// device and runs the task's command there; the directory goes afterwards.
// Like dut-test, it switches on a device that does not answer: the job it
// prepares the device for would.
func (r *deviceRun) provision(ctx context.Context) error {
	if r.env.Artifacts == nil {
		return errors.New("provision needs the artifact store for its artifact")
	}
	local := filepath.Join(r.env.WorkDir, "provision")
	if err := os.MkdirAll(local, 0o755); err != nil {
		return err
	}
	r.say("downloading artifact %d", r.data.Artifact)
	if err := r.env.Artifacts.Download(ctx, r.data.Artifact, local); err != nil {
		return fmt.Errorf("artifact %d: %w", r.data.Artifact, err)
	}
	r.say("connecting over SSH to %s (known host key enforced)", r.address())
	if err := r.conn.reach(ctx); err != nil {
		return err
	}
	dir := fmt.Sprintf("kiln-provision-%d-%d", r.env.WorkRequestID, r.env.Attempt)
	defer func() {
		// Also after an abort: its session is gone by now.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killTimeout)
		defer cancel()
		if _, err := r.conn.remote(rctx, nil, "rm -rf "+shQuote(dir)); err != nil {
			r.say("could not remove ~/%s: %v", dir, err)
		}
	}()
	r.say("copying the files of artifact %d to ~/%s on the device", r.data.Artifact, dir)
	if err := r.copyDir(ctx, local, dir); err != nil {
		return err
	}
	r.say("running in ~/%s: %s", dir, r.data.Command)
	return r.onDevice(ctx, "the provision command", r.data.Command, dir, true)
}

// copyDir copies the files below local to dir on the device, replacing
// it, as a tar stream: no copy of it all in memory, however big.
func (r *deviceRun) copyDir(ctx context.Context, local, dir string) error {
	pr, pw := io.Pipe()
	packed := make(chan error, 1)
	go func() {
		err := tarDir(pw, local)
		pw.CloseWithError(err)
		packed <- err
	}()
	d := shQuote(dir)
	_, err := r.conn.output(ctx, pr, "rm -rf "+d+" && mkdir -p "+d+" && tar -C "+d+" -xf -", commandTimeout)
	// When ssh stopped reading early, the packer is blocked writing.
	pr.CloseWithError(errors.New("the copy stopped"))
	perr := <-packed
	switch {
	case ctx.Err() != nil:
		return context.Cause(ctx)
	case err != nil:
		return fmt.Errorf("copy to the device: %w", err)
	case perr != nil:
		return fmt.Errorf("pack the artifact's files: %w", perr)
	}
	return nil
}
