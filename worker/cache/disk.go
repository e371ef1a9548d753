package cache

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// The layout under the cache directory: dir/sha256/ab/abcdef… for files,
// dir/tmp/ for fills in progress. tmp/ is on the same file system as the
// files, so a verified fill moves into place with one atomic rename.
const (
	storeDir = "sha256"
	tmpDir   = "tmp"
)

// Modes readable by the unprivileged user that runs builds.
const (
	dirMode  fs.FileMode = 0o755
	fileMode fs.FileMode = 0o644
)

func (c *Cache) path(sum string) string {
	return filepath.Join(c.dir, storeDir, sum[:2], sum)
}

// prepare creates the directories and empties tmp/ of the partial downloads
// of a previous life.
func (c *Cache) prepare() error {
	_, err := os.Stat(c.dir)
	missing := errors.Is(err, fs.ErrNotExist)
	if err := os.MkdirAll(c.dir, dirMode); err != nil {
		return fmt.Errorf("create directory: %w", err)
	}
	if missing {
		// MkdirAll's mode went through the umask. An existing directory
		// is the administrator's choice and keeps its mode.
		if err := os.Chmod(c.dir, dirMode); err != nil {
			return fmt.Errorf("set directory mode: %w", err)
		}
	}
	if err := os.RemoveAll(filepath.Join(c.dir, tmpDir)); err != nil {
		return fmt.Errorf("remove partial downloads: %w", err)
	}
	for _, d := range []string{tmpDir, storeDir} {
		if err := mkdir(filepath.Join(c.dir, d)); err != nil {
			return err
		}
	}
	return nil
}

// scan lists the files under sha256/, least recently used first, and removes
// everything there that is not a regular file named by a digest in the
// directory of its first two digits.
func (c *Cache) scan() ([]*entry, error) {
	root := filepath.Join(c.dir, storeDir)
	prefixes, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", root, err)
	}
	var found []*entry
	for _, p := range prefixes {
		pdir := filepath.Join(root, p.Name())
		if !p.IsDir() || !validPrefix(p.Name()) {
			if err := os.RemoveAll(pdir); err != nil {
				return nil, fmt.Errorf("remove stray %s: %w", pdir, err)
			}
			continue
		}
		files, err := os.ReadDir(pdir)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", pdir, err)
		}
		for _, f := range files {
			fpath := filepath.Join(pdir, f.Name())
			if !f.Type().IsRegular() || !validName(f.Name()) || f.Name()[:2] != p.Name() {
				if err := os.RemoveAll(fpath); err != nil {
					return nil, fmt.Errorf("remove stray %s: %w", fpath, err)
				}
				continue
			}
			info, err := f.Info()
			if err != nil {
				return nil, fmt.Errorf("stat %s: %w", fpath, err)
			}
			found = append(found, &entry{sum: f.Name(), size: info.Size(), lastUse: info.ModTime()})
		}
	}
	slices.SortFunc(found, func(a, b *entry) int {
		if n := a.lastUse.Compare(b.lastUse); n != 0 {
			return n
		}
		return cmp.Compare(a.sum, b.sum)
	})
	return found, nil
}

// download has fill write sum into a temporary file, verifies it, and moves
// it into place. It returns the file's size. On error nothing is left.
func (c *Cache) download(ctx context.Context, sum string, size int64, fill FillFunc) (n int64, err error) {
	tmp, err := os.CreateTemp(filepath.Join(c.dir, tmpDir), sum+"-*")
	if err != nil {
		return 0, fmt.Errorf("create temporary file: %w", err)
	}
	kept := false
	defer func() {
		// Also runs when fill panics.
		if !kept {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()

	h := sha256.New()
	w := &limitWriter{w: io.MultiWriter(tmp, h), max: size}
	fillErr := fill(ctx, w)
	// An overflow is reported as such whatever fill made of the write error.
	if w.over {
		return 0, fmt.Errorf("fill wrote more than %d bytes: %w", size, ErrSizeMismatch)
	}
	if fillErr != nil {
		return 0, fmt.Errorf("fill: %w", fillErr)
	}
	if size >= 0 && w.n != size {
		return 0, fmt.Errorf("fill wrote %d bytes, want %d: %w", w.n, size, ErrSizeMismatch)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum[:2*sha256.Size] {
		return 0, fmt.Errorf("fill wrote content with sha256 %s: %w", got, ErrDigestMismatch)
	}

	if err := tmp.Chmod(fileMode); err != nil {
		return 0, fmt.Errorf("set file mode: %w", err)
	}
	// Sync before the rename: after a crash the name must not point at
	// content that never reached the disk.
	if err := tmp.Sync(); err != nil {
		return 0, fmt.Errorf("sync temporary file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return 0, fmt.Errorf("close temporary file: %w", err)
	}
	final := c.path(sum)
	if err := mkdir(filepath.Dir(final)); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return 0, fmt.Errorf("move into place: %w", err)
	}
	kept = true
	if err := syncDir(filepath.Dir(final)); err != nil {
		_ = os.Remove(final)
		return 0, err
	}
	return w.n, nil
}

// limitWriter counts what passes through it and refuses to pass more than
// max bytes (when max >= 0), so that a source sending too much fails early
// instead of filling the disk.
type limitWriter struct {
	w    io.Writer
	max  int64
	n    int64
	over bool
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.max >= 0 && l.n+int64(len(p)) > l.max {
		l.over = true
		return 0, fmt.Errorf("more than %d bytes: %w", l.max, ErrSizeMismatch)
	}
	n, err := l.w.Write(p)
	l.n += int64(n)
	return n, err
}

// removeFile removes a cached file. A failure is not reported: the caller
// has already dropped the file from the index, the next fill of the digest
// replaces it by rename, and the next Open indexes or replaces it.
func (c *Cache) removeFile(sum string) {
	_ = os.Remove(c.path(sum))
}

// mkdir creates a directory of the cache with dirMode whatever the umask.
func mkdir(dir string) error {
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return fmt.Errorf("create directory: %w", err)
	}
	if err := os.Chmod(dir, dirMode); err != nil {
		return fmt.Errorf("set directory mode: %w", err)
	}
	return nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory to sync: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}

func validDigest(s string) bool {
	return len(s) == 2*sha256.Size && isLowerHex(s)
}

// validName says whether s is the name of a cached file: a digest and a
// suffix.
func validName(s string) bool {
	return len(s) >= 2*sha256.Size && validDigest(s[:2*sha256.Size]) && ValidSuffix(s[2*sha256.Size:])
}

// ValidSuffix reports whether GetNamed accepts s as a file name suffix: ""
// or up to three extensions of lower-case letters and digits, such as
// ".tar.zst", 24 bytes at most.
func ValidSuffix(s string) bool {
	if s == "" {
		return true
	}
	parts := strings.Split(s, ".")
	if len(s) > 24 || parts[0] != "" || len(parts) > 4 {
		return false
	}
	for _, p := range parts[1:] {
		if p == "" || strings.IndexFunc(p, func(r rune) bool { return (r < 'a' || r > 'z') && (r < '0' || r > '9') }) >= 0 {
			return false
		}
	}
	return true
}

func validPrefix(s string) bool {
	return len(s) == 2 && isLowerHex(s)
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
