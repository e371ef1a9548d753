package tasks

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-ci/kiln/deb822"
	"github.com/kiln-ci/kiln/debpkg"
	"github.com/kiln-ci/kiln/schemas"
)

// Lintian runs lintian on source packages, uploads and binary packages, as
// debusine's lintian task does, and uploads its output as a debian:lintian
// artifact with debusine's summary. lintian runs on the worker's machine as
// the build user (see Host). The zero value is ready to use.
type Lintian struct{}

// LintianData is the lintian task's task_data.
type LintianData struct {
	Input LintianInput `json:"input"`
	// IncludeTags restricts the check to these tags (lintian --tags).
	IncludeTags []string `json:"include_tags,omitempty"`
	// ExcludeTags suppresses these tags (lintian --suppress-tags).
	ExcludeTags []string `json:"exclude_tags,omitempty"`
	// FailOnSeverity makes the request fail when a tag of this severity or
	// a higher one is found: error (the default), warning, info, pedantic,
	// experimental, overridden, or none (never fail).
	FailOnSeverity string `json:"fail_on_severity,omitempty"`
	// TargetDistribution is recorded in the artifact's summary
	// (default debian:unstable).
	TargetDistribution string  `json:"target_distribution,omitempty"`
	Timeout            float64 `json:"timeout,omitempty"`
}

// LintianInput names the artifacts to check; at least one must be given.
type LintianInput struct {
	// SourceArtifact is a debian:source-package or debian:upload artifact.
	SourceArtifact *int64 `json:"source_artifact,omitempty"`
	// BinaryArtifacts are debian:binary-package, debian:binary-packages or
	// debian:upload artifacts.
	BinaryArtifacts []int64 `json:"binary_artifacts,omitempty"`
}

// KeyLintianAvailable is the worker metadata key saying that lintian is
// installed on the worker.
const KeyLintianAvailable = "lintian:available"

// LintianArtifactCategory is the category of the artifact the lintian task
// uploads.
const LintianArtifactCategory = debpkg.CategoryLintian

// LintianOutputFile is the name of lintian's output in the debian:lintian
// artifact.
const LintianOutputFile = "lintian.txt"

// Defaults of LintianData.
const (
	defaultLintianFailOn       = "error"
	defaultLintianDistribution = "debian:unstable"
)

// lintianSeverities are the severities of lintian's tags from the highest
// to the lowest, as debusine ranks them; classification tags never make a
// request fail.
var lintianSeverities = []string{"error", "warning", "info", "pedantic", "experimental", "overridden", "classification"}

// lintianCodes maps the letter that starts an output line to its severity.
// M (masked) and N (notes) are not tags a user sees.
var lintianCodes = map[byte]string{
	'E': "error", 'W': "warning", 'I': "info", 'P': "pedantic",
	'X': "experimental", 'O': "overridden", 'C': "classification",
}

// lintianHelperTimeout bounds the small commands run before lintian
// (lintian --print-version, dpkg-deb --field).
const lintianHelperTimeout = time.Minute

// lintianTailLines is how many lines of lintian's output an error quotes.
const lintianTailLines = 5

// Name implements Task.
func (Lintian) Name() string { return "lintian" }

// Version implements Task.
func (Lintian) Version() int { return 1 }

// Type implements Task.
func (Lintian) Type() Type { return TypeWorker }

// AnalyzeWorker implements Task: lintian:available says whether lintian is
// in the worker's PATH.
func (Lintian) AnalyzeWorker(context.Context, Host) schemas.Metadata {
	return schemas.Metadata{KeyLintianAvailable: commandAvailable("lintian")}
}

// Requirements implements Task; lintian needs nothing from a worker but
// lintian itself, which CanRunOn checks.
func (Lintian) Requirements(data json.RawMessage) (Requirements, error) {
	var d LintianData
	if err := json.Unmarshal(data, &d); err != nil {
		return Requirements{}, fmt.Errorf("lintian task data: %w", err)
	}
	return Requirements{}, nil
}

