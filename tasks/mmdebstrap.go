package tasks

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/kiln-ci/kiln/deb822"
	"github.com/kiln-ci/kiln/debpkg"
	"github.com/kiln-ci/kiln/schemas"
)

// KeyMmdebstrapAvailable says whether mmdebstrap is installed.
const KeyMmdebstrapAvailable = "mmdebstrap:available"

// AptSources is the worker's apt sources file that the mmdebstrap task
// uses when the request names no repositories: an environment comes from
// the mirror the machine already trusts, never from a hard-coded one.
var AptSources = []string{"/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"}

// tarballFile is the name of the tarball in a system-tarball artifact.
const tarballFile = "system.tar.zst"

// Mmdebstrap makes a build environment tarball (debian:system-tarball)
// with mmdebstrap in unshare mode, as debusine's mmdebstrap task does.
type Mmdebstrap struct{}

// Name implements Task.
func (Mmdebstrap) Name() string { return "mmdebstrap" }

// Version implements Task.
func (Mmdebstrap) Version() int { return 1 }

// Type implements Task.
func (Mmdebstrap) Type() Type { return TypeWorker }

// AnalyzeWorker implements Task.
func (Mmdebstrap) AnalyzeWorker(ctx context.Context, host Host) schemas.Metadata {
	md := schemas.Metadata{KeyMmdebstrapAvailable: commandAvailable("mmdebstrap")}
	unshareMetadata(ctx, host, md)
	return md
}

type mmdebstrapRepo struct {
	Mirror     string   `json:"mirror"`
	Suite      string   `json:"suite"`
	Types      []string `json:"types"`
	Components []string `json:"components"`
}

type mmdebstrapData struct {
	Options struct {
		Architecture  string   `json:"architecture"`
		Variant       string   `json:"variant"`
		ExtraPackages []string `json:"extra_packages"`
	} `json:"bootstrap_options"`
	Repositories []mmdebstrapRepo `json:"bootstrap_repositories"`
	Suite        string           `json:"suite"`
	KeepAptLists *bool            `json:"keep_apt_lists"`
}

func parseMmdebstrapData(data json.RawMessage) (mmdebstrapData, error) {
	var d mmdebstrapData
	if err := json.Unmarshal(data, &d); err != nil {
		return d, fmt.Errorf("mmdebstrap task data: %w", err)
	}
	if d.Options.Variant == "" {
		d.Options.Variant = "buildd"
	}
	if d.Options.ExtraPackages == nil && d.Options.Variant == "buildd" {
		d.Options.ExtraPackages = []string{"debhelper", "fakeroot"}
	}
	for i := range d.Repositories {
		if len(d.Repositories[i].Types) == 0 {
			d.Repositories[i].Types = []string{"deb"}
		}
		if len(d.Repositories[i].Components) == 0 {
			d.Repositories[i].Components = []string{"main"}
		}
	}
	if len(d.Repositories) > 0 {
		d.Suite = d.Repositories[0].Suite
	}
	if d.Suite == "" {
		return d, errors.New("mmdebstrap task data: give bootstrap_repositories or the suite to take from the worker's apt sources")
	}
	return d, nil
}

// Requirements implements Task: the environment's architecture must be
// one the worker runs.
func (Mmdebstrap) Requirements(data json.RawMessage) (Requirements, error) {
	d, err := parseMmdebstrapData(data)
	if err != nil {
		return Requirements{}, err
	}
	return Requirements{HostArchitecture: d.Options.Architecture}, nil
}

// CanRunOn implements Task.
func (m Mmdebstrap) CanRunOn(req Requirements, md schemas.Metadata) error {
	if err := BaseCanRunOn(m, req, md); err != nil {
		return err
	}
	if MetaString(md, KeyMmdebstrapAvailable) != "true" {
		return refuse("mmdebstrap is not installed on the worker (%s is not true)", KeyMmdebstrapAvailable)
	}
	return requireUnshare(md)
}

