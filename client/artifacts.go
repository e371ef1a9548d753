package client

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-ci/kiln/schemas"
)

// Defaults of the upload options.
const (
	// DefaultChunkSize is the size of the chunks UploadFile sends.
	DefaultChunkSize = 16 << 20
	// DefaultUploadRetries is how many failed attempts in a row (a broken
	// connection, a 5xx answer) UploadFile resumes after before giving up.
	DefaultUploadRetries = 5
)

// ErrHashMismatch is returned (wrapped) by UploadFile when the server
// discarded the file twice because its content did not have the SHA-256
// the artifact declared: the local file changed after it was hashed, or
// it is being corrupted on the way.
var ErrHashMismatch = errors.New("the uploaded file does not have the declared sha256")

// UploadProgress reports how far an upload is.
type UploadProgress struct {
	// Path is the file's path in the artifact.
	Path string
	// Sent is how many bytes of the file the server has, or is being sent;
	// Size is the file's size.
	Sent, Size int64
	// Done is true once the server has the whole file.
	Done bool
}

type uploadConfig struct {
	chunkSize  int64
	retries    int
	retryDelay time.Duration
	progress   func(UploadProgress)
}

// UploadOption configures UploadFile, UploadFiles and UploadArtifact.
type UploadOption func(*uploadConfig)

// WithChunkSize sets the size of the chunks sent in one request (default
// DefaultChunkSize; at least 1).
func WithChunkSize(n int64) UploadOption {
	return func(c *uploadConfig) { c.chunkSize = max(n, 1) }
}

// WithUploadRetries sets how many failed attempts in a row are resumed
// before the upload gives up (default DefaultUploadRetries). Each resume
// first asks the server what it has.
func WithUploadRetries(n int) UploadOption {
	return func(c *uploadConfig) { c.retries = max(n, 0) }
}

// WithRetryDelay sets the first pause before a resume (default 200ms); it
// doubles on each failure in a row, up to 5s.
func WithRetryDelay(d time.Duration) UploadOption {
	return func(c *uploadConfig) { c.retryDelay = d }
}

// WithProgress calls f as an upload advances (from the goroutine of the
// upload).
func WithProgress(f func(UploadProgress)) UploadOption {
	return func(c *uploadConfig) { c.progress = f }
}

func newUploadConfig(opts []UploadOption) uploadConfig {
	c := uploadConfig{chunkSize: DefaultChunkSize, retries: DefaultUploadRetries, retryDelay: 200 * time.Millisecond,
		progress: func(UploadProgress) {}}
	for _, o := range opts {
		o(&c)
	}
	return c
}

func artifactPath(id int64, rest string) string {
	return "artifact/" + strconv.FormatInt(id, 10) + "/" + rest
}

// escapeArtifactPath escapes each name of a path in an artifact for a URL.
func escapeArtifactPath(p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return strings.Join(segs, "/")
}

func (c *Client) artifactFileURL(id int64, path string) string {
	return c.endpoint(artifactPath(id, "files/"+escapeArtifactPath(path)+"/"), nil)
}

// CreateArtifact creates an artifact and returns it: its files_to_upload
// lists the files whose content the server still needs (UploadFile).
func (c *Client) CreateArtifact(ctx context.Context, a schemas.ArtifactCreate) (schemas.Artifact, error) {
	if a.Files == nil {
		a.Files = map[string]schemas.ArtifactFileCreate{}
	}
	if len(a.Data) == 0 {
		a.Data = json.RawMessage("{}")
	}
	var out schemas.Artifact
	err := c.doJSON(ctx, call{method: http.MethodPost, url: c.endpoint("artifact/", nil), body: a,
		expect: []int{http.StatusCreated}}, &out)
	if err != nil {
		return schemas.Artifact{}, fmt.Errorf("create artifact %q: %w", a.Category, err)
	}
	return out, nil
}

// GetArtifact returns artifact id.
func (c *Client) GetArtifact(ctx context.Context, id int64) (schemas.Artifact, error) {
	var out schemas.Artifact
	err := c.doJSON(ctx, call{method: http.MethodGet, url: c.endpoint(artifactPath(id, ""), nil),
		expect: []int{http.StatusOK}}, &out)
	if err != nil {
		return schemas.Artifact{}, fmt.Errorf("get artifact %d: %w", id, err)
	}
	return out, nil
}

