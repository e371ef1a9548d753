package artifacts

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-ci/kiln/server/store"
)

// gcBatch is how many artifacts or contents one garbage collector step
// handles in one transaction.
const gcBatch = 500

// GCStats says what one garbage collection removed.
type GCStats struct {
	// Artifacts is the number of expired artifacts deleted.
	Artifacts int
	// Files is the number of contents removed from the store, and Bytes
	// their total size.
	Files int
	Bytes int64
	// Uploads is the number of partial uploads removed.
	Uploads int
}

// CollectGarbage deletes what is no longer needed at now:
//
//  1. expired artifacts that no kept artifact reaches through a relation
//     (an artifact is kept while it has not expired, and so is every
//     artifact it has a relation to), with their partial uploads;
//  2. the contents that no artifact lists any more — a content that another
//     artifact still lists is never removed, whichever artifact uploaded
//     it;
//  3. partial uploads older than the grace period whose artifact file is
//     gone or complete.
//
// It is safe to run while artifacts are created and uploaded: a content
// is only removed with its database row locked and unreferenced.
func (m *Manager) CollectGarbage(ctx context.Context, now time.Time) (GCStats, error) {
	var st GCStats
	if err := m.backend.Recover(ctx, m.st.FileStored); err != nil {
		return st, err
	}
	for {
		ids, files, err := m.st.DeleteExpiredArtifacts(ctx, now, gcBatch)
		if err != nil {
			return st, err
		}
		st.Artifacts += len(ids)
		for _, id := range files {
			if removed, err := m.removePart(ctx, id); err != nil {
				return st, err
			} else if removed {
				st.Uploads++
			}
		}
		if len(ids) > 0 {
			m.log.Info().Ints64("artifacts", ids).Msg("expired artifacts deleted")
		}
		if len(ids) < gcBatch {
			break
		}
	}
	for {
		files, err := m.st.UnusedFiles(ctx, gcBatch)
		if err != nil {
			return st, err
		}
		for _, f := range files {
			var commit, undo func() error
			deleted, err := m.st.DeleteFileIfUnused(ctx, f.ID, func(f store.File) error {
				if !f.Stored || f.Size == 0 {
					return nil
				}
				var err error
				commit, undo, err = m.backend.Remove(f.SHA256)
				return err
			})
			if err != nil {
				if undo != nil {
					if uerr := undo(); uerr != nil {
						err = errors.Join(err, uerr)
					}
				}
				return st, err
			}
			if !deleted {
				continue
			}
			if commit != nil {
				if err := commit(); err != nil {
					return st, err
				}
				st.Files++
				st.Bytes += f.Size
			}
		}
		if len(files) < gcBatch {
			break
		}
	}
	n, err := m.sweepParts(ctx, now)
	st.Uploads += n
	return st, err
}

// removePart removes the partial upload of artifact file id, waiting for an
// upload that is writing it.
func (m *Manager) removePart(ctx context.Context, id int64) (bool, error) {
	unlock, err := m.locks.lock(ctx, id)
	if err != nil {
		return false, err
	}
	defer unlock()
	err = os.Remove(m.partPath(id))
	if err == nil {
		return true, nil
	}
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return false, fmt.Errorf("remove partial upload: %w", err)
}

// sweepParts removes partial uploads left behind (by a crash, say) whose
// artifact file is gone or complete, once they are older than the grace
// period.
func (m *Manager) sweepParts(ctx context.Context, now time.Time) (int, error) {
	entries, err := os.ReadDir(m.uploads)
	if err != nil {
		return 0, fmt.Errorf("artifact uploads: %w", err)
	}
	var ids []int64
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".part")
		id, err := strconv.ParseInt(name, 10, 64)
		if !ok || err != nil {
			continue
		}
		info, err := e.Info()
		if err != nil || now.Sub(info.ModTime()) < m.partGrace {
			continue
		}
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		return 0, nil
	}
	incomplete, err := m.st.IncompleteArtifactFiles(ctx, ids)
	if err != nil {
		return 0, err
	}
	removed := 0
	for _, id := range ids {
		if incomplete[id] {
			continue
		}
		ok, err := m.removePart(ctx, id)
		if err != nil {
			return removed, err
		}
		if ok {
			removed++
		}
	}
	return removed, nil
}

// RunGC collects garbage at once and then every interval until ctx ends,
// logging failures.
func (m *Manager) RunGC(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		st, err := m.CollectGarbage(ctx, time.Now())
		switch {
		case err != nil && ctx.Err() == nil:
			m.log.Error().Err(err).Msg("artifact garbage collection")
		case st != GCStats{}:
			m.log.Info().Int("artifacts", st.Artifacts).Int("files", st.Files).Int64("bytes", st.Bytes).
				Int("uploads", st.Uploads).Msg("artifact garbage collected")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
