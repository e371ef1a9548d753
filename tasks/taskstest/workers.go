// Package taskstest makes the worker metadata that the scheduler's
// benchmarks match requests against (server/scheduler's BenchmarkCanRunOn,
// kiln-bench's scheduler scale): one fleet, so that both measure the same.
package taskstest

import (
	"github.com/kiln-ci/kiln/tasks"
)

// archGroups are the architectures of the simulated workers, in turn.
var archGroups = [][]string{{"amd64", "i386"}, {"arm64", "armhf", "armel"}, {"amd64"}, {"ppc64el"}, {"s390x"},
	{"riscv64"}, {"arm64"}, {"amd64", "i386", "x32"}, {"mips64el"}, {"loong64"}, {"i386"}}

// HostArchitecture is the host architecture of simulated worker i.
func HostArchitecture(i int) string { return archGroups[i%len(archGroups)][0] }

// WorkerMetadata returns the dynamic metadata of simulated worker i of a
// varied fleet: architectures, CPUs and memory, tools installed or not,
// every task of reg at its version except an outdated sbuild on one worker
// in seven, a signing worker in seventeen and allow- or denylists on some,
// so that matching meets refusals of every kind.
func WorkerMetadata(reg *tasks.Registry, i int) (map[string]any, error) {
	archs := archGroups[i%len(archGroups)]
	md := map[string]any{
		tasks.KeyWorkerType:          "external",
		tasks.KeyArchitectures:       archs,
		tasks.KeyHostArchitecture:    archs[0],
		tasks.KeyCPUCount:            2 << (i % 5),
		tasks.KeyTotalMemory:         int64(4<<30) << (i % 4),
		"system:kernel":              "6.12.0-1-" + archs[0],
		"kiln:version":               "0.1.0",
		tasks.KeySbuildAvailable:     i%5 != 0,
		"mmdebstrap:available":       i%3 != 0,
		tasks.KeyLintianAvailable:    true,
		"executor:unshare:available": i%6 != 0,
	}
	if i%6 == 0 {
		md[tasks.KeyUnshareProblem] = "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0)"
	}
	for _, name := range reg.Names() {
		t, err := reg.Get(name)
		if err != nil {
			return nil, err
		}
		v := t.Version()
		if name == "sbuild" && i%7 == 0 {
			v-- // an outdated worker
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
	return md, nil
}
