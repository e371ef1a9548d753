package cli

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

const twoServers = `# Kiln client configuration
; written by hand
[General]
default-server = local

[server:local]
api-url = http://127.0.0.1:8080/api
scope = debusine
token = 0123abcd

[server:remote]
API-URL: https://Kiln.Example.org/api/
  Scope :   lab
token=ffee%%
`

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.ini")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

func TestLoadConfig(t *testing.T) {
	local := ServerConfig{APIURL: "http://127.0.0.1:8080/api", Scope: "debusine", Token: "0123abcd"}
	remote := ServerConfig{APIURL: "https://Kiln.Example.org/api/", Scope: "lab", Token: "ffee%%"}
	tests := []struct {
		name    string
		content string
		server  string
		want    ServerConfig
		wantErr string
	}{
		{name: "default server", content: twoServers, want: local},
		{name: "by name", content: twoServers, server: "remote", want: remote},
		{name: "by FQDN/SCOPE", content: twoServers, server: "kiln.example.org/lab", want: remote},
		{name: "by FQDN/SCOPE, first match", content: twoServers, server: "127.0.0.1/debusine", want: local},
		{name: "FQDN with another scope", content: twoServers, server: "kiln.example.org/debusine", wantErr: `no configuration for server "kiln.example.org/debusine"`},
		{name: "unknown name", content: twoServers, server: "nope", wantErr: `no configuration for server "nope"`},
		{
			name:    "default server by FQDN/SCOPE",
			content: "[General]\ndefault-server = h.example/s\n[server:x]\napi-url = http://h.example:1234/api\nscope = s\ntoken = t\n",
			want:    ServerConfig{APIURL: "http://h.example:1234/api", Scope: "s", Token: "t"},
		},
		{
			name:    "empty token",
			content: "[server:x]\napi-url = http://h/api\nscope = s\ntoken =\n",
			server:  "x",
			want:    ServerConfig{APIURL: "http://h/api", Scope: "s"},
		},
		{name: "no General", content: "[server:x]\napi-url = http://h/api\nscope = s\ntoken = t\n", wantErr: "no [General] section"},
		{name: "no default-server", content: "[General]\n[server:x]\napi-url = http://h/api\nscope = s\ntoken = t\n", wantErr: "no default-server in [General]"},
		{name: "missing keys", content: "[server:x]\napi-url = http://h/api\n", server: "x", wantErr: "[server:x] lacks required keys: scope, token"},
		{name: "unknown key", content: "[server:x]\napi-url = http://h/api\nscope = s\ntoken = t\ncolour = red\n", server: "x", wantErr: "[server:x] has unknown keys: colour"},
		{name: "bad api-url", content: "[server:x]\napi-url = localhost/api\nscope = s\ntoken = t\n", server: "x", wantErr: `api-url "localhost/api" is not an http(s) URL`},
		{name: "key before section", content: "token = t\n[server:x]\n", server: "x", wantErr: "line 1: key \"token\" comes before any [section]"},
		{name: "not a key", content: "[server:x]\njust words\n", server: "x", wantErr: "line 2: expected [section]"},
		{name: "unclosed section", content: "[server:x\n", server: "x", wantErr: "line 1: section header"},
		{name: "duplicate key", content: "[server:x]\ntoken = a\nTOKEN = b\n", server: "x", wantErr: `line 3: key "token" appears twice`},
		{name: "duplicate section", content: "[a]\n[a]\n", server: "x", wantErr: "line 2: section [a] appears twice"},
		{name: "section names are case-sensitive", content: "[general]\ndefault-server = x\n", wantErr: "no [General] section"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := LoadConfig(writeFile(t, tt.content), tt.server)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.ini")
	_, err := LoadConfig(path, "")
	require.ErrorIs(t, err, os.ErrNotExist)
	require.ErrorContains(t, err, path)
}

func TestParseINIWindowsLineEndingsAndBOM(t *testing.T) {
	f, err := parseINI([]byte("\ufeff[General]\r\ndefault-server = a\r\n"))
	require.NoError(t, err)
	require.Equal(t, "a", f.section("General").keys["default-server"])
}

func TestWriteConfigRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "kiln", "client.ini")
	sc := ServerConfig{APIURL: "http://127.0.0.1:8080/api", Scope: "debusine", Token: "f00d"}
	require.NoError(t, WriteConfig(path, "dev", sc))

	info, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())

	for _, server := range []string{"", "dev", "127.0.0.1/debusine"} {
		got, err := LoadConfig(path, server)
		require.NoError(t, err, "server %q", server)
		require.Equal(t, sc, got, "server %q", server)
	}

	// A second write replaces the file, and a loose mode, entirely.
	require.NoError(t, os.Chmod(path, 0o644))
	other := ServerConfig{APIURL: "https://kiln.example.org/api/", Scope: "lab", Token: "beef"}
	require.NoError(t, WriteConfig(path, "other", other))
	info, err = os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	got, err := LoadConfig(path, "")
	require.NoError(t, err)
	require.Equal(t, other, got)
	_, err = LoadConfig(path, "dev")
	require.ErrorContains(t, err, `no configuration for server "dev"`)

	entries, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file left behind")
}

func TestWriteConfigRejectsWhatCannotBeReadBack(t *testing.T) {
	dir := t.TempDir()
	ok := ServerConfig{APIURL: "http://h/api", Scope: "s", Token: "t"}
	for _, tt := range []struct {
		name   string
		server string
		sc     ServerConfig
	}{
		{"empty name", "", ok},
		{"slash in name", "a/b", ok},
		{"bracket in name", "a]", ok},
		{"padded name", " a", ok}, // default-server would read back as "a" (FuzzParseINI)
		{"newline in token", "a", ServerConfig{APIURL: ok.APIURL, Scope: "s", Token: "t\n[x]"}},
		{"padded scope", "a", ServerConfig{APIURL: ok.APIURL, Scope: " s", Token: "t"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			require.Error(t, WriteConfig(filepath.Join(dir, "c.ini"), tt.server, tt.sc))
		})
	}
}
