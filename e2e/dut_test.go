package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/e2e/labtest"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server"
	"github.com/kiln-ci/kiln/tasks"
	"github.com/kiln-ci/kiln/worker"
)

// labWorker starts a worker that controls the given devices under test,
// each declared with type "board", and waits until the server lists them.
func (b *bundle) labWorker(name string, concurrency int, duts ...*labtest.DUT) *testWorker {
	b.t.Helper()
	return b.labWorkerWith(name, concurrency, nil, duts...)
}

// labWorkerWith is labWorker with a chance to change each device's
// declaration (its power commands, say).
func (b *bundle) labWorkerWith(name string, concurrency int, edit func(*tasks.Device), duts ...*labtest.DUT) *testWorker {
	b.t.Helper()
	var f tasks.DeviceFile
	for _, d := range duts {
		on, off, reset := d.PowerCommands()
		dev := tasks.Device{Name: d.Name, Type: "board", Labels: map[string]string{"lab": "e2e"},
			SSH:   &tasks.DeviceSSH{Host: d.Host, Port: d.Port, User: d.User, KeyFile: d.KeyFile, KnownHostKey: d.KnownHostKey},
			Power: tasks.DevicePower{On: on, Off: off, Reset: reset}}
		if edit != nil {
			edit(&dev)
		}
		f.Devices = append(f.Devices, dev)
	}
	data, err := yaml.Marshal(f)
	require.NoError(b.t, err)
	path := filepath.Join(b.dir, name+"-devices.yaml")
	require.NoError(b.t, os.WriteFile(path, data, 0o600))
	w := b.startWorkerWith(name, concurrency, nil, func(c *worker.Config) { c.DevicesFile = path })
	b.waitFor("the devices of "+name, func() bool {
		devs, err := b.admin.ListDevices(b.ctx, client.DeviceFilter{Worker: name})
		return err == nil && len(devs) == len(duts)
	})
	return w
}

func (b *bundle) device(name string) schemas.Device {
	b.t.Helper()
	d, err := b.admin.GetDevice(b.ctx, name)
	require.NoError(b.t, err)
	return d
}

// waitDeviceFree waits until a device is idle and leased to nobody.
func (b *bundle) waitDeviceFree(name string) schemas.Device {
	b.t.Helper()
	var d schemas.Device
	b.waitFor("device "+name+" to be free", func() bool {
		d = b.device(name)
		return d.State == schemas.DeviceIdle && d.LeaseWorkRequest == nil
	})
	return d
}

func dutData(t *testing.T, fields map[string]any) string {
	t.Helper()
	if _, ok := fields["device_type"]; !ok {
		if _, ok := fields["device"]; !ok {
			fields["device_type"] = "board"
		}
	}
	data, err := json.Marshal(fields)
	require.NoError(t, err)
	return string(data)
}

func (b *bundle) testResults(wr schemas.WorkRequest) map[string]any {
	b.t.Helper()
	arts := b.artifactsByCategory(wr)[tasks.TestResultsCategory]
	require.Len(b.t, arts, 1, "work request %d: one test-results artifact", wr.ID)
	return artData(b, arts[0])
}

