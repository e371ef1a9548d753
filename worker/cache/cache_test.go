package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// blob is some content and its digest.
type blob struct {
	data []byte
	sum  string
}

// newBlob returns n bytes of content that differs by seed.
func newBlob(seed string, n int) blob {
	data := bytes.Repeat([]byte(seed), n/len(seed)+1)[:n]
	h := sha256.Sum256(data)
	return blob{data: data, sum: hex.EncodeToString(h[:])}
}

// filler returns a fill function writing data and counting its calls.
func filler(data []byte, calls *atomic.Int32) FillFunc {
	return func(_ context.Context, w io.Writer) error {
		calls.Add(1)
		_, err := w.Write(data)
		return err
	}
}

// noFill fails the test if the cache calls it.
func noFill(t *testing.T) FillFunc {
	return func(context.Context, io.Writer) error {
		t.Error("fill called for a cached file")
		return errors.New("unexpected fill")
	}
}

// get fills b if needed and fails the test on error.
func get(t *testing.T, c *Cache, b blob) (string, func()) {
	t.Helper()
	var calls atomic.Int32
	path, release, err := c.Get(t.Context(), b.sum, int64(len(b.data)), filler(b.data, &calls))
	require.NoError(t, err)
	return path, release
}

// sums lists the digests of c's entries in eviction order.
func sums(c *Cache) []string {
	var out []string
	for _, e := range c.Entries() {
		out = append(out, e.SHA256)
	}
	return out
}

// requireNoTemp fails the test if a partial download is left.
func requireNoTemp(t *testing.T, dir string) {
	t.Helper()
	left, err := os.ReadDir(filepath.Join(dir, tmpDir))
	require.NoError(t, err)
	require.Empty(t, left)
}

// waitForWaiters polls until n Gets wait on the fill of sum.
func waitForWaiters(t *testing.T, c *Cache, sum string, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		fl, ok := c.filling[sum]
		return ok && fl.waiters == n
	}, 10*time.Second, time.Millisecond)
}

func TestGetMissThenHit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache")
	c, err := Open(dir, 0)
	require.NoError(t, err)
	b := newBlob("tarball", 1000)

	var calls atomic.Int32
	path, release, err := c.Get(t.Context(), b.sum, int64(len(b.data)), filler(b.data, &calls))
	require.NoError(t, err)
	require.Equal(t, int32(1), calls.Load())
	require.Equal(t, filepath.Join(dir, "sha256", b.sum[:2], b.sum), path)
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, b.data, got)
	release()

	for _, p := range []string{dir, filepath.Dir(path)} {
		info, err := os.Stat(p)
		require.NoError(t, err)
		require.Equal(t, fs.FileMode(0o755), info.Mode().Perm(), p)
	}
	info, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, fs.FileMode(0o644), info.Mode().Perm())

	// The hit accepts an upper-case digest and records the use in mtime.
	old := time.Now().Add(-time.Hour)
	require.NoError(t, os.Chtimes(path, old, old))
	before := time.Now()
	path2, release2, err := c.Get(t.Context(), strings.ToUpper(b.sum), int64(len(b.data)), noFill(t))
	require.NoError(t, err)
	defer release2()
	require.Equal(t, path, path2)
	info, err = os.Stat(path)
	require.NoError(t, err)
	require.False(t, info.ModTime().Before(before.Truncate(time.Second)), "mtime %v not updated", info.ModTime())
	require.Equal(t, int64(len(b.data)), c.Size())
	requireNoTemp(t, dir)
}

func TestGetInvalidDigest(t *testing.T) {
	c, err := Open(t.TempDir(), 0)
	require.NoError(t, err)
	for _, sum := range []string{"", "abc", strings.Repeat("g", 64), strings.Repeat("a", 63), "../" + strings.Repeat("a", 61)} {
		_, _, err := c.Get(t.Context(), sum, -1, noFill(t))
		require.ErrorIs(t, err, ErrInvalidDigest, sum)
	}
}

