package web

import (
	"context"
	"errors"
	"fmt"
	"html"
	"io"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
)

// timelineEntry is one moment of a work request's life.
type timelineEntry struct {
	At   time.Time
	What string
}

type artifactRow struct {
	store.Artifact
	Size     int64
	From, To []relationRow
}

type workRequestData struct {
	W               schemas.WorkRequest
	TaskData        string
	DynamicTaskData string
	WorkerName      string
	CreatedByName   string
	AbortedByName   string
	// MayManage says whether the viewer may abort or retry it; CanAbort
	// and CanRetry whether its state allows it.
	MayManage, CanAbort, CanRetry bool
	Terminal                      bool
	Timeline                      []timelineEntry
	Artifacts                     []artifactRow
}

func (d *Dashboard) userName(ctx context.Context, id *int64) string {
	if id == nil {
		return ""
	}
	u, err := d.st.UserByID(ctx, *id)
	if err != nil {
		return "#" + strconv.FormatInt(*id, 10)
	}
	return u.Username
}

func (d *Dashboard) loadWorkRequest(ctx context.Context, id int64, u *store.User) (store.WorkRequest, *workRequestData, error) {
	wr, err := d.st.WorkRequest(ctx, id)
	if err != nil {
		return wr, nil, err
	}
	w := d.be.WorkRequestWire(wr)
	out := &workRequestData{W: w, TaskData: prettyJSON(wr.TaskData), Terminal: w.Status.Terminal()}
	if wr.DynamicTaskData.Valid {
		out.DynamicTaskData = prettyJSON(wr.DynamicTaskData.String)
	}
	if wr.WorkerID.Valid {
		if wk, err := d.st.WorkerByID(ctx, wr.WorkerID.Int64); err == nil {
			out.WorkerName = wk.Name
		} else if !errors.Is(err, store.ErrNotFound) {
			return wr, nil, err
		}
	}
	out.CreatedByName = d.userName(ctx, w.CreatedBy)
	out.AbortedByName = d.userName(ctx, w.AbortedBy)
	out.MayManage = u != nil && d.be.MayManage(u, wr)
	switch w.Status {
	case schemas.StatusPending, schemas.StatusBlocked, schemas.StatusRunning:
		out.CanAbort = true
	case schemas.StatusAborted:
		out.CanRetry = w.SupersededBy == nil
	case schemas.StatusCompleted:
		out.CanRetry = w.SupersededBy == nil && (w.Result == schemas.ResultFailure || w.Result == schemas.ResultError)
	}
	out.Timeline = d.timeline(wr, out)

	ids, err := d.st.ArtifactIDsForWorkRequest(ctx, id)
	if err != nil {
		return wr, nil, err
	}
	for _, aid := range ids {
		a, err := d.st.Artifact(ctx, aid)
		if errors.Is(err, store.ErrNotFound) {
			continue // expired meanwhile
		}
		if err != nil {
			return wr, nil, err
		}
		row := artifactRow{Artifact: a}
		for _, f := range a.Files {
			row.Size += f.Size
		}
		if row.From, err = d.relations(ctx, store.RelationFilter{ArtifactID: aid}, false); err != nil {
			return wr, nil, err
		}
		if row.To, err = d.relations(ctx, store.RelationFilter{TargetID: aid}, true); err != nil {
			return wr, nil, err
		}
		out.Artifacts = append(out.Artifacts, row)
	}
	return wr, out, nil
}

// timeline is the request's life so far, oldest first, from its
// timestamps (the store keeps no history of attempts beyond them).
func (d *Dashboard) timeline(wr store.WorkRequest, data *workRequestData) []timelineEntry {
	var out []timelineEntry
	add := func(t time.Time, what string) { out = append(out, timelineEntry{At: t.UTC(), What: what}) }
	created := "created"
	if data.CreatedByName != "" {
		created += " by " + data.CreatedByName
	}
	if wr.Supersedes.Valid {
		created += fmt.Sprintf(", retrying #%d", wr.Supersedes.Int64)
	}
	add(wr.CreatedAt, created)
	if wr.AssignedAt.Valid {
		what := fmt.Sprintf("attempt %d assigned", wr.Attempt)
		if data.WorkerName != "" {
			what += " to " + data.WorkerName
		}
		if wr.WorkerLostRetries > 0 {
			what += fmt.Sprintf(" (after %d lost worker(s))", wr.WorkerLostRetries)
		}
		add(wr.AssignedAt.Time, what)
	}
	if wr.StartedAt.Valid {
		add(wr.StartedAt.Time, fmt.Sprintf("attempt %d started", wr.Attempt))
	}
	if wr.CompletedAt.Valid {
		switch {
		case wr.Status == string(schemas.StatusAborted) && data.AbortedByName != "":
			add(wr.CompletedAt.Time, "aborted by "+data.AbortedByName)
		case wr.Status == string(schemas.StatusAborted):
			add(wr.CompletedAt.Time, "aborted")
		default:
			what := "completed: " + wr.Result
			if wr.Reason != "" {
				what += " (" + wr.Reason + ")"
			}
			add(wr.CompletedAt.Time, what)
		}
	}
	if wr.KillConfirmedAt.Valid {
		add(wr.KillConfirmedAt.Time, "the worker confirmed that the run is gone")
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return out
}

func (d *Dashboard) requestID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil || id < 1 {
		d.errorPage(w, r, http.StatusNotFound, "There is no such work request.")
		return 0, false
	}
	return id, true
}

