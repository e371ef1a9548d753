package worker

import (
	"context"
	"errors"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/tasks"
)

// runArtifacts gives a task access to the artifact store on behalf of its
// work request.
type runArtifacts struct {
	w  *Worker
	wr schemas.WorkRequest
}

func (w *Worker) artifacts(wr schemas.WorkRequest) tasks.Artifacts {
	return &runArtifacts{w: w, wr: wr}
}

var errNoArtifacts = errors.New("artifacts are not available yet")

// Download implements tasks.Artifacts.
func (a *runArtifacts) Download(ctx context.Context, id int64, dir string) error {
	return errNoArtifacts
}

// Upload implements tasks.Artifacts.
func (a *runArtifacts) Upload(ctx context.Context, na tasks.NewArtifact) (int64, error) {
	return 0, errNoArtifacts
}
