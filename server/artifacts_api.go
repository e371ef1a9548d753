package server

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/artifacts"
	"github.com/kiln-ci/kiln/server/store"
)

// uploadIdleTimeout is how long an upload may send nothing before the
// server gives up on its body (what arrived is kept).
const uploadIdleTimeout = 2 * time.Minute

// emptySHA256 is the SHA-256 of the empty file.
const emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// startArtifacts opens the artifact file store and starts its garbage
// collector, which stops with ctx.
func (s *Server) startArtifacts(ctx context.Context) error {
	m, err := artifacts.New(s.store, filepath.Join(s.cfg.DataDir, "artifacts"), artifacts.Options{
		Logger: s.log.With().Str("component", "artifacts").Logger(),
	})
	if err != nil {
		return err
	}
	s.artifacts = m
	s.goRun(func() { m.RunGC(ctx, s.cfg.ArtifactGCInterval) })
	return nil
}

// artifactRoutes registers the artifact endpoints on the /api/1.0 router.
// Every one takes a user token or the token of an enabled worker.
func (s *Server) artifactRoutes(r chi.Router) {
	r.Route("/artifact/", func(r chi.Router) {
		r.Use(artifactPaths, s.requireUserOrWorker)
		r.Post("/", s.createArtifact)
		r.Get("/{id}/", s.getArtifact)
		r.Put("/{id}/files/{path}/", s.uploadArtifactFile)
		r.Get("/{id}/files/{path}/", s.downloadArtifactFile)
		r.Get("/{id}/download/", s.downloadArtifactTarball)
	})
	r.Group(func(r chi.Router) {
		r.Use(s.requireUserOrWorker)
		r.Get("/artifact-relation/", s.listArtifactRelations)
		r.Post("/artifact-relation/", s.createArtifactRelation)
		r.Delete("/artifact-relation/{id}/", s.deleteArtifactRelation)
	})
}

type artifactPathKey struct{}

var (
	slashlessArtifact = regexp.MustCompile(`^/[0-9]+$`)
	artifactFileRoute = regexp.MustCompile(`^/([0-9]+)/files/.+/$`)
	artifactFileURL   = regexp.MustCompile(`/artifact/[0-9]+/files/(.+)/$`)
)

// artifactPaths adapts two of debusine's paths to the router: GET
// artifact/ID without its trailing slash (which the debusine client uses to
// download), and file paths with slashes in files/PATH/, which it routes as
// one escaped segment after keeping the real path for the handler.
func artifactPaths(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rctx := chi.RouteContext(r.Context())
		switch rp := rctx.RoutePath; {
		case slashlessArtifact.MatchString(rp):
			rctx.RoutePath = rp + "/"
		case artifactFileRoute.MatchString(rp):
			m := artifactFileURL.FindStringSubmatch(r.URL.EscapedPath())
			if m == nil {
				break
			}
			p, err := url.PathUnescape(m[1])
			if err != nil {
				problem(w, http.StatusNotFound, "Error", "the file path in the URL is not validly escaped")
				return
			}
			id := artifactFileRoute.FindStringSubmatch(rp)[1]
			rctx.RoutePath = "/" + id + "/files/" + url.PathEscape(p) + "/"
			r = r.WithContext(context.WithValue(r.Context(), artifactPathKey{}, p))
		}
		next.ServeHTTP(w, r)
	})
}

// artifactFilePath is the path in the artifact that a files/PATH/ URL names.
func artifactFilePath(r *http.Request) string {
	if p, ok := r.Context().Value(artifactPathKey{}).(string); ok {
		return p
	}
	p, err := url.PathUnescape(chi.URLParam(r, "path"))
	if err != nil {
		return ""
	}
	return p
}

// escapeArtifactPath escapes each name of a path in an artifact for a URL.
func escapeArtifactPath(p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return strings.Join(segs, "/")
}

// jsonPointerToken escapes one JSON pointer token (RFC 6901).
func jsonPointerToken(s string) string {
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(s)
}

