package e2e

import (
	"strings"
	"sync/atomic"
	"testing"

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

// TestSchedulerGroupsByShape proves that the scheduler evaluates CanRunOn
// once per shape and worker, not once per pending request and worker, and
// not again in later passes while the worker's metadata stays the same.
func TestSchedulerGroupsByShape(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			var calls atomic.Int64
			reg := tasks.Default()
			schema, err := schemas.TaskSchema("noop")
			require.NoError(t, err)
			require.NoError(t, reg.RegisterWithSchema(counted{calls: &calls}, schema))
			b := setupWith(t, be, func(c *server.Config) { c.Registry = reg })

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

			for range 3 {
				n, err := b.srv.Scheduler().Pass(b.ctx)
				require.NoError(t, err)
				require.Zero(t, n)
			}
			want, got := int64(len(archs)*3), calls.Load()
			require.Equal(t, want, got,
				"CanRunOn ran %d times in %d passes for %d requests: it must run once per shape and worker",
				got, b.srv.Scheduler().Passes(), perShape*len(archs))
		})
	}
}
