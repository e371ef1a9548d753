package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/worker"
)

// The Debian tasks' tests build real packages with sbuild, as the worker's
// build user, in a seeded build environment tarball that .ci/run prepares
// (mmdebstrap --variant=buildd --include=debhelper,fakeroot
// --skip=cleanup/apt/lists). Builds are slow (tens of seconds each), and
// what they test does not depend on the store or the NATS server, so they
// run on the single-node backend only.

const (
	testBuildUser = "kiln-build"
	// buildWait bounds one build; a tiny package takes 35-90 s here.
	buildWait = 6 * time.Minute
)

// debianHost is what the Debian tasks need of this machine.
type debianHost struct {
	tarball, scratch, cache string
}

func needDebianHost(t *testing.T) debianHost {
	t.Helper()
	for _, prog := range []string{"sbuild", "mmdebstrap", "lintian", "dpkg-source", "dpkg-deb", "newuidmap", "arch-test"} {
		if _, err := exec.LookPath(prog); err != nil {
			unavailable(t, prog+" (see .ci/run)", err)
		}
	}
	if os.Geteuid() != 0 {
		unavailable(t, "root (the tests run builds as the build user "+testBuildUser+")", fmt.Errorf("euid %d", os.Geteuid()))
	}
	if _, err := user.Lookup(testBuildUser); err != nil {
		unavailable(t, "the build user "+testBuildUser+" (see .ci/run)", err)
	}
	h := debianHost{tarball: os.Getenv("KILN_TEST_TARBALL")}
	if h.tarball == "" {
		h.tarball = "/var/cache/kiln-test/bookworm-amd64.tar.zst"
	}
	if _, err := os.Stat(h.tarball); err != nil {
		unavailable(t, "the seeded build environment tarball (see .ci/run)", err)
	}
	base := os.Getenv("KILN_TEST_SCRATCH")
	if base == "" {
		base = "/dev/shm"
	}
	// The build user must reach both: t.TempDir() is closed to it.
	h.scratch = openTempDir(t, base, "kiln-e2e-scratch-")
	h.cache = openTempDir(t, os.TempDir(), "kiln-e2e-cache-")
	return h
}

func openTempDir(t *testing.T, base, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp(base, prefix)
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// configure makes a worker a build worker of this host.
func (h debianHost) configure(c *worker.Config) {
	c.BuildUser = testBuildUser
	c.ScratchDir = h.scratch
	c.CacheDir = h.cache
}

// sourcePackage writes a tiny native source package and builds its .dsc
// with dpkg-source; rules is extra debian/rules text (overrides).
func sourcePackage(t *testing.T, dir, name, buildDepends, rules string) string {
	t.Helper()
	tree := filepath.Join(dir, name+"-1.0")
	files := map[string]string{
		"debian/control": "Source: " + name + "\nSection: misc\nPriority: optional\nMaintainer: Kiln Tests <kiln@example.org>\n" +
			"Build-Depends: debhelper-compat (= 13)" + buildDepends + "\nStandards-Version: 4.6.2\nRules-Requires-Root: no\n\n" +
			"Package: " + name + "\nArchitecture: all\nDescription: tiny package built by Kiln's tests\n It installs one file.\n",
		"debian/changelog":     name + " (1.0) unstable; urgency=medium\n\n  * Initial release.\n\n -- Kiln Tests <kiln@example.org>  Mon, 23 Nov 2026 10:00:00 +0000\n",
		"debian/rules":         "#!/usr/bin/make -f\n%:\n\tdh $@\n" + rules,
		"debian/source/format": "3.0 (native)\n",
		"debian/install":       "hello.txt usr/share/" + name + "\n",
		"debian/copyright":     "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nCopyright: 2026 Kiln Tests\nLicense: CC0-1.0\n",
		"hello.txt":            "hello from " + name + "\n",
	}
	for path, content := range files {
		p := filepath.Join(tree, path)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	}
	require.NoError(t, os.Chmod(filepath.Join(tree, "debian/rules"), 0o755))
	cmd := exec.Command("dpkg-source", "-b", name+"-1.0")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "dpkg-source: %s", out)
	return filepath.Join(dir, name+"_1.0.dsc")
}

// importArtifact imports a Debian file with `kiln import-debian-artifact`
// and returns the new artifact's id.
func (b *bundle) importArtifact(path string) int64 {
	b.t.Helper()
	code, out, errOut := b.kiln("", "import-debian-artifact", path)
	require.Equal(b.t, 0, code, "stdout: %s\nstderr: %s", out, errOut)
	m := regexp.MustCompile(`(?m)^artifact_id: (\d+)$`).FindStringSubmatch(out)
	require.NotNil(b.t, m, "no artifact_id in %q", out)
	id, err := strconv.ParseInt(m[1], 10, 64)
	require.NoError(b.t, err)
	return id
}

