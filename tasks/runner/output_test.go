package runner

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// blockingWriter blocks its first Write until released, like a log writer
// stuck on a slow disk.
type blockingWriter struct {
	entered chan struct{}
	release chan struct{}
	buf     bytes.Buffer
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	if w.entered != nil {
		close(w.entered)
		w.entered = nil
		<-w.release
	}
	return w.buf.Write(p)
}

// Regression guard for the interrupt path: once reads are interrupted
// (an escapee holds the pipe), what is already buffered must still reach the
// writer, even when the writer was slow and the data was not read yet.
func TestOutputDrainsAfterInterrupt(t *testing.T) {
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer w.Close() // the "escapee": the write end stays open
	dst := &blockingWriter{entered: make(chan struct{}), release: make(chan struct{})}
	o := newOutput(r, dst)
	entered := dst.entered
	go o.copy()

	_, err = w.WriteString("first\n")
	require.NoError(t, err)
	<-entered // copy is now stuck in Write
	rest := strings.Repeat("x", 40<<10) + "\nlast\n"
	_, err = w.WriteString(rest)
	require.NoError(t, err)

	o.interrupt()
	close(dst.release)
	<-o.done
	err = o.wait(time.Hour) // returns at once: copy is done
	require.ErrorIs(t, err, ErrOutputHeld)
	require.Equal(t, "first\n"+rest, dst.buf.String())
}

type failingWriter struct{ calls int }

func (w *failingWriter) Write([]byte) (int, error) {
	w.calls++
	return 0, errors.New("disk full")
}

// A failing writer must not stall the command: output is read to the end
// and the first error reported.
func TestOutputWriteError(t *testing.T) {
	r, w, err := os.Pipe()
	require.NoError(t, err)
	dst := &failingWriter{}
	o := newOutput(r, dst)
	go o.copy()
	// More than the pipe holds: this blocks forever unless copy keeps
	// reading after the error.
	_, err = w.Write(bytes.Repeat([]byte("y"), 256<<10))
	require.NoError(t, err)
	require.NoError(t, w.Close())
	require.ErrorContains(t, o.wait(DefaultWaitDelay), "disk full")
	require.Equal(t, 1, dst.calls)
}
