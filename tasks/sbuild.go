package tasks

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/kiln-ci/kiln/debpkg"
	"github.com/kiln-ci/kiln/schemas"
)

// Metadata keys of the sbuild task.
const (
	KeySbuildAvailable = "sbuild:available"
	// KeyUnshareProblem (Kiln) says why executor:unshare:available is
	// false, so that a waiting request can tell its user.
	KeyUnshareProblem = "kiln:unshare_problem"
)

// Sbuild builds a Debian source package with sbuild in unshare mode inside
// a build environment tarball, as debusine's sbuild task does. The build
// runs as the worker's unprivileged build user, in a PID namespace of its
// own when the worker is root, so that an abort leaves nothing behind.
type Sbuild struct{}

// Name implements Task.
func (Sbuild) Name() string { return "sbuild" }

// Version implements Task.
func (Sbuild) Version() int { return 1 }

// Type implements Task.
func (Sbuild) Type() Type { return TypeWorker }

// AnalyzeWorker implements Task: sbuild:available and whether the build
// user can build in unshare mode.
func (Sbuild) AnalyzeWorker(ctx context.Context, host Host) schemas.Metadata {
	md := schemas.Metadata{KeySbuildAvailable: commandAvailable("sbuild")}
	unshareMetadata(ctx, host, md)
	return md
}

// unshareMetadata adds executor:unshare:available (and, when false, why).
func unshareMetadata(ctx context.Context, host Host, md schemas.Metadata) {
	err := unshareAvailable(ctx, host)
	md[KeyUnshareAvailable] = err == nil
	if err != nil {
		md[KeyUnshareProblem] = err.Error()
	}
}

type sbuildData struct {
	Input struct {
		SourceArtifact       int64   `json:"source_artifact"`
		ExtraBinaryArtifacts []int64 `json:"extra_binary_artifacts"`
	} `json:"input"`
	HostArchitecture  string   `json:"host_architecture"`
	Environment       int64    `json:"environment"`
	BuildComponents   []string `json:"build_components"`
	BuildProfiles     []string `json:"build_profiles"`
	BuildDepResolver  string   `json:"build_dep_resolver"`
	AspcudCriteria    string   `json:"aspcud_criteria"`
	UpdateEnvironment bool     `json:"update_environment"`
	Binnmu            *struct {
		Changelog  string     `json:"changelog"`
		Suffix     string     `json:"suffix"`
		Timestamp  *time.Time `json:"timestamp"`
		Maintainer string     `json:"maintainer"`
	} `json:"binnmu"`
	ExtraRepositories []struct {
		URL        string   `json:"url"`
		Suite      string   `json:"suite"`
		Components []string `json:"components"`
		SigningKey string   `json:"signing_key"`
	} `json:"extra_repositories"`
}

func parseSbuildData(data json.RawMessage) (sbuildData, error) {
	var d sbuildData
	if err := json.Unmarshal(data, &d); err != nil {
		return d, fmt.Errorf("sbuild task data: %w", err)
	}
	if len(d.BuildComponents) == 0 {
		d.BuildComponents = []string{"any"}
	}
	if d.Binnmu != nil && slices.Contains(d.BuildComponents, "all") {
		return d, errors.New("sbuild task data: a binNMU cannot build architecture-independent packages (build_components has all)")
	}
	return d, nil
}

// Requirements implements Task: the host architecture.
func (Sbuild) Requirements(data json.RawMessage) (Requirements, error) {
	d, err := parseSbuildData(data)
	if err != nil {
		return Requirements{}, err
	}
	return Requirements{HostArchitecture: d.HostArchitecture}, nil
}

// CanRunOn implements Task: the base rules, sbuild installed and unshare
// builds possible.
func (s Sbuild) CanRunOn(req Requirements, md schemas.Metadata) error {
	if err := BaseCanRunOn(s, req, md); err != nil {
		return err
	}
	if MetaString(md, KeySbuildAvailable) != "true" {
		return refuse("sbuild is not installed on the worker (%s is not true)", KeySbuildAvailable)
	}
	return requireUnshare(md)
}

func requireUnshare(md schemas.Metadata) error {
	if MetaString(md, KeyUnshareAvailable) == "true" {
		return nil
	}
	if why := MetaString(md, KeyUnshareProblem); why != "" {
		return refuse("the worker cannot build in unshare mode (%s is false: %s)", KeyUnshareAvailable, why)
	}
	return refuse("the worker cannot build in unshare mode (%s is not true)", KeyUnshareAvailable)
}

