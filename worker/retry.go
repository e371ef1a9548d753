package worker

import (
	"context"
	cryptorand "crypto/rand"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"time"
)

type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() error { return p.err }

// permanent marks an error that retrying cannot fix.
func permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// retry calls f until it succeeds, returns a permanent error, or ctx ends,
// with jittered exponential backoff from 200ms up to RetryMax, logging why it
// waits.
func (w *Worker) retry(ctx context.Context, what string, f func() error) error {
	delay := 200 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return nil
		}
		var p permanentError
		if errors.As(err, &p) {
			return p.err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		w.log.Warn().Err(err).Dur("retry_in", delay).Msg(what)
		if !sleep(ctx, delay+time.Duration(rand.Int64N(int64(delay/4)+1))) {
			return ctx.Err()
		}
		delay = min(delay*2, w.cfg.RetryMax)
	}
}

// sleep waits d or until ctx ends; it reports whether the full time passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func newToken() string {
	b := make([]byte, 32)
	if _, err := cryptorand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func newTail(max int) *tail { return &tail{max: max} }

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.ToValidUTF8(string(t.b), "\uFFFD")
}
