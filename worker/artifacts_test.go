package worker

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFileSuffix(t *testing.T) {
	for name, want := range map[string]string{
		"system.tar.zst":      ".tar.zst",
		"dir/bookworm.tar.xz": ".tar.xz",
		"image.qcow2":         ".qcow2",
		"README":              "",
		".hidden":             "",
		"a.b.c.d.e":           "",
		"Environment.TAR.ZST": "",
		// Suffixes the cache refuses are dropped, not passed on to fail.
		"env.tar.zst~":                       "",
		"env.abcdefghijklmnopqrstuvwxyz0123": "",
		// The first dot of a package file name is in its version: the
		// rest is no plain extension, and these files need none.
		"hello_1.0-1_amd64.deb":   "",
		"hello_1.0_amd64.changes": "",
	} {
		require.Equal(t, want, fileSuffix(name), name)
	}
}