// Execute implements Task.
func (Mmdebstrap) Execute(ctx context.Context, data json.RawMessage, env Env) (schemas.Result, error) {
	d, err := parseMmdebstrapData(data)
	if err != nil {
		return schemas.ResultError, err
	}
	if env.Artifacts == nil {
		return schemas.ResultError, errors.New("mmdebstrap needs the artifact store")
	}
	run := &mmdebstrapRun{d: d}
	defer func() {
		if run.scratch != "" {
			if err := removeTree(run.scratch); err != nil {
				env.Logger.Warn().Err(err).Msg("scratch directory left behind")
			}
		}
	}()
	return RunProgram(ctx, env, run)
}

type mmdebstrapRun struct {
	d       mmdebstrapData
	user    buildUser
	scratch string
	// mirrors are mmdebstrap's mirror arguments; mirror and components
	// describe them in the artifact's data.
	mirrors    []string
	mirror     string
	components []string
}

func (r *mmdebstrapRun) tarball() string { return filepath.Join(r.scratch, "out", tarballFile) }

// FetchInput implements Program: mmdebstrap has no input artifacts.
func (r *mmdebstrapRun) FetchInput(context.Context, Env, string) ([]int64, error) { return nil, nil }

// Configure implements Program: the scratch directory and the sources.
func (r *mmdebstrapRun) Configure(_ context.Context, env Env, _ string) error {
	u, err := lookupBuildUser(env.Host)
	if err != nil {
		return err
	}
	r.user = u
	if r.scratch, err = scratchDir(env.Host, env, u); err != nil {
		return err
	}
	dirs := []string{filepath.Join(r.scratch, "out"), filepath.Join(r.scratch, "tmp")}
	for _, d := range dirs {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("scratch directory: %w", err)
		}
	}
	if err := u.chown(dirs...); err != nil {
		return err
	}
	return r.configureRepositories()
}

// configureRepositories sets mmdebstrap's mirror arguments: one per
// requested source line, or the worker's own sources file.
func (r *mmdebstrapRun) configureRepositories() error {
	if len(r.d.Repositories) > 0 {
		for _, repo := range r.d.Repositories {
			for _, t := range repo.Types {
				r.mirrors = append(r.mirrors, strings.Join(append([]string{t, repo.Mirror, repo.Suite}, repo.Components...), " "))
			}
		}
		r.mirror, r.components = r.d.Repositories[0].Mirror, r.d.Repositories[0].Components
		return nil
	}
	path, src, err := workerSources(r.d.Suite)
	if err != nil {
		return err
	}
	r.mirrors, r.mirror, r.components = []string{path}, src.uri, src.components
	return nil
}

// aptSource is one source of the worker's apt configuration.
type aptSource struct {
	uri        string
	suites     []string
	components []string
}

// workerSources finds the worker's apt sources file and the source in it
// that serves suite.
func workerSources(suite string) (string, aptSource, error) {
	for _, path := range AptSources {
		data, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", aptSource{}, fmt.Errorf("apt sources: %w", err)
		}
		sources, err := parseAptSources(path, data)
		if err != nil {
			return "", aptSource{}, err
		}
		var listed []string
		for _, s := range sources {
			if slices.Contains(s.suites, suite) {
				return path, s, nil
			}
			listed = append(listed, s.suites...)
		}
		return "", aptSource{}, fmt.Errorf("the worker's apt sources (%s) do not list suite %q (they list %s): give bootstrap_repositories", path, suite, strings.Join(listed, ", "))
	}
	return "", aptSource{}, fmt.Errorf("the worker has no apt sources file (%s): give bootstrap_repositories", strings.Join(AptSources, ", "))
}

