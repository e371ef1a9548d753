package e2e

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server"
	"github.com/kiln-ci/kiln/tasks"
)

// counted is noop under another name whose CanRunOn calls are counted.
type counted struct {
	tasks.Noop
	calls *atomic.Int64
}

func (counted) Name() string { return "counted" }

func (c counted) CanRunOn(req tasks.Requirements, md schemas.Metadata) error {
	c.calls.Add(1)
	return tasks.BaseCanRunOn(c, req, md)
}

// TestSchedulerGroupsByShape proves that a pass evaluates CanRunOn once per
// shape and worker, not once per pending request and worker.
func TestSchedulerGroupsByShape(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			var calls atomic.Int64
			reg := tasks.Default()
			schema, err := schemas.TaskSchema("noop")
			require.NoError(t, err)
			require.NoError(t, reg.RegisterWithSchema(counted{calls: &calls}, schema))
			// No sweeps: only events trigger passes, so that the pass
			// measured below runs (nearly always) alone.
			b := setupWith(t, be, func(c *server.Config) { c.Registry = reg; c.SchedulerSweep = time.Hour })

			// Three workers that cannot run "counted": they have the default
			// registry, so they do not report it.
			b.registry = nil
			for _, name := range []string{"w1", "w2", "w3"} {
				b.startWorker(name, 1, nil)
			}
			archs := []string{"amd64", "arm64", "riscv64"}
			const perShape = 100
			var last schemas.WorkRequest
			for i := range perShape * len(archs) {
				last = b.create(b.user, "counted", `{"host_architecture": "`+archs[i%len(archs)]+`"}`)
			}
			b.waitFor("a waiting reason for the last request", func() bool {
				return strings.Contains(b.get(last.ID).WaitingReason, "worker does not report counted:version")
			})

			before := b.srv.Scheduler().Passes()
			calls.Store(0)
			n, err := b.srv.Scheduler().Pass(b.ctx)
			require.NoError(t, err)
			require.Zero(t, n)
			got := calls.Load()
			passes := b.srv.Scheduler().Passes() - before
			perPass := int64(len(archs) * 3)
			// Other passes (events, a sweep) may run beside ours; one that
			// began before the count was reset adds at most one pass more.
			require.LessOrEqual(t, got, perPass*(passes+1),
				"CanRunOn ran %d times in %d passes for %d requests: it must run per shape and worker, not per request",
				got, passes, perShape*len(archs))
			require.GreaterOrEqual(t, got, perPass)
		})
	}
}
