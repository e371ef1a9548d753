package store

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// queryPlan returns the database's plan for q as one string. PostgreSQL is
// told not to scan tables sequentially, so that the plan shows whether an
// index can serve the query at all, whatever the table's size.
func queryPlan(t *testing.T, st *Store, q string, args ...any) string {
	t.Helper()
	tx, err := st.w.BeginTxx(t.Context(), nil)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	explain := "EXPLAIN QUERY PLAN "
	if st.Dialect() == Postgres {
		_, err := tx.ExecContext(t.Context(), "SET LOCAL enable_seqscan = off")
		require.NoError(t, err)
		explain = "EXPLAIN "
	}
	rows, err := tx.QueryxContext(t.Context(), tx.Rebind(explain+q), args...)
	require.NoError(t, err)
	defer rows.Close()
	var lines []string
	for rows.Next() {
		cols, err := rows.SliceScan()
		require.NoError(t, err)
		for _, c := range cols {
			switch v := c.(type) {
			case string:
				lines = append(lines, v)
			case []byte:
				lines = append(lines, string(v))
			}
		}
	}
	require.NoError(t, rows.Err())
	return strings.Join(lines, "\n")
}

// Regression (kiln-bench, scheduler scale): counting a worker's busy slots
// scanned all of work_requests, once per worker and per worker API call,
// because the partial index's predicate left kill_pending out.
func TestHotQueriesUseTheirIndexes(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		for name, q := range map[string]string{
			"Workers": `SELECT ` + workerColumns + ` FROM workers ORDER BY id`,
			"Assign":  `SELECT COUNT(*) FROM work_requests WHERE worker_id = 1 AND ` + holdsSlot,
			// A query with only the status arm matches the OR predicate.
			"running": `SELECT id FROM work_requests WHERE worker_id = 1 AND status IN ('pending', 'running')`,
		} {
			plan := queryPlan(t, st, q)
			require.Contains(t, plan, "work_requests_worker_active", "%s: plan:\n%s", name, plan)
		}
		plan := queryPlan(t, st, `SELECT id FROM work_requests WHERE worker_id = 1 ORDER BY id DESC LIMIT 50`)
		require.Regexp(t, `work_requests_worker([^_a-z]|$)`, plan, "by worker")
		require.Contains(t, queryPlan(t, st, queueQuery, "noop", 10), "work_requests_queue", "a shape's queue")
	})
}