// Execute implements Task.
func (Sbuild) Execute(ctx context.Context, data json.RawMessage, env Env) (schemas.Result, error) {
	d, err := parseSbuildData(data)
	if err != nil {
		return schemas.ResultError, err
	}
	if env.Artifacts == nil {
		return schemas.ResultError, errors.New("sbuild needs the artifact store")
	}
	run := &sbuildRun{d: d}
	defer run.cleanup(env)
	return RunProgram(ctx, env, run)
}

// sbuildRun is one build: its inputs, its scratch directory and the files
// it produced.
type sbuildRun struct {
	d      sbuildData
	user   buildUser
	source schemas.Artifact
	// dsc is the .dsc's name in the source artifact.
	dsc string
	// codename is the environment's distribution.
	codename  string
	tarball   string
	release   func()
	extraDebs []string
	// scratch is the run's scratch directory: build/ (sbuild's build
	// directory, its results), tmp/ (the unpacked environment), extra/.
	scratch string
}

func (r *sbuildRun) buildDir() string { return filepath.Join(r.scratch, "build") }
func (r *sbuildRun) tmpDir() string   { return filepath.Join(r.scratch, "tmp") }

func (r *sbuildRun) cleanup(env Env) {
	if r.release != nil {
		r.release()
	}
	if r.scratch != "" {
		if err := removeTree(r.scratch); err != nil {
			env.Logger.Warn().Err(err).Msg("scratch directory left behind")
		}
	}
}

// FetchInput implements Program: the source package, the extra binary
// packages, and the environment tarball from the worker's cache.
func (r *sbuildRun) FetchInput(ctx context.Context, env Env, dir string) ([]int64, error) {
	a := env.Artifacts
	ins := r.d.inputs()
	src, err := getInput(ctx, a, ins[0])
	if err != nil {
		return nil, err
	}
	for name := range src.Files {
		if strings.HasSuffix(name, ".dsc") {
			r.dsc = name
		}
	}
	if r.dsc == "" {
		return nil, fmt.Errorf("source package artifact %d has no .dsc file", src.ID)
	}
	r.source = src
	if err := a.Download(ctx, src.ID, dir); err != nil {
		return nil, err
	}

	envArt, err := getInput(ctx, a, ins[1])
	if err != nil {
		return nil, err
	}
	r.codename = dataString(envArt, "codename")
	if r.codename == "" {
		return nil, fmt.Errorf("environment artifact %d has no codename in its data", envArt.ID)
	}
	name := tarballName(envArt)
	if name == "" {
		return nil, fmt.Errorf("environment artifact %d holds no tarball", envArt.ID)
	}
	if r.tarball, r.release, err = a.Cached(ctx, envArt.ID, name); err != nil {
		return nil, err
	}

	ids := []int64{envArt.ID, src.ID}
	for _, in := range ins[2:] {
		id := in.ID
		art, err := getInput(ctx, a, in)
		if err != nil {
			return nil, err
		}
		sub := filepath.Join(dir, fmt.Sprintf("extra-%d", id))
		if err := a.Download(ctx, id, sub); err != nil {
			return nil, err
		}
		for name := range art.Files {
			if strings.HasSuffix(name, ".deb") || strings.HasSuffix(name, ".udeb") {
				r.extraDebs = append(r.extraDebs, filepath.Join(sub, name))
			}
		}
		ids = append(ids, id)
	}
	sort.Strings(r.extraDebs)
	return ids, nil
}

// getInput fetches an input artifact and checks its category.
func getInput(ctx context.Context, a Artifacts, in InputArtifact) (schemas.Artifact, error) {
	art, err := a.Get(ctx, in.ID)
	if err == nil {
		err = in.CheckCategory(art.Category)
	}
	if err != nil {
		return art, fmt.Errorf("%s: %w", in.Field(), err)
	}
	return art, nil
}

// Categories of the sbuild task's inputs.
var (
	sbuildSourceCategories      = []string{debpkg.CategorySourcePackage}
	sbuildEnvironmentCategories = []string{debpkg.CategorySystemTarball}
	sbuildExtraCategories       = []string{debpkg.CategoryBinaryPackage, debpkg.CategoryBinaryPackages, debpkg.CategoryUpload}
)

// InputArtifacts implements Inputs.
func (Sbuild) InputArtifacts(data json.RawMessage) ([]InputArtifact, error) {
	d, err := parseSbuildData(data)
	if err != nil {
		return nil, err
	}
	return d.inputs(), nil
}

