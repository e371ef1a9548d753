package schemas

import (
	"encoding/json"
	"errors"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Metadata is a worker's metadata: the keys its tasks and system report
// (dynamic) merged with the keys an admin set (static, which win).
type Metadata map[string]any

// Status is a work request's status.
type Status string

// Work request statuses, as debusine's.
const (
	StatusPending   Status = "pending"
	StatusRunning   Status = "running"
	StatusCompleted Status = "completed"
	StatusAborted   Status = "aborted"
	StatusBlocked   Status = "blocked"
)

// Terminal reports whether no further change of status can happen.
func (s Status) Terminal() bool { return s == StatusCompleted || s == StatusAborted }

// Result is a completed work request's result; empty until then.
type Result string

// Work request results, as debusine's.
const (
	ResultNone    Result = ""
	ResultSuccess Result = "success"
	ResultFailure Result = "failure"
	ResultError   Result = "error"
	ResultSkipped Result = "skipped"
)

// Valid reports whether r is a result a worker may report.
func (r Result) Valid() bool {
	switch r {
	case ResultSuccess, ResultFailure, ResultError, ResultSkipped:
		return true
	}
	return false
}

// WorkRequest is the JSON shape of a work request, debusine's fields first and
// Kiln's additions after them.
type WorkRequest struct {
	ID                 int64           `json:"id"`
	URL                string          `json:"url"`
	CreatedAt          time.Time       `json:"created_at"`
	StartedAt          *time.Time      `json:"started_at"`
	CompletedAt        *time.Time      `json:"completed_at"`
	Duration           *int64          `json:"duration"`
	Status             Status          `json:"status"`
	Result             Result          `json:"result"`
	Worker             *int64          `json:"worker"`
	TaskType           string          `json:"task_type"`
	TaskName           string          `json:"task_name"`
	TaskData           json.RawMessage `json:"task_data"`
	DynamicTaskData    json.RawMessage `json:"dynamic_task_data"`
	PriorityBase       int             `json:"priority_base"`
	PriorityAdjustment int             `json:"priority_adjustment"`
	Artifacts          []int64         `json:"artifacts"`
	Workspace          string          `json:"workspace"`
	Scope              string          `json:"scope"`

	CreatedBy     *int64     `json:"created_by"`
	AbortedBy     *int64     `json:"aborted_by"`
	AssignedAt    *time.Time `json:"assigned_at"`
	Attempt       int        `json:"attempt"`
	Supersedes    *int64     `json:"supersedes"`
	SupersededBy  *int64     `json:"superseded_by"`
	WaitingReason string     `json:"waiting_reason"`
	// Reason says why a request ended as it did when its result alone does
	// not (for example "timeout").
	Reason string `json:"reason"`
	// ErrorType is "infrastructure" for an error of the lab, not of the
	// task (see WorkRequestCompleted), "" otherwise.
	ErrorType string `json:"error_type"`
	// KillPending: aborted or timed out while running, and its worker has
	// not confirmed yet that everything it ran is gone.
	KillPending bool `json:"kill_pending"`
	// WorkerLostRetries counts the automatic retries, as new attempts,
	// after the request's worker was lost.
	WorkerLostRetries int `json:"worker_lost_retries"`
	// TimeoutSeconds is the run-time limit; DeadlineAt is set when it starts.
	TimeoutSeconds int        `json:"timeout_seconds"`
	DeadlineAt     *time.Time `json:"deadline_at"`
	// Output holds the end of the task's output once it has completed.
	Output string `json:"output,omitempty"`
}

// WorkRequestCreate is the body of POST /api/1.0/work-request/.
type WorkRequestCreate struct {
	TaskName       string          `json:"task_name"`
	TaskData       json.RawMessage `json:"task_data"`
	Workspace      string          `json:"workspace,omitempty"`
	EventReactions json.RawMessage `json:"event_reactions,omitempty"`
	// PriorityBase may be set by admins only.
	PriorityBase *int `json:"priority_base,omitempty"`
}

// WorkRequestPatch is the body of PATCH /api/1.0/work-request/ID/.
type WorkRequestPatch struct {
	PriorityAdjustment *int `json:"priority_adjustment,omitempty"`
}

// Page is a page of a cursor-paginated list, in Django REST framework's
// shape (count, next, previous, results) which the debusine client reads.
type Page[T any] struct {
	Count    *int64  `json:"count"`
	Next     *string `json:"next"`
	Previous *string `json:"previous"`
	Results  []T     `json:"results"`
}

// WorkerRegister is the body of POST /api/1.0/worker/register/.
type WorkerRegister struct {
	Token      string `json:"token"`
	FQDN       string `json:"fqdn"`
	WorkerType string `json:"worker_type,omitempty"`
}

// WorkRequestCompleted is the body of PUT /api/1.0/work-request/ID/completed/.
type WorkRequestCompleted struct {
	Result Result `json:"result"`
	// Attempt, when given, must be the request's current attempt.
	Attempt int `json:"attempt,omitempty"`
	// OutputData is debusine's output_data (runtime statistics, errors,
	// skip reason); accepted and not interpreted yet.
	OutputData json.RawMessage `json:"output_data,omitempty"`
	// Output is the end of the task's output (Kiln; at most 64 KiB kept).
	Output string `json:"output,omitempty"`
	// Reason (Kiln) says why a run ended in error, in words a user
	// understands (a build's dependency problem, an input that could not be
	// fetched); at most 1 KiB is kept.
	Reason string `json:"reason,omitempty"`
	// ErrorType (Kiln) classifies an error result: "infrastructure" when
	// the lab failed (a device that does not answer, a power command that
	// failed), not the test; the server then takes the device out of
	// service and retries the request on another one.
	ErrorType string `json:"error_type,omitempty"`
}

// ErrorInfrastructure is the error_type of errors of the lab, not the task.
const ErrorInfrastructure = "infrastructure"

// WorkRequestKilled is the body of POST /api/1.0/work-request/ID/killed/
// (Kiln): the worker confirms that nothing of that attempt runs any more.
type WorkRequestKilled struct {
	Attempt int `json:"attempt"`
}

// WorkRequestAbandoned is the body of POST
// /api/1.0/work-request/ID/abandoned/ (Kiln): a worker lost that attempt of
// the request (it restarted, or stopped the run to shut down), and the
// server retries it as a new attempt at once, as when a lease expires.
type WorkRequestAbandoned struct {
	Attempt int    `json:"attempt"`
	Reason  string `json:"reason,omitempty"`
}

// WorkRequestStart is the body of POST /api/1.0/work-request/ID/start/ (Kiln),
// which a worker calls when it takes an assignment from NATS.
type WorkRequestStart struct {
	Attempt int `json:"attempt"`
}

// Worker is the JSON shape of a worker.
type Worker struct {
	ID                       int64      `json:"id"`
	Name                     string     `json:"name"`
	WorkerType               string     `json:"worker_type"`
	Enabled                  bool       `json:"enabled"`
	Concurrency              int        `json:"concurrency"`
	Running                  int        `json:"running"`
	Connected                bool       `json:"connected"`
	RegisteredAt             time.Time  `json:"registered_at"`
	ConnectedAt              *time.Time `json:"connected_at"`
	LastSeenAt               *time.Time `json:"last_seen_at"`
	StaticMetadata           Metadata   `json:"static_metadata"`
	DynamicMetadata          Metadata   `json:"dynamic_metadata"`
	DynamicMetadataUpdatedAt *time.Time `json:"dynamic_metadata_updated_at"`
	// OverdueKills lists requests that were aborted or timed out on this
	// worker and whose kill it never confirmed in time: something may still
	// run there.
	OverdueKills []int64 `json:"overdue_kills"`
}

// WorkerConfig is what GET /api/1.0/worker/config/ (Kiln) tells a worker:
// where NATS is and the names it must use there.
type WorkerConfig struct {
	WorkerID   int64  `json:"worker_id"`
	WorkerName string `json:"worker_name"`
	NATSURL    string `json:"nats_url"`
	// Stream is the JetStream stream that holds assignments.
	Stream string `json:"stream"`
	// AssignSubject is this worker's assignment subject.
	AssignSubject string `json:"assign_subject"`
	// Consumer is the durable consumer name this worker must use.
	Consumer string `json:"consumer"`
	// HeartbeatSubject is where the worker publishes heartbeats.
	HeartbeatSubject string `json:"heartbeat_subject"`
	// HeartbeatInterval is how often to publish them (Go duration text).
	HeartbeatInterval string `json:"heartbeat_interval"`
	Concurrency       int    `json:"concurrency"`
	// NATSAuth is "worker-token" when the worker must present its own
	// token to NATS (Kiln's embedded nats-server); empty when the NATS
	// server needs no credentials or the worker's own (--nats-creds).
	NATSAuth string `json:"nats_auth,omitempty"`
	// NATSInbox is the inbox prefix the worker's NATS connection must use:
	// the only subjects it may subscribe to are below it.
	NATSInbox string `json:"nats_inbox,omitempty"`
}

// NATSAuthWorkerToken in WorkerConfig.NATSAuth tells a worker to present
// its own token to NATS: Kiln's embedded nats-server admits each worker by
// it and confines it to its own subjects.
const NATSAuthWorkerToken = "worker-token"

// Assignment is the NATS message that hands a work request to a worker.
type Assignment struct {
	WorkRequestID int64 `json:"work_request_id"`
	Attempt       int   `json:"attempt"`
	WorkerID      int64 `json:"worker_id"`
	// Device is the device under test leased to the request, if any.
	Device string `json:"device,omitempty"`
}

// Heartbeat is what a worker publishes periodically.
type Heartbeat struct {
	WorkerID int64   `json:"worker_id"`
	Running  []int64 `json:"running"`
	// Runs are the runs the worker holds, with their attempts (Kiln): the
	// server renews their leases, and tells the worker to stop those that
	// are not its own any more.
	Runs []RunRef `json:"runs,omitempty"`
}

// RunRef is one run of a work request: its id and attempt.
type RunRef struct {
	ID      int64 `json:"id"`
	Attempt int   `json:"attempt"`
}

// WhoAmI is the body of GET /api/1.0/whoami/: debusine's user, auth and
// worker_token, then Kiln's details.
type WhoAmI struct {
	User        string `json:"user"`
	Auth        bool   `json:"auth"`
	WorkerToken bool   `json:"worker_token"`
	UserID      int64  `json:"user_id,omitempty"`
	Admin       bool   `json:"is_admin"`
	Worker      string `json:"worker,omitempty"`
	WorkerID    int64  `json:"worker_id,omitempty"`
}

// ProblemContentType is the exact Content-Type of error bodies; the debusine
// client compares the whole string, so it carries no charset parameter.
const ProblemContentType = "application/problem+json"

// Problem is an application/problem+json error body. ValidationErrors maps
// a JSON pointer into the request body (or debusine's "non_field_errors") to
// what is wrong there, in debusine's shape.
type Problem struct {
	Title  string `json:"title"`
	Detail string `json:"detail,omitempty"`
	Status int    `json:"status,omitempty"`
	// Code is a stable machine-readable reason (Kiln), for example
	// "worker-disabled" or "unknown-token", so clients need not match text.
	Code             string              `json:"code,omitempty"`
	ValidationErrors map[string][]string `json:"validation_errors,omitempty"`
}

// ValidationProblem names one thing wrong with a document by JSON pointer.
type ValidationProblem struct {
	Pointer string `json:"pointer"`
	Message string `json:"message"`
}

// LogChunk is one piece of a work request's live log, as the "chunk" event of
// GET /api/1.0/work-request/ID/log/?follow=1 carries it.
type LogChunk struct {
	Seq     int    `json:"seq"`
	Attempt int    `json:"attempt"`
	Text    string `json:"text"`
	// EOF marks the last chunk of an attempt.
	EOF bool `json:"eof,omitempty"`
}

// LogEnd is the "end" event of a followed log: the request's final state.
type LogEnd struct {
	Status Status `json:"status"`
	Result Result `json:"result"`
}

// ArtifactFileCreate is one file of an artifact being created: debusine's
// FileRequest.
type ArtifactFileCreate struct {
	// Size is the file's size in bytes.
	Size int64 `json:"size"`
	// Checksums maps a hash name to the hex digest; "sha256" is required and
	// the only one accepted.
	Checksums map[string]string `json:"checksums"`
	// Type is always "file".
	Type string `json:"type"`
	// ContentType is the media type to serve the file with (a safe subset
	// is honoured; others are served as application/octet-stream).
	ContentType *string `json:"content_type,omitempty"`
}

// ArtifactCreate is the body of POST /api/1.0/artifact/: debusine's
// ArtifactCreateRequest.
type ArtifactCreate struct {
	Category string `json:"category"`
	// Workspace defaults to the server's workspace.
	Workspace string `json:"workspace,omitempty"`
	// Files maps each path in the artifact to its size and checksum.
	Files map[string]ArtifactFileCreate `json:"files"`
	// Data is a JSON object; default {}.
	Data json.RawMessage `json:"data,omitempty"`
	// WorkRequest links the artifact to the work request that made it; only
	// the worker running that work request may set it.
	WorkRequest *int64 `json:"work_request,omitempty"`
	// WorkRequestAttempt (Kiln) is the attempt of WorkRequest that made
	// the artifact: the server refuses one from an attempt that is not
	// the request's current one (a worker taken for lost).
	WorkRequestAttempt *int `json:"work_request_attempt,omitempty"`
	// ExpireAt is when the artifact may be deleted; nil keeps it.
	ExpireAt *time.Time `json:"expire_at,omitempty"`
}

// UnmarshalJSON decodes an ArtifactCreate. expire_at may also be a time
// without a zone (UTC), which the debusine client sends for a naive
// datetime.
func (a *ArtifactCreate) UnmarshalJSON(b []byte) error {
	type plain ArtifactCreate
	aux := struct {
		*plain
		ExpireAt json.RawMessage `json:"expire_at,omitempty"`
	}{plain: (*plain)(a)}
	if err := json.Unmarshal(b, &aux); err != nil {
		return err
	}
	a.ExpireAt = nil
	if len(aux.ExpireAt) == 0 || string(aux.ExpireAt) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(aux.ExpireAt, &s); err != nil {
		return errors.New("expire_at: want a date and time such as 2026-12-31T23:59:59Z")
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999", "2006-01-02 15:04:05.999999999Z07:00",
		"2006-01-02 15:04:05.999999999"} {
		if t, err := time.Parse(layout, s); err == nil {
			t = t.UTC()
			a.ExpireAt = &t
			return nil
		}
	}
	return errors.New("expire_at: " + strconvQuote(s) + " is not a date and time such as 2026-12-31T23:59:59Z")
}

func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// FileTypeFile is the only ArtifactFile type.
const FileTypeFile = "file"

// ArtifactFile is one file of an artifact: debusine's FileResponse, then
// Kiln's additions.
type ArtifactFile struct {
	Size      int64             `json:"size"`
	Checksums map[string]string `json:"checksums"`
	Type      string            `json:"type"`
	// URL is the absolute URL to download the file from (and to upload it
	// to, with PUT).
	URL         string  `json:"url"`
	ContentType *string `json:"content_type"`
	// Complete (Kiln) says whether the server has the whole file.
	Complete bool `json:"complete"`
}

// Artifact is the JSON shape of an artifact: debusine's ArtifactResponse
// fields first, then Kiln's.
type Artifact struct {
	ID        int64  `json:"id"`
	URL       string `json:"url"`
	Scope     string `json:"scope"`
	Workspace string `json:"workspace"`
	Category  string `json:"category"`
	// Data is the artifact's JSON object.
	Data      json.RawMessage `json:"data"`
	CreatedAt time.Time       `json:"created_at"`
	ExpireAt  *time.Time      `json:"expire_at"`
	// DownloadTarGzURL is the absolute URL of the whole artifact as .tar.gz.
	DownloadTarGzURL string `json:"download_tar_gz_url"`
	// FilesToUpload lists the paths whose content the server does not have
	// yet, sorted.
	FilesToUpload []string `json:"files_to_upload"`
	// Files maps each path in the artifact to its file.
	Files map[string]ArtifactFile `json:"files"`
	// WorkRequest (Kiln) is the work request that created the artifact.
	WorkRequest *int64 `json:"work_request"`
	// CreatedBy (Kiln) is the id of the user who created it, if a user did.
	CreatedBy *int64 `json:"created_by"`
}

// RelationType is the type of an artifact relation.
type RelationType string

// Artifact relation types, as debusine's.
const (
	RelationExtends    RelationType = "extends"
	RelationRelatesTo  RelationType = "relates-to"
	RelationBuiltUsing RelationType = "built-using"
)

// Valid reports whether t is a known relation type.
func (t RelationType) Valid() bool {
	return t == RelationExtends || t == RelationRelatesTo || t == RelationBuiltUsing
}

// ArtifactRelationCreate is the body of POST /api/1.0/artifact-relation/.
type ArtifactRelationCreate struct {
	Artifact int64        `json:"artifact"`
	Target   int64        `json:"target"`
	Type     RelationType `json:"type"`
}

// ArtifactRelation is a typed link from one artifact to another.
type ArtifactRelation struct {
	ID       int64        `json:"id"`
	Artifact int64        `json:"artifact"`
	Target   int64        `json:"target"`
	Type     RelationType `json:"type"`
}

// Limits of a path in an artifact.
const (
	MaxArtifactPathBytes    = 1024
	MaxArtifactSegmentBytes = 255
)

// ValidateArtifactPath checks a path in an artifact: relative, made of
// "/"-separated names that are not empty, "." or "..", valid UTF-8 without
// control characters or backslashes, at most MaxArtifactPathBytes long with
// names of at most MaxArtifactSegmentBytes. The server refuses artifacts
// with other paths, and clients refuse to write them to disk.
func ValidateArtifactPath(p string) error {
	switch {
	case p == "":
		return errors.New("the path is empty")
	case len(p) > MaxArtifactPathBytes:
		return errors.New("the path is longer than 1024 bytes")
	case !utf8.ValidString(p):
		return errors.New("the path is not valid UTF-8")
	case strings.HasPrefix(p, "/"):
		return errors.New("the path is absolute")
	}
	for _, r := range p {
		switch {
		case r == 0:
			return errors.New("the path contains a NUL byte")
		case unicode.IsControl(r): // C0, DEL and C1 (U+0080-U+009F)
			return errors.New("the path contains a control character")
		case r == '\\':
			return errors.New("the path contains a backslash")
		}
	}
	for _, seg := range strings.Split(p, "/") {
		switch {
		case seg == "":
			return errors.New("the path has an empty name (a doubled or trailing /)")
		case seg == "." || seg == "..":
			return errors.New("the path contains " + seg + " as a name")
		case len(seg) > MaxArtifactSegmentBytes:
			return errors.New("a name in the path is longer than 255 bytes")
		}
	}
	return nil
}
