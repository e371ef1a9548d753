package store

import (
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func shaOf(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func fileOf(path, content string) NewArtifactFile {
	return NewArtifactFile{Path: path, SHA256: shaOf(content), Size: int64(len(content))}
}

// newArtifact creates an artifact by user u with files path -> content.
func newArtifact(t *testing.T, st *Store, u User, expire *time.Time, files ...NewArtifactFile) Artifact {
	t.Helper()
	a, err := st.CreateArtifact(t.Context(), NewArtifact{Category: "test", Workspace: "System", CreatedBy: u.ID,
		ExpireAt: expire, Files: files})
	require.NoError(t, err)
	return a
}

// completeFile marks an artifact file complete as a finished upload would.
func completeFile(t *testing.T, st *Store, id int64) {
	t.Helper()
	require.NoError(t, st.CompleteArtifactFile(t.Context(), id, func(ArtifactFile) error { return nil }))
}

func fileByPath(t *testing.T, a Artifact, path string) ArtifactFile {
	t.Helper()
	for _, f := range a.Files {
		if f.Path == path {
			return f
		}
	}
	t.Fatalf("artifact %d has no file %q", a.ID, path)
	return ArtifactFile{}
}

func TestCreateArtifact(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		u, err := st.CreateUser(ctx, "alice", "", false)
		require.NoError(t, err)
		expire := time.Now().Add(time.Hour)
		a, err := st.CreateArtifact(ctx, NewArtifact{Category: "debian:upload", Workspace: "System", Data: `{"a":1}`,
			CreatedBy: u.ID, ExpireAt: &expire, Files: []NewArtifactFile{
				fileOf("b/c.txt", "content c"), fileOf("a.txt", "content a"), fileOf("empty", ""),
				{Path: "typed", SHA256: shaOf("x"), Size: 1, ContentType: sql.NullString{String: "text/plain", Valid: true}},
			}})
		require.NoError(t, err)
		require.Equal(t, "debian:upload", a.Category)
		require.Equal(t, `{"a":1}`, a.Data)
		require.True(t, a.CreatedBy.Valid)
		require.Equal(t, u.ID, a.CreatedBy.Int64)
		require.False(t, a.WorkRequestID.Valid)
		require.True(t, a.ExpireAt.Valid)
		require.WithinDuration(t, expire, a.ExpireAt.Time, time.Millisecond)
		require.Len(t, a.Files, 4)
		var paths []string
		for _, f := range a.Files {
			paths = append(paths, f.Path)
		}
		require.Equal(t, []string{"a.txt", "b/c.txt", "empty", "typed"}, paths, "files sorted by path")
		require.True(t, fileByPath(t, a, "empty").Complete, "an empty file is complete at creation")
		require.True(t, fileByPath(t, a, "empty").Stored)
		require.False(t, fileByPath(t, a, "a.txt").Complete)
		require.Equal(t, shaOf("content a"), fileByPath(t, a, "a.txt").SHA256)
		require.Equal(t, "text/plain", fileByPath(t, a, "typed").ContentType.String)
		require.False(t, a.Complete())
		require.False(t, a.Expired(time.Now()))
		require.True(t, a.Expired(expire.Add(time.Second)))

		// Without data or files.
		bare, err := st.CreateArtifact(ctx, NewArtifact{Category: "x", Workspace: "System", CreatedBy: u.ID})
		require.NoError(t, err)
		require.Equal(t, "{}", bare.Data)
		require.Empty(t, bare.Files)
		require.True(t, bare.Complete())
		require.False(t, bare.ExpireAt.Valid)

		_, err = st.Artifact(ctx, 999999)
		require.ErrorIs(t, err, ErrNotFound)
		got, err := st.ArtifactFile(ctx, a.ID, "b/c.txt")
		require.NoError(t, err)
		require.Equal(t, fileByPath(t, a, "b/c.txt").ID, got.ID)
		_, err = st.ArtifactFile(ctx, a.ID, "nope")
		require.ErrorIs(t, err, ErrNotFound)
	})
}

