package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server"
	"github.com/kiln-ci/kiln/server/store"
)

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func fileCreate(content []byte) schemas.ArtifactFileCreate {
	return schemas.ArtifactFileCreate{Size: int64(len(content)), Type: schemas.FileTypeFile,
		Checksums: map[string]string{"sha256": sha256Hex(content)}}
}

// token returns a new user token of an existing user.
func (b *bundle) token(username string) string {
	b.t.Helper()
	u, err := b.st.UserByName(b.ctx, username)
	require.NoError(b.t, err)
	tok, err := b.st.CreateUserToken(b.ctx, u.ID, "e2e")
	require.NoError(b.t, err)
	return tok
}

// raw sends one HTTP request to the server (path below /api/1.0/) and
// returns the response with its body read.
func (b *bundle) raw(method, path, token string, body []byte, hdr ...string) (*http.Response, []byte) {
	b.t.Helper()
	req, err := http.NewRequestWithContext(b.ctx, method, b.srv.URL()+"/api/1.0/"+path, bytes.NewReader(body))
	require.NoError(b.t, err)
	if token != "" {
		req.Header.Set("Token", token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(b.t, err)
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	require.NoError(b.t, err)
	return resp, got
}

// status asks what the server has of a file: the status code and Range.
func (b *bundle) uploadStatus(token, filePath string, size int) (int, string) {
	b.t.Helper()
	resp, body := b.raw("PUT", filePath, token, nil, "Content-Range", fmt.Sprintf("bytes */%d", size))
	require.Contains(b.t, []int{200, 206}, resp.StatusCode, string(body))
	return resp.StatusCode, resp.Header.Get("Range")
}

// chunk sends bytes first..last of content.
func (b *bundle) chunk(token, filePath string, content []byte, first, last int) (*http.Response, []byte) {
	b.t.Helper()
	return b.raw("PUT", filePath, token, content[first:last+1],
		"Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, len(content)))
}

// TestArtifactUploadProtocol drives debusine's upload protocol over plain
// HTTP: status queries, out-of-order and overlapping chunks, a connection
// cut half way and the resume after it, a wrong hash, empty files, path
// traversal attempts, downloads with Range and the tar.gz of a multi-file
// artifact.
func TestArtifactUploadProtocol(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		tok := b.token("alice")
		big := randomBytes(t, 300<<10)
		nested := []byte("nested file\n")
		a, err := b.user.CreateArtifact(b.ctx, schemas.ArtifactCreate{Category: "test", Data: json.RawMessage(`{"answer":42}`),
			Files: map[string]schemas.ArtifactFileCreate{"big.bin": fileCreate(big), "a/b/nested.txt": fileCreate(nested),
				"empty": fileCreate(nil)}})
		require.NoError(t, err)
		require.Equal(t, []string{"a/b/nested.txt", "big.bin"}, a.FilesToUpload, "the empty file is complete at creation")
		require.True(t, a.Files["empty"].Complete)
		require.JSONEq(t, `{"answer":42}`, string(a.Data))
		require.True(t, strings.HasPrefix(a.DownloadTarGzURL, b.srv.URL()+"/api/1.0/artifact/"), a.DownloadTarGzURL)
		require.Equal(t, b.srv.URL()+fmt.Sprintf("/api/1.0/artifact/%d/files/a/b/nested.txt/", a.ID), a.Files["a/b/nested.txt"].URL)
		base := fmt.Sprintf("artifact/%d/", a.ID)
		bigPath := base + "files/big.bin/"

		// Nothing yet: 206 with bytes=0-0.
		code, rng := b.uploadStatus(tok, bigPath, len(big))
		require.Equal(t, 206, code)
		require.Equal(t, "bytes=0-0", rng)

		// Out of order: a chunk past what the server has is refused and the
		// answer says where to continue.
		resp, body := b.chunk(tok, bigPath, big, 100_000, 199_999)
		require.Equal(t, 400, resp.StatusCode, string(body))
		require.Equal(t, "bytes=0-0", resp.Header.Get("Range"))
		require.Contains(t, string(body), "Please continue from 0")

		resp, body = b.chunk(tok, bigPath, big, 0, 99_999)
		require.Equal(t, 200, resp.StatusCode, string(body))
		require.Equal(t, "bytes=0-100000", resp.Header.Get("Range"))

		// Overlapping: bytes the server has are skipped.
		resp, body = b.chunk(tok, bigPath, big, 50_000, 149_999)
		require.Equal(t, 200, resp.StatusCode, string(body))
		require.Equal(t, "bytes=0-150000", resp.Header.Get("Range"))

		// A connection cut half way through a chunk: the server keeps what
		// arrived.
		u, err := url.Parse(b.srv.URL())
		require.NoError(t, err)
		conn, err := net.Dial("tcp", u.Host)
		require.NoError(t, err)
		first, last := 150_000, len(big)-1
		fmt.Fprintf(conn, "PUT /api/1.0/%s HTTP/1.1\r\nHost: %s\r\nToken: %s\r\nContent-Range: bytes %d-%d/%d\r\nContent-Length: %d\r\n\r\n",
			bigPath, u.Host, tok, first, last, len(big), last-first+1)
		_, err = conn.Write(big[first : first+30_000])
		require.NoError(t, err)
		require.NoError(t, conn.Close())
		b.waitFor("the server to keep the interrupted chunk", func() bool {
			_, rng := b.uploadStatus(tok, bigPath, len(big))
			return rng == "bytes=0-180000"
		})

		// Resume from there to the end.
		resp, body = b.chunk(tok, bigPath, big, 180_000, len(big)-1)
		require.Equal(t, 201, resp.StatusCode, string(body))
		code, _ = b.uploadStatus(tok, bigPath, len(big))
		require.Equal(t, 200, code, "complete")
		resp, _ = b.chunk(tok, bigPath, big, 0, 9)
		require.Equal(t, 201, resp.StatusCode, "a chunk for a complete file answers 201")

		// Without Content-Range the body is the whole file.
		resp, body = b.raw("PUT", base+"files/a/b/nested.txt/", tok, nested)
		require.Equal(t, 201, resp.StatusCode, string(body))
		got, err := b.user.GetArtifact(b.ctx, a.ID)
		require.NoError(t, err)
		require.Empty(t, got.FilesToUpload)

		// Downloads: whole, Range, suffix range, multiple ranges, If-Range.
		resp, body = b.raw("GET", bigPath, tok, nil)
		require.Equal(t, 200, resp.StatusCode)
		require.Equal(t, big, body)
		require.Equal(t, `"`+sha256Hex(big)+`"`, resp.Header.Get("ETag"))
		require.Equal(t, "bytes", resp.Header.Get("Accept-Ranges"))
		resp, body = b.raw("GET", bigPath, tok, nil, "Range", "bytes=1000-1999")
		require.Equal(t, 206, resp.StatusCode)
		require.Equal(t, big[1000:2000], body)
		require.Equal(t, fmt.Sprintf("bytes 1000-1999/%d", len(big)), resp.Header.Get("Content-Range"))
		resp, body = b.raw("GET", bigPath, tok, nil, "Range", "bytes=-10")
		require.Equal(t, 206, resp.StatusCode)
		require.Equal(t, big[len(big)-10:], body)
		resp, body = b.raw("GET", bigPath, tok, nil, "Range", "bytes=0-9,20-29")
		require.Equal(t, 206, resp.StatusCode)
		require.Contains(t, resp.Header.Get("Content-Type"), "multipart/byteranges")
		require.True(t, bytes.Contains(body, big[20:30]))
		resp, body = b.raw("GET", bigPath, tok, nil, "Range", "bytes=0-9", "If-Range", `"stale"`)
		require.Equal(t, 200, resp.StatusCode, "If-Range with another ETag gets the whole file")
		require.Len(t, body, len(big))
		resp, _ = b.raw("GET", bigPath, tok, nil, "Range", fmt.Sprintf("bytes=%d-", len(big)+5))
		require.Equal(t, 416, resp.StatusCode)
		resp, body = b.raw("GET", base+"files/empty/", tok, nil)
		require.Equal(t, 200, resp.StatusCode)
		require.Empty(t, body)
		var rangeBuf bytes.Buffer
		n, err := b.user.DownloadFile(b.ctx, a.ID, "big.bin", &rangeBuf, &client.ByteRange{First: 10, Last: 19})
		require.NoError(t, err)
		require.Equal(t, int64(10), n)
		require.Equal(t, big[10:20], rangeBuf.Bytes())

		// debusine's client GETs the artifact without the trailing slash.
		resp, body = b.raw("GET", strings.TrimSuffix(base, "/"), tok, nil)
		require.Equal(t, 200, resp.StatusCode, string(body))

		// The tar.gz holds every file at its path.
		resp, body = b.raw("GET", base+"download/?archive=tar.gz", tok, nil)
		require.Equal(t, 200, resp.StatusCode)
		require.Equal(t, "application/gzip", resp.Header.Get("Content-Type"))
		files := readTarGz(t, body)
		require.Equal(t, map[string][]byte{"a/": nil, "a/b/": nil, "a/b/nested.txt": nested, "big.bin": big, "empty": {}}, files)

		// A wrong hash: the upload is discarded (409) and starts again.
		declared, actual := []byte("declared content"), []byte("different bytes!")
		wrong, err := b.user.CreateArtifact(b.ctx, schemas.ArtifactCreate{Category: "test",
			Files: map[string]schemas.ArtifactFileCreate{"f": fileCreate(declared)}})
		require.NoError(t, err)
		wrongPath := fmt.Sprintf("artifact/%d/files/f/", wrong.ID)
		resp, body = b.chunk(tok, wrongPath, actual, 0, 7)
		require.Equal(t, 200, resp.StatusCode, string(body))
		resp, body = b.chunk(tok, wrongPath, actual, 8, len(actual)-1)
		require.Equal(t, 409, resp.StatusCode, string(body))
		require.Contains(t, string(body), "Invalid file hash")
		code, rng = b.uploadStatus(tok, wrongPath, len(declared))
		require.Equal(t, 206, code)
		require.Equal(t, "bytes=0-0", rng)
		resp, _ = b.raw("GET", wrongPath, tok, nil)
		require.Equal(t, 409, resp.StatusCode, "an incomplete file cannot be downloaded")
		resp, body = b.raw("PUT", wrongPath, tok, declared)
		require.Equal(t, 201, resp.StatusCode, string(body))
	})
}

// readTarGz returns the entries of a .tar.gz: directories map to nil.
func readTarGz(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(b))
	require.NoError(t, err)
	tr := tar.NewReader(gz)
	out := map[string][]byte{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		if h.Typeflag == tar.TypeDir {
			out[h.Name] = nil
			continue
		}
		c, err := io.ReadAll(tr)
		require.NoError(t, err)
		out[h.Name] = c
	}
	return out
}

