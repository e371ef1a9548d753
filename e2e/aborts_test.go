package e2e

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server"
)

func TestTimeoutEndsAsErrorAndFreesTheSlot(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		w := b.startWorker("slow", 1, nil)
		wr := b.create(b.user, "noop", `{"sleep_seconds": 600, "timeout": 1}`)
		require.Equal(t, 1, wr.TimeoutSeconds)
		got := b.wait(wr.ID)
		require.Equal(t, schemas.StatusCompleted, got.Status)
		require.Equal(t, schemas.ResultError, got.Result)
		require.Equal(t, "timeout", got.Reason)
		require.NotNil(t, got.DeadlineAt)
		b.waitFor("the kill confirmation", func() bool { return !b.get(wr.ID).KillPending })

		// The slot is free again: the next request runs on the same worker.
		next := b.wait(b.create(b.user, "noop", `{}`).ID)
		require.Equal(t, schemas.ResultSuccess, next.Result)
		require.Equal(t, w.id, *next.Worker)
	})
}

func TestDefaultTimeouts(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			b := setupWith(t, be, func(c *server.Config) {
				c.TaskTimeout = time.Hour
				c.TaskTimeouts = map[string]time.Duration{"noop": 90 * time.Second}
			})
			require.Equal(t, 90, b.create(b.user, "noop", `{}`).TimeoutSeconds)
			require.Equal(t, 5, b.create(b.user, "noop", `{"timeout": 4.2}`).TimeoutSeconds)
		})
	}
}

func TestAbortHoldsTheSlotUntilTheKillIsConfirmed(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		w := b.startWorker("busy", 1, nil)
		wr := b.create(b.user, "noop", `{"sleep_seconds": 600}`)
		b.waitFor("the run", func() bool { return b.get(wr.ID).Status == schemas.StatusRunning })
		aborted, err := b.user.AbortWorkRequest(b.ctx, wr.ID)
		require.NoError(t, err)
		require.Equal(t, schemas.StatusAborted, aborted.Status)
		require.True(t, aborted.KillPending, "the slot is held until the worker confirms")
		b.waitFor("the kill confirmation", func() bool { return !b.get(wr.ID).KillPending })
		next := b.wait(b.create(b.user, "noop", `{}`).ID)
		require.Equal(t, w.id, *next.Worker)
	})
}

func TestOfflineWorkerLearnsOfTheAbortAndIsFlaggedMeanwhile(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			b := setupWith(t, be, func(c *server.Config) { c.KillConfirmTimeout = time.Second })
			// A worker process, killed: a worker that is stopped hands its
			// run back instead.
			w := b.startWorkerProcess("flaky-net")
			wr := b.create(b.user, "noop", `{"sleep_seconds": 600}`)
			b.waitFor("the run", func() bool { return b.get(wr.ID).Status == schemas.StatusRunning })
			w.kill() // the worker is gone while its run is (as far as the server knows) running

			_, err := b.user.AbortWorkRequest(b.ctx, wr.ID)
			require.NoError(t, err)
			b.waitFor("the worker to be flagged", func() bool {
				ws, err := b.admin.ListWorkers(b.ctx)
				require.NoError(t, err)
				for _, x := range ws {
					if x.ID == w.id {
						return slices.Contains(x.OverdueKills, wr.ID)
					}
				}
				return false
			})
			require.False(t, b.get(wr.ID).KillPending, "past the deadline the slot is no longer held")

			// Back online, the worker finds the abort in its durable control
			// consumer and confirms; the flag goes.
			w.start()
			b.waitFor("the flag to clear", func() bool {
				ws, err := b.admin.ListWorkers(b.ctx)
				require.NoError(t, err)
				for _, x := range ws {
					if x.ID == w.id {
						return len(x.OverdueKills) == 0
					}
				}
				return false
			})
		})
	}
}