// A content the store holds is complete at once in a new artifact; one that
// is only declared (not uploaded) is not.
func TestArtifactContentDeduplication(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		u, err := st.CreateUser(ctx, "alice", "", false)
		require.NoError(t, err)
		first := newArtifact(t, st, u, nil, fileOf("f", "shared"))
		second := newArtifact(t, st, u, nil, fileOf("g", "shared"))
		require.Equal(t, first.Files[0].FileID, second.Files[0].FileID, "one content row")
		require.False(t, second.Files[0].Complete, "not uploaded yet anywhere")

		calls := 0
		require.NoError(t, st.CompleteArtifactFile(ctx, first.Files[0].ID, func(f ArtifactFile) error {
			calls++
			require.False(t, f.Stored)
			require.Equal(t, shaOf("shared"), f.SHA256)
			return nil
		}))
		require.Equal(t, 1, calls)
		// Completing again is a no-op that does not call commit.
		require.NoError(t, st.CompleteArtifactFile(ctx, first.Files[0].ID, func(ArtifactFile) error {
			calls++
			return nil
		}))
		require.Equal(t, 1, calls)

		// The second artifact's file now sees the stored content and
		// completes without an upload.
		require.NoError(t, st.CompleteArtifactFile(ctx, second.Files[0].ID, func(f ArtifactFile) error {
			require.True(t, f.Stored)
			return nil
		}))
		third := newArtifact(t, st, u, nil, fileOf("h", "shared"), fileOf("other", "other"))
		require.True(t, fileByPath(t, third, "h").Complete, "stored content: complete at creation")
		require.False(t, fileByPath(t, third, "other").Complete)

		// Same hash, another size: another row, not stored.
		odd := newArtifact(t, st, u, nil, NewArtifactFile{Path: "odd", SHA256: shaOf("shared"), Size: 99})
		require.NotEqual(t, first.Files[0].FileID, odd.Files[0].FileID)
		require.False(t, odd.Files[0].Complete)

		// A commit error keeps the file incomplete.
		boom := errors.New("boom")
		err = st.CompleteArtifactFile(ctx, fileByPath(t, third, "other").ID, func(ArtifactFile) error { return boom })
		require.ErrorIs(t, err, boom)
		got, err := st.ArtifactFileByID(ctx, fileByPath(t, third, "other").ID)
		require.NoError(t, err)
		require.False(t, got.Complete)
		require.False(t, got.Stored)
	})
}

func TestUploadProgress(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		u, err := st.CreateUser(ctx, "alice", "", false)
		require.NoError(t, err)
		a := newArtifact(t, st, u, nil, fileOf("f", "0123456789"))
		id := a.Files[0].ID
		require.Zero(t, a.Files[0].Received)
		require.Nil(t, a.Files[0].HashState)

		require.NoError(t, st.SaveUploadProgress(ctx, id, 0, 4, []byte{1, 2, 3}))
		got, err := st.ArtifactFileByID(ctx, id)
		require.NoError(t, err)
		require.Equal(t, int64(4), got.Received)
		require.Equal(t, []byte{1, 2, 3}, got.HashState)
		require.True(t, got.UploadUpdatedAt.Valid)

		// A save from a stale position is a conflict and changes nothing.
		err = st.SaveUploadProgress(ctx, id, 0, 7, []byte{9})
		require.ErrorIs(t, err, ErrConflict)
		got, err = st.ArtifactFileByID(ctx, id)
		require.NoError(t, err)
		require.Equal(t, int64(4), got.Received)

		require.NoError(t, st.SaveUploadProgress(ctx, id, 4, 10, []byte{4}))
		require.NoError(t, st.ResetUpload(ctx, id))
		got, err = st.ArtifactFileByID(ctx, id)
		require.NoError(t, err)
		require.Zero(t, got.Received)
		require.Nil(t, got.HashState)

		completeFile(t, st, id)
		got, err = st.ArtifactFileByID(ctx, id)
		require.NoError(t, err)
		require.True(t, got.Complete)
		require.Equal(t, int64(10), got.Received)
		require.ErrorIs(t, st.SaveUploadProgress(ctx, id, 10, 10, []byte{1}), ErrConflict, "a complete file takes no upload")
		require.ErrorIs(t, st.ResetUpload(ctx, id), ErrNotFound)
		require.ErrorIs(t, st.SaveUploadProgress(ctx, 999999, 0, 1, []byte{1}), ErrNotFound)

		incomplete, err := st.IncompleteArtifactFiles(ctx, []int64{id, 999999})
		require.NoError(t, err)
		require.Empty(t, incomplete)
		b := newArtifact(t, st, u, nil, fileOf("g", "g"))
		incomplete, err = st.IncompleteArtifactFiles(ctx, []int64{id, b.Files[0].ID})
		require.NoError(t, err)
		require.Equal(t, map[int64]bool{b.Files[0].ID: true}, incomplete)

		stored, err := st.FileStored(ctx, shaOf("0123456789"))
		require.NoError(t, err)
		require.True(t, stored)
		stored, err = st.FileStored(ctx, shaOf("g"))
		require.NoError(t, err)
		require.False(t, stored)
	})
}

