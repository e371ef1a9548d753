package schemas

import (
	"encoding/json"
	"time"
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
}

// Assignment is the NATS message that hands a work request to a worker.
type Assignment struct {
	WorkRequestID int64 `json:"work_request_id"`
	Attempt       int   `json:"attempt"`
	WorkerID      int64 `json:"worker_id"`
}

// Heartbeat is what a worker publishes periodically.
type Heartbeat struct {
	WorkerID int64   `json:"worker_id"`
	Running  []int64 `json:"running"`
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