func artifactNotFound(w http.ResponseWriter) {
	problem(w, http.StatusNotFound, "Error", "No Artifact matches the given query.")
}

// loadArtifact reads the artifact of the {id} URL parameter with its files,
// answering 404 itself.
func (s *Server) loadArtifact(w http.ResponseWriter, r *http.Request) (store.Artifact, bool) {
	return s.readArtifact(w, r, s.store.Artifact)
}

func (s *Server) readArtifact(w http.ResponseWriter, r *http.Request,
	read func(context.Context, int64) (store.Artifact, error)) (store.Artifact, bool) {
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil || id <= 0 {
		artifactNotFound(w)
		return store.Artifact{}, false
	}
	a, err := read(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		artifactNotFound(w)
		return store.Artifact{}, false
	}
	if err != nil {
		s.internal(w, err)
		return store.Artifact{}, false
	}
	return a, true
}

// loadArtifactFile reads the artifact (without its other files) and the
// file of a files/PATH/ URL.
func (s *Server) loadArtifactFile(w http.ResponseWriter, r *http.Request) (store.Artifact, store.ArtifactFile, bool) {
	a, ok := s.readArtifact(w, r, s.store.ArtifactWithoutFiles)
	if !ok {
		return a, store.ArtifactFile{}, false
	}
	p := artifactFilePath(r)
	f, err := s.store.ArtifactFile(r.Context(), a.ID, p)
	if err == nil {
		return a, f, true
	}
	if !errors.Is(err, store.ErrNotFound) {
		s.internal(w, err)
		return a, store.ArtifactFile{}, false
	}
	writeProblem(w, schemas.Problem{Status: http.StatusNotFound, Title: fmt.Sprintf("No file_path %q for artifact %d", p, a.ID),
		Detail: "the artifact has no file with this path", Code: "no-such-file"})
	return a, store.ArtifactFile{}, false
}

// mayWriteArtifact reports whether the caller may upload to an artifact (or
// delete its relations): the user who created it, an admin, or the worker
// that created it.
func mayWriteArtifact(r *http.Request, a store.Artifact) bool {
	if u := userFrom(r.Context()); u != nil {
		return u.IsAdmin || (a.CreatedBy.Valid && a.CreatedBy.Int64 == u.ID)
	}
	wk := workerFrom(r.Context())
	return wk != nil && a.CreatedByWorker.Valid && a.CreatedByWorker.Int64 == wk.ID
}

// artifactWire is the JSON shape of a, with absolute URLs on the host the
// request came to (or --public-url).
func (s *Server) artifactWire(r *http.Request, a store.Artifact) schemas.Artifact {
	base := s.baseURL(r) + "/api/1.0/artifact/" + strconv.FormatInt(a.ID, 10) + "/"
	out := schemas.Artifact{
		ID:               a.ID,
		URL:              fmt.Sprintf("/%s/%s/artifact/%d/", s.cfg.Scope, url.PathEscape(a.Workspace), a.ID),
		Scope:            s.cfg.Scope,
		Workspace:        a.Workspace,
		Category:         a.Category,
		Data:             json.RawMessage(a.Data),
		CreatedAt:        a.CreatedAt.UTC(),
		DownloadTarGzURL: base + "download/?archive=tar.gz",
		FilesToUpload:    []string{},
		Files:            map[string]schemas.ArtifactFile{},
	}
	if a.ExpireAt.Valid {
		t := a.ExpireAt.Time.UTC()
		out.ExpireAt = &t
	}
	if a.WorkRequestID.Valid {
		out.WorkRequest = &a.WorkRequestID.Int64
	}
	if a.CreatedBy.Valid {
		out.CreatedBy = &a.CreatedBy.Int64
	}
	for _, f := range a.Files {
		wf := schemas.ArtifactFile{
			Size:      f.Size,
			Checksums: map[string]string{"sha256": f.SHA256},
			Type:      schemas.FileTypeFile,
			URL:       base + "files/" + escapeArtifactPath(f.Path) + "/",
			Complete:  f.Complete,
		}
		if f.ContentType.Valid {
			wf.ContentType = &f.ContentType.String
		}
		out.Files[f.Path] = wf
		if !f.Complete {
			out.FilesToUpload = append(out.FilesToUpload, f.Path)
		}
	}
	return out
}

