package server

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
)

func decodeWith(t testing.TB, body string, limit int64) (*httptest.ResponseRecorder, bool, schemas.WorkRequestCreate) {
	s := &Server{cfg: Config{MaxBodyBytes: limit}}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/api/1.0/work-request/", strings.NewReader(body))
	var in schemas.WorkRequestCreate
	ok := s.decodeBody(rec, req, &in, "Cannot deserialize work request")
	return rec, ok, in
}

func TestDecodeBody(t *testing.T) {
	cases := []struct {
		name, body string
		ok         bool
		status     int
		pointer    string
	}{
		{"valid", `{"task_name": "noop", "task_data": {}}`, true, 200, ""},
		{"empty body is an empty object", ``, true, 200, ""},
		{"unknown field", `{"task_name": "noop", "x": 1}`, false, 400, "/x"},
		{"wrong type", `{"task_name": 5}`, false, 400, "/task_name"},
		{"not an object", `[1, 2]`, false, 400, ""},
		{"truncated", `{"task_name": `, false, 400, ""},
		{"trailing data", `{} {}`, false, 400, ""},
		{"too large", `{"task_name": "` + strings.Repeat("a", 200) + `"}`, false, 413, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec, ok, _ := decodeWith(t, c.body, 140)
			require.Equal(t, c.ok, ok)
			if ok {
				return
			}
			require.Equal(t, c.status, rec.Code)
			require.Equal(t, schemas.ProblemContentType, rec.Header().Get("Content-Type"))
			var p schemas.Problem
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &p))
			require.NotEmpty(t, p.Title)
			if c.pointer != "" {
				require.Contains(t, p.ValidationErrors, c.pointer)
			}
		})
	}
}

// FuzzDecodeBody checks that no body makes the decoder panic or answer
// anything but success or a problem document.
func FuzzDecodeBody(f *testing.F) {
	for _, seed := range []string{``, `{}`, `{"task_name": "noop", "task_data": {"result": true}}`, `[`, `{"a":`, `null`, `"x"`, `{"task_data": []}`} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body string) {
		rec, ok, _ := decodeWith(t, body, 1<<16)
		if ok {
			return
		}
		if rec.Header().Get("Content-Type") != schemas.ProblemContentType {
			t.Fatalf("error without problem+json: %d %q", rec.Code, rec.Body.String())
		}
		var p schemas.Problem
		if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil || p.Title == "" {
			t.Fatalf("bad problem document %q: %v", rec.Body.String(), err)
		}
	})
}

// FuzzCursor checks that cursors from the network never panic the decoder and
// that every cursor the server makes decodes to what it encoded.
func FuzzCursor(f *testing.F) {
	for i, seed := range []string{"", "YjEw", "!!", "YQ", "Yi0x", "eDEw"} {
		f.Add(seed, int64(i*1000))
	}
	f.Fuzz(func(t *testing.T, c string, id int64) {
		_, _, _ = decodeCursor(c)
		if id <= 0 {
			return
		}
		enc := base64.RawURLEncoding.EncodeToString([]byte("b" + strconv.FormatInt(id, 10)))
		dir, got, err := decodeCursor(enc)
		if err != nil || dir != 'b' || got != id {
			t.Fatalf("round trip of %d: %c %d %v", id, dir, got, err)
		}
	})
}

func TestJSONDepth(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int
	}{
		{`{}`, 1},
		{`{"a": [1, {"b": []}]}`, 4},
		{`{"a": "[[[{{{"}`, 1},
		{`{"a": "\"[[["}`, 1},
		{`{"a": "\\", "b": [[]]}`, 3},
		{strings.Repeat("[", 100) + strings.Repeat("]", 100), 100},
		{`1`, 0},
	} {
		require.Equal(t, c.want, jsonDepth([]byte(c.in)), c.in)
	}
}
