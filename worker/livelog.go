package worker

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/kiln-ci/kiln/bus"
)

// liveLog publishes a run's output to JetStream in numbered chunks: at most
// bus.LogChunkMax bytes, at least every flushEvery while output flows. Past
// max bytes it says so in the log and stops publishing; chunks it could not
// publish are counted and reported in the log, never dropped silently. The
// complete output is kept elsewhere (cmd-output.log, the debug-log artifact).
type liveLog struct {
	js      jetstream.JetStream
	subject string
	id      int64
	attempt int
	max     int64
	log     zerolog.Logger

	mu        sync.Mutex
	buf       []byte
	seq       int
	published int64
	lost      int64
	truncated bool
	acks      []jetstream.PubAckFuture

	stop chan struct{}
	done chan struct{}
}

const liveLogFlushEvery = 200 * time.Millisecond

func newLiveLog(js jetstream.JetStream, subject string, id int64, attempt int, max int64, log zerolog.Logger) *liveLog {
	l := &liveLog{js: js, subject: subject, id: id, attempt: attempt, max: max, log: log,
		stop: make(chan struct{}), done: make(chan struct{})}
	go l.flusher()
	return l
}

func (l *liveLog) flusher() {
	defer close(l.done)
	t := time.NewTicker(liveLogFlushEvery)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.mu.Lock()
			l.flushLocked(false)
			l.mu.Unlock()
		}
	}
}

// Write implements io.Writer; it never fails, so that a NATS outage cannot
// fail the task.
func (l *liveLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.truncated {
		return len(p), nil
	}
	room := l.max - l.published - int64(len(l.buf))
	data := p
	if int64(len(data)) > room {
		data = data[:max(room, 0)]
	}
	l.buf = append(l.buf, data...)
	for len(l.buf) >= bus.LogChunkMax {
		l.flushLocked(false)
	}
	if len(data) < len(p) {
		l.buf = append(l.buf, fmt.Sprintf("\n[kiln: the live log stops here at %d bytes; the full output is in the debug-log artifact]\n", l.max)...)
		l.flushLocked(false)
		l.truncated = true
	}
	return len(p), nil
}

// flushLocked publishes what is buffered (up to a chunk); with eof it also
// marks the end of this attempt's log.
func (l *liveLog) flushLocked(eof bool) {
	for len(l.buf) > 0 || eof {
		n := min(len(l.buf), bus.LogChunkMax)
		chunk := l.buf[:n]
		last := eof && n == len(l.buf)
		l.seq++
		m := nats.NewMsg(l.subject)
		m.Data = append([]byte(nil), chunk...)
		m.Header.Set(bus.HeaderLogSeq, strconv.Itoa(l.seq))
		m.Header.Set(bus.HeaderLogAttempt, strconv.Itoa(l.attempt))
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("log-%d-%d-%d", l.id, l.attempt, l.seq))
		if last {
			if l.lost > 0 {
				m.Data = append(m.Data, fmt.Sprintf("\n[kiln: %d bytes of live log could not be published; the full output is in the debug-log artifact]\n", l.lost)...)
			}
			m.Header.Set(bus.HeaderLogEOF, "1")
		}
		f, err := l.js.PublishMsgAsync(m)
		if err != nil {
			l.lost += int64(n)
			l.log.Debug().Err(err).Msg("live log chunk not published")
		} else {
			l.acks = append(l.acks, f)
			l.published += int64(n)
		}
		l.buf = l.buf[n:]
		if last {
			return
		}
	}
}

// Close publishes the rest and the end marker, and waits (bounded) for the
// stream to confirm.
func (l *liveLog) Close(ctx context.Context) {
	close(l.stop)
	<-l.done
	l.mu.Lock()
	l.flushLocked(true)
	acks := l.acks
	l.acks = nil
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, f := range acks {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			l.log.Debug().Err(err).Msg("live log chunk not stored")
		case <-ctx.Done():
			return
		}
	}
}