// uploadEnvironment uploads the seeded tarball as a debian:system-tarball.
func (b *bundle) uploadEnvironment(h debianHost) int64 {
	b.t.Helper()
	a, err := b.user.UploadArtifact(b.ctx, client.ArtifactUpload{Category: "debian:system-tarball",
		Data: map[string]any{"filename": "system.tar.zst", "vendor": "debian", "codename": "bookworm",
			"architecture": "amd64", "variant": "buildd", "with_dev": true, "with_init": false},
		Files: map[string]string{"system.tar.zst": h.tarball}})
	require.NoError(b.t, err)
	return a.ID
}

func (b *bundle) waitWithin(id int64, d time.Duration) schemas.WorkRequest {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, d)
	defer cancel()
	wr, err := b.admin.WaitWorkRequest(ctx, id, nil)
	require.NoError(b.t, err, "waiting for work request %d", id)
	return wr
}

// artifactsByCategory returns a finished request's artifacts by category.
func (b *bundle) artifactsByCategory(wr schemas.WorkRequest) map[string][]schemas.Artifact {
	b.t.Helper()
	out := map[string][]schemas.Artifact{}
	for _, id := range wr.Artifacts {
		a, err := b.admin.GetArtifact(b.ctx, id)
		require.NoError(b.t, err)
		out[a.Category] = append(out[a.Category], a)
	}
	return out
}

func sbuildData(source, environment int64) string {
	return fmt.Sprintf(`{"input": {"source_artifact": %d}, "host_architecture": "amd64", "environment": %d, "build_components": ["any", "all"]}`, source, environment)
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	require.NoError(t, err)
	return hex.EncodeToString(h.Sum(nil))
}

// requireFilesMatch downloads an artifact and checks every file against
// the SHA-256 the server lists for it.
func (b *bundle) requireFilesMatch(a schemas.Artifact) string {
	b.t.Helper()
	dir := b.t.TempDir()
	_, err := b.admin.DownloadArtifact(b.ctx, a.ID, dir)
	require.NoError(b.t, err)
	for name, f := range a.Files {
		require.Equal(b.t, f.Checksums["sha256"], sha256File(b.t, filepath.Join(dir, name)), "%s of artifact %d", name, a.ID)
	}
	return dir
}

func fileNames(a schemas.Artifact) []string {
	var out []string
	for name := range a.Files {
		out = append(out, name)
	}
	return out
}