func TestDUTTestResults(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		dut := labtest.New(t, "results")
		b.labWorker("lab", 1, dut)

		ok := b.wait(b.create(b.user, "dut-test", dutData(t, map[string]any{"script": "echo hello from the DUT; id -un"})).ID)
		require.Equal(t, schemas.ResultSuccess, ok.Result, "output: %s", ok.Output)
		require.Contains(t, ok.Output, "hello from the DUT\n"+dut.User+"\n", "the command ran on the device as its user")
		d := b.waitDeviceFree(dut.Name)
		require.True(t, d.Dirty, "a job leaves its device dirty")
		require.Equal(t, 1, d.JobsSinceHealthCheck)

		tap := b.wait(b.create(b.user, "dut-test", dutData(t, map[string]any{"result_format": "tap",
			"script": "echo 1..3; echo ok 1 - boots; echo not ok 2 - network; echo 'ok 3 # SKIP no camera'"})).ID)
		require.Equal(t, schemas.ResultFailure, tap.Result, "output: %s", tap.Output)
		res := b.testResults(tap)
		require.Equal(t, "tap", res["format"])
		require.EqualValues(t, 1, res["passed"])
		require.EqualValues(t, 1, res["failed"])
		require.EqualValues(t, 1, res["skipped"])
		require.Contains(t, fmt.Sprint(res["cases"]), "network")

		junit := `<testsuite name="s"><testcase name="boot"/><testcase name="wifi"><failure message="no"/></testcase></testsuite>`
		ju := b.wait(b.create(b.user, "dut-test", dutData(t, map[string]any{"result_format": "junit",
			"script": "cat > results.xml <<'EOF'\n" + junit + "\nEOF\n"})).ID)
		require.Equal(t, schemas.ResultFailure, ju.Result, "output: %s", ju.Output)
		res = b.testResults(ju)
		require.EqualValues(t, 1, res["passed"])
		require.EqualValues(t, 1, res["failed"])

		pass := b.wait(b.create(b.user, "dut-test", dutData(t, map[string]any{"result_format": "junit",
			"script": "echo '<testsuite><testcase name=\"a\"/></testsuite>' > results.xml"})).ID)
		require.Equal(t, schemas.ResultSuccess, pass.Result, "output: %s", pass.Output)

		// A timeout kills the remote command, powers the device off, and
		// frees it; the next job switches it on again.
		timed := b.wait(b.create(b.user, "dut-test", dutData(t, map[string]any{"script": "echo started; sleep 600", "timeout": 2})).ID)
		require.Equal(t, schemas.ResultError, timed.Result)
		require.Equal(t, "timeout", timed.Reason)
		b.waitDeviceFree(dut.Name)
		b.waitFor("the remote command to be gone", func() bool { return !dutRuns(t, dut, "sleep 600") })
		require.False(t, dut.Up(), "the device was powered off")
		again := b.wait(b.create(b.user, "dut-test", dutData(t, map[string]any{"script": "true"})).ID)
		require.Equal(t, schemas.ResultSuccess, again.Result, "output: %s", again.Output)
	})
}

// dutRuns reports whether a process whose command line contains what runs
// on the device.
func dutRuns(t *testing.T, dut *labtest.DUT, what string) bool {
	procs, err := dut.Processes(t.Context())
	require.NoError(t, err)
	for _, p := range procs {
		if strings.Contains(p, what) {
			return true
		}
	}
	return false
}

// intervals reads the start/end stamps the overlap script left on a DUT.
func intervals(t *testing.T, b *bundle, dut *labtest.DUT) [][2]int64 {
	out, err := dut.Run(b.ctx, "cat stamps")
	require.NoError(t, err)
	var iv [][2]int64
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		require.Len(t, f, 2, "stamp line %q", line)
		a, err1 := strconv.ParseInt(f[0], 10, 64)
		z, err2 := strconv.ParseInt(f[1], 10, 64)
		require.NoError(t, err1)
		require.NoError(t, err2)
		iv = append(iv, [2]int64{a, z})
	}
	sort.Slice(iv, func(i, j int) bool { return iv[i][0] < iv[j][0] })
	return iv
}

// stampScript records, on the device, when the job starts and ends.
const stampScript = `s=$(date +%s%N); sleep 1; echo "$s $(date +%s%N)" >> "$HOME/stamps"`

// rendezvous makes a directory that the accounts of every DUT may write:
// the DUTs are network namespaces on this host and share its file system.
func rendezvous(t *testing.T) string {
	dir, err := os.MkdirTemp("", "kiln-meet-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o1777))
	return dir
}

// meetScript stamps the device, marks dir with mine and waits up to a
// minute for the other job's mark; it fails if that never comes.
func meetScript(dir, mine, other string) string {
	return fmt.Sprintf(`%s; touch %s/%s; i=0; while [ ! -e %s/%s ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; test -e %s/%s`,
		stampScript, dir, mine, dir, other, dir, other)
}

func TestDUTLeases(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		one, two := labtest.New(t, "lease1"), labtest.New(t, "lease2")
		b.labWorker("lab", 4, one, two)

		// Three jobs for one device run one after the other.
		var ids []int64
		for range 3 {
			ids = append(ids, b.create(b.user, "dut-test", dutData(t, map[string]any{"device": one.Name, "script": stampScript})).ID)
		}
		for _, id := range ids {
			require.Equal(t, schemas.ResultSuccess, b.wait(id).Result)
		}
		iv := intervals(t, b, one)
		require.Len(t, iv, 3)
		for i := 1; i < len(iv); i++ {
			require.Greater(t, iv[i][0], iv[i-1][1], "jobs %d and %d overlapped on the device", i-1, i)
		}

		// Two jobs for either device run at the same time, one on each.
		// Each leaves a mark in a directory both devices see and succeeds
		// only once it has seen the other's: a rendezvous, so that slow
		// pre-job checks on a loaded machine cannot make the proof flaky.
		meet := rendezvous(t)
		a := b.create(b.user, "dut-test", dutData(t, map[string]any{"script": meetScript(meet, "a", "c")}))
		c := b.create(b.user, "dut-test", dutData(t, map[string]any{"script": meetScript(meet, "c", "a")}))
		for _, id := range []int64{a.ID, c.ID} {
			wr := b.wait(id)
			require.Equal(t, schemas.ResultSuccess, wr.Result, "the two jobs ran in parallel; output: %s", wr.Output)
		}
		require.Len(t, intervals(t, b, one), 4, "one job on each device")
		require.Len(t, intervals(t, b, two), 1, "one job on each device")

		// A request for a device type nobody has says so.
		none := b.create(b.user, "dut-test", dutData(t, map[string]any{"device_type": "toaster", "command": "true"}))
		b.waitFor("the waiting reason", func() bool {
			return strings.Contains(b.get(none.ID).WaitingReason, "no device matching type toaster")
		})
		// One in maintenance is out of service.
		_, err := b.admin.SetDeviceHealth(b.ctx, two.Name, schemas.DeviceHealthChange{Health: schemas.HealthMaintenance, Reason: "rewiring"})
		require.NoError(t, err)
		m := b.create(b.user, "dut-test", dutData(t, map[string]any{"device": two.Name, "command": "true"}))
		b.waitFor("the waiting reason", func() bool {
			return strings.Contains(b.get(m.ID).WaitingReason, "out of service (maintenance: "+two.Name+")")
		})
		_, err = b.admin.SetDeviceHealth(b.ctx, two.Name, schemas.DeviceHealthChange{Health: schemas.HealthUnknown, Reason: "back"})
		require.NoError(t, err)
		require.Equal(t, schemas.ResultSuccess, b.wait(m.ID).Result)
	})
}

