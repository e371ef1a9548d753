package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
)

// fakeTask is a configurable Task for the base rules.
type fakeTask struct {
	name    string
	version int
	typ     Type
}

func (f fakeTask) Name() string { return f.name }
func (f fakeTask) Version() int { return f.version }
func (f fakeTask) Type() Type   { return f.typ }
func (f fakeTask) AnalyzeWorker(context.Context, Host) schemas.Metadata {
	return schemas.Metadata{"fake:extra": "yes"}
}
func (f fakeTask) Requirements(json.RawMessage) (Requirements, error) {
	return Requirements{}, nil
}
func (f fakeTask) CanRunOn(req Requirements, md schemas.Metadata) error {
	return BaseCanRunOn(f, req, md)
}
func (f fakeTask) Execute(context.Context, json.RawMessage, Env) (schemas.Result, error) {
	return schemas.ResultSuccess, nil
}

func TestWorkerTypeForAndVersionKey(t *testing.T) {
	require.Equal(t, "external", WorkerTypeFor(TypeWorker))
	require.Equal(t, "celery", WorkerTypeFor(TypeServer))
	require.Equal(t, "signing", WorkerTypeFor(TypeSigning))
	require.Equal(t, "", WorkerTypeFor("Bogus"))
	require.Equal(t, "noop:version", VersionKey("noop"))
}

func TestBaseCanRunOn(t *testing.T) {
	noop := fakeTask{name: "noop", version: 1, typ: TypeWorker}
	// md builds worker metadata from an external worker with noop:version 1,
	// with changes (a nil value deletes the key).
	md := func(changes map[string]any) schemas.Metadata {
		m := schemas.Metadata{KeyWorkerType: "external", VersionKey("noop"): float64(1)}
		for k, v := range changes {
			if v == nil {
				delete(m, k)
				continue
			}
			m[k] = v
		}
		return m
	}
	cases := []struct {
		name string
		task Task
		req  Requirements
		md   schemas.Metadata
		ok   bool
	}{
		{"plain match", noop, Requirements{}, md(nil), true},

		// Worker type pairing.
		{"worker task on celery worker", noop, Requirements{}, md(map[string]any{KeyWorkerType: "celery"}), false},
		{"worker type missing", noop, Requirements{}, md(map[string]any{KeyWorkerType: nil}), false},
		{"server task on celery", fakeTask{"noop", 1, TypeServer}, Requirements{}, md(map[string]any{KeyWorkerType: "celery"}), true},
		{"server task on external", fakeTask{"noop", 1, TypeServer}, Requirements{}, md(nil), false},
		{"signing task on signing", fakeTask{"noop", 1, TypeSigning}, Requirements{}, md(map[string]any{KeyWorkerType: "signing"}), true},
		{"signing task on external", fakeTask{"noop", 1, TypeSigning}, Requirements{}, md(nil), false},
		{"unknown task type", fakeTask{"noop", 1, "Weird"}, Requirements{}, md(nil), false},

		// Version.
		{"version missing", noop, Requirements{}, md(map[string]any{VersionKey("noop"): nil}), false},
		{"version different float64", noop, Requirements{}, md(map[string]any{VersionKey("noop"): float64(2)}), false},
		{"version equal int", noop, Requirements{}, md(map[string]any{VersionKey("noop"): 1}), true},
		{"version equal int64", noop, Requirements{}, md(map[string]any{VersionKey("noop"): int64(1)}), true},
		{"version equal json.Number", noop, Requirements{}, md(map[string]any{VersionKey("noop"): json.Number("1")}), true},
		{"version different json.Number", noop, Requirements{}, md(map[string]any{VersionKey("noop"): json.Number("3")}), false},
		{"version equal string", noop, Requirements{}, md(map[string]any{VersionKey("noop"): "1"}), true},
		{"version different string", noop, Requirements{}, md(map[string]any{VersionKey("noop"): "2"}), false},
		{"version fractional float64", noop, Requirements{}, md(map[string]any{VersionKey("noop"): 1.5}), false},
		{"version bool", noop, Requirements{}, md(map[string]any{VersionKey("noop"): true}), false},
		{"version of another task", noop, Requirements{}, md(map[string]any{VersionKey("noop"): nil, VersionKey("other"): float64(1)}), false},
		{"higher server version", fakeTask{"noop", 2, TypeWorker}, Requirements{}, md(nil), false},

		// Allowlist and denylist.
		{"allowlist contains", noop, Requirements{}, md(map[string]any{KeyAllowlist: []any{"sbuild", "noop"}}), true},
		{"allowlist lacks", noop, Requirements{}, md(map[string]any{KeyAllowlist: []any{"sbuild"}}), false},
		{"empty allowlist allows nothing", noop, Requirements{}, md(map[string]any{KeyAllowlist: []any{}}), false},
		{"allowlist as []string", noop, Requirements{}, md(map[string]any{KeyAllowlist: []string{"noop"}}), true},
		{"allowlist as single string", noop, Requirements{}, md(map[string]any{KeyAllowlist: "noop"}), true},
		{"allowlist wins over denylist", noop, Requirements{}, md(map[string]any{KeyAllowlist: []any{"noop"}, KeyDenylist: []any{"noop"}}), true},
		{"allowlist lacking refuses despite denylist not listing", noop, Requirements{}, md(map[string]any{KeyAllowlist: []any{"sbuild"}, KeyDenylist: []any{"sbuild"}}), false},
		{"denylist contains", noop, Requirements{}, md(map[string]any{KeyDenylist: []any{"noop"}}), false},
		{"denylist lacks", noop, Requirements{}, md(map[string]any{KeyDenylist: []any{"sbuild"}}), true},
		{"denylist single string", noop, Requirements{}, md(map[string]any{KeyDenylist: "noop"}), false},

		// Architectures.
		{"arch listed", noop, Requirements{HostArchitecture: "arm64"}, md(map[string]any{KeyArchitectures: []any{"amd64", "arm64"}}), true},
		{"arch not listed", noop, Requirements{HostArchitecture: "s390x"}, md(map[string]any{KeyArchitectures: []any{"amd64", "arm64"}}), false},
		{"arch single string", noop, Requirements{HostArchitecture: "amd64"}, md(map[string]any{KeyArchitectures: "amd64"}), true},
		{"arch single string differs", noop, Requirements{HostArchitecture: "i386"}, md(map[string]any{KeyArchitectures: "amd64"}), false},
		{"arch []string", noop, Requirements{HostArchitecture: "i386"}, md(map[string]any{KeyArchitectures: []string{"amd64", "i386"}}), true},
		{"arch required, none reported", noop, Requirements{HostArchitecture: "amd64"}, md(nil), false},
		{"host architecture alone is not enough", noop, Requirements{HostArchitecture: "amd64"}, md(map[string]any{KeyHostArchitecture: "amd64"}), false},
		{"no arch required", noop, Requirements{}, md(map[string]any{KeyArchitectures: []any{"amd64"}}), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := BaseCanRunOn(tc.task, tc.req, tc.md)
			if tc.ok {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			require.ErrorIs(t, err, ErrCannotRun, "refusals wrap ErrCannotRun")
			require.NotEmpty(t, err.Error())
		})
	}
}

