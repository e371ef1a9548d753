package tasks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v5"

	"github.com/kiln-ci/kiln/schemas"
)

var taskNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// ErrUnknownTask is returned for a task name that is not registered.
var ErrUnknownTask = errors.New("unknown task")

// ValidationError lists what is wrong with task data, each problem named by
// the JSON pointer (into the task data) that failed.
type ValidationError struct {
	Task     string
	Problems []schemas.ValidationProblem
}

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		ptr := p.Pointer
		if ptr == "" {
			ptr = "(task data)"
		}
		parts[i] = ptr + ": " + p.Message
	}
	return fmt.Sprintf("invalid task data for %s: %s", e.Task, strings.Join(parts, "; "))
}

type entry struct {
	task   Task
	schema *jsonschema.Schema
}

// Registry maps task names to tasks and their compiled task_data schemas. It
// is safe for concurrent use.
type Registry struct {
	mu    sync.RWMutex
	tasks map[string]entry
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{tasks: map[string]entry{}} }

// Default returns a registry with every task Kiln ships.
func Default() *Registry {
	r := NewRegistry()
	r.MustRegister(Noop{})
	r.MustRegister(Mmdebstrap{})
	r.MustRegister(Sbuild{})
	r.MustRegister(Lintian{})
	r.MustRegister(DUTTest{})
	for _, t := range deviceTasks() {
		r.MustRegister(t)
	}
	return r
}

// Register adds t, compiling the schema from schemas/tasks/<name>.json.
func (r *Registry) Register(t Task) error {
	src, err := schemas.TaskSchema(t.Name())
	if err != nil {
		return err
	}
	return r.RegisterWithSchema(t, src)
}

// RegisterWithSchema adds t with an explicit task_data schema.
func (r *Registry) RegisterWithSchema(t Task, schemaJSON []byte) error {
	name := t.Name()
	if !taskNameRE.MatchString(name) {
		return fmt.Errorf("register task %q: names are lower-case letters, digits, '-' and '_'", name)
	}
	c := jsonschema.NewCompiler()
	c.Draft = jsonschema.Draft2020
	url := "kiln:///tasks/" + name + ".json"
	if err := c.AddResource(url, bytes.NewReader(schemaJSON)); err != nil {
		return fmt.Errorf("register task %s: schema: %w", name, err)
	}
	s, err := c.Compile(url)
	if err != nil {
		return fmt.Errorf("register task %s: compile schema: %w", name, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.tasks[name]; dup {
		return fmt.Errorf("register task %s: already registered", name)
	}
	r.tasks[name] = entry{task: t, schema: s}
	return nil
}

// MustRegister is Register that panics, for package-level set-up.
func (r *Registry) MustRegister(t Task) {
	if err := r.Register(t); err != nil {
		panic(err)
	}
}

// Get returns the named task.
func (r *Registry) Get(name string) (Task, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.tasks[name]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownTask, name)
	}
	return e.task, nil
}

// Names returns the registered task names, sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.tasks))
	for n := range r.tasks {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Validate checks data against the named task's schema, then that the task
// reads it (its Requirements and, if it has inputs, InputArtifacts). It
// returns ErrUnknownTask, a *ValidationError, or nil.
func (r *Registry) Validate(name string, data json.RawMessage) error {
	r.mu.RLock()
	e, ok := r.tasks[name]
	r.mu.RUnlock()
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownTask, name)
	}
	invalid := func(ptr, msg string) error {
		return &ValidationError{Task: name, Problems: []schemas.ValidationProblem{{Pointer: ptr, Message: msg}}}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return invalid("", "not valid JSON: "+err.Error())
	}
	if _, err := dec.Token(); err != io.EOF {
		return invalid("", "not valid JSON: trailing data after the value")
	}
	// The schema check sees the last of duplicate keys, the task the first:
	// refuse them so that both see the same data.
	if ptr, dup := duplicateKey(data); dup != "" {
		return invalid(ptr, fmt.Sprintf("duplicate key %q", dup))
	}
	if err := e.schema.Validate(v); err != nil {
		var ve *jsonschema.ValidationError
		if errors.As(err, &ve) {
			return &ValidationError{Task: name, Problems: flatten(ve)}
		}
		return fmt.Errorf("validate %s task data: %w", name, err)
	}
	// What the schema accepts the task must also read: JSON Schema takes
	// 1.0 and 2e0 as integers and puts no bound on them, and some rules
	// (dut-test's command or script) are the task's own.
	if _, err := e.task.Requirements(data); err != nil {
		return invalid(unmarshalPointer(err), err.Error())
	}
	if in, ok := e.task.(Inputs); ok {
		if _, err := in.InputArtifacts(data); err != nil {
			return invalid(unmarshalPointer(err), err.Error())
		}
	}
	return nil
}

// unmarshalPointer returns the JSON pointer of the field that
// encoding/json could not decode into when err says so, else "".
func unmarshalPointer(err error) string {
	var te *json.UnmarshalTypeError
	if !errors.As(err, &te) || te.Field == "" {
		return ""
	}
	parts := strings.Split(te.Field, ".")
	for i, p := range parts {
		parts[i] = escapePointer(p)
	}
	return "/" + strings.Join(parts, "/")
}

// duplicateKey returns the JSON pointer of the first object in data that
// repeats a key, and the key; "" when there is none. data is valid JSON.
func duplicateKey(data []byte) (ptr, key string) {
	dec := json.NewDecoder(bytes.NewReader(data))
	var walk func(path string) (string, string)
	walk = func(path string) (string, string) {
		tok, err := dec.Token()
		if err != nil {
			return "", ""
		}
		d, ok := tok.(json.Delim)
		if !ok {
			return "", ""
		}
		switch d {
		case '{':
			seen := map[string]bool{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return "", ""
				}
				k, _ := kt.(string)
				if seen[k] {
					return path, k
				}
				seen[k] = true
				if p, dk := walk(path + "/" + escapePointer(k)); dk != "" {
					return p, dk
				}
			}
			_, _ = dec.Token()
		case '[':
			for i := 0; dec.More(); i++ {
				if p, dk := walk(path + "/" + strconv.Itoa(i)); dk != "" {
					return p, dk
				}
			}
			_, _ = dec.Token()
		}
		return "", ""
	}
	return walk("")
}

func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

// flatten turns the schema library's error tree into its leaves, the causes a
// user can act on.
func flatten(ve *jsonschema.ValidationError) []schemas.ValidationProblem {
	if len(ve.Causes) == 0 {
		ptr := ve.InstanceLocation
		return []schemas.ValidationProblem{{Pointer: ptr, Message: ve.Message}}
	}
	var out []schemas.ValidationProblem
	for _, c := range ve.Causes {
		out = append(out, flatten(c)...)
	}
	return out
}

// Analyze returns the worker metadata this registry's tasks contribute:
// <name>:version for every task plus each task's AnalyzeWorker keys.
func (r *Registry) Analyze(ctx context.Context, host Host) schemas.Metadata {
	md := schemas.Metadata{}
	r.mu.RLock()
	defer r.mu.RUnlock()
	for name, e := range r.tasks {
		md[VersionKey(name)] = e.task.Version()
		for k, v := range e.task.AnalyzeWorker(ctx, host) {
			md[k] = v
		}
	}
	return md
}
