package artifacts

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/server/store"
	"github.com/kiln-ci/kiln/server/store/storetest"
)

// bundle is a Manager on a fresh database and data directory.
type bundle struct {
	t   *testing.T
	st  *store.Store
	m   *Manager
	dir string
	u   store.User
}

// forEachStore runs fn with a fresh bundle on SQLite and on PostgreSQL.
func forEachStore(t *testing.T, fn func(t *testing.T, b *bundle)) {
	for _, d := range []struct {
		name string
		dsn  func(t testing.TB) string
	}{{"sqlite", func(testing.TB) string { return "" }}, {"postgres", storetest.PostgresURL}} {
		t.Run(d.name, func(t *testing.T) {
			dir := t.TempDir()
			st, err := store.Open(t.Context(), d.dsn(t), dir)
			require.NoError(t, err)
			t.Cleanup(func() { st.Close() })
			m, err := New(st, filepath.Join(dir, "artifacts"), Options{PartGrace: time.Nanosecond})
			require.NoError(t, err)
			u, err := st.CreateUser(t.Context(), "alice", "", false)
			require.NoError(t, err)
			fn(t, &bundle{t: t, st: st, m: m, dir: filepath.Join(dir, "artifacts"), u: u})
		})
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// artifact creates an artifact with files path -> content, expiring at
// expire when not nil.
func (b *bundle) artifact(expire *time.Time, files map[string][]byte) store.Artifact {
	b.t.Helper()
	var nf []store.NewArtifactFile
	for p, c := range files {
		nf = append(nf, store.NewArtifactFile{Path: p, SHA256: sha(c), Size: int64(len(c))})
	}
	a, err := b.st.CreateArtifact(b.t.Context(), store.NewArtifact{Category: "test", Workspace: "System",
		CreatedBy: b.u.ID, ExpireAt: expire, Files: nf})
	require.NoError(b.t, err)
	return a
}

func (b *bundle) file(a store.Artifact, path string) store.ArtifactFile {
	b.t.Helper()
	f, err := b.st.ArtifactFile(b.t.Context(), a.ID, path)
	require.NoError(b.t, err)
	return f
}

func (b *bundle) write(id, first, last int64, body []byte) (Progress, error) {
	b.t.Helper()
	return b.m.Write(b.t.Context(), id, first, last, bytes.NewReader(body))
}

func (b *bundle) read(f store.ArtifactFile) []byte {
	b.t.Helper()
	r, err := b.m.Open(f)
	require.NoError(b.t, err)
	defer r.Close()
	got, err := io.ReadAll(r)
	require.NoError(b.t, err)
	return got
}

func (b *bundle) blobPath(content []byte) string {
	s := sha(content)
	return filepath.Join(b.dir, "store", s[:2], s)
}

func TestWriteInOrderAndResume(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *bundle) {
		content := []byte(strings.Repeat("0123456789", 10))
		a := b.artifact(nil, map[string][]byte{"f": content})
		id := a.Files[0].ID

		p, err := b.m.Status(t.Context(), id)
		require.NoError(t, err)
		require.Equal(t, Progress{}, p)

		p, err = b.write(id, 0, 29, content[:30])
		require.NoError(t, err)
		require.Equal(t, Progress{Received: 30}, p)
		p, err = b.m.Status(t.Context(), id)
		require.NoError(t, err)
		require.Equal(t, Progress{Received: 30}, p)

		// A gap is refused and says where to continue.
		_, err = b.write(id, 40, 49, content[40:50])
		var re *RangeError
		require.ErrorAs(t, err, &re)
		require.Equal(t, int64(30), re.Received)
		require.Contains(t, re.Reason, "Please continue from 30")

		// Overlapping: the bytes the server has are skipped.
		p, err = b.write(id, 20, 59, content[20:60])
		require.NoError(t, err)
		require.Equal(t, Progress{Received: 60}, p)

		// A chunk entirely inside what the server has changes nothing.
		p, err = b.write(id, 10, 19, content[10:20])
		require.NoError(t, err)
		require.Equal(t, Progress{Received: 60}, p)

		// A body broken off half way keeps what arrived.
		broken := io.MultiReader(bytes.NewReader(content[60:75]), iotestErrReader{})
		p, err = b.m.Write(t.Context(), id, 60, 99, broken)
		var ie *InterruptedError
		require.ErrorAs(t, err, &ie)
		require.Equal(t, int64(75), ie.Received)
		require.Equal(t, int64(75), p.Received)

		// A restart of the server: a new Manager on the same directory.
		m2, err := New(b.st, b.dir, Options{})
		require.NoError(t, err)
		p, err = m2.Status(t.Context(), id)
		require.NoError(t, err)
		require.Equal(t, Progress{Received: 75}, p)
		p, err = m2.Write(t.Context(), id, 75, 99, bytes.NewReader(content[75:]))
		require.NoError(t, err)
		require.Equal(t, Progress{Received: 100, Complete: true}, p)

		f := b.file(a, "f")
		require.True(t, f.Complete)
		require.Equal(t, content, b.read(f))
		require.FileExists(t, b.blobPath(content))
		require.NoFileExists(t, b.m.partPath(id), "the partial upload was moved into the store")

		// A complete file takes nothing more and says so.
		p, err = b.write(id, 0, 9, []byte("XXXXXXXXXX"))
		require.NoError(t, err)
		require.True(t, p.Complete)
		require.Equal(t, content, b.read(f))
	})
}

