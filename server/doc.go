// Package server is kiln-server: the REST API under /api/1.0/ (debusine's
// paths, headers, status codes and problem+json errors), authentication, the
// scheduler's host, the dispatch of outbox messages over NATS JetStream, the
// heartbeat listener, metrics and health. Run starts all of it from a Config;
// tests start the same thing in-process with New. Handlers never decide who
// runs what: they change the store and wake the scheduler.
package server