// fileRequestFields are the JSON names of schemas.ArtifactFileCreate.
var fileRequestFields = map[string]bool{"size": true, "checksums": true, "type": true, "content_type": true}

func isHexSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func (s *Server) createArtifact(w http.ResponseWriter, r *http.Request) {
	const title = "Cannot deserialize artifact"
	var raw bytes.Buffer
	r.Body = io.NopCloser(io.TeeReader(r.Body, &raw))
	var in schemas.ArtifactCreate
	if !s.decodeBody(w, r, &in, title) {
		return
	}
	ve := map[string][]string{}
	add := func(ptr, msg string) { ve[ptr] = append(ve[ptr], msg) }

	// decodeBody rejects unknown fields at the top; the files' are checked
	// here.
	var shape struct {
		Files map[string]map[string]json.RawMessage `json:"files"`
	}
	_ = json.Unmarshal(raw.Bytes(), &shape)
	for p, fields := range shape.Files {
		for k := range fields {
			if !fileRequestFields[k] {
				add("/files/"+jsonPointerToken(p)+"/"+jsonPointerToken(k), "unknown field")
			}
		}
	}

	switch category := strings.TrimSpace(in.Category); {
	case category == "":
		add("/category", "This field is required.")
	case len(in.Category) > 255:
		add("/category", "Ensure this field has no more than 255 characters.")
	}
	data := strings.TrimSpace(string(in.Data))
	switch {
	case data == "" || data == "null":
		data = "{}"
	case data[0] != '{':
		add("/data", "must be a JSON object")
	default:
		var buf bytes.Buffer
		if json.Compact(&buf, []byte(data)) == nil {
			data = buf.String()
		}
	}

	var tooLarge []string
	files := make([]store.NewArtifactFile, 0, len(in.Files))
	for p, f := range in.Files {
		ptr := "/files/" + jsonPointerToken(p)
		if err := schemas.ValidateArtifactPath(p); err != nil {
			add(ptr, "invalid path: "+err.Error())
		}
		if f.Type != schemas.FileTypeFile {
			add(ptr+"/type", `must be "file"`)
		}
		if f.Size < 0 {
			add(ptr+"/size", "Ensure this value is greater than or equal to 0.")
		} else if f.Size > s.cfg.ArtifactMaxFileBytes {
			tooLarge = append(tooLarge, p)
		}
		sha, ok := f.Checksums["sha256"]
		sha = strings.ToLower(sha)
		switch {
		case !ok:
			add(ptr+"/checksums/sha256", "This field is required.")
		case !isHexSHA256(sha):
			add(ptr+"/checksums/sha256", "must be 64 hexadecimal digits")
		case f.Size == 0 && sha != emptySHA256:
			add(ptr+"/checksums/sha256", "an empty file's sha256 is "+emptySHA256)
		}
		for k := range f.Checksums {
			if k != "sha256" {
				add(ptr+"/checksums/"+jsonPointerToken(k), "unsupported checksum: only sha256 is accepted")
			}
		}
		nf := store.NewArtifactFile{Path: p, SHA256: sha, Size: f.Size}
		if f.ContentType != nil {
			ct := *f.ContentType
			if len(ct) > 255 || strings.ContainsFunc(ct, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				add(ptr+"/content_type", "must be a media type of at most 255 characters")
			}
			nf.ContentType.String, nf.ContentType.Valid = ct, true
		}
		files = append(files, nf)
	}
	// A path cannot also be a directory of another path.
	for p := range in.Files {
		for i := strings.IndexByte(p, '/'); i >= 0; i = nextSlash(p, i) {
			if _, ok := in.Files[p[:i]]; ok {
				add("/files/"+jsonPointerToken(p), "conflicts with the file "+strconv.Quote(p[:i]))
			}
		}
	}
	if len(ve) > 0 {
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: title,
			Detail: summarizeValidation(ve), ValidationErrors: ve})
		return
	}
	if len(tooLarge) > 0 {
		sort.Strings(tooLarge)
		writeProblem(w, schemas.Problem{Status: http.StatusRequestEntityTooLarge, Title: "File too large", Code: "file-too-large",
			Detail: fmt.Sprintf("larger than the limit of %d bytes (--artifact-max-file-bytes): %s",
				s.cfg.ArtifactMaxFileBytes, strings.Join(tooLarge, ", "))})
		return
	}
	ws := in.Workspace
	if ws == "" {
		ws = s.cfg.Workspace
	}
	if ws != s.cfg.Workspace {
		problem(w, http.StatusNotFound, "Workspace not found", fmt.Sprintf("Workspace %s not found in scope %s", ws, s.cfg.Scope))
		return
	}

	n := store.NewArtifact{Category: in.Category, Workspace: ws, Data: data, ExpireAt: in.ExpireAt, Files: files}
	u, wk := userFrom(r.Context()), workerFrom(r.Context())
	switch {
	case in.WorkRequest != nil && wk == nil:
		writeProblem(w, schemas.Problem{Status: http.StatusForbidden, Code: "worker-token-required",
			Title: "work_request field can only be used by a request with a token from a Worker"})
		return
	case in.WorkRequest != nil:
		wr, err := s.store.WorkRequest(r.Context(), *in.WorkRequest)
		if errors.Is(err, store.ErrNotFound) {
			writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: fmt.Sprintf("WorkRequest %d does not exist", *in.WorkRequest),
				ValidationErrors: map[string][]string{"/work_request": {"no such work request"}}})
			return
		}
		if err != nil {
			s.internal(w, err)
			return
		}
		if !wr.WorkerID.Valid || wr.WorkerID.Int64 != wk.ID {
			writeProblem(w, schemas.Problem{Status: http.StatusForbidden, Code: "not-assigned",
				Title:  fmt.Sprintf("Work request %d is not assigned to this worker", wr.ID),
				Detail: "a worker may only create artifacts for the work requests it runs"})
			return
		}
		if a := in.WorkRequestAttempt; a != nil && *a != wr.Attempt {
			writeProblem(w, schemas.Problem{Status: http.StatusConflict, Code: "stale-attempt",
				Title:  fmt.Sprintf("Attempt %d of work request %d is not its current attempt (%d)", *a, wr.ID, wr.Attempt),
				Detail: "the server took the request back from this run; its artifacts are not kept"})
			return
		}
		n.WorkRequestID, n.CreatedByWorker = wr.ID, wk.ID
	case u == nil:
		writeProblem(w, schemas.Problem{Status: http.StatusForbidden, Code: "user-token-required",
			Title: "If work_request field is empty the WorkRequest must be created using a Token associated to a user"})
		return
	default:
		n.CreatedBy = u.ID
	}

	a, err := s.store.CreateArtifact(r.Context(), n)
	if err != nil {
		s.internal(w, err)
		return
	}
	ev := s.log.Info().Int64("artifact", a.ID).Str("category", a.Category).Int("files", len(a.Files))
	if n.WorkRequestID != 0 {
		ev = ev.Int64("work_request", n.WorkRequestID)
	}
	ev.Msg("artifact created")
	writeJSON(w, http.StatusCreated, s.artifactWire(r, a))
}

