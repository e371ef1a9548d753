package schemas

import (
	"path"
	"path/filepath"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

// wantArtifactPath is ValidateArtifactPath's documented rule, written out
// again: relative, "/"-separated names that are not empty, "." or "..",
// valid UTF-8 without control characters or backslashes, at most
// MaxArtifactPathBytes long with names of at most MaxArtifactSegmentBytes.
func wantArtifactPath(p string) bool {
	if p == "" || len(p) > MaxArtifactPathBytes || !utf8.ValidString(p) {
		return false
	}
	for _, r := range p {
		if unicode.IsControl(r) || r == '\\' {
			return false
		}
	}
	for _, name := range strings.Split(p, "/") {
		if name == "" || name == "." || name == ".." || len(name) > MaxArtifactSegmentBytes {
			return false
		}
	}
	return true
}

// FuzzValidateArtifactPath checks the check of the paths that artifacts
// bring from the network, which the server stores and clients and workers
// write to disk: it never panics, accepts exactly what its documentation
// says, and what it accepts is relative and clean, has no "." or ".."
// name, no NUL byte, stays inside any directory it is joined to (and comes
// back out of it unchanged), and every directory on the way is itself a
// valid path.
func FuzzValidateArtifactPath(f *testing.F) {
	for _, seed := range []string{
		"a", "a/b/c.txt", "hello_1.0-1_amd64.deb", "ünïcode/ファイル", "a..b", ".hidden", "...", "a/.../b", "a b/ c ",
		"~", "~/x", "$HOME", "C:", "C:/x", "c:\\x", "a:b", "-rf", "*", "?/[]", "%2e%2e/x", "a%00b",
		"", "/", "/abs", "//x", ".", "..", "../x", "a/../b", "a/..", "./a", "a/./b", "a//b", "a/", "a/.",
		"a\x00b", "\x00", "a\nb", "a\rb", "a\tb", "a\x1bb", "a\x7fb", `a\b`, `..\x`, "a\xffb", "\xc0\xae\xc0\xae/x",
		"\ufeffa", "a\u200bb", "\u202egnp.exe", "a\u2028b", "a\u009b31mb", "\u0085",
		strings.Repeat("x", MaxArtifactSegmentBytes), strings.Repeat("x", MaxArtifactSegmentBytes+1),
		strings.Repeat("é", 128), strings.Repeat("a/", 511) + "bc", strings.Repeat("a/", 512) + "b",
	} {
		f.Add(seed)
	}
	base := filepath.Join(string(filepath.Separator), "srv", "kiln", "artifact")
	f.Fuzz(func(t *testing.T, p string) {
		err := ValidateArtifactPath(p)
		require.Equal(t, wantArtifactPath(p), err == nil, "ValidateArtifactPath(%q) = %v", p, err)
		if err != nil {
			require.NotEmpty(t, err.Error())
			return
		}

		require.False(t, path.IsAbs(p), "%q", p)
		require.False(t, filepath.IsAbs(filepath.FromSlash(p)), "%q", p)
		require.True(t, filepath.IsLocal(filepath.FromSlash(p)), "%q", p)
		require.Equal(t, p, path.Clean(p), "%q is not clean", p)
		require.NotContains(t, p, "\x00")
		for _, name := range strings.Split(p, "/") {
			require.NotEqual(t, "..", name, "%q", p)
			require.NotEqual(t, ".", name, "%q", p)
		}

		joined := filepath.Join(base, filepath.FromSlash(p))
		require.True(t, strings.HasPrefix(joined, base+string(filepath.Separator)), "%q joined to %s is %s", p, base, joined)
		rel, err := filepath.Rel(base, joined)
		require.NoError(t, err)
		require.Equal(t, p, filepath.ToSlash(rel))

		for dir := path.Dir(p); dir != "."; dir = path.Dir(dir) {
			require.NoError(t, ValidateArtifactPath(dir), "%q is valid but its directory %q is not", p, dir)
		}
	})
}
