package debpkg_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/debpkg"
	"github.com/kiln-ci/kiln/debpkg/debpkgtest"
)

func sha256File(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// copyFiles copies the named files of src into a new directory.
func copyFiles(t *testing.T, src string, names ...string) string {
	t.Helper()
	dst := t.TempDir()
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(src, n))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dst, n), b, 0o644))
	}
	return dst
}

// roundTrip is the artifact data as the server stores it: JSON.
func roundTrip(t *testing.T, data map[string]any) map[string]any {
	t.Helper()
	b, err := json.Marshal(data)
	require.NoError(t, err)
	var out map[string]any
	require.NoError(t, json.Unmarshal(b, &out))
	return out
}

func TestSourcePackage(t *testing.T) {
	t.Parallel()
	pkg := debpkgtest.Build(t, "hello")
	a, err := debpkg.SourcePackage(pkg.DSC)
	require.NoError(t, err)
	require.Equal(t, debpkg.CategorySourcePackage, a.Category)
	require.Equal(t, map[string]string{"hello_1.0.dsc": pkg.DSC, "hello_1.0.tar.xz": pkg.Tarball}, a.Files)
	require.Equal(t, map[string]string{"hello_1.0.dsc": "text/plain; charset=utf-8"}, a.ContentTypes)
	data := roundTrip(t, a.Data)
	require.Equal(t, "hello", data["name"])
	require.Equal(t, "1.0", data["version"])
	require.Equal(t, "dpkg", data["type"])
	fields := data["dsc_fields"].(map[string]any)
	require.Equal(t, "hello", fields["Source"])
	require.Equal(t, "3.0 (native)", fields["Format"])
	require.Equal(t, "hello, hello-doc", fields["Binary"])
	require.Equal(t, "debhelper-compat (= 13)", fields["Build-Depends"])
	require.True(t, strings.HasPrefix(fields["Package-List"].(string), "\n hello deb misc optional arch=any"), fields["Package-List"])
	require.Equal(t, []any{map[string]any{"name": "hello_1.0.tar.xz", "size": sizeOf(t, pkg.Tarball),
		"sha256": sha256File(t, pkg.Tarball)}}, fields["Checksums-Sha256"])
	files := fields["Files"].([]any)
	require.Len(t, files, 1)
	require.Equal(t, "hello_1.0.tar.xz", files[0].(map[string]any)["name"])

	// A clear-signed .dsc gives the same artifact.
	dsc, err := os.ReadFile(pkg.DSC)
	require.NoError(t, err)
	dir := copyFiles(t, pkg.Dir, "hello_1.0.tar.xz")
	signedDSC := filepath.Join(dir, "hello_1.0.dsc")
	require.NoError(t, os.WriteFile(signedDSC, []byte("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n"+string(dsc)+
		"-----BEGIN PGP SIGNATURE-----\n\niHUEARYKAB0WIQRexampleexampleexample\n=AbCd\n-----END PGP SIGNATURE-----\n"), 0o644))
	signed, err := debpkg.SourcePackage(signedDSC)
	require.NoError(t, err)
	require.Equal(t, a.Data, signed.Data)
	require.Equal(t, map[string]string{"hello_1.0.dsc": signedDSC, "hello_1.0.tar.xz": filepath.Join(dir, "hello_1.0.tar.xz")}, signed.Files)
}