func TestSbuildBuildsAndLintianChecks(t *testing.T) {
	h := needDebianHost(t)
	b := setup(t, backends[0])
	b.startWorkerWith("builder", 1, nil, h.configure)

	dsc := sourcePackage(t, t.TempDir(), "hello-kiln", "", "")
	source := b.importArtifact(dsc)
	environment := b.uploadEnvironment(h)

	wr := b.waitWithin(b.create(b.user, "sbuild", sbuildData(source, environment)).ID, buildWait)
	require.Equal(t, schemas.ResultSuccess, wr.Result, "output: %s", wr.Output)
	arts := b.artifactsByCategory(wr)

	require.Len(t, arts["debian:package-build-log"], 1)
	logArt := arts["debian:package-build-log"][0]
	require.Equal(t, "hello-kiln", artData(b, logArt)["source"])
	require.Equal(t, "1.0", artData(b, logArt)["version"])
	logDir := b.requireFilesMatch(logArt)
	logData, err := os.ReadFile(filepath.Join(logDir, fileNames(logArt)[0]))
	require.NoError(t, err)
	require.Contains(t, string(logData), "Status: successful")

	require.Len(t, arts["debian:binary-package"], 1)
	bin := arts["debian:binary-package"][0]
	require.Equal(t, "hello-kiln", artData(b, bin)["srcpkg_name"])
	binDir := b.requireFilesMatch(bin)
	out, err := exec.Command("dpkg-deb", "-c", filepath.Join(binDir, "hello-kiln_1.0_all.deb")).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "./usr/share/hello-kiln/hello.txt")

	require.Len(t, arts["debian:upload"], 1)
	upload := arts["debian:upload"][0]
	require.ElementsMatch(t, []string{"hello-kiln_1.0_amd64.changes", "hello-kiln_1.0_all.deb", "hello-kiln_1.0_amd64.buildinfo"}, fileNames(upload))
	upDir := b.requireFilesMatch(upload)
	// The .changes lists the files with the same SHA-256 as uploaded.
	changes, err := os.ReadFile(filepath.Join(upDir, "hello-kiln_1.0_amd64.changes"))
	require.NoError(t, err)
	for _, name := range []string{"hello-kiln_1.0_all.deb", "hello-kiln_1.0_amd64.buildinfo"} {
		require.Contains(t, string(changes), upload.Files[name].Checksums["sha256"]+" ")
	}
	require.Len(t, arts["debusine:work-request-debug-logs"], 1)

	// debusine's relations: the binary is built using the source, the
	// upload extends the binary, the build log relates to the source.
	rels, err := b.admin.ListRelations(b.ctx, client.RelationFilter{Artifact: bin.ID})
	require.NoError(t, err)
	require.Contains(t, relationTargets(rels, schemas.RelationBuiltUsing), source)
	rels, err = b.admin.ListRelations(b.ctx, client.RelationFilter{Artifact: upload.ID})
	require.NoError(t, err)
	require.Contains(t, relationTargets(rels, schemas.RelationExtends), bin.ID)
	rels, err = b.admin.ListRelations(b.ctx, client.RelationFilter{Artifact: logArt.ID})
	require.NoError(t, err)
	require.Contains(t, relationTargets(rels, schemas.RelationRelatesTo), source)

	// lintian on the upload completes with a summary.
	lint := b.waitWithin(b.create(b.user, "lintian", fmt.Sprintf(`{"input": {"binary_artifacts": [%d]}}`, upload.ID)).ID, buildWait)
	require.Contains(t, []schemas.Result{schemas.ResultSuccess, schemas.ResultFailure}, lint.Result, "output: %s", lint.Output)
	larts := b.artifactsByCategory(lint)
	require.Len(t, larts["debian:lintian"], 1)
	summary, ok := artData(b, larts["debian:lintian"][0])["summary"].(map[string]any)
	require.True(t, ok, "lintian data: %v", larts["debian:lintian"][0].Data)
	require.Contains(t, summary, "tags_count_by_severity")
	require.NotEmpty(t, summary["lintian_version"])
	requireNoScratchLeft(t, h)
}

// artData decodes an artifact's data.
func artData(b *bundle, a schemas.Artifact) map[string]any {
	b.t.Helper()
	var data map[string]any
	require.NoError(b.t, json.Unmarshal(a.Data, &data))
	return data
}

func relationTargets(rels []schemas.ArtifactRelation, typ schemas.RelationType) []int64 {
	var out []int64
	for _, r := range rels {
		if r.Type == typ {
			out = append(out, r.Target)
		}
	}
	return out
}

func TestSbuildFailedBuildAndMissingDependency(t *testing.T) {
	h := needDebianHost(t)
	b := setup(t, backends[0])
	b.startWorkerWith("builder", 2, nil, h.configure)
	environment := b.uploadEnvironment(h)

	failing := b.importArtifact(sourcePackage(t, t.TempDir(), "kiln-fails", "", "override_dh_auto_build:\n\techo the build breaks here; exit 1\n"))
	missing := b.importArtifact(sourcePackage(t, t.TempDir(), "kiln-needs-missing", ", kiln-no-such-package", ""))
	failed := b.create(b.user, "sbuild", sbuildData(failing, environment))
	uninstallable := b.create(b.user, "sbuild", sbuildData(missing, environment))

	wr := b.waitWithin(failed.ID, buildWait)
	require.Equal(t, schemas.ResultFailure, wr.Result, "output: %s", wr.Output)
	arts := b.artifactsByCategory(wr)
	require.Len(t, arts["debian:package-build-log"], 1, "a failed build uploads its log")
	require.Empty(t, arts["debian:binary-package"])
	require.Empty(t, arts["debian:upload"])
	logDir := b.requireFilesMatch(arts["debian:package-build-log"][0])
	logData, err := os.ReadFile(filepath.Join(logDir, fileNames(arts["debian:package-build-log"][0])[0]))
	require.NoError(t, err)
	require.Contains(t, string(logData), "Status: attempted")
	require.Contains(t, string(logData), "the build breaks here")

	wr = b.waitWithin(uninstallable.ID, buildWait)
	require.Equal(t, schemas.ResultError, wr.Result, "output: %s", wr.Output)
	require.Contains(t, wr.Reason, "given-back")
	require.Contains(t, wr.Reason, "kiln-no-such-package")
	require.Len(t, b.artifactsByCategory(wr)["debian:package-build-log"], 1)
	requireNoScratchLeft(t, h)
}

