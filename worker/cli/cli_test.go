package cli

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

// The first SIGTERM drains, the second stops: the worker's whole shutdown
// protocol as cmd/kiln-worker wires it.
func TestSignalsDrainThenStop(t *testing.T) {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	drain := onSignals(ctx, stop, zerolog.Nop())
	select {
	case <-drain:
		t.Fatal("drained before any signal")
	default:
	}

	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGTERM))
	select {
	case <-drain:
	case <-time.After(10 * time.Second):
		t.Fatal("the first SIGTERM did not drain")
	}
	require.NoError(t, ctx.Err(), "the first signal only drains")

	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGINT))
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the second signal did not stop the worker")
	}
}

func TestCommandHasEveryOption(t *testing.T) {
	f := Command(nil).Flags()
	for _, name := range []string{"api-url", "token-file", "work-dir", "journal-dir", "grace-period", "cgroup-parent", "config"} {
		require.NotNil(t, f.Lookup(name), name)
	}
	require.Equal(t, "", f.Lookup("journal-dir").DefValue, "the default is journal/ next to the token file")
}
