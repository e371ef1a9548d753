package dashboard

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/tasks"
	"github.com/kiln-ci/kiln/worker"
)

// TestDocsScreenshots makes the screenshots of docs/user.md: a small lab
// at work, shown by the dashboard. It runs only when KILN_DOCS_SCREENSHOTS
// names the directory to write them to:
//
//	KILN_DOCS_SCREENSHOTS=$PWD/docs/img go test -run TestDocsScreenshots ./e2e/dashboard/
func TestDocsScreenshots(t *testing.T) {
	out := os.Getenv("KILN_DOCS_SCREENSHOTS")
	if out == "" {
		t.Skip("set KILN_DOCS_SCREENSHOTS to a directory to make the user guide's screenshots")
	}
	require.NoError(t, os.MkdirAll(out, 0o755))
	b := setup(t, nil)
	devices := filepath.Join(b.dir, "devices.yaml")
	data, err := yaml.Marshal(tasks.DeviceFile{Devices: []tasks.Device{
		{Name: "rpi4-01", Type: "rpi4", Labels: map[string]string{"ram": "8G"}, Serial: &tasks.DeviceSerial{Command: "false"}},
		{Name: "qemu-arm64-1", Type: "qemu-arm64", Serial: &tasks.DeviceSerial{Command: "false"}},
	}})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(devices, data, 0o600))
	b.startWorker("lab-1", func(c *worker.Config) { c.DevicesFile = devices })
	b.waitFor("the devices", func() bool {
		ds, err := b.api("admin").ListDevices(b.ctx, client.DeviceFilter{Worker: "lab-1"})
		return err == nil && len(ds) == 2
	})
	_, err = b.api("admin").SetDeviceHealth(b.ctx, "rpi4-01", schemas.DeviceHealthChange{Health: schemas.HealthMaintenance, Reason: "new SD card"})
	require.NoError(t, err)
	b.startWorker("build-amd64-1", nil)

	var last schemas.WorkRequest
	for i, script := range []string{
		"echo 'dpkg-buildpackage -us -uc'; echo 'dh binary'; echo 'dpkg-deb: building package hello'",
		"echo 'running lintian'; echo 'W: hello: no-manual-page usr/bin/hello'",
		"echo 'autopkgtest: test smoke'; echo 'FAIL: smoke (exit 3)' >&2; exit 3",
		"echo 'dpkg-buildpackage -us -uc'; echo 'dpkg-deb: building package hello-doc'",
	} {
		last = b.create([]string{"alice", "admin"}[i%2], "script", scriptData(script))
		b.waitFor("the request to end", func() bool { return b.get(last.ID).Status == schemas.StatusCompleted })
	}
	b.create("alice", "noop", `{"host_architecture": "riscv64"}`)
	b.create("alice", "noop", `{"host_architecture": "riscv64"}`)
	gate := filepath.Join(t.TempDir(), "go-on")
	running := b.create("alice", "script", scriptData(fmt.Sprintf(`echo 'sbuild (Debian sbuild) 0.85.0'
echo '+------------------------------------------------+'
echo '| hello 2.10-3 (amd64)                           |'
echo '+------------------------------------------------+'
for step in 'Fetch source files' 'Install build-essential' 'Install package build dependencies' 'Build'; do echo "$step"; done
echo 'dpkg-source: info: extracting hello in /build/hello-2.10'
while [ ! -e %s ]; do sleep 0.05; done`, gate)))
	t.Cleanup(func() { _ = os.WriteFile(gate, nil, 0o600) })
	b.waitFor("the run", func() bool { return b.get(running.ID).Status == schemas.StatusRunning })

	br := newBrowser(t, b.srv.URL())
	br.login(b.tokens["admin"])
	shoot := func(name string) {
		png := runIn(br, "screenshot", chromedp.FullScreenshot(100))
		require.NoError(t, os.WriteFile(filepath.Join(out, name), png, 0o644))
		t.Logf("wrote %s", filepath.Join(out, name))
	}
	br.run("the overview", chromedp.Navigate(br.base+"/"), textIncludes("reasons", "riscv64"))
	shoot("dashboard-overview.png")
	br.run("the list", chromedp.Navigate(br.base+"/work-requests/"), chromedp.WaitVisible(css(fmt.Sprintf("#wr-%d", running.ID))))
	shoot("dashboard-work-requests.png")
	br.run("the running request", chromedp.Navigate(fmt.Sprintf("%s/work-requests/%d/", br.base, running.ID)),
		textIncludes("log", "extracting hello"), statusIs("running"))
	shoot("dashboard-work-request.png")
	br.run("a device", chromedp.Navigate(br.base+"/devices/rpi4-01/"),
		chromedp.WaitVisible(css(`#device-health [data-status="maintenance"]`)))
	shoot("dashboard-device.png")
}
