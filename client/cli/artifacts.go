package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/schemas"
)

// artifactCreated is what create-artifact prints, as debusine's client does.
type artifactCreated struct {
	Result        string     `json:"result"`
	Message       string     `json:"message"`
	ArtifactID    int64      `json:"artifact_id"`
	FilesToUpload int        `json:"files_to_upload"`
	ExpireAt      *time.Time `json:"expire_at"`
}

// artifactDownloaded is what download-artifact prints.
type artifactDownloaded struct {
	ArtifactID int64    `json:"artifact_id"`
	Directory  string   `json:"directory,omitempty"`
	Files      []string `json:"files,omitempty"`
	Tarball    string   `json:"tarball,omitempty"`
}

// parseArtifactID parses an artifact id argument.
func parseArtifactID(s string) (int64, error) { return parseIDOf("artifact", s) }

// artifactIDArg accepts exactly one argument, an artifact id.
var artifactIDArg = idArgOf("artifact")

// expireAtLayouts are the forms --expire-at accepts; those without a zone
// are UTC.
var expireAtLayouts = []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02"}

func parseExpireAt(s string) (time.Time, error) {
	for _, l := range expireAtLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC(), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return time.Now().Add(d).UTC(), nil
	}
	return time.Time{}, fmt.Errorf("invalid --expire-at %q: want an RFC 3339 time (2026-12-31T23:59:00Z), a date (2026-12-31) or a duration from now (72h)", s)
}

// artifactFiles maps each file to upload to its path in the artifact: its
// path relative to base, or its base name when base is empty.
func artifactFiles(uploads []string, base string) (map[string]string, error) {
	var absBase string
	if base != "" {
		var err error
		if absBase, err = filepath.Abs(base); err != nil {
			return nil, err
		}
		if fi, err := os.Stat(absBase); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("--upload-base-directory %s is not a directory", base)
		}
	}
	out := map[string]string{}
	for _, u := range uploads {
		local := u
		if absBase != "" && !filepath.IsAbs(local) {
			local = filepath.Join(absBase, local)
		}
		local, err := filepath.Abs(local)
		if err != nil {
			return nil, err
		}
		fi, err := os.Stat(local)
		if err != nil {
			return nil, fmt.Errorf("cannot upload %s: %w", u, err)
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("cannot upload %s: not a regular file", u)
		}
		name := filepath.Base(local)
		if absBase != "" {
			rel, err := filepath.Rel(absBase, local)
			if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
				return nil, fmt.Errorf("cannot upload %s: it is not under --upload-base-directory %s", u, base)
			}
			name = filepath.ToSlash(rel)
		}
		if err := schemas.ValidateArtifactPath(name); err != nil {
			return nil, fmt.Errorf("cannot upload %s as %q: %w", u, name, err)
		}
		if prev, ok := out[name]; ok && prev != local {
			return nil, fmt.Errorf("cannot upload %s: %s is already uploaded as %q", u, prev, name)
		}
		out[name] = local
	}
	return out, nil
}

