package tasks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/e2e/labtest"
	"github.com/kiln-ci/kiln/schemas"
)

// lockedBuffer is a live log that the test reads while a task writes it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// localArtifacts is the artifact store of the provision tests: artifact id
// -> file path -> content. Fetching artifacts is the worker's client's job;
// here it only has to put files in a directory.
type localArtifacts map[int64]map[string]string

func (a localArtifacts) Get(_ context.Context, id int64) (schemas.Artifact, error) {
	return schemas.Artifact{}, fmt.Errorf("artifact %d: Get is not used by device tasks", id)
}

func (a localArtifacts) Download(_ context.Context, id int64, dir string) error {
	files, ok := a[id]
	if !ok {
		return fmt.Errorf("artifact %d: not found", id)
	}
	for name, content := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(path, []byte(content), mode); err != nil {
			return err
		}
	}
	return nil
}

func (a localArtifacts) Cached(context.Context, int64, string) (string, func(), error) {
	return "", nil, errors.New("Cached is not used by device tasks")
}

func (a localArtifacts) Upload(context.Context, NewArtifact) (int64, error) {
	return 0, errors.New("device tasks upload nothing")
}

// labDevice is a real device under test (labtest) and its worker-side
// configuration, with all three power commands.
type labDevice struct {
	dut *labtest.DUT
	dev Device
}

func newLabDevice(t *testing.T, name string) *labDevice {
	t.Helper()
	dut := labtest.New(t, name)
	on, off, reset := dut.PowerCommands()
	return &labDevice{dut: dut, dev: Device{
		Name: dut.Name, Type: "board",
		SSH:                &DeviceSSH{Host: dut.Host, Port: dut.Port, User: dut.User, KeyFile: dut.KeyFile, KnownHostKey: dut.KnownHostKey},
		Power:              DevicePower{On: on, Off: off, Reset: reset},
		BootTimeoutSeconds: 30,
	}}
}

// deviceRunResult is what one run of a device task gave.
type deviceRunResult struct {
	result schemas.Result
	err    error
	out    string
}

var deviceTaskRuns atomic.Int64

// runDeviceTask validates data against kind's schema, then runs the task
// on dev as a worker would, with ctx.
func runDeviceTask(ctx context.Context, t *testing.T, kind string, dev Device, data map[string]any, arts Artifacts, out *lockedBuffer) deviceRunResult {
	t.Helper()
	return prepareDeviceTask(t, kind, dev, data, arts, out)(ctx)
}

// prepareDeviceTask is runDeviceTask in two steps, for a test that runs
// the task in another goroutine: the checks and set-up, then the run.
func prepareDeviceTask(t *testing.T, kind string, dev Device, data map[string]any, arts Artifacts, out *lockedBuffer) func(context.Context) deviceRunResult {
	t.Helper()
	if data == nil {
		data = map[string]any{}
	}
	if _, ok := data["device"]; !ok {
		data["device"] = dev.Name
	}
	raw, err := json.Marshal(data)
	require.NoError(t, err)
	reg := Default()
	require.NoError(t, reg.Validate(kind, raw))
	task, err := reg.Get(kind)
	require.NoError(t, err)
	if out == nil {
		out = &lockedBuffer{}
	}
	env := Env{WorkRequestID: 1000 + deviceTaskRuns.Add(1), Attempt: 1, Output: out, Logger: zerolog.Nop(),
		WorkDir: t.TempDir(), Grace: time.Second, CgroupParent: testCgroupParent(t), Artifacts: arts, Device: &dev}
	return func(ctx context.Context) deviceRunResult {
		res, err := task.Execute(ctx, raw, env)
		r := deviceRunResult{result: res, err: err, out: out.String()}
		t.Logf("%s of %s: %s, %v; output:\n%s", kind, dev.Name, res, err, r.out)
		return r
	}
}