func TestArtifactIDsForWorkRequest(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		wr, err := st.CreateWorkRequest(ctx, NewWorkRequest{TaskName: "noop", TaskType: "Worker", TaskData: "{}", Workspace: "System", Shape: "noop|{}"})
		require.NoError(t, err)
		w := newWorker(t, st, "builder")
		ids, err := st.ArtifactIDsForWorkRequest(ctx, wr.ID)
		require.NoError(t, err)
		require.NotNil(t, ids)
		require.Empty(t, ids)
		var want []int64
		for range 3 {
			a, err := st.CreateArtifact(ctx, NewArtifact{Category: "log", Workspace: "System", WorkRequestID: wr.ID, CreatedByWorker: w.ID})
			require.NoError(t, err)
			require.Equal(t, wr.ID, a.WorkRequestID.Int64)
			require.Equal(t, w.ID, a.CreatedByWorker.Int64)
			want = append(want, a.ID)
		}
		u, err := st.CreateUser(ctx, "alice", "", false)
		require.NoError(t, err)
		newArtifact(t, st, u, nil) // not the work request's
		ids, err = st.ArtifactIDsForWorkRequest(ctx, wr.ID)
		require.NoError(t, err)
		require.Equal(t, want, ids)
	})
}

func TestRelations(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		u, err := st.CreateUser(ctx, "alice", "", false)
		require.NoError(t, err)
		a := newArtifact(t, st, u, nil)
		b := newArtifact(t, st, u, nil)
		c := newArtifact(t, st, u, nil)

		r1, created, err := st.CreateRelation(ctx, a.ID, b.ID, RelationExtends)
		require.NoError(t, err)
		require.True(t, created)
		require.Equal(t, Relation{ID: r1.ID, ArtifactID: a.ID, TargetID: b.ID, Type: RelationExtends, CreatedAt: r1.CreatedAt}, r1)
		again, created, err := st.CreateRelation(ctx, a.ID, b.ID, RelationExtends)
		require.NoError(t, err)
		require.False(t, created, "an identical relation is returned, not duplicated")
		require.Equal(t, r1.ID, again.ID)
		r2, created, err := st.CreateRelation(ctx, a.ID, b.ID, RelationRelatesTo)
		require.NoError(t, err)
		require.True(t, created, "another type is another relation")
		r3, _, err := st.CreateRelation(ctx, c.ID, b.ID, RelationBuiltUsing)
		require.NoError(t, err)
		_, _, err = st.CreateRelation(ctx, a.ID, c.ID, "sibling-of")
		require.Error(t, err, "unknown type refused by the database")

		from, err := st.Relations(ctx, RelationFilter{ArtifactID: a.ID})
		require.NoError(t, err)
		require.Equal(t, []int64{r1.ID, r2.ID}, relationIDs(from))
		to, err := st.Relations(ctx, RelationFilter{TargetID: b.ID})
		require.NoError(t, err)
		require.Equal(t, []int64{r1.ID, r2.ID, r3.ID}, relationIDs(to))
		both, err := st.Relations(ctx, RelationFilter{ArtifactID: c.ID, TargetID: b.ID})
		require.NoError(t, err)
		require.Equal(t, []int64{r3.ID}, relationIDs(both))
		none, err := st.Relations(ctx, RelationFilter{ArtifactID: b.ID})
		require.NoError(t, err)
		require.NotNil(t, none)
		require.Empty(t, none)

		require.NoError(t, st.DeleteRelation(ctx, r1.ID))
		require.ErrorIs(t, st.DeleteRelation(ctx, r1.ID), ErrNotFound)
		_, err = st.Relation(ctx, r1.ID)
		require.ErrorIs(t, err, ErrNotFound)
	})
}

func relationIDs(rs []Relation) []int64 {
	var out []int64
	for _, r := range rs {
		out = append(out, r.ID)
	}
	return out
}