func TestArtifactPathsRejected(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		tok := b.token("alice")
		cases := map[string]string{
			"parent":             "../etc/passwd",
			"parent inside":      "a/../../b",
			"dot":                "./a",
			"absolute":           "/etc/passwd",
			"NUL":                "a\x00b",
			"control character":  "a\nb",
			"backslash":          `..\windows`,
			"empty name":         "a//b",
			"trailing slash":     "a/",
			"empty":              "",
			"too long":           strings.Repeat("a/", 600) + "b",
			"name too long":      strings.Repeat("x", 256),
			"file and directory": "",
		}
		for name, p := range cases {
			t.Run(name, func(t *testing.T) {
				files := map[string]schemas.ArtifactFileCreate{p: fileCreate([]byte("x"))}
				if strings.HasPrefix(name, "file and directory") {
					files = map[string]schemas.ArtifactFileCreate{"dir": fileCreate([]byte("x")), "dir/sub/f": fileCreate([]byte("y"))}
				}
				_, err := b.user.CreateArtifact(b.ctx, schemas.ArtifactCreate{Category: "test", Files: files})
				require.Equal(t, 400, client.StatusCode(err), "%q: %v", p, err)
				var pe *client.ProblemError
				require.ErrorAs(t, err, &pe)
				require.NotEmpty(t, pe.Problem.ValidationErrors)
			})
		}

		// Nothing outside an artifact can be reached through its URLs.
		a, err := b.user.CreateArtifact(b.ctx, schemas.ArtifactCreate{Category: "test",
			Files: map[string]schemas.ArtifactFileCreate{"f": fileCreate(nil)}})
		require.NoError(t, err)
		for _, p := range []string{"files/../../../../etc/passwd/", "files/%2E%2E/%2E%2E/etc/passwd/", "files/..%2F..%2Fkiln.sqlite3/",
			"files/%2Fetc%2Fpasswd/"} {
			resp, body := b.raw("GET", fmt.Sprintf("artifact/%d/%s", a.ID, p), tok, nil)
			require.Equal(t, 404, resp.StatusCode, "%s: %s", p, body)
		}
	})
}

