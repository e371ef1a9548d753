package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/debpkg"
	"github.com/kiln-ci/kiln/schemas"
)

// artifactImported is what import-debian-artifact prints, as debusine's
// client does: the first artifact, and the others it relates to.
type artifactImported struct {
	Result     string            `json:"result"`
	Message    string            `json:"message"`
	ArtifactID int64             `json:"artifact_id"`
	Extends    []relatedArtifact `json:"extends,omitempty"`
	RelatesTo  []relatedArtifact `json:"relates_to,omitempty"`
}

type relatedArtifact struct {
	ArtifactID int64 `json:"artifact_id"`
}

func (a *app) importDebianArtifactCommand() *cobra.Command {
	var (
		workspace, expire string
		chunkSize         int64
		noProgress        bool
	)
	cmd := &cobra.Command{
		Use:   "import-debian-artifact FILE",
		Short: "Import a Debian source package (.dsc), binary package (.deb) or upload (.changes)",
		Long: `Create artifacts from a Debian package file and the files it lists, as
debusine's client does, and upload them:

  .dsc          one debian:source-package (the .dsc and the files it lists)
  .deb, .udeb   one debian:binary-package (read with dpkg-deb)
  .changes      a debian:upload (the .changes and every file it lists), then a
                debian:source-package for its .dsc, and for each binary
                architecture a debian:binary-package per .deb and a
                debian:binary-packages grouping them; the upload extends and
                relates to each of the others

Every file a .dsc or .changes lists must be in its directory with the size and
checksums it gives; nothing is created otherwise. The output names the first
artifact and the related ones.`,
		Example: `  kiln import-debian-artifact hello_1.0-1.dsc
  kiln import-debian-artifact --workspace System --expire-at 720h hello_1.0-1_amd64.changes`,
		Args: cobra.ExactArgs(1),
		RunE: a.runE(func(ctx context.Context, _ *cobra.Command, args []string) error {
			var expireAt *time.Time
			if expire != "" {
				t, err := parseExpireAt(expire)
				if err != nil {
					return usageErrorf("%v", err)
				}
				expireAt = &t
			}
			// Describe (and check) everything before creating anything.
			arts, err := debpkg.ForFile(ctx, args[0])
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			opts := []client.UploadOption{client.WithChunkSize(chunkSize)}
			if !noProgress && isTerminal(a.stderr) {
				opts = append(opts, client.WithProgress(newProgressBar(a.stderr).update))
			}
			uploaded := make([]schemas.Artifact, 0, len(arts))
			for i, art := range arts {
				got, err := c.UploadArtifact(ctx, client.ArtifactUpload{Category: art.Category, Workspace: workspace,
					Data: art.Data, Files: art.Files, ContentTypes: art.ContentTypes, ExpireAt: expireAt}, opts...)
				if err != nil {
					a.reportPartialImport(uploaded)
					return fmt.Errorf("artifact %d of %d (%s): %w", i+1, len(arts), art.Category, err)
				}
				uploaded = append(uploaded, got)
			}
			primary := uploaded[0]
			out := artifactImported{Result: "success", Message: "New artifact created: " + primary.URL, ArtifactID: primary.ID}
			for _, related := range uploaded[1:] {
				for _, typ := range []schemas.RelationType{schemas.RelationExtends, schemas.RelationRelatesTo} {
					if _, err := c.CreateRelation(ctx, primary.ID, related.ID, typ); err != nil {
						a.reportPartialImport(uploaded)
						return err
					}
				}
				out.Extends = append(out.Extends, relatedArtifact{ArtifactID: related.ID})
				out.RelatesTo = append(out.RelatesTo, relatedArtifact{ArtifactID: related.ID})
			}
			return printYAML(a.stdout, out)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&workspace, "workspace", "", "workspace of the artifacts (default: the server's)")
	f.StringVar(&expire, "expire-at", "", "when the artifacts may be deleted: RFC 3339 time, date, or duration from now (default: never)")
	f.Int64Var(&chunkSize, "chunk-size", client.DefaultChunkSize, "bytes sent per upload request")
	f.BoolVar(&noProgress, "no-progress", false, "do not show a progress bar, even on a terminal")
	return cmd
}

// reportPartialImport tells the user, before the error, which artifacts an
// import that failed part way had already created: they stay on the server.
func (a *app) reportPartialImport(uploaded []schemas.Artifact) {
	if len(uploaded) == 0 {
		return
	}
	ids := make([]string, len(uploaded))
	for i, u := range uploaded {
		ids[i] = fmt.Sprint(u.ID)
	}
	fmt.Fprintf(a.stderr, "kiln: the import stopped after creating artifacts %s\n", strings.Join(ids, ", "))
}