type iotestErrReader struct{}

func (iotestErrReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

func TestWriteRefusals(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *bundle) {
		content := []byte("abcdefghij")
		a := b.artifact(nil, map[string][]byte{"f": content})
		id := a.Files[0].ID

		// Past the end of the file.
		_, err := b.write(id, 5, 10, content[5:])
		var re *RangeError
		require.ErrorAs(t, err, &re)
		require.Contains(t, re.Reason, "past the end")

		// A body longer than its range refuses the whole chunk.
		_, err = b.write(id, 0, 3, content[:6])
		require.ErrorAs(t, err, &re)
		require.False(t, re.TooLarge)
		require.Contains(t, re.Reason, "longer than")
		p, err := b.m.Status(t.Context(), id)
		require.NoError(t, err)
		require.Zero(t, p.Received)

		// Without a range, a body longer than the file is 413-worthy.
		_, err = b.write(id, 0, -1, append(content, 'x'))
		require.ErrorAs(t, err, &re)
		require.True(t, re.TooLarge)

		// A body shorter than its range keeps what it brought.
		_, err = b.write(id, 0, 7, content[:4])
		require.ErrorAs(t, err, &re)
		require.Equal(t, int64(4), re.Received)
		require.Contains(t, re.Reason, "Received: 4 bytes")

		// Without a range, the body is the file from its start.
		p, err = b.write(id, 0, -1, content)
		require.NoError(t, err)
		require.True(t, p.Complete)
	})
}

func TestWriteHashMismatch(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *bundle) {
		declared := []byte("the real content")
		a := b.artifact(nil, map[string][]byte{"f": declared})
		id := a.Files[0].ID
		wrong := []byte("the fake content")
		_, err := b.write(id, 0, 7, wrong[:8])
		require.NoError(t, err)
		_, err = b.write(id, 8, 15, wrong[8:])
		var he *HashError
		require.ErrorAs(t, err, &he)
		require.Equal(t, sha(declared), he.Expected)
		require.Equal(t, sha(wrong), he.Got)
		p, err := b.m.Status(t.Context(), id)
		require.NoError(t, err)
		require.Equal(t, Progress{}, p, "the upload starts again")
		require.NoFileExists(t, b.blobPath(wrong))

		p, err = b.write(id, 0, -1, declared)
		require.NoError(t, err)
		require.True(t, p.Complete)
	})
}

