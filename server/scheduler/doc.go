// Package scheduler decides which worker runs which pending work request. It
// groups pending requests by shape (task plus the requirements CanRunOn reads),
// evaluates CanRunOn once per shape and worker, then hands out free worker
// slots in priority order (effective priority, then oldest first). Each
// assignment is a conditional store transaction that also records the NATS
// message in the outbox; the scheduler never publishes anything that the
// database does not already say. Only the leader replica schedules.
package scheduler
