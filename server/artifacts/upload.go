package artifacts

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/rs/zerolog"

	"github.com/kiln-ci/kiln/server/store"
)

// Options configure New.
type Options struct {
	// Backend holds the contents (default: a FileStore in dir).
	Backend Backend
	// Logger receives the garbage collector's reports (default: none).
	Logger zerolog.Logger
	// PartGrace is how old a partial upload without an artifact file must be
	// before the garbage collector removes it (default 10 minutes).
	PartGrace time.Duration
}

// Manager stores artifact file contents, runs their uploads and collects
// garbage. It is safe for concurrent use.
type Manager struct {
	st        *store.Store
	backend   Backend
	uploads   string
	log       zerolog.Logger
	partGrace time.Duration
	locks     keyedLocks
}

// New returns a Manager of the contents under dir (the data directory's
// artifacts/): the file store in dir/store and partial uploads in
// dir/uploads, on the same file system so that a finished upload is
// renamed into the store.
func New(st *store.Store, dir string, opts Options) (*Manager, error) {
	m := &Manager{st: st, backend: opts.Backend, uploads: filepath.Join(dir, "uploads"),
		log: opts.Logger, partGrace: opts.PartGrace}
	if m.backend == nil {
		fs, err := NewFileStore(dir)
		if err != nil {
			return nil, err
		}
		m.backend = fs
	}
	if m.partGrace <= 0 {
		m.partGrace = 10 * time.Minute
	}
	if err := os.MkdirAll(m.uploads, 0o750); err != nil {
		return nil, fmt.Errorf("artifact uploads: %w", err)
	}
	return m, nil
}

// Progress is the state of one file's upload.
type Progress struct {
	// Received is how many bytes the server holds, from the start.
	Received int64
	// Complete means the server has the whole, verified file.
	Complete bool
}

// RangeError is a chunk that the server did not take as sent: it starts
// past what the server has (a gap), its body does not match its
// Content-Range, or it goes past the end of the file. Received is where
// the client must continue.
type RangeError struct {
	Received int64
	Reason   string
	// TooLarge means the body went past the end of the file (413 rather
	// than 400).
	TooLarge bool
}

func (e *RangeError) Error() string { return e.Reason }

// HashError is an upload that completed with another SHA-256 than the
// artifact declared. The server discarded it: the client must start again.
type HashError struct {
	Expected, Got string
}

func (e *HashError) Error() string {
	return "Invalid file hash. Expected: " + e.Expected + " Received: " + e.Got
}

// InterruptedError is a chunk whose body could not be read to its end (the
// client went away, or the connection broke). What arrived is kept:
// Received says how much.
type InterruptedError struct {
	Received int64
	Err      error
}

func (e *InterruptedError) Error() string {
	return fmt.Sprintf("upload interrupted after %d bytes: %v", e.Received, e.Err)
}

func (e *InterruptedError) Unwrap() error { return e.Err }

func (m *Manager) partPath(id int64) string {
	return filepath.Join(m.uploads, strconv.FormatInt(id, 10)+".part")
}

// later is a context for bookkeeping that must happen even when the
// request's context ends, such as saving the progress of a chunk whose
// client went away.
func later(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
}

// Status returns how much of artifact file id the server holds. A file
// whose content the store already holds (another artifact uploaded it) is
// completed on the way.
func (m *Manager) Status(ctx context.Context, id int64) (Progress, error) {
	unlock, err := m.locks.lock(ctx, id)
	if err != nil {
		return Progress{}, err
	}
	defer unlock()
	bg, cancel := later(ctx)
	defer cancel()
	af, err := m.st.ArtifactFileByID(ctx, id)
	if err != nil {
		return Progress{}, err
	}
	switch {
	case af.Complete:
		return Progress{Received: af.Size, Complete: true}, nil
	case af.Stored:
		return m.completeStored(bg, af)
	}
	if af.Received > 0 {
		fi, err := os.Stat(m.partPath(id))
		if err != nil || fi.Size() < af.Received || !validState(af.HashState) {
			// The partial upload is gone or shorter than recorded (a crash
			// before it reached the disk): start again.
			if err := m.reset(bg, af.ID); err != nil {
				return Progress{}, err
			}
			return Progress{}, nil
		}
	}
	if af.Size > 0 && af.Received == af.Size {
		// Everything arrived but storing it failed: finish now.
		part, received, h, err := m.openPart(bg, af)
		if err != nil {
			return Progress{}, err
		}
		defer part.Close()
		if received < af.Size {
			return Progress{Received: received}, nil
		}
		return m.finish(bg, af, part, h)
	}
	return Progress{Received: af.Received}, nil
}

