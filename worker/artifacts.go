package worker

import (
	"context"
	"fmt"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/tasks"
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

// Download implements tasks.Artifacts.
func (a *runArtifacts) Download(ctx context.Context, id int64, dir string) error {
	if _, err := a.w.api.DownloadArtifact(ctx, id, dir); err != nil {
		return fmt.Errorf("download artifact %d: %w", id, err)
	}
	return nil
}

// Upload implements tasks.Artifacts. The client resumes interrupted file
// uploads by itself (it asks the server what it already has).
func (a *runArtifacts) Upload(ctx context.Context, na tasks.NewArtifact) (int64, error) {
	art, err := a.w.api.UploadArtifact(ctx, client.ArtifactUpload{
		Category: na.Category, Workspace: a.wr.Workspace, Data: na.Data, Files: na.Files, WorkRequest: a.wr.ID,
	})
	if err != nil {
		return 0, fmt.Errorf("upload %s artifact: %w", na.Category, err)
	}
	for _, target := range na.RelatesTo {
		if _, err := a.w.api.CreateRelation(ctx, art.ID, target, schemas.RelationRelatesTo); err != nil {
			return art.ID, err
		}
	}
	a.w.log.Info().Int64("work_request", a.wr.ID).Int64("artifact", art.ID).Str("category", na.Category).Msg("artifact uploaded")
	return art.ID, nil
}