// CanRunOn implements Task: the base rules, and lintian:available.
func (l Lintian) CanRunOn(req Requirements, md schemas.Metadata) error {
	if err := BaseCanRunOn(l, req, md); err != nil {
		return err
	}
	if got := MetaString(md, KeyLintianAvailable); got != "true" {
		if got == "" {
			got = "not reported"
		} else {
			got = "is " + got
		}
		return refuse("lintian is not installed on the worker (%s %s)", KeyLintianAvailable, got)
	}
	return nil
}

// Execute implements Task.
func (Lintian) Execute(ctx context.Context, data json.RawMessage, env Env) (schemas.Result, error) {
	d, err := parseLintianData(data)
	if err != nil {
		return schemas.ResultError, err
	}
	p := &lintianProgram{data: d}
	defer func() {
		if p.scratch == "" {
			return
		}
		if err := removeTree(p.scratch); err != nil {
			env.Logger.Warn().Err(err).Str("dir", p.scratch).Msg("scratch directory not removed")
		}
	}()
	return RunProgram(ctx, env, p)
}

// parseLintianData decodes task data and fills in the defaults.
func parseLintianData(data json.RawMessage) (LintianData, error) {
	var d LintianData
	if err := json.Unmarshal(data, &d); err != nil {
		return d, fmt.Errorf("lintian task data: %w", err)
	}
	if d.Input.SourceArtifact == nil && len(d.Input.BinaryArtifacts) == 0 {
		return d, errors.New("lintian task data: input needs source_artifact or binary_artifacts")
	}
	if d.FailOnSeverity == "" {
		d.FailOnSeverity = defaultLintianFailOn
	}
	if d.FailOnSeverity != "none" && (!slices.Contains(lintianSeverities, d.FailOnSeverity) || d.FailOnSeverity == "classification") {
		return d, fmt.Errorf("lintian task data: unknown fail_on_severity %q", d.FailOnSeverity)
	}
	if d.TargetDistribution == "" {
		d.TargetDistribution = defaultLintianDistribution
	}
	return d, nil
}

// InputArtifacts implements Inputs.
func (Lintian) InputArtifacts(data json.RawMessage) ([]InputArtifact, error) {
	d, err := parseLintianData(data)
	if err != nil {
		return nil, err
	}
	return d.inputs(), nil
}

func (d LintianData) inputs() []InputArtifact {
	var ins []InputArtifact
	if id := d.Input.SourceArtifact; id != nil {
		ins = append(ins, InputArtifact{Pointer: "/input/source_artifact", ID: *id, Categories: lintianSourceCategories})
	}
	for i, id := range d.Input.BinaryArtifacts {
		ins = append(ins, InputArtifact{Pointer: fmt.Sprintf("/input/binary_artifacts/%d", i), ID: id, Categories: lintianBinaryCategories})
	}
	return ins
}

// lintianProgram is one run of the lintian task, RunProgram's Program.
type lintianProgram struct {
	data LintianData
	user buildUser
	// inputs are the input artifacts' ids, in task-data order.
	inputs []int64
	// targets are what lintian checks (.dsc, .changes, .deb, .udeb), as
	// paths relative to the input directory and to scratch/in.
	targets []string
	// inputFiles are all the input files, relative to the input directory.
	inputFiles []string
	// scratch is the build user's directory of this run; lintian runs in
	// it and writes lintian.txt there.
	scratch string
	// version is lintian --print-version's.
	version string
	// packageFilename maps each package checked to its file, as the
	// summary's package_filename.
	packageFilename map[string]string
	// judged says that lintian ran to its end and its output was parsed
	// into tags; only then is there an artifact to upload.
	judged bool
	tags   []lintianTag
}

// Input categories each task-data field accepts, as debusine's.
var (
	lintianSourceCategories = []string{debpkg.CategorySourcePackage, debpkg.CategoryUpload}
	lintianBinaryCategories = []string{debpkg.CategoryBinaryPackage, debpkg.CategoryBinaryPackages, debpkg.CategoryUpload}
)