func (d sbuildData) inputs() []InputArtifact {
	ins := []InputArtifact{
		{Pointer: "/input/source_artifact", ID: d.Input.SourceArtifact, Categories: sbuildSourceCategories},
		{Pointer: "/environment", ID: d.Environment, Categories: sbuildEnvironmentCategories},
	}
	for i, id := range d.Input.ExtraBinaryArtifacts {
		ins = append(ins, InputArtifact{Pointer: fmt.Sprintf("/input/extra_binary_artifacts/%d", i), ID: id, Categories: sbuildExtraCategories})
	}
	return ins
}

// dataString returns a string field of an artifact's data, or "".
func dataString(a schemas.Artifact, key string) string {
	var data map[string]any
	if json.Unmarshal(a.Data, &data) != nil {
		return ""
	}
	s, _ := data[key].(string)
	return s
}

// tarballName returns the name of a system tarball artifact's tarball.
func tarballName(a schemas.Artifact) string {
	if name := dataString(a, "filename"); name != "" {
		if _, ok := a.Files[name]; ok {
			return name
		}
	}
	for name := range a.Files {
		if strings.Contains(name, ".tar") {
			return name
		}
	}
	return ""
}

// Configure implements Program: the scratch directory, owned by the build
// user, with the source package, the extra packages and sbuild's config.
func (r *sbuildRun) Configure(_ context.Context, env Env, dir string) error {
	u, err := lookupBuildUser(env.Host)
	if err != nil {
		return err
	}
	r.user = u
	if r.scratch, err = scratchDir(env.Host, env, u); err != nil {
		return err
	}
	owned := []string{}
	for _, d := range []string{r.buildDir(), r.tmpDir(), filepath.Join(r.scratch, "extra")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("scratch directory: %w", err)
		}
		owned = append(owned, d)
	}
	for name := range r.source.Files {
		dst := filepath.Join(r.buildDir(), name)
		if err := copyFile(filepath.Join(dir, name), dst); err != nil {
			return err
		}
		owned = append(owned, dst)
	}
	for i, deb := range r.extraDebs {
		dst := filepath.Join(r.scratch, "extra", filepath.Base(deb))
		if err := copyFile(deb, dst); err != nil {
			return err
		}
		r.extraDebs[i] = dst
		owned = append(owned, dst)
	}
	for i, repo := range r.d.ExtraRepositories {
		if repo.SigningKey == "" {
			continue
		}
		key := filepath.Join(r.scratch, fmt.Sprintf("extra-repository-%d.asc", i))
		if err := os.WriteFile(key, []byte(repo.SigningKey), 0o644); err != nil {
			return err
		}
	}
	// sbuild unpacks the environment under /tmp unless told otherwise;
	// keeping it in the run's scratch directory puts it on the admin's
	// chosen disk and lets the finalizer find what a killed build left.
	rc := fmt.Sprintf("$unshare_tmpdir_template = '%s';\n$build_dir = '%s';\n1;\n",
		perlQuote(filepath.Join(r.tmpDir(), "tmp.sbuild.XXXXXXXXXX")), perlQuote(r.buildDir()))
	if err := os.WriteFile(filepath.Join(r.scratch, "sbuildrc"), []byte(rc), 0o644); err != nil {
		return err
	}
	return u.chown(owned...)
}

func perlQuote(s string) string {
	return strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s)
}

