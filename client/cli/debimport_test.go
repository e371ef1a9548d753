package cli

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/debpkg/debpkgtest"
)

// TestImportDebianArtifactErrors covers what import-debian-artifact finds
// before it reaches a server; e2e/debimport_test.go imports for real.
func TestImportDebianArtifactErrors(t *testing.T) {
	cfg := closedConfig(t)
	pkg := debpkgtest.Build(t, "hello")
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr string
	}{
		{"no file", []string{"import-debian-artifact"}, ExitUsage, "accepts 1 arg(s), received 0"},
		{"two files", []string{"import-debian-artifact", pkg.DSC, pkg.Deb}, ExitUsage, "accepts 1 arg(s), received 2"},
		{"bad expiry", []string{"--config-file", cfg, "import-debian-artifact", "--expire-at", "soon", pkg.DSC}, ExitUsage, "invalid --expire-at"},
		{"not a package", []string{"--config-file", cfg, "import-debian-artifact", pkg.Tarball}, ExitError,
			"only source packages (.dsc), binary packages (.deb, .udeb) and uploads (.changes) can be imported"},
		{"missing", []string{"--config-file", cfg, "import-debian-artifact", filepath.Join(t.TempDir(), "gone_1.0.dsc")}, ExitError, "no such file"},
		// Everything checks out locally: the import gets as far as the server.
		{"server unreachable", []string{"--config-file", cfg, "import-debian-artifact", pkg.Changes}, ExitError, "Error connecting to Kiln"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := run(t, "", tt.args...)
			require.Equal(t, tt.wantCode, code, stderr)
			require.Contains(t, stderr, tt.wantStderr)
			require.Empty(t, stdout)
		})
	}
}
