// Package worker is the kiln-worker daemon: it keeps a token, registers and
// waits to be enabled, reports its metadata, consumes its assignments from
// its durable JetStream consumer, confirms each with the server before it
// runs it (the database decides; a stale message is dropped), runs up to its
// concurrency of tasks, heartbeats, and reports results with retries. A
// server or NATS outage never ends it; only its context does.
package worker