func TestConcurrentGetsFillOnce(t *testing.T) {
	c, err := Open(t.TempDir(), 0)
	require.NoError(t, err)
	b := newBlob("env", 4096)
	gate := make(chan struct{})
	var calls atomic.Int32
	fill := func(ctx context.Context, w io.Writer) error {
		calls.Add(1)
		<-gate
		_, err := w.Write(b.data)
		return err
	}

	const n = 16
	paths := make([]string, n)
	releases := make([]func(), n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			paths[i], releases[i], errs[i] = c.Get(t.Context(), b.sum, int64(len(b.data)), fill)
		})
	}
	waitForWaiters(t, c, b.sum, n-1)
	close(gate)
	wg.Wait()

	require.Equal(t, int32(1), calls.Load())
	for i := range n {
		require.NoError(t, errs[i])
		require.Equal(t, paths[0], paths[i])
	}
	require.Equal(t, n, c.Entries()[0].Pins)
	for _, r := range releases {
		r()
	}
	require.Equal(t, 0, c.Entries()[0].Pins)
}

func TestReleaseIsIdempotent(t *testing.T) {
	c, err := Open(t.TempDir(), 0)
	require.NoError(t, err)
	b := newBlob("x", 10)
	_, r1 := get(t, c, b)
	_, r2 := get(t, c, b)
	r1()
	r1()
	require.Equal(t, 1, c.Entries()[0].Pins)
	r2()
	require.Equal(t, 0, c.Entries()[0].Pins)
}

func TestGetRejectsBadContent(t *testing.T) {
	b := newBlob("good", 100)
	other := newBlob("evil", 100)
	tests := []struct {
		name  string
		write []byte
		size  int64
		want  error
	}{
		{"wrong content", other.data, 100, ErrDigestMismatch},
		{"wrong content, size unknown", other.data, -1, ErrDigestMismatch},
		{"short", b.data[:50], 100, ErrSizeMismatch},
		{"long", append(b.data, 'x'), 100, ErrSizeMismatch},
		{"right content, wrong size", b.data, 99, ErrSizeMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			c, err := Open(dir, 0)
			require.NoError(t, err)
			var calls atomic.Int32
			_, _, err = c.Get(t.Context(), b.sum, tt.size, filler(tt.write, &calls))
			require.ErrorIs(t, err, tt.want)
			require.Empty(t, c.Entries())
			require.Zero(t, c.Size())
			require.NoFileExists(t, c.path(b.sum))
			requireNoTemp(t, dir)
		})
	}
}

func TestFillErrorLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, 0)
	require.NoError(t, err)
	b := newBlob("y", 100)
	boom := errors.New("connection reset")
	_, _, err = c.Get(t.Context(), b.sum, -1, func(_ context.Context, w io.Writer) error {
		_, _ = w.Write(b.data[:40])
		return boom
	})
	require.ErrorIs(t, err, boom)
	require.Empty(t, c.Entries())
	require.NoFileExists(t, c.path(b.sum))
	requireNoTemp(t, dir)

	// The failure is not remembered: the next Get fills again.
	_, release := get(t, c, b)
	release()
	require.Equal(t, []string{b.sum}, sums(c))
}

func TestWaiterContextCancelled(t *testing.T) {
	c, err := Open(t.TempDir(), 0)
	require.NoError(t, err)
	b := newBlob("slow", 100)
	gate := make(chan struct{})
	var calls atomic.Int32
	fill := func(_ context.Context, w io.Writer) error {
		calls.Add(1)
		<-gate
		_, err := w.Write(b.data)
		return err
	}

	filled := make(chan error, 1)
	go func() {
		_, release, err := c.Get(t.Context(), b.sum, -1, fill)
		if err == nil {
			release()
		}
		filled <- err
	}()
	require.Eventually(t, func() bool { return calls.Load() == 1 }, 10*time.Second, time.Millisecond)

	ctx, cancel := context.WithCancelCause(t.Context())
	waited := make(chan error, 1)
	go func() {
		_, _, err := c.Get(ctx, b.sum, -1, fill)
		waited <- err
	}()
	waitForWaiters(t, c, b.sum, 1)
	stop := errors.New("work request aborted")
	cancel(stop)
	require.ErrorIs(t, <-waited, stop)

	// The filler is not disturbed by the waiter leaving.
	close(gate)
	require.NoError(t, <-filled)
	require.Equal(t, int32(1), calls.Load())
	require.Equal(t, []string{b.sum}, sums(c))
}