// Expired artifacts go, unless a kept artifact reaches them through
// relations (of any type, transitively, cycles included).
func TestDeleteExpiredArtifacts(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		u, err := st.CreateUser(ctx, "alice", "", false)
		require.NoError(t, err)
		now := time.Now().UTC()
		past, future := now.Add(-time.Hour), now.Add(time.Hour)

		keeper := newArtifact(t, st, u, &future)    // not expired
		forever := newArtifact(t, st, u, nil)       // never expires
		mid := newArtifact(t, st, u, &past)         // expired, reached from keeper
		deep := newArtifact(t, st, u, &past)        // expired, reached from mid
		fromForever := newArtifact(t, st, u, &past) // expired, reached from forever
		lonely := newArtifact(t, st, u, &past, fileOf("l", "lonely"))
		cycleA := newArtifact(t, st, u, &past) // expired cycle, reached by nothing
		cycleB := newArtifact(t, st, u, &past)
		pointsOut := newArtifact(t, st, u, &past) // expired, points at keeper: still goes
		for _, r := range []struct {
			from, to int64
			typ      string
		}{
			{keeper.ID, mid.ID, RelationExtends}, {mid.ID, deep.ID, RelationBuiltUsing},
			{forever.ID, fromForever.ID, RelationRelatesTo},
			{cycleA.ID, cycleB.ID, RelationRelatesTo}, {cycleB.ID, cycleA.ID, RelationRelatesTo},
			{pointsOut.ID, keeper.ID, RelationRelatesTo},
		} {
			_, _, err := st.CreateRelation(ctx, r.from, r.to, r.typ)
			require.NoError(t, err)
		}

		deleted, files, err := st.DeleteExpiredArtifacts(ctx, now, 500)
		require.NoError(t, err)
		require.ElementsMatch(t, []int64{lonely.ID, cycleA.ID, cycleB.ID, pointsOut.ID}, deleted)
		require.Equal(t, []int64{lonely.Files[0].ID}, files)
		for _, id := range deleted {
			_, err := st.Artifact(ctx, id)
			require.ErrorIs(t, err, ErrNotFound)
		}
		for _, a := range []Artifact{keeper, forever, mid, deep, fromForever} {
			_, err := st.Artifact(ctx, a.ID)
			require.NoError(t, err, "artifact %d is kept", a.ID)
		}
		rels, err := st.Relations(ctx, RelationFilter{TargetID: keeper.ID})
		require.NoError(t, err)
		require.Empty(t, rels, "relations of deleted artifacts go with them")
		_, err = st.ArtifactFileByID(ctx, lonely.Files[0].ID)
		require.ErrorIs(t, err, ErrNotFound)

		// Nothing more to delete now; once the keeper expires, its chain goes.
		deleted, _, err = st.DeleteExpiredArtifacts(ctx, now, 500)
		require.NoError(t, err)
		require.Empty(t, deleted)
		deleted, _, err = st.DeleteExpiredArtifacts(ctx, future.Add(time.Second), 500)
		require.NoError(t, err)
		require.ElementsMatch(t, []int64{keeper.ID, mid.ID, deep.ID}, deleted)

		// The limit bounds one call.
		for range 3 {
			newArtifact(t, st, u, &past)
		}
		deleted, _, err = st.DeleteExpiredArtifacts(ctx, now, 2)
		require.NoError(t, err)
		require.Len(t, deleted, 2)
		deleted, _, err = st.DeleteExpiredArtifacts(ctx, now, 2)
		require.NoError(t, err)
		require.Len(t, deleted, 1)
	})
}

