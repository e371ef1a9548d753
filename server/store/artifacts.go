package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
)

// Artifact is a stored artifact. Files is filled by Artifact and
// CreateArtifact, sorted by path.
type Artifact struct {
	ID              int64         `db:"id"`
	Category        string        `db:"category"`
	Workspace       string        `db:"workspace"`
	Data            string        `db:"data"`
	WorkRequestID   sql.NullInt64 `db:"work_request_id"`
	CreatedBy       sql.NullInt64 `db:"created_by"`
	CreatedByWorker sql.NullInt64 `db:"created_by_worker"`
	CreatedAt       time.Time     `db:"created_at"`
	ExpireAt        sql.NullTime  `db:"expire_at"`

	Files []ArtifactFile `db:"-"`
}

// Complete reports whether every file of the artifact has been uploaded.
func (a Artifact) Complete() bool {
	for _, f := range a.Files {
		if !f.Complete {
			return false
		}
	}
	return true
}

// Expired reports whether the artifact's expiry time is at or before t.
func (a Artifact) Expired(t time.Time) bool {
	return a.ExpireAt.Valid && !a.ExpireAt.Time.After(t)
}

// ArtifactFile is one file of an artifact with the identity of its content
// (SHA256, Size, Stored from its files row) and the state of its upload.
type ArtifactFile struct {
	ID          int64          `db:"id"`
	ArtifactID  int64          `db:"artifact_id"`
	Path        string         `db:"path"`
	FileID      int64          `db:"file_id"`
	SHA256      string         `db:"sha256"`
	Size        int64          `db:"size"`
	Stored      bool           `db:"stored"`
	ContentType sql.NullString `db:"content_type"`
	Complete    bool           `db:"complete"`
	// Received is how many bytes of the file have been received in order;
	// HashState is the SHA-256 state after them (nil when nothing is).
	Received        int64        `db:"received"`
	HashState       []byte       `db:"hash_state"`
	UploadUpdatedAt sql.NullTime `db:"upload_updated_at"`
}

// File is a content in the file store, by SHA-256 and size. Stored says
// whether the store holds it (always true for an empty file, which the store
// does not need).
type File struct {
	ID        int64     `db:"id"`
	SHA256    string    `db:"sha256"`
	Size      int64     `db:"size"`
	Stored    bool      `db:"stored"`
	CreatedAt time.Time `db:"created_at"`
}

// Relation is a typed link from one artifact to another.
type Relation struct {
	ID         int64     `db:"id"`
	ArtifactID int64     `db:"artifact_id"`
	TargetID   int64     `db:"target_id"`
	Type       string    `db:"type"`
	CreatedAt  time.Time `db:"created_at"`
}

// NewArtifactFile is one file of NewArtifact.
type NewArtifactFile struct {
	Path        string
	SHA256      string
	Size        int64
	ContentType sql.NullString
}

// NewArtifact is what CreateArtifact needs. Zero ids mean none.
type NewArtifact struct {
	Category        string
	Workspace       string
	Data            string
	WorkRequestID   int64
	CreatedBy       int64
	CreatedByWorker int64
	ExpireAt        *time.Time
	Files           []NewArtifactFile
}

const artifactFileColumns = `artifact_files.id, artifact_files.artifact_id, artifact_files.path, artifact_files.file_id,
	files.sha256, files.size, files.stored, artifact_files.content_type, artifact_files.complete,
	artifact_files.received, artifact_files.hash_state, artifact_files.upload_updated_at`
const artifactFileFrom = ` FROM artifact_files JOIN files ON files.id = artifact_files.file_id`

// lockRows is the row lock of a SELECT inside a transaction. SQLite needs
// none: its transactions run one at a time on the single write connection.
func (s *Store) lockRows() string {
	if s.dialect == Postgres {
		return " FOR UPDATE"
	}
	return ""
}

func nullID(id int64) any {
	if id == 0 {
		return nil
	}
	return id
}