func nextSlash(p string, i int) int {
	j := strings.IndexByte(p[i+1:], '/')
	if j < 0 {
		return -1
	}
	return i + 1 + j
}

// summarizeValidation is the detail of a validation problem: its messages,
// sorted by pointer.
func summarizeValidation(ve map[string][]string) string {
	keys := make([]string, 0, len(ve))
	for k := range ve {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, k+": "+strings.Join(ve[k], "; "))
	}
	return strings.Join(parts, "; ")
}

func (s *Server) getArtifact(w http.ResponseWriter, r *http.Request) {
	a, ok := s.loadArtifact(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, s.artifactWire(r, a))
}

// idleReader gives up on a request body that sends nothing for d.
type idleReader struct {
	rc *http.ResponseController
	r  io.Reader
	d  time.Duration
}

func (i idleReader) Read(p []byte) (int, error) {
	_ = i.rc.SetReadDeadline(time.Now().Add(i.d))
	return i.r.Read(p)
}

// uploadArtifactFile is debusine's upload protocol. With "Content-Range:
// bytes */SIZE" it reports what the server holds: 200 when the file is
// complete, else 206 with "Range: bytes=0-RECEIVED". With data ("bytes
// FIRST-LAST/SIZE", or no Content-Range for the whole file from byte 0) it
// answers 201 when the file is complete and verified, 200 with the Range
// header while it is not, and 409 when the complete file has another hash
// (the upload is discarded; start again).
func (s *Server) uploadArtifactFile(w http.ResponseWriter, r *http.Request) {
	a, f, ok := s.loadArtifactFile(w, r)
	if !ok {
		return
	}
	if !mayWriteArtifact(r, a) {
		writeProblem(w, schemas.Problem{Status: http.StatusForbidden, Code: "not-artifact-creator",
			Title:  fmt.Sprintf("You are not permitted to upload to artifact %d", a.ID),
			Detail: "only the user or worker that created an artifact (and admins) may upload its files"})
		return
	}
	var cr *artifacts.ContentRange
	if h := r.Header.Get("Content-Range"); h != "" {
		c, err := artifacts.ParseContentRange(h)
		if err != nil {
			writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: "Invalid Content-Range header",
				Detail: err.Error(), Code: "bad-content-range"})
			return
		}
		if c.Size >= 0 && c.Size != f.Size {
			writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Code: "bad-content-range",
				Title:  fmt.Sprintf("Invalid file size in Content-Range header. Expected %d received %d", f.Size, c.Size),
				Detail: "the size in Content-Range must be the file's size as declared when the artifact was created"})
			return
		}
		cr = &c
	}
	ctx := r.Context()
	if cr != nil && cr.Query {
		p, err := s.artifacts.Status(ctx, f.ID)
		switch {
		case err != nil:
			s.artifactUploadError(w, a, f, err)
		case p.Complete:
			w.WriteHeader(http.StatusOK)
		default:
			w.Header().Set("Range", artifacts.ReceivedRange(p.Received))
			w.WriteHeader(http.StatusPartialContent)
		}
		return
	}
	first, last := int64(0), int64(-1)
	if cr != nil {
		first, last = cr.First, cr.Last
	}
	rc := http.NewResponseController(w)
	p, err := s.artifacts.Write(ctx, f.ID, first, last, idleReader{rc: rc, r: r.Body, d: uploadIdleTimeout})
	_ = rc.SetReadDeadline(time.Time{})
	switch {
	case err != nil:
		s.artifactUploadError(w, a, f, err)
	case p.Complete:
		s.log.Info().Int64("artifact", a.ID).Str("path", f.Path).Int64("size", f.Size).Msg("artifact file complete")
		w.WriteHeader(http.StatusCreated)
	default:
		w.Header().Set("Range", artifacts.ReceivedRange(p.Received))
		w.WriteHeader(http.StatusOK)
	}
}

