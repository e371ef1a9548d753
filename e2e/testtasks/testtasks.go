// Package testtasks holds tasks that only Kiln's own tests register, on the
// in-process servers and workers of the e2e scenarios and in the test
// worker binary (e2e/cmd/kiln-test-worker) that they start as a process of
// its own. Never register them on a real server: Script runs any shell
// code it is given.
package testtasks

import (
	"context"
	"encoding/json"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/tasks"
)

// Script is a run-command task for tests: it runs task data "script" with
// sh in the run's execution directory, with the environment of every
// run-command run (KILN_WORK_REQUEST, KILN_ATTEMPT). Task data "timeout"
// (seconds) is the request's timeout, enforced by the server.
type Script struct{ tasks.Noop }

// Name is "script".
func (Script) Name() string { return "script" }

// Requirements are none.
func (Script) Requirements(json.RawMessage) (tasks.Requirements, error) {
	return tasks.Requirements{}, nil
}

// CanRunOn is the base check.
func (s Script) CanRunOn(req tasks.Requirements, md schemas.Metadata) error {
	return tasks.BaseCanRunOn(s, req, md)
}

// Execute runs the script through tasks.RunProgram.
func (Script) Execute(ctx context.Context, data json.RawMessage, env tasks.Env) (schemas.Result, error) {
	var d struct {
		Script string `json:"script"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return schemas.ResultError, err
	}
	return tasks.RunProgram(ctx, env, scriptProgram{d.Script})
}

type scriptProgram struct{ script string }

func (scriptProgram) FetchInput(context.Context, tasks.Env, string) ([]int64, error) { return nil, nil }
func (scriptProgram) Configure(context.Context, tasks.Env, string) error             { return nil }
func (p scriptProgram) CommandLine(tasks.Env, string, string) ([]string, error) {
	return []string{"sh", "-c", p.script}, nil
}
func (scriptProgram) CheckOutput(tasks.Env, string) []string                { return nil }
func (scriptProgram) Upload(context.Context, tasks.Env, string, bool) error { return nil }
func (scriptProgram) Succeeded(code int, _ string) bool                     { return code == 0 }

// ScriptSchema is the JSON Schema of Script's task data.
const ScriptSchema = `{"type": "object", "required": ["script"], "additionalProperties": false,
  "properties": {"script": {"type": "string"}, "timeout": {"type": "number", "exclusiveMinimum": 0}}}`

// Register adds the test tasks to reg.
func Register(reg *tasks.Registry) error {
	return reg.RegisterWithSchema(Script{}, []byte(ScriptSchema))
}

// Registry returns tasks.Default() with the test tasks.
func Registry() *tasks.Registry {
	reg := tasks.Default()
	if err := Register(reg); err != nil {
		panic(err) // a fixed schema that compiles
	}
	return reg
}
