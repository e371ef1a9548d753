package tasks

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/kiln-ci/kiln/schemas"
)

// Noop does nothing but wait, if asked, and report the result it was given.
// It is the smallest real task: it exercises scheduling, dispatch and result
// reporting without running a program.
type Noop struct{}

// NoopData is the noop task's task_data.
type NoopData struct {
	Result           *bool   `json:"result,omitempty"`
	SleepSeconds     float64 `json:"sleep_seconds,omitempty"`
	Timeout          float64 `json:"timeout,omitempty"`
	HostArchitecture string  `json:"host_architecture,omitempty"`
}

// Name implements Task.
func (Noop) Name() string { return "noop" }

// Version implements Task.
func (Noop) Version() int { return 1 }

// Type implements Task.
func (Noop) Type() Type { return TypeWorker }

// AnalyzeWorker implements Task; noop needs nothing beyond its version.
func (Noop) AnalyzeWorker(context.Context, Host) schemas.Metadata { return nil }

// Requirements implements Task.
func (Noop) Requirements(data json.RawMessage) (Requirements, error) {
	var d NoopData
	if err := json.Unmarshal(data, &d); err != nil {
		return Requirements{}, fmt.Errorf("noop task data: %w", err)
	}
	return Requirements{HostArchitecture: d.HostArchitecture}, nil
}

// CanRunOn implements Task.
func (n Noop) CanRunOn(req Requirements, md schemas.Metadata) error {
	return BaseCanRunOn(n, req, md)
}

// Execute implements Task.
func (Noop) Execute(ctx context.Context, data json.RawMessage, env Env) (schemas.Result, error) {
	var d NoopData
	if err := json.Unmarshal(data, &d); err != nil {
		return schemas.ResultError, fmt.Errorf("noop task data: %w", err)
	}
	if d.SleepSeconds > 0 {
		fmt.Fprintf(env.Output, "sleeping %gs\n", d.SleepSeconds)
		t := time.NewTimer(time.Duration(d.SleepSeconds * float64(time.Second)))
		defer t.Stop()
		select {
		case <-ctx.Done():
			return schemas.ResultError, context.Cause(ctx)
		case <-t.C:
		}
	}
	if d.Result == nil || *d.Result {
		fmt.Fprintln(env.Output, "noop: success")
		return schemas.ResultSuccess, nil
	}
	fmt.Fprintln(env.Output, "noop: failure, as requested")
	return schemas.ResultFailure, nil
}
