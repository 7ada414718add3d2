package ctl

import (
	"bytes"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/proto"
)

// toJSON is the JSON of an API message as taskctl prints it: unset fields
// absent, a spec (JSON the API carries as a string) as an object rather
// than an escaped string, compact, keys sorted, and the same bytes for the
// same message (protojson's output is deliberately unstable).
func toJSON(m proto.Message) ([]byte, error) {
	b, err := jsonOut.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode JSON: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("encode JSON: %w", err)
	}
	return encodeJSON(reshape(v))
}

func encodeJSON(v any) ([]byte, error) {
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("encode JSON: %w", err)
	}
	return bytes.TrimSuffix(out.Bytes(), []byte("\n")), nil
}

// reshape turns every "spec" string holding a JSON object into the object.
func reshape(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if s, ok := e.(string); ok && k == "spec" {
				if raw := []byte(s); len(raw) > 0 && raw[0] == '{' && json.Valid(raw) {
					x[k] = json.RawMessage(raw)
					continue
				}
			}
			x[k] = reshape(e)
		}
	case []any:
		for i := range x {
			x[i] = reshape(x[i])
		}
	}
	return v
}
