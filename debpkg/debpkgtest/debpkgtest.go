// Package debpkgtest builds small, real Debian packages for tests with the
// dpkg tools (dpkg-source, dpkg-gencontrol, dpkg-deb, dpkg-genchanges), as
// a package build would, and writes .changes files by hand for the cases
// those tools refuse to make. It is for tests only.
package debpkgtest

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/server/store/storetest"
)

// tools are the programs Build runs.
var tools = []string{"dpkg-source", "dpkg-gencontrol", "dpkg-deb", "dpkg-genchanges", "dpkg-architecture"}

// RequireTools skips t, or fails it under KILN_REQUIRE_ALL=1, when a dpkg
// tool that Build needs is not installed.
func RequireTools(t testing.TB) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			storetest.Unavailable(t, tool+" (package dpkg-dev)", err)
		}
	}
}

// Package is a built source package with its binary packages.
type Package struct {
	// Dir holds the built files.
	Dir             string
	Source, Version string
	// Arch is the host architecture, that of the arch-specific binary.
	Arch string
	// DSC and Tarball are the source package's files.
	DSC, Tarball string
	// Deb is Source's binary package (for Arch), DocDeb Source-doc's
	// (Architecture: all).
	Deb, DocDeb string
	// Changes lists them all: Architecture "source all ARCH".
	Changes string
}

// Build builds native source package name, version 1.0, with two binary
// packages, name (Architecture: any) and name-doc (Architecture: all), and
// a .changes of the whole upload, in a new temporary directory.
func Build(t testing.TB, name string) *Package {
	t.Helper()
	RequireTools(t)
	const version = "1.0"
	dir := t.TempDir()
	tree := filepath.Join(dir, name+"-"+version)
	write(t, filepath.Join(tree, "debian", "control"), fmt.Sprintf(`Source: %[1]s
Section: misc
Priority: optional
Maintainer: Kiln Test <kiln@example.org>
Build-Depends: debhelper-compat (= 13)
Standards-Version: 4.6.2

Package: %[1]s
Architecture: any
Description: Kiln test package
 A package that Kiln's tests build.
 .
 It installs a README.

Package: %[1]s-doc
Architecture: all
Section: doc
Description: Kiln test package (documentation)
 The documentation of %[1]s.
`, name))
	write(t, filepath.Join(tree, "debian", "changelog"), fmt.Sprintf(`%s (%s) unstable; urgency=medium

  * Initial release.

 -- Kiln Test <kiln@example.org>  Mon, 01 Jan 2024 00:00:00 +0000
`, name, version))
	write(t, filepath.Join(tree, "debian", "rules"), "#!/usr/bin/make -f\n%:\n\tdh $@\n")
	require.NoError(t, os.Chmod(filepath.Join(tree, "debian", "rules"), 0o755))
	write(t, filepath.Join(tree, "debian", "source", "format"), "3.0 (native)\n")
	write(t, filepath.Join(tree, "README"), "Hello from "+name+".\n")

	// The source first, from the clean tree, as dpkg-buildpackage does.
	run(t, dir, "dpkg-source", "-b", filepath.Base(tree))
	arch := strings.TrimSpace(run(t, dir, "dpkg-architecture", "-qDEB_HOST_ARCH"))
	for _, pkg := range []string{name, name + "-doc"} {
		root := filepath.Join("debian", pkg)
		readme := "usr/share/doc/" + pkg + "/README"
		content := "Hello from " + pkg + ".\n"
		write(t, filepath.Join(tree, root, filepath.FromSlash(readme)), content)
		sum := md5.Sum([]byte(content))
		write(t, filepath.Join(tree, root, "DEBIAN", "md5sums"), hex.EncodeToString(sum[:])+"  "+readme+"\n")
		run(t, tree, "dpkg-gencontrol", "-p"+pkg, "-P"+root)
		run(t, tree, "dpkg-deb", "--root-owner-group", "--build", root, "..")
	}
	changes := filepath.Join(dir, fmt.Sprintf("%s_%s_%s.changes", name, version, arch))
	write(t, changes, run(t, tree, "dpkg-genchanges", "-sa"))
	base := filepath.Join(dir, name+"_"+version)
	return &Package{Dir: dir, Source: name, Version: version, Arch: arch, DSC: base + ".dsc", Tarball: base + ".tar.xz",
		Deb: base + "_" + arch + ".deb", DocDeb: filepath.Join(dir, name+"-doc_"+version+"_all.deb"), Changes: changes}
}

// BuildDeb builds dir/NAME with dpkg-deb --build from DEBIAN/control
// control and the other DEBIAN members in members (name -> content; a
// name starting with "post" or "pre" is made executable).
func BuildDeb(t testing.TB, dir, name, control string, members map[string]string) string {
	t.Helper()
	RequireTools(t)
	root := filepath.Join(t.TempDir(), "root")
	write(t, filepath.Join(root, "DEBIAN", "control"), control)
	for m, content := range members {
		p := filepath.Join(root, "DEBIAN", m)
		write(t, p, content)
		if strings.HasPrefix(m, "post") || strings.HasPrefix(m, "pre") {
			require.NoError(t, os.Chmod(p, 0o755))
		}
	}
	out := filepath.Join(dir, name)
	run(t, dir, "dpkg-deb", "--root-owner-group", "--build", root, out)
	return out
}

// WriteChanges writes dir/name, a .changes with the given fields (in
// order, "Name: value" lines) followed by Checksums-Sha1,
// Checksums-Sha256 and Files fields listing files (paths in dir) with
// their real sizes and sums.
func WriteChanges(t testing.TB, dir, name string, fields []string, files []string) string {
	t.Helper()
	var sha1s, sha256s, md5s strings.Builder
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(dir, f))
		require.NoError(t, err)
		s1, s256, m := sha1.Sum(b), sha256.Sum256(b), md5.Sum(b)
		fmt.Fprintf(&sha1s, "\n %x %d %s", s1, len(b), f)
		fmt.Fprintf(&sha256s, "\n %x %d %s", s256, len(b), f)
		fmt.Fprintf(&md5s, "\n %x %d misc optional %s", m, len(b), f)
	}
	text := strings.Join(fields, "\n") + "\nChecksums-Sha1:" + sha1s.String() + "\nChecksums-Sha256:" + sha256s.String() +
		"\nFiles:" + md5s.String() + "\n"
	path := filepath.Join(dir, name)
	write(t, path, text)
	return path
}

// write creates path, and its directory, with content.
func write(t testing.TB, path, content string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
}

// run runs a tool in dir and returns its standard output.
func run(t testing.TB, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "%s %s: %s", name, strings.Join(args, " "), stderr.String())
	return string(out)
}
