package tasks

import (
	"runtime"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestAnalyzeSystem(t *testing.T) {
	md := AnalyzeSystem(t.Context(), "external")
	for _, k := range []string{KeyCPUCount, KeyHostArchitecture, KeyArchitectures, KeyWorkerType} {
		require.Contains(t, md, k)
	}
	require.Equal(t, "external", md[KeyWorkerType])
	require.Equal(t, runtime.NumCPU(), md[KeyCPUCount])

	host := MetaString(md, KeyHostArchitecture)
	require.NotEmpty(t, host)
	archs, ok := MetaStrings(md, KeyArchitectures)
	require.True(t, ok)
	require.Equal(t, host, archs[0], "the host architecture comes first")
	require.True(t, slices.Contains(archs, host))

	if runtime.GOOS == "linux" {
		mem, ok := md[KeyTotalMemory].(int64)
		require.True(t, ok, "total memory read from /proc/meminfo")
		require.Positive(t, mem)
	}

	// A noop request for the host architecture can run on this machine.
	md[VersionKey("noop")] = 1
	require.NoError(t, Noop{}.CanRunOn(Requirements{HostArchitecture: host}, md))
	require.Equal(t, "signing", AnalyzeSystem(t.Context(), "signing")[KeyWorkerType])
}