// sizeOf is a file's size as python-debian gives it in a checksum field.
func sizeOf(t *testing.T, path string) string {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	return strconv.FormatInt(fi.Size(), 10)
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func TestSourcePackageTampered(t *testing.T) {
	t.Parallel()
	pkg := debpkgtest.Build(t, "hello")
	names := []string{"hello_1.0.dsc", "hello_1.0.tar.xz"}
	tarball, err := os.ReadFile(pkg.Tarball)
	require.NoError(t, err)
	dsc, err := os.ReadFile(pkg.DSC)
	require.NoError(t, err)

	t.Run("missing", func(t *testing.T) {
		dir := copyFiles(t, pkg.Dir, names[0])
		_, err := debpkg.SourcePackage(filepath.Join(dir, names[0]))
		require.ErrorIs(t, err, fs.ErrNotExist)
		require.ErrorContains(t, err, "hello_1.0.dsc lists hello_1.0.tar.xz")
	})
	t.Run("longer", func(t *testing.T) {
		dir := copyFiles(t, pkg.Dir, names...)
		require.NoError(t, os.WriteFile(filepath.Join(dir, names[1]), append(tarball, 0), 0o644))
		_, err := debpkg.SourcePackage(filepath.Join(dir, names[0]))
		require.ErrorIs(t, err, debpkg.ErrFileMismatch)
		require.ErrorContains(t, err, "bytes, but")
	})
	flipped := append([]byte(nil), tarball...)
	flipped[len(flipped)/2] ^= 0xff
	t.Run("same size", func(t *testing.T) {
		dir := copyFiles(t, pkg.Dir, names...)
		require.NoError(t, os.WriteFile(filepath.Join(dir, names[1]), flipped, 0o644))
		_, err := debpkg.SourcePackage(filepath.Join(dir, names[0]))
		require.ErrorIs(t, err, debpkg.ErrFileMismatch)
		require.ErrorContains(t, err, "with SHA-256 "+sha256File(t, pkg.Tarball))
	})
	t.Run("MD5 only", func(t *testing.T) {
		dir := copyFiles(t, pkg.Dir, names...)
		require.NoError(t, os.WriteFile(filepath.Join(dir, names[1]), flipped, 0o644))
		// Drop the Checksums-* fields: the Files MD5 is what is left.
		var kept []string
		skip := false
		for _, line := range strings.Split(string(dsc), "\n") {
			if strings.HasPrefix(line, "Checksums-") {
				skip = true
				continue
			}
			if skip && strings.HasPrefix(line, " ") {
				continue
			}
			skip = false
			kept = append(kept, line)
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, names[0]), []byte(strings.Join(kept, "\n")), 0o644))
		_, err := debpkg.SourcePackage(filepath.Join(dir, names[0]))
		require.ErrorIs(t, err, debpkg.ErrFileMismatch)
		require.ErrorContains(t, err, "with MD5")
	})
	t.Run("malformed", func(t *testing.T) {
		dir := copyFiles(t, pkg.Dir, names...)
		require.NoError(t, os.WriteFile(filepath.Join(dir, names[0]), []byte("Source: hello\nVersion 1.0\n"), 0o644))
		_, err := debpkg.SourcePackage(filepath.Join(dir, names[0]))
		require.ErrorContains(t, err, filepath.Join(dir, names[0])+":2: expected a field")
		require.NoError(t, os.WriteFile(filepath.Join(dir, names[0]), []byte("Source: hello\nFiles:\n"), 0o644))
		_, err = debpkg.SourcePackage(filepath.Join(dir, names[0]))
		require.ErrorContains(t, err, ":1: no Version field")
		require.NoError(t, os.WriteFile(filepath.Join(dir, names[0]), []byte("Source: hello\nVersion: 1\nFiles:\n 0a5981a84f99ebc35589431fba6f32fc 1 ../x\n"), 0o644))
		_, err = debpkg.SourcePackage(filepath.Join(dir, names[0]))
		require.ErrorContains(t, err, `:3: field Files: entry 1: invalid file name "../x"`)
	})
}