// A content goes only when no artifact lists it any more.
func TestDeleteFileIfUnused(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		u, err := st.CreateUser(ctx, "alice", "", false)
		require.NoError(t, err)
		past := time.Now().Add(-time.Hour)
		a := newArtifact(t, st, u, &past, fileOf("x", "shared"), fileOf("y", "only a"))
		b := newArtifact(t, st, u, nil, fileOf("z", "shared"))
		completeFile(t, st, fileByPath(t, a, "x").ID)
		completeFile(t, st, fileByPath(t, a, "y").ID)

		unused, err := st.UnusedFiles(ctx, 100)
		require.NoError(t, err)
		require.Empty(t, unused)

		_, _, err = st.DeleteExpiredArtifacts(ctx, time.Now(), 100)
		require.NoError(t, err)
		unused, err = st.UnusedFiles(ctx, 100)
		require.NoError(t, err)
		require.Len(t, unused, 1)
		require.Equal(t, shaOf("only a"), unused[0].SHA256)
		require.True(t, unused[0].Stored)

		// Still used: not deleted, remove not called.
		deleted, err := st.DeleteFileIfUnused(ctx, b.Files[0].FileID, func(File) error {
			t.Fatal("remove called for a used file")
			return nil
		})
		require.NoError(t, err)
		require.False(t, deleted)

		// A failing remove keeps the row.
		boom := errors.New("boom")
		_, err = st.DeleteFileIfUnused(ctx, unused[0].ID, func(File) error { return boom })
		require.ErrorIs(t, err, boom)
		again, err := st.UnusedFiles(ctx, 100)
		require.NoError(t, err)
		require.Len(t, again, 1)

		var removed []string
		deleted, err = st.DeleteFileIfUnused(ctx, unused[0].ID, func(f File) error {
			removed = append(removed, f.SHA256)
			return nil
		})
		require.NoError(t, err)
		require.True(t, deleted)
		require.Equal(t, []string{shaOf("only a")}, removed)
		deleted, err = st.DeleteFileIfUnused(ctx, unused[0].ID, func(File) error { return nil })
		require.NoError(t, err)
		require.False(t, deleted, "already gone")
		stored, err := st.FileStored(ctx, shaOf("shared"))
		require.NoError(t, err)
		require.True(t, stored)
	})
}

// Creating artifacts that list a content races with the collector deleting
// that content: whichever wins, a complete file always has its content
// stored, and a content is never removed while a file lists it.
func TestFileCollectionRacesWithCreation(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		u, err := st.CreateUser(ctx, "alice", "", false)
		require.NoError(t, err)
		for i := range 20 {
			content := fmt.Sprintf("content %d", i)
			seed := newArtifact(t, st, u, nil, fileOf("f", content))
			completeFile(t, st, seed.Files[0].ID)
			rawExec(t, st, `DELETE FROM artifacts WHERE id = ?`, seed.ID)

			var wg sync.WaitGroup
			var created Artifact
			var removedWhileUsed bool
			wg.Add(2)
			go func() {
				defer wg.Done()
				a, err := st.CreateArtifact(ctx, NewArtifact{Category: "test", Workspace: "System", CreatedBy: u.ID,
					Files: []NewArtifactFile{fileOf("g", content)}})
				if err == nil {
					created = a
				}
			}()
			go func() {
				defer wg.Done()
				_, _ = st.DeleteFileIfUnused(ctx, seed.Files[0].FileID, func(f File) error {
					var n int
					_ = st.r.GetContext(ctx, &n, st.rebind(`SELECT COUNT(*) FROM artifact_files WHERE file_id = ?`), f.ID)
					removedWhileUsed = n > 0
					return nil
				})
			}()
			wg.Wait()
			require.NotZero(t, created.ID)
			require.False(t, removedWhileUsed)
			got, err := st.Artifact(ctx, created.ID)
			require.NoError(t, err)
			f := got.Files[0]
			if f.Complete {
				require.True(t, f.Stored, "a complete file's content is stored")
				require.Equal(t, seed.Files[0].FileID, f.FileID, "it reused the surviving content")
			} else {
				require.False(t, f.Stored, "after the collector won, the content must be uploaded again")
			}
		}
	})
}

func TestArtifactIDsForWorkRequestsMatchesOneByOne(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		var ids []int64
		for range 3 {
			ids = append(ids, newWR(t, st, wrOpts{}).ID)
		}
		u, err := st.CreateUser(ctx, "owner", "", false)
		require.NoError(t, err)
		for _, wrID := range []int64{ids[0], ids[2], ids[0]} {
			_, err := st.CreateArtifact(ctx, NewArtifact{Category: "test", Workspace: "System", Data: "{}",
				WorkRequestID: wrID, CreatedBy: u.ID})
			require.NoError(t, err)
		}
		got, err := st.ArtifactIDsForWorkRequests(ctx, ids)
		require.NoError(t, err)
		for _, id := range ids {
			one, err := st.ArtifactIDsForWorkRequest(ctx, id)
			require.NoError(t, err)
			require.Equal(t, len(one), len(got[id]), "work request %d", id)
			for i := range one {
				require.Equal(t, one[i], got[id][i])
			}
		}
		require.Len(t, got[ids[0]], 2)
		empty, err := st.ArtifactIDsForWorkRequests(ctx, nil)
		require.NoError(t, err)
		require.Empty(t, empty)
	})
}
