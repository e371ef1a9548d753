package debpkg

import (
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/kiln-ci/kiln/deb822"
)

// Artifact categories, as debusine names them.
const (
	CategorySourcePackage   = "debian:source-package"
	CategoryUpload          = "debian:upload"
	CategoryBinaryPackage   = "debian:binary-package"
	CategoryBinaryPackages  = "debian:binary-packages"
	CategoryPackageBuildLog = "debian:package-build-log"
	CategorySystemTarball   = "debian:system-tarball"
	CategoryLintian         = "debian:lintian"
)

// textPlain is the media type debusine's client gives the text files of a
// package, which Debian policy requires to be UTF-8.
const textPlain = "text/plain; charset=utf-8"

var (
	// ErrUnsupported is returned (wrapped) by ForFile for a file that is
	// not a .dsc, .changes, .deb or .udeb.
	ErrUnsupported = errors.New("not a Debian package file")
	// ErrFileMismatch is returned (wrapped) when a file that a .dsc or
	// .changes lists does not have the size or checksum it gives.
	ErrFileMismatch = errors.New("file does not match its listing")
)

// Artifact describes an artifact to create from local files.
type Artifact struct {
	Category string
	// Data is the artifact's data, as debusine's client builds it.
	Data map[string]any
	// Files maps each name in the artifact to its local path.
	Files map[string]string
	// ContentTypes gives the media type of the files that debusine's client
	// labels without guessing (.dsc, .changes, .buildinfo, .build); the
	// server guesses the others.
	ContentTypes map[string]string
}

// newArtifact returns an artifact of category with data and files, its
// content types filled in.
func newArtifact(category string, data map[string]any, files map[string]string) Artifact {
	a := Artifact{Category: category, Data: data, Files: files, ContentTypes: map[string]string{}}
	for name := range files {
		switch filepath.Ext(name) {
		case ".dsc", ".changes", ".buildinfo", ".build":
			a.ContentTypes[name] = textPlain
		}
	}
	return a
}

// ForFile describes path as debusine's import-debian-artifact does: a
// .changes as ChangesArtifacts, a .dsc as one SourcePackage, a .deb or
// .udeb as one BinaryPackage. Other files are ErrUnsupported.
func ForFile(ctx context.Context, path string) ([]Artifact, error) {
	var (
		a   Artifact
		err error
	)
	switch filepath.Ext(path) {
	case ".changes":
		return ChangesArtifacts(ctx, path)
	case ".dsc":
		a, err = SourcePackage(path)
	case ".deb", ".udeb":
		a, err = BinaryPackageContext(ctx, path)
	default:
		return nil, fmt.Errorf("%w: only source packages (.dsc), binary packages (.deb, .udeb) and uploads (.changes) can be imported; %s is none of these", ErrUnsupported, path)
	}
	if err != nil {
		return nil, err
	}
	return []Artifact{a}, nil
}

// SourcePackage describes a .dsc and the files it lists (in its directory)
// as a debian:source-package artifact with data name, version, type
// ("dpkg") and dsc_fields (deb822.Paragraph.Dict of kind Dsc). Each listed
// file must exist with the size and SHA-256 (MD5 without a
// Checksums-Sha256 field) the .dsc gives.
func SourcePackage(dscPath string) (Artifact, error) {
	return newChecker().sourcePackage(dscPath)
}

func (c *checker) sourcePackage(dscPath string) (Artifact, error) {
	p, err := readSingle(dscPath)
	if err != nil {
		return Artifact{}, err
	}
	name, err := required(p, "Source")
	if err != nil {
		return Artifact{}, err
	}
	version, err := required(p, "Version")
	if err != nil {
		return Artifact{}, err
	}
	files, _, err := c.listed(dscPath, p)
	if err != nil {
		return Artifact{}, err
	}
	data := map[string]any{"name": name, "version": version, "type": "dpkg", "dsc_fields": p.Dict(deb822.Dsc)}
	return newArtifact(CategorySourcePackage, data, files), nil
}

// Upload describes a .changes and the files it lists (in its directory) as
// a debian:upload artifact with data type ("dpkg") and changes_fields
// (deb822.Paragraph.Dict of kind Changes). The files are checked as in
// SourcePackage, and, as debusine's data model requires, the .changes must
// have Architecture and Files fields, exactly one .dsc when it is a source
// upload and none otherwise, and .debs when it names binary architectures
// and none when it names only source.
func Upload(changesPath string) (Artifact, error) {
	a, _, _, err := newChecker().upload(changesPath)
	return a, err
}

