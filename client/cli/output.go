package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"gopkg.in/yaml.v3"
)

// yamlWriter prints values as a stream of YAML documents, each value in its
// JSON form: JSON field names, in the order the JSON has them.
type yamlWriter struct {
	enc *yaml.Encoder
}

func newYAMLWriter(w io.Writer) *yamlWriter {
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	return &yamlWriter{enc: enc}
}

// write prints v as the next document; yaml.v3 separates documents with
// "---".
func (y *yamlWriter) write(v any) error {
	n, err := toNode(v)
	if err != nil {
		return err
	}
	if err := y.enc.Encode(n); err != nil {
		return fmt.Errorf("print YAML: %w", err)
	}
	return nil
}

// close ends the stream.
func (y *yamlWriter) close() error {
	if err := y.enc.Close(); err != nil {
		return fmt.Errorf("print YAML: %w", err)
	}
	return nil
}

// printYAML prints v as one YAML document.
func printYAML(w io.Writer, v any) error {
	y := newYAMLWriter(w)
	if err := y.write(v); err != nil {
		return err
	}
	return y.close()
}

// toNode marshals v to JSON and returns that JSON as a YAML node tree,
// keeping the order of object keys and the text of numbers.
func toNode(v any) (*yaml.Node, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("print YAML: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	n, err := jsonNode(dec)
	if err != nil {
		return nil, fmt.Errorf("print YAML: %w", err)
	}
	return n, nil
}

// jsonNode reads one JSON value from dec as a YAML node. Strings carry the
// !!str tag, so that the encoder quotes those that would read as something
// else ("true", "12", timestamps).
func jsonNode(dec *json.Decoder) (*yaml.Node, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		n := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
		if t == '{' {
			n = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
		}
		for dec.More() {
			if n.Kind == yaml.MappingNode {
				k, err := dec.Token()
				if err != nil {
					return nil, err
				}
				key, _ := k.(string)
				n.Content = append(n.Content, scalar("!!str", key))
			}
			c, err := jsonNode(dec)
			if err != nil {
				return nil, err
			}
			n.Content = append(n.Content, c)
		}
		if _, err := dec.Token(); err != nil { // the closing delimiter
			return nil, err
		}
		return n, nil
	case string:
		return scalar("!!str", t), nil
	case json.Number:
		if strings.ContainsAny(t.String(), ".eE") {
			return scalar("!!float", t.String()), nil
		}
		return scalar("!!int", t.String()), nil
	case bool:
		if t {
			return scalar("!!bool", "true"), nil
		}
		return scalar("!!bool", "false"), nil
	case nil:
		return scalar("!!null", "null"), nil
	}
	return nil, fmt.Errorf("unexpected JSON token %v", tok)
}

func scalar(tag, value string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: value}
}
