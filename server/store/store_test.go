package store

// The conformance suite: every test here runs against both dialects through
// forEachDialect (or forEachDB when it needs to open the same database more
// than once), as River's riverdrivertest runs one suite against each driver.
// The tests live in package store so that they can look at the raw tables
// (to prove, say, that a token secret is never stored) and force states that
// no method produces (a blocked request, a dropped outbox table).

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/server/store/storetest"
)

// testDB names one isolated database: a fresh SQLite directory or a fresh
// PostgreSQL schema, dropped at cleanup.
type testDB struct {
	dialect Dialect
	dsn     string // "" for SQLite in dir
	dir     string
}

// open opens (and migrates) a Store on the database, closed at cleanup.
func (d testDB) open(t *testing.T) *Store {
	t.Helper()
	st := d.openNoCleanup(t)
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// openNoCleanup is open for tests that close the store themselves.
func (d testDB) openNoCleanup(t *testing.T) *Store {
	t.Helper()
	st, err := Open(t.Context(), d.dsn, d.dir)
	require.NoError(t, err)
	require.Equal(t, d.dialect, st.Dialect())
	return st
}

func sqliteDB(t *testing.T) testDB {
	return testDB{dialect: SQLite, dir: t.TempDir()}
}

// postgresDB is a fresh schema on the test PostgreSQL server.
func postgresDB(t *testing.T) testDB {
	t.Helper()
	return testDB{dialect: Postgres, dsn: storetest.PostgresURL(t)}
}

var dialects = []struct {
	name string
	db   func(t *testing.T) testDB
}{
	{"sqlite", sqliteDB},
	{"postgres", postgresDB},
}

// forEachDB runs fn once per dialect on a fresh database.
func forEachDB(t *testing.T, fn func(t *testing.T, db testDB)) {
	t.Helper()
	for _, d := range dialects {
		t.Run(d.name, func(t *testing.T) { fn(t, d.db(t)) })
	}
}

// forEachDialect runs fn once per dialect with a migrated Store on a fresh
// database.
func forEachDialect(t *testing.T, fn func(t *testing.T, st *Store)) {
	t.Helper()
	forEachDB(t, func(t *testing.T, db testDB) { fn(t, db.open(t)) })
}

// rawExec runs a statement the Store has no method for (test set-up only).
func rawExec(t *testing.T, st *Store, q string, args ...any) {
	t.Helper()
	_, err := st.w.ExecContext(t.Context(), st.rebind(q), args...)
	require.NoError(t, err)
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s", what, timeout)
		}
		<-tick.C
	}
}

func TestOpenPingDialect(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		require.NoError(t, st.Ping(t.Context()))
		want := SQLite
		if st.w.DriverName() == "postgres" {
			want = Postgres
		}
		require.Equal(t, want, st.Dialect())
	})
}

func TestOpenSQLiteDSNForms(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, dsn, dataDir, wantFile string
	}{
		{"empty dsn uses data dir", "", filepath.Join(dir, "a"), filepath.Join(dir, "a", "kiln.sqlite3")},
		{"plain path", filepath.Join(dir, "b", "x.db"), "", filepath.Join(dir, "b", "x.db")},
		{"sqlite:// prefix", "sqlite://" + filepath.Join(dir, "c", "y.db"), "", filepath.Join(dir, "c", "y.db")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, err := Open(t.Context(), tc.dsn, tc.dataDir)
			require.NoError(t, err)
			defer st.Close()
			require.Equal(t, SQLite, st.Dialect())
			require.FileExists(t, tc.wantFile)
		})
	}
}

func TestOpenPostgresUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	// Port 1 on localhost refuses connections at once.
	_, err := Open(ctx, "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2", "")
	require.Error(t, err)
}

// Migrations are idempotent: opening the same database again applies nothing
// new and keeps the data.
func TestMigrationsIdempotent(t *testing.T) {
	forEachDB(t, func(t *testing.T, db testDB) {
		st1 := db.openNoCleanup(t)
		u, err := st1.CreateUser(t.Context(), "alice", "a@example.org", false)
		require.NoError(t, err)
		require.NoError(t, st1.Close())

		st2 := db.open(t)
		got, err := st2.UserByName(t.Context(), "alice")
		require.NoError(t, err)
		require.Equal(t, u.ID, got.ID)

		// A third open while the second is still in use.
		st3 := db.open(t)
		_, err = st3.UserByID(t.Context(), u.ID)
		require.NoError(t, err)

		var versions []int64
		require.NoError(t, st3.r.SelectContext(t.Context(), &versions,
			`SELECT version_id FROM goose_db_version WHERE version_id > 0 ORDER BY version_id`))
		want := migrationVersions(t, string(db.dialect))
		require.Equal(t, want, versions, "each migration applied exactly once")
	})
}

func migrationVersions(t *testing.T, dialect string) []int64 {
	t.Helper()
	names, err := fs.Glob(migrations, "migrations/"+dialect+"/*.sql")
	require.NoError(t, err)
	var out []int64
	for _, n := range names {
		var v int64
		_, err := fmt.Sscanf(filepath.Base(n), "%d_", &v)
		require.NoError(t, err, n)
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Both dialects carry the same migration version numbers.
func TestMigrationsSameVersions(t *testing.T) {
	pg := migrationVersions(t, string(Postgres))
	sl := migrationVersions(t, string(SQLite))
	require.NotEmpty(t, pg)
	require.Equal(t, pg, sl)
}

func TestTryLead(t *testing.T) {
	forEachDB(t, func(t *testing.T, db testDB) {
		ctx := t.Context()
		st1 := db.openNoCleanup(t)
		closed := false
		t.Cleanup(func() {
			if !closed {
				_ = st1.Close()
			}
		})
		st2 := db.open(t)

		ok, err := st1.TryLead(ctx)
		require.NoError(t, err)
		require.True(t, ok, "first store leads")

		if db.dialect == SQLite {
			// Single node: every store leads.
			ok, err = st2.TryLead(ctx)
			require.NoError(t, err)
			require.True(t, ok)
			return
		}

		ok, err = st2.TryLead(ctx)
		require.NoError(t, err)
		require.False(t, ok, "second store on the same schema cannot lead while the first does")

		ok, err = st1.TryLead(ctx)
		require.NoError(t, err)
		require.True(t, ok, "leader stays leader on a second call")

		ok, err = st2.TryLead(ctx)
		require.NoError(t, err)
		require.False(t, ok)

		// A store on another schema has its own lock.
		other := postgresDB(t).open(t)
		ok, err = other.TryLead(ctx)
		require.NoError(t, err)
		require.True(t, ok, "a store on another schema leads independently")

		require.NoError(t, st1.Close())
		closed = true
		eventually(t, 15*time.Second, "second store leads after the first closed", func() bool {
			ok, err := st2.TryLead(ctx)
			require.NoError(t, err)
			return ok
		})
		ok, err = st2.TryLead(ctx)
		require.NoError(t, err)
		require.True(t, ok)
	})
}