// requireResult checks a run's result, and that an error is (or, for
// failure and success, that there is none) an infrastructure error.
func requireResult(t *testing.T, want schemas.Result, r deviceRunResult) {
	t.Helper()
	require.Equal(t, want, r.result, "output:\n%s", r.out)
	if want == schemas.ResultError {
		require.ErrorIs(t, r.err, ErrInfrastructure, "a lab problem is an infrastructure error")
	} else {
		require.NoError(t, r.err)
	}
}

// waitDevice polls cond until it holds, failing t after 20 seconds.
func waitDevice(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20s", what)
		}
		time.Sleep(20 * time.Millisecond) // a polling interval, not synchronisation
	}
}

// runsOn reports whether a process whose command line contains what runs
// as the device's user.
func runsOn(t *testing.T, dut *labtest.DUT, what string) bool {
	t.Helper()
	procs, err := dut.Processes(t.Context())
	require.NoError(t, err)
	for _, p := range procs {
		if strings.Contains(p, what) {
			return true
		}
	}
	return false
}

// homeEntries lists the kiln-* entries of the device user's home.
func homeEntries(t *testing.T, dut *labtest.DUT) string {
	t.Helper()
	out, err := dut.Run(t.Context(), "ls -d kiln-* 2>/dev/null; true")
	require.NoError(t, err)
	return strings.TrimSpace(out)
}

// otherHostKey makes a host key that is not the device's.
func otherHostKey(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "key")
	out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path).CombinedOutput()
	require.NoError(t, err, "%s", out)
	pub, err := os.ReadFile(path + ".pub")
	require.NoError(t, err)
	f := strings.Fields(string(pub))
	return f[0] + " " + f[1]
}

func TestDeviceTaskIdentityAndRequirements(t *testing.T) {
	reg := Default()
	for _, kind := range schemas.DeviceTasks {
		t.Run(kind, func(t *testing.T) {
			task, err := reg.Get(kind)
			require.NoError(t, err)
			require.Equal(t, kind, task.Name())
			require.Equal(t, TypeWorker, task.Type())
			require.Equal(t, 1, task.Version())
			require.Contains(t, task.AnalyzeWorker(t.Context(), Host{}), keySSHAvailable)

			data := `{"device":"board-1","reason":"health check","for_work_request":7}`
			if kind == schemas.DeviceTaskProvision {
				data = `{"device":"board-1","artifact":3,"command":"sh install.sh"}`
			}
			require.NoError(t, reg.Validate(kind, json.RawMessage(data)))
			req, err := task.Requirements(json.RawMessage(data))
			require.NoError(t, err)
			require.Equal(t, Requirements{Extra: map[string]string{"device": `{"name":"board-1"}`}}, req)
			dn, ok := task.(DeviceNeeds)
			require.True(t, ok, "a device task needs a device")
			require.Equal(t, DeviceMatch{Name: "board-1"}, dn.NeedsDevice(req))

			md := schemas.Metadata{KeyWorkerType: "external", keySSHAvailable: true, VersionKey(kind): 1}
			require.NoError(t, task.CanRunOn(req, md))
			md[keySSHAvailable] = false
			require.ErrorIs(t, task.CanRunOn(req, md), ErrCannotRun)

			for _, bad := range []string{
				`{}`,
				`{"device":"bad name"}`,
				`{"device":"b","for_work_request":0}`,
				`{"device":"b","bogus":1}`,
			} {
				var ve *ValidationError
				require.ErrorAs(t, reg.Validate(kind, json.RawMessage(bad)), &ve, bad)
			}
		})
	}
	for _, bad := range []string{
		`{"device":"b","command":"x"}`,
		`{"device":"b","artifact":1}`,
		`{"device":"b","artifact":1,"command":""}`,
		`{"device":"b","artifact":0,"command":"x"}`,
	} {
		var ve *ValidationError
		require.ErrorAs(t, reg.Validate("provision", json.RawMessage(bad)), &ve, bad)
		_, err := DeviceTask{Kind: "provision"}.Requirements(json.RawMessage(bad))
		require.Error(t, err, "the task checks what it needs itself too: %s", bad)
	}
}

