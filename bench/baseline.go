package bench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	_ "modernc.org/sqlite" // the SQLite driver server/store uses

	"github.com/kiln-ci/kiln/bus"
)

// runBaseline measures the raw engines with no Kiln code in the path: the
// SQL of a request's life (insert, claim, complete) on a table of its own,
// and a JetStream publish, durable pull and ack. It records both, and the
// pipeline figure they combine into, as this backend's baselines.
func runBaseline(ctx context.Context, e *Env) ([]Row, error) {
	sqlRate, sqlNote, err := baselineSQL(ctx, e)
	if err != nil {
		return nil, fmt.Errorf("SQL baseline: %w", err)
	}
	jsRate, jsNote, err := baselineJetStream(ctx, e)
	if err != nil {
		return nil, fmt.Errorf("JetStream baseline: %w", err)
	}
	pipeline := 0.0
	if sqlRate > 0 && jsRate > 0 {
		pipeline = 1 / (1/sqlRate + 1/jsRate)
	}
	e.SetBaseline(BaselineSQL, sqlRate)
	e.SetBaseline(BaselineJetStream, jsRate)
	e.SetBaseline(BaselinePipeline, pipeline)
	return []Row{
		{Metric: "SQL insert+claim+complete", Value: sqlRate, Unit: "req/s", Note: sqlNote},
		{Metric: "JetStream publish+pull+ack", Value: jsRate, Unit: "msgs/s", Note: jsNote},
		{Metric: "pipeline 1/(1/sql+1/jetstream)", Value: pipeline, Unit: "req/s",
			Note: "what one request needs of both engines in turn; the ceiling Kiln's throughput is compared with"},
	}, nil
}

