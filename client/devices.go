package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"

	"github.com/kiln-ci/kiln/schemas"
)

// DeviceFilter selects devices in ListDevices. Zero fields are not sent.
type DeviceFilter struct {
	// DeviceType keeps devices of this type only.
	DeviceType string
	// Worker keeps the devices of the worker with this name only.
	Worker string
	// Health keeps devices with this health only.
	Health schemas.DeviceHealth
}

func (f DeviceFilter) query() url.Values {
	q := url.Values{}
	if f.DeviceType != "" {
		q.Set("device_type", f.DeviceType)
	}
	if f.Worker != "" {
		q.Set("worker", f.Worker)
	}
	if f.Health != "" {
		q.Set("health", string(f.Health))
	}
	return q
}

func devicePath(name, action string) string {
	p := "device/" + url.PathEscape(name) + "/"
	if action != "" {
		p += action + "/"
	}
	return p
}

// DeclareDevices replaces the devices under test that the worker (the
// Client's token is a worker token) declares; an empty decl says it has
// none. The server answers 204; a name that another worker declares is a
// 409 (IsConflict, code device-owned).
func (c *Client) DeclareDevices(ctx context.Context, decl []schemas.DeviceDeclaration) error {
	if decl == nil {
		decl = []schemas.DeviceDeclaration{}
	}
	err := c.doEmpty(ctx, call{
		method: http.MethodPut,
		url:    c.endpoint("worker/devices/", nil),
		body:   decl,
		expect: []int{http.StatusNoContent},
	})
	if err != nil {
		return fmt.Errorf("declare %d devices: %w", len(decl), err)
	}
	return nil
}

// ListDevices returns the devices that f selects, by name, without their
// history.
func (c *Client) ListDevices(ctx context.Context, f DeviceFilter) ([]schemas.Device, error) {
	var out []schemas.Device
	err := c.doJSON(ctx, call{
		method: http.MethodGet,
		url:    c.endpoint("device/", f.query()),
		expect: []int{http.StatusOK},
	}, &out)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return out, nil
}

// GetDevice returns one device with its latest history, newest first.
func (c *Client) GetDevice(ctx context.Context, name string) (schemas.Device, error) {
	var out schemas.Device
	err := c.doJSON(ctx, call{
		method: http.MethodGet,
		url:    c.endpoint(devicePath(name, ""), nil),
		expect: []int{http.StatusOK},
	}, &out)
	if err != nil {
		return schemas.Device{}, fmt.Errorf("get device %q: %w", name, err)
	}
	return out, nil
}

// SetDeviceHealth changes a device's health (admins only): maintenance,
// retired, or unknown to return it to service. It returns the device with
// its latest history.
func (c *Client) SetDeviceHealth(ctx context.Context, name string, change schemas.DeviceHealthChange) (schemas.Device, error) {
	var out schemas.Device
	err := c.doJSON(ctx, call{
		method: http.MethodPost,
		url:    c.endpoint(devicePath(name, "health"), nil),
		body:   change,
		expect: []int{http.StatusOK},
	}, &out)
	if err != nil {
		return schemas.Device{}, fmt.Errorf("set health of device %q to %s: %w", name, change.Health, err)
	}
	return out, nil
}

// RequestHealthCheck asks for a health check of a device now (admins
// only): the scheduler runs a verify on it before its next job. It returns
// the device with its latest history.
func (c *Client) RequestHealthCheck(ctx context.Context, name, reason string) (schemas.Device, error) {
	var out schemas.Device
	err := c.doJSON(ctx, call{
		method: http.MethodPost,
		url:    c.endpoint(devicePath(name, "health-check"), nil),
		body:   schemas.DeviceHealthCheck{Reason: reason},
		expect: []int{http.StatusOK},
	}, &out)
	if err != nil {
		return schemas.Device{}, fmt.Errorf("health check of device %q: %w", name, err)
	}
	return out, nil
}