func TestDeviceTaskWithoutItsDevice(t *testing.T) {
	task := DeviceTask{Kind: schemas.DeviceTaskVerify}
	data := json.RawMessage(`{"device":"board-1"}`)
	ssh := &DeviceSSH{Host: "192.0.2.1", Port: 22, User: "u", KeyFile: "k", KnownHostKey: "ssh-ed25519 AAAA"}
	for name, dev := range map[string]*Device{
		"no device":      nil,
		"another device": {Name: "board-2", SSH: ssh},
		"no ssh":         {Name: "board-1", Serial: &DeviceSerial{Command: "picocom"}},
	} {
		t.Run(name, func(t *testing.T) {
			res, err := task.Execute(t.Context(), data, Env{WorkDir: t.TempDir(), Device: dev})
			require.Equal(t, schemas.ResultError, res)
			require.ErrorIs(t, err, ErrInfrastructure)
		})
	}
}

func TestDeviceTaskVerify(t *testing.T) {
	t.Parallel()
	ld := newLabDevice(t, "verify")
	dut := ld.dut

	t.Run("default verify_command", func(t *testing.T) {
		r := runDeviceTask(t.Context(), t, "verify", ld.dev, map[string]any{"reason": "health check"}, nil, nil)
		requireResult(t, schemas.ResultSuccess, r)
		require.Contains(t, r.out, "kiln: verify of device verify: started (health check)\n")
		require.Contains(t, r.out, "kiln: verify of device verify: running verify_command on the device: true\n")
		require.Contains(t, r.out, "kiln: verify of device verify: success")
		require.Empty(t, homeEntries(t, dut), "verify leaves nothing on the device")
	})

	t.Run("verify_command runs on the device", func(t *testing.T) {
		dev := ld.dev
		dev.VerifyCmd = "echo checking as $(id -un); test -f healthy"
		r := runDeviceTask(t.Context(), t, "verify", dev, nil, nil, nil)
		requireResult(t, schemas.ResultFailure, r)
		require.Contains(t, r.out, "checking as "+dut.User+"\n", "its output is in the live log")
		require.Contains(t, r.out, "failure: verify_command exited with status 1")

		_, err := dut.Run(t.Context(), "touch healthy")
		require.NoError(t, err)
		requireResult(t, schemas.ResultSuccess, runDeviceTask(t.Context(), t, "verify", dev, nil, nil, nil))
	})

	t.Run("another host key", func(t *testing.T) {
		dev := ld.dev
		ssh := *dev.SSH
		ssh.KnownHostKey = otherHostKey(t)
		dev.SSH = &ssh
		r := runDeviceTask(t.Context(), t, "verify", dev, nil, nil, nil)
		requireResult(t, schemas.ResultError, r)
	})

	t.Run("powered off", func(t *testing.T) {
		require.NoError(t, dut.PowerOff())
		r := runDeviceTask(t.Context(), t, "verify", ld.dev, nil, nil, nil)
		requireResult(t, schemas.ResultError, r)
		require.ErrorContains(t, r.err, "device verify does not answer over SSH")
		require.NotContains(t, r.out, "power on")
		require.False(t, dut.Up(), "verify takes no power action")
	})
}

// leaveRun starts, as a job that was killed would leave it, a process group
// on the device recorded in ~/dir/.kiln-pgid (a sleep and a child of it),
// and waits until it runs.
func leaveRun(t *testing.T, dut *labtest.DUT, dir, marker string) {
	t.Helper()
	_, err := dut.Run(t.Context(), fmt.Sprintf(`mkdir -p %[1]s && cd %[1]s && echo data > file &&
setsid sh -c 'echo $$ > .kiln-pgid; sleep %[2]s1 & exec sleep %[2]s0' </dev/null >/dev/null 2>&1 &`, dir, marker))
	require.NoError(t, err)
	waitDevice(t, "the leftover processes to run", func() bool {
		return runsOn(t, dut, "sleep "+marker+"0") && runsOn(t, dut, "sleep "+marker+"1")
	})
}

