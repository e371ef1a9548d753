package artifacts

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
)

// Backend keeps file contents by SHA-256 (lower-case hex). FileStore, a
// directory, is the only one so far; another (object storage) can come
// later behind the same methods.
type Backend interface {
	// Open returns the content sha256 for reading; an error wrapping
	// fs.ErrNotExist when the backend does not have it.
	Open(sha256 string) (io.ReadSeekCloser, error)
	// Put moves the complete, synced local file tmpPath into the backend as
	// sha256, atomically: readers see all of it or nothing.
	Put(tmpPath, sha256 string) error
	// Remove takes sha256 out of the backend reversibly: once it returns,
	// Open no longer finds the content and Put may store it again. commit
	// makes the removal final, undo reverts it. Removing a content the
	// backend does not have succeeds with no-op functions.
	Remove(sha256 string) (commit, undo func() error, err error)
	// Recover finishes removals that a crash interrupted: a content whose
	// removal was not committed comes back if stored says the database
	// still has it, and goes otherwise.
	Recover(ctx context.Context, stored func(ctx context.Context, sha256 string) (bool, error)) error
}

// FileStore is a Backend in a local directory: the content with SHA-256 h
// is the file store/h[0:2]/h, written by renaming a synced file from the
// same file system; trash/ holds contents being removed.
type FileStore struct {
	root string
}

var shaPattern = regexp.MustCompile(`^[0-9a-f]{64}$`)

// NewFileStore returns the FileStore in dir, creating its directories.
func NewFileStore(dir string) (*FileStore, error) {
	for _, d := range []string{"store", "trash"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o750); err != nil {
			return nil, fmt.Errorf("artifact store: %w", err)
		}
	}
	return &FileStore{root: dir}, nil
}

func (s *FileStore) path(sha string) (string, error) {
	if !shaPattern.MatchString(sha) {
		return "", fmt.Errorf("invalid sha256 %q", sha)
	}
	return filepath.Join(s.root, "store", sha[:2], sha), nil
}

// Open implements Backend.
func (s *FileStore) Open(sha string) (io.ReadSeekCloser, error) {
	p, err := s.path(sha)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("open content %s: %w", sha, err)
	}
	return f, nil
}

// Put implements Backend. tmpPath must be on the same file system (the data
// directory) and already synced.
func (s *FileStore) Put(tmpPath, sha string) error {
	p, err := s.path(sha)
	if err != nil {
		return err
	}
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("store content %s: %w", sha, err)
	}
	if err := os.Rename(tmpPath, p); err != nil {
		return fmt.Errorf("store content %s: %w", sha, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("store content %s: %w", sha, err)
	}
	return nil
}

// Remove implements Backend: the content moves to trash/ until commit.
func (s *FileStore) Remove(sha string) (commit, undo func() error, err error) {
	p, err := s.path(sha)
	if err != nil {
		return nil, nil, err
	}
	trash := filepath.Join(s.root, "trash", sha)
	noop := func() error { return nil }
	if err := os.Rename(p, trash); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return noop, noop, nil
		}
		return nil, nil, fmt.Errorf("remove content %s: %w", sha, err)
	}
	commit = func() error {
		if err := os.Remove(trash); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove content %s: %w", sha, err)
		}
		return nil
	}
	undo = func() error {
		if err := os.Rename(trash, p); err != nil {
			return fmt.Errorf("restore content %s: %w", sha, err)
		}
		return nil
	}
	return commit, undo, nil
}

// Recover implements Backend.
func (s *FileStore) Recover(ctx context.Context, stored func(ctx context.Context, sha256 string) (bool, error)) error {
	dir := filepath.Join(s.root, "trash")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("artifact store trash: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		trash := filepath.Join(dir, name)
		if !shaPattern.MatchString(name) {
			_ = os.Remove(trash)
			continue
		}
		keep, err := stored(ctx, name)
		if err != nil {
			return err
		}
		p, _ := s.path(name)
		if keep {
			if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
				if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
					return err
				}
				if err := os.Rename(trash, p); err != nil {
					return fmt.Errorf("restore content %s: %w", name, err)
				}
				continue
			}
		}
		if err := os.Remove(trash); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove content %s: %w", name, err)
		}
	}
	return nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
