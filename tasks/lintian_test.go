package tasks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
)

func TestLintianSchema(t *testing.T) {
	r := NewRegistry()
	r.MustRegister(Lintian{})
	cases := []struct {
		name, data string
		valid      bool
		pointer    string // a JSON pointer the error names, if any
	}{
		{"source only", `{"input": {"source_artifact": 3}}`, true, ""},
		{"binaries only", `{"input": {"binary_artifacts": [4, 5]}}`, true, ""},
		{"everything", `{"input": {"source_artifact": 3, "binary_artifacts": [4]}, "include_tags": ["no-copyright-file"],
			"exclude_tags": ["no-manual-page", "debian-watch-file-is-missing"], "fail_on_severity": "warning",
			"target_distribution": "debian:trixie", "timeout": 600}`, true, ""},
		{"fail on none", `{"input": {"source_artifact": 3}, "fail_on_severity": "none"}`, true, ""},
		{"no input", `{"fail_on_severity": "error"}`, false, ""},
		{"empty input", `{"input": {}}`, false, "/input"},
		{"empty binaries", `{"input": {"binary_artifacts": []}}`, false, "/input/binary_artifacts"},
		{"lookup string", `{"input": {"source_artifact": "internal@collections/x"}}`, false, "/input/source_artifact"},
		{"unknown field", `{"input": {"source_artifact": 3}, "output": {}}`, false, ""},
		{"unknown input field", `{"input": {"source_artifact": 3, "environment": 9}}`, false, "/input"},
		{"bad severity", `{"input": {"source_artifact": 3}, "fail_on_severity": "classification"}`, false, "/fail_on_severity"},
		{"tag with a comma", `{"input": {"source_artifact": 3}, "include_tags": ["a,b"]}`, false, "/include_tags/0"},
		{"zero timeout", `{"input": {"source_artifact": 3}, "timeout": 0}`, false, "/timeout"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := r.Validate("lintian", json.RawMessage(c.data))
			if c.valid {
				require.NoError(t, err)
				return
			}
			var ve *ValidationError
			require.ErrorAs(t, err, &ve)
			if c.pointer != "" {
				var ptrs []string
				for _, p := range ve.Problems {
					ptrs = append(ptrs, p.Pointer)
				}
				require.Contains(t, ptrs, c.pointer, err.Error())
			}
		})
	}
}

func TestLintianIdentity(t *testing.T) {
	var l Task = Lintian{}
	require.Equal(t, "lintian", l.Name())
	require.Equal(t, 1, l.Version())
	require.Equal(t, TypeWorker, l.Type())
	md := l.AnalyzeWorker(t.Context(), Host{})
	require.Equal(t, schemas.Metadata{KeyLintianAvailable: commandAvailable("lintian")}, md)
	req, err := l.Requirements(json.RawMessage(`{"input": {"source_artifact": 3}}`))
	require.NoError(t, err)
	require.Equal(t, Requirements{}, req)
	_, err = l.Requirements(json.RawMessage(`{"input": 3}`))
	require.Error(t, err)
}

func TestLintianCanRunOn(t *testing.T) {
	base := func(available any) schemas.Metadata {
		md := schemas.Metadata{KeyWorkerType: "external", "lintian:version": float64(1)}
		if available != nil {
			md[KeyLintianAvailable] = available
		}
		return md
	}
	require.NoError(t, Lintian{}.CanRunOn(Requirements{}, base(true)))
	for _, c := range []struct {
		name      string
		available any
		says      string
	}{
		{"not installed", false, "lintian is not installed on the worker (lintian:available is false)"},
		{"not reported", nil, "lintian is not installed on the worker (lintian:available not reported)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := Lintian{}.CanRunOn(Requirements{}, base(c.available))
			require.ErrorIs(t, err, ErrCannotRun)
			require.Contains(t, err.Error(), c.says)
		})
	}
	// The base rules come first.
	md := base(true)
	md["lintian:version"] = float64(2)
	err := Lintian{}.CanRunOn(Requirements{}, md)
	require.ErrorIs(t, err, ErrCannotRun)
	require.Contains(t, err.Error(), "lintian:version 2")
}