// CommandLine implements Program.
func (r *sbuildRun) CommandLine(env Env, _, _ string) ([]string, error) {
	d := r.d
	argv := []string{"sbuild",
		"--chroot-mode=unshare", "--chroot=" + r.tarball, "--dist=" + r.codename,
		"--chroot-setup-commands=rm -f /etc/resolv.conf",
		"--arch=" + d.HostArchitecture, "--build-dir=" + r.buildDir(),
		"--no-run-lintian", "--no-run-piuparts", "--no-run-autopkgtest", "--purge-deps=never",
		"--bd-uninstallable-explainer=apt", "--verbose",
	}
	for _, c := range []struct{ component, yes, no string }{
		{"any", "--arch-any", "--no-arch-any"}, {"all", "--arch-all", "--no-arch-all"}, {"source", "--source", "--no-source"},
	} {
		if slices.Contains(d.BuildComponents, c.component) {
			argv = append(argv, c.yes)
		} else {
			argv = append(argv, c.no)
		}
	}
	switch {
	case d.UpdateEnvironment:
		argv = append(argv, "--apt-update", "--apt-distupgrade")
	case len(d.ExtraRepositories) > 0:
		argv = append(argv, "--apt-update", "--no-apt-upgrade", "--no-apt-distupgrade")
	default:
		argv = append(argv, "--no-apt-update", "--no-apt-upgrade", "--no-apt-distupgrade")
	}
	for i, repo := range d.ExtraRepositories {
		line := strings.Join(append([]string{"deb", repo.URL, repo.Suite}, repo.Components...), " ")
		argv = append(argv, "--extra-repository="+line)
		if repo.SigningKey != "" {
			argv = append(argv, "--extra-repository-key="+filepath.Join(r.scratch, fmt.Sprintf("extra-repository-%d.asc", i)))
		}
	}
	if b := d.Binnmu; b != nil {
		argv = append(argv, "--make-binNMU="+b.Changelog, "--append-to-version="+b.Suffix, "--binNMU=0")
		if b.Timestamp != nil {
			argv = append(argv, "--binNMU-timestamp="+b.Timestamp.Format(time.RFC1123Z))
		}
		maintainer := b.Maintainer
		if maintainer == "" {
			maintainer = "Kiln <noreply@kiln.invalid>"
		}
		argv = append(argv, "--maintainer="+maintainer)
	}
	if len(d.BuildProfiles) > 0 {
		argv = append(argv, "--profiles="+strings.Join(d.BuildProfiles, ","))
	}
	if d.BuildDepResolver != "" {
		argv = append(argv, "--build-dep-resolver="+d.BuildDepResolver)
	}
	if d.AspcudCriteria != "" {
		argv = append(argv, "--aspcud-criteria="+d.AspcudCriteria)
	}
	for _, deb := range r.extraDebs {
		argv = append(argv, "--extra-package="+deb)
	}
	argv = append(argv, filepath.Join(r.buildDir(), r.dsc))

	vars := []string{"SBUILD_CONFIG=" + filepath.Join(r.scratch, "sbuildrc"), "TMPDIR=" + r.tmpDir()}
	var opts []string
	for _, p := range d.BuildProfiles {
		if p == "nocheck" || p == "nodoc" {
			opts = append(opts, p)
		}
	}
	if len(opts) > 0 {
		vars = append(vars, "DEB_BUILD_OPTIONS="+strings.Join(opts, " "))
	}
	return inPIDNamespace(r.user.in(r.buildDir()).command(argv, vars...)), nil
}

// Finalize implements Finalizer: a build killed before sbuild could clean
// up leaves its unpacked environment behind.
func (r *sbuildRun) Finalize(context.Context, Env) error {
	if r.scratch == "" {
		return nil
	}
	return removeTree(r.tmpDir())
}

// CheckOutput implements Program.
func (r *sbuildRun) CheckOutput(Env, string) []string { return nil }

// Succeeded implements Program (Judge decides instead).
func (r *sbuildRun) Succeeded(exitCode int, execDir string) bool {
	res, _ := r.Judge(exitCode, execDir)
	return res == schemas.ResultSuccess
}

// Judge implements Judge from the exit code and the build log's status:
// successful is success; attempted (the build failed) and skipped are
// failure; given-back (the build could not be tried, mostly because its
// build dependencies cannot be installed) is error, with the reason.
func (r *sbuildRun) Judge(exitCode int, _ string) (schemas.Result, error) {
	log := r.buildLog()
	if log == "" {
		return schemas.ResultError, fmt.Errorf("sbuild exited with %d and wrote no build log", exitCode)
	}
	st, err := readBuildStatus(log)
	if err != nil {
		return schemas.ResultError, err
	}
	switch {
	case st.status == "successful" && exitCode == 0:
		return schemas.ResultSuccess, nil
	case st.status == "given-back":
		reason := "given-back"
		if st.failStage != "" {
			reason += " at " + st.failStage
		}
		if len(st.unsatisfied) > 0 {
			reason += ": " + strings.Join(st.unsatisfied, "; ")
		}
		return schemas.ResultError, errors.New(reason)
	case st.status == "":
		return schemas.ResultError, fmt.Errorf("sbuild exited with %d and its build log has no status", exitCode)
	}
	return schemas.ResultFailure, nil
}

// buildLog returns the path of the build log in the build directory (sbuild
// writes PKG_VERSION_ARCH-TIME.build and a PKG_VERSION_ARCH.build link to
// it), or "".
func (r *sbuildRun) buildLog() string {
	if r.scratch == "" {
		return ""
	}
	matches, _ := filepath.Glob(filepath.Join(r.buildDir(), "*.build"))
	sort.Strings(matches)
	for _, m := range matches {
		if fi, err := os.Lstat(m); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			return m
		}
	}
	if len(matches) > 0 {
		return matches[len(matches)-1]
	}
	return ""
}

