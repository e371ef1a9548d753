package cache

import (
	"container/list"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// Errors callers can branch on with errors.Is.
var (
	// ErrInvalidDigest is returned by Get for a digest that is not 64 hex digits.
	ErrInvalidDigest = errors.New("invalid sha256 digest")
	// ErrDigestMismatch means the filled content does not hash to the digest
	// asked for; nothing was kept.
	ErrDigestMismatch = errors.New("sha256 mismatch")
	// ErrSizeMismatch means the filled content does not have the size asked
	// for; nothing was kept.
	ErrSizeMismatch = errors.New("size mismatch")
)

// errFillPanicked is what waiters see when the goroutine filling their file
// panicked inside its fill function.
var errFillPanicked = errors.New("fill panicked")

// FillFunc writes the content of a missing file to w. It must not keep w
// after it returns. Its error is returned by Get, wrapped.
type FillFunc func(ctx context.Context, w io.Writer) error

// Cache is a content-addressed file cache in one directory. It is safe for
// concurrent use by many goroutines; see the package documentation for why it
// is not safe for use by several processes.
type Cache struct {
	dir      string
	maxBytes int64 // <= 0: no cap

	mu      sync.Mutex
	entries map[string]*entry
	// lru holds the *entry of every file that counts against the cap, most
	// recently used at the front. Oversize files are not in it.
	lru *list.List
	// filling holds one flight per digest being filled, so that concurrent
	// Gets of one digest fill it once.
	filling map[string]*flight
	size    int64 // bytes of every indexed file, oversize ones included
	// oversize is the part of size taken by files larger than maxBytes; they
	// live only while pinned, so eviction leaves them out of its sums.
	oversize int64
}

type entry struct {
	sum      string
	size     int64
	lastUse  time.Time
	pins     int
	elem     *list.Element // in Cache.lru; nil for an oversize file
	oversize bool
	// gone is set when the entry left the index while someone may still hold
	// a release function for it; that release must then not touch the index,
	// which may hold a newer entry for the same digest.
	gone bool
}

type flight struct {
	done chan struct{}
	// err and retry are written before done is closed. retry says the fill
	// failed because its own context ended, which says nothing about the
	// source, so a waiter whose context is alive fills again itself.
	err   error
	retry bool
	// waiters counts the Gets waiting on done (for tests that must know a
	// waiter is waiting before acting).
	waiters int
}

// Entry describes one cached file, as listed by Entries.
type Entry struct {
	SHA256 string
	// Name is the file's name: the digest and its suffix (see GetNamed).
	Name    string
	Size    int64
	LastUse time.Time
	// Pins is the number of unreleased Gets holding the file.
	Pins int
}

// Open opens the cache in dir, creating dir (mode 0755) if it is missing, and
// indexes the files a previous life of the worker left there, with their
// modification time as their last use. It removes whatever it does not
// recognise in its subdirectories: files whose name is not a valid digest of
// their prefix directory and every partial download. Other entries of dir are
// left alone, so that a mistaken dir costs nothing. Existing files are not
// hashed again: they got in only through a verified rename, and hashing many
// GB at every start would be slow. maxBytes <= 0 means no cap; with a cap,
// Open evicts least recently used files until the total fits, and removes
// files larger than the cap.
func Open(dir string, maxBytes int64) (*Cache, error) {
	c := &Cache{
		dir:      dir,
		maxBytes: maxBytes,
		entries:  make(map[string]*entry),
		lru:      list.New(),
		filling:  make(map[string]*flight),
	}
	if err := c.prepare(); err != nil {
		return nil, fmt.Errorf("open cache %s: %w", dir, err)
	}
	found, err := c.scan()
	if err != nil {
		return nil, fmt.Errorf("open cache %s: %w", dir, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// found is sorted least recently used first, so pushing each to the front
	// leaves the most recently used at the front.
	for _, e := range found {
		if c.tooBig(e.size) {
			c.removeFile(e.sum)
			continue
		}
		c.entries[e.sum] = e
		e.elem = c.lru.PushFront(e)
		c.size += e.size
	}
	c.evictLocked()
	return c, nil
}

// Get returns the path of the file with SHA-256 digest sum (hex, either
// case), filling it first if it is not cached. The file stays in place until
// release is called; release may be called more than once. The caller must
// not modify the file, which other runs share.
//
// On a hit Get records the use in the file's modification time, so that the
// order of eviction survives restarts. On a miss Get calls fill to write the
// content into a temporary file in the cache, checks its digest and, when
// size >= 0, its size (ErrDigestMismatch, ErrSizeMismatch; nothing is kept),
// syncs it and renames it into place, then evicts least recently used
// unpinned files beyond the cap. A file larger than the cap is returned all
// the same but evicts no other file, since no eviction could make it fit; it
// is removed when its last holder releases it, so the next Get fills it again.
//
// Concurrent Gets of one digest call fill once; the others wait for it or
// for their own ctx to end. If that fill fails because its own context ended,
// a waiter fills the file itself; any other failure is returned to the
// waiters too, since the same source would most likely fail them again.
func (c *Cache) Get(ctx context.Context, sum string, size int64, fill FillFunc) (path string, release func(), err error) {
	return c.GetNamed(ctx, sum, "", size, fill)
}

// GetNamed is Get for a file whose path must end in suffix (such as
// ".tar.zst"): programs like sbuild choose how to read a file by its name,
// even through a symbolic link. The same content under another suffix is
// another file.
func (c *Cache) GetNamed(ctx context.Context, sum, suffix string, size int64, fill FillFunc) (path string, release func(), err error) {
	sum = strings.ToLower(sum)
	if !validDigest(sum) {
		return "", nil, fmt.Errorf("get %q: %w", sum, ErrInvalidDigest)
	}
	if !ValidSuffix(suffix) {
		return "", nil, fmt.Errorf("get %s: file name suffix %q: %w", sum, suffix, ErrInvalidDigest)
	}
	// From here on sum is the file's name: the digest and the suffix.
	sum += suffix
	for {
		c.mu.Lock()
		if e, ok := c.entries[sum]; ok {
			err := c.useLocked(e)
			if err == nil {
				c.mu.Unlock()
				return c.path(sum), c.releaser(e), nil
			}
			if !errors.Is(err, fs.ErrNotExist) {
				c.mu.Unlock()
				return "", nil, fmt.Errorf("get %s: %w", sum, err)
			}
			// Someone removed the file behind our back: forget it and
			// fill it again rather than fail every Get of it until restart.
			c.forgetLocked(e)
		}
		if fl, ok := c.filling[sum]; ok {
			fl.waiters++
			c.mu.Unlock()
			select {
			case <-fl.done:
				if fl.err != nil && !fl.retry {
					return "", nil, fmt.Errorf("get %s: filled by another caller: %w", sum, fl.err)
				}
				continue
			case <-ctx.Done():
				c.mu.Lock()
				fl.waiters--
				c.mu.Unlock()
				return "", nil, fmt.Errorf("get %s: wait for another caller's fill: %w", sum, context.Cause(ctx))
			}
		}
		if err := ctx.Err(); err != nil {
			c.mu.Unlock()
			return "", nil, fmt.Errorf("get %s: %w", sum, context.Cause(ctx))
		}
		fl := &flight{done: make(chan struct{})}
		c.filling[sum] = fl
		c.mu.Unlock()
		return c.fillAndAdd(ctx, fl, sum, size, fill)
	}
}

// fillAndAdd fills sum as the one filler of fl and indexes the result pinned
// once for the caller. The entry is added in the same critical section that
// ends the flight, so a waiter that wakes finds it.
func (c *Cache) fillAndAdd(ctx context.Context, fl *flight, sum string, size int64, fill FillFunc) (string, func(), error) {
	finished := false
	defer func() {
		if finished {
			return
		}
		// fill panicked: let the waiters go before the panic goes on.
		c.mu.Lock()
		delete(c.filling, sum)
		fl.err = errFillPanicked
		close(fl.done)
		c.mu.Unlock()
	}()
	n, err := c.download(ctx, sum, size, fill)
	c.mu.Lock()
	defer c.mu.Unlock()
	finished = true
	delete(c.filling, sum)
	if err != nil {
		fl.err, fl.retry = err, ctx.Err() != nil
		close(fl.done)
		return "", nil, fmt.Errorf("get %s: %w", sum, err)
	}
	e := &entry{sum: sum, size: n, lastUse: time.Now(), pins: 1}
	c.entries[sum] = e
	c.size += n
	if c.tooBig(n) {
		e.oversize = true
		c.oversize += n
	} else {
		e.elem = c.lru.PushFront(e)
	}
	close(fl.done)
	c.evictLocked()
	return c.path(sum), c.releaser(e), nil
}

// useLocked pins e and records its use, in memory and in the file's mtime.
func (c *Cache) useLocked(e *entry) error {
	now := time.Now()
	// A zero atime leaves it alone: only mtime carries the last use.
	if err := os.Chtimes(c.path(e.sum), time.Time{}, now); err != nil {
		return fmt.Errorf("record use: %w", err)
	}
	e.lastUse = now
	e.pins++
	if e.elem != nil {
		c.lru.MoveToFront(e.elem)
	}
	return nil
}

// releaser returns the idempotent release function for one pin of e.
func (c *Cache) releaser(e *entry) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			e.pins--
			switch {
			case e.gone:
			case e.oversize && e.pins == 0:
				c.removeLocked(e)
			default:
				// Pins may have kept the total above the cap; this
				// release may be what lets it come down.
				c.evictLocked()
			}
		})
	}
}