func TestParseLintianLine(t *testing.T) {
	cases := []struct {
		line string
		want lintianTag
		ok   bool
	}{
		{"E: hello-kiln: no-copyright-file\n",
			lintianTag{Severity: "error", Package: "hello-kiln", Tag: "no-copyright-file"}, true},
		{"E: hello-kiln: no-changelog usr/share/doc/hello-kiln/changelog.Debian.gz (non-native package)",
			lintianTag{Severity: "error", Package: "hello-kiln", Tag: "no-changelog", Info: "usr/share/doc/hello-kiln/changelog.Debian.gz (non-native package)"}, true},
		{"W: hello-kiln: no-manual-page [usr/bin/hello-kiln]",
			lintianTag{Severity: "warning", Package: "hello-kiln", Tag: "no-manual-page", Info: "[usr/bin/hello-kiln]"}, true},
		{"W: hello-kiln source: recommended-field (in section for source) Priority [debian/control:1]",
			lintianTag{Severity: "warning", Package: "hello-kiln", Type: "source", Tag: "recommended-field", Info: "(in section for source) Priority [debian/control:1]"}, true},
		{"I: hello-kiln: extended-description-is-probably-too-short",
			lintianTag{Severity: "info", Package: "hello-kiln", Tag: "extended-description-is-probably-too-short"}, true},
		{"P: hello-kiln source: silent-on-rules-requiring-root [debian/control]",
			lintianTag{Severity: "pedantic", Package: "hello-kiln", Type: "source", Tag: "silent-on-rules-requiring-root", Info: "[debian/control]"}, true},
		{"X: libfoo1: shared-library-lacks-prerequisites [usr/lib/x86_64-linux-gnu/libfoo.so.1]",
			lintianTag{Severity: "experimental", Package: "libfoo1", Tag: "shared-library-lacks-prerequisites", Info: "[usr/lib/x86_64-linux-gnu/libfoo.so.1]"}, true},
		{"O: hello-kiln source: no-debian-copyright-in-source",
			lintianTag{Severity: "overridden", Package: "hello-kiln", Type: "source", Tag: "no-debian-copyright-in-source"}, true},
		{`C: hello-kiln: mail-contact Maintainer "Kiln Tests" <kiln@example.org>`,
			lintianTag{Severity: "classification", Package: "hello-kiln", Tag: "mail-contact", Info: `Maintainer "Kiln Tests" <kiln@example.org>`}, true},
		{`C: hello-kiln: trimmed-field Description test package for kiln\n A tiny package.`,
			lintianTag{Severity: "classification", Package: "hello-kiln", Tag: "trimmed-field", Info: `Description test package for kiln\n A tiny package.`}, true},
		{"C: hello-kiln source: trimmed-deb822-field §1 Source hello-kiln [debian/control:1]",
			lintianTag{Severity: "classification", Package: "hello-kiln", Type: "source", Tag: "trimmed-deb822-field", Info: "§1 Source hello-kiln [debian/control:1]"}, true},
		{"E: hello-kiln changes: bad-distribution-in-changes-file foo",
			lintianTag{Severity: "error", Package: "hello-kiln", Type: "changes", Tag: "bad-distribution-in-changes-file", Info: "foo"}, true},
		{"W: hello-kiln-udeb udeb: udeb-uses-non-gzip-data-tarball",
			lintianTag{Severity: "warning", Package: "hello-kiln-udeb", Type: "udeb", Tag: "udeb-uses-non-gzip-data-tarball"}, true},
		{"E: hello-kiln buildinfo: changelog-file-missing-in-native-package",
			lintianTag{Severity: "error", Package: "hello-kiln", Type: "buildinfo", Tag: "changelog-file-missing-in-native-package"}, true},
		{"W: hello (1:2.10-3) [amd64]: hardening-no-fortify-functions [usr/bin/hello]",
			lintianTag{Severity: "warning", Package: "hello", Version: "1:2.10-3", Architecture: "amd64", Tag: "hardening-no-fortify-functions", Info: "[usr/bin/hello]"}, true},
		{"W: hello source (2.10-3): ancient-standards-version 3.9.8",
			lintianTag{Severity: "warning", Package: "hello", Type: "source", Version: "2.10-3", Tag: "ancient-standards-version", Info: "3.9.8"}, true},
		{"E: hello-kiln: no-copyright-file\r\n",
			lintianTag{Severity: "error", Package: "hello-kiln", Tag: "no-copyright-file"}, true},
		// Not tags.
		{"N:", lintianTag{}, false},
		{"N: ", lintianTag{}, false},
		{"N:   Each binary package has to include a plain file", lintianTag{}, false},
		{"N: Using profile debian/main.", lintianTag{}, false},
		{"M: hello-kiln: no-manual-page [usr/bin/hello-kiln]", lintianTag{}, false},
		{"W: package-uses-deprecated-debhelper-compat-version", lintianTag{}, false},
		{"running with root privileges is not recommended!", lintianTag{}, false},
		{"Skipping in/12/bad_1_all.deb: Non-zero status 2 from tar --wildcards -xO -f - *control:", lintianTag{}, false},
		{"dpkg-deb: error: 'bad.deb' is not a Debian format archive", lintianTag{}, false},
		{"E: hello-kiln bogus: no-copyright-file", lintianTag{}, false},
		{"E: hello-kiln: ", lintianTag{}, false},
		{"E:hello: x", lintianTag{}, false},
		{"", lintianTag{}, false},
	}
	for _, c := range cases {
		t.Run(c.line, func(t *testing.T) {
			got, ok := parseLintianLine(c.line)
			require.Equal(t, c.ok, ok)
			require.Equal(t, c.want, got)
		})
	}
}