func TestDeviceTaskCleanup(t *testing.T) {
	t.Parallel()
	ld := newLabDevice(t, "cleanup")
	dut := ld.dut
	dev := ld.dev
	dev.CleanupCmd = "echo tidying; touch cleaned"
	dev.VerifyCmd = "test -f cleaned"

	t.Run("leftovers", func(t *testing.T) {
		leaveRun(t, dut, "kiln-run-7-1", "100")
		_, err := dut.Run(t.Context(), "mkdir -p kiln-provision-7-1 && touch kiln-provision-7-1/image")
		require.NoError(t, err)
		r := runDeviceTask(t.Context(), t, "cleanup", dev, map[string]any{"reason": "after work request 7", "for_work_request": 8}, nil, nil)
		requireResult(t, schemas.ResultSuccess, r)
		require.Contains(t, r.out, "started (after work request 7; for work request 8)")
		require.Regexp(t, `kiln: cleanup of device cleanup: killed process group \d+, left by kiln-run-7-1\n`, r.out)
		require.Contains(t, r.out, "tidying\n")
		require.NotContains(t, r.out, "power on", "the device answered")
		waitDevice(t, "the leftover process group to be gone", func() bool {
			return !runsOn(t, dut, "sleep 1000") && !runsOn(t, dut, "sleep 1001")
		})
		require.Empty(t, homeEntries(t, dut))
	})

	t.Run("powered off", func(t *testing.T) {
		_, err := dut.Run(t.Context(), "mkdir -p kiln-run-9-2 && rm -f cleaned")
		require.NoError(t, err)
		require.NoError(t, dut.PowerOff())
		r := runDeviceTask(t.Context(), t, "cleanup", dev, nil, nil, nil)
		requireResult(t, schemas.ResultSuccess, r)
		require.Contains(t, r.out, "device cleanup does not answer; power on\n")
		require.Contains(t, r.out, "answers over SSH after")
		require.True(t, dut.Up())
		require.Empty(t, homeEntries(t, dut))
	})

	t.Run("cleanup_command fails", func(t *testing.T) {
		dev := dev
		dev.CleanupCmd = "echo cannot; exit 4"
		r := runDeviceTask(t.Context(), t, "cleanup", dev, nil, nil, nil)
		requireResult(t, schemas.ResultFailure, r)
		require.Contains(t, r.out, "failure: cleanup_command exited with status 4")
	})

	t.Run("powered off without power on", func(t *testing.T) {
		require.NoError(t, dut.PowerOff())
		dev := dev
		dev.Power = DevicePower{Off: dev.Power.Off}
		r := runDeviceTask(t.Context(), t, "cleanup", dev, nil, nil, nil)
		requireResult(t, schemas.ResultError, r)
		require.NoError(t, dut.PowerOn())
	})
}

func TestDeviceTaskReset(t *testing.T) {
	t.Parallel()
	ld := newLabDevice(t, "reset")
	dut := ld.dut

	t.Run("power reset", func(t *testing.T) {
		require.NoError(t, dut.PowerOff(), "its sshd stopped")
		r := runDeviceTask(t.Context(), t, "reset", ld.dev, nil, nil, nil)
		requireResult(t, schemas.ResultSuccess, r)
		require.Contains(t, r.out, "kiln: reset of device reset: power reset\n")
		require.True(t, dut.Up())
	})

	t.Run("off then on", func(t *testing.T) {
		leaveRun(t, dut, "kiln-run-3-1", "200")
		dev := ld.dev
		dev.Power.Reset = ""
		r := runDeviceTask(t.Context(), t, "reset", dev, nil, nil, nil)
		requireResult(t, schemas.ResultSuccess, r)
		require.Contains(t, r.out, "power off\n")
		require.Contains(t, r.out, "power on\n")
		waitDevice(t, "the power cycle to end what ran", func() bool { return !runsOn(t, dut, "sleep 2000") })
	})

	t.Run("no power", func(t *testing.T) {
		dev := ld.dev
		dev.Power = DevicePower{On: dev.Power.On}
		r := runDeviceTask(t.Context(), t, "reset", dev, nil, nil, nil)
		requireResult(t, schemas.ResultError, r)
		require.ErrorContains(t, r.err, "device reset has no power reset or off/on commands")
	})

	t.Run("power command fails", func(t *testing.T) {
		dev := ld.dev
		dev.Power.Reset = "echo the PDU does not answer >&2; exit 1"
		r := runDeviceTask(t.Context(), t, "reset", dev, nil, nil, nil)
		requireResult(t, schemas.ResultError, r)
		require.ErrorContains(t, r.err, "the PDU does not answer")
	})

	t.Run("verify_command fails", func(t *testing.T) {
		dev := ld.dev
		dev.VerifyCmd = "exit 2"
		r := runDeviceTask(t.Context(), t, "reset", dev, nil, nil, nil)
		requireResult(t, schemas.ResultFailure, r)
	})
}