// DescribeFile reads a local file and returns its size and SHA-256, as an
// artifact's files entry, without holding it in memory.
func DescribeFile(localPath string) (schemas.ArtifactFileCreate, error) {
	f, err := os.Open(localPath)
	if err != nil {
		return schemas.ArtifactFileCreate{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return schemas.ArtifactFileCreate{}, err
	}
	if !fi.Mode().IsRegular() {
		return schemas.ArtifactFileCreate{}, fmt.Errorf("%s is not a regular file", localPath)
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return schemas.ArtifactFileCreate{}, fmt.Errorf("hash %s: %w", localPath, err)
	}
	return schemas.ArtifactFileCreate{Size: n, Type: schemas.FileTypeFile,
		Checksums: map[string]string{"sha256": hex.EncodeToString(h.Sum(nil))}}, nil
}

// ArtifactUpload describes an artifact made of local files, for
// UploadArtifact.
type ArtifactUpload struct {
	Category string
	// Workspace defaults to the server's.
	Workspace string
	// Data is marshalled to the artifact's JSON object (nil means {}).
	Data any
	// Files maps each path in the artifact to a local file.
	Files map[string]string
	// ContentTypes optionally maps paths in the artifact to media types.
	ContentTypes map[string]string
	// WorkRequest, for a worker, is the work request the artifact belongs
	// to (0: none).
	WorkRequest int64
	// Attempt, with WorkRequest, is the attempt that makes the artifact:
	// the server refuses it (409) when that attempt is not current.
	Attempt int
	// ExpireAt, when set, is when the artifact may be deleted.
	ExpireAt *time.Time
}

// UploadArtifact hashes the local files, creates the artifact and uploads
// every file the server does not have yet, resuming after interruptions
// (see UploadFile). It returns the artifact as the server has it at the
// end. If it fails part way, UploadFiles with the artifact's id finishes
// the job later.
func (c *Client) UploadArtifact(ctx context.Context, a ArtifactUpload, opts ...UploadOption) (schemas.Artifact, error) {
	req := schemas.ArtifactCreate{Category: a.Category, Workspace: a.Workspace, Files: map[string]schemas.ArtifactFileCreate{},
		ExpireAt: a.ExpireAt}
	if a.Data != nil {
		b, err := json.Marshal(a.Data)
		if err != nil {
			return schemas.Artifact{}, fmt.Errorf("artifact data: %w", err)
		}
		req.Data = b
	}
	if a.WorkRequest != 0 {
		req.WorkRequest = &a.WorkRequest
		if a.Attempt != 0 {
			req.WorkRequestAttempt = &a.Attempt
		}
	}
	for p, local := range a.Files {
		if err := schemas.ValidateArtifactPath(p); err != nil {
			return schemas.Artifact{}, fmt.Errorf("artifact path %q: %w", p, err)
		}
		fr, err := DescribeFile(local)
		if err != nil {
			return schemas.Artifact{}, err
		}
		if ct, ok := a.ContentTypes[p]; ok {
			fr.ContentType = &ct
		}
		req.Files[p] = fr
	}
	created, err := c.CreateArtifact(ctx, req)
	if err != nil {
		return schemas.Artifact{}, err
	}
	return c.UploadFiles(ctx, created.ID, a.Files, opts...)
}

// UploadFiles uploads the files of artifact id that the server still needs,
// from files (path in the artifact -> local file), and returns the artifact
// once it is complete. Files the server already has are skipped, and each
// upload resumes where the server stands, so calling it again after a
// failure (or a restart) continues the job.
func (c *Client) UploadFiles(ctx context.Context, id int64, files map[string]string, opts ...UploadOption) (schemas.Artifact, error) {
	a, err := c.GetArtifact(ctx, id)
	if err != nil {
		return schemas.Artifact{}, err
	}
	for _, p := range a.FilesToUpload {
		if _, ok := files[p]; !ok {
			return a, fmt.Errorf("artifact %d needs %q, which is not among the local files", id, p)
		}
	}
	for _, p := range a.FilesToUpload {
		if err := c.UploadFile(ctx, id, p, files[p], opts...); err != nil {
			return a, err
		}
	}
	if len(a.FilesToUpload) == 0 {
		return a, nil
	}
	return c.GetArtifact(ctx, id)
}

// UploadFile uploads local file localPath as path of artifact id with
// debusine's protocol, streaming it from disk in chunks. It first asks the
// server what it has ("Content-Range: bytes */SIZE"), then sends the rest
// chunk by chunk ("Content-Range: bytes FIRST-LAST/SIZE"), continuing from
// the server's "Range: bytes=0-RECEIVED" answer. A broken connection or a
// 5xx answer is resumed the same way (WithUploadRetries times in a row). If
// the server discards the complete file because of its hash (409), the
// upload starts again once; a second mismatch is ErrHashMismatch.
func (c *Client) UploadFile(ctx context.Context, id int64, path, localPath string, opts ...UploadOption) error {
	cfg := newUploadConfig(opts)
	f, err := os.Open(localPath)
	if err != nil {
		return fmt.Errorf("upload %q to artifact %d: %w", path, id, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("upload %q to artifact %d: %w", path, id, err)
	}
	u := &upload{c: c, cfg: cfg, f: f, size: fi.Size(), path: path, url: c.artifactFileURL(id, path)}
	if err := u.run(ctx); err != nil {
		return fmt.Errorf("upload %q to artifact %d: %w", path, id, err)
	}
	return nil
}

type upload struct {
	c    *Client
	cfg  uploadConfig
	f    *os.File
	size int64
	path string
	url  string
}

// chunkAnswer is what the server said about a status query or a chunk.
type chunkAnswer struct {
	complete bool
	// received is the server's Range reply, -1 when there was none.
	received int64
}

func (u *upload) run(ctx context.Context) error {
	failures, mismatches := 0, 0
	delay := u.cfg.retryDelay
	retry := func(err error) error {
		if !IsTransient(err) || ctx.Err() != nil || failures >= u.cfg.retries {
			return err
		}
		failures++
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
		return nil
	}
	for {
		ans, err := u.send(ctx, -1, -1)
		if err != nil {
			if err := retry(err); err != nil {
				return err
			}
			continue
		}
		received := ans.received
		for !ans.complete {
			if received < 0 || received > u.size {
				return fmt.Errorf("the server answered an unusable Range (received %d of %d bytes)", received, u.size)
			}
			u.cfg.progress(UploadProgress{Path: u.path, Sent: received, Size: u.size})
			last := min(received+u.cfg.chunkSize, u.size) - 1
			if u.size == 0 {
				last = -1
			}
			ans, err = u.send(ctx, received, last)
			if err != nil {
				break
			}
			if !ans.complete && ans.received <= received && ans.received >= 0 && last >= received {
				// No progress without an error: ask again rather than loop.
				err = &transportError{err: fmt.Errorf("the server kept %d bytes after a chunk from %d", ans.received, received)}
				break
			}
			if ans.received > received {
				failures, delay = 0, u.cfg.retryDelay
			}
			received = ans.received
		}
		switch {
		case err == nil:
			u.cfg.progress(UploadProgress{Path: u.path, Sent: u.size, Size: u.size, Done: true})
			return nil
		case StatusCode(err) == http.StatusConflict && problemCode(err) != "upload-conflict":
			mismatches++
			if mismatches > 1 {
				return fmt.Errorf("%w: %w", ErrHashMismatch, err)
			}
		case StatusCode(err) == http.StatusBadRequest && problemCode(err) == "bad-range",
			problemCode(err) == "upload-interrupted", problemCode(err) == "upload-conflict":
			// The server said where it stands; ask again and continue.
			if err := retry(&transportError{err: err}); err != nil {
				return err
			}
		default:
			if err := retry(err); err != nil {
				return err
			}
		}
	}
}

// send performs a status query (first < 0) or sends bytes first..last of
// the file (last < 0 with first 0: an empty file).
func (u *upload) send(ctx context.Context, first, last int64) (chunkAnswer, error) {
	cl := call{method: http.MethodPut, url: u.url, expect: []int{http.StatusOK, http.StatusCreated, http.StatusPartialContent}}
	req, err := u.c.request(ctx, cl)
	if err != nil {
		return chunkAnswer{}, err
	}
	switch {
	case first < 0:
		req.Header.Set("Content-Range", fmt.Sprintf("bytes */%d", u.size))
	case last >= first:
		n := last - first + 1
		req.Header.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, u.size))
		req.Header.Set("Content-Type", "application/octet-stream")
		req.ContentLength = n
		req.GetBody = func() (io.ReadCloser, error) {
			return io.NopCloser(io.NewSectionReader(u.f, first, n)), nil
		}
		req.Body = io.NopCloser(&progressReader{r: io.NewSectionReader(u.f, first, n), u: u, at: first})
	default:
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Body, req.ContentLength = http.NoBody, 0
	}
	resp, err := u.c.http.Do(req)
	if err != nil {
		return chunkAnswer{}, &transportError{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return chunkAnswer{}, &transportError{err: fmt.Errorf("read response of PUT %s: %w", u.url, err)}
	}
	if err := responseError(cl, resp, b); err != nil {
		return chunkAnswer{}, err
	}
	ans := chunkAnswer{received: -1, complete: resp.StatusCode == http.StatusCreated}
	if first < 0 && resp.StatusCode == http.StatusOK {
		ans.complete = true
	}
	if !ans.complete {
		r, ok := parseReceivedRange(resp.Header.Get("Range"))
		if !ok {
			return chunkAnswer{}, fmt.Errorf("PUT %s: HTTP %d without a usable Range header (%q)", u.url, resp.StatusCode, resp.Header.Get("Range"))
		}
		ans.received = r
	}
	return ans, nil
}

// progressReader reports the bytes of a chunk as the transport reads them.
type progressReader struct {
	r  io.Reader
	u  *upload
	at int64
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.at += int64(n)
		p.u.cfg.progress(UploadProgress{Path: p.u.path, Sent: p.at, Size: p.u.size})
	}
	return n, err
}

