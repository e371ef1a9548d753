package web_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kiln-ci/kiln/e2e/testtasks"
	"github.com/kiln-ci/kiln/server"
	"github.com/kiln-ci/kiln/server/store/storetest"
)

// benchRows is how many work requests the dashboard benchmark stores.
const benchRows = 100_000

// BenchmarkDashboardPostgres measures the dashboard's pages at the server
// (the handler, no network) with 100,000 work requests in PostgreSQL: 90%
// completed (a fifth of them failed or errored), 5% aborted, 4% pending,
// 1% running, over five tasks, ten workers and three users. Each page
// includes its session lookup. Rerun with
//
//	go test -run '^$' -bench DashboardPostgres -benchtime 200x ./server/web/
func BenchmarkDashboardPostgres(b *testing.B) {
	dbURL := storetest.PostgresURL(b)
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	srv, err := server.New(ctx, server.Config{Listen: "127.0.0.1:0", DataDir: b.TempDir(), NATSListen: "127.0.0.1:0",
		DatabaseURL: dbURL, LogMaxBytes: 8 << 20, Registry: testtasks.Registry(), SchedulerSweep: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = srv.Close() })
	st := srv.Store()
	var users []int64
	var token string
	for _, name := range []string{"admin", "alice", "bob"} {
		u, err := st.CreateUser(ctx, name, "", name == "admin")
		if err != nil {
			b.Fatal(err)
		}
		users = append(users, u.ID)
		if name == "alice" {
			if token, err = st.CreateUserToken(ctx, u.ID, "bench"); err != nil {
				b.Fatal(err)
			}
		}
	}
	var workers []int64
	for i := range 10 {
		wk, err := st.CreateWorker(ctx, fmt.Sprintf("builder-%d", i), "external")
		if err != nil {
			b.Fatal(err)
		}
		workers = append(workers, wk.ID)
	}
	fill(b, dbURL, users, workers)
	session, _, err := st.CreateWebSession(ctx, token, time.Now().Add(time.Hour))
	if err != nil {
		b.Fatal(err)
	}
	h := srv.Handler()
	get := func(b *testing.B, path string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		req.AddCookie(&http.Cookie{Name: "kiln_session", Value: session})
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("GET %s: %d %s", path, rec.Code, rec.Body.String())
		}
		return rec
	}
	var newest int64
	conn, err := sql.Open("postgres", dbURL)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	if err := conn.QueryRowContext(ctx, `SELECT MAX(id) FROM work_requests WHERE status = 'completed'`).Scan(&newest); err != nil {
		b.Fatal(err)
	}
	pages := []struct{ name, path, want string }{
		{"list", "/work-requests/", "more than 1000 matching"},
		{"list-filtered", "/work-requests/?status=completed&result=failure&task=sbuild", "matching"},
		{"list-by-creator-and-worker", "/work-requests/?created_by=bob&worker=builder-3", "matching"},
		{"list-deep-page", fmt.Sprintf("/work-requests/?task=lintian&before=%d", benchRows/2), "matching"},
		{"detail", fmt.Sprintf("/work-requests/%d/", newest), "Timeline"},
	}
	for _, p := range pages {
		b.Run(p.name, func(b *testing.B) {
			if body := get(b, p.path).Body.String(); !strings.Contains(body, p.want) || !strings.Contains(body, "</html>") {
				b.Fatalf("GET %s: no %q in the page", p.path, p.want)
			}
			b.ResetTimer()
			for b.Loop() {
				get(b, p.path)
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/page")
		})
	}
}

// fill stores benchRows work requests in one statement.
func fill(b testing.TB, dbURL string, users, workers []int64) {
	b.Helper()
	db, err := sql.Open("postgres", dbURL)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	start := time.Now()
	_, err = db.Exec(`INSERT INTO work_requests (task_name, task_type, task_data, status, result, priority_base,
		priority_adjustment, priority, worker_id, workspace, created_by, created_at, assigned_at, started_at, completed_at,
		attempt, shape, output, timeout_seconds)
	SELECT (ARRAY['noop', 'sbuild', 'lintian', 'autopkgtest', 'mmdebstrap'])[1 + g % 5], 'Worker',
		'{"result": true, "note": "work request ' || g || '"}',
		CASE WHEN g % 100 < 90 THEN 'completed' WHEN g % 100 < 95 THEN 'aborted' WHEN g % 100 < 99 THEN 'pending' ELSE 'running' END,
		CASE WHEN g % 100 >= 90 THEN '' ELSE (ARRAY['success', 'success', 'success', 'failure', 'error'])[1 + (g / 100) % 5] END,
		0, 0, 0,
		CASE WHEN g % 100 BETWEEN 95 AND 98 THEN NULL ELSE ($1::bigint[])[1 + g % 10] END,
		'System', ($2::bigint[])[1 + g % 3],
		now() - (($3 - g) * interval '1 second'),
		CASE WHEN g % 100 BETWEEN 95 AND 98 THEN NULL ELSE now() - (($3 - g) * interval '1 second') END,
		CASE WHEN g % 100 BETWEEN 95 AND 98 THEN NULL ELSE now() - (($3 - g) * interval '1 second') END,
		CASE WHEN g % 100 < 95 THEN now() - (($3 - g) * interval '1 second') + interval '30 seconds' END,
		1, (ARRAY['noop', 'sbuild', 'lintian', 'autopkgtest', 'mmdebstrap'])[1 + g % 5], repeat('output line\n', 20), 3600
	FROM generate_series(1, $3) AS g`, pqArray(workers), pqArray(users), benchRows)
	if err != nil {
		b.Fatal(err)
	}
	// As autovacuum would after such an insert: statistics, and the
	// visibility map that lets counts read the indexes alone.
	if _, err := db.Exec(`VACUUM ANALYZE work_requests`); err != nil {
		b.Fatal(err)
	}
	b.Logf("stored %d work requests in %s", benchRows, time.Since(start).Round(time.Millisecond))
}

// pqArray is a PostgreSQL array literal of ids.
func pqArray(ids []int64) string {
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = fmt.Sprint(id)
	}
	return "{" + strings.Join(parts, ",") + "}"
}