// parseAptSources reads deb822 (.sources) or one-line (sources.list) apt
// sources; only "deb" sources count.
func parseAptSources(path string, data []byte) ([]aptSource, error) {
	var out []aptSource
	if strings.HasSuffix(path, ".sources") {
		// apt allows comment lines inside a stanza; deb822 does not.
		var kept bytes.Buffer
		for _, line := range strings.SplitAfter(string(data), "\n") {
			if !strings.HasPrefix(strings.TrimSpace(line), "#") || strings.TrimSpace(line) == "" {
				kept.WriteString(line)
			}
		}
		doc, err := deb822.Parse(&kept, path)
		if err != nil {
			return nil, err
		}
		for _, p := range doc.Paragraphs {
			if !slices.Contains(strings.Fields(p.Value("Types")), "deb") || strings.EqualFold(p.Value("Enabled"), "no") {
				continue
			}
			for _, uri := range strings.Fields(p.Value("URIs")) {
				out = append(out, aptSource{uri: uri, suites: strings.Fields(p.Value("Suites")), components: strings.Fields(p.Value("Components"))})
			}
		}
		return out, nil
	}
	s := bufio.NewScanner(bytes.NewReader(data))
	for s.Scan() {
		f := strings.Fields(s.Text())
		if len(f) > 0 && f[0] == "deb" {
			f = f[1:]
			if len(f) > 0 && strings.HasPrefix(f[0], "[") {
				for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
					f = f[1:]
				}
				if len(f) > 0 {
					f = f[1:]
				}
			}
			if len(f) >= 2 {
				out = append(out, aptSource{uri: f[0], suites: []string{f[1]}, components: f[2:]})
			}
		}
	}
	return out, s.Err()
}

// CommandLine implements Program.
func (r *mmdebstrapRun) CommandLine(Env, string, string) ([]string, error) {
	o := r.d.Options
	argv := []string{"mmdebstrap", "--mode=unshare", "--variant=" + o.Variant, "--architectures=" + o.Architecture}
	if len(o.ExtraPackages) > 0 {
		argv = append(argv, "--include="+strings.Join(o.ExtraPackages, ","))
	}
	if r.d.KeepAptLists == nil || *r.d.KeepAptLists {
		argv = append(argv, "--skip=cleanup/apt/lists")
	}
	argv = append(argv, r.d.Suite, r.tarball())
	argv = append(argv, r.mirrors...)
	return inPIDNamespace(r.user.in(r.scratch).command(argv, "TMPDIR="+filepath.Join(r.scratch, "tmp"))), nil
}

// Finalize implements Finalizer: what a killed mmdebstrap left in its
// temporary directory goes.
func (r *mmdebstrapRun) Finalize(context.Context, Env) error {
	if r.scratch == "" {
		return nil
	}
	return removeTree(filepath.Join(r.scratch, "tmp"))
}

// CheckOutput implements Program.
func (r *mmdebstrapRun) CheckOutput(Env, string) []string { return nil }

// Succeeded implements Program: mmdebstrap exited 0 and wrote the tarball.
func (r *mmdebstrapRun) Succeeded(exitCode int, _ string) bool {
	fi, err := os.Stat(r.tarball())
	return exitCode == 0 && err == nil && fi.Size() > 0
}

// Upload implements Program: the tarball as a debian:system-tarball, with
// debusine's data (codename, mirror, variant, package list…).
func (r *mmdebstrapRun) Upload(ctx context.Context, env Env, _ string, succeeded bool) error {
	if !succeeded {
		return nil
	}
	pkgs, err := tarballPackages(ctx, r.tarball())
	if err != nil {
		return err
	}
	_, withInit := pkgs["init"]
	data := map[string]any{
		"filename": tarballFile, "vendor": "debian", "codename": r.d.Suite, "suite": r.d.Suite,
		"mirror": r.mirror, "components": r.components, "variant": r.d.Options.Variant,
		"pkglist": pkgs, "architecture": r.d.Options.Architecture, "with_dev": true, "with_init": withInit,
	}
	_, err = env.Artifacts.Upload(ctx, NewArtifact{Category: debpkg.CategorySystemTarball, Data: data,
		Files: map[string]string{tarballFile: r.tarball()}})
	return err
}

// tarballPackages reads the installed packages and their versions from the
// dpkg status file inside a tarball.
func tarballPackages(ctx context.Context, tarball string) (map[string]string, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "tar", "--zstd", "-xOf", tarball, "./var/lib/dpkg/status")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("read the package list of %s: %w: %s", tarball, err, strings.TrimSpace(stderr.String()))
	}
	doc, err := deb822.Parse(bytes.NewReader(out), "var/lib/dpkg/status")
	if err != nil {
		return nil, err
	}
	pkgs := map[string]string{}
	for _, p := range doc.Paragraphs {
		if strings.HasSuffix(p.Value("Status"), " installed") {
			pkgs[p.Value("Package")] = p.Value("Version")
		}
	}
	return pkgs, nil
}
