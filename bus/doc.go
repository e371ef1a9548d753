// Package bus owns Kiln's use of NATS: the subject and stream names that the
// server and the workers share, the JetStream stream and per-worker durable
// consumers, connections that reconnect forever, and the embedded
// nats-server of a single node. It carries messages; it must not decide
// anything that the database decides (who runs what).
package bus
