package schemas

import "time"

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
	UpdatedAt            time.Time  `json:"updated_at"`
	// History holds the latest changes, newest first (detail only).
	History []DeviceEvent `json:"history,omitempty"`
}

// DeviceHealthChange is the body of POST /api/1.0/device/NAME/health/
// (Kiln, admins): maintenance, retired, or unknown to return a device to
// service.
type DeviceHealthChange struct {
	Health DeviceHealth `json:"health"`
	Reason string       `json:"reason,omitempty"`
}
