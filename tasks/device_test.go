package tasks

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
)

func TestLoadDevices(t *testing.T) {
	path := filepath.Join(t.TempDir(), "devices.yaml")
	require.NoError(t, os.WriteFile(path, []byte(`devices:
  - name: board-1
    type: rpi4
    labels: {ram: 4G}
    ssh: {host: 10.0.0.2, user: root, key_file: /etc/kiln/dut_key, known_host_key: "ssh-ed25519 AAAAC3Nz"}
    power: {on: "pdu on 3", off: "pdu off 3"}
    boot_timeout: 300
    verify_command: "systemctl is-system-running --wait"
    cleanup_command: "rm -rf /var/tmp/tests"
    repair_command: "flash-sd --port 3 image.img"
  - name: board-2
    type: rpi4
    serial: {command: "picocom /dev/ttyUSB0"}
`), 0o644))
	devs, err := LoadDevices(path)
	require.NoError(t, err)
	require.Len(t, devs, 2)
	require.Equal(t, 22, devs[0].SSH.Port, "the SSH port defaults to 22")
	require.Equal(t, schemas.DeviceDeclaration{Name: "board-1", DeviceType: "rpi4", Labels: map[string]string{"ram": "4G"},
		Connection: "ssh://root@10.0.0.2:22", Power: []string{"on", "off"}}, devs[0].Declaration())
	require.Equal(t, "serial", devs[1].Declaration().Connection)
	require.Equal(t, 5*time.Minute, devs[0].BootTimeout())
	require.Equal(t, "systemctl is-system-running --wait", devs[0].VerifyCommand())
	require.Equal(t, "rm -rf /var/tmp/tests", devs[0].CleanupCmd)
	require.Equal(t, "flash-sd --port 3 image.img", devs[0].RepairCmd)
	require.Equal(t, DefaultBootTimeout, devs[1].BootTimeout(), "boot_timeout defaults to 2 minutes")
	require.Equal(t, "true", devs[1].VerifyCommand(), "a device that answers is healthy by default")
	require.True(t, devs[0].HasPower("off"))
	require.False(t, devs[0].HasPower("reset"))

	for _, c := range []struct{ yaml, want string }{
		{"devices: [{name: 'bad name', type: x, serial: {command: c}}]", "name must be"},
		{"devices: [{name: a, serial: {command: c}}]", "type is required"},
		{"devices: [{name: a, type: x}]", "give an ssh or a serial connection"},
		{"devices: [{name: a, type: x, ssh: {host: h, user: u, key_file: k}}]", "never trusts a device on first use"},
		{"devices: [{name: a, type: x, serial: {command: c}}, {name: a, type: x, serial: {command: c}}]", "declared twice"},
		{"devices: {name: a}", "cannot unmarshal"},
		{"devices: [{name: a, type: x, serial: {command: c}, boot_timeout: -1}]", "boot_timeout must be"},
		{"devices: [{name: a, type: x, serial: {command: c}, boot_timeout: 86401}]", "boot_timeout must be"},
		{"devices: [{name: a, type: x, serial: {command: c}, boot_timeout: 2m}]", "cannot unmarshal"},
		{"devices: [{name: a, type: x, serial: {command: c}, verify_command: 'true'}]", "give an ssh connection"},
	} {
		require.NoError(t, os.WriteFile(path, []byte(c.yaml), 0o644))
		_, err := LoadDevices(path)
		require.ErrorContains(t, err, c.want, c.yaml)
	}
}