// When the filler's own context ends, a waiter with a live context fills the
// file itself; when the fill fails otherwise, the waiter shares the error.
func TestWaitersAfterFailedFill(t *testing.T) {
	tests := []struct {
		name         string
		cancelFiller bool
		wantCalls    int32
	}{
		{"filler cancelled, waiter fills", true, 2},
		{"source failed, waiter shares the error", false, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Open(t.TempDir(), 0)
			require.NoError(t, err)
			b := newBlob("z", 100)
			sourceErr := errors.New("404 not found")
			started := make(chan struct{})
			fail := make(chan struct{})
			var calls atomic.Int32
			fill := func(ctx context.Context, w io.Writer) error {
				if calls.Add(1) > 1 {
					_, err := w.Write(b.data)
					return err
				}
				close(started)
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-fail:
					return sourceErr
				}
			}

			fctx, fcancel := context.WithCancel(t.Context())
			defer fcancel()
			filled := make(chan error, 1)
			go func() {
				_, _, err := c.Get(fctx, b.sum, -1, fill)
				filled <- err
			}()
			<-started
			waited := make(chan error, 1)
			go func() {
				_, release, err := c.Get(t.Context(), b.sum, -1, fill)
				if err == nil {
					release()
				}
				waited <- err
			}()
			waitForWaiters(t, c, b.sum, 1)
			if tt.cancelFiller {
				fcancel()
				require.ErrorIs(t, <-filled, context.Canceled)
				require.NoError(t, <-waited)
				require.Equal(t, []string{b.sum}, sums(c))
			} else {
				close(fail)
				require.ErrorIs(t, <-filled, sourceErr)
				require.ErrorIs(t, <-waited, sourceErr)
				require.Empty(t, c.Entries())
			}
			require.Equal(t, tt.wantCalls, calls.Load())
		})
	}
}

func TestEvictsLeastRecentlyUsed(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, 30)
	require.NoError(t, err)
	a, b, d, e := newBlob("a", 10), newBlob("b", 10), newBlob("d", 10), newBlob("e", 10)
	for _, x := range []blob{a, b, d} {
		_, release := get(t, c, x)
		release()
	}
	require.Equal(t, []string{a.sum, b.sum, d.sum}, sums(c))
	require.Equal(t, int64(30), c.Size())

	// Using a makes b the least recently used.
	_, release, err := c.Get(t.Context(), a.sum, 10, noFill(t))
	require.NoError(t, err)
	release()
	require.Equal(t, []string{b.sum, d.sum, a.sum}, sums(c))

	_, release = get(t, c, e)
	release()
	require.Equal(t, []string{d.sum, a.sum, e.sum}, sums(c))
	require.Equal(t, int64(30), c.Size())
	require.NoFileExists(t, c.path(b.sum))
	for _, x := range []blob{d, a, e} {
		require.FileExists(t, c.path(x.sum))
	}
}

func TestPinnedFilesAreNeverEvicted(t *testing.T) {
	c, err := Open(t.TempDir(), 20)
	require.NoError(t, err)
	a, b, d, e := newBlob("a", 10), newBlob("b", 10), newBlob("d", 10), newBlob("e", 10)

	aPath, releaseA := get(t, c, a)
	_, release := get(t, c, b)
	release()
	// a is the least recently used but pinned: b goes.
	_, releaseD := get(t, c, d)
	require.Equal(t, []string{a.sum, d.sum}, sums(c))
	require.FileExists(t, aPath)

	// Everything pinned: the cache stays over its cap for now.
	_, releaseE := get(t, c, e)
	require.Equal(t, []string{a.sum, d.sum, e.sum}, sums(c))
	require.Equal(t, int64(30), c.Size())

	// The first release brings it back under the cap, least recently
	// used first.
	releaseA()
	require.Equal(t, []string{d.sum, e.sum}, sums(c))
	require.Equal(t, int64(20), c.Size())
	require.NoFileExists(t, aPath)
	releaseD()
	releaseE()
	require.Equal(t, []string{d.sum, e.sum}, sums(c))
}

