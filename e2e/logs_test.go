package e2e

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
)

func TestLiveLog(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		b.startWorker("talker", 1, nil)
		wr := b.create(b.user, "noop", `{"sleep_seconds": 2}`)

		// Follow from before it starts: output arrives while it runs.
		var mu sync.Mutex
		var got strings.Builder
		sawWhileRunning := false
		ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
		defer cancel()
		end, err := b.user.FollowLog(ctx, wr.ID, func(ch schemas.LogChunk) {
			mu.Lock()
			defer mu.Unlock()
			got.WriteString(ch.Text)
			if strings.Contains(ch.Text, "sleeping 2s") && b.get(wr.ID).Status == schemas.StatusRunning {
				sawWhileRunning = true
			}
		})
		require.NoError(t, err)
		require.Equal(t, schemas.StatusCompleted, end.Status)
		require.Equal(t, schemas.ResultSuccess, end.Result)
		require.True(t, sawWhileRunning, "the output must arrive while the request runs")
		require.Equal(t, "sleeping 2s\nnoop: success\n", got.String())

		// After the end, the whole log at once, and following returns at once.
		var all bytes.Buffer
		require.NoError(t, b.user.Log(b.ctx, wr.ID, &all))
		require.Equal(t, "sleeping 2s\nnoop: success\n", all.String())
		end, err = b.user.FollowLog(ctx, wr.ID, func(schemas.LogChunk) {})
		require.NoError(t, err)
		require.Equal(t, schemas.ResultSuccess, end.Result)

		// The CLI: kiln logs ID, and kiln logs -f ID of a failing request.
		code, out, errOut := b.kiln("", "logs", fmt.Sprint(wr.ID))
		require.Equal(t, 0, code, errOut)
		require.Equal(t, "sleeping 2s\nnoop: success\n", out)
		failing := b.create(b.user, "noop", `{"result": false, "sleep_seconds": 0.5}`)
		code, out, errOut = b.kiln("", "logs", "-f", fmt.Sprint(failing.ID))
		require.Equal(t, 1, code, errOut)
		require.Contains(t, out, "noop: failure, as requested")
		require.Contains(t, errOut, "completed (failure)")

		// A request that never ran has an empty log; an unknown one is 404.
		pending := b.create(b.user, "noop", `{"host_architecture": "alpha"}`)
		all.Reset()
		require.NoError(t, b.user.Log(b.ctx, pending.ID, &all))
		require.Empty(t, all.String())
		require.Error(t, b.user.Log(b.ctx, 999999, &all))
	})
}
