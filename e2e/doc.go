// Package e2e holds end-to-end scenarios: a real kiln-server (API, scheduler,
// store, NATS JetStream) and real workers in one test process, talking over
// HTTP and NATS exactly as separate processes do. Each scenario runs on SQLite
// with an embedded nats-server and on PostgreSQL with an external
// nats-server.
package e2e
