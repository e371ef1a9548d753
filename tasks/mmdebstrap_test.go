package tasks

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
)

func TestMmdebstrapTaskData(t *testing.T) {
	r := Default()
	for _, c := range []struct {
		data string
		ok   bool
	}{
		{`{"bootstrap_options": {"architecture": "amd64"}, "suite": "bookworm"}`, true},
		{`{"bootstrap_options": {"architecture": "amd64", "variant": "minbase", "extra_packages": ["eatmydata"]},
		  "bootstrap_repositories": [{"mirror": "http://deb.debian.org/debian", "suite": "bookworm", "components": ["main", "contrib"]}]}`, true},
		{`{"bootstrap_options": {"architecture": "amd64"}}`, false},                                         // neither suite nor repositories
		{`{"bootstrap_options": {}, "suite": "bookworm"}`, false},                                           // no architecture
		{`{"bootstrap_options": {"architecture": "amd64", "variant": "huge"}, "suite": "bookworm"}`, false}, // unknown variant
		{`{"bootstrap_options": {"architecture": "amd64"}, "bootstrap_repositories": [{"mirror": "ftp://x", "suite": "s"}]}`, false},
		{`{"bootstrap_options": {"architecture": "amd64", "extra_packages": ["-oAPT::x"]}, "suite": "bookworm"}`, false},
	} {
		err := r.Validate("mmdebstrap", json.RawMessage(c.data))
		if c.ok {
			require.NoError(t, err, c.data)
		} else {
			require.Error(t, err, c.data)
		}
	}

	d, err := parseMmdebstrapData(json.RawMessage(`{"bootstrap_options": {"architecture": "arm64"}, "suite": "trixie"}`))
	require.NoError(t, err)
	require.Equal(t, "buildd", d.Options.Variant)
	require.Equal(t, []string{"debhelper", "fakeroot"}, d.Options.ExtraPackages, "a buildd environment can build most packages offline")
	req, err := Mmdebstrap{}.Requirements(json.RawMessage(`{"bootstrap_options": {"architecture": "arm64"}, "suite": "trixie"}`))
	require.NoError(t, err)
	require.Equal(t, "arm64", req.HostArchitecture)
}

func TestMmdebstrapCanRunOn(t *testing.T) {
	req := Requirements{HostArchitecture: "amd64"}
	md := schemas.Metadata{KeyWorkerType: "external", "mmdebstrap:version": 1, KeyMmdebstrapAvailable: true,
		KeyUnshareAvailable: true, KeyArchitectures: []any{"amd64"}}
	require.NoError(t, Mmdebstrap{}.CanRunOn(req, md))
	md[KeyMmdebstrapAvailable] = false
	require.ErrorContains(t, Mmdebstrap{}.CanRunOn(req, md), "mmdebstrap is not installed on the worker")
	md[KeyMmdebstrapAvailable], md[KeyUnshareAvailable] = true, false
	require.ErrorContains(t, Mmdebstrap{}.CanRunOn(req, md), "cannot build in unshare mode")
}

func TestWorkerSources(t *testing.T) {
	dir := t.TempDir()
	sources := filepath.Join(dir, "debian.sources")
	require.NoError(t, os.WriteFile(sources, []byte(`Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.example.org/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://src.example.org/debian
Suites: sid
Components: main

Types: deb
URIs: http://security.example.org/debian-security
Suites: bookworm-security
Components: main
`), 0o644))
	list := filepath.Join(dir, "sources.list")
	require.NoError(t, os.WriteFile(list, []byte("# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://old.example.org/debian bullseye main\ndeb-src http://x/ sid main\n"), 0o644))
	saved := AptSources
	t.Cleanup(func() { AptSources = saved })

	AptSources = []string{filepath.Join(dir, "missing.sources"), sources, list}
	path, src, err := workerSources("bookworm")
	require.NoError(t, err)
	require.Equal(t, sources, path, "the first existing file is the worker's sources")
	require.Equal(t, "http://deb.example.org/debian", src.uri)
	require.Equal(t, []string{"main", "contrib"}, src.components)
	_, src, err = workerSources("bookworm-security")
	require.NoError(t, err)
	require.Equal(t, "http://security.example.org/debian-security", src.uri)
	_, _, err = workerSources("sid")
	require.ErrorContains(t, err, `do not list suite "sid"`, "deb-src sources do not count")

	AptSources = []string{list}
	_, src, err = workerSources("bullseye")
	require.NoError(t, err)
	require.Equal(t, aptSource{uri: "http://old.example.org/debian", suites: []string{"bullseye"}, components: []string{"main"}}, src)

	AptSources = []string{filepath.Join(dir, "none")}
	_, _, err = workerSources("bookworm")
	require.ErrorContains(t, err, "has no apt sources file")
}

func TestMmdebstrapCommandLine(t *testing.T) {
	d, err := parseMmdebstrapData(json.RawMessage(`{"bootstrap_options": {"architecture": "amd64"},
		"bootstrap_repositories": [{"mirror": "http://deb.example.org/debian", "suite": "bookworm", "types": ["deb", "deb-src"]}]}`))
	require.NoError(t, err)
	r := &mmdebstrapRun{d: d, user: buildUser{name: "b", home: "/h"}, scratch: "/s/kiln-run-1-1"}
	require.NoError(t, r.configureRepositories())
	argv, err := r.CommandLine(Env{}, "", "")
	require.NoError(t, err)
	line := strings.Join(argv, " ")
	require.Contains(t, line, "mmdebstrap --mode=unshare --variant=buildd --architectures=amd64 --include=debhelper,fakeroot --skip=cleanup/apt/lists "+
		"bookworm /s/kiln-run-1-1/out/system.tar.zst deb http://deb.example.org/debian bookworm main deb-src http://deb.example.org/debian bookworm main")
	require.Equal(t, "deb-src http://deb.example.org/debian bookworm main", argv[len(argv)-1], "one argument per source line")
}
