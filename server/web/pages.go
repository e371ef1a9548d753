package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
)

// Page sizes.
const (
	pageSize     = 50
	countUpTo    = 1000
	recentLength = 10
)

var (
	statuses = []string{"pending", "blocked", "running", "completed", "aborted"}
	results  = []string{"success", "failure", "error", "skipped"}
)

// wrRow is a work request in a table.
type wrRow struct {
	store.WorkRequestSummary
	// Waiting says why a pending request waits, as the API says it.
	Waiting string
}

func (d *Dashboard) rowsOf(ss []store.WorkRequestSummary) []wrRow {
	out := make([]wrRow, 0, len(ss))
	for _, s := range ss {
		wire := d.be.WorkRequestWire(store.WorkRequest{ID: s.ID, Status: s.Status, WorkerID: s.WorkerID,
			WaitingReason: s.WaitingReason, Workspace: s.Workspace, TaskName: s.TaskName})
		out = append(out, wrRow{WorkRequestSummary: s, Waiting: wire.WaitingReason})
	}
	return out
}

// --- overview

type countRow struct {
	Label string
	N     int64
	// Link is the list of those requests.
	Link string
}

type overviewData struct {
	Total    int64
	Statuses []countRow
	Results  []countRow
	Queue    []countRow
	Reasons  []reasonGroup
	Workers  struct{ Total, Online, Busy, Offline, Disabled int }
	Devices  []countRow
	// DeviceTotal counts the declared devices; Dirty and InUse among them.
	DeviceTotal, Dirty, InUse int
	Failures                  []wrRow
}

type reasonGroup struct {
	Reason string
	N      int64
	Tasks  []string
}

// overviewCache shares the overview among the browsers that show it: it is
// the same for everyone, and its counts read the whole table.
type overviewCache struct {
	mu   sync.Mutex
	at   time.Time
	data *overviewData
}

var overviewPage = livePage{template: "overview", load: func(d *Dashboard, r *http.Request) (string, any, error) {
	data, err := d.overviewData(r.Context())
	return "Overview", data, err
}}

func (d *Dashboard) overviewData(ctx context.Context) (*overviewData, error) {
	c := &d.overview
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.data != nil && time.Since(c.at) < d.opts.PollInterval/2 {
		return c.data, nil
	}
	data, err := d.loadOverview(ctx)
	if err != nil {
		return nil, err
	}
	c.data, c.at = data, time.Now()
	return data, nil
}

func (d *Dashboard) loadOverview(ctx context.Context) (*overviewData, error) {
	out := &overviewData{}
	counts, err := d.st.StatusCounts(ctx)
	if err != nil {
		return nil, err
	}
	byStatus := map[string]int64{}
	byResult := map[string]int64{}
	for _, c := range counts {
		out.Total += c.N
		byStatus[c.Status] += c.N
		if c.Status == "completed" {
			byResult[c.Result] += c.N
		}
	}
	for _, s := range statuses {
		out.Statuses = append(out.Statuses, countRow{Label: s, N: byStatus[s], Link: filterLink("status", s)})
	}
	for _, res := range results {
		out.Results = append(out.Results, countRow{Label: res, N: byResult[res],
			Link: "/work-requests/?status=completed&result=" + res})
	}

	shapes, err := d.st.PendingShapes(ctx)
	if err != nil {
		return nil, err
	}
	reasons, err := d.st.WaitingReasons(ctx)
	if err != nil {
		return nil, err
	}
	queue := map[string]int64{}
	groups := map[string]*reasonGroup{}
	for _, sh := range shapes {
		queue[sh.TaskName] += sh.Count
		reason := reasons[sh.Shape]
		if reason == "" {
			reason = "waiting for the scheduler"
		}
		g := groups[reason]
		if g == nil {
			g = &reasonGroup{Reason: reason}
			groups[reason] = g
		}
		g.N += sh.Count
		if !containsString(g.Tasks, sh.TaskName) {
			g.Tasks = append(g.Tasks, sh.TaskName)
		}
	}
	for task, n := range queue {
		out.Queue = append(out.Queue, countRow{Label: task, N: n, Link: "/work-requests/?status=pending&task=" + url.QueryEscape(task)})
	}
	sort.Slice(out.Queue, func(i, j int) bool {
		if out.Queue[i].N != out.Queue[j].N {
			return out.Queue[i].N > out.Queue[j].N
		}
		return out.Queue[i].Label < out.Queue[j].Label
	})
	for _, g := range groups {
		sort.Strings(g.Tasks)
		out.Reasons = append(out.Reasons, *g)
	}
	sort.Slice(out.Reasons, func(i, j int) bool {
		if out.Reasons[i].N != out.Reasons[j].N {
			return out.Reasons[i].N > out.Reasons[j].N
		}
		return out.Reasons[i].Reason < out.Reasons[j].Reason
	})

	workers, err := d.st.Workers(ctx)
	if err != nil {
		return nil, err
	}
	for _, wk := range workers {
		w := d.be.WorkerWire(wk)
		out.Workers.Total++
		switch {
		case !w.Enabled:
			out.Workers.Disabled++
		case !w.Connected:
			out.Workers.Offline++
		default:
			out.Workers.Online++
			if w.Running > 0 {
				out.Workers.Busy++
			}
		}
	}

	devices, err := d.st.Devices(ctx)
	if err != nil {
		return nil, err
	}
	health := map[string]int{}
	for _, dv := range devices {
		if !dv.Declared {
			continue
		}
		out.DeviceTotal++
		health[dv.Health]++
		if dv.Dirty {
			out.Dirty++
		}
		if dv.State != string(schemas.DeviceIdle) {
			out.InUse++
		}
	}
	for _, h := range []schemas.DeviceHealth{schemas.HealthGood, schemas.HealthUnknown, schemas.HealthBad,
		schemas.HealthMaintenance, schemas.HealthRetired} {
		out.Devices = append(out.Devices, countRow{Label: string(h), N: int64(health[string(h)])})
	}

	failures, err := d.st.DashboardWorkRequests(ctx, store.DashboardFilter{Status: "completed",
		Results: []string{"failure", "error"}, Limit: recentLength})
	if err != nil {
		return nil, err
	}
	out.Failures = d.rowsOf(failures)
	return out, nil
}