// evictLocked removes least recently used unpinned files until the files
// that count against the cap fit in it, or only pinned ones are left.
func (c *Cache) evictLocked() {
	if c.maxBytes <= 0 {
		return
	}
	for el := c.lru.Back(); el != nil && c.size-c.oversize > c.maxBytes; {
		prev := el.Prev()
		if e := el.Value.(*entry); e.pins == 0 {
			c.removeLocked(e)
		}
		el = prev
	}
}

// removeLocked deletes e's file and forgets it.
func (c *Cache) removeLocked(e *entry) {
	c.forgetLocked(e)
	// The file is removed under the lock so that a new fill of the same
	// digest cannot be renamed into place before the removal and lost to it.
	c.removeFile(e.sum)
}

// forgetLocked drops e from the index without touching its file.
func (c *Cache) forgetLocked(e *entry) {
	delete(c.entries, e.sum)
	if e.elem != nil {
		c.lru.Remove(e.elem)
		e.elem = nil
	}
	if e.oversize {
		c.oversize -= e.size
	}
	c.size -= e.size
	e.gone = true
}

func (c *Cache) tooBig(n int64) bool { return c.maxBytes > 0 && n > c.maxBytes }

// Size returns the bytes taken by the cached files, including files larger
// than the cap that are still held, and excluding fills in progress.
func (c *Cache) Size() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.size
}

// Entries lists the cached files, the next one to evict first; files larger
// than the cap, which go at their release whatever their last use, come last.
func (c *Cache) Entries() []Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Entry, 0, len(c.entries))
	for el := c.lru.Back(); el != nil; el = el.Prev() {
		out = append(out, el.Value.(*entry).export())
	}
	var big []Entry
	for _, e := range c.entries {
		if e.oversize {
			big = append(big, e.export())
		}
	}
	slices.SortFunc(big, func(a, b Entry) int { return strings.Compare(a.SHA256, b.SHA256) })
	return append(out, big...)
}

func (e *entry) export() Entry {
	return Entry{SHA256: e.sum[:2*sha256.Size], Name: e.sum, Size: e.size, LastUse: e.lastUse, Pins: e.pins}
}