// artifactUploadError answers an upload that failed.
func (s *Server) artifactUploadError(w http.ResponseWriter, a store.Artifact, f store.ArtifactFile, err error) {
	var rangeErr *artifacts.RangeError
	var hashErr *artifacts.HashError
	var intErr *artifacts.InterruptedError
	switch {
	case errors.As(err, &rangeErr):
		w.Header().Set("Range", artifacts.ReceivedRange(rangeErr.Received))
		status, code := http.StatusBadRequest, "bad-range"
		if rangeErr.TooLarge {
			status, code = http.StatusRequestEntityTooLarge, "past-end-of-file"
		}
		writeProblem(w, schemas.Problem{Status: status, Title: "Cannot take this chunk", Detail: rangeErr.Reason, Code: code})
	case errors.As(err, &hashErr):
		s.log.Warn().Int64("artifact", a.ID).Str("path", f.Path).Str("expected", hashErr.Expected).Str("got", hashErr.Got).
			Msg("artifact upload discarded: hash mismatch")
		writeProblem(w, schemas.Problem{Status: http.StatusConflict, Title: hashErr.Error(), Code: "hash-mismatch",
			Detail: "the upload was discarded; upload the file again from its first byte"})
	case errors.As(err, &intErr):
		w.Header().Set("Range", artifacts.ReceivedRange(intErr.Received))
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: "Upload interrupted", Code: "upload-interrupted",
			Detail: fmt.Sprintf("the body could not be read to its end; the server keeps the first %d bytes", intErr.Received)})
	case errors.Is(err, store.ErrNotFound):
		artifactNotFound(w)
	case errors.Is(err, store.ErrConflict):
		writeProblem(w, schemas.Problem{Status: http.StatusConflict, Title: "Concurrent upload", Code: "upload-conflict",
			Detail: "another upload of this file moved on meanwhile; ask for the status (Content-Range: bytes */SIZE) and continue"})
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		problem(w, http.StatusServiceUnavailable, "Upload not taken", "the request ended while waiting for another upload of this file")
	default:
		s.internal(w, err)
	}
}

