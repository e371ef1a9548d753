package worker

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/tasks"
	"github.com/kiln-ci/kiln/worker/cache"
)

// runArtifacts gives a task access to the artifact store on behalf of its
// work request: what it uploads is linked to that request.
type runArtifacts struct {
	w  *Worker
	wr schemas.WorkRequest
}

func (w *Worker) artifacts(wr schemas.WorkRequest) tasks.Artifacts {
	return &runArtifacts{w: w, wr: wr}
}

// host is the tasks' view of the worker's machine configuration.
func (w *Worker) host() tasks.Host {
	return tasks.Host{BuildUser: w.cfg.BuildUser, ScratchDir: w.cfg.ScratchDir}
}

// Get implements tasks.Artifacts.
func (a *runArtifacts) Get(ctx context.Context, id int64) (schemas.Artifact, error) {
	art, err := a.w.api.GetArtifact(ctx, id)
	if err != nil {
		return schemas.Artifact{}, fmt.Errorf("artifact %d: %w", id, err)
	}
	return art, nil
}

// Download implements tasks.Artifacts.
func (a *runArtifacts) Download(ctx context.Context, id int64, dir string) error {
	if _, err := a.w.api.DownloadArtifact(ctx, id, dir); err != nil {
		return fmt.Errorf("download artifact %d: %w", id, err)
	}
	return nil
}

// Cached implements tasks.Artifacts: the file is fetched once per worker
// and checked against the SHA-256 the server recorded for it.
func (a *runArtifacts) Cached(ctx context.Context, id int64, name string) (string, func(), error) {
	art, err := a.Get(ctx, id)
	if err != nil {
		return "", nil, err
	}
	f, ok := art.Files[name]
	if !ok {
		return "", nil, fmt.Errorf("artifact %d has no file %q", id, name)
	}
	sum := f.Checksums["sha256"]
	if sum == "" {
		return "", nil, fmt.Errorf("artifact %d: the server gives no SHA-256 for %q", id, name)
	}
	path, release, err := a.w.cache.GetNamed(ctx, sum, fileSuffix(name), f.Size, func(ctx context.Context, w io.Writer) error {
		_, err := a.w.api.DownloadFile(ctx, id, name, w, nil)
		return err
	})
	if err != nil {
		return "", nil, fmt.Errorf("file %q of artifact %d: %w", name, id, err)
	}
	return path, release, nil
}

// fileSuffix returns the extensions of name (".tar.zst"), which programs
// such as sbuild read to choose a decompressor, or "" when the cache would
// not keep them in a file name.
func fileSuffix(name string) string {
	base := filepath.Base(name)
	i := strings.Index(base, ".")
	if i <= 0 {
		return ""
	}
	if suffix := base[i:]; cache.ValidSuffix(suffix) {
		return suffix
	}
	return ""
}

// Upload implements tasks.Artifacts. The client resumes interrupted file
// uploads by itself (it asks the server what it already has).
func (a *runArtifacts) Upload(ctx context.Context, na tasks.NewArtifact) (int64, error) {
	art, err := a.w.api.UploadArtifact(ctx, client.ArtifactUpload{
		Category: na.Category, Workspace: a.wr.Workspace, Data: na.Data, Files: na.Files, WorkRequest: a.wr.ID, Attempt: a.wr.Attempt,
	})
	if err != nil {
		return 0, fmt.Errorf("upload %s artifact: %w", na.Category, err)
	}
	rels := na.Relations
	for _, target := range na.RelatesTo {
		rels = append(rels, tasks.Relation{Type: schemas.RelationRelatesTo, Target: target})
	}
	for _, r := range rels {
		if _, err := a.w.api.CreateRelation(ctx, art.ID, r.Target, r.Type); err != nil {
			return art.ID, err
		}
	}
	a.w.log.Info().Int64("work_request", a.wr.ID).Int64("artifact", art.ID).Str("category", na.Category).Msg("artifact uploaded")
	return art.ID, nil
}