// flakyTransport breaks the body of every third upload chunk after a few
// KiB, as a network failure would, and counts the bytes it sends.
type flakyTransport struct {
	next   http.RoundTripper
	mu     sync.Mutex
	chunks int
	sent   atomic.Int64
	broken atomic.Int64
}

func (f *flakyTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodPut && req.ContentLength > 0 {
		f.mu.Lock()
		f.chunks++
		breakIt := f.chunks%3 == 1
		f.mu.Unlock()
		var limit int64 = -1
		if breakIt {
			limit = 10 << 10
			f.broken.Add(1)
		}
		req.Body = &countingBody{r: req.Body, f: f, limit: limit}
	}
	return f.next.RoundTrip(req)
}

type countingBody struct {
	r     io.ReadCloser
	f     *flakyTransport
	n     int64
	limit int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	if c.limit >= 0 && c.n >= c.limit {
		return 0, errors.New("network cable unplugged")
	}
	if c.limit >= 0 && int64(len(p)) > c.limit-c.n {
		p = p[:c.limit-c.n]
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	c.f.sent.Add(int64(n))
	return n, err
}

func (c *countingBody) Close() error { return c.r.Close() }

// TestArtifactClientResume uploads through the client library over a
// network that breaks: the uploads resume where the server stands instead
// of starting again, and a second UploadFiles finishes an upload that was
// cancelled half way.
func TestArtifactClientResume(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		dir := t.TempDir()
		big := randomBytes(t, 1<<20)
		small := []byte("small file")
		write := func(name string, c []byte) string {
			p := filepath.Join(dir, name)
			require.NoError(t, os.WriteFile(p, c, 0o600))
			return p
		}
		bigPath, smallPath, emptyPath := write("big", big), write("small", small), write("empty", nil)

		ft := &flakyTransport{next: http.DefaultTransport}
		c := client.New(b.srv.APIURL(), b.token("alice"), client.WithHTTPClient(&http.Client{Transport: ft}))
		var progress []client.UploadProgress
		var pmu sync.Mutex
		a, err := c.UploadArtifact(b.ctx, client.ArtifactUpload{Category: "test", Data: map[string]any{"k": "v"},
			Files: map[string]string{"data/big.bin": bigPath, "small.txt": smallPath, "empty": emptyPath}},
			client.WithChunkSize(64<<10), client.WithRetryDelay(time.Millisecond), client.WithProgress(func(p client.UploadProgress) {
				pmu.Lock()
				progress = append(progress, p)
				pmu.Unlock()
			}))
		require.NoError(t, err)
		require.Empty(t, a.FilesToUpload)
		require.Positive(t, ft.broken.Load(), "some chunks were cut")
		require.Less(t, ft.sent.Load(), int64(len(big))*3/2, "the upload resumed rather than restarted")
		pmu.Lock()
		require.Equal(t, client.UploadProgress{Path: "small.txt", Sent: int64(len(small)), Size: int64(len(small)), Done: true}, progress[len(progress)-1])
		pmu.Unlock()

		out := t.TempDir()
		got, err := b.user.DownloadArtifact(b.ctx, a.ID, out)
		require.NoError(t, err)
		require.Len(t, got.Files, 3)
		for p, want := range map[string][]byte{"data/big.bin": big, "small.txt": small, "empty": {}} {
			c, err := os.ReadFile(filepath.Join(out, filepath.FromSlash(p)))
			require.NoError(t, err)
			require.Equal(t, want, c, p)
		}
		var tgz bytes.Buffer
		_, err = b.user.DownloadTarball(b.ctx, a.ID, &tgz)
		require.NoError(t, err)
		require.Equal(t, big, readTarGz(t, tgz.Bytes())["data/big.bin"])

		// An upload cancelled half way (a worker that stops, say) is
		// finished later by UploadFiles, which sends only the rest.
		other := randomBytes(t, 512<<10)
		otherPath := write("other", other)
		fr, err := client.DescribeFile(otherPath)
		require.NoError(t, err)
		created, err := c.CreateArtifact(b.ctx, schemas.ArtifactCreate{Category: "test",
			Files: map[string]schemas.ArtifactFileCreate{"other": fr}})
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(b.ctx)
		err = b.user.UploadFile(ctx, created.ID, "other", otherPath, client.WithChunkSize(32<<10),
			client.WithProgress(func(p client.UploadProgress) {
				if p.Sent >= 256<<10 {
					cancel()
				}
			}))
		cancel()
		require.ErrorIs(t, err, context.Canceled)
		var sentAfter int64
		done, err := b.user.UploadFiles(b.ctx, created.ID, map[string]string{"other": otherPath},
			client.WithProgress(func(p client.UploadProgress) {
				if sentAfter == 0 {
					sentAfter = p.Sent
				}
			}))
		require.NoError(t, err)
		require.Empty(t, done.FilesToUpload)
		require.GreaterOrEqual(t, sentAfter, int64(200<<10), "the second run started where the first stopped")
		var dl bytes.Buffer
		_, err = b.user.DownloadFile(b.ctx, created.ID, "other", &dl, nil)
		require.NoError(t, err)
		require.Equal(t, other, dl.Bytes())

		// A local file that changed since it was hashed: the server
		// discards it twice and the client gives up.
		changing := write("changing", []byte("version one"))
		fr, err = client.DescribeFile(changing)
		require.NoError(t, err)
		created, err = c.CreateArtifact(b.ctx, schemas.ArtifactCreate{Category: "test",
			Files: map[string]schemas.ArtifactFileCreate{"changing": fr}})
		require.NoError(t, err)
		write("changing", []byte("version two"))
		err = b.user.UploadFile(b.ctx, created.ID, "changing", changing)
		require.ErrorIs(t, err, client.ErrHashMismatch)
		require.True(t, client.IsConflict(err))
	})
}

