package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/debpkg/debpkgtest"
	"github.com/kiln-ci/kiln/schemas"
)

// debImported is what import-debian-artifact prints.
type debImported struct {
	Result     string `yaml:"result"`
	Message    string `yaml:"message"`
	ArtifactID int64  `yaml:"artifact_id"`
	Extends    []struct {
		ArtifactID int64 `yaml:"artifact_id"`
	} `yaml:"extends"`
	RelatesTo []struct {
		ArtifactID int64 `yaml:"artifact_id"`
	} `yaml:"relates_to"`
}

// debImport runs kiln import-debian-artifact ARGS, requires success and
// returns what it printed and the first artifact as the server has it.
func (b *bundle) debImport(args ...string) (debImported, schemas.Artifact) {
	b.t.Helper()
	code, out, errOut := b.kiln("", append([]string{"import-debian-artifact"}, args...)...)
	require.Equal(b.t, 0, code, "stdout: %s\nstderr: %s", out, errOut)
	var got debImported
	require.NoError(b.t, yaml.Unmarshal([]byte(out), &got), out)
	require.Equal(b.t, "success", got.Result)
	art, err := b.user.GetArtifact(b.ctx, got.ArtifactID)
	require.NoError(b.t, err)
	require.Equal(b.t, "New artifact created: "+art.URL, got.Message)
	return got, art
}

// debArtifact returns artifact id, requiring that the server holds every
// file of it with the SHA-256 of the local file of that name in dir.
func (b *bundle) debArtifact(id int64, dir string) schemas.Artifact {
	b.t.Helper()
	art, err := b.user.GetArtifact(b.ctx, id)
	require.NoError(b.t, err)
	require.Empty(b.t, art.FilesToUpload, "artifact %d", id)
	for name, f := range art.Files {
		local, err := os.ReadFile(filepath.Join(dir, name))
		require.NoError(b.t, err)
		require.Equal(b.t, sha256Hex(local), f.Checksums["sha256"], "%s of artifact %d", name, id)
		require.Equal(b.t, int64(len(local)), f.Size)
		require.True(b.t, f.Complete, "%s of artifact %d", name, id)
	}
	return art
}

// debData is an artifact's data as a generic JSON object.
func debData(t *testing.T, a schemas.Artifact) map[string]any {
	t.Helper()
	raw, err := json.Marshal(a.Data)
	require.NoError(t, err)
	var out map[string]any
	require.NoError(t, json.Unmarshal(raw, &out))
	return out
}

func debFileNames(a schemas.Artifact) []string {
	var out []string
	for name := range a.Files {
		out = append(out, name)
	}
	return out
}

