// Package storetest gives tests an isolated database: a fresh PostgreSQL
// schema on the test server, dropped at cleanup, and the rule for a missing
// service (a visible skip, or a failure under KILN_REQUIRE_ALL=1). It is
// for tests only and must not import the store.
package storetest

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/lib/pq" // the PostgreSQL driver the store uses
)

// RequireAll reports whether KILN_REQUIRE_ALL=1: then a missing service
// fails a test instead of skipping it.
func RequireAll() bool { return os.Getenv("KILN_REQUIRE_ALL") == "1" }

// Unavailable fails t under KILN_REQUIRE_ALL=1 and skips it visibly
// otherwise.
func Unavailable(t testing.TB, what string, err error) {
	t.Helper()
	if RequireAll() {
		t.Fatalf("%s unavailable and KILN_REQUIRE_ALL=1: %v", what, err)
	}
	t.Skipf("%s unavailable (set KILN_REQUIRE_ALL=1 to fail instead): %v", what, err)
}

var seq atomic.Int64

// PostgresURL creates a fresh schema on the test server
// (KILN_TEST_DATABASE_URL, default the local one) and returns a URL whose
// search_path points at it; the schema is dropped at cleanup.
func PostgresURL(t testing.TB) string {
	t.Helper()
	base := os.Getenv("KILN_TEST_DATABASE_URL")
	if base == "" {
		base = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	db, err := sql.Open("postgres", base)
	if err != nil {
		Unavailable(t, "PostgreSQL", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		Unavailable(t, "PostgreSQL", err)
	}
	schema := fmt.Sprintf("kiln_test_%d_%d_%d", os.Getpid(), time.Now().UnixNano(), seq.Add(1))
	if _, err := db.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		db.Close()
		t.Fatalf("create schema %s: %v", schema, err)
	}
	t.Cleanup(func() {
		_, _ = db.Exec("DROP SCHEMA " + schema + " CASCADE")
		db.Close()
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("KILN_TEST_DATABASE_URL: %v", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}
