package tasks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
)

func noopEnv(out *bytes.Buffer) Env {
	return Env{WorkRequestID: 1, Attempt: 1, Output: out, Logger: zerolog.Nop()}
}

func TestNoopIdentity(t *testing.T) {
	var n Task = Noop{}
	require.Equal(t, "noop", n.Name())
	require.Equal(t, 1, n.Version())
	require.Equal(t, TypeWorker, n.Type())
	require.Empty(t, n.AnalyzeWorker(t.Context(), Host{}))
}

func TestNoopRequirements(t *testing.T) {
	cases := []struct {
		data     string
		expected Requirements
		ok       bool
	}{
		{`{}`, Requirements{}, true},
		{`{"host_architecture":"arm64","result":false}`, Requirements{HostArchitecture: "arm64"}, true},
		{`{"result":"x"}`, Requirements{}, false},
		{`not json`, Requirements{}, false},
	}
	for _, tc := range cases {
		t.Run(tc.data, func(t *testing.T) {
			got, err := Noop{}.Requirements(json.RawMessage(tc.data))
			if !tc.ok {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.expected, got)
		})
	}
}

func TestNoopCanRunOn(t *testing.T) {
	md := schemas.Metadata{KeyWorkerType: "external", "noop:version": float64(1), KeyArchitectures: []any{"amd64"}}
	require.NoError(t, Noop{}.CanRunOn(Requirements{}, md))
	require.NoError(t, Noop{}.CanRunOn(Requirements{HostArchitecture: "amd64"}, md))
	require.ErrorIs(t, Noop{}.CanRunOn(Requirements{HostArchitecture: "arm64"}, md), ErrCannotRun)
	require.ErrorIs(t, Noop{}.CanRunOn(Requirements{}, schemas.Metadata{KeyWorkerType: "external"}), ErrCannotRun)
}

func TestNoopExecute(t *testing.T) {
	cases := []struct {
		name     string
		data     string
		expected schemas.Result
		output   string
		wantErr  bool
	}{
		{"default succeeds", `{}`, schemas.ResultSuccess, "noop: success\n", false},
		{"result true", `{"result":true}`, schemas.ResultSuccess, "noop: success\n", false},
		{"result false", `{"result":false}`, schemas.ResultFailure, "noop: failure, as requested\n", false},
		{"zero sleep does not wait", `{"sleep_seconds":0,"result":false}`, schemas.ResultFailure, "noop: failure, as requested\n", false},
		{"tiny sleep", `{"sleep_seconds":0.001}`, schemas.ResultSuccess, "sleeping 0.001s\nnoop: success\n", false},
		{"bad data", `{"result":"x"}`, schemas.ResultError, "", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			res, err := Noop{}.Execute(t.Context(), json.RawMessage(tc.data), noopEnv(&out))
			require.Equal(t, tc.expected, res)
			if tc.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.output, out.String())
		})
	}
}

// A cancelled context ends the sleep at once with the cancellation cause; a
// context cancelled before Execute starts proves it without timing.
func TestNoopExecuteSleepHonoursCancellation(t *testing.T) {
	cause := errors.New("aborted by admin")
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(cause)

	var out bytes.Buffer
	done := make(chan struct{})
	var res schemas.Result
	var err error
	go func() {
		defer close(done)
		res, err = Noop{}.Execute(ctx, json.RawMessage(`{"sleep_seconds":86400,"result":true}`), noopEnv(&out))
	}()
	select {
	case <-done:
	case <-t.Context().Done():
		t.Fatal("Execute did not return on a cancelled context")
	}
	require.Equal(t, schemas.ResultError, res)
	require.ErrorIs(t, err, cause)
	require.Equal(t, "sleeping 86400s\n", out.String(), "no result line after an abort")
}