// CreateArtifact stores an artifact and its files. A file whose content the
// store already holds, and an empty file, is complete at once; the others
// wait for their upload.
func (s *Store) CreateArtifact(ctx context.Context, n NewArtifact) (Artifact, error) {
	files := append([]NewArtifactFile(nil), n.Files...)
	// One order for the files rows that every creation locks, so that two
	// creations sharing contents cannot deadlock on PostgreSQL.
	sort.Slice(files, func(i, j int) bool {
		if files[i].SHA256 != files[j].SHA256 {
			return files[i].SHA256 < files[j].SHA256
		}
		if files[i].Size != files[j].Size {
			return files[i].Size < files[j].Size
		}
		return files[i].Path < files[j].Path
	})
	var expire any
	if n.ExpireAt != nil {
		expire = n.ExpireAt.UTC().Truncate(time.Microsecond)
	}
	data := n.Data
	if data == "" {
		data = "{}"
	}
	created := now()
	var id int64
	err := s.tx(ctx, func(tx *sqlx.Tx) error {
		err := tx.GetContext(ctx, &id, tx.Rebind(`INSERT INTO artifacts
			(category, workspace, data, work_request_id, created_by, created_by_worker, created_at, expire_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`),
			n.Category, n.Workspace, data, nullID(n.WorkRequestID), nullID(n.CreatedBy), nullID(n.CreatedByWorker), created, expire)
		if err != nil {
			return err
		}
		for _, f := range files {
			var row struct {
				ID     int64 `db:"id"`
				Stored bool  `db:"stored"`
			}
			// The upsert locks an existing row (PostgreSQL) until commit, so
			// the garbage collector cannot remove a content this artifact
			// is about to reference.
			err := tx.GetContext(ctx, &row, tx.Rebind(`INSERT INTO files (sha256, size, stored, created_at)
				VALUES (?, ?, ?, ?)
				ON CONFLICT (sha256, size) DO UPDATE SET stored = files.stored OR excluded.stored
				RETURNING id, stored`), f.SHA256, f.Size, f.Size == 0, created)
			if err != nil {
				return fmt.Errorf("file %s: %w", f.SHA256, err)
			}
			if _, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO artifact_files
				(artifact_id, path, file_id, content_type, complete) VALUES (?, ?, ?, ?, ?)`),
				id, f.Path, row.ID, f.ContentType, row.Stored); err != nil {
				if isUnique(err) {
					return fmt.Errorf("path %q listed twice: %w", f.Path, ErrConflict)
				}
				return fmt.Errorf("file %q: %w", f.Path, err)
			}
		}
		return nil
	})
	if err != nil {
		return Artifact{}, fmt.Errorf("create artifact: %w", err)
	}
	return s.Artifact(ctx, id)
}

// ArtifactWithoutFiles returns an artifact without reading its files
// (Files is nil).
func (s *Store) ArtifactWithoutFiles(ctx context.Context, id int64) (Artifact, error) {
	var a Artifact
	if err := s.r.GetContext(ctx, &a, s.rebind(`SELECT * FROM artifacts WHERE id = ?`), id); err != nil {
		return Artifact{}, notFound("artifact", id, err)
	}
	return a, nil
}

// Artifact returns an artifact with its files.
func (s *Store) Artifact(ctx context.Context, id int64) (Artifact, error) {
	a, err := s.ArtifactWithoutFiles(ctx, id)
	if err != nil {
		return Artifact{}, err
	}
	err = s.r.SelectContext(ctx, &a.Files, s.rebind(`SELECT `+artifactFileColumns+artifactFileFrom+
		` WHERE artifact_files.artifact_id = ? ORDER BY artifact_files.path`), id)
	if err != nil {
		return Artifact{}, fmt.Errorf("artifact %d files: %w", id, err)
	}
	return a, nil
}

// ArtifactFile returns the file at path in an artifact.
func (s *Store) ArtifactFile(ctx context.Context, artifactID int64, path string) (ArtifactFile, error) {
	var f ArtifactFile
	err := s.r.GetContext(ctx, &f, s.rebind(`SELECT `+artifactFileColumns+artifactFileFrom+
		` WHERE artifact_files.artifact_id = ? AND artifact_files.path = ?`), artifactID, path)
	if err != nil {
		return ArtifactFile{}, notFound("artifact file", fmt.Sprintf("%d:%q", artifactID, path), err)
	}
	return f, nil
}

// ArtifactFileByID returns an artifact file by its own id.
func (s *Store) ArtifactFileByID(ctx context.Context, id int64) (ArtifactFile, error) {
	var f ArtifactFile
	err := s.r.GetContext(ctx, &f, s.rebind(`SELECT `+artifactFileColumns+artifactFileFrom+` WHERE artifact_files.id = ?`), id)
	if err != nil {
		return ArtifactFile{}, notFound("artifact file", id, err)
	}
	return f, nil
}

// ArtifactIDsForWorkRequests is ArtifactIDsForWorkRequest for a page of
// requests in one query: request id -> its artifact ids, ascending.
func (s *Store) ArtifactIDsForWorkRequests(ctx context.Context, workRequestIDs []int64) (map[int64][]int64, error) {
	out := make(map[int64][]int64, len(workRequestIDs))
	if len(workRequestIDs) == 0 {
		return out, nil
	}
	q, args, err := sqlx.In(`SELECT id, work_request_id FROM artifacts WHERE work_request_id IN (?) ORDER BY id`, workRequestIDs)
	if err != nil {
		return nil, fmt.Errorf("artifacts of work requests: %w", err)
	}
	var rows []struct {
		ID            int64 `db:"id"`
		WorkRequestID int64 `db:"work_request_id"`
	}
	if err := s.r.SelectContext(ctx, &rows, s.rebind(q), args...); err != nil {
		return nil, fmt.Errorf("artifacts of work requests: %w", err)
	}
	for _, r := range rows {
		out[r.WorkRequestID] = append(out[r.WorkRequestID], r.ID)
	}
	return out, nil
}

// ArtifactIDsForWorkRequest returns the ids of the artifacts created for a
// work request, ascending (the work request's "artifacts").
func (s *Store) ArtifactIDsForWorkRequest(ctx context.Context, workRequestID int64) ([]int64, error) {
	ids := []int64{}
	err := s.r.SelectContext(ctx, &ids, s.rebind(`SELECT id FROM artifacts WHERE work_request_id = ? ORDER BY id`), workRequestID)
	if err != nil {
		return nil, fmt.Errorf("artifacts of work request %d: %w", workRequestID, err)
	}
	return ids, nil
}

// SaveUploadProgress records that an incomplete artifact file now has to
// bytes, with the hash state after them, provided it still had from bytes:
// ErrConflict otherwise (another upload moved it, or it is complete).
func (s *Store) SaveUploadProgress(ctx context.Context, id, from, to int64, hashState []byte) error {
	res, err := s.w.ExecContext(ctx, s.rebind(`UPDATE artifact_files SET received = ?, hash_state = ?, upload_updated_at = ?
		WHERE id = ? AND received = ? AND NOT complete`), to, hashState, now(), id, from)
	if err != nil {
		return fmt.Errorf("save upload progress of artifact file %d: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		if _, err := s.ArtifactFileByID(ctx, id); err != nil {
			return err
		}
		return fmt.Errorf("artifact file %d: upload moved on or completed: %w", id, ErrConflict)
	}
	return nil
}

// ResetUpload forgets what an incomplete artifact file has received;
// ErrNotFound when there is no such incomplete file.
func (s *Store) ResetUpload(ctx context.Context, id int64) error {
	return s.execOne(ctx, "artifact file", id, `UPDATE artifact_files SET received = 0, hash_state = NULL, upload_updated_at = ?
		WHERE id = ? AND NOT complete`, now(), id)
}

// CompleteArtifactFile marks an artifact file complete and its content
// stored. In the same transaction, with the content's row locked, it calls
// commit with the file as it is then, so that commit can put the content
// into the file store (or drop the upload when the content is already
// there, f.Stored) without the garbage collector deleting it meanwhile.
// A file that is already complete is left alone and commit is not called.
func (s *Store) CompleteArtifactFile(ctx context.Context, id int64, commit func(f ArtifactFile) error) error {
	err := s.tx(ctx, func(tx *sqlx.Tx) error {
		var f ArtifactFile
		err := tx.GetContext(ctx, &f, tx.Rebind(`SELECT `+artifactFileColumns+artifactFileFrom+
			` WHERE artifact_files.id = ?`+s.lockRows()), id)
		if err != nil {
			return notFound("artifact file", id, err)
		}
		if f.Complete {
			return nil
		}
		if err := commit(f); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE files SET stored = TRUE WHERE id = ?`), f.FileID); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, tx.Rebind(`UPDATE artifact_files SET complete = TRUE, received = ?, hash_state = NULL,
			upload_updated_at = ? WHERE id = ?`), f.Size, now(), id)
		return err
	})
	if err != nil {
		return fmt.Errorf("complete artifact file %d: %w", id, err)
	}
	return nil
}

