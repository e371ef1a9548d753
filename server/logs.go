package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-ci/kiln/bus"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
)

// getLog serves a work request's live log: everything stored so far as
// text/plain, or with ?follow=1 as Server-Sent Events (event "chunk" with a
// schemas.LogChunk, then event "end" with the final status) until the
// request has ended and its worker has published the end of the log.
func (s *Server) getLog(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	wr, err := s.store.WorkRequest(r.Context(), id)
	if err != nil {
		s.storeError(w, err)
		return
	}
	if !visible(r, wr) {
		s.storeError(w, store.ErrNotFound)
		return
	}
	follow := r.URL.Query().Get("follow")
	if follow == "1" || follow == "true" {
		s.followLog(w, r, wr)
		return
	}
	stream, err := s.js.Stream(r.Context(), s.names.LogStream())
	if err != nil {
		problem(w, http.StatusServiceUnavailable, "Live logs unavailable", err.Error())
		return
	}
	subject := s.names.RequestLogSubjects(id)
	last, err := stream.GetLastMsgForSubject(r.Context(), subject)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		w.WriteHeader(http.StatusOK)
		return
	}
	if err != nil {
		problem(w, http.StatusServiceUnavailable, "Live logs unavailable", err.Error())
		return
	}
	cons, err := stream.OrderedConsumer(r.Context(), jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		problem(w, http.StatusServiceUnavailable, "Live logs unavailable", err.Error())
		return
	}
	w.WriteHeader(http.StatusOK)
	prevAttempt := 0
	for r.Context().Err() == nil {
		msg, err := cons.Next(jetstream.FetchMaxWait(2 * time.Second))
		if err != nil {
			return
		}
		c := chunkOf(msg)
		if !s.fromItsWorker(r.Context(), msg, c, &wr) {
			continue
		}
		if prevAttempt != 0 && c.Attempt != prevAttempt {
			fmt.Fprintf(w, "\n[kiln: attempt %d]\n", c.Attempt)
		}
		prevAttempt = c.Attempt
		_, _ = w.Write([]byte(c.Text))
		if meta, err := msg.Metadata(); err != nil || meta.Sequence.Stream >= last.Sequence {
			return
		}
	}
}

// fromItsWorker reports whether a log chunk came from the worker that runs
// (or ran) its attempt. On the embedded nats-server a worker can publish
// only under its own id, so a chunk of the current attempt from another
// worker is forged and dropped. The workers of earlier attempts are not
// recorded; their chunks are kept. wr is reloaded when a chunk shows that
// a newer attempt started.
func (s *Server) fromItsWorker(ctx context.Context, msg jetstream.Msg, c schemas.LogChunk, wr *store.WorkRequest) bool {
	sender := s.names.LogSender(msg.Subject())
	ok := func() (bool, bool) { // accept, sure
		switch {
		case c.Attempt < wr.Attempt:
			return true, true
		case c.Attempt > wr.Attempt:
			return false, false
		}
		match := wr.WorkerID.Valid && sender == wr.WorkerID.Int64
		return match, match
	}
	accept, sure := ok()
	if !sure {
		// The request may have been assigned, or retried, since wr was
		// read (a client following from before it started).
		if cur, err := s.store.WorkRequest(context.WithoutCancel(ctx), wr.ID); err == nil {
			*wr = cur
			accept, _ = ok()
		}
	}
	if !accept {
		s.log.Warn().Int64("work_request", wr.ID).Str("subject", msg.Subject()).Msg("log chunk from a worker that does not run the request dropped")
	}
	return accept
}

func chunkOf(msg jetstream.Msg) schemas.LogChunk {
	h := msg.Headers()
	seq, _ := strconv.Atoi(h.Get(bus.HeaderLogSeq))
	attempt, _ := strconv.Atoi(h.Get(bus.HeaderLogAttempt))
	return schemas.LogChunk{Seq: seq, Attempt: attempt, Text: string(msg.Data()), EOF: h.Get(bus.HeaderLogEOF) == "1"}
}

func (s *Server) followLog(w http.ResponseWriter, r *http.Request, wr store.WorkRequest) {
	ctx := r.Context()
	flusher, ok := w.(http.Flusher)
	if !ok {
		problem(w, http.StatusInternalServerError, "Streaming unsupported", "")
		return
	}
	cons, err := s.js.OrderedConsumer(ctx, s.names.LogStream(),
		jetstream.OrderedConsumerConfig{FilterSubjects: []string{s.names.RequestLogSubjects(wr.ID)}})
	if err != nil {
		problem(w, http.StatusServiceUnavailable, "Live logs unavailable", err.Error())
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(event string, v any) {
		b, _ := json.Marshal(v)
		fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
		flusher.Flush()
	}
	eof := map[int]bool{}
	idle := 0
	lastBeat := time.Now()
	for ctx.Err() == nil {
		msg, err := cons.Next(jetstream.FetchMaxWait(time.Second))
		if err == nil {
			c := chunkOf(msg)
			if !s.fromItsWorker(ctx, msg, c, &wr) {
				continue
			}
			if c.EOF {
				eof[c.Attempt] = true
			}
			send("chunk", c)
			idle = 0
			if !c.EOF {
				continue
			}
		} else {
			idle++
		}
		// Nothing new (or the end of an attempt): has the request ended?
		cur, err := s.store.WorkRequest(context.WithoutCancel(ctx), wr.ID)
		if err != nil {
			return
		}
		if schemas.Status(cur.Status).Terminal() && (eof[cur.Attempt] || idle >= 3) {
			send("end", schemas.LogEnd{Status: schemas.Status(cur.Status), Result: schemas.Result(cur.Result)})
			return
		}
		if time.Since(lastBeat) > 15*time.Second {
			fmt.Fprint(w, ": keep-alive\n\n")
			flusher.Flush()
			lastBeat = time.Now()
		}
	}
}
