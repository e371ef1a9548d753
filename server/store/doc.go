// Package store is Kiln's system of record: users, tokens, workers, work
// requests, waiting reasons, the dispatch outbox, artifacts, and devices
// under test with their leases and history, in PostgreSQL or SQLite
// behind one set of methods. SQL is written once with ? placeholders and
// rebound for PostgreSQL; the few real differences sit in dialect. Schema
// changes are embedded goose migrations, one directory per dialect with the
// same version numbers. The store decides nothing about scheduling; it only
// makes each state change atomic and conditional on the state it expects.
package store
