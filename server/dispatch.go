package server

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-ci/kiln/bus"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
)

// Publish sends outbox messages to JetStream with their de-duplication ids
// and removes each from the outbox once the stream has stored it. What fails
// stays in the outbox for the relay; the database already holds the truth.
func (s *Server) Publish(ctx context.Context, msgs []store.Message) {
	type pending struct {
		msg store.Message
		ack jetstream.PubAckFuture
	}
	var ps []pending
	for _, m := range msgs {
		nm := nats.NewMsg(m.Subject)
		nm.Data = []byte(m.Payload)
		nm.Header.Set(jetstream.MsgIDHeader, m.MsgID)
		f, err := s.js.PublishMsgAsync(nm)
		if err != nil {
			s.log.Warn().Err(err).Str("subject", m.Subject).Msg("publish failed; the outbox relay will retry")
			continue
		}
		ps = append(ps, pending{m, f})
	}
	timeout := time.NewTimer(5 * time.Second)
	defer timeout.Stop()
	for _, p := range ps {
		select {
		case <-p.ack.Ok():
			if err := s.store.Published(context.WithoutCancel(ctx), p.msg.ID); err != nil {
				s.log.Warn().Err(err).Msg("outbox cleanup")
			}
		case err := <-p.ack.Err():
			s.log.Warn().Err(err).Str("subject", p.msg.Subject).Msg("publish not acknowledged; the outbox relay will retry")
		case <-timeout.C:
			s.log.Warn().Msg("publish acknowledgements timed out; the outbox relay will retry")
			return
		case <-ctx.Done():
			return
		}
	}
}

// relay (run every 2 s on the scheduler leader) republishes outbox
// messages whose publication was not confirmed (a crash between commit and
// publish, a NATS outage). JetStream drops the duplicates of those that did
// arrive, by message id.
func (s *Server) relay(ctx context.Context) {
	msgs, err := s.store.Outbox(ctx, time.Now().Add(-3*time.Second), 500)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn().Err(err).Msg("outbox relay")
		}
		return
	}
	if len(msgs) > 0 {
		s.log.Info().Int("messages", len(msgs)).Msg("republishing unconfirmed outbox messages")
		s.Publish(ctx, msgs)
	}
}

// everyAsLeader calls fn every period until ctx ends, while this replica
// leads the scheduler: periodic duties are done once, not once per replica.
func (s *Server) everyAsLeader(ctx context.Context, period time.Duration, fn func(context.Context)) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s.sched.Leader() {
			fn(ctx)
		}
	}
}

// subscribe listens for worker heartbeats and scheduler kicks.
func (s *Server) subscribe(ctx context.Context) error {
	_, err := s.nc.QueueSubscribe(s.names.HeartbeatWildcard(), "kiln-server", func(m *nats.Msg) {
		var hb schemas.Heartbeat
		if err := json.Unmarshal(m.Data, &hb); err != nil || hb.WorkerID == 0 {
			s.log.Warn().Str("subject", m.Subject).Msg("malformed heartbeat dropped")
			return
		}
		t := time.Now()
		reconnected, err := s.store.TouchWorker(ctx, hb.WorkerID, t, t.Add(-s.cfg.HeartbeatTimeout))
		if err == nil {
			err = s.renewLeases(ctx, hb, t)
		}
		if err != nil {
			s.heartbeatLost()
			if ctx.Err() == nil {
				s.log.Warn().Err(err).Int64("worker", hb.WorkerID).Msg("heartbeat")
			}
			return
		}
		if reconnected {
			s.log.Info().Int64("worker", hb.WorkerID).Msg("worker connected")
			s.kickScheduler()
		}
	})
	if err != nil {
		return err
	}
	_, err = s.nc.Subscribe(s.names.KickSubject(), func(*nats.Msg) { s.sched.Trigger() })
	return err
}

// kickScheduler wakes the scheduler here and, through NATS, on the replica
// that leads.
func (s *Server) kickScheduler() {
	s.sched.Trigger()
	if !s.sched.Leader() {
		_ = s.nc.Publish(s.names.KickSubject(), nil)
	}
}

// sendControl records a control message for a worker in the outbox and
// publishes it.
func (s *Server) sendControl(ctx context.Context, workerID int64, c bus.Control, msgID string) {
	payload, _ := json.Marshal(c)
	m, err := s.store.Enqueue(ctx, store.Message{Subject: s.names.ControlSubject(workerID), MsgID: msgID, Payload: string(payload)})
	if err != nil {
		s.log.Error().Err(err).Int64("worker", workerID).Msg("control message")
		return
	}
	s.Publish(ctx, []store.Message{m})
}
