package tasks

import (
	"encoding/json"
	"testing"
)

// BenchmarkValidate is what every submission pays: JSON Schema validation
// of the task data, then the task's own reading of it.
func BenchmarkValidate(b *testing.B) {
	reg := Default()
	for _, c := range []struct {
		name, task, data string
		valid            bool
	}{
		{"noop", "noop", `{"result":true,"sleep_seconds":0.5,"host_architecture":"amd64"}`, true},
		{"sbuild", "sbuild", `{"input":{"source_artifact":12,"extra_binary_artifacts":[13,14]},"host_architecture":"amd64",
			"environment":3,"build_components":["any","all"],"build_profiles":["nocheck"],
			"extra_repositories":[{"url":"http://deb.debian.org/debian","suite":"sid","components":["main"]}],"timeout":3600}`, true},
		{"sbuild_invalid", "sbuild", `{"input":{"source_artifact":0},"host_architecture":"AMD64","environment":"3","extra":1}`, false},
	} {
		b.Run(c.name, func(b *testing.B) {
			data := json.RawMessage(c.data)
			if err := reg.Validate(c.task, data); (err == nil) != c.valid {
				b.Fatalf("Validate = %v, want valid %v", err, c.valid)
			}
			b.ReportAllocs()
			for b.Loop() {
				_ = reg.Validate(c.task, data)
			}
		})
	}
}
