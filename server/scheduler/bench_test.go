package scheduler

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
	"github.com/kiln-ci/kiln/tasks"
	"github.com/kiln-ci/kiln/tasks/taskstest"
)

// BenchmarkCanRunOn is the matching of one request's requirements against
// one worker, as a pass does it for every shape and worker: realistic
// metadata decoded from JSON as the store hands it over, of workers that
// differ in architectures, task versions, tools and allow- or denylists,
// so that refusals (which build an error) are measured too.
func BenchmarkCanRunOn(b *testing.B) {
	reg := tasks.Default()
	mds := benchWorkerMetadata(b, reg, 64)
	for _, c := range []struct{ task, data string }{
		{"noop", `{"host_architecture":"arm64"}`},
		{"sbuild", `{"input":{"source_artifact":12},"host_architecture":"amd64","environment":3}`},
	} {
		b.Run(c.task, func(b *testing.B) {
			task, err := reg.Get(c.task)
			if err != nil {
				b.Fatal(err)
			}
			req, err := task.Requirements(json.RawMessage(c.data))
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			n, matched := 0, 0
			for b.Loop() {
				if task.CanRunOn(req, mds[n%len(mds)]) == nil {
					matched++
				}
				n++
			}
			b.ReportMetric(float64(matched)/float64(n), "matches/op")
		})
	}
}

// benchWorkerMetadata returns the merged metadata of n varied workers.
func benchWorkerMetadata(b *testing.B, reg *tasks.Registry, n int) []schemas.Metadata {
	b.Helper()
	out := make([]schemas.Metadata, n)
	for i := range out {
		md, err := taskstest.WorkerMetadata(reg, i)
		if err != nil {
			b.Fatal(err)
		}
		js, err := json.Marshal(md)
		if err != nil {
			b.Fatal(err)
		}
		w := store.Worker{Name: fmt.Sprintf("w%d", i), DynamicMetadata: string(js), StaticMetadata: "{}"}
		out[i] = w.Metadata()
	}
	return out
}