func TestOversizeFile(t *testing.T) {
	c, err := Open(t.TempDir(), 20)
	require.NoError(t, err)
	small := newBlob("small", 10)
	big := newBlob("big", 30)
	_, release := get(t, c, small)
	release()

	var calls atomic.Int32
	bigPath, releaseBig, err := c.Get(t.Context(), big.sum, 30, filler(big.data, &calls))
	require.NoError(t, err)
	got, err := os.ReadFile(bigPath)
	require.NoError(t, err)
	require.Equal(t, big.data, got)
	// No other file is evicted for it: none could make it fit.
	require.Equal(t, []string{small.sum, big.sum}, sums(c))
	require.Equal(t, int64(40), c.Size())

	// While held it is shared like any other file.
	_, releaseBig2, err := c.Get(t.Context(), big.sum, 30, noFill(t))
	require.NoError(t, err)
	releaseBig()
	require.FileExists(t, bigPath)
	releaseBig2()

	// At its last release it goes, and only it.
	require.NoFileExists(t, bigPath)
	require.Equal(t, []string{small.sum}, sums(c))
	require.Equal(t, int64(10), c.Size())

	_, releaseBig, err = c.Get(t.Context(), big.sum, 30, filler(big.data, &calls))
	require.NoError(t, err)
	releaseBig()
	require.Equal(t, int32(2), calls.Load())
}

func TestOpenIndexesAndCleans(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, 0)
	require.NoError(t, err)
	a, b, d := newBlob("a", 10), newBlob("b", 20), newBlob("d", 30)
	for _, x := range []blob{a, b, d} {
		_, release := get(t, c, x)
		release()
	}
	// Last uses from a previous life: b, then d, then a.
	base := time.Now().Add(-time.Hour)
	for i, x := range []blob{b, d, a} {
		mt := base.Add(time.Duration(i) * time.Minute)
		require.NoError(t, os.Chtimes(c.path(x.sum), mt, mt))
	}

	// What a crash and strangers leave behind.
	junk := []string{
		filepath.Join(dir, tmpDir, a.sum+"-123456"),
		filepath.Join(dir, storeDir, a.sum[:2], "notes.txt"),
		filepath.Join(dir, storeDir, a.sum[:2], strings.ToUpper(a.sum)),
		filepath.Join(dir, storeDir, "zz", a.sum),
		filepath.Join(dir, storeDir, "stray"),
	}
	wrongPrefix := newBlob("w", 5)
	wp := "00"
	if wrongPrefix.sum[:2] == wp {
		wp = "01"
	}
	junk = append(junk, filepath.Join(dir, storeDir, wp, wrongPrefix.sum))
	for _, j := range junk {
		require.NoError(t, os.MkdirAll(filepath.Dir(j), 0o755))
		require.NoError(t, os.WriteFile(j, []byte("junk"), 0o644))
	}
	require.NoError(t, os.MkdirAll(filepath.Join(dir, storeDir, b.sum[:2], b.sum+"x"), 0o755))
	require.NoError(t, os.Symlink(c.path(a.sum), filepath.Join(dir, storeDir, d.sum[:2], strings.Repeat("f", 64))))
	outside := filepath.Join(dir, "README")
	require.NoError(t, os.WriteFile(outside, []byte("not ours"), 0o644))

	c, err = Open(dir, 0)
	require.NoError(t, err)
	require.Equal(t, []string{b.sum, d.sum, a.sum}, sums(c))
	require.Equal(t, int64(60), c.Size())
	for _, j := range junk {
		require.NoFileExists(t, j)
	}
	require.NoDirExists(t, filepath.Join(dir, storeDir, "zz"))
	require.NoDirExists(t, filepath.Join(dir, storeDir, b.sum[:2], b.sum+"x"))
	require.NoFileExists(t, filepath.Join(dir, storeDir, d.sum[:2], strings.Repeat("f", 64)))
	require.FileExists(t, outside, "files outside the cache's subdirectories are left alone")
	requireNoTemp(t, dir)
	for _, e := range c.Entries() {
		require.Zero(t, e.Pins)
	}
	path, release, err := c.Get(t.Context(), a.sum, 10, noFill(t))
	require.NoError(t, err)
	release()
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, a.data, got)

	// Reopened with a smaller cap, it evicts by the last uses it found:
	// b, then d; a was just used.
	c, err = Open(dir, 35)
	require.NoError(t, err)
	require.Equal(t, []string{a.sum}, sums(c))
	require.NoFileExists(t, c.path(b.sum))
	require.NoFileExists(t, c.path(d.sum))
}

func TestOpenRemovesFilesLargerThanTheCap(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, 0)
	require.NoError(t, err)
	small, big := newBlob("s", 10), newBlob("b", 100)
	for _, x := range []blob{small, big} {
		_, release := get(t, c, x)
		release()
	}
	c, err = Open(dir, 50)
	require.NoError(t, err)
	require.Equal(t, []string{small.sum}, sums(c))
	require.NoFileExists(t, c.path(big.sum))
}

