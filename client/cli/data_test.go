package cli

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseData(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr string
	}{
		{name: "YAML mapping", in: "result: true\nsleep_seconds: 1.5\nname: x\n", want: `{"name":"x","result":true,"sleep_seconds":1.5}`},
		{name: "nested YAML", in: "a:\n  - b: 1\n  - [x, null]\n", want: `{"a":[{"b":1},["x",null]]}`},
		{name: "empty mapping", in: "{}", want: `{}`},
		{name: "JSON kept as written", in: "{\n\t\"z\": 1,\n\t\"a\": 10000000000000000000001\n}\n", want: `{"z":1,"a":10000000000000000000001}`},
		{name: "YAML flow mapping that is not JSON", in: "{a: 1}", want: `{"a":1}`},
		{name: "timestamp stays a string", in: "when: 2025-01-02T03:04:05Z\n", want: `{"when":"2025-01-02T03:04:05Z"}`},
		{name: "non-string keys", in: "1: one\ntrue: yes\n~: nothing\n", want: `{"1":"one","null":"nothing","true":"yes"}`},
		{name: "nested non-string keys", in: "a:\n  2: b\n", want: `{"a":{"2":"b"}}`},
		{name: "anchors and aliases", in: "base: &b {x: 1}\ncopy: *b\n", want: `{"base":{"x":1},"copy":{"x":1}}`},
		{name: "empty", in: "", wantErr: "data must be a mapping; it is empty"},
		{name: "blank", in: " \n\t\n", wantErr: "data must be a mapping; it is empty"},
		{name: "only a comment", in: "# nothing\n", wantErr: "data must be a mapping; it is empty"},
		{name: "list", in: "- a\n- b\n", wantErr: "data must be a mapping; it is a list"},
		{name: "JSON list", in: "[1, 2]", wantErr: "data must be a mapping; it is a list"},
		{name: "string", in: "hello", wantErr: "data must be a mapping; it is a string"},
		{name: "integer", in: "12", wantErr: "data must be a mapping; it is an integer"},
		{name: "null", in: "null", wantErr: "data must be a mapping; it is null"},
		{name: "invalid YAML", in: "a: [1, 2\n", wantErr: "parse YAML data"},
		{name: "duplicate YAML key", in: "a: 1\na: 2\n", wantErr: "parse YAML data"},
		{name: "two documents", in: "a: 1\n---\nb: 2\n", wantErr: "data must be a single YAML document"},
		{name: "keys that collide as strings", in: "1: a\n1.0: b\n", wantErr: `key "1" appears twice`},
		{name: "mapping as key", in: "? {a: 1}\n: b\n", wantErr: "parse YAML data"},
		{name: "NaN", in: "a: .nan\n", wantErr: "convert data to JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseData([]byte(tt.in))
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, string(got))
		})
	}
}
