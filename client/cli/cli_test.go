package cli

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// run runs Main with a clean KILN_ environment and returns the exit code,
// stdout and stderr.
func run(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	for _, k := range []string{"KILN_CONFIG_FILE", "KILN_SERVER", "KILN_SCOPE", "KILN_DEBUG"} {
		t.Setenv(k, "")
	}
	var stdout, stderr bytes.Buffer
	code := Main(args, strings.NewReader(stdin), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// closedConfig writes a configuration whose server listens nowhere.
func closedConfig(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.ini")
	require.NoError(t, WriteConfig(path, "closed", ServerConfig{APIURL: "http://127.0.0.1:1/api", Scope: "debusine", Token: "t"}))
	return path
}

func TestMainExitCodes(t *testing.T) {
	cfg := closedConfig(t)
	missing := filepath.Join(t.TempDir(), "missing.ini")
	tests := []struct {
		name       string
		stdin      string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{name: "help", args: []string{"--help"}, wantCode: ExitOK, wantStdout: "create-work-request"},
		{name: "no command", wantCode: ExitUsage, wantStderr: "a command is required"},
		{name: "unknown command", args: []string{"frobnicate"}, wantCode: ExitUsage, wantStderr: `unknown command "frobnicate"`},
		{name: "unknown flag", args: []string{"whoami", "--frob"}, wantCode: ExitUsage, wantStderr: "Run 'kiln whoami --help' for usage."},
		{name: "bad id", args: []string{"show-work-request", "abc"}, wantCode: ExitUsage, wantStderr: `invalid work request id "abc"`},
		{name: "missing id", args: []string{"abort-work-request"}, wantCode: ExitUsage, wantStderr: "want one argument"},
		{name: "bad limit", args: []string{"--config-file", cfg, "list-work-requests", "--limit", "0"}, wantCode: ExitUsage, wantStderr: "--limit must be positive"},
		{name: "missing configuration", args: []string{"--config-file", missing, "whoami"}, wantCode: ExitError, wantStderr: "read client configuration"},
		{name: "unknown server", args: []string{"--config-file", cfg, "--server", "other", "whoami"}, wantCode: ExitError, wantStderr: `no configuration for server "other"`},
		{name: "data not a mapping", stdin: "- 1\n", args: []string{"--config-file", cfg, "create-work-request", "noop"}, wantCode: ExitError, wantStderr: "standard input: data must be a mapping; it is a list"},
		{name: "no changes", args: []string{"--config-file", cfg, "manage-work-request", "5"}, wantCode: ExitError, wantStderr: "no changes specified"},
		{name: "connection refused", args: []string{"--config-file", cfg, "whoami"}, wantCode: ExitError, wantStderr: "Error connecting to Kiln"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := run(t, tt.stdin, tt.args...)
			require.Equal(t, tt.wantCode, code, "stderr: %s", stderr)
			require.Contains(t, stdout, tt.wantStdout)
			require.Contains(t, stderr, tt.wantStderr)
		})
	}
}

func TestConfigFileFromEnvironment(t *testing.T) {
	cfg := closedConfig(t)
	for _, k := range []string{"KILN_SERVER", "KILN_SCOPE", "KILN_DEBUG"} {
		t.Setenv(k, "")
	}
	t.Setenv("KILN_CONFIG_FILE", cfg)
	var stdout, stderr bytes.Buffer
	code := Main([]string{"whoami"}, strings.NewReader(""), &stdout, &stderr)
	require.Equal(t, ExitError, code)
	require.Contains(t, stderr.String(), "Error connecting to Kiln", "the configuration was read")

	// The flag wins over the environment.
	stderr.Reset()
	code = Main([]string{"--config-file", filepath.Join(t.TempDir(), "none.ini"), "whoami"}, strings.NewReader(""), &stdout, &stderr)
	require.Equal(t, ExitError, code)
	require.Contains(t, stderr.String(), "none.ini")
}