// IncompleteArtifactFiles returns which of ids are artifact files that
// still wait for (part of) their upload.
func (s *Store) IncompleteArtifactFiles(ctx context.Context, ids []int64) (map[int64]bool, error) {
	out := map[int64]bool{}
	const batch = 500
	for len(ids) > 0 {
		n := min(len(ids), batch)
		q, args, err := sqlx.In(`SELECT id FROM artifact_files WHERE NOT complete AND id IN (?)`, ids[:n])
		if err != nil {
			return nil, err
		}
		var found []int64
		if err := s.r.SelectContext(ctx, &found, s.rebind(q), args...); err != nil {
			return nil, fmt.Errorf("incomplete artifact files: %w", err)
		}
		for _, id := range found {
			out[id] = true
		}
		ids = ids[n:]
	}
	return out, nil
}

// FileStored reports whether some files row with this SHA-256 says that its
// content is in the store.
func (s *Store) FileStored(ctx context.Context, sha256 string) (bool, error) {
	var n int
	err := s.r.GetContext(ctx, &n, s.rebind(`SELECT COUNT(*) FROM files WHERE sha256 = ? AND stored AND size > 0`), sha256)
	if err != nil {
		return false, fmt.Errorf("file %s: %w", sha256, err)
	}
	return n > 0, nil
}