func TestArtifactLimitsAndPermissions(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			b := setupWith(t, be, func(c *server.Config) { c.ArtifactMaxFileBytes = 1024 })
			alice := b.token("alice")
			_, err := b.st.CreateUser(b.ctx, "carol", "", false)
			require.NoError(t, err)
			_, err = b.user.CreateArtifact(b.ctx, schemas.ArtifactCreate{Category: "test",
				Files: map[string]schemas.ArtifactFileCreate{"big": fileCreate(make([]byte, 1025))}})
			require.Equal(t, 413, client.StatusCode(err), "%v", err)

			content := make([]byte, 1024)
			a, err := b.user.CreateArtifact(b.ctx, schemas.ArtifactCreate{Category: "test",
				Files: map[string]schemas.ArtifactFileCreate{"f": fileCreate(content)}})
			require.NoError(t, err)
			fp := fmt.Sprintf("artifact/%d/files/f/", a.ID)
			resp, body := b.raw("PUT", fp, alice, append(content, 'x'))
			require.Equal(t, 413, resp.StatusCode, "a body past the end of the file: %s", body)

			// Only the creator (or an admin) uploads; any token reads;
			// none is refused.
			resp, _ = b.raw("PUT", fp, b.token("carol"), content)
			require.Equal(t, 403, resp.StatusCode)
			resp, _ = b.raw("GET", fmt.Sprintf("artifact/%d/", a.ID), "", nil)
			require.Equal(t, 403, resp.StatusCode)
			resp, _ = b.raw("PUT", fp, "", content)
			require.Equal(t, 403, resp.StatusCode)
			resp, body = b.raw("PUT", fp, b.token("admin"), content)
			require.Equal(t, 201, resp.StatusCode, string(body))
			resp, _ = b.raw("GET", fp, "", nil)
			require.Equal(t, 403, resp.StatusCode, "downloads need a token")
			resp, _ = b.raw("GET", fp, b.token("carol"), nil)
			require.Equal(t, 200, resp.StatusCode)

			// A worker creates artifacts for the work request assigned to
			// it, and only for that one; they appear in the store's list for
			// the work request.
			secret := store.NewSecret()
			wk, err := b.st.RegisterWorker(b.ctx, "uploader", "external", secret, "")
			require.NoError(t, err)
			require.NoError(t, b.st.SetWorkerEnabled(b.ctx, wk.ID, true))
			wr := b.create(b.user, "noop", `{"host_architecture": "no-such-arch"}`)
			other := b.create(b.user, "noop", `{"host_architecture": "no-such-arch"}`)
			_, err = b.st.Assign(b.ctx, wr.ID, wr.Attempt, wk.ID, 10, store.Message{
				Subject: b.srv.Names().AssignSubject(wk.ID), MsgID: fmt.Sprintf("e2e-%d", wr.ID), Payload: "{}"})
			require.NoError(t, err)
			wc := clientFor(b, secret)
			log := []byte("build log\n")
			id := wr.ID
			created, err := wc.CreateArtifact(b.ctx, schemas.ArtifactCreate{Category: "debian:package-build-log", WorkRequest: &id,
				Files: map[string]schemas.ArtifactFileCreate{"build.log": fileCreate(log)}})
			require.NoError(t, err)
			require.Equal(t, id, *created.WorkRequest)
			require.Nil(t, created.CreatedBy)
			oid := other.ID
			_, err = wc.CreateArtifact(b.ctx, schemas.ArtifactCreate{Category: "x", WorkRequest: &oid})
			require.Equal(t, 403, client.StatusCode(err), "not its work request: %v", err)
			_, err = wc.CreateArtifact(b.ctx, schemas.ArtifactCreate{Category: "x"})
			require.Equal(t, 403, client.StatusCode(err), "a worker needs a work request: %v", err)
			_, err = b.user.CreateArtifact(b.ctx, schemas.ArtifactCreate{Category: "x", WorkRequest: &id})
			require.Equal(t, 403, client.StatusCode(err), "a user cannot claim a work request: %v", err)
			logPath := filepath.Join(t.TempDir(), "build.log")
			require.NoError(t, os.WriteFile(logPath, log, 0o600))
			require.Equal(t, 403, client.StatusCode(b.user.UploadFile(b.ctx, created.ID, "build.log", logPath)), "not alice's artifact")
			require.NoError(t, wc.UploadFile(b.ctx, created.ID, "build.log", logPath))
			ids, err := b.st.ArtifactIDsForWorkRequest(b.ctx, wr.ID)
			require.NoError(t, err)
			require.Equal(t, []int64{created.ID}, ids)
		})
	}
}