// upload is Upload that also returns the parsed .changes and its file list.
func (c *checker) upload(changesPath string) (Artifact, deb822.Paragraph, []deb822.FileEntry, error) {
	p, err := readSingle(changesPath)
	if err != nil {
		return Artifact{}, p, nil, err
	}
	archField, err := required(p, "Architecture")
	if err != nil {
		return Artifact{}, p, nil, err
	}
	files, entries, err := c.listed(changesPath, p)
	if err != nil {
		return Artifact{}, p, nil, err
	}
	var debs, dscs []string
	for _, e := range entries {
		switch {
		case strings.HasSuffix(e.Name, ".deb"), strings.HasSuffix(e.Name, ".udeb"):
			debs = append(debs, e.Name)
		case strings.HasSuffix(e.Name, ".dsc"):
			dscs = append(dscs, e.Name)
		}
	}
	archs := strings.Fields(archField)
	source := slices.Contains(archs, "source")
	binaryArchs := len(archs) > 0 && (!source || len(archs) > 1)
	switch {
	case !binaryArchs && len(debs) > 0:
		return Artifact{}, p, nil, fmt.Errorf("%s: a source-only upload lists binary packages %s", changesPath, strings.Join(debs, ", "))
	case binaryArchs && len(debs) == 0:
		return Artifact{}, p, nil, fmt.Errorf("%s: Architecture %q names binary architectures but no .deb is listed", changesPath, archField)
	case source && len(dscs) != 1:
		return Artifact{}, p, nil, fmt.Errorf("%s: a source upload must list exactly one .dsc, it lists %d", changesPath, len(dscs))
	case !source && len(dscs) > 0:
		return Artifact{}, p, nil, fmt.Errorf("%s: a binary-only upload lists source package %s", changesPath, strings.Join(dscs, ", "))
	}
	data := map[string]any{"type": "dpkg", "changes_fields": p.Dict(deb822.Changes)}
	return newArtifact(CategoryUpload, data, files), p, entries, nil
}

// changesSource matches a .changes Source field that carries the source
// version, as a binNMU's does: "hello (1.0-1)".
var changesSource = regexp.MustCompile(`^(\S+) \((\S+)\)$`)

