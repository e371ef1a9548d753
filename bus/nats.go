package bus

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
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
	srv  *natsserver.Server
	url  string
	auth *embeddedAuth
}

// EmbeddedConfig configures the embedded nats-server.
type EmbeddedConfig struct {
	// StoreDir holds the JetStream file store.
	StoreDir string
	// Listen is host:port; port 0 picks a free one.
	Listen string
	// Workers, when set, makes every connection authenticate: kiln-server
	// with a secret of this process (ConnectOptions), each worker with its
	// own token and Names.WorkerPermissions. Unset, anyone may connect and
	// do anything (tests only).
	Workers *WorkerLookup
	// Names are the subjects the permissions are made of.
	Names Names
	// TLS, when set, makes clients connect with TLS.
	TLS *tls.Config
	// Log receives refused connections.
	Log zerolog.Logger
}

// StartEmbedded starts nats-server with JetStream.
func StartEmbedded(cfg EmbeddedConfig) (*Embedded, error) {
	host, portText, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("nats listen address %q: %w", cfg.Listen, err)
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
		StoreDir:   cfg.StoreDir,
		// Without NoSigs the embedded server calls os.Exit on SIGTERM and
		// takes the whole kiln-server down with it.
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: 8 << 20,
	}
	if cfg.TLS != nil {
		opts.TLSConfig = cfg.TLS
		opts.TLS = true
		opts.TLSTimeout = 5
	}
	e := &Embedded{}
	if cfg.Workers != nil {
		if e.auth, err = newEmbeddedAuth(cfg.Names, *cfg.Workers, cfg.Log); err != nil {
			return nil, err
		}
		opts.CustomClientAuthentication = e.auth
	}
	if e.srv, err = natsserver.NewServer(opts); err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	go e.srv.Start()
	if !e.srv.ReadyForConnections(30 * time.Second) {
		e.srv.Shutdown()
		return nil, errors.New("embedded nats: not ready after 30s")
	}
	e.url = e.srv.ClientURL()
	if cfg.TLS != nil {
		e.url = strings.Replace(e.url, "nats://", "tls://", 1)
	}
	return e, nil
}

// URL is the client URL of the embedded server.
func (e *Embedded) URL() string { return e.url }

// LocalURL is the URL to dial with ConnectOptions: never tls://, since the
// in-process connection needs no TLS and a tls:// URL would demand it.
func (e *Embedded) LocalURL() string { return strings.Replace(e.url, "tls://", "nats://", 1) }

// ConnectOptions connect kiln-server itself to the embedded server: in
// process (no TCP, no TLS) and, when connections authenticate, with this
// process's secret.
func (e *Embedded) ConnectOptions() []nats.Option {
	opts := []nats.Option{nats.InProcessServer(e.srv)}
	if e.auth != nil {
		opts = append(opts, nats.Token(e.auth.internal))
	}
	return opts
}

// Shutdown stops the server and waits for it.
func (e *Embedded) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}

// Connect dials url and keeps reconnecting forever, logging each change, so
// that a NATS outage never ends the process. extra adds options
// (credentials, an inbox prefix); onReconnect functions run after each
// reconnection.
func Connect(url, name string, log zerolog.Logger, extra []nats.Option, onReconnect ...func()) (*nats.Conn, error) {
	opts := append([]nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.RetryOnFailedConnect(true),
		// Permission violations arrive here: a worker confined by the
		// embedded server's permissions must say what was refused.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			ev := log.Warn().Err(err)
			if sub != nil {
				ev = ev.Str("subject", sub.Subject)
			}
			ev.Msg("nats error")
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn().Err(err).Msg("nats disconnected")
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info().Str("url", c.ConnectedUrlRedacted()).Msg("nats reconnected")
			for _, f := range onReconnect {
				f()
			}
		}),
	}, extra...)
	nc, err := nats.Connect(url, opts...)
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
		// Each worker holds two durable consumers; nats-server caps a
		// stream without a limit of its own at 1000 consumers (and takes
		// -1 as "not set"), which would refuse the 501st worker.
		MaxConsumers: 1 << 20,
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