// A content already in the store completes other artifacts' files without
// an upload, and an empty file needs no content at all.
func TestStoredContentAndEmptyFiles(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *bundle) {
		content := []byte("shared bytes")
		a1 := b.artifact(nil, map[string][]byte{"x": content, "empty": nil})
		require.True(t, b.file(a1, "empty").Complete)
		require.Empty(t, b.read(b.file(a1, "empty")))
		a2 := b.artifact(nil, map[string][]byte{"y": content})
		_, err := b.write(a2.Files[0].ID, 0, 3, content[:4]) // a2 starts uploading too
		require.NoError(t, err)

		p, err := b.write(b.file(a1, "x").ID, 0, -1, content)
		require.NoError(t, err)
		require.True(t, p.Complete)

		// a2's half-done upload is superseded: the status query completes it.
		p, err = b.m.Status(t.Context(), a2.Files[0].ID)
		require.NoError(t, err)
		require.True(t, p.Complete)
		require.NoFileExists(t, b.m.partPath(a2.Files[0].ID))
		require.Equal(t, content, b.read(b.file(a2, "y")))
	})
}

// Crash leftovers: a partial file longer than recorded is cut back; one
// shorter than recorded restarts the upload.
func TestPartialUploadRepair(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *bundle) {
		content := []byte("0123456789abcdef")
		a := b.artifact(nil, map[string][]byte{"f": content})
		id := a.Files[0].ID
		_, err := b.write(id, 0, 7, content[:8])
		require.NoError(t, err)

		// Bytes written but never recorded (a crash before the database).
		part := b.m.partPath(id)
		f, err := os.OpenFile(part, os.O_APPEND|os.O_WRONLY, 0)
		require.NoError(t, err)
		_, err = f.WriteString("GARBAGE")
		require.NoError(t, err)
		require.NoError(t, f.Close())
		p, err := b.write(id, 8, 15, content[8:])
		require.NoError(t, err)
		require.True(t, p.Complete, "the garbage was cut off")

		b2 := b.artifact(nil, map[string][]byte{"g": []byte("another content")})
		id2 := b2.Files[0].ID
		_, err = b.write(id2, 0, 6, []byte("another"))
		require.NoError(t, err)
		require.NoError(t, os.Truncate(b.m.partPath(id2), 3)) // lost on the disk
		p, err = b.m.Status(t.Context(), id2)
		require.NoError(t, err)
		require.Equal(t, Progress{}, p)
	})
}

func TestConcurrentWritesOfOneFile(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *bundle) {
		content := bytes.Repeat([]byte("kiln"), 4096)
		a := b.artifact(nil, map[string][]byte{"f": content})
		id := a.Files[0].ID
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = b.m.Write(t.Context(), id, 0, -1, bytes.NewReader(content))
			}()
		}
		wg.Wait()
		f := b.file(a, "f")
		require.True(t, f.Complete)
		require.Equal(t, content, b.read(f))
	})
}

func TestCollectGarbage(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *bundle) {
		ctx := t.Context()
		now := time.Now()
		past := now.Add(-time.Minute)
		shared, unique, partial := []byte("shared content"), []byte("unique content"), []byte("partial content")

		expired := b.artifact(&past, map[string][]byte{"s": shared, "u": unique, "p": partial, "e": nil})
		for _, path := range []string{"s", "u"} {
			c := map[string][]byte{"s": shared, "u": unique}[path]
			_, err := b.write(b.file(expired, path).ID, 0, -1, c)
			require.NoError(t, err)
		}
		_, err := b.write(b.file(expired, "p").ID, 0, 6, partial[:7])
		require.NoError(t, err)
		kept := b.artifact(nil, map[string][]byte{"s2": shared})
		require.True(t, b.file(kept, "s2").Complete, "stored content completes at once")
		require.FileExists(t, b.m.partPath(b.file(expired, "p").ID))

		// Leftovers of a crash: a partial upload of a file that is gone, and
		// a content stuck in the trash whose row still says stored.
		orphan := b.m.partPath(999999)
		require.NoError(t, os.WriteFile(orphan, []byte("x"), 0o600))
		trashed := filepath.Join(b.dir, "trash", sha(shared))
		require.NoError(t, os.Rename(b.blobPath(shared), trashed))

		st, err := b.m.CollectGarbage(ctx, time.Now())
		require.NoError(t, err)
		require.Equal(t, 1, st.Artifacts)
		require.Equal(t, 1, st.Files, "only the unique content goes")
		require.Equal(t, int64(len(unique)), st.Bytes)
		require.Equal(t, 2, st.Uploads, "the expired artifact's partial upload and the orphan")

		_, err = b.st.Artifact(ctx, expired.ID)
		require.ErrorIs(t, err, store.ErrNotFound)
		require.NoFileExists(t, b.blobPath(unique))
		require.FileExists(t, b.blobPath(shared), "restored from the trash: another artifact lists it")
		require.NoFileExists(t, trashed)
		require.NoFileExists(t, orphan)
		require.Equal(t, shared, b.read(b.file(kept, "s2")))

		// Nothing left to do.
		st, err = b.m.CollectGarbage(ctx, now)
		require.NoError(t, err)
		require.Equal(t, GCStats{}, st)

		// An expired artifact that shares a content with a kept one goes;
		// the content stays.
		soon := now.Add(time.Second)
		later := b.artifact(&soon, map[string][]byte{"s3": shared})
		require.True(t, b.file(later, "s3").Complete)
		st, err = b.m.CollectGarbage(ctx, now.Add(time.Hour))
		require.NoError(t, err)
		require.Equal(t, GCStats{Artifacts: 1}, st)
		require.FileExists(t, b.blobPath(shared), "kept still lists it")
	})
}