// lintianSample is lintian 2.116's output (--info --show-overrides) for a
// source package with an override and a binary package.
const lintianSample = `N:
E: hello-kiln: no-copyright-file
N: 
N:   Each binary package has to include a plain file
N:   /usr/share/doc/*pkg*/copyright
N: 
N:   Visibility: error
N: 
W: hello-kiln source: recommended-field (in section for source) Priority [debian/control:1]
N:
W: hello-kiln: no-manual-page [usr/bin/hello-kiln]
W: hello-kiln: no-manual-page [usr/bin/hello-kiln2]
N:
C: hello-kiln: trimmed-field Architecture all
N:
N: the copyright is in the upstream tarball
O: hello-kiln source: no-debian-copyright-in-source
`

func TestParseLintianOutput(t *testing.T) {
	for _, text := range []string{lintianSample, strings.TrimSuffix(lintianSample, "\n")} {
		tags, err := parseLintianOutput(strings.NewReader(text))
		require.NoError(t, err)
		var got []string
		for _, tg := range tags {
			got = append(got, tg.Severity+" "+tg.Tag)
		}
		require.Equal(t, []string{"error no-copyright-file", "warning recommended-field", "warning no-manual-page",
			"warning no-manual-page", "classification trimmed-field", "overridden no-debian-copyright-in-source"}, got)
	}

	s := lintianSummarize(mustParseLintian(t, lintianSample))
	require.Equal(t, map[string]int{"error": 1, "warning": 3, "info": 0, "pedantic": 0, "experimental": 0, "overridden": 1, "classification": 1},
		s.TagsCountBySeverity)
	require.Equal(t, []string{"no-copyright-file", "no-manual-page", "recommended-field", "trimmed-field"}, s.TagsFound)
	require.Equal(t, []string{"no-debian-copyright-in-source"}, s.OverriddenTagsFound)
	empty := lintianSummarize(nil)
	b, err := json.Marshal(empty)
	require.NoError(t, err)
	require.Contains(t, string(b), `"tags_found":[],"overridden_tags_found":[]`)
}

func mustParseLintian(t *testing.T, text string) []lintianTag {
	t.Helper()
	tags, err := parseLintianOutput(strings.NewReader(text))
	require.NoError(t, err)
	return tags
}

func TestLintianFails(t *testing.T) {
	tagsOf := func(severities ...string) []lintianTag {
		var out []lintianTag
		for _, s := range severities {
			out = append(out, lintianTag{Severity: s, Package: "p", Tag: "t"})
		}
		return out
	}
	cases := []struct {
		tags   []string
		failOn string
		fails  bool
	}{
		{nil, "error", false},
		{[]string{"error"}, "error", true},
		{[]string{"warning", "info"}, "error", false},
		{[]string{"warning"}, "warning", true},
		{[]string{"error"}, "warning", true},
		{[]string{"info"}, "warning", false},
		{[]string{"info"}, "info", true},
		{[]string{"pedantic"}, "info", false},
		{[]string{"pedantic"}, "pedantic", true},
		{[]string{"experimental"}, "pedantic", false},
		{[]string{"experimental"}, "experimental", true},
		{[]string{"overridden"}, "experimental", false},
		{[]string{"overridden"}, "overridden", true},
		{[]string{"classification"}, "overridden", false},
		{[]string{"error", "warning"}, "none", false},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%v on %s", c.tags, c.failOn), func(t *testing.T) {
			require.Equal(t, c.fails, lintianFails(tagsOf(c.tags...), c.failOn))
		})
	}
}