// servedContentTypes are the media types served as recorded; other text
// types are served as text/plain and anything else as
// application/octet-stream, so that an artifact cannot make a browser run
// it.
var servedContentTypes = map[string]bool{
	"application/octet-stream": true, "application/json": true, "application/gzip": true,
	"application/x-gzip": true, "application/x-xz": true, "application/x-bzip2": true,
	"application/zstd": true, "application/x-tar": true, "application/zip": true,
	"application/vnd.debian.binary-package": true, "application/x-debian-package": true,
	"application/pgp-signature": true, "image/png": true, "image/jpeg": true,
}

func safeContentType(ct store.ArtifactFile) string {
	if !ct.ContentType.Valid {
		return "application/octet-stream"
	}
	mt, params, err := mime.ParseMediaType(ct.ContentType.String)
	switch {
	case err != nil:
		return "application/octet-stream"
	case strings.HasPrefix(mt, "text/"):
		if cs := params["charset"]; cs != "" {
			return mime.FormatMediaType("text/plain", map[string]string{"charset": cs})
		}
		return "text/plain"
	case servedContentTypes[mt]:
		return mt
	}
	return "application/octet-stream"
}

// downloadArtifactFile serves one complete file, with HTTP Range requests
// (http.ServeContent: single and multiple ranges, If-Range on the ETag,
// which is the file's SHA-256).
func (s *Server) downloadArtifactFile(w http.ResponseWriter, r *http.Request) {
	a, f, ok := s.loadArtifactFile(w, r)
	if !ok {
		return
	}
	if !f.Complete {
		writeProblem(w, schemas.Problem{Status: http.StatusConflict, Code: "file-incomplete",
			Title:  fmt.Sprintf("File %q of artifact %d is not uploaded yet", f.Path, a.ID),
			Detail: "the server has " + strconv.FormatInt(f.Received, 10) + " of its " + strconv.FormatInt(f.Size, 10) + " bytes"})
		return
	}
	content, err := s.artifacts.Open(f)
	if err != nil {
		s.internal(w, fmt.Errorf("artifact %d file %q: %w", a.ID, f.Path, err))
		return
	}
	defer content.Close()
	h := w.Header()
	h.Set("Content-Type", safeContentType(f))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": path.Base(f.Path)}))
	h.Set("ETag", `"`+f.SHA256+`"`)
	http.ServeContent(w, r, "", time.Time{}, content)
}