func TestMetaString(t *testing.T) {
	md := schemas.Metadata{
		"s": "text", "f": float64(2), "frac": 2.5, "n": json.Number("42"), "i": 7, "i64": int64(-3),
		"b": true, "nil": nil, "list": []any{"a", float64(1)}, "obj": map[string]any{"k": "v"},
	}
	cases := []struct {
		key, expected string
	}{
		{"s", "text"},
		{"f", "2"},
		{"frac", "2.5"},
		{"n", "42"},
		{"i", "7"},
		{"i64", "-3"},
		{"b", "true"},
		{"nil", ""},
		{"absent", ""},
		{"list", `["a",1]`},
		{"obj", `{"k":"v"}`},
	}
	for _, tc := range cases {
		t.Run(tc.key, func(t *testing.T) {
			require.Equal(t, tc.expected, MetaString(md, tc.key))
		})
	}
}

func TestMetaStrings(t *testing.T) {
	md := schemas.Metadata{
		"strings": []string{"a", "b"}, "anys": []any{"a", float64(1), json.Number("2")},
		"single": "only", "number": float64(3), "empty": []any{}, "nil": nil,
	}
	cases := []struct {
		key      string
		expected []string
		ok       bool
	}{
		{"strings", []string{"a", "b"}, true},
		{"anys", []string{"a", "1", "2"}, true},
		{"single", []string{"only"}, true},
		{"number", []string{"3"}, true},
		{"empty", nil, true},
		{"nil", nil, false},
		{"absent", nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.key, func(t *testing.T) {
			got, ok := MetaStrings(md, tc.key)
			require.Equal(t, tc.ok, ok)
			require.Equal(t, tc.expected, got)
		})
	}
}