// FetchInput implements Program: each input artifact is downloaded into
// its own directory, dir/<id>, so that files of the same name in two
// artifacts do not collide.
func (p *lintianProgram) FetchInput(ctx context.Context, env Env, dir string) ([]int64, error) {
	if env.Artifacts == nil {
		return nil, errors.New("the worker gives this task no artifact access")
	}
	// Every input is checked before anything is downloaded.
	var arts []schemas.Artifact
	for _, in := range p.data.inputs() {
		a, err := getInput(ctx, env.Artifacts, in)
		if err != nil {
			return nil, err
		}
		if slices.Contains(p.inputs, in.ID) {
			continue // the same artifact twice: check it once
		}
		a.ID = in.ID
		targets, err := lintianTargets(a)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", in.Field(), err)
		}
		sub := strconv.FormatInt(in.ID, 10)
		for _, t := range targets {
			p.targets = append(p.targets, path.Join(sub, t))
		}
		for name := range a.Files {
			p.inputFiles = append(p.inputFiles, path.Join(sub, name))
		}
		p.inputs = append(p.inputs, in.ID)
		arts = append(arts, a)
	}
	for _, a := range arts {
		sub := filepath.Join(dir, strconv.FormatInt(a.ID, 10))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			return p.inputs, err
		}
		if err := env.Artifacts.Download(ctx, a.ID, sub); err != nil {
			return p.inputs, err
		}
	}
	slices.Sort(p.inputFiles)
	return p.inputs, nil
}

// lintianTargets returns the files of artifact a that lintian is given: the
// .dsc of a source package, the .changes of an upload (lintian then checks
// every file it lists), the .deb and .udeb files of binary packages.
func lintianTargets(a schemas.Artifact) ([]string, error) {
	var exts []string
	switch a.Category {
	case debpkg.CategorySourcePackage:
		exts = []string{".dsc"}
	case debpkg.CategoryUpload:
		exts = []string{".changes"}
	default:
		exts = []string{".deb", ".udeb"}
	}
	var out []string
	for name := range a.Files {
		if slices.Contains(exts, path.Ext(name)) {
			out = append(out, name)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("artifact %d (%s) has no %s file to check", a.ID, a.Category, strings.Join(exts, " or "))
	}
	slices.Sort(out)
	return out, nil
}

// Configure implements Program: the inputs are copied into a scratch
// directory of the build user's (the run's own directories are root's when
// the worker runs as root), and lintian's version and the names of the
// packages checked are read.
func (p *lintianProgram) Configure(ctx context.Context, env Env, dir string) error {
	u, err := lookupBuildUser(env.Host)
	if err != nil {
		return err
	}
	if p.scratch, err = scratchDir(env.Host, env, u); err != nil {
		return err
	}
	p.user = u.in(p.scratch)
	for _, sub := range []string{"in", "tmp"} {
		d := filepath.Join(p.scratch, sub)
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("scratch directory: %w", err)
		}
		if err := u.chown(d); err != nil {
			return err
		}
	}
	for _, rel := range p.inputFiles {
		if err := p.copyIn(filepath.Join(dir, filepath.FromSlash(rel)), rel); err != nil {
			return err
		}
	}
	out, err := p.helper(ctx, "lintian", "--print-version")
	if err != nil {
		return err
	}
	p.version = strings.TrimSpace(out)
	p.packageFilename = map[string]string{}
	for _, t := range p.targets {
		p.identify(ctx, env, t)
	}
	return nil
}

// copyIn copies src to scratch/in/rel, creating the directories on the way,
// everything owned by the build user.
func (p *lintianProgram) copyIn(src, rel string) error {
	in := filepath.Join(p.scratch, "in")
	dst := filepath.Join(in, filepath.FromSlash(rel))
	parent := filepath.Dir(dst)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("scratch directory: %w", err)
	}
	for d := parent; d != in; d = filepath.Dir(d) {
		if err := p.user.chown(d); err != nil {
			return err
		}
	}
	if err := copyFile(src, dst); err != nil {
		return fmt.Errorf("copy the input %s: %w", rel, err)
	}
	return p.user.chown(dst)
}