// downloadArtifactTarball streams a complete artifact as a gzipped tar
// archive of its files (with their directories), as debusine's
// download_tar_gz_url.
func (s *Server) downloadArtifactTarball(w http.ResponseWriter, r *http.Request) {
	a, ok := s.loadArtifact(w, r)
	if !ok {
		return
	}
	if format := r.URL.Query().Get("archive"); format != "" && format != "tar.gz" {
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: "Invalid archive format",
			Detail:           fmt.Sprintf("archive %q is not supported; the one format is tar.gz", format),
			ValidationErrors: map[string][]string{"archive": {"must be tar.gz"}}})
		return
	}
	if !a.Complete() {
		var missing []string
		for _, f := range a.Files {
			if !f.Complete {
				missing = append(missing, f.Path)
			}
		}
		writeProblem(w, schemas.Problem{Status: http.StatusConflict, Code: "artifact-incomplete",
			Title:  fmt.Sprintf("Artifact %d is not complete", a.ID),
			Detail: "files not uploaded yet: " + strings.Join(missing, ", ")})
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/gzip")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": fmt.Sprintf("artifact-%d.tar.gz", a.ID)}))
	w.WriteHeader(http.StatusOK)
	if err := s.writeTarball(w, a); err != nil {
		// The status is sent: cut the connection so that the client sees a
		// broken download rather than a short archive.
		s.log.Error().Err(err).Int64("artifact", a.ID).Msg("artifact tarball")
		panic(http.ErrAbortHandler)
	}
}

func (s *Server) writeTarball(w io.Writer, a store.Artifact) error {
	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	mtime := a.CreatedAt.UTC()
	dirs := map[string]bool{}
	for _, f := range a.Files {
		for i := strings.IndexByte(f.Path, '/'); i >= 0; i = nextSlash(f.Path, i) {
			d := f.Path[:i] + "/"
			if dirs[d] {
				continue
			}
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: mtime}); err != nil {
				return err
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.Path, Mode: 0o644, Size: f.Size, ModTime: mtime}); err != nil {
			return err
		}
		content, err := s.artifacts.Open(f)
		if err != nil {
			return fmt.Errorf("file %q: %w", f.Path, err)
		}
		_, err = io.Copy(tw, content)
		content.Close()
		if err != nil {
			return fmt.Errorf("file %q: %w", f.Path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return gz.Close()
}

func relationWire(r store.Relation) schemas.ArtifactRelation {
	return schemas.ArtifactRelation{ID: r.ID, Artifact: r.ArtifactID, Target: r.TargetID, Type: schemas.RelationType(r.Type)}
}

// listArtifactRelations is debusine's GET artifact-relation/?artifact=ID
// (relations from an artifact) or ?target_artifact=ID (relations to it);
// with both, relations between the two.
func (s *Server) listArtifactRelations(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var f store.RelationFilter
	for _, p := range []struct {
		name string
		dst  *int64
	}{{"artifact", &f.ArtifactID}, {"target_artifact", &f.TargetID}} {
		v := q.Get(p.name)
		if v == "" {
			continue
		}
		id, err := strconv.ParseInt(v, 10, 64)
		if err != nil || id <= 0 {
			writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: "Invalid query",
				Detail: p.name + " must be an artifact id", ValidationErrors: map[string][]string{p.name: {"must be a positive integer"}}})
			return
		}
		if _, err := s.store.ArtifactWithoutFiles(r.Context(), id); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				problem(w, http.StatusNotFound, fmt.Sprintf("Artifact %d not found", id), "No Artifact matches the given query.")
				return
			}
			s.internal(w, err)
			return
		}
		*p.dst = id
	}
	if f.ArtifactID == 0 && f.TargetID == 0 {
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: `"artifact" or "target_artifact" parameter are mandatory`,
			ValidationErrors: map[string][]string{"artifact": {"artifact or target_artifact is required"}}})
		return
	}
	rels, err := s.store.Relations(r.Context(), f)
	if err != nil {
		s.internal(w, err)
		return
	}
	out := make([]schemas.ArtifactRelation, 0, len(rels))
	for _, rel := range rels {
		out = append(out, relationWire(rel))
	}
	writeJSON(w, http.StatusOK, out)
}