func TestDUTAbortKillsTheRemoteTest(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		dut := labtest.New(t, "abort")
		b.labWorker("lab", 1, dut)
		wr := b.create(b.user, "dut-test", dutData(t, map[string]any{"script": "echo started; sleep 600"}))
		b.waitFor("the test to start", func() bool {
			var sb strings.Builder
			return b.user.Log(b.ctx, wr.ID, &sb) == nil && strings.Contains(sb.String(), "started")
		})
		require.True(t, dutRuns(t, dut, "sleep 600"))
		start := time.Now()
		_, err := b.user.AbortWorkRequest(b.ctx, wr.ID)
		require.NoError(t, err)
		b.waitFor("the remote test to be killed", func() bool { return !dutRuns(t, dut, "sleep 600") })
		t.Logf("abort -> remote test gone: %v", time.Since(start))
		b.waitFor("the power-off", func() bool { return !dut.Up() })
		d := b.waitDeviceFree(dut.Name)
		require.Equal(t, schemas.HealthGood, d.Health, "an abort is not the device's fault")
		require.True(t, d.Dirty)

		next := b.wait(b.create(b.user, "dut-test", dutData(t, map[string]any{"script": "echo next"})).ID)
		require.Equal(t, schemas.ResultSuccess, next.Result, "output: %s", next.Output)
		var kinds []string
		for _, e := range b.device(dut.Name).History {
			kinds = append(kinds, e.Kind+":"+e.To)
		}
		require.Contains(t, kinds, "state:running")
		require.Contains(t, kinds, "state:idle")
	})
}

// forEachBackendWith is forEachBackend with a server configuration change.
func forEachBackendWith(t *testing.T, change func(*server.Config), f func(t *testing.T, b *bundle)) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			f(t, setupWith(t, be, change))
		})
	}
}

// breakablePower gives a device power commands that fail, as a PDU that
// does not answer, while the file broken exists.
func breakablePower(broken string) func(*tasks.Device) {
	guard := "if [ -e " + broken + " ]; then echo the PDU does not answer >&2; exit 1; fi; "
	return func(d *tasks.Device) {
		d.Power.On, d.Power.Off, d.Power.Reset = guard+d.Power.On, guard+d.Power.Off, guard+d.Power.Reset
	}
}

// waitHealth waits until a device has health h and needs nothing.
func (b *bundle) waitHealth(name string, h schemas.DeviceHealth) schemas.Device {
	b.t.Helper()
	var d schemas.Device
	b.waitFor("device "+name+" to be "+string(h), func() bool {
		d = b.device(name)
		return d.Health == h && d.Needs == "" && d.UpkeepWorkRequest == nil
	})
	return d
}

// history lists a device's changes of one kind, oldest first, as "to".
func (b *bundle) history(name, kind string) []string {
	b.t.Helper()
	var out []string
	h := b.device(name).History
	for i := len(h) - 1; i >= 0; i-- {
		if h[i].Kind == kind {
			out = append(out, h[i].To)
		}
	}
	return out
}