func (d *Dashboard) workRequestPage(w http.ResponseWriter, r *http.Request) {
	id, ok := d.requestID(w, r)
	if !ok {
		return
	}
	_, data, err := d.loadWorkRequest(r.Context(), id, viewerFrom(r.Context()).User)
	if err != nil {
		if !d.notFound(w, r, err, "work request") {
			d.fail(w, r, err)
		}
		return
	}
	d.render(w, r, http.StatusOK, "work_request", fmt.Sprintf("Work request %d", id), data, eventsPath(r.URL.Path))
}

// workRequestEvents is the event stream of a work request's page: its
// fragments as they change, and its log, chunk by chunk (event "log", id
// the chunk's stream sequence so that a reconnecting browser goes on where
// it was). Once the request has ended, its log has been sent to the end and
// its kill (if any) is confirmed, event "done" ends it.
func (d *Dashboard) workRequestEvents(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	u := viewerFrom(ctx).User
	wr, data, err := d.loadWorkRequest(ctx, id, u)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	es := startEvents(w)
	frags := d.newFragmentSender(r, "work_request")
	if frags.update(es, data) != nil {
		return
	}
	var after uint64
	if lei := r.Header.Get("Last-Event-ID"); lei != "" {
		after, _ = strconv.ParseUint(lei, 10, 64)
	}
	logDone := false
	cur, err := d.be.OpenLog(ctx, wr, after)
	if err != nil {
		d.log.Warn().Err(err).Int64("work_request", id).Msg("dashboard: live log")
		_ = es.send("log", "", "[kiln: the live log is unavailable]\n")
		logDone = true
	} else {
		defer cur.Stop()
	}
	v, checked := viewerFrom(ctx), time.Now()
	eof := map[int]bool{}
	attempt, idleEnded := 0, 0
	nextPoll := time.Now().Add(d.opts.PollInterval)
	for {
		if !logDone {
			c, seq, err := cur.Next(max(time.Until(nextPoll), 10*time.Millisecond))
			switch {
			case err == nil:
				text := c.Text
				if attempt != 0 && c.Attempt != attempt {
					text = fmt.Sprintf("\n[kiln: attempt %d]\n", c.Attempt) + text
				}
				attempt = c.Attempt
				eof[c.Attempt] = eof[c.Attempt] || c.EOF
				if text != "" && es.send("log", strconv.FormatUint(seq, 10), html.EscapeString(text)) != nil {
					return
				}
				if time.Now().Before(nextPoll) {
					continue
				}
			case errors.Is(err, io.EOF):
				logDone = true
			case errors.Is(err, ErrNoChunk):
			default:
				d.log.Warn().Err(err).Int64("work_request", id).Msg("dashboard: live log")
				logDone = true
			}
		} else {
			select {
			case <-ctx.Done():
			case <-d.done:
			case <-time.After(time.Until(nextPoll)):
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-d.done:
			return
		default:
		}
		if time.Now().Before(nextPoll) {
			continue
		}
		if !d.stillValid(ctx, v, &checked) {
			return
		}
		nextPoll = time.Now().Add(d.opts.PollInterval)
		wr, data, err = d.loadWorkRequest(ctx, id, u)
		if err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return
			}
			d.log.Debug().Err(err).Int64("work_request", id).Msg("dashboard: live update")
			continue
		}
		if frags.update(es, data) != nil {
			return
		}
		ended := schemas.Status(wr.Status).Terminal()
		if ended && !logDone {
			// The worker marks the end of each attempt's log; a log
			// whose end never comes (a lost worker) is given up after a
			// few quiet polls.
			if eof[wr.Attempt] {
				logDone = true
			} else if idleEnded++; idleEnded >= 3 {
				logDone = true
			}
		}
		if ended && logDone && !wr.KillPending {
			_ = es.send("done", "", "")
			return
		}
		if es.keepAlive() != nil {
			return
		}
	}
}