func TestBinaryPackage(t *testing.T) {
	ctx := context.Background()
	pkg := debpkgtest.Build(t, "hello")

	a, err := debpkg.BinaryPackageContext(ctx, pkg.Deb)
	require.NoError(t, err)
	require.Equal(t, debpkg.CategoryBinaryPackage, a.Category)
	base := filepath.Base(pkg.Deb)
	require.Equal(t, map[string]string{base: pkg.Deb}, a.Files)
	require.Empty(t, a.ContentTypes)
	data := roundTrip(t, a.Data)
	require.Equal(t, "hello", data["srcpkg_name"], "no Source field: the package name")
	require.Equal(t, "1.0", data["srcpkg_version"])
	require.Equal(t, []any{"control", "md5sums"}, data["deb_control_files"])
	fields := data["deb_fields"].(map[string]any)
	require.Equal(t, "hello", fields["Package"])
	require.Equal(t, pkg.Arch, fields["Architecture"])
	require.Equal(t, "Kiln test package\n A package that Kiln's tests build.\n .\n It installs a README.", fields["Description"])

	doc, err := debpkg.BinaryPackage(pkg.DocDeb)
	require.NoError(t, err)
	require.Equal(t, "hello", doc.Data["srcpkg_name"], "from the Source field")
	require.Equal(t, "1.0", doc.Data["srcpkg_version"], "from the Version field")

	dir := t.TempDir()
	binNMU := debpkgtest.BuildDeb(t, dir, "hello_1.0+b1_amd64.udeb", "Package: hello\nSource: hello (1.0)\nVersion: 1.0+b1\n"+
		"Architecture: amd64\nMaintainer: J\xf6rg Test <j@example.org>\nDescription: x\n", map[string]string{"postinst": "#!/bin/sh\nexit 0\n"})
	a, err = debpkg.BinaryPackage(binNMU)
	require.NoError(t, err)
	require.Equal(t, "hello", a.Data["srcpkg_name"])
	require.Equal(t, "1.0", a.Data["srcpkg_version"], "the version in Source wins")
	require.Equal(t, []string{"control", "postinst"}, a.Data["deb_control_files"])
	require.Equal(t, "Jörg Test <j@example.org>", a.Data["deb_fields"].(map[string]any)["Maintainer"], "Latin-1 decoded")

	notDeb := filepath.Join(dir, "bad_1_all.deb")
	require.NoError(t, os.WriteFile(notDeb, []byte("not a deb\n"), 0o644))
	_, err = debpkg.BinaryPackage(notDeb)
	require.ErrorContains(t, err, "dpkg-deb --ctrl-tarfile")
	_, err = debpkg.BinaryPackage(filepath.Join(dir, "missing_1_all.deb"))
	require.ErrorIs(t, err, fs.ErrNotExist)
	_, err = debpkg.BinaryPackage(pkg.DSC)
	require.ErrorContains(t, err, "must end in .deb or .udeb")
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = debpkg.BinaryPackageContext(canceled, pkg.Deb)
	require.ErrorIs(t, err, context.Canceled)

	t.Setenv("PATH", t.TempDir())
	_, err = debpkg.BinaryPackage(pkg.Deb)
	require.ErrorIs(t, err, debpkg.ErrNoDpkgDeb)
}