func TestDeviceTaskRepair(t *testing.T) {
	t.Parallel()
	ld := newLabDevice(t, "repair")
	dut := ld.dut

	t.Run("repair_command fails", func(t *testing.T) {
		dev := ld.dev
		dev.RepairCmd = "echo reflashing; exit 1"
		r := runDeviceTask(t.Context(), t, "repair", dev, nil, nil, nil)
		requireResult(t, schemas.ResultFailure, r)
		require.Contains(t, r.out, "reflashing\n")
		require.Contains(t, r.out, "failure: repair_command exited with status 1")
		require.NotContains(t, r.out, "power off", "a failed repair_command ends the repair")
	})

	t.Run("full repair", func(t *testing.T) {
		leaveRun(t, dut, "kiln-run-4-1", "300")
		require.NoError(t, dut.PowerOff())
		marker := filepath.Join(t.TempDir(), "reflashed")
		dev := ld.dev
		dev.RepairCmd = "echo reflashing; touch " + shQuote(marker)
		dev.CleanupCmd = "echo cleanup_command ran"
		r := runDeviceTask(t.Context(), t, "repair", dev, nil, nil, nil)
		requireResult(t, schemas.ResultSuccess, r)
		require.FileExists(t, marker, "repair_command ran on the worker")
		for _, step := range []string{"running repair_command on the worker", "reflashing", "power off", "power on",
			"answers over SSH", "killing what Kiln runs left", "cleanup_command ran", "running verify_command", "success"} {
			require.Contains(t, r.out, step)
		}
		require.Less(t, strings.Index(r.out, "reflashing"), strings.Index(r.out, "power off"), "the order of the steps")
		require.Empty(t, homeEntries(t, dut))
	})

	t.Run("no power", func(t *testing.T) {
		_, err := dut.Run(t.Context(), "mkdir kiln-run-5-1")
		require.NoError(t, err)
		dev := ld.dev
		dev.Power = DevicePower{}
		r := runDeviceTask(t.Context(), t, "repair", dev, nil, nil, nil)
		requireResult(t, schemas.ResultSuccess, r)
		require.Contains(t, r.out, "no power on or reset command: no power cycle")
		require.Empty(t, homeEntries(t, dut), "the rest of the repair happened")
	})
}

