package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jmoiron/sqlx"
)

// User is a person or script that submits work requests.
type User struct {
	ID        int64     `db:"id"`
	Username  string    `db:"username"`
	Email     string    `db:"email"`
	IsAdmin   bool      `db:"is_admin"`
	CreatedAt time.Time `db:"created_at"`
}

// Token kinds.
const (
	TokenUser       = "user"
	TokenActivation = "activation"
)

// Token is a stored token: only the SHA-256 of its secret is kept.
type Token struct {
	ID         int64         `db:"id"`
	Hash       string        `db:"hash"`
	Kind       string        `db:"kind"`
	UserID     sql.NullInt64 `db:"user_id"`
	WorkerID   sql.NullInt64 `db:"worker_id"`
	Comment    string        `db:"comment"`
	Enabled    bool          `db:"enabled"`
	CreatedAt  time.Time     `db:"created_at"`
	LastUsedAt sql.NullTime  `db:"last_used_at"`
	// ExpiresAt is when the token stops working; NULL means never.
	ExpiresAt sql.NullTime `db:"expires_at"`
}

// ErrTokenExpired means that a token is known and enabled but its expiry
// time has passed. Lookups return it wrapped in an *ExpiredTokenError,
// which says when; callers branch with errors.Is and must not treat the
// token as unknown.
var ErrTokenExpired = errors.New("token expired")

// ExpiredTokenError is the ErrTokenExpired of a token lookup. It never
// holds the token.
type ExpiredTokenError struct {
	// UserID owns the token.
	UserID int64
	// ExpiresAt is when the token stopped working (UTC).
	ExpiresAt time.Time
}

func (e *ExpiredTokenError) Error() string {
	return "token of user " + strconv.FormatInt(e.UserID, 10) + " expired at " + e.ExpiresAt.UTC().Format(time.RFC3339)
}

// Unwrap makes errors.Is(err, ErrTokenExpired) hold.
func (e *ExpiredTokenError) Unwrap() error { return ErrTokenExpired }

// HashToken returns the stored form of a token secret.
func HashToken(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// NewSecret returns a fresh random token secret (64 hex characters).
func NewSecret() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}

// CreateUser adds a user; ErrConflict when the username is taken.
func (s *Store) CreateUser(ctx context.Context, username, email string, admin bool) (User, error) {
	u := User{Username: username, Email: email, IsAdmin: admin, CreatedAt: now()}
	err := s.w.GetContext(ctx, &u.ID, s.rebind(
		`INSERT INTO users (username, email, is_admin, created_at) VALUES (?, ?, ?, ?) RETURNING id`),
		username, email, admin, u.CreatedAt)
	if isUnique(err) {
		return User{}, fmt.Errorf("user %q: %w", username, ErrConflict)
	}
	if err != nil {
		return User{}, fmt.Errorf("create user %q: %w", username, err)
	}
	return u, nil
}

// UserByName returns the named user.
func (s *Store) UserByName(ctx context.Context, username string) (User, error) {
	var u User
	err := s.r.GetContext(ctx, &u, s.rebind(`SELECT * FROM users WHERE username = ?`), username)
	if err != nil {
		return User{}, notFound("user", username, err)
	}
	return u, nil
}

// UserByID returns the user with that id.
func (s *Store) UserByID(ctx context.Context, id int64) (User, error) {
	var u User
	err := s.r.GetContext(ctx, &u, s.rebind(`SELECT * FROM users WHERE id = ?`), id)
	if err != nil {
		return User{}, notFound("user", id, err)
	}
	return u, nil
}

// CreateUserToken makes a new token for the user that never expires and
// returns its secret, which is not stored and cannot be shown again.
func (s *Store) CreateUserToken(ctx context.Context, userID int64, comment string) (string, error) {
	return s.CreateUserTokenExpiring(ctx, userID, comment, time.Time{})
}

// CreateUserTokenExpiring is CreateUserToken for a token that stops working
// at expires; the zero time means never. It does not check that expires is
// in the future: callers that take it from a person do.
func (s *Store) CreateUserTokenExpiring(ctx context.Context, userID int64, comment string, expires time.Time) (string, error) {
	var exp sql.NullTime
	if !expires.IsZero() {
		exp = sql.NullTime{Time: expires.UTC().Truncate(time.Microsecond), Valid: true}
	}
	secret := NewSecret()
	_, err := s.w.ExecContext(ctx, s.rebind(
		`INSERT INTO tokens (hash, kind, user_id, comment, enabled, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)`),
		HashToken(secret), TokenUser, userID, comment, true, now(), exp)
	if err != nil {
		return "", fmt.Errorf("create token for user %d: %w", userID, err)
	}
	return secret, nil
}

// UserForToken returns the user that owns an enabled user token. An unknown
// or disabled token is ErrNotFound; a known one past its expiry is an
// *ExpiredTokenError (ErrTokenExpired).
func (s *Store) UserForToken(ctx context.Context, secret string) (User, error) {
	var row struct {
		User
		ExpiresAt sql.NullTime `db:"token_expires_at"`
	}
	err := s.r.GetContext(ctx, &row, s.rebind(`SELECT users.*, tokens.expires_at AS token_expires_at
		FROM tokens JOIN users ON users.id = tokens.user_id
		WHERE tokens.hash = ? AND tokens.kind = ? AND tokens.enabled`), HashToken(secret), TokenUser)
	if err != nil {
		return User{}, notFound("token", "(hidden)", err)
	}
	if row.ExpiresAt.Valid && !now().Before(row.ExpiresAt.Time) {
		return User{}, &ExpiredTokenError{UserID: row.ID, ExpiresAt: row.ExpiresAt.Time.UTC()}
	}
	return row.User, nil
}

// CreateActivationToken makes a one-time token that registers a worker
// straight into the pre-created, enabled worker record workerID.
func (s *Store) CreateActivationToken(ctx context.Context, workerID int64) (string, error) {
	secret := NewSecret()
	_, err := s.w.ExecContext(ctx, s.rebind(
		`INSERT INTO tokens (hash, kind, worker_id, comment, enabled, created_at) VALUES (?, ?, ?, ?, ?, ?)`),
		HashToken(secret), TokenActivation, workerID, "worker activation", true, now())
	if err != nil {
		return "", fmt.Errorf("create activation token for worker %d: %w", workerID, err)
	}
	return secret, nil
}

// consumeActivation deletes an activation token in tx and returns the worker
// it was made for.
func consumeActivation(ctx context.Context, tx *sqlx.Tx, secret string) (int64, error) {
	var workerID sql.NullInt64
	err := tx.GetContext(ctx, &workerID, tx.Rebind(
		`DELETE FROM tokens WHERE hash = ? AND kind = ? AND enabled RETURNING worker_id`),
		HashToken(secret), TokenActivation)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !workerID.Valid) {
		return 0, fmt.Errorf("activation token: %w", ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("activation token: %w", err)
	}
	return workerID.Int64, nil
}
