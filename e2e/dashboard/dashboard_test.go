package dashboard

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/tasks"
	"github.com/kiln-ci/kiln/worker"
)

// scriptData is the task data of a "script" request (testtasks.Script).
func scriptData(script string) string {
	b, _ := json.Marshal(map[string]string{"script": script})
	return string(b)
}

func statusIs(status string) chromedp.Action[chromedp.Void] {
	return chromedp.WaitVisible(chromedp.CSS(`#status-cell [data-status="` + status + `"]`))
}

func css(sel string) chromedp.CSS { return chromedp.CSS(sel) }

func id(name string) chromedp.ID { return chromedp.ID(name) }

// A request submitted through the API shows up in the list, and its page
// follows it live: log lines while it runs, then its completion, all
// without a reload.
func TestWorkRequestLive(t *testing.T) {
	b := setup(t, nil)
	b.startWorker("runner", nil)
	br := newBrowser(t, b.srv.URL())
	br.login(b.tokens["alice"])
	br.run("open the list", chromedp.Navigate(br.base+"/work-requests/"), chromedp.WaitVisible(id("rows")))

	gate := filepath.Join(t.TempDir(), "go-on")
	wr := b.create("alice", "script", scriptData(fmt.Sprintf(
		"echo 'first line'; while [ ! -e %s ]; do sleep 0.05; done; echo 'second line'", gate)))
	row := fmt.Sprintf("#wr-%d", wr.ID)
	br.run("the new request to appear in the list", chromedp.WaitVisible(css(row)))
	br.screenshot("list")

	br.run("open its page",
		chromedp.Click(css(row+" a")),
		chromedp.WaitVisible(id("status-cell")))
	runIn(br, "mark the page", chromedp.Evaluate[int](`window.kilnMarker = 42`))
	br.run("the first line of its log while it runs", textIncludes("log", "first line"), statusIs("running"))
	require.Equal(t, schemas.StatusRunning, b.get(wr.ID).Status, "the line came while the request ran")
	br.screenshot("running")

	require.NoError(t, os.WriteFile(gate, nil, 0o600))
	br.run("its completion, without a reload",
		statusIs("success"),
		textIncludes("log", "second line"),
		textIncludes("timeline", "completed: success"))
	require.Equal(t, 42, runIn(br, "read the mark", chromedp.Evaluate[int](`window.kilnMarker || 0`)), "the page was reloaded")
	require.Equal(t, schemas.StatusCompleted, b.get(wr.ID).Status)
	log := br.text("log")
	require.Equal(t, 1, strings.Count(log, "first line"), "each line once: %q", log)
	br.screenshot("completed")

	// The list's filters apply at once, and the address follows them.
	br.run("filter the list", chromedp.Navigate(br.base+"/work-requests/"), chromedp.WaitVisible(css(row)))
	runIn(br, "choose a status", chromedp.Evaluate[bool](`(function(){
		document.querySelector('#filters select[name="status"]').value = "pending";
		htmx.trigger("#filters", "change");
		return true; })()`))
	br.run("the filtered list", chromedp.WaitNotPresent(css(row)), textIncludes("match-count", "0 matching"))
	require.Equal(t, "?status=pending", runIn(br, "read the address", chromedp.Evaluate[string](`location.search`)))

	br.run("the overview counts it", chromedp.Navigate(br.base+"/"),
		chromedp.WaitVisible(css(`#status-counts a[data-count="completed"]`)))
	completed := runIn(br, "read the count", chromedp.TextContent(css(`#status-counts a[data-count="completed"]`)))
	require.Equal(t, "1", completed)
	br.screenshot("overview")
}

// The script of the abort test: a child, a setsid escapee and a nohup
// orphan in the background, then the main shell ignores SIGTERM and
// sleeps.
const treeScript = `sleep 600 & echo $! >> pids
setsid sleep 600 & echo $! >> pids
(nohup sleep 600 >/dev/null 2>&1 & echo $! >> pids)
trap '' TERM
echo started
sleep 600`

func TestAbortFromThePage(t *testing.T) {
	b := setup(t, nil)
	w := b.startWorker("runner", nil)
	br := newBrowser(t, b.srv.URL())
	br.login(b.tokens["alice"])
	wr := b.create("alice", "script", scriptData(treeScript))
	br.run("open its page", chromedp.Navigate(fmt.Sprintf("%s/work-requests/%d/", br.base, wr.ID)),
		textIncludes("log", "started"), statusIs("running"), chromedp.WaitVisible(id("abort")))

	var pids []int
	b.waitFor("the run's processes", func() bool {
		data, err := os.ReadFile(filepath.Join(w.runDir(wr.ID), "pids"))
		pids = pids[:0]
		for _, f := range strings.Fields(string(data)) {
			if p, err := strconv.Atoi(f); err == nil {
				pids = append(pids, p)
			}
		}
		return err == nil && len(pids) >= 3
	})
	require.False(t, pidsGone(pids))
	br.screenshot("running")

	br.run("abort it", chromedp.Click(id("abort")), statusIs("aborted"), textIncludes("flash", "aborted"))
	require.Equal(t, schemas.StatusAborted, b.get(wr.ID).Status)
	b.waitFor("every process of the run to be gone", func() bool { return pidsGone(pids) })
	b.waitFor("the kill confirmation", func() bool { return !b.get(wr.ID).KillPending })
	br.run("the page to say it is over", chromedp.WaitNotPresent(id("kill-pending")),
		chromedp.WaitNotPresent(id("abort")), chromedp.WaitVisible(id("retry")))
	br.screenshot("aborted")
}