func TestDeviceTaskProvision(t *testing.T) {
	t.Parallel()
	ld := newLabDevice(t, "provision")
	dut := ld.dut
	arts := localArtifacts{
		5: {"hello.txt": "hello from artifact 5\n", "bin/tool.sh": "#!/bin/sh\necho tool ran in $(basename $(pwd))\n"},
	}

	t.Run("copies and runs", func(t *testing.T) {
		r := runDeviceTask(t.Context(), t, "provision", ld.dev, map[string]any{
			"artifact": 5, "command": "cat hello.txt && ./bin/tool.sh && cp hello.txt $HOME/installed.txt"}, arts, nil)
		requireResult(t, schemas.ResultSuccess, r)
		require.Contains(t, r.out, "hello from artifact 5\n", "the command's output is in the live log")
		require.Regexp(t, `tool ran in kiln-provision-\d+-1\n`, r.out)
		out, err := dut.Run(t.Context(), "cat installed.txt")
		require.NoError(t, err)
		require.Equal(t, "hello from artifact 5\n", out)
		require.Empty(t, homeEntries(t, dut), "the provision directory is gone")
	})

	t.Run("command fails", func(t *testing.T) {
		r := runDeviceTask(t.Context(), t, "provision", ld.dev, map[string]any{"artifact": 5, "command": "exit 5"}, arts, nil)
		requireResult(t, schemas.ResultFailure, r)
		require.Contains(t, r.out, "failure: the provision command exited with status 5")
		require.Empty(t, homeEntries(t, dut))
	})

	t.Run("unknown artifact", func(t *testing.T) {
		r := runDeviceTask(t.Context(), t, "provision", ld.dev, map[string]any{"artifact": 6, "command": "true"}, arts, nil)
		require.Equal(t, schemas.ResultError, r.result)
		require.ErrorContains(t, r.err, "artifact 6")
	})

	t.Run("unreachable", func(t *testing.T) {
		require.NoError(t, dut.PowerOff())
		dev := ld.dev
		dev.Power = DevicePower{}
		r := runDeviceTask(t.Context(), t, "provision", dev, map[string]any{"artifact": 5, "command": "true"}, arts, nil)
		requireResult(t, schemas.ResultError, r)
	})
}

func TestDeviceTaskAbortStopsTheRemoteCommand(t *testing.T) {
	t.Parallel()
	ld := newLabDevice(t, "abort")
	dev := ld.dev
	dev.VerifyCmd = "echo verifying; sleep 4000"
	ctx, cancel := context.WithCancelCause(t.Context())
	defer cancel(nil)
	out := &lockedBuffer{}
	run := prepareDeviceTask(t, "verify", dev, nil, nil, out)
	done := make(chan deviceRunResult, 1)
	go func() { done <- run(ctx) }()
	waitDevice(t, "the command to start", func() bool { return strings.Contains(out.String(), "\nverifying\n") })
	require.True(t, runsOn(t, ld.dut, "sleep 4000"))

	aborted := errors.New("aborted by the test")
	start := time.Now()
	cancel(aborted)
	var r deviceRunResult
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the task did not stop within 30s of the abort")
	}
	t.Logf("abort -> Execute returned: %v", time.Since(start))
	require.Equal(t, schemas.ResultError, r.result)
	require.ErrorIs(t, r.err, aborted)
	waitDevice(t, "the command on the device to be gone", func() bool { return !runsOn(t, ld.dut, "sleep 4000") })
	require.Empty(t, homeEntries(t, ld.dut), "its record went with it")
}

// TestDeviceConnSessionStatus checks that a command run in a recorded
// session (dut-test's and the device tasks') reports its own exit status:
// an exec'd setsid would fork and report 0 at once.
func TestDeviceConnSessionStatus(t *testing.T) {
	t.Parallel()
	ld := newLabDevice(t, "session")
	conn, err := newDeviceConn(ld.dev, t.TempDir(), nil)
	require.NoError(t, err)
	for _, inDir := range []bool{true, false} {
		var out bytes.Buffer
		code, err := conn.runSession(t.Context(), &out, "kiln-run-1-1", "echo in $(basename $(pwd)); sleep 0.2; exit 7", inDir, time.Second)
		require.NoError(t, err)
		require.Equal(t, 7, code)
		if inDir {
			require.Equal(t, "in kiln-run-1-1\n", out.String())
			require.Equal(t, "kiln-run-1-1", homeEntries(t, ld.dut), "a run directory stays")
		} else {
			require.NotContains(t, out.String(), "kiln-run")
			require.Empty(t, homeEntries(t, ld.dut), "a record goes with its command")
		}
	}
}