// ranOn lists the work requests a device was leased to.
func (b *bundle) ranOn(name string) []int64 {
	b.t.Helper()
	var ids []int64
	for _, e := range b.device(name).History {
		if e.Kind == "state" && e.To == string(schemas.DeviceReserved) && e.WorkRequest != nil {
			ids = append(ids, *e.WorkRequest)
		}
	}
	return ids
}

func TestDUTInfrastructureErrorRetriesOnAnotherDevice(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		// "broken" sorts first, so the first request gets it.
		broken, good := labtest.New(t, "broken"), labtest.New(t, "good")
		flag := filepath.Join(b.dir, "pdu-broken")
		b.labWorkerWith("lab", 2, breakablePower(flag), broken, good)
		// New devices are checked first.
		b.waitHealth(broken.Name, schemas.HealthGood)
		b.waitHealth(good.Name, schemas.HealthGood)
		require.Equal(t, []string{"verify", ""}, b.history(broken.Name, "needs"))

		// The device dies between jobs: the job finds out.
		require.NoError(t, broken.PowerOff())
		require.NoError(t, os.WriteFile(flag, nil, 0o600))
		first := b.wait(b.create(b.user, "dut-test", dutData(t, map[string]any{"script": "echo ran on the device"})).ID)
		require.Equal(t, schemas.ResultError, first.Result, "output: %s", first.Output)
		require.Equal(t, schemas.ErrorInfrastructure, first.ErrorType, "an infrastructure error is not a test failure")
		require.Contains(t, first.Reason, "the PDU does not answer")
		// The retry is made right after the completion is recorded.
		b.waitFor("the automatic retry", func() bool {
			first = b.get(first.ID)
			return first.SupersededBy != nil
		})
		retry := b.wait(*first.SupersededBy)
		require.Equal(t, schemas.ResultSuccess, retry.Result, "output: %s", retry.Output)
		require.Contains(t, retry.Output, "ran on the device")
		require.Contains(t, b.ranOn(good.Name), retry.ID, "the retry ran on the other device")

		// The broken device went to repair, which failed: out of service.
		d := b.waitHealth(broken.Name, schemas.HealthBad)
		require.Equal(t, []string{"verify", "", "repair", ""}, b.history(broken.Name, "needs"))
		for _, e := range d.History {
			if e.Kind == "health" && e.To == "bad" {
				require.Contains(t, e.Reason, "repair failed")
			}
		}

		// Requests keep going to the good device.
		next := b.wait(b.create(b.user, "dut-test", dutData(t, map[string]any{"script": "true"})).ID)
		require.Equal(t, schemas.ResultSuccess, next.Result)
		require.Contains(t, b.ranOn(good.Name), next.ID)
	})
}

func TestDUTFailedVerifyIsResetAndRepaired(t *testing.T) {
	forEachBackendWith(t, func(c *server.Config) {
		c.Devices.PreJob = "always"
		c.Devices.BadRecheck = time.Second
	}, func(t *testing.T, b *bundle) {
		broken, good := labtest.New(t, "vbroken"), labtest.New(t, "vgood")
		flag := filepath.Join(b.dir, "pdu-broken")
		b.labWorkerWith("lab", 2, breakablePower(flag), broken, good)
		b.waitHealth(broken.Name, schemas.HealthGood)
		b.waitHealth(good.Name, schemas.HealthGood)

		// The device's sshd is down and its power does not help: verify,
		// reset and repair fail, and the job goes to the other device.
		require.NoError(t, broken.PowerOff())
		require.NoError(t, os.WriteFile(flag, nil, 0o600))
		first := b.wait(b.create(b.user, "dut-test", dutData(t, map[string]any{"script": "echo ran on the device"})).ID)
		require.Equal(t, schemas.ResultError, first.Result, "output: %s", first.Output)
		require.Equal(t, schemas.ErrorInfrastructure, first.ErrorType, "an infrastructure error is not a test failure")
		require.Contains(t, first.Reason, broken.Name)
		require.NotContains(t, b.ranOn(broken.Name), first.ID, "the job never got the broken device")
		b.waitFor("the automatic retry", func() bool {
			first = b.get(first.ID)
			return first.SupersededBy != nil
		})
		retry := b.wait(*first.SupersededBy)
		require.Equal(t, schemas.ResultSuccess, retry.Result, "output: %s", retry.Output)
		require.Contains(t, b.ranOn(good.Name), retry.ID)
		require.Equal(t, []string{"verify", "", "verify", "reset", "repair", ""}, b.history(broken.Name, "needs")[:6])
		require.Contains(t, b.history(broken.Name, "health"), "bad")
		// Each step was a work request of its own.
		for _, task := range []string{"verify", "reset", "repair"} {
			wrs, err := b.admin.ListWorkRequests(b.ctx, client.ListOptions{TaskName: task})
			require.NoError(t, err)
			require.NotEmpty(t, wrs, "no %s request", task)
		}

		// The bad device is verified again on a schedule, and returns to
		// service once it answers.
		require.NoError(t, os.Remove(flag))
		require.NoError(t, broken.PowerOn())
		b.waitHealth(broken.Name, schemas.HealthGood)
		again := b.wait(b.create(b.user, "dut-test", dutData(t, map[string]any{"device": broken.Name, "script": "true"})).ID)
		require.Equal(t, schemas.ResultSuccess, again.Result, "output: %s", again.Output)
	})
}