func TestFileStoreRemoveUndoRecover(t *testing.T) {
	dir := t.TempDir()
	fs1, err := NewFileStore(dir)
	require.NoError(t, err)
	content := []byte("blob")
	h := sha(content)
	tmp := filepath.Join(dir, "tmp")
	require.NoError(t, os.WriteFile(tmp, content, 0o600))
	require.NoError(t, fs1.Put(tmp, h))
	r, err := fs1.Open(h)
	require.NoError(t, err)
	got, _ := io.ReadAll(r)
	r.Close()
	require.Equal(t, content, got)

	_, err = fs1.Open(strings.Repeat("0", 64))
	require.ErrorIs(t, err, fs.ErrNotExist)
	_, err = fs1.Open("../../etc/passwd")
	require.Error(t, err)
	require.Error(t, fs1.Put(tmp, "not-a-sha"))

	_, undo, err := fs1.Remove(h)
	require.NoError(t, err)
	_, err = fs1.Open(h)
	require.ErrorIs(t, err, fs.ErrNotExist)
	require.NoError(t, undo())
	_, err = fs1.Open(h)
	require.NoError(t, err)
	commit, _, err := fs1.Remove(h)
	require.NoError(t, err)
	require.NoError(t, commit())
	_, err = fs1.Open(h)
	require.ErrorIs(t, err, fs.ErrNotExist)
	commit, undo, err = fs1.Remove(h)
	require.NoError(t, err, "removing what is not there is fine")
	require.NoError(t, commit())
	require.NoError(t, undo())

	// Recover: back if still stored, gone otherwise.
	for _, keep := range []bool{true, false} {
		require.NoError(t, os.WriteFile(tmp, content, 0o600))
		require.NoError(t, fs1.Put(tmp, h))
		_, _, err = fs1.Remove(h)
		require.NoError(t, err)
		require.NoError(t, fs1.Recover(t.Context(), func(context.Context, string) (bool, error) { return keep, nil }))
		_, err = fs1.Open(h)
		if keep {
			require.NoError(t, err)
			commit, _, err := fs1.Remove(h)
			require.NoError(t, err)
			require.NoError(t, commit())
		} else {
			require.ErrorIs(t, err, fs.ErrNotExist)
		}
		entries, err := os.ReadDir(filepath.Join(dir, "trash"))
		require.NoError(t, err)
		require.Empty(t, entries)
	}
	boom := errors.New("db down")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "trash", h), content, 0o600))
	require.ErrorIs(t, fs1.Recover(t.Context(), func(context.Context, string) (bool, error) { return false, boom }), boom)
}

func TestKeyedLocks(t *testing.T) {
	var k keyedLocks
	unlock, err := k.lock(t.Context(), 1)
	require.NoError(t, err)
	other, err := k.lock(t.Context(), 2)
	require.NoError(t, err, "another key is free")
	other()
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err = k.lock(ctx, 1)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	unlock()
	unlock, err = k.lock(t.Context(), 1)
	require.NoError(t, err)
	unlock()
	require.Empty(t, k.held, "no lock is kept once released")
}