// helper runs a short command as the build user in the scratch directory
// and returns its standard output.
func (p *lintianProgram) helper(ctx context.Context, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, lintianHelperTimeout)
	defer cancel()
	full := p.user.command(argv)
	cmd := exec.CommandContext(ctx, full[0], full[1:]...)
	cmd.WaitDelay = time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w: %s", shellJoin(argv), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// identify records the package names of target (relative to scratch/in)
// in packageFilename: "NAME source" for a .dsc (as lintian names source
// packages), the package name for a .deb or .udeb, and those of the .dsc,
// .deb and .udeb files a .changes lists. A file that cannot be read is
// named after its file name, which lintian will then complain about.
func (p *lintianProgram) identify(ctx context.Context, env Env, target string) {
	local := filepath.Join(p.scratch, "in", filepath.FromSlash(target))
	if fi, err := os.Lstat(local); err != nil || !fi.Mode().IsRegular() {
		return // a file a .changes lists but the artifact lacks
	}
	base := path.Base(target)
	fallback := strings.SplitN(base, "_", 2)[0]
	switch path.Ext(target) {
	case ".dsc":
		name := fallback
		if doc, err := deb822.ParseFile(local); err == nil {
			if para, err := doc.Single(); err == nil && para.Value("Source") != "" {
				name = para.Value("Source")
			}
		}
		p.packageFilename[name+" source"] = base
	case ".deb", ".udeb":
		name := fallback
		out, err := p.helper(ctx, "dpkg-deb", "--field", local, "Package")
		if err == nil && strings.TrimSpace(out) != "" {
			name = strings.TrimSpace(out)
		} else {
			env.Logger.Debug().Err(err).Str("file", target).Msg("package name from the file name")
		}
		p.packageFilename[name] = base
	case ".changes":
		doc, err := deb822.ParseFile(local)
		if err != nil {
			return
		}
		para, err := doc.Single()
		if err != nil {
			return
		}
		files, err := deb822.ParseFilesField(para.Value("Files"))
		if err != nil {
			return
		}
		for _, f := range files {
			switch path.Ext(f.Name) {
			case ".dsc", ".deb", ".udeb":
				p.identify(ctx, env, path.Join(path.Dir(target), f.Name))
			}
		}
	}
}

// CommandLine implements Program: lintian runs as the build user in the
// scratch directory, its output (stdout and stderr) going both to the
// run's output and to lintian.txt, through bash for its pipefail.
// --fail-on none makes lintian's exit code 0 whatever it finds, so that
// any other code is lintian's own failure (since lintian 2.77, 1 is a
// run-time error and 2 a --fail-on condition; a die() exits with errno).
func (p *lintianProgram) CommandLine(Env, string, string) ([]string, error) {
	if len(p.targets) == 0 {
		return nil, errors.New("nothing to check")
	}
	args := []string{"--no-cfg", "--fail-on", "none",
		"--display-level", ">=classification", "--display-experimental", "--info", "--show-overrides"}
	if len(p.data.IncludeTags) > 0 {
		args = append(args, "--tags="+strings.Join(p.data.IncludeTags, ","))
	}
	if len(p.data.ExcludeTags) > 0 {
		args = append(args, "--suppress-tags="+strings.Join(p.data.ExcludeTags, ","))
	}
	for _, t := range p.targets {
		args = append(args, path.Join("in", t))
	}
	const script = `set -o pipefail; lintian "$@" 2>&1 | tee ` + LintianOutputFile
	argv := append([]string{"bash", "-c", script, "lintian"}, args...)
	return p.user.command(argv, "TMPDIR="+filepath.Join(p.scratch, "tmp")), nil
}

