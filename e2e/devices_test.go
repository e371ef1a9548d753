package e2e

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
)

// declaringWorker registers a worker through the API, as kiln-worker does,
// has an admin enable it, and returns a client with its token. No worker
// daemon runs, so that only the test declares devices.
func (b *bundle) declaringWorker(name string) *client.Client {
	b.t.Helper()
	token := store.NewSecret()
	require.NoError(b.t, client.New(b.srv.APIURL(), "").RegisterWorker(b.ctx,
		schemas.WorkerRegister{Token: token, FQDN: name, WorkerType: "external"}, ""))
	_, err := b.adminCmd("worker", "enable", name)
	require.NoError(b.t, err)
	return clientFor(b, token)
}

func listedDeviceNames(ds []schemas.Device) []string {
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		out = append(out, d.Name)
	}
	return out
}

func deviceProblemCode(err error) string {
	var pe *client.ProblemError
	if errors.As(err, &pe) {
		return pe.Problem.Code
	}
	return ""
}

func TestDevices(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		ctx := b.ctx
		lab1 := b.declaringWorker("lab-1")
		lab2 := b.declaringWorker("lab-2")

		// lab-1 declares two devices.
		require.NoError(t, lab1.DeclareDevices(ctx, []schemas.DeviceDeclaration{
			{Name: "rpi4-01", DeviceType: "rpi4", Labels: map[string]string{"ram": "8G"},
				Connection: "ssh://root@10.0.0.5:22", Power: []string{"on", "off", "reset"}},
			{Name: "qemu-1", DeviceType: "qemu-arm64", Connection: "serial"},
		}))
		ds, err := b.user.ListDevices(ctx, client.DeviceFilter{})
		require.NoError(t, err)
		require.Equal(t, []string{"qemu-1", "rpi4-01"}, listedDeviceNames(ds))
		for _, d := range ds {
			require.Equal(t, "lab-1", d.Worker)
			require.True(t, d.Declared)
			require.Equal(t, schemas.DeviceIdle, d.State)
			require.Equal(t, schemas.HealthUnknown, d.Health)
			require.False(t, d.Dirty)
			require.Nil(t, d.LeaseWorkRequest)
			require.Empty(t, d.History, "the list has no history")
		}
		require.Equal(t, map[string]string{"ram": "8G"}, ds[1].Labels)
		require.Equal(t, []string{"on", "off", "reset"}, ds[1].Power)
		require.Equal(t, "ssh://root@10.0.0.5:22", ds[1].Connection)

		// Filters, also with a worker token.
		ds, err = lab2.ListDevices(ctx, client.DeviceFilter{DeviceType: "rpi4", Worker: "lab-1", Health: schemas.HealthUnknown})
		require.NoError(t, err)
		require.Equal(t, []string{"rpi4-01"}, listedDeviceNames(ds))
		ds, err = b.user.ListDevices(ctx, client.DeviceFilter{Worker: "lab-2"})
		require.NoError(t, err)
		require.Empty(t, ds)

		// The CLI's table.
		code, out, errOut := b.kiln("", "list-devices")
		require.Equal(t, 0, code, errOut)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		require.Len(t, lines, 3, out)
		require.Equal(t, []string{"NAME", "TYPE", "WORKER", "DECLARED", "STATE", "HEALTH", "DIRTY", "NEEDS", "LEASE"}, strings.Fields(lines[0]))
		require.Equal(t, []string{"qemu-1", "qemu-arm64", "lab-1", "true", "idle", "unknown", "false", "-", "-"}, strings.Fields(lines[1]))
		require.Equal(t, []string{"rpi4-01", "rpi4", "lab-1", "true", "idle", "unknown", "false", "-", "-"}, strings.Fields(lines[2]))
		code, out, errOut = b.kiln("", "list-devices", "--device-type", "qemu-arm64", "--worker", "lab-1")
		require.Equal(t, 0, code, errOut)
		require.Contains(t, out, "qemu-1")
		require.NotContains(t, out, "rpi4-01")
		code, _, errOut = b.kiln("", "list-devices", "--health", "shiny")
		require.Equal(t, 2, code)
		require.Contains(t, errOut, "--health must be")

		// Declaring only one device drops the other.
		require.NoError(t, lab1.DeclareDevices(ctx, []schemas.DeviceDeclaration{
			{Name: "rpi4-01", DeviceType: "rpi4", Labels: map[string]string{"ram": "8G"},
				Connection: "ssh://root@10.0.0.5:22", Power: []string{"on", "off", "reset"}},
		}))
		qemu, err := b.user.GetDevice(ctx, "qemu-1")
		require.NoError(t, err)
		require.False(t, qemu.Declared)
		rpi, err := b.user.GetDevice(ctx, "rpi4-01")
		require.NoError(t, err)
		require.True(t, rpi.Declared)
		code, out, errOut = b.kiln("", "list-devices", "--device-type", "qemu-arm64")
		require.Equal(t, 0, code, errOut)
		require.Equal(t, []string{"qemu-1", "qemu-arm64", "lab-1", "false", "idle", "unknown", "false", "-", "-"},
			strings.Fields(strings.Split(strings.TrimSpace(out), "\n")[1]))

		// Another worker cannot take a name; nothing of its list is applied.
		err = lab2.DeclareDevices(ctx, []schemas.DeviceDeclaration{
			{Name: "x86-1", DeviceType: "x86"}, {Name: "rpi4-01", DeviceType: "rpi4"},
		})
		require.True(t, client.IsConflict(err), "%v", err)
		require.Equal(t, "device-owned", deviceProblemCode(err))
		_, err = b.user.GetDevice(ctx, "x86-1")
		require.True(t, client.IsNotFound(err), "%v", err)

		// Bad declarations, and a user token, are refused.
		err = lab1.DeclareDevices(ctx, []schemas.DeviceDeclaration{{Name: "rpi4-01", DeviceType: "rpi4", Power: []string{"cycle"}}})
		require.Equal(t, 400, client.StatusCode(err), "%v", err)
		require.Contains(t, err.Error(), "/0/power/0")
		err = lab1.DeclareDevices(ctx, []schemas.DeviceDeclaration{{Name: "a", DeviceType: "x"}, {Name: "a", DeviceType: "x"}})
		require.Equal(t, 400, client.StatusCode(err), "%v", err)
		err = b.user.DeclareDevices(ctx, nil)
		require.True(t, client.IsForbidden(err), "%v", err)

		// Only admins change a device's health.
		_, err = b.user.SetDeviceHealth(ctx, "rpi4-01", schemas.DeviceHealthChange{Health: schemas.HealthMaintenance})
		require.True(t, client.IsForbidden(err), "%v", err)
		require.Equal(t, "admin-required", deviceProblemCode(err))
		code, _, errOut = b.kiln("", "manage-device", "rpi4-01", "--maintenance")
		require.Equal(t, 3, code)
		require.Contains(t, errOut, "HTTP 403")
		code, _, errOut = b.kiln("", "manage-device", "rpi4-01", "--maintenance", "--retire")
		require.Equal(t, 2, code)
		require.Contains(t, errOut, "exactly one of")
		_, err = b.admin.SetDeviceHealth(ctx, "rpi4-01", schemas.DeviceHealthChange{Health: schemas.HealthGood})
		require.Equal(t, 400, client.StatusCode(err), "%v", err)
		require.Contains(t, err.Error(), "health checks only")

		d, err := b.admin.SetDeviceHealth(ctx, "rpi4-01", schemas.DeviceHealthChange{Health: schemas.HealthMaintenance, Reason: "reflashing the bootloader"})
		require.NoError(t, err)
		require.Equal(t, schemas.HealthMaintenance, d.Health)
		ds, err = b.user.ListDevices(ctx, client.DeviceFilter{Health: schemas.HealthMaintenance})
		require.NoError(t, err)
		require.Equal(t, []string{"rpi4-01"}, listedDeviceNames(ds))
		d, err = b.admin.SetDeviceHealth(ctx, "rpi4-01", schemas.DeviceHealthChange{Health: schemas.HealthUnknown})
		require.NoError(t, err)
		require.Equal(t, schemas.HealthUnknown, d.Health)
		require.Len(t, d.History, 2)

		// show-device prints the device and its history, newest first.
		code, out, errOut = b.kiln("", "show-device", "rpi4-01")
		require.Equal(t, 0, code, errOut)
		var shown struct {
			Name    string `yaml:"name"`
			Health  string `yaml:"health"`
			Worker  string `yaml:"worker"`
			History []struct {
				Kind   string `yaml:"kind"`
				From   string `yaml:"from"`
				To     string `yaml:"to"`
				Reason string `yaml:"reason"`
			} `yaml:"history"`
		}
		require.NoError(t, yaml.Unmarshal([]byte(out), &shown), out)
		require.Equal(t, "rpi4-01", shown.Name)
		require.Equal(t, "unknown", shown.Health)
		require.Equal(t, "lab-1", shown.Worker)
		require.Len(t, shown.History, 2, out)
		require.Equal(t, "health", shown.History[0].Kind)
		require.Equal(t, "maintenance", shown.History[0].From)
		require.Equal(t, "unknown", shown.History[0].To)
		require.Equal(t, "unknown", shown.History[1].From)
		require.Equal(t, "maintenance", shown.History[1].To)
		require.Equal(t, "reflashing the bootloader", shown.History[1].Reason)

		// A health check now: admins only, not on a device out of service;
		// the device then needs a verify, which no job may pass.
		_, err = b.user.RequestHealthCheck(ctx, "rpi4-01", "")
		require.True(t, client.IsForbidden(err), "%v", err)
		_, err = b.admin.SetDeviceHealth(ctx, "qemu-1", schemas.DeviceHealthChange{Health: schemas.HealthMaintenance})
		require.NoError(t, err)
		_, err = b.admin.RequestHealthCheck(ctx, "qemu-1", "")
		require.True(t, client.IsConflict(err), "%v", err)
		require.Contains(t, err.Error(), "return it to service first")
		code, out, errOut = b.kilnAs("admin", "", "manage-device", "rpi4-01", "--health-check", "--reason", "new power supply")
		require.Equal(t, 0, code, errOut)
		require.NoError(t, yaml.Unmarshal([]byte(out), &shown), out)
		require.Equal(t, "needs", shown.History[0].Kind)
		require.Equal(t, "verify", shown.History[0].To)
		require.Equal(t, "health check requested by admin: new power supply", shown.History[0].Reason)
		code, out, errOut = b.kiln("", "list-devices", "--device-type", "rpi4")
		require.Equal(t, 0, code, errOut)
		require.Equal(t, []string{"rpi4-01", "rpi4", "lab-1", "true", "idle", "unknown", "false", "verify", "-"},
			strings.Fields(strings.Split(strings.TrimSpace(out), "\n")[1]))
		// A dut-test's bundle and provision must exist.
		_, err = b.user.CreateWorkRequest(ctx, schemas.WorkRequestCreate{TaskName: "dut-test",
			TaskData: []byte(`{"device_type":"rpi4","command":"true","bundle":999999,"provision":{"artifact":999998,"command":"true"}}`)})
		require.Equal(t, 400, client.StatusCode(err), "%v", err)
		require.Contains(t, err.Error(), "bundle: artifact 999999 does not exist")
		require.Contains(t, err.Error(), "provision.artifact: artifact 999998 does not exist")
		// Special tasks are the scheduler's.
		_, err = b.admin.CreateWorkRequest(ctx, schemas.WorkRequestCreate{TaskName: "verify", TaskData: []byte(`{"device":"rpi4-01"}`)})
		require.Equal(t, 400, client.StatusCode(err), "%v", err)
		require.Contains(t, err.Error(), "created by the scheduler")

		// Unknown devices.
		_, err = b.user.GetDevice(ctx, "nope")
		require.True(t, client.IsNotFound(err), "%v", err)
		_, err = b.admin.SetDeviceHealth(ctx, "nope", schemas.DeviceHealthChange{Health: schemas.HealthRetired})
		require.True(t, client.IsNotFound(err), "%v", err)
		code, _, errOut = b.kiln("", "show-device", "nope")
		require.Equal(t, 3, code)
		require.Contains(t, errOut, "No Device matches the given query.")
	})
}
