package bus

import (
	"fmt"
	"regexp"
	"strings"
)

// Names derives every subject, stream and consumer name from one prefix, so
// that several Kiln installations (or tests) can share a NATS server.
type Names struct {
	// Prefix starts every subject; it is a single NATS token (default "kiln").
	Prefix string
}

var prefixRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// NewNames validates prefix and returns the names derived from it.
func NewNames(prefix string) (Names, error) {
	if !prefixRE.MatchString(prefix) {
		return Names{}, fmt.Errorf("nats prefix %q: use letters, digits, '-' and '_' only", prefix)
	}
	return Names{Prefix: prefix}, nil
}

// Stream is the JetStream stream holding assignments and control messages.
func (n Names) Stream() string {
	return strings.ToUpper(strings.ReplaceAll(n.Prefix, "-", "_")) + "_WORKERS"
}

// WorkerSubjects is the stream's subject filter.
func (n Names) WorkerSubjects() string { return n.Prefix + ".worker.>" }

// AssignSubject carries assignments to one worker.
func (n Names) AssignSubject(workerID int64) string {
	return fmt.Sprintf("%s.worker.%d.assign", n.Prefix, workerID)
}

// ControlSubject carries aborts and requests for metadata to one worker.
func (n Names) ControlSubject(workerID int64) string {
	return fmt.Sprintf("%s.worker.%d.control", n.Prefix, workerID)
}

// AssignConsumer is the durable consumer of a worker's assignments.
func (n Names) AssignConsumer(workerID int64) string {
	return fmt.Sprintf("worker-%d-assign", workerID)
}

// ControlConsumer is the durable consumer of a worker's control messages.
func (n Names) ControlConsumer(workerID int64) string {
	return fmt.Sprintf("worker-%d-control", workerID)
}

// HeartbeatSubject is where a worker publishes its heartbeats (core NATS).
func (n Names) HeartbeatSubject(workerID int64) string {
	return fmt.Sprintf("%s.heartbeat.%d", n.Prefix, workerID)
}

// HeartbeatWildcard matches every worker's heartbeats.
func (n Names) HeartbeatWildcard() string { return n.Prefix + ".heartbeat.*" }

// KickSubject asks the scheduler leader to run a pass (core NATS), so that an
// API replica that is not the leader can wake it.
func (n Names) KickSubject() string { return n.Prefix + ".scheduler.kick" }

// EventSubject carries work request state changes (core NATS).
func (n Names) EventSubject(workRequestID int64) string {
	return fmt.Sprintf("%s.events.work-request.%d", n.Prefix, workRequestID)
}

// LogStream is the JetStream stream holding live log chunks.
func (n Names) LogStream() string {
	return strings.ToUpper(strings.ReplaceAll(n.Prefix, "-", "_")) + "_LOGS"
}

// LogSubject carries the output chunks of one work request.
func (n Names) LogSubject(workRequestID int64) string {
	return fmt.Sprintf("%s.log.%d", n.Prefix, workRequestID)
}

// LogSubjects is the log stream's subject filter.
func (n Names) LogSubjects() string { return n.Prefix + ".log.*" }
