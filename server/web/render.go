package web

import (
	"bytes"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/kiln-ci/kiln/server/store"
)

// timeLayout is how the pages show times: absolute, so that a live
// fragment changes only when its data does.
const timeLayout = "2006-01-02 15:04:05 UTC"

// pageTemplate is one page: the layout with the page's own templates.
type pageTemplate struct {
	t *template.Template
	// fragments are the live parts of the page (templates named
	// "frag-NAME"), re-rendered and pushed by its event stream.
	fragments []string
}

// loadTemplates parses layout.html with each other page file.
func loadTemplates() (map[string]*pageTemplate, error) {
	base, err := template.New("layout.html").Funcs(funcs).ParseFS(assets, "templates/layout.html")
	if err != nil {
		return nil, fmt.Errorf("dashboard templates: %w", err)
	}
	files, err := fs.Glob(assets, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*pageTemplate{}
	for _, f := range files {
		name := strings.TrimSuffix(path.Base(f), ".html")
		if name == "layout" {
			continue
		}
		t, err := template.Must(base.Clone()).ParseFS(assets, f)
		if err != nil {
			return nil, fmt.Errorf("dashboard template %s: %w", f, err)
		}
		p := &pageTemplate{t: t}
		for _, tt := range t.Templates() {
			if frag, ok := strings.CutPrefix(tt.Name(), "frag-"); ok {
				p.fragments = append(p.fragments, frag)
			}
		}
		sort.Strings(p.fragments)
		pages[name] = p
	}
	return pages, nil
}

// view is what every page template gets.
type view struct {
	Title     string
	Nav       string
	User      *store.User
	CSRF      string
	Anonymous bool
	Flash     *flash
	// LiveURL is the page's event stream ("" for a page that is not live).
	LiveURL string
	// Fragments holds the page's live parts, rendered.
	Fragments map[string]template.HTML
	// Path is the page's own path and query, for the login link.
	Path string
	Data any
}

// renderFragments renders the live parts of a page and returns them with a
// digest of all of them.
func (p *pageTemplate) renderFragments(v *view) (map[string]template.HTML, string, error) {
	out := make(map[string]template.HTML, len(p.fragments))
	h := sha256.New()
	for _, name := range p.fragments {
		var buf bytes.Buffer
		if err := p.t.ExecuteTemplate(&buf, "frag-"+name, v); err != nil {
			return nil, "", err
		}
		// The output of our own templates, every value in it escaped.
		out[name] = template.HTML(buf.String())
		fmt.Fprintf(h, "%s\x00%d\x00", name, buf.Len())
		h.Write(buf.Bytes())
	}
	return out, hex.EncodeToString(h.Sum(nil)[:12]), nil
}

// render writes a whole page. liveURL is its event stream, "" for none.
func (d *Dashboard) render(w http.ResponseWriter, r *http.Request, status int, page, title string, data any, liveURL string) {
	p := d.pages[page]
	v := viewerFrom(r.Context())
	vw := &view{Title: title, Nav: navOf(r.URL.Path), User: v.User, CSRF: v.CSRF, Anonymous: d.opts.Anonymous,
		Path: r.URL.RequestURI(), Data: data}
	frags, digest, err := p.renderFragments(vw)
	if err != nil {
		d.fail(w, r, fmt.Errorf("render %s: %w", page, err))
		return
	}
	vw.Fragments = frags
	if liveURL != "" && len(frags) > 0 {
		vw.LiveURL = liveURL + digestParam(liveURL, digest)
	}
	vw.Flash = d.takeFlash(w, r)
	var buf bytes.Buffer
	if err := p.t.ExecuteTemplate(&buf, "layout", vw); err != nil {
		d.fail(w, r, fmt.Errorf("render %s: %w", page, err))
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// digestParam is the query parameter that tells a page's event stream
// which fragments the page was rendered with.
func digestParam(u, digest string) string {
	if strings.Contains(u, "?") {
		return "&v=" + digest
	}
	return "?v=" + digest
}

func navOf(p string) string {
	for _, n := range []string{"work-requests", "workers", "devices", "artifacts"} {
		if strings.HasPrefix(p, "/"+n+"/") {
			return n
		}
	}
	return "overview"
}

// errorPage answers with a page that says what went wrong.
func (d *Dashboard) errorPage(w http.ResponseWriter, r *http.Request, status int, msg string) {
	d.render(w, r, status, "error", http.StatusText(status), msg, "")
}

// fail answers an error of the store or a template: 503 when the database
// is away, else 500 (the details go to the log only).
func (d *Dashboard) fail(w http.ResponseWriter, r *http.Request, err error) {
	if store.Unavailable(err) {
		d.log.Warn().Err(err).Msg("dashboard: database unavailable")
		w.Header().Set("Retry-After", "5")
		d.errorPage(w, r, http.StatusServiceUnavailable, "The database cannot be reached; try again in a moment.")
		return
	}
	d.log.Error().Err(err).Str("path", r.URL.Path).Msg("dashboard")
	if _, ok := d.pages["error"]; !ok {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	d.errorPage(w, r, http.StatusInternalServerError, "Internal error; see the server log.")
}

// notFound reports whether err is the store's ErrNotFound and, if so,
// answers 404.
func (d *Dashboard) notFound(w http.ResponseWriter, r *http.Request, err error, what string) bool {
	if !errors.Is(err, store.ErrNotFound) {
		return false
	}
	d.errorPage(w, r, http.StatusNotFound, "There is no such "+what+".")
	return true
}

var funcs = template.FuncMap{
	"ts":       formatTime,
	"since":    since,
	"json":     prettyJSON,
	"bytes":    formatBytes,
	"filePath": escapeFilePath,
	"statusOf": statusOf,
	"deref":    func(p *int64) int64 { return *p },
	"join":     strings.Join,
	"contains": func(list []string, s string) bool { return containsString(list, s) },
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// formatTime shows a time.Time, *time.Time or sql.NullTime in UTC, "—"
// for none.
func formatTime(v any) string {
	var t time.Time
	switch x := v.(type) {
	case time.Time:
		t = x
	case *time.Time:
		if x != nil {
			t = *x
		}
	case sql.NullTime:
		if x.Valid {
			t = x.Time
		}
	}
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format(timeLayout)
}

// since is how long from a to b (b zero: now), rounded for people.
func since(a, b any) string {
	ta, tb := timeOf(a), timeOf(b)
	if ta.IsZero() {
		return ""
	}
	if tb.IsZero() {
		tb = time.Now()
	}
	dur := tb.Sub(ta)
	switch {
	case dur < time.Second:
		return dur.Round(time.Millisecond).String()
	case dur < time.Minute:
		return dur.Round(100 * time.Millisecond).String()
	}
	return dur.Round(time.Second).String()
}

func timeOf(v any) time.Time {
	switch x := v.(type) {
	case time.Time:
		return x
	case *time.Time:
		if x != nil {
			return *x
		}
	case sql.NullTime:
		if x.Valid {
			return x.Time
		}
	}
	return time.Time{}
}

// prettyJSON indents JSON text (or a value) for a <pre>; text that is not
// JSON is shown as it is.
func prettyJSON(v any) string {
	var raw []byte
	switch x := v.(type) {
	case string:
		raw = []byte(x)
	case []byte:
		raw = x
	case json.RawMessage:
		raw = x
	default:
		b, err := json.MarshalIndent(x, "", "  ")
		if err != nil {
			return fmt.Sprint(x)
		}
		return string(b)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return string(raw)
	}
	return unescapeHTMLInJSON(buf.String())
}

// unescapeHTMLInJSON turns the \u escapes that Go's encoder writes for <, >
// and & back into the characters, so that JSON shows what its strings
// hold (the page escapes them as it escapes everything). Other escapes,
// and an escaped backslash followed by "u003c", stay as they are.
func unescapeHTMLInJSON(s string) string {
	if !strings.Contains(s, `\u00`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		if s[i+1] == 'u' && i+6 <= len(s) {
			switch s[i+2 : i+6] {
			case "003c", "003C":
				b.WriteByte('<')
				i += 5
				continue
			case "003e", "003E":
				b.WriteByte('>')
				i += 5
				continue
			case "0026":
				b.WriteByte('&')
				i += 5
				continue
			}
		}
		b.WriteByte(s[i])
		b.WriteByte(s[i+1])
		i++
	}
	return b.String()
}

func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// escapeFilePath escapes each name of a path in an artifact for a URL.
func escapeFilePath(p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return strings.Join(segs, "/")
}

// statusOf is the status a page shows: the result of a completed request.
func statusOf(status, result string) string {
	if status == "completed" && result != "" {
		return result
	}
	return status
}
