package bus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Control message types.
const (
	ControlAbort           = "abort"
	ControlRequestMetadata = "request_dynamic_metadata"
)

// Control is a message on a worker's control subject.
type Control struct {
	Type          string `json:"type"`
	WorkRequestID int64  `json:"work_request_id,omitempty"`
	Attempt       int    `json:"attempt,omitempty"`
	// Reason of an abort: "aborted" (by a user) or "timeout".
	Reason string `json:"reason,omitempty"`
}

// Embedded is a nats-server running inside this process.
type Embedded struct {
	srv *natsserver.Server
	url string
}

// StartEmbedded starts nats-server with JetStream storing in storeDir,
// listening on listen (host:port; port 0 picks a free one).
func StartEmbedded(storeDir, listen string) (*Embedded, error) {
	host, portText, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("nats listen address %q: %w", listen, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return nil, fmt.Errorf("nats listen port %q: %w", portText, err)
	}
	if port == 0 {
		port = natsserver.RANDOM_PORT
	}
	opts := &natsserver.Options{
		ServerName: "kiln-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   storeDir,
		// Without NoSigs the embedded server calls os.Exit on SIGTERM and
		// takes the whole kiln-server down with it.
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: 8 << 20,
	}
	srv, err := natsserver.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		return nil, errors.New("embedded nats: not ready after 30s")
	}
	return &Embedded{srv: srv, url: srv.ClientURL()}, nil
}

// URL is the client URL of the embedded server.
func (e *Embedded) URL() string { return e.url }

// Shutdown stops the server and waits for it.
func (e *Embedded) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}

// Connect dials url and keeps reconnecting forever, logging each change, so
// that a NATS outage never ends the process.
func Connect(url, name string, log zerolog.Logger) (*nats.Conn, error) {
	nc, err := nats.Connect(url,
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500*time.Millisecond),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn().Err(err).Msg("nats disconnected")
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info().Str("url", c.ConnectedUrlRedacted()).Msg("nats reconnected")
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("connect to nats %s: %w", url, err)
	}
	return nc, nil
}

// EnsureStream creates or updates the work-queue stream of names.
func EnsureStream(ctx context.Context, js jetstream.JetStream, n Names, replicas int) (jetstream.Stream, error) {
	cfg := jetstream.StreamConfig{
		Name:        n.Stream(),
		Description: "Kiln assignments and control messages, one subject per worker",
		Subjects:    []string{n.WorkerSubjects()},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
		Duplicates:  2 * time.Minute,
		MaxAge:      7 * 24 * time.Hour,
	}
	s, err := js.CreateOrUpdateStream(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", cfg.Name, err)
	}
	return s, nil
}

// WorkerConsumer creates or updates a durable consumer of one subject.
func WorkerConsumer(ctx context.Context, js jetstream.JetStream, stream, name, subject string) (jetstream.Consumer, error) {
	c, err := js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable:       name,
		FilterSubject: subject,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxDeliver:    -1,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		// Consumers of workers gone for good should not live forever.
		InactiveThreshold: 30 * 24 * time.Hour,
	})
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w", name, subject, err)
	}
	return c, nil
}

// Headers of a live log chunk. The body is the raw output bytes.
const (
	// HeaderLogSeq numbers the chunks of one attempt from 1.
	HeaderLogSeq = "Kiln-Log-Seq"
	// HeaderLogAttempt is the attempt that wrote the chunk.
	HeaderLogAttempt = "Kiln-Log-Attempt"
	// HeaderLogEOF marks the last chunk of an attempt (its body may be empty).
	HeaderLogEOF = "Kiln-Log-EOF"
)

// LogChunkMax is the largest chunk body a worker publishes.
const LogChunkMax = 32 << 10

// EnsureLogStream creates or updates the stream of live logs: limits
// retention, old chunks dropped first once maxBytes is reached (the full log
// of every run is also kept as a debug-log artifact).
func EnsureLogStream(ctx context.Context, js jetstream.JetStream, n Names, replicas int, maxBytes int64, maxAge time.Duration) (jetstream.Stream, error) {
	cfg := jetstream.StreamConfig{
		Name:        n.LogStream(),
		Description: "Kiln live logs, one subject per work request",
		Subjects:    []string{n.LogSubjects()},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
		MaxBytes:    maxBytes,
		MaxAge:      maxAge,
		Duplicates:  2 * time.Minute,
	}
	s, err := js.CreateOrUpdateStream(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", cfg.Name, err)
	}
	return s, nil
}