func TestChangesArtifacts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pkg := debpkgtest.Build(t, "hello")
	arts, err := debpkg.ChangesArtifacts(ctx, pkg.Changes)
	require.NoError(t, err)
	var cats []string
	for _, a := range arts {
		cats = append(cats, a.Category)
	}
	// dpkg-genchanges writes Architecture: source all ARCH.
	require.Equal(t, []string{debpkg.CategoryUpload, debpkg.CategorySourcePackage,
		debpkg.CategoryBinaryPackage, debpkg.CategoryBinaryPackages,
		debpkg.CategoryBinaryPackage, debpkg.CategoryBinaryPackages}, cats)

	up := arts[0]
	changes := filepath.Base(pkg.Changes)
	require.Equal(t, map[string]string{changes: pkg.Changes, "hello_1.0.dsc": pkg.DSC, "hello_1.0.tar.xz": pkg.Tarball,
		filepath.Base(pkg.Deb): pkg.Deb, filepath.Base(pkg.DocDeb): pkg.DocDeb}, up.Files)
	require.Equal(t, map[string]string{changes: "text/plain; charset=utf-8", "hello_1.0.dsc": "text/plain; charset=utf-8"}, up.ContentTypes)
	data := roundTrip(t, up.Data)
	require.Equal(t, "dpkg", data["type"])
	fields := data["changes_fields"].(map[string]any)
	require.Equal(t, "source all "+pkg.Arch, fields["Architecture"])
	require.Equal(t, "hello", fields["Source"])
	files := fields["Files"].([]any)
	require.Len(t, files, 4)
	require.Equal(t, map[string]any{"md5sum": files[0].(map[string]any)["md5sum"], "size": sizeOf(t, pkg.DSC), "section": "misc",
		"priority": "optional", "name": "hello_1.0.dsc"}, files[0])

	src, err := debpkg.SourcePackage(pkg.DSC)
	require.NoError(t, err)
	require.Equal(t, src, arts[1])
	doc, err := debpkg.BinaryPackage(pkg.DocDeb)
	require.NoError(t, err)
	require.Equal(t, doc, arts[2])
	require.Equal(t, map[string]any{"srcpkg_name": "hello", "srcpkg_version": "1.0", "version": "1.0", "architecture": "all",
		"packages": []string{"hello-doc"}}, arts[3].Data)
	require.Equal(t, map[string]string{filepath.Base(pkg.DocDeb): pkg.DocDeb}, arts[3].Files)
	require.Equal(t, "hello", arts[4].Data["deb_fields"].(map[string]any)["Package"])
	require.Equal(t, pkg.Arch, arts[5].Data["architecture"])
	require.Equal(t, []string{"hello"}, arts[5].Data["packages"])

	// ForFile picks by suffix.
	for path, want := range map[string]int{pkg.Changes: 6, pkg.DSC: 1, pkg.Deb: 1} {
		got, err := debpkg.ForFile(ctx, path)
		require.NoError(t, err, path)
		require.Len(t, got, want, path)
	}
	_, err = debpkg.ForFile(ctx, pkg.Tarball)
	require.ErrorIs(t, err, debpkg.ErrUnsupported)
	require.ErrorContains(t, err, "hello_1.0.tar.xz is none of these")

	// A .deb missing next to the .changes is caught.
	dir := copyFiles(t, pkg.Dir, changes, "hello_1.0.dsc", "hello_1.0.tar.xz", filepath.Base(pkg.DocDeb))
	_, err = debpkg.ChangesArtifacts(ctx, filepath.Join(dir, changes))
	require.ErrorIs(t, err, fs.ErrNotExist)
	require.ErrorContains(t, err, changes+" lists "+filepath.Base(pkg.Deb))
}

func TestChangesArtifactsBinNMU(t *testing.T) {
	t.Parallel()
	pkg := debpkgtest.Build(t, "hello")
	dir := copyFiles(t, pkg.Dir, filepath.Base(pkg.Deb))
	changes := debpkgtest.WriteChanges(t, dir, "hello_1.0+b1_amd64.changes",
		[]string{"Format: 1.8", "Source: hello (1.0)", "Binary: hello", "Architecture: " + pkg.Arch, "Version: 1.0+b1"},
		[]string{filepath.Base(pkg.Deb)})
	arts, err := debpkg.ChangesArtifacts(context.Background(), changes)
	require.NoError(t, err)
	require.Len(t, arts, 3)
	require.Equal(t, map[string]any{"srcpkg_name": "hello", "srcpkg_version": "1.0", "version": "1.0+b1", "architecture": pkg.Arch,
		"packages": []string{"hello"}}, arts[2].Data)
}