func TestOpenCreatesDirectoryReadableByAll(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	_, err := Open(dir, 0)
	require.NoError(t, err)
	for _, d := range []string{dir, filepath.Join(dir, storeDir), filepath.Join(dir, tmpDir)} {
		info, err := os.Stat(d)
		require.NoError(t, err)
		require.Equal(t, fs.FileMode(0o755), info.Mode().Perm(), d)
	}
}

func TestConcurrentUse(t *testing.T) {
	c, err := Open(t.TempDir(), 50)
	require.NoError(t, err)
	blobs := make([]blob, 8)
	for i := range blobs {
		blobs[i] = newBlob(fmt.Sprintf("blob%d", i), 10+i)
	}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 50 {
				b := blobs[(g+i)%len(blobs)]
				var calls atomic.Int32
				path, release, err := c.Get(t.Context(), b.sum, int64(len(b.data)), filler(b.data, &calls))
				if !assertNoError(t, err) {
					return
				}
				got, err := os.ReadFile(path)
				if !assertNoError(t, err) || !bytes.Equal(got, b.data) {
					t.Errorf("%s: wrong content", path)
				}
				release()
			}
		})
	}
	wg.Wait()
	require.LessOrEqual(t, c.Size(), int64(50))
	var total int64
	for _, e := range c.Entries() {
		require.Zero(t, e.Pins)
		total += e.Size
	}
	require.Equal(t, total, c.Size())
}

// assertNoError reports err from a goroutine other than the test's.
func assertNoError(t *testing.T, err error) bool {
	if err != nil {
		t.Error(err)
		return false
	}
	return true
}

func TestFillPanicReleasesWaiters(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, 0)
	require.NoError(t, err)
	b := newBlob("p", 100)
	gate := make(chan struct{})
	var calls atomic.Int32
	fill := func(_ context.Context, w io.Writer) error {
		calls.Add(1)
		_, _ = w.Write(b.data[:10])
		<-gate
		panic("bug in fill")
	}

	recovered := make(chan any, 1)
	go func() {
		defer func() { recovered <- recover() }()
		_, _, _ = c.Get(t.Context(), b.sum, -1, fill)
	}()
	require.Eventually(t, func() bool { return calls.Load() == 1 }, 10*time.Second, time.Millisecond)
	waited := make(chan error, 1)
	go func() {
		_, _, err := c.Get(t.Context(), b.sum, -1, fill)
		waited <- err
	}()
	waitForWaiters(t, c, b.sum, 1)
	close(gate)
	require.Equal(t, "bug in fill", <-recovered)
	require.ErrorIs(t, <-waited, errFillPanicked)
	require.Empty(t, c.Entries())
	requireNoTemp(t, dir)
}

func TestGetNamedKeepsTheSuffix(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache")
	c, err := Open(dir, 0)
	require.NoError(t, err)
	b := newBlob("environment", 500)

	var calls atomic.Int32
	path, release, err := c.GetNamed(t.Context(), b.sum, ".tar.zst", int64(len(b.data)), filler(b.data, &calls))
	require.NoError(t, err)
	release()
	require.Equal(t, filepath.Join(dir, "sha256", b.sum[:2], b.sum+".tar.zst"), path)
	// The same content without the suffix is another file.
	plain, release, err := c.Get(t.Context(), b.sum, int64(len(b.data)), filler(b.data, &calls))
	require.NoError(t, err)
	release()
	require.NotEqual(t, path, plain)
	require.Equal(t, int32(2), calls.Load())

	// A reopened cache keeps the named file.
	c, err = Open(dir, 0)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{b.sum, b.sum}, sums(c))
	again, release, err := c.GetNamed(t.Context(), b.sum, ".tar.zst", int64(len(b.data)), noFill(t))
	require.NoError(t, err)
	release()
	require.Equal(t, path, again)

	for _, bad := range []string{"tar", ".TAR", "../x", ".tar.", ".a.b.c.d", ".tar/zst"} {
		_, _, err := c.GetNamed(t.Context(), b.sum, bad, -1, noFill(t))
		require.ErrorIs(t, err, ErrInvalidDigest, bad)
	}
}
