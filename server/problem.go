package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"sort"
	"strings"

	"github.com/kiln-ci/kiln/schemas"
)

// problem writes an application/problem+json error.
func problem(w http.ResponseWriter, status int, title, detail string) {
	writeProblem(w, schemas.Problem{Title: title, Detail: detail, Status: status})
}

func writeProblem(w http.ResponseWriter, p schemas.Problem) {
	w.Header().Set("Content-Type", schemas.ProblemContentType)
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// forbidden is debusine's answer to a missing, unknown or disabled token.
func forbidden(w http.ResponseWriter, code, detail string) {
	writeProblem(w, schemas.Problem{Title: "Error", Detail: detail, Status: http.StatusForbidden, Code: code})
}

// decodeBody reads a JSON object from r into v with the documented size
// limit, rejecting unknown fields. It writes the problem itself and returns
// false when the body is unusable.
func (s *Server) decodeBody(w http.ResponseWriter, r *http.Request, v any, title string) bool {
	body, ok := s.readBody(w, r)
	if !ok {
		return false
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		body = []byte("{}")
	}
	if jsonDepth(body) > maxJSONDepth {
		problem(w, http.StatusBadRequest, title, fmt.Sprintf("the JSON is nested deeper than %d levels", maxJSONDepth))
		return false
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		writeProblem(w, decodeProblem(err, title))
		return false
	}
	if unknown := unknownFields(fields, v); len(unknown) > 0 {
		ve := map[string][]string{"non_field_errors": {"Invalid fields: " + strings.Join(unknown, ", ")}}
		for _, f := range unknown {
			ve["/"+f] = []string{"unknown field"}
		}
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: title,
			Detail: "Invalid fields: " + strings.Join(unknown, ", "), ValidationErrors: ve})
		return false
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	if err := dec.Decode(v); err != nil {
		writeProblem(w, decodeProblem(err, title))
		return false
	}
	if dec.More() {
		problem(w, http.StatusBadRequest, "Malformed JSON", "unexpected data after the JSON object")
		return false
	}
	return true
}

// readBody reads a request body within the documented size limit (413
// beyond it). It writes the problem itself and returns false on failure.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err == nil {
		return body, true
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		problem(w, http.StatusRequestEntityTooLarge, "Request body too large",
			fmt.Sprintf("the body exceeds the limit of %d bytes (--max-body-bytes)", mbe.Limit))
		return nil, false
	}
	problem(w, http.StatusBadRequest, "Cannot read request body", err.Error())
	return nil, false
}

// unknownFields lists the keys of fields that are not JSON names of the
// struct v points to, sorted.
func unknownFields(fields map[string]json.RawMessage, v any) []string {
	known := map[string]bool{}
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name == "" {
			name = t.Field(i).Name
		}
		known[name] = true
	}
	var out []string
	for k := range fields {
		if !known[k] {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// decodeProblem turns a decoding error into a problem naming what is wrong.
func decodeProblem(err error, title string) schemas.Problem {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return schemas.Problem{Status: http.StatusBadRequest, Title: "Malformed JSON",
			Detail: fmt.Sprintf("%s at byte %d", syn.Error(), syn.Offset)}
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return schemas.Problem{Status: http.StatusBadRequest, Title: "Malformed JSON", Detail: "unexpected end of JSON input"}
	case errors.As(err, &typ) && typ.Field == "":
		return schemas.Problem{Status: http.StatusBadRequest, Title: title,
			Detail:           "the body must be a JSON object, not " + typ.Value,
			ValidationErrors: map[string][]string{"": {"must be a JSON object"}}}
	case errors.As(err, &typ):
		ptr := "/" + strings.ReplaceAll(typ.Field, ".", "/")
		return schemas.Problem{Status: http.StatusBadRequest, Title: title,
			Detail:           fmt.Sprintf("%s: expected %s, got JSON %s", ptr, typ.Type, typ.Value),
			ValidationErrors: map[string][]string{ptr: {fmt.Sprintf("expected %s, got %s", typ.Type, typ.Value)}}}
	}
	return schemas.Problem{Status: http.StatusBadRequest, Title: "Malformed JSON", Detail: err.Error()}
}

// maxJSONDepth bounds the nesting of request bodies: no Kiln or debusine
// body comes near it, and a deep one costs the decoders' recursion.
const maxJSONDepth = 64

// jsonDepth is the deepest nesting of objects and arrays in b, counted
// outside strings; b need not be valid JSON.
func jsonDepth(b []byte) int {
	depth, deepest, inString, escaped := 0, 0, false, false
	for _, c := range b {
		switch {
		case inString && escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case inString && c == '"':
			inString = false
		case inString:
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			depth++
			deepest = max(deepest, depth)
		case c == '}' || c == ']':
			depth--
		}
	}
	return deepest
}