func TestChangesErrors(t *testing.T) {
	t.Parallel()
	pkg := debpkgtest.Build(t, "hello")
	deb, docDeb := filepath.Base(pkg.Deb), filepath.Base(pkg.DocDeb)
	dir := copyFiles(t, pkg.Dir, "hello_1.0.dsc", "hello_1.0.tar.xz", deb, docDeb)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "other_1.dsc"), []byte("Source: other\n"), 0o644))
	tests := []struct {
		name   string
		arch   string
		files  []string
		fields []string
		want   string
	}{
		{"no architecture", "", []string{deb}, nil, ":1: no Architecture field"},
		{"no deb for an architecture", "source s390x", []string{"hello_1.0.dsc", "hello_1.0.tar.xz", deb}, nil,
			"no .deb or .udeb for architecture s390x"},
		{"binaries in a source-only upload", "source", []string{"hello_1.0.dsc", "hello_1.0.tar.xz", deb}, nil,
			"a source-only upload lists binary packages " + deb},
		{"no debs at all", pkg.Arch, []string{"hello_1.0.tar.xz"}, nil, "names binary architectures but no .deb is listed"},
		{"two .dsc", "source", []string{"hello_1.0.dsc", "hello_1.0.tar.xz", "other_1.dsc"}, nil, "must list exactly one .dsc, it lists 2"},
		{"source in a binary upload", "all", []string{"hello_1.0.dsc", "hello_1.0.tar.xz", docDeb}, nil,
			"a binary-only upload lists source package hello_1.0.dsc"},
		{"two paragraphs", "all", []string{docDeb}, []string{"", "Source: again"}, "a second paragraph"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fields := []string{"Source: hello", "Version: 1.0"}
			if tt.arch != "" {
				fields = append(fields, "Architecture: "+tt.arch)
			}
			path := debpkgtest.WriteChanges(t, dir, "test.changes", append(fields, tt.fields...), tt.files)
			_, err := debpkg.ChangesArtifacts(context.Background(), path)
			require.ErrorContains(t, err, tt.want)
		})
	}
}

func TestBinaryPackagesAndBuildLog(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, n := range []string{"a_1_amd64.deb", "b-udeb_1_amd64.udeb", "x.txt", "hello_1.0_amd64.build"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, n), []byte(n), 0o644))
	}
	a, err := debpkg.BinaryPackages("src", "1", "1+b1", "amd64", []string{filepath.Join(dir, "a_1_amd64.deb"), filepath.Join(dir, "b-udeb_1_amd64.udeb")})
	require.NoError(t, err)
	require.Equal(t, debpkg.CategoryBinaryPackages, a.Category)
	require.Equal(t, []string{"a", "b-udeb"}, a.Data["packages"])
	require.Len(t, a.Files, 2)
	_, err = debpkg.BinaryPackages("src", "1", "1", "amd64", nil)
	require.ErrorContains(t, err, "no .deb files")
	_, err = debpkg.BinaryPackages("src", "1", "1", "amd64", []string{filepath.Join(dir, "x.txt")})
	require.ErrorContains(t, err, "must end in .deb or .udeb")
	_, err = debpkg.BinaryPackages("src", "1", "1", "amd64", []string{filepath.Join(dir, "a_1_amd64.deb"), filepath.Join(dir, ".", "a_1_amd64.deb")})
	require.ErrorContains(t, err, "have the same name")

	log := filepath.Join(dir, "hello_1.0_amd64.build")
	b, err := debpkg.PackageBuildLog(log, "hello", "1.0", "amd64")
	require.NoError(t, err)
	require.Equal(t, debpkg.CategoryPackageBuildLog, b.Category)
	require.Equal(t, map[string]any{"source": "hello", "version": "1.0", "architecture": "amd64", "filename": "hello_1.0_amd64.build",
		"bd_uninstallable": nil}, b.Data)
	require.Equal(t, map[string]string{"hello_1.0_amd64.build": "text/plain; charset=utf-8"}, b.ContentTypes)
	b, err = debpkg.PackageBuildLog(log, "hello", "1.0", "")
	require.NoError(t, err)
	require.JSONEq(t, `{"source":"hello","version":"1.0","architecture":null,"filename":"hello_1.0_amd64.build","bd_uninstallable":null}`,
		string(mustJSON(b.Data)))
	_, err = debpkg.PackageBuildLog(filepath.Join(dir, "x.txt"), "hello", "1.0", "")
	require.ErrorContains(t, err, "must end in .build")
}
