package tasks

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
)

// fuzzTaskData are seeds of FuzzValidate: task name, task data. They hold
// valid data for every task Kiln ships and the tricky cases of a JSON
// validator (numbers that JSON Schema and encoding/json read differently,
// duplicate keys, trailing data, escapes, bad UTF-8).
var fuzzTaskData = []struct{ task, data string }{
	{"noop", `{}`},
	{"noop", `{"result":true}`},
	{"noop", `{"result":false,"sleep_seconds":0.25,"host_architecture":"amd64"}`},
	{"noop", `{"result":"no"}`},
	{"noop", `{"bogus":1}`},
	{"noop", `{"sleep_seconds":1e999}`},
	{"noop", `{"sleep_seconds":-0}`},
	{"noop", `{"timeout":1e-400}`},
	{"noop", `{"result":"x","result":true}`},
	{"noop", `{"Result":true}`},
	{"noop", `{} {"result":"x"}`},
	{"noop", `{}}`},
	{"noop", `[1,2,3]`},
	{"noop", `null`},
	{"noop", ``},
	{"noop", `{"result":`},
	{"noop", "{\"host_architecture\":\"\u00e9\"}"},
	{"noop", "\ufeff{}"},
	{"noop", " \t\r\n{ } \n"},
	{"noop", `{"host_architecture":"amd64\u0000"}`},
	{"noop", "{\"host_architecture\":\"a\xffb\"}"},
	{"mmdebstrap", `{"bootstrap_options": {"architecture": "amd64"}, "suite": "bookworm"}`},
	{"mmdebstrap", `{"bootstrap_options": {"architecture": "arm64", "variant": "minbase", "extra_packages": ["eatmydata"]}, "bootstrap_repositories": [{"mirror": "http://deb.debian.org/debian", "suite": "trixie", "types": ["deb", "deb-src"], "components": ["main", "contrib"]}], "keep_apt_lists": false}`},
	{"mmdebstrap", `{"bootstrap_options": {"architecture": "amd64"}}`},
	{"mmdebstrap", `{"bootstrap_options": {"architecture": "amd64", "extra_packages": ["-oAPT::x"]}, "suite": "bookworm"}`},
	{"mmdebstrap", `{"bootstrap_options": {"architecture": "amd64"}, "bootstrap_repositories": [{"mirror": "ftp://x", "suite": "s"}]}`},
	{"sbuild", `{"input": {"source_artifact": 1}, "host_architecture": "amd64", "environment": 2}`},
	{"sbuild", `{"input": {"source_artifact": 1, "extra_binary_artifacts": [3, 4]}, "host_architecture": "arm64", "environment": 2, "build_components": ["any", "all"], "build_profiles": ["nocheck"], "build_dep_resolver": "aspcud", "aspcud_criteria": "-removed", "extra_repositories": [{"url": "https://x.example/debian", "suite": "sid", "components": ["main"]}], "update_environment": true, "timeout": 3600}`},
	{"sbuild", `{"input": {"source_artifact": 1}, "host_architecture": "amd64", "environment": 2, "binnmu": {"changelog": "Rebuild", "suffix": "+b1", "timestamp": "2024-01-02T03:04:05Z"}}`},
	{"sbuild", `{"input": {"source_artifact": 1}, "host_architecture": "amd64", "environment": 2, "binnmu": {"changelog": "Rebuild", "suffix": "+b1"}, "build_components": ["all"]}`},
	{"sbuild", `{"input": {"source_artifact": 1}, "host_architecture": "amd64", "environment": 2, "binnmu": {"changelog": "Rebuild", "suffix": "+b1", "timestamp": "yesterday"}}`},
	{"sbuild", `{"input": {"source_artifact": 1.0}, "host_architecture": "amd64", "environment": 2}`},
	{"sbuild", `{"input": {"source_artifact": 1}, "host_architecture": "amd64", "environment": 2e0}`},
	{"sbuild", `{"input": {"source_artifact": 9223372036854775808}, "host_architecture": "amd64", "environment": 2}`},
	{"sbuild", `{"input": {"source_artifact": 1, "source_artifact": 2}, "host_architecture": "amd64", "environment": 2}`},
	{"lintian", `{"input": {"source_artifact": 3}}`},
	{"lintian", `{"input": {"source_artifact": 11, "binary_artifacts": [12, 13]}, "include_tags": ["a-tag"], "exclude_tags": ["b+c"], "fail_on_severity": "warning", "target_distribution": "debian:trixie", "timeout": 60}`},
	{"lintian", `{"input": {"binary_artifacts": []}}`},
	{"lintian", `{"input": {"binary_artifacts": [1E+1]}}`},
	{"lintian", `{"input": {"source_artifact": 3}, "fail_on_severity": "classification"}`},
	{"dut-test", `{"device_type":"rpi4","command":"true","bundle":7,"provision":{"artifact":8,"command":"sh install.sh"}}`},
	{"dut-test", `{"device":"board-1","labels":{"ram":"4G"},"script":"echo ok","result_format":"junit","results_file":"out/results.xml","timeout":600}`},
	{"dut-test", `{"device":"board-1","script":"echo 1..1; echo ok 1","result_format":"tap"}`},
	{"dut-test", `{"device":"board-1"}`},
	{"dut-test", `{"device":"board-1","script":""}`},
	{"dut-test", `{"device":"board-1","command":"true","results_file":"a/../../b"}`},
	{"dut-test", `{"device_type":"rpi4","command":"true","provision":{"artifact":8.0,"command":"true"}}`},
	{"dut-test", `{"labels":{"a":"b"},"command":"true"}`},
	{"verify", `{"device":"board-1"}`},
	{"cleanup", `{"device":"board-1","reason":"after job","for_work_request":7}`},
	{"reset", `{"device":"rpi4-01"}`},
	{"repair", `{"device":"b","for_work_request":0}`},
	{"repair", `{"device":"b","for_work_request":7.0}`},
	{"provision", `{"device":"board-1","artifact":3,"command":"sh install.sh"}`},
	{"provision", `{"device":"b","artifact":1,"command":""}`},
	{"provision", `{"device":"b","artifact":99999999999999999999,"command":"x"}`},
	{"no-such-task", `{}`},
	{"", `{}`},
}

