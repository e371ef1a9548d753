package tasks

import (
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"time"

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

	// BootTimeoutSeconds (boot_timeout) is how long, in seconds, the
	// device gets to answer over SSH after a power action: dut-test's
	// power-on and the reset, repair and cleanup device tasks wait this
	// long before they call it unreachable. Default 120 (DefaultBootTimeout).
	BootTimeoutSeconds int `yaml:"boot_timeout,omitempty"`
	// VerifyCmd (verify_command) is a shell command run on the device, as
	// the SSH user in its home, by every device task that checks the
	// device (verify, cleanup, reset, repair): exit status 0 means the
	// device is healthy. Default "true": a device that answers as itself
	// over SSH is healthy.
	VerifyCmd string `yaml:"verify_command,omitempty"`
	// CleanupCmd (cleanup_command) is a shell command run on the device by
	// the cleanup and repair device tasks after Kiln's own cleanup (which
	// kills what runs left and removes their directories), to undo what
	// tests change elsewhere. A non-zero exit fails the task. Default:
	// none.
	CleanupCmd string `yaml:"cleanup_command,omitempty"`
	// RepairCmd (repair_command) is a shell command line run on the
	// worker (sh -c, like the power commands) by the repair device task
	// before it power-cycles the device: reflash its SD card, say. A
	// non-zero exit fails the repair. Default: none.
	RepairCmd string `yaml:"repair_command,omitempty"`
}

// DefaultBootTimeout is a device's boot_timeout when its configuration
// sets none.
const DefaultBootTimeout = 2 * time.Minute

// maxBootTimeoutSeconds bounds boot_timeout: a day is more than any device
// needs, so a bigger value is a mistake (milliseconds, say).
const maxBootTimeoutSeconds = 86400

// BootTimeout is how long the device gets to answer after a power action.
func (d Device) BootTimeout() time.Duration {
	if d.BootTimeoutSeconds <= 0 {
		return DefaultBootTimeout
	}
	return time.Duration(d.BootTimeoutSeconds) * time.Second
}

// VerifyCommand is the command that checks the device's health on the
// device: its verify_command, or "true".
func (d Device) VerifyCommand() string {
	if d.VerifyCmd == "" {
		return "true"
	}
	return d.VerifyCmd
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

// DeviceNameRule says what a device name must be, for error messages.
const DeviceNameRule = "must be letters, digits, '.', '_' and '-', starting with a letter or digit"

// ValidDeviceName reports whether name follows DeviceNameRule: the worker
// checks its devices file with it, and the server what workers declare.
func ValidDeviceName(name string) bool { return deviceName.MatchString(name) }

// PowerActions are the power actions a device may have.
var PowerActions = []string{"on", "off", "reset"}

// Command returns the command line of power action a, or "" when the
// device has none.
func (p DevicePower) Command(a string) string {
	switch a {
	case "on":
		return p.On
	case "off":
		return p.Off
	case "reset":
		return p.Reset
	}
	return ""
}

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
	case !ValidDeviceName(d.Name):
		return errors.New("name " + DeviceNameRule)
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
	if d.BootTimeoutSeconds < 0 || d.BootTimeoutSeconds > maxBootTimeoutSeconds {
		return fmt.Errorf("boot_timeout must be a number of seconds from 1 to %d (0 or none: %d)", maxBootTimeoutSeconds, int(DefaultBootTimeout/time.Second))
	}
	// The commands that run on the device need the SSH connection; the
	// device tasks have no other way in.
	if d.SSH == nil && (d.VerifyCmd != "" || d.CleanupCmd != "") {
		return errors.New("verify_command and cleanup_command run over ssh: give an ssh connection")
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
	for _, a := range PowerActions {
		if d.HasPower(a) {
			decl.Power = append(decl.Power, a)
		}
	}
	return decl
}

// HasPower reports whether the worker can take power action a.
func (d Device) HasPower(a string) bool { return d.Power.Command(a) != "" }