// baselineSQL runs request lives (insert a pending row; claim the first
// pending one; complete it) from Scale.Conns goroutines for Scale.Duration
// and returns completed lives per second.
func baselineSQL(ctx context.Context, e *Env) (float64, string, error) {
	db, pg, err := baselineDB(ctx, e)
	if err != nil {
		return 0, "", err
	}
	defer db.Close()

	// The columns a request's life touches, and the indexes that make a
	// claim cheap, as work_requests has them (a partial queue index in
	// scheduling order, a status index).
	id, ts := "INTEGER PRIMARY KEY AUTOINCREMENT", "TIMESTAMP"
	if pg {
		id, ts = "BIGSERIAL PRIMARY KEY", "TIMESTAMPTZ"
	}
	for _, q := range []string{
		`CREATE TABLE baseline_requests (
			id ` + id + `,
			task_name TEXT NOT NULL,
			task_data TEXT NOT NULL,
			status TEXT NOT NULL,
			result TEXT NOT NULL DEFAULT '',
			priority INTEGER NOT NULL DEFAULT 0,
			worker_id BIGINT,
			created_at ` + ts + ` NOT NULL,
			assigned_at ` + ts + `,
			completed_at ` + ts + `
		)`,
		`CREATE INDEX baseline_requests_queue ON baseline_requests (priority DESC, created_at, id) WHERE status = 'pending' AND worker_id IS NULL`,
		`CREATE INDEX baseline_requests_status ON baseline_requests (status, id)`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return 0, "", fmt.Errorf("create baseline table: %w", err)
		}
	}

	insert := `INSERT INTO baseline_requests (task_name, task_data, status, priority, created_at) VALUES (?, ?, 'pending', 0, ?)`
	claim := `UPDATE baseline_requests SET status = 'running', worker_id = ?, assigned_at = ?
		WHERE id = (SELECT id FROM baseline_requests WHERE status = 'pending' AND worker_id IS NULL
			ORDER BY priority DESC, created_at, id LIMIT 1%s) RETURNING id`
	complete := `UPDATE baseline_requests SET status = 'completed', result = 'success', completed_at = ? WHERE id = ?`
	if pg {
		insert, complete = sqlDollar(insert), sqlDollar(complete)
		claim = sqlDollar(fmt.Sprintf(claim, " FOR UPDATE SKIP LOCKED"))
	} else {
		claim = fmt.Sprintf(claim, "")
	}

	rctx, cancel := context.WithTimeout(ctx, e.Scale.Duration)
	defer cancel()
	var done atomic.Int64
	var wg sync.WaitGroup
	conns := max(e.Scale.Conns, 1)
	errs := make(chan error, conns)
	start := time.Now()
	for c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			worker := int64(c + 1)
			fail := func(what string, err error) {
				// An error once the run is over is its cancellation.
				if rctx.Err() == nil {
					errs <- fmt.Errorf("%s: %w", what, err)
				}
			}
			for rctx.Err() == nil {
				now := time.Now().UTC()
				if _, err := db.ExecContext(rctx, insert, "noop", `{"result":true}`, now); err != nil {
					fail("insert", err)
					return
				}
				var id int64
				err := func() error {
					// A transaction, as Kiln's claim is one (on PostgreSQL
					// the statement alone would do).
					tx, err := db.BeginTx(rctx, nil)
					if err != nil {
						return err
					}
					defer func() { _ = tx.Rollback() }()
					if err := tx.QueryRowContext(rctx, claim, worker, now).Scan(&id); err != nil {
						return err
					}
					return tx.Commit()
				}()
				if errors.Is(err, sql.ErrNoRows) {
					continue // every pending row is being claimed by others
				}
				if err != nil {
					fail("claim", err)
					return
				}
				if _, err := db.ExecContext(rctx, complete, time.Now().UTC(), id); err != nil {
					fail("complete", err)
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err, ok := <-errs; ok {
		return 0, "", err
	}
	if ctx.Err() != nil {
		return 0, "", ctx.Err()
	}
	rate := float64(done.Load()) / elapsed.Seconds()
	note := fmt.Sprintf("%d lives by %d goroutines in %s; 3 transactions each", done.Load(), conns, elapsed.Round(time.Millisecond))
	if pg {
		note += ", claim FOR UPDATE SKIP LOCKED"
	} else {
		note += ", one write connection, WAL, synchronous=NORMAL, as server/store"
	}
	return rate, note, nil
}

// baselineDB opens the backend's database for the baseline: a fresh
// PostgreSQL schema, or a fresh SQLite file opened as server/store opens
// its own (WAL, busy timeout, synchronous=NORMAL, one write connection).
func baselineDB(ctx context.Context, e *Env) (*sql.DB, bool, error) {
	dbURL, err := e.Database(ctx)
	if err != nil {
		return nil, false, err
	}
	if dbURL != "" {
		db, err := sql.Open("postgres", dbURL)
		if err != nil {
			return nil, false, err
		}
		db.SetMaxOpenConns(max(e.Scale.Conns, 1))
		db.SetMaxIdleConns(max(e.Scale.Conns, 1))
		if err := db.PingContext(ctx); err != nil {
			db.Close()
			return nil, false, err
		}
		return db, true, nil
	}
	dir, err := e.TempDir()
	if err != nil {
		return nil, false, err
	}
	db, err := sql.Open("sqlite", storeSQLiteDSN(filepath.Join(dir, "baseline.sqlite3")))
	if err != nil {
		return nil, false, err
	}
	db.SetMaxOpenConns(1)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, false, err
	}
	return db, false, nil
}

// storeSQLiteDSN is the data source name server/store opens SQLite with.
func storeSQLiteDSN(path string) string {
	q := url.Values{}
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "foreign_keys(ON)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Set("_time_format", "sqlite")
	return "file:" + path + "?" + q.Encode()
}

// sqlDollar rewrites ? placeholders as PostgreSQL's $n (the queries here hold
// no ? in literals).
func sqlDollar(q string) string {
	var b strings.Builder
	n := 0
	for _, c := range q {
		if c == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(c)
	}
	return b.String()
}