func TestParseLintianData(t *testing.T) {
	d, err := parseLintianData(json.RawMessage(`{"input": {"binary_artifacts": [4]}}`))
	require.NoError(t, err)
	require.Equal(t, "error", d.FailOnSeverity)
	require.Equal(t, "debian:unstable", d.TargetDistribution)
	_, err = parseLintianData(json.RawMessage(`{"input": {}}`))
	require.ErrorContains(t, err, "source_artifact or binary_artifacts")
	_, err = parseLintianData(json.RawMessage(`{"input": {"source_artifact": 1}, "fail_on_severity": "fatal"}`))
	require.ErrorContains(t, err, "fail_on_severity")
}

// TestLintianJudge decides from prepared outputs, without lintian.
func TestLintianJudge(t *testing.T) {
	judge := func(t *testing.T, failOn, output string, exitCode int) (*lintianProgram, schemas.Result, error) {
		p := &lintianProgram{data: LintianData{FailOnSeverity: failOn}, scratch: t.TempDir()}
		if output != "" {
			require.NoError(t, os.WriteFile(filepath.Join(p.scratch, LintianOutputFile), []byte(output), 0o644))
		}
		execDir := t.TempDir()
		res, err := p.Judge(exitCode, execDir)
		return p, res, err
	}
	cases := []struct {
		failOn string
		result schemas.Result
	}{
		{"error", schemas.ResultFailure},
		{"warning", schemas.ResultFailure},
		{"overridden", schemas.ResultFailure},
		{"none", schemas.ResultSuccess},
	}
	for _, c := range cases {
		t.Run(c.failOn, func(t *testing.T) {
			p, res, err := judge(t, c.failOn, lintianSample, 0)
			require.NoError(t, err)
			require.Equal(t, c.result, res)
			require.True(t, p.judged)
			require.Len(t, p.tags, 6)
		})
	}
	t.Run("only warnings", func(t *testing.T) {
		_, res, err := judge(t, "error", "W: hello-kiln: no-manual-page [usr/bin/hello-kiln]\n", 0)
		require.NoError(t, err)
		require.Equal(t, schemas.ResultSuccess, res)
	})
	t.Run("lintian failed", func(t *testing.T) {
		out := "E: other: tag\ndpkg-deb: error: 'in/12/bad.deb' is not a Debian format archive\n" +
			"Skipping in/12/bad.deb: Non-zero status 2 from tar --wildcards -xO -f - *control:\n" +
			"tar: This does not look like a tar archive\ntar: Exiting with failure status due to previous errors\n" +
			" at /usr/share/lintian/bin/../lib/Lintian/Processable/Installable.pm line 119.\n" +
			"\tmain::create_processable_from_file(\"in/12/bad.deb\") called at /bin/lintian line 719\n\nNo packages selected.\n"
		p, res, err := judge(t, "error", out, 1)
		require.Equal(t, schemas.ResultError, res)
		require.EqualError(t, err, "lintian failed with exit code 1: dpkg-deb: error: 'in/12/bad.deb' is not a Debian format archive / "+
			"Skipping in/12/bad.deb: Non-zero status 2 from tar --wildcards -xO -f - *control: / tar: This does not look like a tar archive / "+
			"tar: Exiting with failure status due to previous errors / No packages selected.")
		require.False(t, p.judged)
	})
	t.Run("lintian failed silently", func(t *testing.T) {
		_, res, err := judge(t, "error", "\n", 255)
		require.Equal(t, schemas.ResultError, res)
		require.EqualError(t, err, "lintian failed with exit code 255: (no output)")
	})
	t.Run("only indented lines", func(t *testing.T) {
		_, _, err := judge(t, "error", "\tat x line 1\n\tat y line 2\n", 2)
		require.EqualError(t, err, "lintian failed with exit code 2: at x line 1 / at y line 2")
	})
	t.Run("no output", func(t *testing.T) {
		p, res, err := judge(t, "error", "", 127)
		require.Equal(t, schemas.ResultError, res)
		require.ErrorContains(t, err, "lintian (exit code 127) left no output")
		require.False(t, p.judged)
	})
	t.Run("output is a link", func(t *testing.T) {
		p := &lintianProgram{data: LintianData{FailOnSeverity: "error"}, scratch: t.TempDir()}
		secret := filepath.Join(t.TempDir(), "secret")
		require.NoError(t, os.WriteFile(secret, []byte("E: x: y\n"), 0o600))
		require.NoError(t, os.Symlink(secret, filepath.Join(p.scratch, LintianOutputFile)))
		res, err := p.Judge(0, t.TempDir())
		require.Equal(t, schemas.ResultError, res)
		require.Error(t, err)
	})
}