// completeStored completes an artifact file whose content is in the store.
func (m *Manager) completeStored(ctx context.Context, af store.ArtifactFile) (Progress, error) {
	err := m.st.CompleteArtifactFile(ctx, af.ID, func(store.ArtifactFile) error {
		return removeIfExists(m.partPath(af.ID))
	})
	if err != nil {
		return Progress{}, err
	}
	return Progress{Received: af.Size, Complete: true}, nil
}

func (m *Manager) reset(ctx context.Context, id int64) error {
	if err := removeIfExists(m.partPath(id)); err != nil {
		return err
	}
	if err := m.st.ResetUpload(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return nil
}

func validState(state []byte) bool {
	h := sha256.New()
	return len(state) > 0 && h.(encoding.BinaryUnmarshaler).UnmarshalBinary(state) == nil
}

// Write takes a chunk of artifact file id: the body holds the bytes from
// first to last (inclusive; last < 0 means to the end of the file). Bytes
// the server already has are skipped, not rewritten; a chunk that starts
// past them is a *RangeError (a gap). The bytes are written to the partial
// upload and hashed as they stream in; the progress (and the SHA-256 state)
// is saved after each chunk, also when the body breaks off
// (*InterruptedError), so that the client can resume. When the file is
// complete its hash is checked: a mismatch discards the upload
// (*HashError); a match moves the file into the store.
func (m *Manager) Write(ctx context.Context, id, first, last int64, body io.Reader) (Progress, error) {
	unlock, err := m.locks.lock(ctx, id)
	if err != nil {
		return Progress{}, err
	}
	defer unlock()
	bg, cancel := later(ctx)
	defer cancel()
	af, err := m.st.ArtifactFileByID(ctx, id)
	if err != nil {
		return Progress{}, err
	}
	switch {
	case af.Complete:
		return Progress{Received: af.Size, Complete: true}, nil
	case af.Stored:
		return m.completeStored(bg, af)
	}
	if last >= af.Size {
		return Progress{Received: af.Received}, &RangeError{Received: af.Received,
			Reason: fmt.Sprintf("the range ends at byte %d, past the end of the %d-byte file", last, af.Size)}
	}

	part, received, h, err := m.openPart(bg, af)
	if err != nil {
		return Progress{}, err
	}
	defer part.Close()
	if first > received {
		return Progress{Received: received}, &RangeError{Received: received, Reason: fmt.Sprintf(
			"Server had received %d bytes of the file. New upload starts at %d. Please continue from %d",
			received, first, received)}
	}
	end := af.Size // exclusive end of what this chunk may write
	if last >= 0 {
		end = last + 1
	}
	skip := max(min(received, end)-first, 0)
	if skip > 0 {
		if n, err := io.CopyN(io.Discard, body, skip); err != nil {
			if errors.Is(err, io.EOF) {
				return Progress{Received: received}, &RangeError{Received: received,
					Reason: fmt.Sprintf("Expected %d bytes (based on the Content-Range header). Received: %d bytes", end-first, n)}
			}
			return Progress{Received: received}, &InterruptedError{Received: received, Err: err}
		}
	}
	want := max(end-received, 0)
	if _, err := part.Seek(received, io.SeekStart); err != nil {
		return Progress{}, err
	}
	buf := make([]byte, 256<<10)
	n, copyErr := io.CopyBuffer(io.MultiWriter(part, h), io.LimitReader(body, want), buf)
	if copyErr == nil && n == want {
		// Anything after the range or the end of the file refuses the
		// whole chunk.
		var one [1]byte
		if k, _ := io.ReadFull(body, one[:]); k > 0 {
			if err := part.Truncate(received); err != nil {
				return Progress{}, err
			}
			if last < 0 {
				return Progress{Received: received}, &RangeError{Received: received, TooLarge: true,
					Reason: fmt.Sprintf("the body goes past the end of the %d-byte file", af.Size)}
			}
			return Progress{Received: received}, &RangeError{Received: received,
				Reason: fmt.Sprintf("the body is longer than the %d bytes of its Content-Range", end-first)}
		}
	}
	now := received + n
	if n > 0 {
		if err := m.save(bg, af, part, h, received, now); err != nil {
			return Progress{}, err
		}
	}
	switch {
	case copyErr != nil:
		return Progress{Received: now}, &InterruptedError{Received: now, Err: copyErr}
	case n < want && last >= 0:
		return Progress{Received: now}, &RangeError{Received: now,
			Reason: fmt.Sprintf("Expected %d bytes (based on the Content-Range header). Received: %d bytes", end-first, skip+n)}
	case now < af.Size:
		return Progress{Received: now}, nil
	}
	return m.finish(bg, af, part, h)
}

// openPart opens the partial upload of af and returns it with what it
// holds and the hash state after that, repairing what a crash left: a
// partial file longer than recorded is cut back, a shorter one (or an
// unreadable hash state) starts the upload again.
func (m *Manager) openPart(ctx context.Context, af store.ArtifactFile) (*os.File, int64, hash.Hash, error) {
	part, err := os.OpenFile(m.partPath(af.ID), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("partial upload: %w", err)
	}
	fi, err := part.Stat()
	if err != nil {
		part.Close()
		return nil, 0, nil, fmt.Errorf("partial upload: %w", err)
	}
	h := sha256.New()
	received := af.Received
	if received > 0 && (fi.Size() < received || h.(encoding.BinaryUnmarshaler).UnmarshalBinary(af.HashState) != nil) {
		h = sha256.New()
		received = 0
		if err := m.st.ResetUpload(ctx, af.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
			part.Close()
			return nil, 0, nil, err
		}
	}
	if fi.Size() != received {
		if err := part.Truncate(received); err != nil {
			part.Close()
			return nil, 0, nil, fmt.Errorf("partial upload: %w", err)
		}
	}
	return part, received, h, nil
}

// save makes the chunk durable, then records the progress.
func (m *Manager) save(ctx context.Context, af store.ArtifactFile, part *os.File, h hash.Hash, from, to int64) error {
	if err := part.Sync(); err != nil {
		return fmt.Errorf("partial upload: %w", err)
	}
	state, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return err
	}
	if err := m.st.SaveUploadProgress(ctx, af.ID, from, to, state); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			// The artifact was deleted meanwhile.
			_ = removeIfExists(m.partPath(af.ID))
		}
		return err
	}
	return nil
}

