package client

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
)

func TestParseReceivedRange(t *testing.T) {
	cases := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"bytes=0-0", 0, true},
		{"bytes=0-1048576", 1048576, true},
		{" bytes=0-5 ", 5, true},
		{"bytes=1-5", 0, false},
		{"bytes=0-", 0, false},
		{"", 0, false},
		{"bytes=0-99999999999999999999", 0, false},
	}
	for _, tc := range cases {
		got, ok := parseReceivedRange(tc.in)
		require.Equal(t, tc.ok, ok, tc.in)
		if ok {
			require.Equal(t, tc.want, got, tc.in)
		}
	}
}

func TestEscapeArtifactPath(t *testing.T) {
	require.Equal(t, "a/b%20c/d%3Fe%23f%25", escapeArtifactPath("a/b c/d?e#f%"))
	c := New("http://example.org/api/", "")
	require.Equal(t, "http://example.org/api/1.0/artifact/7/files/logs/build%20log.txt/", c.artifactFileURL(7, "logs/build log.txt"))
}

func TestValidateArtifactPath(t *testing.T) {
	good := []string{"a", "a/b/c.txt", "hello_1.0-1_amd64.deb", "ünïcode/ファイル", "a..b", ".hidden", strings.Repeat("x", 255)}
	for _, p := range good {
		require.NoError(t, schemas.ValidateArtifactPath(p), p)
	}
	bad := []string{"", "/abs", "..", "../x", "a/../b", "a/..", ".", "./a", "a/./b", "a//b", "a/", "a\x00b", "a\nb",
		"a\x7fb", `a\b`, "a\xffb", strings.Repeat("x", 256), strings.Repeat("a/", 512) + "b"}
	for _, p := range bad {
		require.Error(t, schemas.ValidateArtifactPath(p), "%q", p)
	}
}

// A server that lists paths leaving the target directory gets nothing
// written outside it.
func TestDownloadArtifactRefusesEscapingPaths(t *testing.T) {
	for _, evil := range []string{"../escaped", "/tmp/escaped", "a/../../escaped"} {
		t.Run(evil, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.Contains(r.URL.Path, "/files/") {
					_, _ = w.Write([]byte("x"))
					return
				}
				_ = json.NewEncoder(w).Encode(schemas.Artifact{ID: 1, FilesToUpload: []string{},
					Files: map[string]schemas.ArtifactFile{evil: {Size: 1, Type: "file", Complete: true,
						Checksums: map[string]string{"sha256": "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"}}}})
			}))
			defer srv.Close()
			parent := t.TempDir()
			dir := filepath.Join(parent, "target")
			require.NoError(t, os.Mkdir(dir, 0o755))
			_, err := New(srv.URL+"/api", "t").DownloadArtifact(t.Context(), 1, dir)
			require.ErrorContains(t, err, "refusing file path")
			entries, err := os.ReadDir(parent)
			require.NoError(t, err)
			require.Len(t, entries, 1, "nothing written next to the target")
			entries, err = os.ReadDir(dir)
			require.NoError(t, err)
			require.Empty(t, entries)
		})
	}
}

// A download whose content does not match the artifact's checksum is not
// kept.
func TestDownloadArtifactVerifies(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/files/") {
			_, _ = w.Write([]byte("tampered"))
			return
		}
		_ = json.NewEncoder(w).Encode(schemas.Artifact{ID: 1, FilesToUpload: []string{},
			Files: map[string]schemas.ArtifactFile{"f": {Size: 8, Type: "file", Complete: true,
				Checksums: map[string]string{"sha256": strings.Repeat("0", 64)}}}})
	}))
	defer srv.Close()
	dir := t.TempDir()
	_, err := New(srv.URL+"/api", "t").DownloadArtifact(t.Context(), 1, dir)
	require.ErrorContains(t, err, "want 8 bytes with sha256 0000")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, entries, "neither the file nor its temporary file is left")
}

func TestDescribeFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	require.NoError(t, os.WriteFile(p, []byte("x"), 0o600))
	fr, err := DescribeFile(p)
	require.NoError(t, err)
	require.Equal(t, schemas.ArtifactFileCreate{Size: 1, Type: "file",
		Checksums: map[string]string{"sha256": "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"}}, fr)
	_, err = DescribeFile(dir)
	require.ErrorContains(t, err, "not a regular file")
	_, err = DescribeFile(filepath.Join(dir, "missing"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

// The debusine client sends a naive expire_at for a naive datetime.
func TestArtifactCreateExpireAtForms(t *testing.T) {
	for in, want := range map[string]string{
		`"2030-01-01T00:00:00Z"`:        "2030-01-01T00:00:00Z",
		`"2030-01-01T02:00:00+02:00"`:   "2030-01-01T00:00:00Z",
		`"2030-01-01T00:00:00"`:         "2030-01-01T00:00:00Z",
		`"2030-01-01T00:00:00.123456"`:  "2030-01-01T00:00:00.123456Z",
		`"2030-01-01 00:00:00.5+00:00"`: "2030-01-01T00:00:00.5Z",
		`null`:                          "",
	} {
		var a schemas.ArtifactCreate
		require.NoError(t, json.Unmarshal([]byte(`{"category":"c","expire_at":`+in+`,"files":{"f":{"size":1,"type":"file","checksums":{}}}}`), &a), in)
		require.Equal(t, "c", a.Category)
		require.Len(t, a.Files, 1)
		if want == "" {
			require.Nil(t, a.ExpireAt)
			continue
		}
		require.Equal(t, want, a.ExpireAt.Format("2006-01-02T15:04:05.999999999Z07:00"), in)
	}
	for _, bad := range []string{`"tomorrow"`, `42`, `"2030-13-01T00:00:00"`} {
		var a schemas.ArtifactCreate
		require.Error(t, json.Unmarshal([]byte(`{"category":"c","expire_at":`+bad+`}`), &a), bad)
	}
	// What the client sends reads back the same.
	tm := time.Date(2031, 2, 3, 4, 5, 6, 7000, time.UTC)
	b, err := json.Marshal(schemas.ArtifactCreate{Category: "c", ExpireAt: &tm})
	require.NoError(t, err)
	var back schemas.ArtifactCreate
	require.NoError(t, json.Unmarshal(b, &back))
	require.True(t, tm.Equal(*back.ExpireAt))
}