var receivedRange = regexp.MustCompile(`^bytes=0-([0-9]{1,19})$`)

// parseReceivedRange reads debusine's "Range: bytes=0-RECEIVED" answer.
func parseReceivedRange(v string) (int64, bool) {
	m := receivedRange.FindStringSubmatch(strings.TrimSpace(v))
	if m == nil {
		return 0, false
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	return n, err == nil
}

func problemCode(err error) string {
	var pe *ProblemError
	if errors.As(err, &pe) {
		return pe.Problem.Code
	}
	return ""
}

// ByteRange selects bytes First to Last (inclusive) of a file; Last < 0
// means to the end.
type ByteRange struct {
	First, Last int64
}

func (r ByteRange) header() string {
	if r.Last < 0 {
		return fmt.Sprintf("bytes=%d-", r.First)
	}
	return fmt.Sprintf("bytes=%d-%d", r.First, r.Last)
}

// DownloadFile writes the file at path of artifact id to w: the whole file,
// or only rng when it is not nil (an HTTP Range request). It returns the
// number of bytes written.
func (c *Client) DownloadFile(ctx context.Context, id int64, path string, w io.Writer, rng *ByteRange) (int64, error) {
	expect := []int{http.StatusOK}
	if rng != nil {
		expect = []int{http.StatusPartialContent}
	}
	cl := call{method: http.MethodGet, url: c.artifactFileURL(id, path), expect: expect}
	n, err := c.download(ctx, cl, w, func(req *http.Request) {
		if rng != nil {
			req.Header.Set("Range", rng.header())
		}
	})
	if err != nil {
		return n, fmt.Errorf("download %q of artifact %d: %w", path, id, err)
	}
	return n, nil
}

// DownloadTarball writes the whole artifact id to w as a .tar.gz archive.
func (c *Client) DownloadTarball(ctx context.Context, id int64, w io.Writer) (int64, error) {
	q := url.Values{"archive": {"tar.gz"}}
	cl := call{method: http.MethodGet, url: c.endpoint(artifactPath(id, "download/"), q), expect: []int{http.StatusOK}}
	n, err := c.download(ctx, cl, w, nil)
	if err != nil {
		return n, fmt.Errorf("download artifact %d as tar.gz: %w", id, err)
	}
	return n, nil
}

// download streams the body of a successful answer to cl into w.
func (c *Client) download(ctx context.Context, cl call, w io.Writer, edit func(*http.Request)) (int64, error) {
	req, err := c.request(ctx, cl)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept", "*/*")
	if edit != nil {
		edit(req)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, &transportError{err: err}
	}
	defer resp.Body.Close()
	if isProblem(resp.Header.Get("Content-Type")) || !slices.Contains(cl.expect, resp.StatusCode) {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err := responseError(cl, resp, b); err != nil {
			return 0, err
		}
		return 0, &HTTPError{StatusCode: resp.StatusCode, Body: string(b), Method: cl.method, URL: cl.url}
	}
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, &transportError{err: fmt.Errorf("read response of %s %s: %w", cl.method, cl.url, err)}
	}
	return n, nil
}

// DownloadArtifact downloads every file of artifact id into dir, at its
// path in the artifact, and checks each file's size and SHA-256. A file is
// written to a temporary file next to its destination and renamed into
// place once verified. Paths that could leave dir are refused, whatever the
// server says.
func (c *Client) DownloadArtifact(ctx context.Context, id int64, dir string) (schemas.Artifact, error) {
	a, err := c.GetArtifact(ctx, id)
	if err != nil {
		return a, err
	}
	if len(a.FilesToUpload) > 0 {
		return a, fmt.Errorf("artifact %d is not complete: files not uploaded yet: %s", id, strings.Join(a.FilesToUpload, ", "))
	}
	root, err := filepath.Abs(dir)
	if err != nil {
		return a, err
	}
	paths := make([]string, 0, len(a.Files))
	for p := range a.Files {
		if err := schemas.ValidateArtifactPath(p); err != nil {
			return a, fmt.Errorf("artifact %d: refusing file path %q: %w", id, p, err)
		}
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		dest := filepath.Join(root, filepath.FromSlash(p))
		if !strings.HasPrefix(dest, root+string(filepath.Separator)) {
			return a, fmt.Errorf("artifact %d: refusing file path %q outside %s", id, p, root)
		}
		if err := c.downloadVerified(ctx, id, p, a.Files[p], dest); err != nil {
			return a, err
		}
	}
	return a, nil
}

func (c *Client) downloadVerified(ctx context.Context, id int64, p string, f schemas.ArtifactFile, dest string) error {
	if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(dest), ".kiln-download-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	n, err := c.DownloadFile(ctx, id, p, io.MultiWriter(tmp, h), nil)
	if err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != f.Size || got != f.Checksums["sha256"] {
		return fmt.Errorf("download %q of artifact %d: got %d bytes with sha256 %s, want %d bytes with sha256 %s",
			p, id, n, got, f.Size, f.Checksums["sha256"])
	}
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dest)
}

// CreateRelation relates artifact to target with a relation of typ
// (debusine's extends, relates-to or built-using). An identical relation
// that already exists is returned as it is.
func (c *Client) CreateRelation(ctx context.Context, artifact, target int64, typ schemas.RelationType) (schemas.ArtifactRelation, error) {
	var out schemas.ArtifactRelation
	err := c.doJSON(ctx, call{method: http.MethodPost, url: c.endpoint("artifact-relation/", nil),
		body:   schemas.ArtifactRelationCreate{Artifact: artifact, Target: target, Type: typ},
		expect: []int{http.StatusOK, http.StatusCreated}}, &out)
	if err != nil {
		return out, fmt.Errorf("relate artifact %d (%s) to %d: %w", artifact, typ, target, err)
	}
	return out, nil
}

// RelationFilter selects relations in ListRelations: those from Artifact,
// those to Target, or (both set) those between the two.
type RelationFilter struct {
	Artifact, Target int64
}

// ListRelations returns the relations that f selects.
func (c *Client) ListRelations(ctx context.Context, f RelationFilter) ([]schemas.ArtifactRelation, error) {
	q := url.Values{}
	if f.Artifact != 0 {
		q.Set("artifact", strconv.FormatInt(f.Artifact, 10))
	}
	if f.Target != 0 {
		q.Set("target_artifact", strconv.FormatInt(f.Target, 10))
	}
	var out []schemas.ArtifactRelation
	err := c.doJSON(ctx, call{method: http.MethodGet, url: c.endpoint("artifact-relation/", q), expect: []int{http.StatusOK}}, &out)
	if err != nil {
		return nil, fmt.Errorf("list artifact relations: %w", err)
	}
	return out, nil
}

// DeleteRelation deletes relation id.
func (c *Client) DeleteRelation(ctx context.Context, id int64) error {
	err := c.doEmpty(ctx, call{method: http.MethodDelete, url: c.endpoint("artifact-relation/"+strconv.FormatInt(id, 10)+"/", nil),
		expect: []int{http.StatusNoContent}})
	if err != nil {
		return fmt.Errorf("delete artifact relation %d: %w", id, err)
	}
	return nil
}