// blobPath is where the file store keeps a content.
func (b *bundle) blobPath(content []byte) string {
	s := sha256Hex(content)
	return filepath.Join(b.dir, "artifacts", "store", s[:2], s)
}

// TestArtifactExpiryAndGarbageCollection lets the garbage collector run
// every 100ms: expired artifacts go, except those a kept artifact reaches
// through a relation, and a content goes only with the last artifact that
// lists it.
func TestArtifactExpiryAndGarbageCollection(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			b := setupWith(t, be, func(c *server.Config) { c.ArtifactGCInterval = 100 * time.Millisecond })
			shared, unique, targeted := []byte("shared by two artifacts"), []byte("only in the short-lived one"), []byte("kept by a relation")
			dir := t.TempDir()
			local := func(name string, c []byte) string {
				p := filepath.Join(dir, name)
				require.NoError(t, os.WriteFile(p, c, 0o600))
				return p
			}
			soon := time.Now().Add(3 * time.Second)
			upload := func(expire *time.Time, files map[string]string) schemas.Artifact {
				a, err := b.user.UploadArtifact(b.ctx, client.ArtifactUpload{Category: "test", Files: files, ExpireAt: expire})
				require.NoError(t, err)
				require.Empty(t, a.FilesToUpload)
				return a
			}
			shortLived := upload(&soon, map[string]string{"shared": local("shared", shared), "unique": local("unique", unique)})
			forever := upload(nil, map[string]string{"shared-too": local("shared", shared)})
			target := upload(&soon, map[string]string{"t": local("targeted", targeted)})
			keeper := upload(nil, nil)
			_, err := b.user.CreateRelation(b.ctx, keeper.ID, target.ID, schemas.RelationBuiltUsing)
			require.NoError(t, err)
			require.True(t, forever.Files["shared-too"].Complete, "known content completes at once")
			require.FileExists(t, b.blobPath(unique))

			b.waitFor("the short-lived artifact to be collected", func() bool {
				_, err := b.user.GetArtifact(b.ctx, shortLived.ID)
				return client.IsNotFound(err)
			})
			b.waitFor("its unique content to leave the store", func() bool {
				_, err := os.Stat(b.blobPath(unique))
				return errors.Is(err, os.ErrNotExist)
			})
			require.FileExists(t, b.blobPath(shared), "another artifact still lists it")
			var got bytes.Buffer
			_, err = b.user.DownloadFile(b.ctx, forever.ID, "shared-too", &got, nil)
			require.NoError(t, err)
			require.Equal(t, shared, got.Bytes())

			// The expired target of a relation from a kept artifact stays.
			kept, err := b.user.GetArtifact(b.ctx, target.ID)
			require.NoError(t, err)
			require.True(t, kept.ExpireAt.Before(time.Now()))
			require.FileExists(t, b.blobPath(targeted))
			rels, err := b.user.ListRelations(b.ctx, client.RelationFilter{Target: target.ID})
			require.NoError(t, err)
			require.Len(t, rels, 1)
			_, err = b.user.CreateRelation(b.ctx, keeper.ID, target.ID, schemas.RelationExtends)
			require.Equal(t, 400, client.StatusCode(err), "no new relation to an expired artifact")

			// Without the relation, it goes too.
			require.NoError(t, b.user.DeleteRelation(b.ctx, rels[0].ID))
			b.waitFor("the unreferenced expired artifact to be collected", func() bool {
				_, err := b.user.GetArtifact(b.ctx, target.ID)
				return client.IsNotFound(err)
			})
			b.waitFor("its content to leave the store", func() bool {
				_, err := os.Stat(b.blobPath(targeted))
				return errors.Is(err, os.ErrNotExist)
			})
		})
	}
}

