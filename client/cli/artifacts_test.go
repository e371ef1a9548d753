package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/client"
)

func TestArtifactFiles(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"a.txt", "sub/b.txt", "other/a.txt"} {
		full := filepath.Join(dir, filepath.FromSlash(p))
		require.NoError(t, os.MkdirAll(filepath.Dir(full), 0o755))
		require.NoError(t, os.WriteFile(full, []byte(p), 0o600))
	}
	abs := func(p string) string { return filepath.Join(dir, filepath.FromSlash(p)) }

	got, err := artifactFiles([]string{abs("a.txt"), abs("sub/b.txt")}, "")
	require.NoError(t, err)
	require.Equal(t, map[string]string{"a.txt": abs("a.txt"), "b.txt": abs("sub/b.txt")}, got, "base names")

	got, err = artifactFiles([]string{abs("a.txt"), "sub/b.txt"}, dir)
	require.NoError(t, err)
	require.Equal(t, map[string]string{"a.txt": abs("a.txt"), "sub/b.txt": abs("sub/b.txt")}, got, "relative to the base directory")

	_, err = artifactFiles([]string{abs("a.txt"), abs("other/a.txt")}, "")
	require.ErrorContains(t, err, `already uploaded as "a.txt"`)
	_, err = artifactFiles([]string{abs("a.txt")}, filepath.Join(dir, "sub"))
	require.ErrorContains(t, err, "not under --upload-base-directory")
	_, err = artifactFiles([]string{abs("missing")}, "")
	require.ErrorContains(t, err, "cannot upload")
	_, err = artifactFiles([]string{abs("sub")}, "")
	require.ErrorContains(t, err, "not a regular file")
	_, err = artifactFiles(nil, abs("a.txt"))
	require.ErrorContains(t, err, "is not a directory")
}

func TestParseExpireAt(t *testing.T) {
	for in, want := range map[string]time.Time{
		"2026-12-31T23:59:00Z":      time.Date(2026, 12, 31, 23, 59, 0, 0, time.UTC),
		"2026-12-31T23:59:00+01:00": time.Date(2026, 12, 31, 22, 59, 0, 0, time.UTC),
		"2026-12-31":                time.Date(2026, 12, 31, 0, 0, 0, 0, time.UTC),
		"2026-12-31 08:30":          time.Date(2026, 12, 31, 8, 30, 0, 0, time.UTC),
	} {
		got, err := parseExpireAt(in)
		require.NoError(t, err, in)
		require.True(t, want.Equal(got), "%s: %s", in, got)
	}
	got, err := parseExpireAt("72h")
	require.NoError(t, err)
	require.WithinDuration(t, time.Now().Add(72*time.Hour), got, time.Minute)
	for _, bad := range []string{"tomorrow", "-1h", "2026-13-01"} {
		_, err := parseExpireAt(bad)
		require.Error(t, err, bad)
	}
}

func TestRenderProgress(t *testing.T) {
	require.Equal(t, "f [==========>         ]  50% 1.0 MiB/2.0 MiB",
		renderProgress(client.UploadProgress{Path: "f", Sent: 1 << 20, Size: 2 << 20}, 20))
	require.Equal(t, "f [====================] 100% 0 B/0 B", renderProgress(client.UploadProgress{Path: "f", Done: true}, 20))
	require.Equal(t, "g [>         ]   0% 0 B/10 B", renderProgress(client.UploadProgress{Path: "g", Size: 10}, 10))
	require.Equal(t, "1.5 KiB", humanBytes(1536))
	require.Equal(t, "3.0 GiB", humanBytes(3<<30))

	var buf bytes.Buffer
	bar := newProgressBar(&buf)
	bar.update(client.UploadProgress{Path: "f", Sent: 1, Size: 4})
	bar.update(client.UploadProgress{Path: "f", Sent: 2, Size: 4}) // throttled
	bar.update(client.UploadProgress{Path: "f", Sent: 4, Size: 4, Done: true})
	out := buf.String()
	require.Equal(t, 2, strings.Count(out, "\r"), out)
	require.True(t, strings.HasSuffix(out, "\n"), "a finished file ends its line")
	require.False(t, isTerminal(&buf))
}

func TestArtifactCommandUsage(t *testing.T) {
	cfg := closedConfig(t)
	tests := []struct {
		args       []string
		wantCode   int
		wantStderr string
	}{
		{[]string{"show-artifact"}, ExitUsage, "want one argument, an artifact id"},
		{[]string{"show-artifact", "0"}, ExitUsage, "invalid artifact id"},
		{[]string{"download-artifact", "x"}, ExitUsage, "invalid artifact id"},
		{[]string{"create-artifact"}, ExitUsage, "requires at least 1 arg"},
		{[]string{"--config-file", cfg, "create-artifact", "t", "--expire-at", "soon"}, ExitUsage, "invalid --expire-at"},
		{[]string{"--config-file", cfg, "download-artifact", "1", "--target-directory", "/nonexistent/dir"}, ExitError, "not a directory"},
		{[]string{"--config-file", cfg, "show-artifact", "1"}, ExitError, "Error connecting to Kiln"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, _, stderr := run(t, "", tt.args...)
			require.Equal(t, tt.wantCode, code, stderr)
			require.Contains(t, stderr, tt.wantStderr)
		})
	}
}
