package schemas

import (
	"encoding/json"
	"time"
)

// DeviceState is what the scheduler is doing with a device under test.
type DeviceState string

// Device states, set by the scheduler only.
const (
	DeviceIdle     DeviceState = "idle"
	DeviceReserved DeviceState = "reserved"
	DeviceRunning  DeviceState = "running"
)

// DeviceHealth says whether a device may be used, LAVA-style. Health checks
// set good and bad; admins set maintenance and retired, and return a device
// to service (unknown, until its next health check).
type DeviceHealth string

// Device healths.
const (
	HealthGood        DeviceHealth = "good"
	HealthUnknown     DeviceHealth = "unknown"
	HealthBad         DeviceHealth = "bad"
	HealthMaintenance DeviceHealth = "maintenance"
	HealthRetired     DeviceHealth = "retired"
)

// Valid reports whether h is one of the healths.
func (h DeviceHealth) Valid() bool {
	switch h {
	case HealthGood, HealthUnknown, HealthBad, HealthMaintenance, HealthRetired:
		return true
	}
	return false
}

// DeviceDeclaration is what a lab worker declares of one device it controls
// (PUT /api/1.0/worker/devices/, Kiln). Secrets (keys, power command lines)
// stay on the worker.
type DeviceDeclaration struct {
	Name       string            `json:"name"`
	DeviceType string            `json:"device_type"`
	Labels     map[string]string `json:"labels,omitempty"`
	// Connection is how the worker reaches the device, without secrets:
	// "ssh://user@host:port" or "serial".
	Connection string `json:"connection,omitempty"`
	// Power lists the power actions the worker can take: on, off, reset.
	Power []string `json:"power,omitempty"`
}

// DeviceEvent is one change in a device's history.
type DeviceEvent struct {
	At time.Time `json:"at"`
	// Kind is state, health or dirty.
	Kind string `json:"kind"`
	From string `json:"from"`
	To   string `json:"to"`
	// Reason says why, in words for the user.
	Reason string `json:"reason,omitempty"`
	// WorkRequest is the request that caused the change, if any.
	WorkRequest *int64 `json:"work_request,omitempty"`
}

// Device is the JSON shape of a device under test (Kiln).
type Device struct {
	ID         int64             `json:"id"`
	Name       string            `json:"name"`
	DeviceType string            `json:"device_type"`
	Labels     map[string]string `json:"labels"`
	Connection string            `json:"connection"`
	Power      []string          `json:"power"`
	// Worker is the name of the worker that controls the device.
	Worker   string `json:"worker"`
	WorkerID int64  `json:"worker_id"`
	// Declared is false once its worker stopped declaring it; such a
	// device gets no work.
	Declared bool         `json:"declared"`
	State    DeviceState  `json:"state"`
	Health   DeviceHealth `json:"health"`
	// Dirty says that a job used it since it was last cleaned up.
	Dirty bool `json:"dirty"`
	// LeaseWorkRequest is the request that holds the device, if any.
	LeaseWorkRequest     *int64     `json:"lease_work_request"`
	JobsSinceHealthCheck int        `json:"jobs_since_health_check"`
	LastHealthCheckAt    *time.Time `json:"last_health_check_at"`
	// Needs is the special task the device needs next (verify, cleanup,
	// reset, repair, provision), "" for none; no job gets the device
	// until it has run. NeedsReason says why.
	Needs       string `json:"needs"`
	NeedsReason string `json:"needs_reason,omitempty"`
	// UpkeepWorkRequest is the request of that special task, once the
	// scheduler created it.
	UpkeepWorkRequest *int64 `json:"upkeep_work_request"`
	// HeldFor is the job the device is being prepared for: no other job
	// gets it meanwhile.
	HeldFor   *int64    `json:"held_for"`
	UpdatedAt time.Time `json:"updated_at"`
	// History holds the latest changes, newest first (detail only).
	History []DeviceEvent `json:"history,omitempty"`
}

// DeviceHealthCheck is the optional body of POST
// /api/1.0/device/NAME/health-check/ (Kiln, admins).
type DeviceHealthCheck struct {
	Reason string `json:"reason,omitempty"`
}

// DeviceHealthChange is the body of POST /api/1.0/device/NAME/health/
// (Kiln, admins): maintenance, retired, or unknown to return a device to
// service.
type DeviceHealthChange struct {
	Health DeviceHealth `json:"health"`
	Reason string       `json:"reason,omitempty"`
}

// Device special tasks (Autotest's special tasks): each is a registered
// task bound to one device by its task data's "device". The scheduler
// creates them; nobody submits them through the work-request API.
const (
	// DeviceTaskVerify checks that the device answers as itself and runs
	// its verify command; a passing verify is a health check.
	DeviceTaskVerify = "verify"
	// DeviceTaskCleanup removes what jobs left on a dirty device, then
	// verifies it.
	DeviceTaskCleanup = "cleanup"
	// DeviceTaskReset power-cycles the device, then verifies it.
	DeviceTaskReset = "reset"
	// DeviceTaskRepair is the stronger recovery; when it fails the device's
	// health becomes bad.
	DeviceTaskRepair = "repair"
	// DeviceTaskProvision installs an artifact a job needs on the device.
	DeviceTaskProvision = "provision"
)

// DeviceTasks lists the device special tasks.
var DeviceTasks = []string{DeviceTaskVerify, DeviceTaskCleanup, DeviceTaskReset, DeviceTaskRepair, DeviceTaskProvision}

// IsDeviceTask reports whether task is a device special task.
func IsDeviceTask(task string) bool {
	for _, t := range DeviceTasks {
		if t == task {
			return true
		}
	}
	return false
}

// DeviceTaskData is the task data of a device special task. Provision also
// has "artifact" and "command".
type DeviceTaskData struct {
	Device string `json:"device"`
	// Reason says why the scheduler runs it.
	Reason string `json:"reason,omitempty"`
	// ForWorkRequest is the job the device is being prepared for, if any.
	ForWorkRequest int64 `json:"for_work_request,omitempty"`
	// Artifact and Command: provision's artifact, and the command that
	// installs it on the device, run in the directory holding its files.
	Artifact int64  `json:"artifact,omitempty"`
	Command  string `json:"command,omitempty"`
}

// DeviceProvision is what a job asks to have installed on its device
// before it runs (a dut-test's "provision"): the provision special task
// copies the artifact's files to the device and runs the command there.
type DeviceProvision struct {
	Artifact int64  `json:"artifact"`
	Command  string `json:"command"`
}

// JobProvision returns the "provision" of a job's task data, or nil when
// it asks for none.
func JobProvision(taskData string) *DeviceProvision {
	var d struct {
		Provision *DeviceProvision `json:"provision"`
	}
	if json.Unmarshal([]byte(taskData), &d) != nil || d.Provision == nil || d.Provision.Artifact <= 0 || d.Provision.Command == "" {
		return nil
	}
	return d.Provision
}