// TestImportDebianArtifact imports a real .dsc, .deb and .changes (built
// with dpkg-source, dpkg-deb and dpkg-genchanges) with kiln
// import-debian-artifact and checks the artifacts, their data, files and
// relations as debusine's client makes them.
func TestImportDebianArtifact(t *testing.T) {
	pkg := debpkgtest.Build(t, "hello")
	deb, docDeb, changes := filepath.Base(pkg.Deb), filepath.Base(pkg.DocDeb), filepath.Base(pkg.Changes)
	forEachBackend(t, func(t *testing.T, b *bundle) {
		// A source package.
		out, src := b.debImport(pkg.DSC)
		require.Empty(t, out.Extends)
		require.Empty(t, out.RelatesTo)
		src = b.debArtifact(src.ID, pkg.Dir)
		require.Equal(t, "debian:source-package", src.Category)
		require.ElementsMatch(t, []string{"hello_1.0.dsc", "hello_1.0.tar.xz"}, debFileNames(src))
		require.NotNil(t, src.Files["hello_1.0.dsc"].ContentType)
		require.Equal(t, "text/plain; charset=utf-8", *src.Files["hello_1.0.dsc"].ContentType)
		data := debData(t, src)
		require.Equal(t, "hello", data["name"])
		require.Equal(t, "1.0", data["version"])
		require.Equal(t, "dpkg", data["type"])
		dsc := data["dsc_fields"].(map[string]any)
		require.Equal(t, "hello", dsc["Source"])
		require.Equal(t, "hello_1.0.tar.xz", dsc["Checksums-Sha256"].([]any)[0].(map[string]any)["name"])

		// A binary package.
		_, bin := b.debImport(pkg.Deb)
		bin = b.debArtifact(bin.ID, pkg.Dir)
		require.Equal(t, "debian:binary-package", bin.Category)
		require.Equal(t, []string{deb}, debFileNames(bin))
		data = debData(t, bin)
		require.Equal(t, "hello", data["srcpkg_name"])
		require.Equal(t, "1.0", data["srcpkg_version"])
		require.Equal(t, []any{"control", "md5sums"}, data["deb_control_files"])
		require.Equal(t, pkg.Arch, data["deb_fields"].(map[string]any)["Architecture"])

		// An upload: the .changes, then what it carries, each related.
		out, up := b.debImport("--expire-at", "72h", "--chunk-size", "4096", pkg.Changes)
		up = b.debArtifact(up.ID, pkg.Dir)
		require.Equal(t, "debian:upload", up.Category)
		require.ElementsMatch(t, []string{changes, "hello_1.0.dsc", "hello_1.0.tar.xz", deb, docDeb}, debFileNames(up))
		require.NotNil(t, up.ExpireAt)
		data = debData(t, up)
		require.Equal(t, "dpkg", data["type"])
		fields := data["changes_fields"].(map[string]any)
		require.Equal(t, "source all "+pkg.Arch, fields["Architecture"])
		require.Len(t, fields["Files"], 4)

		require.Len(t, out.Extends, 5)
		require.Equal(t, out.Extends, out.RelatesTo)
		var cats []string
		var related []int64
		for _, e := range out.Extends {
			a := b.debArtifact(e.ArtifactID, pkg.Dir)
			require.NotNil(t, a.ExpireAt, "--expire-at applies to every artifact")
			cats = append(cats, a.Category)
			related = append(related, a.ID)
			if a.Category == "debian:binary-packages" {
				d := debData(t, a)
				require.Equal(t, "hello", d["srcpkg_name"])
				require.Equal(t, "1.0", d["version"])
				require.Contains(t, []any{"all", pkg.Arch}, d["architecture"])
			}
		}
		require.Equal(t, []string{"debian:source-package", "debian:binary-package", "debian:binary-packages",
			"debian:binary-package", "debian:binary-packages"}, cats)

		rels, err := b.user.ListRelations(b.ctx, client.RelationFilter{Artifact: up.ID})
		require.NoError(t, err)
		byType := map[schemas.RelationType][]int64{}
		for _, r := range rels {
			require.Equal(t, up.ID, r.Artifact)
			byType[r.Type] = append(byType[r.Type], r.Target)
		}
		require.ElementsMatch(t, related, byType[schemas.RelationExtends])
		require.ElementsMatch(t, related, byType[schemas.RelationRelatesTo])
		require.Len(t, byType, 2)

		// Errors: nothing is created from a file that is not a package or
		// from a .dsc whose files are missing.
		code, stdout, errOut := b.kiln("", "import-debian-artifact", pkg.Tarball)
		require.Equal(t, 3, code, stdout)
		require.Contains(t, errOut, "hello_1.0.tar.xz is none of these")
		lonely := t.TempDir()
		dscText, err := os.ReadFile(pkg.DSC)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(lonely, "hello_1.0.dsc"), dscText, 0o644))
		code, _, errOut = b.kiln("", "import-debian-artifact", filepath.Join(lonely, "hello_1.0.dsc"))
		require.Equal(t, 3, code)
		require.Contains(t, errOut, "hello_1.0.dsc lists hello_1.0.tar.xz")
		code, _, errOut = b.kiln("", "import-debian-artifact", "--expire-at", "soon", pkg.DSC)
		require.Equal(t, 2, code)
		require.Contains(t, errOut, "invalid --expire-at")
	})
}