// expiredQuery selects the ids of artifacts that have expired at the first
// parameter and that no artifact that is kept reaches through relations:
// an artifact is kept when it has not expired, and so is every artifact a
// kept artifact has a relation to, whatever its type (debusine's mark and
// sweep).
const expiredQuery = `WITH RECURSIVE keep(id) AS (
		SELECT id FROM artifacts WHERE expire_at IS NULL OR expire_at > ?
		UNION
		SELECT artifact_relations.target_id FROM artifact_relations JOIN keep ON artifact_relations.artifact_id = keep.id
	)
	SELECT id FROM artifacts WHERE expire_at IS NOT NULL AND expire_at <= ? AND id NOT IN (SELECT id FROM keep)
	ORDER BY id LIMIT ?`

// DeleteExpiredArtifacts deletes up to limit artifacts that have expired at
// t and that no kept artifact needs (see expiredQuery), with their files
// lists and relations. It returns the ids of the deleted artifacts and of
// their artifact files (whose partial uploads the caller removes). The
// contents stay in the files table until DeleteFileIfUnused.
func (s *Store) DeleteExpiredArtifacts(ctx context.Context, t time.Time, limit int) (artifacts, artifactFiles []int64, err error) {
	t = t.UTC()
	err = s.tx(ctx, func(tx *sqlx.Tx) error {
		artifacts, artifactFiles = nil, nil
		if err := tx.SelectContext(ctx, &artifacts, tx.Rebind(expiredQuery), t, t, max(limit, 1)); err != nil {
			return err
		}
		if len(artifacts) == 0 {
			return nil
		}
		q, args, err := sqlx.In(`SELECT id FROM artifact_files WHERE artifact_id IN (?) ORDER BY id`, artifacts)
		if err != nil {
			return err
		}
		if err := tx.SelectContext(ctx, &artifactFiles, tx.Rebind(q), args...); err != nil {
			return err
		}
		q, args, err = sqlx.In(`DELETE FROM artifacts WHERE id IN (?)`, artifacts)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, tx.Rebind(q), args...)
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("delete expired artifacts: %w", err)
	}
	return artifacts, artifactFiles, nil
}

// UnusedFiles returns up to limit contents that no artifact lists.
func (s *Store) UnusedFiles(ctx context.Context, limit int) ([]File, error) {
	var out []File
	err := s.r.SelectContext(ctx, &out, s.rebind(`SELECT * FROM files WHERE NOT EXISTS
		(SELECT 1 FROM artifact_files WHERE artifact_files.file_id = files.id) ORDER BY id LIMIT ?`), max(limit, 1))
	if err != nil {
		return nil, fmt.Errorf("unused files: %w", err)
	}
	return out, nil
}