// createArtifactRelation is debusine's POST artifact-relation/: 201 with a
// new relation, 200 with an identical one that already existed.
func (s *Server) createArtifactRelation(w http.ResponseWriter, r *http.Request) {
	const title = "Cannot deserialize artifact relation"
	var in schemas.ArtifactRelationCreate
	if !s.decodeBody(w, r, &in, title) {
		return
	}
	ve := map[string][]string{}
	if !in.Type.Valid() {
		ve["/type"] = []string{fmt.Sprintf("%q is not a valid choice (extends, relates-to, built-using).", in.Type)}
	}
	var ends [2]store.Artifact
	for i, p := range []struct {
		ptr string
		id  int64
	}{{"/artifact", in.Artifact}, {"/target", in.Target}} {
		if p.id <= 0 {
			ve[p.ptr] = append(ve[p.ptr], "This field is required.")
			continue
		}
		a, err := s.store.Artifact(r.Context(), p.id)
		if errors.Is(err, store.ErrNotFound) {
			ve[p.ptr] = append(ve[p.ptr], fmt.Sprintf("Invalid pk %q - object does not exist.", strconv.FormatInt(p.id, 10)))
			continue
		}
		if err != nil {
			s.internal(w, err)
			return
		}
		ends[i] = a
	}
	if len(ve) > 0 {
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: title, Detail: summarizeValidation(ve), ValidationErrors: ve})
		return
	}
	if in.Artifact == in.Target {
		problem(w, http.StatusBadRequest, "Cannot create relation: an artifact cannot relate to itself", "")
		return
	}
	now := time.Now()
	for i, role := range []string{"source", "target"} {
		a := ends[i]
		if !a.Complete() {
			problem(w, http.StatusBadRequest, fmt.Sprintf("Cannot create relation: %s artifact %d is incomplete", role, a.ID),
				"upload all its files first")
			return
		}
		if a.Expired(now) {
			problem(w, http.StatusBadRequest, fmt.Sprintf("Cannot create relation: %s artifact %d has expired", role, a.ID),
				"it is about to be deleted")
			return
		}
	}
	rel, created, err := s.store.CreateRelation(r.Context(), in.Artifact, in.Target, string(in.Type))
	if err != nil {
		s.internal(w, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	writeJSON(w, status, relationWire(rel))
}

// deleteArtifactRelation deletes a relation; the creator of its source
// artifact (user or worker) and admins may.
func (s *Server) deleteArtifactRelation(w http.ResponseWriter, r *http.Request) {
	notFound := func() { problem(w, http.StatusNotFound, "Error", "No ArtifactRelation matches the given query.") }
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil || id <= 0 {
		notFound()
		return
	}
	rel, err := s.store.Relation(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		notFound()
		return
	}
	if err != nil {
		s.internal(w, err)
		return
	}
	src, err := s.store.ArtifactWithoutFiles(r.Context(), rel.ArtifactID)
	if err != nil {
		s.internal(w, err)
		return
	}
	if !mayWriteArtifact(r, src) {
		problem(w, http.StatusForbidden, "You are not permitted to delete this relation",
			"only the creator of its source artifact and admins may")
		return
	}
	if err := s.store.DeleteRelation(r.Context(), id); err != nil && !errors.Is(err, store.ErrNotFound) {
		s.internal(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