func TestDisableWorkerFromItsPage(t *testing.T) {
	b := setup(t, nil)
	w := b.startWorker("builder-7", nil)
	br := newBrowser(t, b.srv.URL())
	br.login(b.tokens["admin"])
	br.run("open the worker's page", chromedp.Navigate(fmt.Sprintf("%s/workers/%d/", br.base, w.id)),
		chromedp.WaitVisible(css(`#worker-state [data-status="online"]`)),
		chromedp.WaitVisible(css(`#metadata-table tr[data-key="kiln:concurrency"]`)))
	br.screenshot("enabled")
	br.run("disable it", chromedp.Click(id("disable")),
		chromedp.WaitVisible(css(`#worker-state [data-status="disabled"]`)),
		chromedp.WaitVisible(id("enable")))
	wk, err := b.st.WorkerByID(b.ctx, w.id)
	require.NoError(t, err)
	require.False(t, wk.Enabled)
	br.screenshot("disabled")

	// Work waits now, and says why.
	wr := b.create("alice", "noop", `{}`)
	b.waitFor("a waiting reason", func() bool { return b.get(wr.ID).WaitingReason == "no enabled worker" })
	br.run("the list shows why it waits", chromedp.Navigate(br.base+"/work-requests/"),
		textIncludes("rows", "no enabled worker"))
}

func TestDeviceMaintenanceFromItsPage(t *testing.T) {
	b := setup(t, nil)
	devices := filepath.Join(b.dir, "devices.yaml")
	data, err := yaml.Marshal(tasks.DeviceFile{Devices: []tasks.Device{{Name: "dut-1", Type: "board",
		Labels: map[string]string{"lab": "e2e"}, Serial: &tasks.DeviceSerial{Command: "false"}}}})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(devices, data, 0o600))
	b.startWorker("lab-1", func(c *worker.Config) { c.DevicesFile = devices })
	b.waitFor("the device", func() bool {
		ds, err := b.api("admin").ListDevices(b.ctx, client.DeviceFilter{Worker: "lab-1"})
		return err == nil && len(ds) == 1
	})

	br := newBrowser(t, b.srv.URL())
	br.login(b.tokens["admin"])
	br.run("open the device's page", chromedp.Navigate(br.base+"/devices/dut-1/"),
		chromedp.WaitVisible(id("maintenance")))
	br.run("set it to maintenance",
		chromedp.SendKeys(id("health-reason"), "new power supply"),
		chromedp.Click(id("maintenance")),
		chromedp.WaitVisible(css(`#device-health [data-status="maintenance"]`)),
		textIncludes("history", "new power supply"))
	d, err := b.api("admin").GetDevice(b.ctx, "dut-1")
	require.NoError(t, err)
	require.Equal(t, schemas.HealthMaintenance, d.Health)
	br.screenshot("maintenance")
	br.run("the list shows it", chromedp.Navigate(br.base+"/devices/"),
		chromedp.WaitVisible(css(`#device-dut-1 [data-status="maintenance"]`)))
	br.screenshot("devices")
}

// userContent is a script whose task data and output hold HTML that would
// run or show if it were not escaped.
const userContent = `: '<script>window.kilnDataXSS=1</script><b id="data-bold">bold</b>'
echo '<script>window.kilnLogXSS=1</script><img id="log-img" src="x"> & done'`

func TestUserContentShowsAsText(t *testing.T) {
	b := setup(t, nil)
	b.startWorker("runner", nil)
	wr := b.create("alice", "script", scriptData(userContent))
	br := newBrowser(t, b.srv.URL())
	br.login(b.tokens["alice"])
	br.run("open its page", chromedp.Navigate(fmt.Sprintf("%s/work-requests/%d/", br.base, wr.ID)),
		statusIs("success"), textIncludes("log", "& done"))
	taskData, log := br.text("task-data"), br.text("log")
	injected := runIn(br, "look for injected content", chromedp.Evaluate[bool](`window.kilnDataXSS !== undefined ||
		window.kilnLogXSS !== undefined || document.querySelector("#data-bold, #log-img, #log script, #task-data script") !== null`))
	require.False(t, injected, "user content ran or rendered as HTML")
	require.Contains(t, taskData, `<script>window.kilnDataXSS=1</script><b id=\"data-bold\">bold</b>`)
	require.Contains(t, log, `<script>window.kilnLogXSS=1</script><img id="log-img" src="x"> & done`)
	br.screenshot("escaped")
}
