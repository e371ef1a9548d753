package bus

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	natsserver "github.com/nats-io/nats-server/v2/server"
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

// LogSubject carries the output chunks a worker sends of one work request.
// The worker's id is in it so that the embedded nats-server can let each
// worker publish only under its own name.
func (n Names) LogSubject(workerID, workRequestID int64) string {
	return fmt.Sprintf("%s.log.%d.%d", n.Prefix, workerID, workRequestID)
}

// RequestLogSubjects matches the output of one work request, whichever
// worker ran it.
func (n Names) RequestLogSubjects(workRequestID int64) string {
	return fmt.Sprintf("%s.log.*.%d", n.Prefix, workRequestID)
}

// LogSender is the worker that published a log chunk on subject, or 0 when
// subject is not a log subject of these names.
func (n Names) LogSender(subject string) int64 {
	rest, ok := strings.CutPrefix(subject, n.Prefix+".log.")
	if !ok {
		return 0
	}
	worker, _, _ := strings.Cut(rest, ".")
	id, err := strconv.ParseInt(worker, 10, 64)
	if err != nil {
		return 0
	}
	return id
}

// LogSubjects is the log stream's subject filter.
func (n Names) LogSubjects() string { return n.Prefix + ".log.>" }

// WorkerInbox is the inbox prefix a worker's NATS connection uses: replies
// to it (JetStream acks, pulled messages) are the only subjects the worker
// may subscribe to on the embedded nats-server.
func (n Names) WorkerInbox(workerID int64) string {
	return fmt.Sprintf("_INBOX.%s-worker-%d", n.Prefix, workerID)
}

// WorkerPermissions is what worker workerID may do on the embedded
// nats-server: pull from, and acknowledge, its own two durable consumers
// (created on its own subjects only), publish its heartbeats and the logs
// of its runs, and receive replies on its own inbox. Everything else, other
// workers' subjects above all, is refused.
func (n Names) WorkerPermissions(workerID int64) *natsserver.Permissions {
	stream := n.Stream()
	var pub []string
	for _, c := range []struct{ consumer, subject string }{
		{n.AssignConsumer(workerID), n.AssignSubject(workerID)},
		{n.ControlConsumer(workerID), n.ControlSubject(workerID)},
	} {
		pub = append(pub,
			fmt.Sprintf("$JS.API.CONSUMER.CREATE.%s.%s.%s", stream, c.consumer, c.subject),
			fmt.Sprintf("$JS.API.CONSUMER.INFO.%s.%s", stream, c.consumer),
			fmt.Sprintf("$JS.API.CONSUMER.MSG.NEXT.%s.%s", stream, c.consumer),
			fmt.Sprintf("$JS.ACK.%s.%s.>", stream, c.consumer),
		)
	}
	pub = append(pub, n.HeartbeatSubject(workerID), fmt.Sprintf("%s.log.%d.*", n.Prefix, workerID))
	return &natsserver.Permissions{
		Publish:   &natsserver.SubjectPermission{Allow: pub},
		Subscribe: &natsserver.SubjectPermission{Allow: []string{n.WorkerInbox(workerID) + ".>"}},
	}
}