func TestLintianCommandLine(t *testing.T) {
	p := &lintianProgram{
		data:    LintianData{IncludeTags: []string{"a", "b"}, ExcludeTags: []string{"c"}},
		user:    buildUser{name: "u", home: "/home/u"}.in("/scratch/kiln-run-1-1"),
		scratch: "/scratch/kiln-run-1-1",
		targets: []string{"3/hello_1.0.dsc", "4/hello_1.0_all.deb"},
	}
	argv, err := p.CommandLine(Env{}, "", "")
	require.NoError(t, err)
	line := shellJoin(argv)
	require.True(t, strings.HasPrefix(line, "env --chdir=/scratch/kiln-run-1-1 HOME=/home/u USER=u LOGNAME=u PATH="), line)
	require.Contains(t, line, " TMPDIR=/scratch/kiln-run-1-1/tmp bash -c 'set -o pipefail; lintian \"$@\" 2>&1 | tee lintian.txt' lintian ")
	require.True(t, strings.HasSuffix(line, ` lintian --no-cfg --fail-on none --display-level '>=classification' --display-experimental --info --show-overrides`+
		` --tags=a,b --suppress-tags=c in/3/hello_1.0.dsc in/4/hello_1.0_all.deb`), line)
	p.user.drop, p.user.uid, p.user.gid = true, 999, 995
	argv, err = p.CommandLine(Env{}, "", "")
	require.NoError(t, err)
	require.Equal(t, []string{"setpriv", "--reuid=999", "--regid=995"}, argv[:3])
	p.targets = nil
	_, err = p.CommandLine(Env{}, "", "")
	require.Error(t, err)
}

// fakeLintianArtifacts serves artifacts from local files and records
// uploads.
type fakeLintianArtifacts struct {
	mu        sync.Mutex
	artifacts map[int64]fakeLintianArtifact
	uploads   []fakeLintianUpload
}

type fakeLintianArtifact struct {
	category string
	files    map[string]string // artifact path -> local file
}

type fakeLintianUpload struct {
	NewArtifact
	data     map[string]any    // Data after a JSON round trip
	contents map[string]string // file contents at upload time
}

func (f *fakeLintianArtifacts) Get(_ context.Context, id int64) (schemas.Artifact, error) {
	a, ok := f.artifacts[id]
	if !ok {
		return schemas.Artifact{}, fmt.Errorf("artifact %d: not found", id)
	}
	files := map[string]schemas.ArtifactFile{}
	for name, local := range a.files {
		fi, err := os.Stat(local)
		if err != nil {
			return schemas.Artifact{}, err
		}
		files[name] = schemas.ArtifactFile{Size: fi.Size(), Complete: true}
	}
	return schemas.Artifact{ID: id, Category: a.category, Data: json.RawMessage(`{}`), Files: files}, nil
}