// Judge implements Judge: lintian's output is copied into execDir (out of
// the build user's reach) and parsed; tags of fail_on_severity or higher
// make a failure. An exit code other than 0 is lintian's own failure, an
// error whose reason quotes the end of its output.
func (p *lintianProgram) Judge(exitCode int, execDir string) (schemas.Result, error) {
	p.judged, p.tags = false, nil
	saved := filepath.Join(execDir, LintianOutputFile)
	if err := copyFile(filepath.Join(p.scratch, LintianOutputFile), saved); err != nil {
		return schemas.ResultError, fmt.Errorf("lintian (exit code %d) left no output: %w", exitCode, err)
	}
	if exitCode != 0 {
		tail, _ := lastLines(saved, lintianTailLines)
		return schemas.ResultError, fmt.Errorf("lintian failed with exit code %d: %s", exitCode, tail)
	}
	f, err := os.Open(saved)
	if err != nil {
		return schemas.ResultError, err
	}
	defer f.Close()
	tags, err := parseLintianOutput(f)
	if err != nil {
		return schemas.ResultError, fmt.Errorf("read lintian's output: %w", err)
	}
	p.judged, p.tags = true, tags
	if lintianFails(tags, p.data.FailOnSeverity) {
		return schemas.ResultFailure, nil
	}
	return schemas.ResultSuccess, nil
}

// Succeeded implements Program; Judge decides in its place.
func (p *lintianProgram) Succeeded(exitCode int, execDir string) bool {
	r, _ := p.Judge(exitCode, execDir)
	return r == schemas.ResultSuccess
}

// CheckOutput implements Program: a lintian that ran to its end left its
// output.
func (p *lintianProgram) CheckOutput(_ Env, execDir string) []string {
	if !p.judged {
		return nil // lintian did not run to its end: Judge said why
	}
	if _, err := os.Stat(filepath.Join(execDir, LintianOutputFile)); err != nil {
		return []string{LintianOutputFile + " not in " + execDir}
	}
	return nil
}

// Upload implements Program: the debian:lintian artifact, whatever lintian
// found, when lintian ran to its end.
func (p *lintianProgram) Upload(ctx context.Context, env Env, execDir string, _ bool) error {
	if !p.judged {
		fmt.Fprintln(env.Output, "kiln: lintian did not run to its end: no debian:lintian artifact")
		return nil
	}
	summary := lintianSummarize(p.tags)
	summary.PackageFilename = p.packageFilename
	if summary.PackageFilename == nil {
		summary.PackageFilename = map[string]string{}
	}
	summary.LintianVersion = p.version
	summary.Distribution = p.data.TargetDistribution
	_, err := env.Artifacts.Upload(ctx, NewArtifact{
		Category:  LintianArtifactCategory,
		Data:      map[string]any{"summary": summary},
		Files:     map[string]string{LintianOutputFile: filepath.Join(execDir, LintianOutputFile)},
		RelatesTo: p.inputs,
	})
	return err
}

// lastLines returns the last n non-empty lines of the file, joined by
// " / ", for an error message. Indented lines (the continuation of a
// message, such as Perl's stack traces) are left out when others remain.
func lastLines(file string, n int) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	const window = 64 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > window {
		if _, err := f.Seek(fi.Size()-window, io.SeekStart); err != nil {
			return "", err
		}
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return "", err
	}
	var all, unindented []string
	for l := range strings.SplitSeq(string(b), "\n") {
		trimmed := strings.TrimSpace(l)
		if trimmed == "" {
			continue
		}
		all = append(all, trimmed)
		if trimmed[0] == l[0] {
			unindented = append(unindented, trimmed)
		}
	}
	lines := unindented
	if len(lines) == 0 {
		lines = all
	}
	if len(lines) == 0 {
		return "(no output)", nil
	}
	return strings.Join(lines[max(0, len(lines)-n):], " / "), nil
}

// lintianTag is one tag line of lintian's output.
type lintianTag struct {
	// Severity is the long name: error, warning, … classification.
	Severity string
	Package  string
	// Type is the package type lintian names after the package: "" for a
	// binary package, else source, udeb, changes or buildinfo.
	Type string
	// Version and Architecture are "" unless the line gives them, as
	// "(version)" and "[arch]" after the package.
	Version, Architecture string
	// Tag is the tag's name.
	Tag string
	// Info is the rest of the line: the tag's context, often ending in a
	// [pointer] to a file.
	Info string
}