func TestDUTHealthChecks(t *testing.T) {
	forEachBackendWith(t, func(c *server.Config) {
		c.Devices.PreJob = "never"
		c.Devices.HealthCheckJobs = 2
	}, func(t *testing.T, b *bundle) {
		dut := labtest.New(t, "hc")
		b.labWorker("lab", 1, dut)
		b.waitHealth(dut.Name, schemas.HealthGood)

		// Every second job is followed by a health check.
		for range 2 {
			require.Equal(t, schemas.ResultSuccess, b.wait(b.create(b.user, "dut-test", dutData(t, map[string]any{"script": "true"})).ID).Result)
		}
		d := b.waitHealth(dut.Name, schemas.HealthGood)
		b.waitFor("the health check", func() bool {
			d = b.device(dut.Name)
			return len(b.history(dut.Name, "needs")) == 4 && d.Needs == ""
		})
		require.Equal(t, 0, d.JobsSinceHealthCheck)
		require.True(t, d.Dirty, "policy never: no cleanup")
		var reasons []string
		for _, e := range d.History {
			if e.Kind == "needs" && e.To == "verify" {
				reasons = append(reasons, e.Reason)
			}
		}
		require.Equal(t, []string{"health check: 2 jobs since the last one", "health unknown: first check"}, reasons)

		// An admin asks for one now.
		code, _, errOut := b.kilnAs("admin", "", "manage-device", dut.Name, "--health-check")
		require.Equal(t, 0, code, errOut)
		b.waitFor("the requested health check", func() bool {
			return len(b.history(dut.Name, "needs")) == 6 && b.device(dut.Name).Needs == ""
		})

		// In maintenance it gets no work and no checks; returned, it is
		// checked before its next job.
		_, err := b.admin.SetDeviceHealth(b.ctx, dut.Name, schemas.DeviceHealthChange{Health: schemas.HealthMaintenance, Reason: "rewiring"})
		require.NoError(t, err)
		m := b.create(b.user, "dut-test", dutData(t, map[string]any{"script": "true"}))
		b.waitFor("the waiting reason", func() bool {
			return strings.Contains(b.get(m.ID).WaitingReason, "out of service (maintenance: "+dut.Name+")")
		})
		code, out, errOut := b.kiln("", "list-devices")
		require.Equal(t, 0, code, errOut)
		require.Contains(t, out, "maintenance")
		_, err = b.admin.SetDeviceHealth(b.ctx, dut.Name, schemas.DeviceHealthChange{Health: schemas.HealthUnknown, Reason: "back"})
		require.NoError(t, err)
		require.Equal(t, schemas.ResultSuccess, b.wait(m.ID).Result)
		require.Equal(t, "verify", b.history(dut.Name, "needs")[6])

		// A job that asks for a provision gets it, as a request of its
		// own, before it runs.
		pkg := filepath.Join(b.dir, "install.sh")
		require.NoError(t, os.WriteFile(pkg, []byte("echo installed > \"$HOME/firmware\"\n"), 0o644))
		art, err := b.user.UploadArtifact(b.ctx, client.ArtifactUpload{Category: "kiln:firmware",
			Data: map[string]any{}, Files: map[string]string{"install.sh": pkg}})
		require.NoError(t, err)
		prov := b.wait(b.create(b.user, "dut-test", dutData(t, map[string]any{"script": "cat $HOME/firmware",
			"provision": map[string]any{"artifact": art.ID, "command": "sh install.sh"}})).ID)
		require.Equal(t, schemas.ResultSuccess, prov.Result, "output: %s", prov.Output)
		require.Contains(t, prov.Output, "installed")
		require.Contains(t, b.history(dut.Name, "needs"), "provision")
	})
}