// TestArtifactCLI runs create-artifact, show-artifact, download-artifact
// and show-artifact-relations.
func TestArtifactCLI(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		src := t.TempDir()
		files := map[string][]byte{"a.txt": []byte("alpha\n"), "sub/b.bin": randomBytes(t, 200<<10)}
		for p, c := range files {
			full := filepath.Join(src, filepath.FromSlash(p))
			require.NoError(t, os.MkdirAll(filepath.Dir(full), 0o755))
			require.NoError(t, os.WriteFile(full, c, 0o600))
		}
		dataFile := filepath.Join(src, "data.yaml")
		require.NoError(t, os.WriteFile(dataFile, []byte("source: hello\nversion: '1.0'\n"), 0o600))

		code, out, errOut := b.kiln("", "create-artifact", "debian:upload", "--upload-base-directory", src,
			"--upload", filepath.Join(src, "a.txt"), filepath.Join(src, "sub", "b.bin"),
			"--data", dataFile, "--expire-at", "72h", "--chunk-size", "65536")
		require.Equal(t, 0, code, "stdout: %s\nstderr: %s", out, errOut)
		var created struct {
			Result        string `yaml:"result"`
			ID            int64  `yaml:"artifact_id"`
			FilesToUpload int    `yaml:"files_to_upload"`
		}
		require.NoError(t, yaml.Unmarshal([]byte(out), &created), out)
		require.Equal(t, "success", created.Result)
		require.Equal(t, 2, created.FilesToUpload)
		require.NotContains(t, errOut, "\r", "no progress bar when standard error is not a terminal")
		id := strconv.FormatInt(created.ID, 10)

		code, out, errOut = b.kiln("", "show-artifact", id)
		require.Equal(t, 0, code, errOut)
		require.Contains(t, out, "category: debian:upload")
		require.Contains(t, out, "sub/b.bin:")
		require.Contains(t, out, "files_to_upload: []")
		require.Contains(t, out, "source: hello")

		dest := t.TempDir()
		code, out, errOut = b.kiln("", "download-artifact", id, "--target-directory", dest)
		require.Equal(t, 0, code, errOut)
		require.Contains(t, out, "- sub/b.bin")
		for p, c := range files {
			got, err := os.ReadFile(filepath.Join(dest, filepath.FromSlash(p)))
			require.NoError(t, err)
			require.Equal(t, c, got, p)
		}
		code, _, errOut = b.kiln("", "download-artifact", id, "--target-directory", dest, "--tarball")
		require.Equal(t, 0, code, errOut)
		tgz, err := os.ReadFile(filepath.Join(dest, "artifact-"+id+".tar.gz"))
		require.NoError(t, err)
		entries := readTarGz(t, tgz)
		require.Equal(t, files["sub/b.bin"], entries["sub/b.bin"])

		// Relations, and errors.
		code, out, errOut = b.kiln("", "create-artifact", "test", "--upload", filepath.Join(src, "a.txt"))
		require.Equal(t, 0, code, errOut)
		var second struct {
			ID int64 `yaml:"artifact_id"`
		}
		require.NoError(t, yaml.Unmarshal([]byte(out), &second))
		_, err = b.user.CreateRelation(b.ctx, second.ID, created.ID, schemas.RelationRelatesTo)
		require.NoError(t, err)
		code, out, errOut = b.kiln("", "show-artifact-relations", strconv.FormatInt(second.ID, 10))
		require.Equal(t, 0, code, errOut)
		require.Contains(t, out, "type: relates-to")
		code, out, _ = b.kiln("", "show-artifact-relations", id, "--reverse")
		require.Equal(t, 0, code)
		require.Contains(t, out, fmt.Sprintf("artifact: %d", second.ID))

		code, _, errOut = b.kiln("", "create-artifact", "test", "--upload", filepath.Join(src, "missing"))
		require.Equal(t, 3, code)
		require.Contains(t, errOut, "cannot upload")
		code, _, errOut = b.kiln("", "show-artifact", "999999")
		require.Equal(t, 3, code)
		require.Contains(t, errOut, "HTTP 404")
		code, _, errOut = b.kiln("", "download-artifact", "abc")
		require.Equal(t, 2, code)
		require.Contains(t, errOut, "invalid artifact id")
	})
}