func (f *fakeLintianArtifacts) Download(_ context.Context, id int64, dir string) error {
	a, ok := f.artifacts[id]
	if !ok {
		return fmt.Errorf("artifact %d: not found", id)
	}
	for name, local := range a.files {
		dst := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := copyFile(local, dst); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeLintianArtifacts) Cached(context.Context, int64, string) (string, func(), error) {
	return "", nil, errors.New("no cache in this test")
}

func (f *fakeLintianArtifacts) Upload(_ context.Context, a NewArtifact) (int64, error) {
	b, err := json.Marshal(a.Data)
	if err != nil {
		return 0, err
	}
	u := fakeLintianUpload{NewArtifact: a, contents: map[string]string{}}
	if err := json.Unmarshal(b, &u.data); err != nil {
		return 0, err
	}
	for name, local := range a.Files {
		c, err := os.ReadFile(local)
		if err != nil {
			return 0, err
		}
		u.contents[name] = string(c)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.uploads = append(f.uploads, u)
	return int64(1000 + len(f.uploads)), nil
}

func (f *fakeLintianArtifacts) byCategory(category string) []fakeLintianUpload {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fakeLintianUpload
	for _, u := range f.uploads {
		if u.Category == category {
			out = append(out, u)
		}
	}
	return out
}

func TestLintianFetchInputCategories(t *testing.T) {
	dir := t.TempDir()
	deb := filepath.Join(dir, "x_1_all.deb")
	require.NoError(t, os.WriteFile(deb, []byte("x"), 0o644))
	arts := &fakeLintianArtifacts{artifacts: map[int64]fakeLintianArtifact{
		7: {category: "debian:binary-package", files: map[string]string{"x_1_all.deb": deb}},
		8: {category: "debian:package-build-log", files: map[string]string{"x.build": deb}},
		9: {category: "debian:source-package", files: map[string]string{"x_1.tar.xz": deb}},
	}}
	env := Env{Artifacts: arts, Output: &bytes.Buffer{}, Logger: zerolog.Nop()}
	src := func(id int64) LintianInput { return LintianInput{SourceArtifact: &id} }
	cases := []struct {
		name  string
		input LintianInput
		err   string
	}{
		{"binary as source", src(7), "input.source_artifact: artifact 7 is a debian:binary-package artifact, not a debian:source-package or debian:upload"},
		{"log as binary", LintianInput{BinaryArtifacts: []int64{7, 8}}, "input.binary_artifacts[1]: artifact 8 is a debian:package-build-log artifact, not a debian:binary-package or debian:binary-packages or debian:upload"},
		{"source without a .dsc", src(9), "input.source_artifact: artifact 9 (debian:source-package) has no .dsc file to check"},
		{"missing", LintianInput{BinaryArtifacts: []int64{70}}, "input.binary_artifacts[0]: artifact 70: not found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := &lintianProgram{data: LintianData{Input: c.input}}
			in := t.TempDir()
			_, err := p.FetchInput(t.Context(), env, in)
			require.EqualError(t, err, c.err)
			entries, err := os.ReadDir(in)
			require.NoError(t, err)
			require.Empty(t, entries, "nothing is downloaded before every input is checked")
		})
	}
	t.Run("twice the same", func(t *testing.T) {
		p := &lintianProgram{data: LintianData{Input: LintianInput{BinaryArtifacts: []int64{7, 7}}}}
		in := t.TempDir()
		ids, err := p.FetchInput(t.Context(), env, in)
		require.NoError(t, err)
		require.Equal(t, []int64{7}, ids)
		require.Equal(t, []string{"7/x_1_all.deb"}, p.targets)
		require.FileExists(t, filepath.Join(in, "7", "x_1_all.deb"))
	})
}

// lintianMissing skips the test, or fails it under KILN_REQUIRE_ALL=1.
func lintianMissing(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("KILN_REQUIRE_ALL") == "1" {
		t.Fatalf(format+" (and KILN_REQUIRE_ALL=1)", args...)
	}
	t.Skipf(format+" (set KILN_REQUIRE_ALL=1 to fail instead)", args...)
}

// lintianHost returns the Host for real runs: as root, the kiln-build user,
// and a scratch directory it can reach.
func lintianHost(t *testing.T) Host {
	t.Helper()
	for _, prog := range []string{"lintian", "dpkg-deb", "dpkg-source", "bash", "tee"} {
		if !commandAvailable(prog) {
			lintianMissing(t, "%s is not installed", prog)
		}
	}
	var host Host
	if os.Geteuid() == 0 {
		if _, err := user.Lookup("kiln-build"); err != nil {
			lintianMissing(t, "running as root without the build user kiln-build: %v", err)
		}
		if !commandAvailable("setpriv") {
			lintianMissing(t, "setpriv is not installed")
		}
		host.BuildUser = "kiln-build"
	}
	scratch, err := os.MkdirTemp(os.TempDir(), "kiln-lintian-test-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(scratch) })
	require.NoError(t, os.Chmod(scratch, 0o755))
	host.ScratchDir = scratch
	return host
}

// buildLintianPackages builds hello-kiln as a native source package and a
// binary package with an override each, and returns the directory holding
// hello-kiln_1.0.dsc, hello-kiln_1.0.tar.xz and hello-kiln_1.0_all.deb.
func buildLintianPackages(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	write := func(rel, content string, mode os.FileMode) {
		p := filepath.Join(dir, rel)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content), mode))
	}
	write("src/hello-kiln-1.0/debian/source/format", "3.0 (native)\n", 0o644)
	write("src/hello-kiln-1.0/debian/source/lintian-overrides", "hello-kiln source: no-debian-copyright-in-source\n", 0o644)
	write("src/hello-kiln-1.0/debian/control", `Source: hello-kiln
Maintainer: Kiln Tests <kiln@example.org>
Standards-Version: 4.6.2

Package: hello-kiln
Architecture: all
Description: test package for kiln
 A tiny package.
`, 0o644)
	write("src/hello-kiln-1.0/debian/changelog", `hello-kiln (1.0) unstable; urgency=medium

  * Initial release.

 -- Kiln Tests <kiln@example.org>  Mon, 01 Jan 2024 00:00:00 +0000
`, 0o644)
	write("pkg/DEBIAN/control", `Package: hello-kiln
Version: 1.0
Architecture: all
Maintainer: Kiln Tests <kiln@example.org>
Description: test package for kiln
 A tiny package.
`, 0o644)
	write("pkg/usr/bin/hello-kiln", "#!/bin/sh\necho hello\n", 0o755)
	write("pkg/usr/share/lintian/overrides/hello-kiln", "hello-kiln: no-manual-page [usr/bin/hello-kiln]\n", 0o644)
	run := func(dir string, argv ...string) {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s: %s", strings.Join(argv, " "), out)
	}
	run(filepath.Join(dir, "src"), "dpkg-source", "-b", "hello-kiln-1.0")
	run(dir, "dpkg-deb", "--root-owner-group", "--build", "pkg", "hello-kiln_1.0_all.deb")
	for _, f := range []string{"hello-kiln_1.0.dsc", "hello-kiln_1.0.tar.xz"} {
		require.NoError(t, os.Rename(filepath.Join(dir, "src", f), filepath.Join(dir, f)))
	}
	return dir
}

