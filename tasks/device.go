package tasks

import (
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"

	"gopkg.in/yaml.v3"

	"github.com/kiln-ci/kiln/schemas"
)

// Device is a device under test as its lab worker's configuration
// declares it: how to reach it and how to switch it. The server only ever
// learns the public part (Declaration); keys and power command lines stay
// on the worker.
type Device struct {
	Name   string            `yaml:"name"`
	Type   string            `yaml:"type"`
	Labels map[string]string `yaml:"labels"`
	SSH    *DeviceSSH        `yaml:"ssh"`
	Serial *DeviceSerial     `yaml:"serial"`
	Power  DevicePower       `yaml:"power"`
}

// DeviceSSH is an SSH connection to a device.
type DeviceSSH struct {
	Host string `yaml:"host"`
	Port int    `yaml:"port"`
	User string `yaml:"user"`
	// KeyFile is the private key the worker logs in with.
	KeyFile string `yaml:"key_file"`
	// KnownHostKey is the device's host key ("ssh-ed25519 AAAA…"): the
	// worker refuses a device that answers with another.
	KnownHostKey string `yaml:"known_host_key"`
}

// DeviceSerial is a serial console reached through a command (a second
// connection type, for logs and for devices without a network).
type DeviceSerial struct {
	Command string `yaml:"command"`
}

// DevicePower holds the shell command lines that switch a device; any
// program will do (a PDU client, a relay, a script).
type DevicePower struct {
	On    string `yaml:"on"`
	Off   string `yaml:"off"`
	Reset string `yaml:"reset"`
}

// DeviceFile is the YAML file of a lab worker's devices.
type DeviceFile struct {
	Devices []Device `yaml:"devices"`
}

var deviceName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// LoadDevices reads and checks a devices file.
func LoadDevices(path string) ([]Device, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("devices file: %w", err)
	}
	var f DeviceFile
	if err := yaml.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("devices file %s: %w", path, err)
	}
	seen := map[string]bool{}
	for i := range f.Devices {
		d := &f.Devices[i]
		if err := d.check(); err != nil {
			return nil, fmt.Errorf("devices file %s: device %d (%q): %w", path, i+1, d.Name, err)
		}
		if seen[d.Name] {
			return nil, fmt.Errorf("devices file %s: device %q is declared twice", path, d.Name)
		}
		seen[d.Name] = true
	}
	return f.Devices, nil
}

func (d *Device) check() error {
	switch {
	case !deviceName.MatchString(d.Name):
		return errors.New("name must be letters, digits, '.', '_' and '-', starting with a letter or digit")
	case d.Type == "":
		return errors.New("type is required")
	case d.SSH == nil && d.Serial == nil:
		return errors.New("give an ssh or a serial connection")
	}
	if s := d.SSH; s != nil {
		if s.Port == 0 {
			s.Port = 22
		}
		switch {
		case s.Host == "" || s.User == "":
			return errors.New("ssh needs host and user")
		case s.KeyFile == "":
			return errors.New("ssh needs key_file")
		case s.KnownHostKey == "":
			return errors.New("ssh needs known_host_key: the worker never trusts a device on first use")
		}
	}
	if s := d.Serial; s != nil && s.Command == "" {
		return errors.New("serial needs command")
	}
	return nil
}

// Declaration is what the server learns of d.
func (d Device) Declaration() schemas.DeviceDeclaration {
	decl := schemas.DeviceDeclaration{Name: d.Name, DeviceType: d.Type, Labels: d.Labels}
	switch {
	case d.SSH != nil:
		decl.Connection = "ssh://" + d.SSH.User + "@" + net.JoinHostPort(d.SSH.Host, strconv.Itoa(d.SSH.Port))
	case d.Serial != nil:
		decl.Connection = "serial"
	}
	for _, p := range []struct{ name, cmd string }{{"on", d.Power.On}, {"off", d.Power.Off}, {"reset", d.Power.Reset}} {
		if p.cmd != "" {
			decl.Power = append(decl.Power, p.name)
		}
	}
	return decl
}

// HasPower reports whether the worker can take power action a.
func (d Device) HasPower(a string) bool { return slices.Contains(d.Declaration().Power, a) }
