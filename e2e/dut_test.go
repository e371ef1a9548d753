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
		a := b.create(b.user, "dut-test", dutData(t, map[string]any{"script": stampScript + "; sleep 1"}))
		c := b.create(b.user, "dut-test", dutData(t, map[string]any{"script": stampScript + "; sleep 1"}))
		require.Equal(t, schemas.ResultSuccess, b.wait(a.ID).Result)
		require.Equal(t, schemas.ResultSuccess, b.wait(c.ID).Result)
		ivOne, ivTwo := intervals(t, b, one), intervals(t, b, two)
		require.Len(t, ivOne, 4)
		require.Len(t, ivTwo, 1)
		last := ivOne[len(ivOne)-1]
		require.Less(t, ivTwo[0][0], last[1], "the two jobs ran in parallel")
		require.Less(t, last[0], ivTwo[0][1], "the two jobs ran in parallel")

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
		require.Equal(t, schemas.HealthUnknown, d.Health)

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

func TestDUTInfrastructureErrorRetriesOnAnotherDevice(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		// "broken" sorts first, so the first request gets it.
		broken, good := labtest.New(t, "broken"), labtest.New(t, "good")
		require.NoError(t, broken.PowerOff())
		b.labWorkerWith("lab", 2, func(d *tasks.Device) {
			if d.Name == broken.Name {
				d.Power.On, d.Power.Reset = "echo the PDU does not answer >&2; exit 1", ""
			}
		}, broken, good)

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
		d := b.device(broken.Name)
		require.Equal(t, schemas.HealthBad, d.Health, "the broken device is out of service")
		var ranOn []int64
		for _, e := range b.device(good.Name).History {
			if e.WorkRequest != nil {
				ranOn = append(ranOn, *e.WorkRequest)
			}
		}
		require.Contains(t, ranOn, retry.ID, "the retry ran on the other device")

		// Requests keep going to the good device.
		next := b.wait(b.create(b.user, "dut-test", dutData(t, map[string]any{"script": "true"})).ID)
		require.Equal(t, schemas.ResultSuccess, next.Result)
	})
}
