package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/tasks/runner"
)

// Type says where a task runs, as debusine's task types do.
type Type string

// Task types. Worker tasks run on external workers; server and signing tasks
// need a worker of the matching worker type.
const (
	TypeWorker  Type = "Worker"
	TypeServer  Type = "Server"
	TypeSigning Type = "Signing"
)

// workerTypeFor maps a task type to the worker type that may run it.
var workerTypeFor = map[Type]string{
	TypeWorker:  "external",
	TypeServer:  "celery",
	TypeSigning: "signing",
}

// WorkerTypeFor returns the system:worker_type value that a worker must report
// to run tasks of type t.
func WorkerTypeFor(t Type) string { return workerTypeFor[t] }

// Metadata keys that every worker reports and the base rules read.
const (
	KeyWorkerType       = "system:worker_type"
	KeyArchitectures    = "system:architectures"
	KeyHostArchitecture = "system:host_architecture"
	KeyCPUCount         = "system:cpu_count"
	KeyTotalMemory      = "system:total_physical_memory"
	KeyAllowlist        = "tasks_allowlist"
	KeyDenylist         = "tasks_denylist"
)

// VersionKey is the metadata key under which a worker reports the version of
// the named task.
func VersionKey(task string) string { return task + ":version" }

// Requirements is what CanRunOn may depend on, extracted from task data. Two
// requests with equal Requirements for the same task can run on exactly the
// same workers, which is what lets the scheduler group them.
type Requirements struct {
	// HostArchitecture, when set, must appear in system:architectures.
	HostArchitecture string `json:"host_architecture,omitempty"`
	// Extra holds task-specific requirements (for example a device type).
	Extra map[string]string `json:"extra,omitempty"`
}

// Env is what a running task gets from the worker.
type Env struct {
	WorkRequestID int64
	Attempt       int
	// Output receives the task's log output (the live log).
	Output io.Writer
	Logger zerolog.Logger
	// WorkDir is an empty directory of this run's own, removed after it.
	WorkDir string
	// Grace is how long a killed command gets between SIGTERM and SIGKILL.
	Grace time.Duration
	// CgroupParent is the cgroup v2 directory under which commands get
	// their own cgroups (empty: the runner's default).
	CgroupParent string
	// Artifacts downloads inputs and uploads outputs; nil when the worker
	// has no artifact access (then tasks that need it fail).
	Artifacts Artifacts
	// Host is the worker's configuration for tasks that run host programs.
	Host Host
	// Device is the device under test leased to this run, for tasks that
	// need one (nil otherwise).
	Device *Device
	// OnStart, if set, is called as each command of the run starts (see
	// runner.Options.OnStart): the worker journals its process group and
	// cgroup, to kill them after a crash.
	OnStart func(runner.Process)
}

// Host is what a worker's administrator configures for tasks that build
// and check packages on the worker's machine.
type Host struct {
	// BuildUser is the unprivileged user that builds and checks run as when
	// the worker runs as root; it needs a subordinate uid/gid range for
	// unshare builds. Empty: the worker's own user (which must then not be
	// root for sbuild).
	BuildUser string
	// ScratchDir holds the build trees and unpacked build environments of
	// runs; a tmpfs makes builds faster. Empty: the system's temporary
	// directory. The build user must be able to reach it.
	ScratchDir string
}

// Artifacts is what tasks need of the artifact store.
type Artifacts interface {
	// Get returns the artifact's description (category, data, files).
	Get(ctx context.Context, id int64) (schemas.Artifact, error)
	// Download fetches every file of artifact id into dir.
	Download(ctx context.Context, id int64, dir string) error
	// Cached returns a local path to file name of artifact id from the
	// worker's cache (filling it on a miss), for big inputs that many runs
	// share such as build environments. The file must only be read, and
	// only until release is called.
	Cached(ctx context.Context, id int64, name string) (path string, release func(), err error)
	// Upload creates an artifact of this run from local files (artifact
	// path -> local path), related to the given artifacts, and returns its id.
	Upload(ctx context.Context, a NewArtifact) (int64, error)
}

// NewArtifact describes an artifact a task uploads.
type NewArtifact struct {
	Category string
	Data     map[string]any
	// Files maps a path inside the artifact to a local file.
	Files map[string]string
	// RelatesTo lists artifacts the new one relates to (debusine's
	// "relates-to").
	RelatesTo []int64
	// Relations lists further typed relations from the new artifact (an
	// upload "extends" its binary packages, a package is "built-using" its
	// source).
	Relations []Relation
}

// InputArtifact is an artifact that a request's task data names as input.
type InputArtifact struct {
	// Pointer is the JSON pointer of the id in the task data, such as
	// /input/source_artifact.
	Pointer string
	ID      int64
	// Categories are the artifact categories the task accepts there.
	Categories []string
}

// Field names the input for a user: input.source_artifact,
// input.binary_artifacts[1].
func (in InputArtifact) Field() string {
	var b strings.Builder
	for i, part := range strings.Split(strings.TrimPrefix(in.Pointer, "/"), "/") {
		switch _, err := strconv.Atoi(part); {
		case err == nil:
			b.WriteString("[" + part + "]")
		case i > 0:
			b.WriteString("." + part)
		default:
			b.WriteString(part)
		}
	}
	return b.String()
}

