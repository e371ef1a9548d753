package tasks

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
)

func TestSbuildTaskData(t *testing.T) {
	r := Default()
	for _, c := range []struct {
		name, data, pointer string
	}{
		{"minimal", `{"input": {"source_artifact": 1}, "host_architecture": "amd64", "environment": 2}`, ""},
		{"full", `{"input": {"source_artifact": 1, "extra_binary_artifacts": [3, 4]}, "host_architecture": "amd64", "environment": 2,
			"backend": "unshare", "build_components": ["any", "source"], "binnmu": {"changelog": "Rebuild", "suffix": "+b1"},
			"build_profiles": ["nocheck"], "build_dep_resolver": "aspcud", "aspcud_criteria": "-count(down)",
			"extra_repositories": [{"url": "http://deb.example.org/debian", "suite": "bookworm", "components": ["main"]}],
			"update_environment": true, "timeout": 3600}`, ""},
		{"no source", `{"input": {}, "host_architecture": "amd64", "environment": 2}`, "/input"},
		{"no environment", `{"input": {"source_artifact": 1}, "host_architecture": "amd64"}`, ""},
		{"bad component", `{"input": {"source_artifact": 1}, "host_architecture": "amd64", "environment": 2, "build_components": ["everything"]}`, "/build_components/0"},
		{"unknown field", `{"input": {"source_artifact": 1}, "host_architecture": "amd64", "environment": 2, "chroot": "x"}`, ""},
		{"lookup string", `{"input": {"source_artifact": "internal@collections"}, "host_architecture": "amd64", "environment": 2}`, "/input/source_artifact"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := r.Validate("sbuild", json.RawMessage(c.data))
			if c.name == "minimal" || c.name == "full" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			if c.pointer != "" {
				var verr *ValidationError
				require.ErrorAs(t, err, &verr)
				var pointers []string
				for _, p := range verr.Problems {
					pointers = append(pointers, p.Pointer)
				}
				require.Contains(t, pointers, c.pointer)
			}
		})
	}
	_, err := Sbuild{}.Requirements(json.RawMessage(`{"input": {"source_artifact": 1}, "host_architecture": "amd64", "environment": 2,
		"build_components": ["all"], "binnmu": {"changelog": "x", "suffix": "+b1"}}`))
	require.ErrorContains(t, err, "binNMU cannot build architecture-independent packages")
}

func TestSbuildCanRunOn(t *testing.T) {
	req, err := Sbuild{}.Requirements(json.RawMessage(`{"input": {"source_artifact": 1}, "host_architecture": "arm64", "environment": 2}`))
	require.NoError(t, err)
	require.Equal(t, "arm64", req.HostArchitecture)
	good := schemas.Metadata{KeyWorkerType: "external", "sbuild:version": 1, KeySbuildAvailable: true,
		KeyUnshareAvailable: true, KeyArchitectures: []any{"amd64", "arm64"}}
	require.NoError(t, Sbuild{}.CanRunOn(req, good))

	for _, c := range []struct {
		name string
		md   schemas.Metadata
		want string
	}{
		{"no sbuild", schemas.Metadata{KeySbuildAvailable: false}, "sbuild is not installed on the worker"},
		{"no unshare", schemas.Metadata{KeyUnshareAvailable: false, KeyUnshareProblem: "/etc/subuid has no range for user kiln"},
			"cannot build in unshare mode (executor:unshare:available is false: /etc/subuid has no range for user kiln)"},
		{"other architecture", schemas.Metadata{KeyArchitectures: []any{"amd64"}}, "do not include arm64"},
		{"other version", schemas.Metadata{"sbuild:version": 2}, "worker has sbuild:version 2, the server needs 1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			md := schemas.Metadata{}
			for k, v := range good {
				md[k] = v
			}
			for k, v := range c.md {
				md[k] = v
			}
			err := Sbuild{}.CanRunOn(req, md)
			require.ErrorIs(t, err, ErrCannotRun)
			require.ErrorContains(t, err, c.want)
		})
	}
}

