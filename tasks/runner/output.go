package runner

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// maxDrain bounds the final non-blocking read after WaitDelay. What the
// command wrote before it exited and we have not read yet is in the pipe
// buffer (64 KiB by default, 1 MiB at most unless an admin raised
// pipe-max-size); anything beyond that is an escaped process still writing.
const maxDrain = 1 << 20

// output copies the command's pipe to the caller's writer. The command's
// stdout and stderr are the same pipe, so one goroutine does all writes.
//
// We read the pipe ourselves instead of letting os/exec do it so that
// cmd.Wait returns as soon as the main process exits: Run must kill the
// leftovers (which may hold the pipe) before it waits for EOF.
type output struct {
	r    *os.File
	dst  io.Writer
	done chan struct{} // closed when copy has returned

	// Written by copy, read after done.
	err  error // first write or read error
	held bool  // the pipe was still open when wait gave up
}

func newOutput(r *os.File, dst io.Writer) *output {
	return &output{r: r, dst: dst, done: make(chan struct{})}
}

// copy reads until EOF, or until interrupt, and then reads what is already
// buffered without blocking.
func (o *output) copy() {
	defer close(o.done)
	buf := make([]byte, 32<<10)
	for {
		n, err := o.r.Read(buf)
		o.write(buf[:n])
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
			o.held = true
			o.drain(buf)
			return
		case errors.Is(err, io.EOF):
			return
		default:
			o.setErr(fmt.Errorf("read output: %w", err))
			return
		}
	}
}

// write passes p on. After the first write error it keeps reading and
// discarding, so that the command is not blocked on a full pipe.
func (o *output) write(p []byte) {
	if len(p) == 0 || o.err != nil {
		return
	}
	if _, err := o.dst.Write(p); err != nil {
		o.setErr(fmt.Errorf("write output: %w", err))
	}
}

func (o *output) setErr(err error) {
	if o.err == nil {
		o.err = err
	}
}

// drain reads what the pipe holds right now, without waiting for more. A
// deadline makes every read fail at once, even with data buffered, so it is
// cleared first and the file descriptor read directly (it is non-blocking).
func (o *output) drain(buf []byte) {
	if err := o.r.SetReadDeadline(time.Time{}); err != nil {
		return
	}
	rc, err := o.r.SyscallConn()
	if err != nil {
		return
	}
	for total := 0; total < maxDrain; {
		var n int
		var rerr error
		// Returning true: one attempt, never wait for readiness.
		if err := rc.Read(func(fd uintptr) bool {
			n, rerr = syscall.Read(int(fd), buf)
			return true
		}); err != nil {
			return
		}
		if errors.Is(rerr, syscall.EINTR) {
			continue
		}
		if rerr != nil || n <= 0 {
			return
		}
		o.write(buf[:n])
		total += n
	}
}

// interrupt stops a blocked read; copy then drains and returns.
func (o *output) interrupt() {
	_ = o.r.SetReadDeadline(time.Now())
}

// wait waits up to delay for EOF, then interrupts the copy, waits for it and
// closes the pipe. It returns the first write error, or ErrOutputHeld.
func (o *output) wait(delay time.Duration) error {
	t := time.NewTimer(delay)
	select {
	case <-o.done:
		t.Stop()
	case <-t.C:
		o.interrupt()
		<-o.done
	}
	_ = o.r.Close()
	if o.err == nil && o.held {
		return fmt.Errorf("%w %s after the run's processes were killed", ErrOutputHeld, delay)
	}
	return o.err
}