func (a *app) createArtifactCommand() *cobra.Command {
	var (
		uploads                              []string
		baseDir, workspace, dataFile, expire string
		chunkSize                            int64
		noProgress                           bool
	)
	cmd := &cobra.Command{
		Use:   "create-artifact CATEGORY [--upload FILE...]",
		Short: "Create an artifact and upload its files",
		Long: `Create an artifact of category CATEGORY from local files and upload them,
resuming after interruptions. A file is stored in the artifact under its base
name, or under its path relative to --upload-base-directory. Files the server
already holds (same SHA-256) are not sent again. With --data, the artifact's
data is the YAML or JSON mapping in that file (- for standard input).
On a terminal, the upload shows a progress bar on standard error.`,
		Example: `  kiln create-artifact debian:upload --upload hello_1.0_amd64.changes hello_1.0.dsc
  kiln create-artifact test-results --upload-base-directory out --upload out/logs/a.log out/summary.json --expire-at 72h`,
		Args: cobra.MinimumNArgs(1),
		RunE: a.runE(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			// Further arguments are more files, so that --upload a b c works
			// as in debusine's client.
			files, err := artifactFiles(append(append([]string{}, uploads...), args[1:]...), baseDir)
			if err != nil {
				return err
			}
			create := schemas.ArtifactCreate{Category: args[0], Workspace: workspace, Files: map[string]schemas.ArtifactFileCreate{}}
			if dataFile != "" {
				if create.Data, err = a.readData(dataFile); err != nil {
					return err
				}
			}
			if expire != "" {
				t, err := parseExpireAt(expire)
				if err != nil {
					return usageErrorf("%v", err)
				}
				create.ExpireAt = &t
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			for p, local := range files {
				fr, err := client.DescribeFile(local)
				if err != nil {
					return err
				}
				create.Files[p] = fr
			}
			art, err := c.CreateArtifact(ctx, create)
			if err != nil {
				return err
			}
			if err := printYAML(a.stdout, artifactCreated{Result: "success", Message: "New artifact created: " + art.URL,
				ArtifactID: art.ID, FilesToUpload: len(art.FilesToUpload), ExpireAt: art.ExpireAt}); err != nil {
				return err
			}
			opts := []client.UploadOption{client.WithChunkSize(chunkSize)}
			if !noProgress && isTerminal(a.stderr) {
				bar := newProgressBar(a.stderr)
				opts = append(opts, client.WithProgress(bar.update))
			}
			if _, err := c.UploadFiles(ctx, art.ID, files, opts...); err != nil {
				return fmt.Errorf("artifact %d: %w", art.ID, err)
			}
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringArrayVar(&uploads, "upload", nil, "file to upload (repeatable; further arguments are files too)")
	f.StringVar(&baseDir, "upload-base-directory", "", "store files under their path relative to this directory (default: their base name)")
	f.StringVar(&workspace, "workspace", "", "workspace of the artifact (default: the server's)")
	f.StringVar(&dataFile, "data", "", "file with the artifact's data (YAML or JSON mapping); - reads standard input (default {})")
	f.StringVar(&expire, "expire-at", "", "when the artifact may be deleted: RFC 3339 time, date, or duration from now (default: never)")
	f.Int64Var(&chunkSize, "chunk-size", client.DefaultChunkSize, "bytes sent per upload request")
	f.BoolVar(&noProgress, "no-progress", false, "do not show a progress bar, even on a terminal")
	return cmd
}

func (a *app) showArtifactCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show-artifact ID",
		Short: "Show an artifact: its data, files and download URLs",
		Args:  artifactIDArg,
		RunE: a.runE(func(ctx context.Context, _ *cobra.Command, args []string) error {
			id, _ := parseArtifactID(args[0])
			c, err := a.client()
			if err != nil {
				return err
			}
			art, err := c.GetArtifact(ctx, id)
			if err != nil {
				return err
			}
			return printYAML(a.stdout, art)
		}),
	}
}

func (a *app) downloadArtifactCommand() *cobra.Command {
	var (
		target  string
		tarball bool
	)
	cmd := &cobra.Command{
		Use:   "download-artifact ID",
		Short: "Download an artifact's files (or the whole artifact as .tar.gz)",
		Long: `Download every file of artifact ID into --target-directory, at its path in
the artifact, checking each file's size and SHA-256. With --tarball, save the
artifact as artifact-ID.tar.gz in that directory instead.`,
		Args: artifactIDArg,
		RunE: a.runE(func(ctx context.Context, _ *cobra.Command, args []string) error {
			id, _ := parseArtifactID(args[0])
			if fi, err := os.Stat(target); err != nil || !fi.IsDir() {
				return fmt.Errorf("cannot write to %s: not a directory", target)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			if tarball {
				dest := filepath.Join(target, fmt.Sprintf("artifact-%d.tar.gz", id))
				if err := downloadTarball(ctx, c, id, dest); err != nil {
					return err
				}
				return printYAML(a.stdout, artifactDownloaded{ArtifactID: id, Tarball: dest})
			}
			art, err := c.DownloadArtifact(ctx, id, target)
			if err != nil {
				return err
			}
			out := artifactDownloaded{ArtifactID: id, Directory: target, Files: []string{}}
			for p := range art.Files {
				out.Files = append(out.Files, p)
			}
			sort.Strings(out.Files)
			return printYAML(a.stdout, out)
		}),
	}
	cmd.Flags().StringVar(&target, "target-directory", ".", "directory to save the artifact in")
	cmd.Flags().BoolVar(&tarball, "tarball", false, "save the artifact as artifact-ID.tar.gz")
	return cmd
}

// downloadTarball saves artifact id as dest, through a temporary file
// renamed into place once complete.
func downloadTarball(ctx context.Context, c *client.Client, id int64, dest string) error {
	tmp, err := os.CreateTemp(filepath.Dir(dest), ".kiln-download-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := c.DownloadTarball(ctx, id, tmp); err != nil {
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dest)
}

func (a *app) showArtifactRelationsCommand() *cobra.Command {
	var reverse bool
	cmd := &cobra.Command{
		Use:   "show-artifact-relations ID",
		Short: "Show the relations of an artifact (extends, relates-to, built-using)",
		Args:  artifactIDArg,
		RunE: a.runE(func(ctx context.Context, _ *cobra.Command, args []string) error {
			id, _ := parseArtifactID(args[0])
			c, err := a.client()
			if err != nil {
				return err
			}
			f := client.RelationFilter{Artifact: id}
			if reverse {
				f = client.RelationFilter{Target: id}
			}
			rels, err := c.ListRelations(ctx, f)
			if err != nil {
				return err
			}
			if rels == nil {
				rels = []schemas.ArtifactRelation{}
			}
			return printYAML(a.stdout, rels)
		}),
	}
	cmd.Flags().BoolVar(&reverse, "reverse", false, "show the relations to the artifact rather than from it")
	return cmd
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// progressBar draws one line per file on a terminal, redrawn at most ten
// times a second.
type progressBar struct {
	mu    sync.Mutex
	w     io.Writer
	last  time.Time
	path  string
	width int
}

func newProgressBar(w io.Writer) *progressBar { return &progressBar{w: w, width: 30} }

func (b *progressBar) update(p client.UploadProgress) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if p.Path == b.path && !p.Done && now.Sub(b.last) < 100*time.Millisecond {
		return
	}
	b.path, b.last = p.Path, now
	fmt.Fprint(b.w, "\r"+renderProgress(p, b.width)+"\x1b[K")
	if p.Done {
		fmt.Fprintln(b.w)
		b.path = ""
	}
}

// renderProgress is one progress line: the path, a bar, the percentage and
// the sizes.
func renderProgress(p client.UploadProgress, width int) string {
	frac := 1.0
	if p.Size > 0 {
		frac = min(max(float64(p.Sent)/float64(p.Size), 0), 1)
	}
	filled := int(frac * float64(width))
	bar := strings.Repeat("=", filled)
	if filled < width {
		bar += ">" + strings.Repeat(" ", width-filled-1)
	}
	return fmt.Sprintf("%s [%s] %3d%% %s/%s", p.Path, bar, int(frac*100), humanBytes(p.Sent), humanBytes(p.Size))
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