// baselineJetStream publishes Scale.MsgSize-byte messages to a work-queue
// stream of its own while a durable pull consumer takes and acknowledges
// them, for Scale.Duration, and returns acknowledged messages per second.
func baselineJetStream(ctx context.Context, e *Env) (float64, string, error) {
	natsURL, prefix, err := e.NATS(ctx)
	if err != nil {
		return 0, "", err
	}
	where := "external nats-server"
	if natsURL == "" {
		dir, err := e.TempDir()
		if err != nil {
			return 0, "", err
		}
		names, err := bus.NewNames(prefix)
		if err != nil {
			return 0, "", err
		}
		emb, err := bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: filepath.Join(dir, "jetstream"), Listen: "127.0.0.1:0", Names: names})
		if err != nil {
			return 0, "", err
		}
		e.Defer(emb.Shutdown)
		natsURL = emb.URL()
		where = "embedded nats-server over TCP"
	}
	// One connection publishes (the server), another consumes (a worker).
	pubNC, err := nats.Connect(natsURL, nats.Name("kiln-bench-publisher"))
	if err != nil {
		return 0, "", err
	}
	defer pubNC.Close()
	subNC, err := nats.Connect(natsURL, nats.Name("kiln-bench-consumer"))
	if err != nil {
		return 0, "", err
	}
	defer subNC.Close()
	pubJS, err := jetstream.New(pubNC)
	if err != nil {
		return 0, "", err
	}
	subJS, err := jetstream.New(subNC)
	if err != nil {
		return 0, "", err
	}

	// As bus.EnsureStream makes Kiln's stream: work-queue retention, file
	// storage, a de-duplication window.
	stream := strings.ToUpper(strings.ReplaceAll(prefix, "-", "_")) + "_BASELINE"
	subject := prefix + ".baseline.work"
	if _, err := pubJS.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: stream, Subjects: []string{prefix + ".baseline.>"}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage, Replicas: 1, Duplicates: 2 * time.Minute, MaxAge: time.Hour,
	}); err != nil {
		return 0, "", fmt.Errorf("stream %s: %w", stream, err)
	}
	e.Defer(func() {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = pubJS.DeleteStream(dctx, stream)
	})
	cons, err := subJS.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable: "baseline", FilterSubject: subject, AckPolicy: jetstream.AckExplicitPolicy,
		AckWait: 30 * time.Second, MaxDeliver: -1, DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return 0, "", fmt.Errorf("consumer: %w", err)
	}

	rctx, cancel := context.WithTimeout(ctx, e.Scale.Duration)
	defer cancel()
	payload := make([]byte, max(e.Scale.MsgSize, 1))
	for i := range payload {
		payload[i] = 'a' + byte(i%26)
	}
	var published, pubErrs, acked atomic.Int64
	var consErr error
	var wg sync.WaitGroup
	start := time.Now()
	wg.Add(2)
	go func() {
		// Asynchronous publishes with Kiln's de-duplication ids, in
		// windows whose acknowledgements are awaited, as the server's
		// Publish does.
		defer wg.Done()
		const window = 256
		var futures []jetstream.PubAckFuture
		for n := 0; rctx.Err() == nil; {
			futures = futures[:0]
			for range window {
				m := nats.NewMsg(subject)
				m.Data = payload
				m.Header.Set(jetstream.MsgIDHeader, prefix+"-"+strconv.Itoa(n))
				n++
				f, err := pubJS.PublishMsgAsync(m)
				if err != nil {
					pubErrs.Add(1)
					continue
				}
				futures = append(futures, f)
			}
			for _, f := range futures {
				select {
				case <-f.Ok():
					published.Add(1)
				case <-f.Err():
					pubErrs.Add(1)
				case <-time.After(10 * time.Second):
					pubErrs.Add(1)
				}
			}
		}
	}()
	go func() {
		// A batched pull, one acknowledgement per message.
		defer wg.Done()
		it, err := cons.Messages(jetstream.PullMaxMessages(500))
		if err != nil {
			consErr = err
			return
		}
		stop := context.AfterFunc(rctx, it.Stop)
		defer stop()
		for {
			msg, err := it.Next()
			if err != nil {
				return
			}
			if err := msg.Ack(); err == nil {
				acked.Add(1)
			}
		}
	}()
	wg.Wait()
	elapsed := time.Since(start)
	if ctx.Err() != nil {
		return 0, "", ctx.Err()
	}
	if consErr != nil {
		return 0, "", fmt.Errorf("consume: %w", consErr)
	}
	if acked.Load() == 0 {
		return 0, "", fmt.Errorf("no message acknowledged in %s (%d published, %d errors)", elapsed, published.Load(), pubErrs.Load())
	}
	rate := float64(acked.Load()) / elapsed.Seconds()
	note := fmt.Sprintf("%d-byte messages, %s; %d published (%.0f/s async, windows of 256), %d pulled (batches of 500) and acked in %s",
		len(payload), where, published.Load(), float64(published.Load())/elapsed.Seconds(), acked.Load(), elapsed.Round(time.Millisecond))
	if n := pubErrs.Load(); n > 0 {
		note += fmt.Sprintf("; %d publish errors", n)
	}
	return rate, note, nil
}