// parseLintianLine parses one line of lintian's EWI output,
// "E: package[ type][ (version)][ [arch]]: tag-name[ info]"; ok is false
// for what is not a tag a user sees: notes ("N:"), masked tags ("M:"),
// older lintian's bare "W: tag-name" lines, and messages of other tools.
func parseLintianLine(line string) (tag lintianTag, ok bool) {
	line = strings.TrimRight(line, "\r\n")
	if len(line) < 4 || line[1] != ':' || line[2] != ' ' {
		return tag, false
	}
	severity, known := lintianCodes[line[0]]
	if !known {
		return tag, false
	}
	head, body, found := strings.Cut(line[3:], ": ")
	if !found {
		return tag, false
	}
	words := strings.Fields(head)
	if len(words) == 0 || strings.ContainsAny(words[0], "()[]") {
		return tag, false
	}
	tag = lintianTag{Severity: severity, Package: words[0]}
	for _, w := range words[1:] {
		switch {
		case len(w) > 2 && w[0] == '(' && w[len(w)-1] == ')' && tag.Version == "":
			tag.Version = w[1 : len(w)-1]
		case len(w) > 2 && w[0] == '[' && w[len(w)-1] == ']' && tag.Architecture == "":
			tag.Architecture = w[1 : len(w)-1]
		case tag.Type == "" && tag.Version == "" && tag.Architecture == "" &&
			slices.Contains([]string{"source", "binary", "udeb", "changes", "buildinfo"}, w):
			if w != "binary" {
				tag.Type = w
			}
		default:
			return lintianTag{}, false
		}
	}
	name, info, _ := strings.Cut(strings.TrimLeft(body, " "), " ")
	if name == "" {
		return lintianTag{}, false
	}
	tag.Tag, tag.Info = name, strings.TrimSpace(info)
	return tag, true
}

// parseLintianOutput returns the tags in lintian's output, skipping
// everything else.
func parseLintianOutput(r io.Reader) ([]lintianTag, error) {
	var tags []lintianTag
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		if t, ok := parseLintianLine(line); ok {
			tags = append(tags, t)
		}
		if errors.Is(err, io.EOF) {
			return tags, nil
		}
		if err != nil {
			return tags, err
		}
	}
}

// lintianRank returns how severe a severity is: higher is more severe,
// -1 for one that is not lintian's.
func lintianRank(severity string) int {
	i := slices.Index(lintianSeverities, severity)
	if i < 0 {
		return -1
	}
	return len(lintianSeverities) - i
}

// lintianFails reports whether tags hold one of severity failOn or a more
// severe one; failOn "none" never fails.
func lintianFails(tags []lintianTag, failOn string) bool {
	threshold := lintianRank(failOn)
	if failOn == "none" || threshold < 0 {
		return false
	}
	for _, t := range tags {
		if lintianRank(t.Severity) >= threshold {
			return true
		}
	}
	return false
}

// lintianSummary is debusine's DebianLintianSummary, the "summary" of a
// debian:lintian artifact's data.
type lintianSummary struct {
	TagsCountBySeverity map[string]int    `json:"tags_count_by_severity"`
	PackageFilename     map[string]string `json:"package_filename"`
	TagsFound           []string          `json:"tags_found"`
	OverriddenTagsFound []string          `json:"overridden_tags_found"`
	LintianVersion      string            `json:"lintian_version"`
	Distribution        string            `json:"distribution"`
}

// lintianSummarize counts tags by severity and lists the tags found
// (overridden ones apart), sorted and without repeats.
func lintianSummarize(tags []lintianTag) lintianSummary {
	s := lintianSummary{TagsCountBySeverity: map[string]int{}, TagsFound: []string{}, OverriddenTagsFound: []string{}}
	for _, sev := range lintianSeverities {
		s.TagsCountBySeverity[sev] = 0
	}
	for _, t := range tags {
		s.TagsCountBySeverity[t.Severity]++
		if t.Severity == "overridden" {
			s.OverriddenTagsFound = append(s.OverriddenTagsFound, t.Tag)
		} else {
			s.TagsFound = append(s.TagsFound, t.Tag)
		}
	}
	slices.Sort(s.TagsFound)
	slices.Sort(s.OverriddenTagsFound)
	s.TagsFound = slices.Compact(s.TagsFound)
	s.OverriddenTagsFound = slices.Compact(s.OverriddenTagsFound)
	return s
}