// DeleteFileIfUnused deletes the files row id if no artifact lists it,
// calling remove with it inside the transaction, with the row locked, so
// that remove can take the content out of the store before any new
// artifact can list it again; an error from remove keeps the row. It
// reports whether the row was deleted (false when it is gone or in use).
func (s *Store) DeleteFileIfUnused(ctx context.Context, id int64, remove func(File) error) (bool, error) {
	deleted := false
	err := s.tx(ctx, func(tx *sqlx.Tx) error {
		var f File
		if err := tx.GetContext(ctx, &f, tx.Rebind(`SELECT * FROM files WHERE id = ?`+s.lockRows()), id); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return nil
			}
			return err
		}
		var used int
		if err := tx.GetContext(ctx, &used, tx.Rebind(`SELECT COUNT(*) FROM artifact_files WHERE file_id = ?`), id); err != nil {
			return err
		}
		if used > 0 {
			return nil
		}
		if _, err := tx.ExecContext(ctx, tx.Rebind(`DELETE FROM files WHERE id = ?`), id); err != nil {
			return err
		}
		if err := remove(f); err != nil {
			return err
		}
		deleted = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("delete file %d: %w", id, err)
	}
	return deleted, nil
}

// Relation types, as debusine's.
const (
	RelationExtends    = "extends"
	RelationRelatesTo  = "relates-to"
	RelationBuiltUsing = "built-using"
)

// CreateRelation links artifact to target with a relation of typ. It
// returns the relation and whether it is new; an existing identical
// relation is returned as it is.
func (s *Store) CreateRelation(ctx context.Context, artifactID, targetID int64, typ string) (Relation, bool, error) {
	var id int64
	created := true
	err := s.tx(ctx, func(tx *sqlx.Tx) error {
		err := tx.GetContext(ctx, &id, tx.Rebind(`INSERT INTO artifact_relations (artifact_id, target_id, type, created_at)
			VALUES (?, ?, ?, ?) ON CONFLICT (artifact_id, target_id, type) DO NOTHING RETURNING id`),
			artifactID, targetID, typ, now())
		if errors.Is(err, sql.ErrNoRows) {
			created = false
			return tx.GetContext(ctx, &id, tx.Rebind(`SELECT id FROM artifact_relations
				WHERE artifact_id = ? AND target_id = ? AND type = ?`), artifactID, targetID, typ)
		}
		return err
	})
	if err != nil {
		return Relation{}, false, fmt.Errorf("create relation %d %s %d: %w", artifactID, typ, targetID, err)
	}
	r, err := s.Relation(ctx, id)
	return r, created, err
}

// Relation returns one relation.
func (s *Store) Relation(ctx context.Context, id int64) (Relation, error) {
	var r Relation
	if err := s.r.GetContext(ctx, &r, s.rebind(`SELECT * FROM artifact_relations WHERE id = ?`), id); err != nil {
		return Relation{}, notFound("relation", id, err)
	}
	return r, nil
}

// RelationFilter selects relations: those from ArtifactID, or those to
// TargetID (zero means any).
type RelationFilter struct {
	ArtifactID int64
	TargetID   int64
}

// Relations returns the relations that f selects, by id.
func (s *Store) Relations(ctx context.Context, f RelationFilter) ([]Relation, error) {
	var where []string
	var args []any
	if f.ArtifactID != 0 {
		where = append(where, "artifact_id = ?")
		args = append(args, f.ArtifactID)
	}
	if f.TargetID != 0 {
		where = append(where, "target_id = ?")
		args = append(args, f.TargetID)
	}
	q := `SELECT * FROM artifact_relations`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	out := []Relation{}
	if err := s.r.SelectContext(ctx, &out, s.rebind(q+" ORDER BY id"), args...); err != nil {
		return nil, fmt.Errorf("relations: %w", err)
	}
	return out, nil
}

// DeleteRelation deletes one relation.
func (s *Store) DeleteRelation(ctx context.Context, id int64) error {
	return s.execOne(ctx, "relation", id, `DELETE FROM artifact_relations WHERE id = ?`, id)
}
