package config

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"
)

type opts struct {
	listen  string
	workers int
	sweep   time.Duration
	dev     bool
}

func flags(o *opts) *pflag.FlagSet {
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8080", "")
	fs.IntVar(&o.workers, "max-workers", 1, "")
	fs.DurationVar(&o.sweep, "scheduler-sweep", 10*time.Second, "")
	fs.BoolVar(&o.dev, "dev", false, "")
	return fs
}

func TestApplyPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "server.conf")
	require.NoError(t, os.WriteFile(file, []byte("listen: 0.0.0.0:9000\nmax-workers: 7\nscheduler-sweep: 3s\ndev: true\n"), 0o600))
	t.Setenv("KILN_MAX_WORKERS", "9")

	var o opts
	fs := flags(&o)
	require.NoError(t, fs.Parse([]string{"--scheduler-sweep=1s"}))
	require.NoError(t, Apply(fs, "KILN_", file, true))
	require.Equal(t, "0.0.0.0:9000", o.listen, "file beats default")
	require.Equal(t, 9, o.workers, "environment beats file")
	require.Equal(t, time.Second, o.sweep, "flag beats everything")
	require.True(t, o.dev)
}

func TestApplyErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, content string
		required      bool
		missing       bool
		env           string
		wantErr       bool
	}{
		{name: "missing optional file", missing: true},
		{name: "missing required file", missing: true, required: true, wantErr: true},
		{name: "unknown key", content: "lisen: x\n", wantErr: true},
		{name: "bad value", content: "max-workers: many\n", wantErr: true},
		{name: "not YAML", content: "listen: [\n", wantErr: true},
		{name: "bad environment value", content: "", env: "nope", wantErr: true},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			file := filepath.Join(dir, "c"+string(rune('a'+i)))
			if !c.missing {
				require.NoError(t, os.WriteFile(file, []byte(c.content), 0o600))
			}
			if c.env != "" {
				t.Setenv("KILN_SCHEDULER_SWEEP", c.env)
			}
			var o opts
			err := Apply(flags(&o), "KILN_", file, c.required)
			if c.wantErr {
				require.Error(t, err)
			} else {
				require.NoError(t, err)
			}
		})
	}
}

func TestEnvName(t *testing.T) {
	require.Equal(t, "KILN_DATABASE_URL", EnvName("KILN_", "database-url"))
}

func TestLogger(t *testing.T) {
	_, err := Logger("info", "json", os.Stderr)
	require.NoError(t, err)
	_, err = Logger("loud", "json", os.Stderr)
	require.Error(t, err)
	_, err = Logger("info", "xml", os.Stderr)
	require.Error(t, err)
}
