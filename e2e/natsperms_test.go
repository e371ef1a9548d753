package e2e

import (
	"context"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/bus"
	"github.com/kiln-ci/kiln/schemas"
)

// TestWorkerConfinedOnEmbeddedNATS: on the embedded nats-server a client
// needs a worker's token to connect, and a worker can neither subscribe to
// another worker's subjects, nor read its durable consumers, nor publish
// its heartbeats or logs; a log chunk a worker sends for a request it does
// not run is not shown.
func TestWorkerConfinedOnEmbeddedNATS(t *testing.T) {
	b := setup(t, backends[0])
	owner := b.startWorker("owner", 1, nil)
	intruder := b.startWorker("intruder", 1, nil)
	names, err := bus.NewNames(b.cfg.NATSPrefix)
	require.NoError(t, err)
	url := b.srv.NATSURL()

	for _, opts := range [][]nats.Option{nil, {nats.Token("not-a-worker-token")}, {nats.Token(b.token("alice"))}} {
		nc, err := nats.Connect(url, opts...)
		if err == nil {
			nc.Close()
		}
		require.ErrorIs(t, err, nats.ErrAuthorization, "connected without a worker token")
	}

	refused := make(chan error, 16)
	nc, err := nats.Connect(url, nats.Token(intruder.token()), nats.CustomInboxPrefix(names.WorkerInbox(intruder.id)),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { refused <- err }))
	require.NoError(t, err, "a worker connects with its own token")
	defer nc.Close()

	// The owner runs a request; the intruder is kept off it. A disabled
	// worker may no longer connect.
	require.NoError(t, b.st.SetWorkerEnabled(b.ctx, intruder.id, false))
	_, err = nats.Connect(url, nats.Token(intruder.token()))
	require.ErrorIs(t, err, nats.ErrAuthorization, "a disabled worker connected")
	wr := b.create(b.user, "noop", `{"sleep_seconds": 3}`)
	b.runningOn(wr.ID, owner.id)
	violation := func(what, subject string) {
		t.Helper()
		select {
		case err := <-refused:
			require.ErrorContains(t, err, "Permissions Violation", what)
			require.ErrorContains(t, err, subject, what)
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: not refused", what)
		}
	}

	for _, subject := range []string{names.AssignSubject(owner.id), names.ControlSubject(owner.id), names.WorkerSubjects(), names.HeartbeatWildcard(), ">"} {
		sub, err := nc.SubscribeSync(subject)
		require.NoError(t, err)
		violation("subscribe to "+subject, subject)
		_, err = sub.NextMsg(100 * time.Millisecond)
		require.Error(t, err, "a message of %s reached the intruder", subject)
	}
	for _, subject := range []string{names.HeartbeatSubject(owner.id), names.LogSubject(owner.id, wr.ID), names.AssignSubject(owner.id)} {
		require.NoError(t, nc.Publish(subject, []byte(`{}`)))
		violation("publish to "+subject, subject)
	}

	js, err := jetstream.New(nc)
	require.NoError(t, err)
	short := func() context.Context {
		ctx, cancel := context.WithTimeout(b.ctx, 2*time.Second)
		t.Cleanup(cancel)
		return ctx
	}
	_, err = js.Consumer(short(), names.Stream(), names.AssignConsumer(owner.id))
	require.Error(t, err, "read the owner's consumer")
	violation("consumer info", names.AssignConsumer(owner.id))
	for _, c := range []jetstream.ConsumerConfig{
		{Durable: names.AssignConsumer(owner.id), FilterSubject: names.AssignSubject(owner.id)},
		{Durable: names.AssignConsumer(intruder.id), FilterSubject: names.AssignSubject(owner.id)},
		{Durable: "sniffer", FilterSubject: names.WorkerSubjects()},
	} {
		_, err = js.CreateOrUpdateConsumer(short(), names.Stream(), c)
		require.Error(t, err, "consumer %s on %s", c.Durable, c.FilterSubject)
		violation("create consumer "+c.Durable, "CONSUMER.CREATE")
	}
	_, err = js.Stream(short(), names.Stream())
	require.Error(t, err, "stream info")
	violation("stream info", "STREAM.INFO")

	// A chunk the intruder sends under its own name for the owner's
	// request is not shown.
	forged := nats.NewMsg(names.LogSubject(intruder.id, wr.ID))
	forged.Header.Set(bus.HeaderLogSeq, "1")
	forged.Header.Set(bus.HeaderLogAttempt, strconv.Itoa(wr.Attempt))
	forged.Data = []byte("FORGED LINE\n")
	_, err = js.PublishMsg(short(), forged)
	require.NoError(t, err, "a worker publishes logs under its own name")

	done := b.wait(wr.ID)
	require.Equal(t, schemas.ResultSuccess, done.Result, "the intruder changed nothing")
	require.Equal(t, owner.id, *done.Worker)
	var log strings.Builder
	require.NoError(t, b.user.Log(b.ctx, wr.ID, &log))
	require.NotContains(t, log.String(), "FORGED")
	require.NoError(t, b.user.Log(b.ctx, wr.ID, io.Discard))

	// The intruder, enabled again, still does its own work.
	require.NoError(t, b.st.SetWorkerEnabled(b.ctx, owner.id, false))
	require.NoError(t, b.st.SetWorkerEnabled(b.ctx, intruder.id, true))
	mine := b.wait(b.create(b.user, "noop", `{}`).ID)
	require.Equal(t, schemas.ResultSuccess, mine.Result)
	require.Equal(t, intruder.id, *mine.Worker)
}
