package scheduler

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
	"github.com/kiln-ci/kiln/tasks"
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
	archGroups := [][]string{{"amd64", "i386"}, {"arm64", "armhf", "armel"}, {"amd64"}, {"ppc64el"}, {"s390x"}, {"riscv64"}, {"arm64"}}
	out := make([]schemas.Metadata, n)
	for i := range out {
		archs := archGroups[i%len(archGroups)]
		md := map[string]any{
			tasks.KeyWorkerType:          "external",
			tasks.KeyArchitectures:       archs,
			tasks.KeyHostArchitecture:    archs[0],
			tasks.KeyCPUCount:            2 << (i % 5),
			tasks.KeyTotalMemory:         int64(4<<30) << (i % 4),
			"system:kernel":              "6.12.0-1-" + archs[0],
			tasks.KeySbuildAvailable:     i%5 != 0,
			"executor:unshare:available": i%6 != 0,
		}
		if i%6 == 0 {
			md[tasks.KeyUnshareProblem] = "unprivileged user namespaces are disabled"
		}
		for _, name := range reg.Names() {
			t, err := reg.Get(name)
			if err != nil {
				b.Fatal(err)
			}
			v := t.Version()
			if name == "sbuild" && i%7 == 0 {
				v--
			}
			md[tasks.VersionKey(name)] = v
		}
		switch {
		case i%17 == 0:
			md[tasks.KeyWorkerType] = "signing"
		case i%13 == 0:
			md[tasks.KeyAllowlist] = []string{"noop", "lintian"}
		case i%11 == 0:
			md[tasks.KeyDenylist] = []string{"sbuild"}
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