// finish checks the hash of a fully received file and moves it into the
// store, or discards it.
func (m *Manager) finish(ctx context.Context, af store.ArtifactFile, part *os.File, h hash.Hash) (Progress, error) {
	got := hex.EncodeToString(h.Sum(nil))
	if got != af.SHA256 {
		if err := m.reset(ctx, af.ID); err != nil {
			return Progress{}, err
		}
		return Progress{}, &HashError{Expected: af.SHA256, Got: got}
	}
	if err := part.Close(); err != nil {
		return Progress{}, fmt.Errorf("partial upload: %w", err)
	}
	path := m.partPath(af.ID)
	err := m.st.CompleteArtifactFile(ctx, af.ID, func(f store.ArtifactFile) error {
		if f.Stored {
			return removeIfExists(path)
		}
		return m.backend.Put(path, f.SHA256)
	})
	if err != nil {
		return Progress{}, err
	}
	return Progress{Received: af.Size, Complete: true}, nil
}

// Open returns the content of a complete artifact file for reading.
func (m *Manager) Open(af store.ArtifactFile) (io.ReadSeekCloser, error) {
	if af.Size == 0 {
		return nopCloser{bytes.NewReader(nil)}, nil
	}
	return m.backend.Open(af.SHA256)
}

type nopCloser struct{ io.ReadSeeker }

func (nopCloser) Close() error { return nil }

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