// rawLog serves the log as text: the whole of it once the request has
// ended, what there is so far while it runs.
func (d *Dashboard) rawLog(w http.ResponseWriter, r *http.Request) {
	id, ok := d.requestID(w, r)
	if !ok {
		return
	}
	wr, err := d.st.WorkRequest(r.Context(), id)
	if err != nil {
		if !d.notFound(w, r, err, "work request") {
			d.fail(w, r, err)
		}
		return
	}
	cur, err := d.be.OpenLog(r.Context(), wr, 0)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	defer cur.Stop()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	attempt := 0
	for r.Context().Err() == nil {
		c, _, err := cur.Next(time.Second)
		if err != nil {
			return // the end (io.EOF), or nothing more for now
		}
		if attempt != 0 && c.Attempt != attempt {
			fmt.Fprintf(w, "\n[kiln: attempt %d]\n", c.Attempt)
		}
		attempt = c.Attempt
		if _, err := io.WriteString(w, c.Text); err != nil {
			return
		}
	}
}

// --- actions

// act runs an action and goes back to the page at back with its outcome.
func (d *Dashboard) act(w http.ResponseWriter, r *http.Request, back string, action func() (string, error)) {
	msg, err := action()
	var refusal *Refusal
	switch {
	case err == nil:
		d.setFlash(w, flash{Text: msg})
	case errors.As(err, &refusal):
		d.setFlash(w, flash{Error: true, Text: refusal.Message})
	case errors.Is(err, store.ErrNotFound):
		d.setFlash(w, flash{Error: true, Text: "It does not exist (any more)."})
	default:
		d.log.Error().Err(err).Str("path", r.URL.Path).Msg("dashboard action")
		d.setFlash(w, flash{Error: true, Text: "Internal error; see the server log."})
	}
	http.Redirect(w, r, back, http.StatusSeeOther)
}

func (d *Dashboard) abort(w http.ResponseWriter, r *http.Request) {
	id, ok := d.requestID(w, r)
	if !ok {
		return
	}
	d.act(w, r, fmt.Sprintf("/work-requests/%d/", id), func() (string, error) {
		return fmt.Sprintf("Work request %d aborted.", id), d.be.Abort(r.Context(), viewerFrom(r.Context()).User, id)
	})
}

func (d *Dashboard) retry(w http.ResponseWriter, r *http.Request) {
	id, ok := d.requestID(w, r)
	if !ok {
		return
	}
	u := viewerFrom(r.Context()).User
	nid, err := d.be.Retry(r.Context(), u, id)
	back := fmt.Sprintf("/work-requests/%d/", id)
	if err == nil {
		back = fmt.Sprintf("/work-requests/%d/", nid)
	}
	d.act(w, r, back, func() (string, error) {
		return fmt.Sprintf("Work request %d retried as %d.", id, nid), err
	})
}

func (d *Dashboard) setWorkerEnabled(enabled bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
		if err != nil {
			d.errorPage(w, r, http.StatusNotFound, "There is no such worker.")
			return
		}
		d.act(w, r, fmt.Sprintf("/workers/%d/", id), func() (string, error) {
			what := "disabled: it gets no new work"
			if enabled {
				what = "enabled"
			}
			return "Worker " + what + ".", d.be.SetWorkerEnabled(r.Context(), viewerFrom(r.Context()).User, id, enabled)
		})
	}
}

func (d *Dashboard) setDeviceHealth(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "name")
	health := schemas.DeviceHealth(r.PostFormValue("health"))
	d.act(w, r, "/devices/"+name+"/", func() (string, error) {
		err := d.be.SetDeviceHealth(r.Context(), viewerFrom(r.Context()).User, name, health, r.PostFormValue("reason"))
		if health == schemas.HealthUnknown {
			return "Device " + name + " returned to service; its next health check decides its health.", err
		}
		return "Device " + name + " is now in " + string(health) + ".", err
	})
}

func (d *Dashboard) requestHealthCheck(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "name")
	d.act(w, r, "/devices/"+name+"/", func() (string, error) {
		return "Health check of " + name + " requested: it runs before any other job there.",
			d.be.RequestHealthCheck(r.Context(), viewerFrom(r.Context()).User, name, r.PostFormValue("reason"))
	})
}
