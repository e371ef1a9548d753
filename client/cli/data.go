package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"gopkg.in/yaml.v3"
)

// parseData turns task data or event reactions, written as YAML or JSON,
// into a JSON object. Like debusine's client it insists on one non-empty
// document whose top level is a mapping ({} is fine). A JSON object is kept
// as written (key order, number text); YAML goes through map[string]any, so
// its keys come out sorted. Non-string YAML keys become strings, as Python's
// json module writes them.
func parseData(b []byte) (json.RawMessage, error) {
	trimmed := bytes.TrimSpace(b)
	if len(trimmed) == 0 {
		return nil, errors.New("data must be a mapping; it is empty")
	}
	if trimmed[0] == '{' && json.Valid(trimmed) {
		var buf bytes.Buffer
		if err := json.Compact(&buf, trimmed); err != nil {
			return nil, fmt.Errorf("compact JSON data: %w", err)
		}
		return buf.Bytes(), nil
	}

	dec := yaml.NewDecoder(bytes.NewReader(b))
	var v any
	if err := dec.Decode(&v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("data must be a mapping; it is empty")
		}
		return nil, fmt.Errorf("parse YAML data: %w", err)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, fmt.Errorf("parse YAML data: %w", err)
		}
		return nil, errors.New("data must be a single YAML document")
	}

	switch v.(type) {
	case map[string]any, map[any]any:
	default:
		return nil, fmt.Errorf("data must be a mapping; it is %s", kindOf(v))
	}
	v, err := jsonable(v, "")
	if err != nil {
		return nil, err
	}
	out, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("convert data to JSON: %w", err)
	}
	return out, nil
}

// jsonable converts what yaml.v3 decodes into any to what encoding/json
// can encode: map[any]any (a mapping with a non-string key) becomes
// map[string]any. path names the value in errors.
func jsonable(v any, path string) (any, error) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			c, err := jsonable(e, path+"/"+k)
			if err != nil {
				return nil, err
			}
			x[k] = c
		}
		return x, nil
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			ks, err := keyString(k, path)
			if err != nil {
				return nil, err
			}
			if _, dup := m[ks]; dup {
				return nil, fmt.Errorf("data: key %q appears twice at %q", ks, path)
			}
			c, err := jsonable(e, path+"/"+ks)
			if err != nil {
				return nil, err
			}
			m[ks] = c
		}
		return m, nil
	case []any:
		for i, e := range x {
			c, err := jsonable(e, path+"/"+strconv.Itoa(i))
			if err != nil {
				return nil, err
			}
			x[i] = c
		}
		return x, nil
	}
	return v, nil
}

// keyString writes a scalar mapping key as a JSON object key.
func keyString(k any, path string) (string, error) {
	switch x := k.(type) {
	case nil:
		return "null", nil
	case string:
		return x, nil
	case bool, int, int64, uint64, float64:
		return fmt.Sprint(x), nil
	}
	return "", fmt.Errorf("data: mapping key at %q is %s; keys must be scalars", path, kindOf(k))
}

// kindOf names the YAML kind of a decoded value for error messages.
func kindOf(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any, map[any]any:
		return "a mapping"
	case []any:
		return "a list"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case int, int64, uint64:
		return "an integer"
	case float64:
		return "a number"
	}
	return fmt.Sprintf("a %T", v)
}
