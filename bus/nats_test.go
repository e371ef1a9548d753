package bus

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// TestStreamTakesMoreThan500Workers: nats-server caps a stream without a
// consumer limit of its own at 1000 consumers, two per worker; the stream
// must lift it, also on a stream made before.
func TestStreamTakesMoreThan500Workers(t *testing.T) {
	e, err := StartEmbedded(EmbeddedConfig{StoreDir: t.TempDir(), Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	defer e.Shutdown()
	nc, err := nats.Connect(e.URL())
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := NewNames("kiln")
	require.NoError(t, err)
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: n.Stream(), Subjects: []string{n.WorkerSubjects()}, Retention: jetstream.WorkQueuePolicy})
	require.NoError(t, err)
	s, err := EnsureStream(ctx, js, n, 1)
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.Greater(t, info.Config.MaxConsumers, 2*100000, "consumers for 100,000 workers")
	for id := int64(1); id <= 600; id++ {
		_, err := WorkerConsumer(ctx, js, n.Stream(), n.AssignConsumer(id), n.AssignSubject(id))
		require.NoError(t, err, "worker %d", id)
		_, err = WorkerConsumer(ctx, js, n.Stream(), n.ControlConsumer(id), n.ControlSubject(id))
		require.NoError(t, err, "worker %d", id)
	}
}
