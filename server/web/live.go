package web

import (
	"errors"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/kiln-ci/kiln/server/store"
)

// keepAlive is how long an event stream may stay silent: a comment then
// keeps proxies from closing it.
const keepAlive = 15 * time.Second

// livePage is a page whose live parts its event stream keeps up to date:
// the stream loads the page's data every poll interval, renders its
// fragments and sends those that changed, as an event named after each
// (htmx's sse-swap).
type livePage struct {
	template string
	// load reads the page's data; an ErrNotFound is a 404.
	load func(d *Dashboard, r *http.Request) (title string, data any, err error)
}

// live registers a live page at pattern and its event stream at
// pattern+"events".
func (d *Dashboard) live(r chi.Router, pattern string, p livePage) {
	r.Get(pattern, func(w http.ResponseWriter, r *http.Request) { d.servePage(w, r, p) })
	r.Get(eventsPath(pattern), func(w http.ResponseWriter, r *http.Request) { d.serveEvents(w, r, p) })
}

// eventsPath is the event stream of the page at path p.
func eventsPath(p string) string {
	if strings.HasSuffix(p, "/") {
		return p + "events"
	}
	return p + "/events"
}

func (d *Dashboard) servePage(w http.ResponseWriter, r *http.Request, p livePage) {
	title, data, err := p.load(d, r)
	if err != nil {
		var bad badRequest
		switch {
		case errors.As(err, &bad):
			d.errorPage(w, r, http.StatusBadRequest, string(bad))
		case d.notFound(w, r, err, "page"):
		default:
			d.fail(w, r, err)
		}
		return
	}
	live := eventsPath(r.URL.Path)
	q := pageQuery(r)
	if q != "" {
		live += "?" + q
	}
	if r.Header.Get("HX-Request") == "true" {
		// A form that htmx sent names its empty fields too: the address
		// shown in the browser leaves them out.
		push := r.URL.Path
		if q != "" {
			push += "?" + q
		}
		w.Header().Set("HX-Push-Url", push)
	}
	d.render(w, r, http.StatusOK, p.template, title, data, live)
}

// pageQuery is the page's query without empty values and the digest of
// the event stream.
func pageQuery(r *http.Request) string {
	q := r.URL.Query()
	q.Del("v")
	for k, vs := range q {
		if len(vs) == 1 && vs[0] == "" {
			q.Del(k)
		}
	}
	return q.Encode()
}

// badRequest is a load error that the user caused (a malformed filter).
type badRequest string

func (b badRequest) Error() string { return string(b) }

// eventStream writes Server-Sent Events.
type eventStream struct {
	w    http.ResponseWriter
	rc   *http.ResponseController
	last time.Time
}

func startEvents(w http.ResponseWriter) *eventStream {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	es := &eventStream{w: w, rc: http.NewResponseController(w), last: time.Now()}
	_ = es.rc.Flush()
	return es
}

// sseLines turns CR and CRLF into LF: an event's data cannot hold a CR,
// which ends a line of the stream.
var sseLines = strings.NewReplacer("\r\n", "\n", "\r", "\n")

// send writes one event; data may hold several lines.
func (e *eventStream) send(event, id, data string) error {
	var b strings.Builder
	if event != "" {
		b.WriteString("event: " + event + "\n")
	}
	if id != "" {
		b.WriteString("id: " + id + "\n")
	}
	for _, line := range strings.Split(sseLines.Replace(data), "\n") {
		b.WriteString("data: " + line + "\n")
	}
	b.WriteString("\n")
	if _, err := e.w.Write([]byte(b.String())); err != nil {
		return err
	}
	e.last = time.Now()
	return e.rc.Flush()
}

// keepAlive writes a comment when the stream has been silent a while.
func (e *eventStream) keepAlive() error {
	if time.Since(e.last) < keepAlive {
		return nil
	}
	if _, err := e.w.Write([]byte(": keep-alive\n\n")); err != nil {
		return err
	}
	e.last = time.Now()
	return e.rc.Flush()
}

// fragmentSender sends the fragments of a page that changed since it last
// sent them.
type fragmentSender struct {
	page *pageTemplate
	view *view
	last map[string]template.HTML
	// initial is the digest of the fragments the page was rendered with.
	initial string
}

func (d *Dashboard) newFragmentSender(r *http.Request, page string) *fragmentSender {
	v := viewerFrom(r.Context())
	return &fragmentSender{page: d.pages[page], initial: r.URL.Query().Get("v"),
		view: &view{User: v.User, CSRF: v.CSRF, Anonymous: d.opts.Anonymous, Path: r.URL.RequestURI()}}
}

// update renders the fragments with data and sends those that changed.
func (f *fragmentSender) update(es *eventStream, data any) error {
	f.view.Data = data
	frags, digest, err := f.page.renderFragments(f.view)
	if err != nil {
		return err
	}
	if f.last == nil && digest == f.initial {
		f.last = frags // the page shows these already
	}
	for _, name := range f.page.fragments {
		if html := frags[name]; f.last == nil || f.last[name] != html {
			if err := es.send(name, "", string(html)); err != nil {
				return err
			}
		}
	}
	f.last = frags
	return nil
}

// serveEvents is the event stream of a live page; it ends when the
// browser goes or the dashboard closes.
func (d *Dashboard) serveEvents(w http.ResponseWriter, r *http.Request, p livePage) {
	ctx := r.Context()
	es := startEvents(w)
	frags := d.newFragmentSender(r, p.template)
	v, checked := viewerFrom(ctx), time.Now()
	tick := time.NewTicker(d.opts.PollInterval)
	defer tick.Stop()
	for d.stillValid(ctx, v, &checked) {
		_, data, err := p.load(d, r)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return // deleted meanwhile: nothing more to show
		case err != nil:
			d.log.Debug().Err(err).Str("path", r.URL.Path).Msg("dashboard: live update")
		default:
			if err := frags.update(es, data); err != nil {
				return
			}
		}
		if es.keepAlive() != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-d.done:
			return
		case <-tick.C:
		}
	}
}