// ChangesArtifacts describes a .changes as debusine's client does before an
// upload: first the debian:upload (see Upload), then for each entry of its
// Architecture field in order, for "source" the debian:source-package of
// its one .dsc, for any other architecture a debian:binary-package for
// each NAME_VERSION_ARCH.deb or .udeb it lists followed by a
// debian:binary-packages grouping them. Each file is read and checked
// once.
func ChangesArtifacts(ctx context.Context, changesPath string) ([]Artifact, error) {
	c := newChecker()
	up, p, entries, err := c.upload(changesPath)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(changesPath)
	srcName, srcVersion := p.Value("Source"), p.Value("Version")
	if m := changesSource.FindStringSubmatch(srcName); m != nil {
		srcName, srcVersion = m[1], m[2]
	}
	out := []Artifact{up}
	seen := map[string]bool{}
	for _, arch := range strings.Fields(p.Value("Architecture")) {
		if seen[arch] {
			continue
		}
		seen[arch] = true
		if arch == "source" {
			var dscs []string
			for _, e := range entries {
				if strings.HasSuffix(e.Name, ".dsc") {
					dscs = append(dscs, e.Name)
				}
			}
			if len(dscs) != 1 {
				return nil, fmt.Errorf("%s: a source upload must list exactly one .dsc, it lists %d", changesPath, len(dscs))
			}
			a, err := c.sourcePackage(filepath.Join(dir, dscs[0]))
			if err != nil {
				return nil, err
			}
			out = append(out, a)
			continue
		}
		var debs []string
		for _, e := range entries {
			if strings.HasSuffix(e.Name, "_"+arch+".deb") || strings.HasSuffix(e.Name, "_"+arch+".udeb") {
				debs = append(debs, filepath.Join(dir, e.Name))
			}
		}
		if len(debs) == 0 {
			return nil, fmt.Errorf("%s: no .deb or .udeb for architecture %s (want files named *_%s.deb)", changesPath, arch, arch)
		}
		for _, deb := range debs {
			a, err := BinaryPackageContext(ctx, deb)
			if err != nil {
				return nil, err
			}
			out = append(out, a)
		}
		a, err := BinaryPackages(srcName, srcVersion, p.Value("Version"), arch, debs)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// BinaryPackages describes .deb and .udeb files of one architecture as a
// debian:binary-packages artifact with data srcpkg_name, srcpkg_version,
// version, architecture and packages: the package names, taken from the
// file names (NAME_VERSION_ARCH.deb) as debusine does.
func BinaryPackages(srcName, srcVersion, version, arch string, debPaths []string) (Artifact, error) {
	if len(debPaths) == 0 {
		return Artifact{}, errors.New("binary packages artifact: no .deb files")
	}
	files := map[string]string{}
	packages := []string{}
	for _, deb := range debPaths {
		name, err := localFile(deb, ".deb", ".udeb")
		if err != nil {
			return Artifact{}, err
		}
		if prev, ok := files[name]; ok {
			return Artifact{}, fmt.Errorf("binary packages artifact: %s and %s have the same name", prev, deb)
		}
		files[name] = deb
		pkg, _, _ := strings.Cut(name, "_")
		packages = append(packages, pkg)
	}
	data := map[string]any{"srcpkg_name": srcName, "srcpkg_version": srcVersion, "version": version,
		"architecture": arch, "packages": packages}
	return newArtifact(CategoryBinaryPackages, data, files), nil
}

// PackageBuildLog describes a build log (a file named *.build) as a
// debian:package-build-log artifact with data source, version,
// architecture (null when arch is "") and filename, and
// bd_uninstallable null, as debusine's client sends it.
func PackageBuildLog(path, source, version, arch string) (Artifact, error) {
	name, err := localFile(path, ".build")
	if err != nil {
		return Artifact{}, err
	}
	var archValue any
	if arch != "" {
		archValue = arch
	}
	data := map[string]any{"source": source, "version": version, "architecture": archValue, "filename": name,
		"bd_uninstallable": nil}
	return newArtifact(CategoryPackageBuildLog, data, map[string]string{name: path}), nil
}

// localFile checks that path is a regular file whose name ends in one of
// suffixes and returns that name.
func localFile(path string, suffixes ...string) (string, error) {
	name := filepath.Base(path)
	if !slices.ContainsFunc(suffixes, func(s string) bool { return strings.HasSuffix(name, s) }) {
		return "", fmt.Errorf("%s: the file name must end in %s", path, strings.Join(suffixes, " or "))
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", path)
	}
	return name, nil
}

// readSingle parses the one paragraph of a .dsc or .changes.
func readSingle(path string) (deb822.Paragraph, error) {
	doc, err := deb822.ParseFile(path)
	if err != nil {
		return deb822.Paragraph{}, err
	}
	return doc.Single()
}

// required returns the value of a field that must be there and not empty.
func required(p deb822.Paragraph, name string) (string, error) {
	v := p.Value(name)
	if v == "" {
		return "", &deb822.SyntaxError{File: p.File, Line: p.Line, Err: fmt.Errorf("no %s field", name)}
	}
	return v, nil
}

// checker checks the files that .dsc and .changes files list, each local
// file once, so that a .changes and the .dsc it lists do not hash the
// tarball twice.
type checker struct {
	// verified maps a cleaned local path to the entry it matched.
	verified map[string]deb822.FileEntry
}

func newChecker() *checker { return &checker{verified: map[string]deb822.FileEntry{}} }

// listed checks the files that listing (a .dsc or .changes parsed as p)
// lists and returns the artifact's files: listing and them, by name.
func (c *checker) listed(listing string, p deb822.Paragraph) (map[string]string, []deb822.FileEntry, error) {
	entries, err := p.FileEntries()
	if err != nil {
		return nil, nil, err
	}
	dir := filepath.Dir(listing)
	base := filepath.Base(listing)
	files := map[string]string{base: listing}
	for _, e := range entries {
		if e.Name == base {
			return nil, nil, fmt.Errorf("%s lists itself", listing)
		}
		local := filepath.Join(dir, e.Name)
		if err := c.check(listing, local, e); err != nil {
			return nil, nil, err
		}
		files[e.Name] = local
	}
	return files, entries, nil
}

// check verifies that local has the size and checksum e gives.
func (c *checker) check(listing, local string, e deb822.FileEntry) error {
	key := filepath.Clean(local)
	if prev, ok := c.verified[key]; ok && prev.Size == e.Size &&
		(e.SHA256 == "" || strings.EqualFold(prev.SHA256, e.SHA256)) && (e.MD5 == "" || strings.EqualFold(prev.MD5, e.MD5)) {
		return nil
	}
	f, err := os.Open(local)
	if err != nil {
		return fmt.Errorf("%s lists %s: %w", filepath.Base(listing), e.Name, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%s lists %s: %w", filepath.Base(listing), e.Name, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s lists %s: %s is not a regular file", filepath.Base(listing), e.Name, local)
	}
	if fi.Size() != e.Size {
		return fmt.Errorf("%s lists %s with %d bytes, but %s has %d: %w", filepath.Base(listing), e.Name, e.Size, local, fi.Size(), ErrFileMismatch)
	}
	sha, md := sha256.New(), md5.New()
	if _, err := io.Copy(io.MultiWriter(sha, md), f); err != nil {
		return fmt.Errorf("hash %s: %w", local, err)
	}
	for _, s := range []struct {
		algo, want string
		h          hash.Hash
	}{{"SHA-256", e.SHA256, sha}, {"MD5", e.MD5, md}} {
		if got := hex.EncodeToString(s.h.Sum(nil)); s.want != "" && !strings.EqualFold(got, s.want) {
			return fmt.Errorf("%s lists %s with %s %s, but %s has %s: %w", filepath.Base(listing), e.Name, s.algo, s.want, local, got, ErrFileMismatch)
		}
	}
	c.verified[key] = deb822.FileEntry{Name: e.Name, Size: fi.Size(), SHA256: hex.EncodeToString(sha.Sum(nil)), MD5: hex.EncodeToString(md.Sum(nil))}
	return nil
}