// buildProcesses returns the pids of processes that run as one of the build
// user's subordinate ids (the build environment's users) and, unless
// subOnly, as the build user.
func buildProcesses(t *testing.T, subOnly bool) []int {
	t.Helper()
	u, err := user.Lookup(testBuildUser)
	require.NoError(t, err)
	uid, _ := strconv.Atoi(u.Uid)
	lo, n := subuidRange(t, testBuildUser)
	entries, err := os.ReadDir("/proc")
	require.NoError(t, err)
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || gone(pid) {
			continue
		}
		status, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(status), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
				if id, err := strconv.Atoi(f[1]); err == nil && (id == uid && !subOnly || id >= lo && id < lo+n) {
					pids = append(pids, pid)
				}
			}
		}
	}
	return pids
}

// describeProcesses returns a line per process: pid, uid and command line.
func describeProcesses(pids []int) string {
	var b strings.Builder
	for _, p := range pids {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		uid := ""
		for _, line := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(line, "Uid:") || strings.HasPrefix(line, "State:") {
				uid += strings.Join(strings.Fields(line), " ") + " "
			}
		}
		fmt.Fprintf(&b, "%d %s%s\n", p, uid, strings.ReplaceAll(string(cmd), "\x00", " "))
	}
	return b.String()
}

func subuidRange(t *testing.T, name string) (int, int) {
	t.Helper()
	f, err := os.Open("/etc/subuid")
	require.NoError(t, err)
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if p := strings.Split(s.Text(), ":"); len(p) == 3 && p[0] == name {
			lo, _ := strconv.Atoi(p[1])
			n, _ := strconv.Atoi(p[2])
			return lo, n
		}
	}
	t.Fatalf("no subuid range for %s", name)
	return 0, 0
}