// CheckCategory says, in words for the user, when an artifact of category
// cannot be this input. No Categories: any artifact will do.
func (in InputArtifact) CheckCategory(category string) error {
	if len(in.Categories) == 0 || slices.Contains(in.Categories, category) {
		return nil
	}
	return fmt.Errorf("artifact %d is a %s artifact, not a %s", in.ID, category, strings.Join(in.Categories, " or "))
}

// Inputs is implemented by tasks whose task data names input artifacts:
// the server then refuses a request whose inputs do not exist or are of the
// wrong category when it is submitted, not when a worker fails on it.
type Inputs interface {
	// InputArtifacts lists the artifacts that validated task data names.
	InputArtifacts(data json.RawMessage) ([]InputArtifact, error)
}

// Relation is a typed link from a new artifact to an existing one.
type Relation struct {
	Type   schemas.RelationType
	Target int64
}

// Task is the contract every registered task fulfils.
type Task interface {
	// Name is the unique lower-case task name.
	Name() string
	// Version is TASK_VERSION: a worker runs a task only when it reports
	// exactly this version.
	Version() int
	// Type is the task type (Worker, Server, Signing).
	Type() Type
	// AnalyzeWorker runs on the worker and returns the metadata keys this task
	// contributes, besides <name>:version which the registry adds.
	AnalyzeWorker(ctx context.Context, host Host) schemas.Metadata
	// Requirements extracts from validated task data what CanRunOn depends on.
	Requirements(data json.RawMessage) (Requirements, error)
	// CanRunOn runs on the scheduler: nil when a worker with this metadata can
	// run a request with these requirements, otherwise an error that says why
	// not in words a user understands. Implementations start with BaseCanRunOn.
	CanRunOn(req Requirements, md schemas.Metadata) error
	// Execute runs on the worker.
	Execute(ctx context.Context, data json.RawMessage, env Env) (schemas.Result, error)
}

// ErrCannotRun wraps every CanRunOn refusal, so callers can tell a refusal
// from a broken task.
var ErrCannotRun = errors.New("cannot run")

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCannotRun, fmt.Sprintf(format, args...))
}

// BaseCanRunOn applies the rules every task shares, as debusine does: worker
// type pairing, the tasks allowlist and denylist (the allowlist wins), exact
// <task>:version equality, and system:architectures when the requirements
// name a host architecture.
func BaseCanRunOn(t Task, req Requirements, md schemas.Metadata) error {
	want := WorkerTypeFor(t.Type())
	if got := MetaString(md, KeyWorkerType); got != want {
		return refuse("task type %s needs a %s worker, this is a %q worker", t.Type(), want, got)
	}
	if allow, ok := MetaStrings(md, KeyAllowlist); ok {
		if !slices.Contains(allow, t.Name()) {
			return refuse("%s is not in the worker's tasks_allowlist", t.Name())
		}
	} else if deny, ok := MetaStrings(md, KeyDenylist); ok && slices.Contains(deny, t.Name()) {
		return refuse("%s is in the worker's tasks_denylist", t.Name())
	}
	v, ok := md[VersionKey(t.Name())]
	if !ok {
		return refuse("worker does not report %s", VersionKey(t.Name()))
	}
	if got := metaScalar(v); got != strconv.Itoa(t.Version()) {
		return refuse("worker has %s %s, the server needs %d", VersionKey(t.Name()), got, t.Version())
	}
	if req.HostArchitecture != "" {
		archs, _ := MetaStrings(md, KeyArchitectures)
		if !slices.Contains(archs, req.HostArchitecture) {
			return refuse("worker architectures %v do not include %s", archs, req.HostArchitecture)
		}
	}
	return nil
}

// MetaString returns md[key] as a string, or "" when absent.
func MetaString(md schemas.Metadata, key string) string {
	v, ok := md[key]
	if !ok || v == nil {
		return ""
	}
	return metaScalar(v)
}

// MetaStrings returns md[key] as a list of strings; ok is false when the key
// is absent. A single string is treated as a one-element list.
func MetaStrings(md schemas.Metadata, key string) (list []string, ok bool) {
	v, ok := md[key]
	if !ok || v == nil {
		return nil, false
	}
	switch x := v.(type) {
	case []string:
		return x, true
	case []any:
		for _, e := range x {
			list = append(list, metaScalar(e))
		}
		return list, true
	case string:
		return []string{x}, true
	}
	return []string{metaScalar(v)}, true
}

func metaScalar(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case json.Number:
		return x.String()
	case int:
		return strconv.Itoa(x)
	case int64:
		return strconv.FormatInt(x, 10)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// ShapeKey is the canonical grouping key of a request: task name plus its
// requirements. Requests with the same key are interchangeable for CanRunOn,
// and different requirements always give different keys: task names cannot
// hold '|', and JSON encoding (with sorted map keys) is injective.
func ShapeKey(task string, req Requirements) string {
	b, err := json.Marshal(req)
	if err != nil {
		panic(err) // strings and a map of strings always marshal
	}
	return task + "|" + string(b)
}
