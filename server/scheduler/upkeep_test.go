package scheduler

import (
	"database/sql"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/bus"
	"github.com/kiln-ci/kiln/server/store"
)

func TestHealthCheckDue(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	at := func(ago time.Duration) sql.NullTime { return sql.NullTime{Time: now.Add(-ago), Valid: true} }
	s := New(nil, nil, nil, bus.Names{}, Options{Devices: DevicePolicy{HealthCheckInterval: 6 * time.Hour, HealthCheckJobs: 10}})
	for _, c := range []struct {
		name string
		d    store.Device
		want string
	}{
		{"new device", store.Device{Health: "unknown"}, "health unknown: first check"},
		{"good, checked lately", store.Device{Health: "good", LastHealthCheckAt: at(time.Hour), JobsSinceHealthCheck: 9}, ""},
		{"good, N jobs", store.Device{Health: "good", LastHealthCheckAt: at(time.Hour), JobsSinceHealthCheck: 10}, "health check: 10 jobs since the last one"},
		{"good, N hours", store.Device{Health: "good", LastHealthCheckAt: at(6 * time.Hour)}, "health check: every 6h0m0s"},
		{"good, never checked", store.Device{Health: "good"}, "health check: every 6h0m0s"},
		{"bad, checked lately", store.Device{Health: "bad", LastHealthCheckAt: at(time.Minute)}, ""},
		{"bad, recheck due", store.Device{Health: "bad", LastHealthCheckAt: at(time.Hour)}, "re-verification of a bad device"},
		{"maintenance", store.Device{Health: "maintenance"}, ""},
		{"retired", store.Device{Health: "retired"}, ""},
	} {
		require.Equal(t, c.want, s.healthCheckDue(c.d, now), c.name)
	}

	never := New(nil, nil, nil, bus.Names{}, Options{Devices: DevicePolicy{HealthCheckInterval: -1, BadRecheck: -1}})
	require.Empty(t, never.healthCheckDue(store.Device{Health: "good", JobsSinceHealthCheck: 1000}, now), "jobs: 0 is never")
	require.Empty(t, never.healthCheckDue(store.Device{Health: "bad"}, now))
	require.Equal(t, PreJobDirty, never.opt.Devices.PreJob, "the default policy")
}