// filterLink is the list of work requests with one filter.
func filterLink(key, value string) string {
	return "/work-requests/?" + url.Values{key: {value}}.Encode()
}

// --- work request list

type listFilter struct {
	Status, Result, Task, Worker, Workspace, CreatedBy string
}

func (f listFilter) values() url.Values {
	q := url.Values{}
	for k, v := range map[string]string{"status": f.Status, "result": f.Result, "task": f.Task, "worker": f.Worker,
		"workspace": f.Workspace, "created_by": f.CreatedBy} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return q
}

type listData struct {
	Filter    listFilter
	Rows      []wrRow
	Count     int64
	CountMore bool
	// Newer and Older are the links to the neighbouring pages ("" for
	// none).
	Newer, Older string
	// Notice says why nothing matches (an unknown worker or user).
	Notice   string
	Statuses []string
	Results  []string
	Tasks    []string
	Workers  []string
}

var workRequestsPage = livePage{template: "work_requests", load: func(d *Dashboard, r *http.Request) (string, any, error) {
	data, err := d.loadList(r)
	return "Work requests", data, err
}}

func positiveID(q url.Values, key string) (int64, error) {
	v := q.Get(key)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1 {
		return 0, badRequest(key + " must be a work request id")
	}
	return n, nil
}

func (d *Dashboard) loadList(r *http.Request) (*listData, error) {
	ctx := r.Context()
	q := r.URL.Query()
	out := &listData{Statuses: statuses, Results: results, Tasks: d.be.TaskNames()}
	f := listFilter{Status: q.Get("status"), Result: q.Get("result"), Task: strings.TrimSpace(q.Get("task")),
		Worker: strings.TrimSpace(q.Get("worker")), Workspace: strings.TrimSpace(q.Get("workspace")),
		CreatedBy: strings.TrimSpace(q.Get("created_by"))}
	out.Filter = f
	sf := store.DashboardFilter{Status: f.Status, TaskName: f.Task, Workspace: f.Workspace, Limit: pageSize + 1}
	if f.Status != "" && !containsString(statuses, f.Status) {
		return nil, badRequest("status must be one of " + strings.Join(statuses, ", "))
	}
	if f.Result != "" {
		if !containsString(results, f.Result) {
			return nil, badRequest("result must be one of " + strings.Join(results, ", "))
		}
		sf.Results = []string{f.Result}
	}
	var err error
	if sf.BeforeID, err = positiveID(q, "before"); err != nil {
		return nil, err
	}
	if sf.AfterID, err = positiveID(q, "after"); err != nil {
		return nil, err
	}
	workers, err := d.st.Workers(ctx)
	if err != nil {
		return nil, err
	}
	for _, wk := range workers {
		out.Workers = append(out.Workers, wk.Name)
		if wk.Name == f.Worker {
			sf.WorkerID = wk.ID
		}
	}
	if f.Worker != "" && sf.WorkerID == 0 {
		out.Notice = fmt.Sprintf("There is no worker named %q.", f.Worker)
		return out, nil
	}
	if f.CreatedBy != "" {
		u, err := d.st.UserByName(ctx, f.CreatedBy)
		if errors.Is(err, store.ErrNotFound) {
			out.Notice = fmt.Sprintf("There is no user named %q.", f.CreatedBy)
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		sf.CreatedBy = u.ID
	}
	rows, err := d.st.DashboardWorkRequests(ctx, sf)
	if err != nil {
		return nil, err
	}
	if out.Count, out.CountMore, err = d.st.CountDashboardWorkRequests(ctx, sf, countUpTo); err != nil {
		return nil, err
	}
	more := len(rows) > pageSize
	if more {
		rows = rows[:pageSize]
	}
	back := sf.AfterID > 0
	if back {
		for i, j := 0, len(rows)-1; i < j; i, j = i+1, j-1 {
			rows[i], rows[j] = rows[j], rows[i]
		}
	}
	out.Rows = d.rowsOf(rows)
	if len(rows) > 0 {
		link := func(key string, id int64) string {
			v := f.values()
			v.Set(key, strconv.FormatInt(id, 10))
			return "/work-requests/?" + v.Encode()
		}
		if more || back {
			out.Older = link("before", rows[len(rows)-1].ID)
		}
		if (!back && sf.BeforeID > 0) || (back && more) {
			out.Newer = link("after", rows[0].ID)
		}
	}
	return out, nil
}

// --- workers

type workerRow struct {
	schemas.Worker
	State string
	// Versions are its tasks' versions ("noop 1, sbuild 1").
	Versions string
}

func (d *Dashboard) workerRow(wk store.Worker) workerRow {
	w := d.be.WorkerWire(wk)
	row := workerRow{Worker: w}
	switch {
	case !w.Enabled:
		row.State = "disabled"
	case !w.Connected:
		row.State = "offline"
	case w.Running > 0:
		row.State = "busy"
	default:
		row.State = "online"
	}
	var vs []string
	for k, v := range wk.Metadata() {
		if task, ok := strings.CutSuffix(k, ":version"); ok {
			vs = append(vs, fmt.Sprintf("%s %v", task, v))
		}
	}
	sort.Strings(vs)
	row.Versions = strings.Join(vs, ", ")
	return row
}

var workersPage = livePage{template: "workers", load: func(d *Dashboard, r *http.Request) (string, any, error) {
	ws, err := d.st.Workers(r.Context())
	if err != nil {
		return "", nil, err
	}
	rows := make([]workerRow, 0, len(ws))
	for _, wk := range ws {
		rows = append(rows, d.workerRow(wk))
	}
	return "Workers", rows, nil
}}

// metadataRow is one key of a worker's merged metadata.
type metadataRow struct {
	Key, Value string
	// Static marks an admin's static key; Overridden holds the dynamic
	// value it hides, when the worker reports one.
	Static     bool
	Overridden string
}

type workerData struct {
	workerRow
	Metadata     []metadataRow
	Active       []wrRow
	Recent       []wrRow
	Devices      []schemas.Device
	OverdueKills []int64
}

// compactJSON is v as JSON on one line, with <, > and & as they are (the
// page escapes them).
func compactJSON(v any) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Sprint(v)
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

var workerPage = livePage{template: "worker", load: func(d *Dashboard, r *http.Request) (string, any, error) {
	ctx := r.Context()
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil {
		return "", nil, store.ErrNotFound
	}
	wk, err := d.st.WorkerByID(ctx, id)
	if err != nil {
		return "", nil, err
	}
	out := &workerData{workerRow: d.workerRow(wk)}
	static, dynamic := map[string]any{}, map[string]any{}
	_ = json.Unmarshal([]byte(wk.StaticMetadata), &static)
	_ = json.Unmarshal([]byte(wk.DynamicMetadata), &dynamic)
	for k, v := range wk.Metadata() {
		row := metadataRow{Key: k, Value: compactJSON(v)}
		if _, ok := static[k]; ok {
			row.Static = true
			if dv, ok := dynamic[k]; ok {
				row.Overridden = compactJSON(dv)
			}
		}
		out.Metadata = append(out.Metadata, row)
	}
	sort.Slice(out.Metadata, func(i, j int) bool { return out.Metadata[i].Key < out.Metadata[j].Key })
	active, err := d.st.DashboardWorkRequests(ctx, store.DashboardFilter{WorkerID: id, Status: "running", Limit: 100})
	if err != nil {
		return "", nil, err
	}
	assigned, err := d.st.DashboardWorkRequests(ctx, store.DashboardFilter{WorkerID: id, Status: "pending", Limit: 100})
	if err != nil {
		return "", nil, err
	}
	out.Active = d.rowsOf(append(active, assigned...))
	recent, err := d.st.DashboardWorkRequests(ctx, store.DashboardFilter{WorkerID: id, Limit: recentLength})
	if err != nil {
		return "", nil, err
	}
	out.Recent = d.rowsOf(recent)
	devices, err := d.st.Devices(ctx)
	if err != nil {
		return "", nil, err
	}
	for _, dv := range devices {
		if dv.WorkerID == id {
			out.Devices = append(out.Devices, dv.Wire())
		}
	}
	overdue, err := d.st.OverdueKills(ctx)
	if err != nil {
		return "", nil, err
	}
	out.OverdueKills = overdue[id]
	return "Worker " + wk.Name, out, nil
}}

// --- devices

var devicesPage = livePage{template: "devices", load: func(d *Dashboard, r *http.Request) (string, any, error) {
	ds, err := d.st.Devices(r.Context())
	if err != nil {
		return "", nil, err
	}
	out := make([]schemas.Device, 0, len(ds))
	for _, dv := range ds {
		out = append(out, dv.Wire())
	}
	return "Devices", out, nil
}}

// deviceHistoryLength is how many changes a device's page shows.
const deviceHistoryLength = 50

type deviceData struct {
	schemas.Device
	// Healths are those an admin may set.
	Healths []schemas.DeviceHealth
}

var devicePage = livePage{template: "device", load: func(d *Dashboard, r *http.Request) (string, any, error) {
	ctx := r.Context()
	dv, err := d.st.DeviceByName(ctx, chi.URLParam(r, "name"))
	if err != nil {
		return "", nil, err
	}
	out := &deviceData{Device: dv.Wire(),
		Healths: []schemas.DeviceHealth{schemas.HealthMaintenance, schemas.HealthRetired, schemas.HealthUnknown}}
	if out.History, err = d.st.DeviceEvents(ctx, dv.ID, deviceHistoryLength); err != nil {
		return "", nil, err
	}
	return "Device " + dv.Name, out, nil
}}

// --- artifacts

type relationRow struct {
	Type     string
	Other    int64
	Category string
}

type artifactData struct {
	store.Artifact
	CreatedByName string
	Size          int64
	From, To      []relationRow
}

var artifactPage = livePage{template: "artifact", load: func(d *Dashboard, r *http.Request) (string, any, error) {
	ctx := r.Context()
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil {
		return "", nil, store.ErrNotFound
	}
	a, err := d.st.Artifact(ctx, id)
	if err != nil {
		return "", nil, err
	}
	out := &artifactData{Artifact: a}
	for _, f := range a.Files {
		out.Size += f.Size
	}
	if a.CreatedBy.Valid {
		if u, err := d.st.UserByID(ctx, a.CreatedBy.Int64); err == nil {
			out.CreatedByName = u.Username
		}
	}
	if out.From, err = d.relations(ctx, store.RelationFilter{ArtifactID: id}, false); err != nil {
		return "", nil, err
	}
	if out.To, err = d.relations(ctx, store.RelationFilter{TargetID: id}, true); err != nil {
		return "", nil, err
	}
	return fmt.Sprintf("Artifact %d", id), out, nil
}}

// relations lists an artifact's relations with the category of the
// artifact at their other end (the source when reverse).
func (d *Dashboard) relations(ctx context.Context, f store.RelationFilter, reverse bool) ([]relationRow, error) {
	rels, err := d.st.Relations(ctx, f)
	if err != nil {
		return nil, err
	}
	out := make([]relationRow, 0, len(rels))
	for _, rel := range rels {
		other := rel.TargetID
		if reverse {
			other = rel.ArtifactID
		}
		row := relationRow{Type: rel.Type, Other: other}
		if a, err := d.st.ArtifactWithoutFiles(ctx, other); err == nil {
			row.Category = a.Category
		} else if !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		out = append(out, row)
	}
	return out, nil
}

func (d *Dashboard) artifactID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil || id < 1 {
		d.errorPage(w, r, http.StatusNotFound, "There is no such artifact.")
		return 0, false
	}
	return id, true
}

func (d *Dashboard) artifactFile(w http.ResponseWriter, r *http.Request) {
	id, ok := d.artifactID(w, r)
	if !ok {
		return
	}
	// The path as sent, unescaped once: chi's parameter may be escaped or
	// not, depending on the characters in it.
	esc := r.URL.EscapedPath()
	i := strings.Index(esc, "/files/")
	if i < 0 {
		d.errorPage(w, r, http.StatusNotFound, "There is no such file.")
		return
	}
	p, err := url.PathUnescape(esc[i+len("/files/"):])
	if err != nil || p == "" {
		d.errorPage(w, r, http.StatusNotFound, "There is no such file.")
		return
	}
	d.be.ServeArtifactFile(w, r, id, p)
}

func (d *Dashboard) artifactTarball(w http.ResponseWriter, r *http.Request) {
	if id, ok := d.artifactID(w, r); ok {
		d.be.ServeArtifactTarball(w, r, id)
	}
}