// FuzzValidate checks the registry's validation of task data for every
// task Kiln ships: Validate never panics and explains every refusal with a
// *ValidationError whose problems name JSON pointers; and what it accepts
// is one JSON value that the task itself can read. Requirements, and
// InputArtifacts for tasks with inputs, succeed on it, give the same answer
// for the compacted data the server stores, and name input artifacts that
// are really in the data; a task that needs a device asks for one.
func FuzzValidate(f *testing.F) {
	for _, s := range fuzzTaskData {
		f.Add(s.task, []byte(s.data))
	}
	r := Default()
	names := r.Names()
	f.Fuzz(func(t *testing.T, name string, data []byte) {
		if _, err := r.Get(name); err != nil {
			require.ErrorIs(t, r.Validate(name, data), ErrUnknownTask)
			// Go on with a registered task, so that mutations of the name
			// still exercise them all.
			name = names[len(name)%len(names)]
		}
		task, err := r.Get(name)
		require.NoError(t, err)

		err = r.Validate(name, data)
		if err != nil {
			var ve *ValidationError
			require.True(t, errors.As(err, &ve), "Validate(%s, %q) returned %T %v, want *ValidationError", name, data, err, err)
			require.Equal(t, name, ve.Task)
			require.NotEmpty(t, ve.Problems, "Validate(%s, %q): a ValidationError without problems", name, data)
			for _, p := range ve.Problems {
				require.True(t, p.Pointer == "" || p.Pointer[0] == '/', "Validate(%s, %q): %q is not a JSON pointer", name, data, p.Pointer)
				require.NotEmpty(t, p.Message)
			}
			require.NotEmpty(t, ve.Error())
			return
		}

		require.True(t, json.Valid(data), "Validate(%s) accepted %q, which is not one JSON value", name, data)
		req, err := task.Requirements(data)
		require.NoError(t, err, "Validate(%s) accepted %q but Requirements failed", name, data)
		shape := ShapeKey(name, req)

		// The server stores the compacted task data, and the scheduler
		// reads the requirements again from what it stored.
		var compact bytes.Buffer
		require.NoError(t, json.Compact(&compact, data))
		require.NoError(t, r.Validate(name, compact.Bytes()))
		again, err := task.Requirements(compact.Bytes())
		require.NoError(t, err)
		require.Equal(t, shape, ShapeKey(name, again), "%s %q", name, data)

		if in, ok := task.(Inputs); ok {
			ins, err := in.InputArtifacts(data)
			require.NoError(t, err, "Validate(%s) accepted %q but InputArtifacts failed", name, data)
			for _, a := range ins {
				require.Positive(t, a.ID, "%s %q: input %s", name, data, a.Pointer)
				require.Equal(t, strconv.FormatInt(a.ID, 10), pointerNumber(t, data, a.Pointer),
					"%s %q: input %s is not the id in the task data", name, data, a.Pointer)
				_ = a.Field()
			}
			if name == "dut-test" && hasKey(t, data, "provision") {
				require.NotNil(t, schemas.JobProvision(string(data)), "dut-test %q asks for a provision that is then ignored", data)
			}
		}
		if dn, ok := task.(DeviceNeeds); ok {
			m := dn.NeedsDevice(req)
			require.True(t, m.Name != "" || m.Type != "", "%s %q needs no particular device", name, data)
			if schemas.IsDeviceTask(name) {
				var d schemas.DeviceTaskData
				require.NoError(t, json.Unmarshal(data, &d))
				require.Equal(t, d.Device, m.Name)
			}
		}
		_ = task.CanRunOn(req, schemas.Metadata{KeyWorkerType: "external", VersionKey(name): task.Version(),
			KeyArchitectures: []any{"amd64"}})
	})
}

// pointerNumber returns the JSON number at the JSON pointer ptr of data,
// as written.
func pointerNumber(t *testing.T, data []byte, ptr string) string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	require.NoError(t, dec.Decode(&v))
	for _, tok := range strings.Split(strings.TrimPrefix(ptr, "/"), "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		switch x := v.(type) {
		case map[string]any:
			v = x[tok]
		case []any:
			i, err := strconv.Atoi(tok)
			require.NoError(t, err, "pointer %s", ptr)
			require.Less(t, i, len(x), "pointer %s", ptr)
			v = x[i]
		default:
			t.Fatalf("pointer %s does not lead to a number in %q", ptr, data)
		}
	}
	n, ok := v.(json.Number)
	require.True(t, ok, "pointer %s leads to %T in %q, not a number", ptr, v, data)
	return n.String()
}

// hasKey reports whether the JSON object data has key at its top level.
func hasKey(t *testing.T, data []byte, key string) bool {
	t.Helper()
	var m map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(data, &m))
	_, ok := m[key]
	return ok
}