func TestLintianRun(t *testing.T) {
	host := lintianHost(t)
	pkgs := buildLintianPackages(t)
	garbage := filepath.Join(t.TempDir(), "broken_1_all.deb")
	require.NoError(t, os.WriteFile(garbage, []byte("not a deb\n"), 0o644))
	version, err := exec.Command("lintian", "--print-version").Output()
	require.NoError(t, err)

	setup := func(t *testing.T, wr int64) (Env, *fakeLintianArtifacts, *strings.Builder) {
		arts := &fakeLintianArtifacts{artifacts: map[int64]fakeLintianArtifact{
			11: {category: "debian:source-package", files: map[string]string{
				"hello-kiln_1.0.dsc":    filepath.Join(pkgs, "hello-kiln_1.0.dsc"),
				"hello-kiln_1.0.tar.xz": filepath.Join(pkgs, "hello-kiln_1.0.tar.xz"),
			}},
			12: {category: "debian:binary-package", files: map[string]string{
				"hello-kiln_1.0_all.deb": filepath.Join(pkgs, "hello-kiln_1.0_all.deb"),
			}},
			13: {category: "debian:binary-package", files: map[string]string{"broken_1_all.deb": garbage}},
		}}
		out := &strings.Builder{} // read only after the run has ended
		env := Env{WorkRequestID: wr, Attempt: 1, Output: out, Logger: zerolog.Nop(), WorkDir: t.TempDir(),
			Grace: time.Second, CgroupParent: testCgroupParent(t), Artifacts: arts, Host: host}
		return env, arts, out
	}
	scratchLeft := func(t *testing.T) {
		entries, err := os.ReadDir(host.ScratchDir)
		require.NoError(t, err)
		require.Empty(t, entries, "the scratch directory of the run is removed")
	}

	t.Run("source and binary", func(t *testing.T) {
		env, arts, out := setup(t, 9001)
		res, err := Lintian{}.Execute(t.Context(), json.RawMessage(`{"input": {"source_artifact": 11, "binary_artifacts": [12]}}`), env)
		require.NoError(t, err, out.String())
		require.Equal(t, schemas.ResultFailure, res, "no-copyright-file is an error: %s", out.String())
		require.Contains(t, out.String(), "E: hello-kiln: no-copyright-file\n")
		require.Contains(t, out.String(), "O: hello-kiln: no-manual-page [usr/bin/hello-kiln]\n")
		require.NotContains(t, out.String(), "running with root privileges", "lintian runs as the build user")
		scratchLeft(t)

		ups := arts.byCategory(LintianArtifactCategory)
		require.Len(t, ups, 1)
		up := ups[0]
		require.Equal(t, []int64{11, 12}, up.RelatesTo)
		require.Equal(t, []string{LintianOutputFile}, lintianKeys(up.contents))
		require.Contains(t, up.contents[LintianOutputFile], "E: hello-kiln: no-copyright-file\n")
		require.Contains(t, up.contents[LintianOutputFile], "\nN:   Each binary package has to include a plain file\n", "--info explains the tags")

		summary := up.data["summary"].(map[string]any)
		counts := summary["tags_count_by_severity"].(map[string]any)
		require.Len(t, counts, 7)
		require.GreaterOrEqual(t, counts["error"], float64(1))
		require.GreaterOrEqual(t, counts["overridden"], float64(2))
		require.GreaterOrEqual(t, counts["classification"], float64(1))
		require.Contains(t, summary["tags_found"], "no-copyright-file")
		require.NotContains(t, summary["tags_found"], "no-manual-page")
		require.ElementsMatch(t, []any{"no-debian-copyright-in-source", "no-manual-page"}, summary["overridden_tags_found"])
		require.Equal(t, map[string]any{"hello-kiln": "hello-kiln_1.0_all.deb", "hello-kiln source": "hello-kiln_1.0.dsc"}, summary["package_filename"])
		require.Equal(t, strings.TrimSpace(string(version)), summary["lintian_version"])
		require.Equal(t, "debian:unstable", summary["distribution"])

		logs := arts.byCategory(DebugLogsCategory)
		require.Len(t, logs, 1)
		require.Equal(t, []int64{11, 12}, logs[0].RelatesTo)
		require.Contains(t, logs[0].contents[CmdOutputLog], "returncode: 0\n")
	})

	t.Run("only some tags", func(t *testing.T) {
		env, arts, out := setup(t, 9002)
		res, err := Lintian{}.Execute(t.Context(), json.RawMessage(`{"input": {"binary_artifacts": [12]},
			"exclude_tags": ["no-copyright-file", "no-changelog"], "fail_on_severity": "error", "target_distribution": "debian:trixie"}`), env)
		require.NoError(t, err, out.String())
		require.Equal(t, schemas.ResultSuccess, res, out.String())
		require.NotContains(t, out.String(), "no-copyright-file")
		ups := arts.byCategory(LintianArtifactCategory)
		require.Len(t, ups, 1)
		summary := ups[0].data["summary"].(map[string]any)
		require.Equal(t, float64(0), summary["tags_count_by_severity"].(map[string]any)["error"])
		require.Equal(t, "debian:trixie", summary["distribution"])
		require.Equal(t, []int64{12}, ups[0].RelatesTo)
		scratchLeft(t)
	})

	t.Run("broken package", func(t *testing.T) {
		env, arts, out := setup(t, 9003)
		res, err := Lintian{}.Execute(t.Context(), json.RawMessage(`{"input": {"binary_artifacts": [13]}}`), env)
		require.Equal(t, schemas.ResultError, res)
		require.ErrorContains(t, err, "lintian failed with exit code ")
		require.ErrorContains(t, err, "Skipping in/13/broken_1_all.deb: ")
		require.Empty(t, arts.byCategory(LintianArtifactCategory), "no artifact when lintian did not run to its end")
		require.Len(t, arts.byCategory(DebugLogsCategory), 1)
		require.Contains(t, out.String(), "no debian:lintian artifact")
		scratchLeft(t)
	})
}

func lintianKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
