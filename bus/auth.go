package bus

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"
)

// WorkerLookup resolves the token a worker presents on NATS to its id. It
// fails for an unknown or disabled worker. Unavailable reports whether an
// error means the lookup could not be made (a database outage) rather than
// a refusal.
type WorkerLookup struct {
	Lookup      func(ctx context.Context, token string) (workerID int64, err error)
	Unavailable func(error) bool
}

// rememberFor is how long a worker admitted once is still admitted while
// its lookup is unavailable, so that a database outage does not also keep
// workers off NATS.
const rememberFor = time.Hour

// embeddedAuth admits kiln-server (by a secret made at each start) and each
// worker by its own token, with permissions that confine it to its own
// subjects.
type embeddedAuth struct {
	internal string
	names    Names
	workers  WorkerLookup
	log      zerolog.Logger

	mu   sync.Mutex
	seen map[[32]byte]admitted
}

type admitted struct {
	worker int64
	at     time.Time
}

func newEmbeddedAuth(names Names, workers WorkerLookup, log zerolog.Logger) (*embeddedAuth, error) {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	return &embeddedAuth{internal: hex.EncodeToString(secret), names: names, workers: workers, log: log,
		seen: map[[32]byte]admitted{}}, nil
}

// Check implements natsserver.Authentication. It runs in the connection's
// goroutine inside nats-server, so it must not block for long.
func (a *embeddedAuth) Check(c natsserver.ClientAuthentication) bool {
	if c.Kind() != natsserver.CLIENT {
		return false
	}
	token := c.GetOpts().Token
	if subtle.ConstantTimeCompare([]byte(token), []byte(a.internal)) == 1 {
		c.RegisterUser(&natsserver.User{Username: "kiln-server"})
		return true
	}
	if token == "" {
		a.log.Warn().Stringer("remote", c.RemoteAddress()).Msg("nats connection without a token refused")
		return false
	}
	id, ok := a.worker(token)
	if !ok {
		a.log.Warn().Stringer("remote", c.RemoteAddress()).Msg("nats connection with an unknown or disabled worker token refused")
		return false
	}
	c.RegisterUser(&natsserver.User{Username: fmt.Sprintf("worker-%d", id), Permissions: a.names.WorkerPermissions(id)})
	return true
}

func (a *embeddedAuth) worker(token string) (int64, bool) {
	key := sha256.Sum256([]byte(token))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	id, err := a.workers.Lookup(ctx, token)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil {
		a.seen[key] = admitted{worker: id, at: time.Now()}
		return id, true
	}
	if a.workers.Unavailable != nil && a.workers.Unavailable(err) {
		if s, ok := a.seen[key]; ok && time.Since(s.at) < rememberFor {
			a.log.Warn().Err(err).Int64("worker_id", s.worker).Msg("worker admitted to nats from memory: its token cannot be checked now")
			return s.worker, true
		}
		a.log.Warn().Err(err).Msg("worker token cannot be checked")
		return 0, false
	}
	delete(a.seen, key)
	return 0, false
}
