package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"
	"github.com/pressly/goose/v3"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

//go:embed migrations
var migrations embed.FS

func init() {
	// modernc registers "sqlite", which sqlx does not know: tell it to keep ?.
	sqlx.BindDriver("sqlite", sqlx.QUESTION)
}

// Sentinel errors callers branch on.
var (
	ErrNotFound = errors.New("not found")
	// ErrConflict means the row exists but is not in the state the change
	// expects (already taken, already finished, a duplicate name).
	ErrConflict = errors.New("conflict")
	// ErrStale is the ErrConflict of a call from an attempt that is not the
	// request's current one.
	ErrStale = fmt.Errorf("%w: stale attempt", ErrConflict)
	// ErrNotAssigned is the ErrNotFound of a worker's call about a request
	// that exists but is not assigned to that worker.
	ErrNotAssigned = fmt.Errorf("%w: not assigned to this worker", ErrNotFound)
)

// Dialect names a database engine.
type Dialect string

// Supported dialects.
const (
	Postgres Dialect = "postgres"
	SQLite   Dialect = "sqlite"
)

// Store is the database handle. Writes go through w; reads through r. For
// SQLite, w has a single connection so that writers queue in Go instead of
// failing with SQLITE_BUSY; for PostgreSQL both are the same pool.
type Store struct {
	dialect Dialect
	w, r    *sqlx.DB
	lockKey int64
	lockCon *sql.Conn
}

// Open connects to the database named by dsn and applies migrations. An
// empty dsn or a path means SQLite at that path (default
// dataDir/kiln.sqlite3); postgres:// or postgresql:// means PostgreSQL.
func Open(ctx context.Context, dsn, dataDir string) (*Store, error) {
	var s *Store
	var err error
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		s, err = openPostgres(ctx, dsn)
	} else {
		path := strings.TrimPrefix(dsn, "sqlite://")
		if path == "" {
			path = filepath.Join(dataDir, "kiln.sqlite3")
		}
		s, err = openSQLite(ctx, path)
	}
	if err != nil {
		return nil, err
	}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func openPostgres(ctx context.Context, dsn string) (*Store, error) {
	db, err := sqlx.Open("postgres", dsn)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	db.SetMaxOpenConns(32)
	db.SetMaxIdleConns(16)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	// The leader lock key is per database and schema, so that stores that
	// share a server but not a schema (tests) do not exclude each other.
	var schema string
	if err := db.GetContext(ctx, &schema, "SELECT current_schema()"); err != nil {
		db.Close()
		return nil, fmt.Errorf("postgres current schema: %w", err)
	}
	return &Store{dialect: Postgres, w: db, r: db, lockKey: lockKey(schema)}, nil
}

func lockKey(s string) int64 {
	// FNV-1a, folded into the advisory lock key space.
	h := uint64(14695981039346656037)
	for _, c := range []byte("kiln-scheduler:" + s) {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return int64(h >> 1)
}

func openSQLite(ctx context.Context, path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("sqlite directory: %w", err)
	}
	q := url.Values{}
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "foreign_keys(ON)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Set("_time_format", "sqlite")
	dsn := "file:" + path + "?" + q.Encode()
	w, err := sqlx.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	if err := w.PingContext(ctx); err != nil {
		w.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	r, err := sqlx.Open("sqlite", dsn)
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	r.SetMaxOpenConns(4)
	return &Store{dialect: SQLite, w: w, r: r}, nil
}

func (s *Store) migrate(ctx context.Context) error {
	sub, err := fs.Sub(migrations, "migrations/"+string(s.dialect))
	if err != nil {
		return err
	}
	gd := goose.DialectPostgres
	if s.dialect == SQLite {
		gd = goose.DialectSQLite3
	}
	p, err := goose.NewProvider(gd, s.w.DB, sub)
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("apply migrations: %w", err)
	}
	return nil
}

// Dialect returns the engine behind the store.
func (s *Store) Dialect() Dialect { return s.dialect }

// Close releases the connections (and the leader lock, if held).
func (s *Store) Close() error {
	if s.lockCon != nil {
		s.lockCon.Close()
	}
	err := s.w.Close()
	if s.r != s.w {
		if e := s.r.Close(); err == nil {
			err = e
		}
	}
	return err
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.r.PingContext(ctx) }

// TryLead tries to become the scheduler leader. With SQLite the store is
// single-node and always leads. With PostgreSQL it takes a session advisory
// lock on a dedicated connection; the lock goes when that connection does, so
// a crashed leader releases it. Calling TryLead again while leading checks
// that the connection is still alive.
func (s *Store) TryLead(ctx context.Context) (bool, error) {
	if s.dialect == SQLite {
		return true, nil
	}
	if s.lockCon != nil {
		if err := s.lockCon.PingContext(ctx); err == nil {
			return true, nil
		}
		s.lockCon.Close()
		s.lockCon = nil
	}
	con, err := s.w.DB.Conn(ctx)
	if err != nil {
		return false, fmt.Errorf("leader lock connection: %w", err)
	}
	var ok bool
	if err := con.QueryRowContext(ctx, "SELECT pg_try_advisory_lock($1)", s.lockKey).Scan(&ok); err != nil {
		con.Close()
		return false, fmt.Errorf("leader lock: %w", err)
	}
	if !ok {
		con.Close()
		return false, nil
	}
	s.lockCon = con
	return true, nil
}

func (s *Store) rebind(q string) string { return s.w.Rebind(q) }

// forUpdate is the row lock of a SELECT inside a transaction. SQLite needs
// none: its transactions run one at a time on the single write connection.
func (s *Store) forUpdate() string {
	if s.dialect == Postgres {
		return " FOR UPDATE"
	}
	return ""
}

// tx runs fn in a write transaction, committing when it returns nil.
func (s *Store) tx(ctx context.Context, fn func(tx *sqlx.Tx) error) error {
	tx, err := s.w.BeginTxx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// isUnique reports whether err is a unique-constraint violation, classified
// by code, never by message.
func isUnique(err error) bool {
	var pe *pq.Error
	if errors.As(err, &pe) {
		return pe.Code == "23505"
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	return false
}

func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

func notFound(what string, id any, err error) error {
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%s %v: %w", what, id, ErrNotFound)
	}
	return fmt.Errorf("%s %v: %w", what, id, err)
}

// Unavailable reports whether err says that the database cannot be reached
// now (connection refused or lost, server shutting down or starting, too
// busy), as opposed to a fault of the query: callers answer 503 and try
// again later.
func Unavailable(err error) bool {
	if err == nil {
		return false
	}
	var pe *pq.Error
	if errors.As(err, &pe) {
		// Class 08: connection exception; 57P01-57P03: shutting down,
		// crash shutdown, cannot connect now; 53300: too many connections.
		return pe.Code.Class() == "08" || pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03" || pe.Code == "53300"
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_BUSY || se.Code() == sqlite3.SQLITE_LOCKED
	}
	var ne net.Error
	return errors.Is(err, driver.ErrBadConn) || errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, sql.ErrConnDone)
}
