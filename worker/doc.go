// Package worker is the kiln-worker daemon: it keeps a token, registers and
// waits to be enabled, reports its metadata, consumes its assignments from
// its durable JetStream consumer, confirms each with the server before it
// runs it (the database decides; a stale message is dropped), runs up to its
// concurrency of tasks, heartbeats, and reports results with retries. A
// server or NATS outage never ends it; only its context (a hard stop: runs
// are stopped and handed back) or a drain (Config.Drain: no new work, runs
// finish and report) does. Its journal (package journal) records what each
// run started and each result the server has not taken yet, so that a
// worker that crashed or was stopped kills the leftovers and settles with
// the server at its next start, and no finished result is thrown away.
package worker
