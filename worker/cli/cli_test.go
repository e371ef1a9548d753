package cli

import (
	"bytes"
	"context"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

// The first SIGTERM drains, the second stops, a third changes nothing:
// the worker's whole shutdown protocol as cmd/kiln-worker wires it.
func TestSignalsDrainThenStop(t *testing.T) {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var logs lockedBuffer
	drain, release := onSignals(stop, zerolog.New(&logs))
	defer release()
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

	// Regression: the handler was gone after the second signal, so a
	// third one killed the worker while it handed its work back. Were it
	// gone, this would kill the test binary.
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		require.NoError(t, syscall.Kill(os.Getpid(), sig))
	}
	// Release only once both were handled: a signal still in flight when
	// the handler goes would kill the test binary.
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(logs.String(), "while stopping") < 2 {
		require.True(t, time.Now().Before(deadline), "later signals not handled: %s", logs.String())
		time.Sleep(10 * time.Millisecond)
	}
	release()
	release() // twice is harmless
}

// lockedBuffer is a bytes.Buffer for a logger written from another
// goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestCommandHasEveryOption(t *testing.T) {
	f := Command(nil).Flags()
	for _, name := range []string{"api-url", "token-file", "work-dir", "journal-dir", "grace-period", "cgroup-parent", "config"} {
		require.NotNil(t, f.Lookup(name), name)
	}
	require.Equal(t, "", f.Lookup("journal-dir").DefValue, "the default is journal/ next to the token file")
}