type buildStatus struct {
	status, failStage string
	// unsatisfied holds apt's explanations of build dependencies it could
	// not install.
	unsatisfied []string
}

func readBuildStatus(path string) (buildStatus, error) {
	var st buildStatus
	f, err := os.Open(path)
	if err != nil {
		return st, fmt.Errorf("build log: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		switch {
		case strings.HasPrefix(line, "Status: "):
			st.status = strings.TrimSpace(strings.TrimPrefix(line, "Status: "))
		case strings.HasPrefix(line, "Fail-Stage: "):
			st.failStage = strings.TrimSpace(strings.TrimPrefix(line, "Fail-Stage: "))
		case strings.Contains(line, "Depends: ") && (strings.Contains(line, " but it is not installable") ||
			strings.Contains(line, " but it is not going to be installed") || strings.Contains(line, " but ") && strings.Contains(line, " is to be installed")):
			if msg := strings.TrimSpace(line); !slices.Contains(st.unsatisfied, msg) && len(st.unsatisfied) < 5 {
				st.unsatisfied = append(st.unsatisfied, msg)
			}
		}
	}
	if err := s.Err(); err != nil && !errors.Is(err, bufio.ErrTooLong) {
		return st, fmt.Errorf("build log: %w", err)
	}
	return st, nil
}

// Upload implements Program, as debusine's sbuild task: the build log
// always (relates-to the source); after a successful build also a
// binary-package artifact per .deb (built-using the source) and the upload
// (.changes with every file it lists) that extends and relates to them.
func (r *sbuildRun) Upload(ctx context.Context, env Env, _ string, succeeded bool) error {
	if r.scratch == "" {
		return nil
	}
	var binaries []int64
	if succeeded {
		debs, _ := filepath.Glob(filepath.Join(r.buildDir(), "*.deb"))
		udebs, _ := filepath.Glob(filepath.Join(r.buildDir(), "*.udeb"))
		debs = append(debs, udebs...)
		sort.Strings(debs)
		for _, deb := range debs {
			art, err := debpkg.BinaryPackage(deb)
			if err == nil {
				err = regularFiles(art.Files)
			}
			if err != nil {
				return err
			}
			id, err := env.Artifacts.Upload(ctx, NewArtifact{Category: art.Category, Data: art.Data, Files: art.Files,
				Relations: []Relation{{Type: schemas.RelationBuiltUsing, Target: r.source.ID}}})
			if err != nil {
				return err
			}
			binaries = append(binaries, id)
		}
	}
	if log := r.buildLog(); log != "" {
		name, version := dataString(r.source, "name"), dataString(r.source, "version")
		art, err := debpkg.PackageBuildLog(log, name, version, r.buildArchitecture())
		if err != nil {
			return err
		}
		// The log's name is sbuild's link; upload the file it names, which
		// must be next to it.
		for n, path := range art.Files {
			if target, err := os.Readlink(path); err == nil && !strings.Contains(target, "/") {
				art.Files[n] = filepath.Join(filepath.Dir(path), target)
			}
		}
		if err := regularFiles(art.Files); err != nil {
			return err
		}
		if _, err := env.Artifacts.Upload(ctx, NewArtifact{Category: art.Category, Data: art.Data, Files: art.Files,
			RelatesTo: append([]int64{r.source.ID}, binaries...)}); err != nil {
			return err
		}
	}
	if !succeeded {
		return nil
	}
	changes, _ := filepath.Glob(filepath.Join(r.buildDir(), "*.changes"))
	if len(changes) == 0 {
		return errors.New("the build succeeded but left no .changes file")
	}
	art, err := debpkg.Upload(changes[0])
	if err == nil {
		err = regularFiles(art.Files)
	}
	if err != nil {
		return err
	}
	var rels []Relation
	for _, id := range binaries {
		rels = append(rels, Relation{Type: schemas.RelationExtends, Target: id}, Relation{Type: schemas.RelationRelatesTo, Target: id})
	}
	_, err = env.Artifacts.Upload(ctx, NewArtifact{Category: art.Category, Data: art.Data, Files: art.Files, Relations: rels})
	return err
}

// buildArchitecture is what the build log is for, as debusine names it.
func (r *sbuildRun) buildArchitecture() string {
	switch {
	case len(r.d.BuildComponents) == 1 && r.d.BuildComponents[0] == "all":
		return "all"
	case len(r.d.BuildComponents) == 1 && r.d.BuildComponents[0] == "source":
		return "source"
	}
	return r.d.HostArchitecture
}