// TestShapeKey checks the properties the scheduler relies on, not the exact
// format: a key is deterministic, independent of Extra's map order (the
// canonical ordering), starts with the task name, and differs whenever the
// task or the requirements differ.
func TestShapeKey(t *testing.T) {
	t.Run("task first", func(t *testing.T) {
		for _, req := range []Requirements{{}, {HostArchitecture: "arm64"}, {Extra: map[string]string{"a": "1"}}} {
			require.True(t, strings.HasPrefix(ShapeKey("noop", req), "noop"), "%+v", req)
		}
	})

	t.Run("nil and empty Extra are the same requirements", func(t *testing.T) {
		require.Equal(t, ShapeKey("noop", Requirements{}), ShapeKey("noop", Requirements{Extra: map[string]string{}}))
	})

	t.Run("extra in canonical order", func(t *testing.T) {
		keys := []string{"q", "w", "e", "r", "t", "y", "u", "i", "o", "p"}
		want := ""
		for i := range 30 {
			extra := map[string]string{}
			// Insert in a rotating order; Go's map iteration is random anyway.
			for j := range keys {
				k := keys[(i+j)%len(keys)]
				extra[k] = k + "v"
			}
			got := ShapeKey("x", Requirements{HostArchitecture: "amd64", Extra: extra})
			if want == "" {
				want = got
			}
			require.Equal(t, want, got)
		}
	})

	t.Run("differences show", func(t *testing.T) {
		base := Requirements{HostArchitecture: "amd64", Extra: map[string]string{"a": "1"}}
		variants := []struct {
			task string
			req  Requirements
		}{
			{"other", base},
			{"x", Requirements{HostArchitecture: "arm64", Extra: map[string]string{"a": "1"}}},
			{"x", Requirements{HostArchitecture: "amd64", Extra: map[string]string{"a": "2"}}},
			{"x", Requirements{HostArchitecture: "amd64", Extra: map[string]string{"b": "1"}}},
			{"x", Requirements{HostArchitecture: "amd64", Extra: map[string]string{"a": "1", "b": ""}}},
			{"x", Requirements{HostArchitecture: "amd64"}},
			{"x", Requirements{Extra: map[string]string{"a": "1"}}},
		}
		for _, v := range variants {
			require.NotEqual(t, ShapeKey("x", base), ShapeKey(v.task, v.req), "%s %+v", v.task, v.req)
		}
	})
}

// Regression test for a BUG in the committed ShapeKey (fixed by the JSON
// encoding in the working tree): it joined task, architecture and Extra
// entries with '|' and '=' unescaped, so different Requirements could share a
// key and the scheduler, which evaluates CanRunOn once per key on a sample
// request, would treat them as interchangeable. The format change alters the
// shape of rows already stored: pending rows need their shape recomputed.
func TestBugShapeKeyInjective(t *testing.T) {
	pairs := []struct {
		name string
		a, b Requirements
	}{
		{"separator inside a value",
			Requirements{Extra: map[string]string{"a": "1|b=2"}},
			Requirements{Extra: map[string]string{"a": "1", "b": "2"}}},
		{"extra key named arch",
			Requirements{HostArchitecture: "amd64"},
			Requirements{Extra: map[string]string{"arch": "amd64"}}},
		{"equals inside a key",
			Requirements{Extra: map[string]string{"a=b": "c"}},
			Requirements{Extra: map[string]string{"a": "b=c"}}},
	}
	for _, p := range pairs {
		t.Run(p.name, func(t *testing.T) {
			require.NotEqual(t, ShapeKey("t", p.a), ShapeKey("t", p.b),
				"different requirements must not share a shape key")
		})
	}
}

func TestErrCannotRunIsDistinct(t *testing.T) {
	err := BaseCanRunOn(fakeTask{"noop", 1, TypeWorker}, Requirements{}, schemas.Metadata{})
	require.True(t, errors.Is(err, ErrCannotRun))
	require.False(t, errors.Is(err, ErrUnknownTask))
}

func TestInputArtifact(t *testing.T) {
	in := InputArtifact{Pointer: "/input/binary_artifacts/1", ID: 7, Categories: []string{"debian:binary-package", "debian:upload"}}
	require.Equal(t, "input.binary_artifacts[1]", in.Field())
	require.Equal(t, "environment", InputArtifact{Pointer: "/environment"}.Field())
	require.NoError(t, in.CheckCategory("debian:upload"))
	require.EqualError(t, in.CheckCategory("debian:lintian"), "artifact 7 is a debian:lintian artifact, not a debian:binary-package or debian:upload")
}