func TestSbuildCommandLine(t *testing.T) {
	d, err := parseSbuildData(json.RawMessage(`{"input": {"source_artifact": 1}, "host_architecture": "amd64", "environment": 2,
		"build_components": ["all"], "build_profiles": ["nocheck", "pkg.foo.bar"],
		"extra_repositories": [{"url": "http://deb.example.org/debian", "suite": "bookworm", "components": ["main", "contrib"], "signing_key": "KEY"}]}`))
	require.NoError(t, err)
	r := &sbuildRun{d: d, user: buildUser{name: "builder", uid: 1234, gid: 1234, home: "/home/builder", drop: true},
		codename: "bookworm", tarball: "/cache/env.tar.zst", dsc: "hello_1.0.dsc", scratch: "/scratch/kiln-run-1-1"}
	argv, err := r.CommandLine(Env{}, "", "")
	require.NoError(t, err)
	line := strings.Join(argv, " ")
	if os.Geteuid() == 0 {
		require.Equal(t, []string{"unshare", "--pid", "--fork", "--kill-child=SIGTERM", "--mount-proc", "setpriv"}, argv[:6])
	}
	for _, want := range []string{
		"--reuid=1234 --regid=1234 --init-groups --reset-env env --chdir=/scratch/kiln-run-1-1/build HOME=/home/builder",
		"SBUILD_CONFIG=/scratch/kiln-run-1-1/sbuildrc", "TMPDIR=/scratch/kiln-run-1-1/tmp", "DEB_BUILD_OPTIONS=nocheck",
		"sbuild --chroot-mode=unshare --chroot=/cache/env.tar.zst --dist=bookworm",
		"--arch=amd64", "--no-arch-any --arch-all --no-source", "--apt-update --no-apt-upgrade --no-apt-distupgrade",
		"--extra-repository=deb http://deb.example.org/debian bookworm main contrib",
		"--extra-repository-key=/scratch/kiln-run-1-1/extra-repository-0.asc", "--profiles=nocheck,pkg.foo.bar",
	} {
		require.Contains(t, line, want)
	}
	require.Equal(t, "/scratch/kiln-run-1-1/build/hello_1.0.dsc", argv[len(argv)-1])

	// Without extra repositories the build needs no network.
	r.d.ExtraRepositories = nil
	argv, _ = r.CommandLine(Env{}, "", "")
	require.Contains(t, strings.Join(argv, " "), "--no-apt-update --no-apt-upgrade --no-apt-distupgrade")
}

func TestSbuildJudge(t *testing.T) {
	for _, c := range []struct {
		name   string
		log    string
		code   int
		want   schemas.Result
		reason string
	}{
		{"successful", "Status: successful\n", 0, schemas.ResultSuccess, ""},
		{"successful but exit 1", "Status: successful\n", 1, schemas.ResultFailure, ""},
		{"attempted", "Fail-Stage: build\nStatus: attempted\n", 2, schemas.ResultFailure, ""},
		{"skipped", "Status: skipped\n", 0, schemas.ResultFailure, ""},
		{"given back", "The following packages have unmet dependencies:\n" +
			" sbuild-build-depends-main-dummy : Depends: kiln-no-such-package but it is not installable\n" +
			"E: Unable to correct problems, you have held broken packages.\n" +
			" sbuild-build-depends-main-dummy : Depends: kiln-no-such-package but it is not installable\n" +
			"Fail-Stage: install-deps\nStatus: given-back\n", 3, schemas.ResultError,
			"given-back at install-deps: sbuild-build-depends-main-dummy : Depends: kiln-no-such-package but it is not installable"},
		{"no status", "sbuild crashed\n", 255, schemas.ResultError, "sbuild exited with 255 and its build log has no status"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := &sbuildRun{scratch: t.TempDir()}
			require.NoError(t, os.Mkdir(r.buildDir(), 0o755))
			log := filepath.Join(r.buildDir(), "hello_1.0_amd64-2026-11-23T12:00:00Z.build")
			require.NoError(t, os.WriteFile(log, []byte("sbuild (Debian sbuild) 0.85.0\n"+c.log), 0o644))
			require.NoError(t, os.Symlink(filepath.Base(log), filepath.Join(r.buildDir(), "hello_1.0_amd64.build")))
			got, err := r.Judge(c.code, "")
			require.Equal(t, c.want, got)
			if c.reason == "" {
				require.NoError(t, err)
			} else {
				require.EqualError(t, err, c.reason)
			}
		})
	}
	r := &sbuildRun{scratch: t.TempDir()}
	got, err := r.Judge(1, "")
	require.Equal(t, schemas.ResultError, got)
	require.EqualError(t, err, "sbuild exited with 1 and wrote no build log")
}

func TestBuildUser(t *testing.T) {
	if os.Geteuid() == 0 {
		_, err := lookupBuildUser(Host{})
		require.True(t, errors.Is(err, errRootBuild), "a root worker needs a build user: %v", err)
		_, err = lookupBuildUser(Host{BuildUser: "root"})
		require.ErrorIs(t, err, errRootBuild)
		_, err = lookupBuildUser(Host{BuildUser: "kiln-no-such-user"})
		require.ErrorContains(t, err, "kiln-no-such-user")
	} else {
		u, err := lookupBuildUser(Host{BuildUser: "ignored"})
		require.NoError(t, err)
		require.False(t, u.drop)
	}
	u := buildUser{name: "b", home: "/h"}
	require.Equal(t, []string{"env", "--chdir=/d", "HOME=/h", "USER=b", "LOGNAME=b", "PATH=" + os.Getenv("PATH"), "X=1", "prog"},
		u.in("/d").command([]string{"prog"}, "X=1"))
}

func TestSubIDRange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subuid")
	require.NoError(t, os.WriteFile(path, []byte("alice:100000:65536\n1001:200000:65536\nsmall:300000:10\n"), 0o644))
	for _, c := range []struct {
		name string
		uid  int
		want bool
	}{{"alice", 1000, true}, {"bob", 1001, true}, {"small", 1002, false}, {"carol", 1003, false}} {
		got, err := subIDRange(path, c.name, c.uid)
		require.NoError(t, err)
		require.Equal(t, c.want, got, c.name)
	}
}
