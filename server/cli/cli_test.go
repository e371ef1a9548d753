package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// Regression: shell completion read the config file first, so a user who
// may not read it (or a broken one) got no completions at all.
func TestCompletionNeedsNoConfig(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "server.conf")
	require.NoError(t, os.WriteFile(bad, []byte("database_url: [\n"), 0o600))
	for _, args := range [][]string{
		{"--config", bad, "__complete", "admin", ""},
		{"--config", bad, "completion", "bash"},
	} {
		cmd := Command(nil)
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(args)
		require.NoError(t, cmd.Execute(), "%v: %s", args, out.String())
		require.NotEmpty(t, out.String())
	}
	cmd := Command(nil)
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	cmd.SetArgs([]string{"--config", bad, "admin", "worker", "list"})
	require.Error(t, cmd.Execute(), "other commands still read the config file")
}