// requireNoScratchLeft checks that no run left a directory (a build tree,
// an unpacked environment) in the scratch directory.
func requireNoScratchLeft(t *testing.T, h debianHost) {
	t.Helper()
	var left []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		entries, err := os.ReadDir(h.scratch)
		require.NoError(t, err)
		left = left[:0]
		for _, e := range entries {
			left = append(left, e.Name())
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	require.Empty(t, left, "left in the scratch directory %s", h.scratch)
}

func TestSbuildAbortLeavesNothing(t *testing.T) {
	h := needDebianHost(t)
	b := setup(t, backends[0])
	b.startWorkerWith("builder", 1, nil, h.configure)
	environment := b.uploadEnvironment(h)
	// Other packages' tests may run lintian as the build user meanwhile:
	// what ran before this build is not this build's.
	before := map[int]bool{}
	for _, p := range buildProcesses(t, false) {
		before[p] = true
	}

	slow := b.importArtifact(sourcePackage(t, t.TempDir(), "kiln-slow", "", "override_dh_auto_build:\n\techo KILN-BUILD-STARTED; sleep 600\n"))
	wr := b.create(b.user, "sbuild", sbuildData(slow, environment))
	deadline := time.Now().Add(buildWait)
	for {
		var sb strings.Builder
		if b.user.Log(b.ctx, wr.ID, &sb) == nil && strings.Contains(sb.String(), "KILN-BUILD-STARTED") {
			break
		}
		require.False(t, time.Now().After(deadline), "the build did not start: %s", sb.String())
		time.Sleep(100 * time.Millisecond)
	}
	var pids []int
	for _, p := range buildProcesses(t, false) {
		if !before[p] {
			pids = append(pids, p)
		}
	}
	require.NotEmpty(t, pids)
	require.NotEmpty(t, buildProcesses(t, true), "the build runs as the environment's users")

	_, err := b.user.AbortWorkRequest(b.ctx, wr.ID)
	require.NoError(t, err)
	var left []int
	deadline = time.Now().Add(30 * time.Second)
	for {
		left = left[:0]
		for _, p := range pids {
			if !gone(p) {
				left = append(left, p)
			}
		}
		// Only builds run as the build user's subordinate ids.
		for _, p := range buildProcesses(t, true) {
			if !before[p] {
				left = append(left, p)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.Empty(t, left, "processes of the build left after the abort:\n%s", describeProcesses(left))
	b.waitFor("the kill confirmation", func() bool { return !b.get(wr.ID).KillPending })
	requireNoScratchLeft(t, h)

	// The worker takes its next request.
	next := b.wait(b.create(b.user, "noop", `{}`).ID)
	require.Equal(t, schemas.ResultSuccess, next.Result)
}

func TestMmdebstrapEnvironmentBuilds(t *testing.T) {
	h := needDebianHost(t)
	b := setup(t, backends[0])
	b.startWorkerWith("builder", 1, nil, h.configure)

	made := b.waitWithin(b.create(b.user, "mmdebstrap", `{"bootstrap_options": {"architecture": "amd64"}, "suite": "bookworm"}`).ID, 15*time.Minute)
	require.Equal(t, schemas.ResultSuccess, made.Result, "output: %s", made.Output)
	tarballs := b.artifactsByCategory(made)["debian:system-tarball"]
	require.Len(t, tarballs, 1)
	env := tarballs[0]
	require.Equal(t, "bookworm", artData(b, env)["codename"])
	require.Equal(t, "amd64", artData(b, env)["architecture"])
	require.Equal(t, "buildd", artData(b, env)["variant"])
	pkgs, ok := artData(b, env)["pkglist"].(map[string]any)
	require.True(t, ok)
	require.Contains(t, pkgs, "debhelper")
	require.Contains(t, pkgs, "fakeroot")
	require.Contains(t, fileNames(env), "system.tar.zst")

	source := b.importArtifact(sourcePackage(t, t.TempDir(), "hello-kiln", "", ""))
	wr := b.waitWithin(b.create(b.user, "sbuild", sbuildData(source, env.ID)).ID, buildWait)
	require.Equal(t, schemas.ResultSuccess, wr.Result, "output: %s", wr.Output)
	require.Len(t, b.artifactsByCategory(wr)["debian:binary-package"], 1)
	requireNoScratchLeft(t, h)
}

// placeholder uploads an artifact of category with one small file, for
// requests that must name inputs but never run.
func (b *bundle) placeholder(category, name string) int64 {
	b.t.Helper()
	path := filepath.Join(b.t.TempDir(), name)
	require.NoError(b.t, os.WriteFile(path, []byte(name+"\n"), 0o644))
	a, err := b.user.UploadArtifact(b.ctx, client.ArtifactUpload{Category: category, Data: map[string]any{"codename": "bookworm"},
		Files: map[string]string{name: path}})
	require.NoError(b.t, err)
	return a.ID
}

func TestSbuildRefusesBadInputs(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		source := b.placeholder("debian:source-package", "hello_1.0.dsc")
		env := b.placeholder("debian:system-tarball", "system.tar.zst")
		for _, c := range []struct {
			name, data, pointer, message string
		}{
			{"missing source", sbuildData(999999, env), "/task_data/input/source_artifact", "artifact 999999 does not exist"},
			{"environment of the wrong category", sbuildData(source, source), "/task_data/environment",
				fmt.Sprintf("artifact %d is a debian:source-package artifact, not a debian:system-tarball", source)},
			{"wrong extra package", fmt.Sprintf(`{"input": {"source_artifact": %d, "extra_binary_artifacts": [%d]}, "host_architecture": "amd64", "environment": %d}`, source, env, env),
				"/task_data/input/extra_binary_artifacts/0", "not a debian:binary-package or debian:binary-packages or debian:upload"},
			{"lintian on a tarball", fmt.Sprintf(`{"input": {"binary_artifacts": [%d]}}`, env), "/task_data/input/binary_artifacts/0", "is a debian:system-tarball artifact"},
		} {
			t.Run(c.name, func(t *testing.T) {
				task := "sbuild"
				if strings.HasPrefix(c.name, "lintian") {
					task = "lintian"
				}
				_, err := b.user.CreateWorkRequest(b.ctx, schemas.WorkRequestCreate{TaskName: task, TaskData: []byte(c.data)})
				var pe *client.ProblemError
				require.ErrorAs(t, err, &pe)
				require.Equal(t, 400, pe.Problem.Status)
				require.Contains(t, pe.Problem.ValidationErrors, c.pointer, "problem: %+v", pe.Problem)
				require.Contains(t, strings.Join(pe.Problem.ValidationErrors[c.pointer], " "), c.message)
			})
		}
	})
}

func TestSbuildWaitsForAWorkerWithSbuild(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		b.startWorker("no-sbuild", 1, schemas.Metadata{"sbuild:available": false})
		source := b.placeholder("debian:source-package", "hello_1.0.dsc")
		wr := b.create(b.user, "sbuild", sbuildData(source, b.placeholder("debian:system-tarball", "system.tar.zst")))
		b.waitFor("the waiting reason", func() bool {
			got := b.get(wr.ID)
			return strings.Contains(got.WaitingReason, "sbuild is not installed")
		})
		require.Equal(t, schemas.StatusPending, b.get(wr.ID).Status)
	})
}
