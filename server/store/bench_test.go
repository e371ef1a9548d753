package store

import (
	"context"
	"database/sql"
	"fmt"
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/kiln-ci/kiln/server/store/storetest"
)

// BenchmarkClaim is the scheduler's claim of a pending request for a
// worker (Assign: the worker's free slot checked, the request taken, the
// assignment recorded in the outbox, in one transaction). The worker's slot
// is freed again outside the timer, so every claim sees one free slot.
func BenchmarkClaim(b *testing.B) {
	for _, d := range []struct {
		name string
		dsn  func(b *testing.B) string
	}{
		{"sqlite", func(*testing.B) string { return "" }},
		{"postgres", func(b *testing.B) string { return storetest.PostgresURL(b) }},
	} {
		b.Run(d.name, func(b *testing.B) {
			ctx := context.Background()
			st, err := Open(ctx, d.dsn(b), b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			w, err := st.RegisterWorker(ctx, "bench", "external", NewSecret(), "")
			if err != nil {
				b.Fatal(err)
			}
			if err := st.SetWorkerEnabled(ctx, w.ID, true); err != nil {
				b.Fatal(err)
			}
			ids := make([]int64, b.N)
			err = st.tx(ctx, func(tx *sqlx.Tx) error {
				for i := range ids {
					var err error
					ids[i], err = insertWorkRequest(ctx, tx, NewWorkRequest{TaskName: "noop", TaskType: "Worker",
						TaskData: `{"result":true}`, Workspace: "System", Shape: "noop"}, sql.NullInt64{})
					if err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for _, id := range ids {
				msg := Message{Subject: fmt.Sprintf("kiln.worker.%d.assign", w.ID), MsgID: fmt.Sprintf("assign-%d-1", id),
					Payload: fmt.Sprintf(`{"work_request_id":%d,"attempt":1,"worker_id":%d}`, id, w.ID)}
				if _, err := st.Assign(ctx, id, 1, w.ID, 1, msg); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if _, err := st.Complete(ctx, id, w.ID, 1, Completion{Result: "success"}); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
