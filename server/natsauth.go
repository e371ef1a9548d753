package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/kiln-ci/kiln/bus"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
)

// errWorkerDisabled refuses a disabled worker's NATS connection.
var errWorkerDisabled = errors.New("worker disabled")

// loadTLS reads a certificate pair; both files or neither must be named.
func loadTLS(what, cert, key string) (*tls.Config, error) {
	if cert == "" && key == "" {
		return nil, nil
	}
	if cert == "" || key == "" {
		return nil, fmt.Errorf("%s TLS: give both the certificate and the key", what)
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("%s TLS: %w", what, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

// startEmbedded starts the in-process nats-server, where each worker logs
// in with its own token and may touch only its own subjects.
func (s *Server) startEmbedded() (*bus.Embedded, error) {
	natsTLS, err := loadTLS("embedded NATS", s.cfg.NATSTLSCert, s.cfg.NATSTLSKey)
	if err != nil {
		return nil, err
	}
	return bus.StartEmbedded(bus.EmbeddedConfig{
		StoreDir: filepath.Join(s.cfg.DataDir, "jetstream"),
		Listen:   s.cfg.NATSListen,
		Names:    s.names,
		TLS:      natsTLS,
		Log:      s.log.With().Str("component", "nats-auth").Logger(),
		Workers: &bus.WorkerLookup{
			Lookup: func(ctx context.Context, token string) (int64, error) {
				wk, err := s.store.WorkerForToken(ctx, token)
				if err != nil {
					return 0, err
				}
				if !wk.Enabled {
					return 0, errWorkerDisabled
				}
				return wk.ID, nil
			},
			Unavailable: store.Unavailable,
		},
	})
}

// natsAuth is what WorkerConfig.NATSAuth says for this server.
func (s *Server) natsAuth() string {
	if s.embedded != nil {
		return schemas.NATSAuthWorkerToken
	}
	return ""
}
