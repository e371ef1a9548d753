package tasks

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/kiln-ci/kiln/schemas"
)

// goToDebian maps GOARCH to Debian architecture names for machines without
// dpkg.
var goToDebian = map[string]string{
	"amd64": "amd64", "386": "i386", "arm64": "arm64", "arm": "armhf",
	"ppc64le": "ppc64el", "s390x": "s390x", "riscv64": "riscv64",
	"mips64le": "mips64el", "loong64": "loong64",
}

// AnalyzeSystem returns the system:* metadata of this machine: CPU count,
// total memory, host architecture and all architectures it can run (from
// dpkg when present), and the worker type.
func AnalyzeSystem(ctx context.Context, workerType string) schemas.Metadata {
	host := goToDebian[runtime.GOARCH]
	if host == "" {
		host = runtime.GOARCH
	}
	if out, err := exec.CommandContext(ctx, "dpkg", "--print-architecture").Output(); err == nil {
		if a := strings.TrimSpace(string(out)); a != "" {
			host = a
		}
	}
	archs := []string{host}
	if out, err := exec.CommandContext(ctx, "dpkg", "--print-foreign-architectures").Output(); err == nil {
		archs = append(archs, strings.Fields(string(out))...)
	}
	for _, a := range executableArchitectures(ctx) {
		if !slices.Contains(archs, a) {
			archs = append(archs, a)
		}
	}
	md := schemas.Metadata{
		KeyCPUCount:         runtime.NumCPU(),
		KeyHostArchitecture: host,
		KeyArchitectures:    archs,
		KeyWorkerType:       workerType,
	}
	if mem := totalMemory(); mem > 0 {
		md[KeyTotalMemory] = mem
	}
	return md
}

var archTest struct {
	sync.Mutex
	done  bool
	archs []string
}

// executableArchitectures asks arch-test, when installed, which
// architectures this machine really executes (natively or through binfmt
// emulation), which is what a build needs. It takes over a second, so the
// answer is kept for the life of the process.
func executableArchitectures(ctx context.Context) []string {
	archTest.Lock()
	defer archTest.Unlock()
	if archTest.done {
		return archTest.archs
	}
	if _, err := exec.LookPath("arch-test"); err != nil {
		archTest.done = true
		return nil
	}
	out, err := exec.CommandContext(ctx, "arch-test").Output()
	if err != nil {
		return nil // asked again next time
	}
	archTest.done, archTest.archs = true, strings.Fields(string(out))
	return archTest.archs
}

func totalMemory() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err == nil {
				return kb * 1024
			}
		}
	}
	return 0
}
