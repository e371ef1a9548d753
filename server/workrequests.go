package server

import (
	"bytes"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-ci/kiln/bus"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
	"github.com/kiln-ci/kiln/tasks"
)

// Listing limits.
const (
	defaultPageSize = 10
	maxPageSize     = 1000
	maxOutputBytes  = 64 << 10
	maxReasonBytes  = 1 << 10
)

// writeWorkRequest answers 200 with the work request, its artifacts listed.
func (s *Server) writeWorkRequest(w http.ResponseWriter, r *http.Request, wr store.WorkRequest) {
	out := s.toWire(wr)
	ids, err := s.store.ArtifactIDsForWorkRequest(r.Context(), wr.ID)
	if err != nil {
		s.internal(w, err)
		return
	}
	out.Artifacts = ids
	writeJSON(w, http.StatusOK, out)
}

// toWire is the JSON form of wr, without its artifacts (see
// writeWorkRequest).
func (s *Server) toWire(wr store.WorkRequest) schemas.WorkRequest {
	out := schemas.WorkRequest{
		ID:                 wr.ID,
		URL:                fmt.Sprintf("/%s/%s/work-request/%d/", s.cfg.Scope, url.PathEscape(wr.Workspace), wr.ID),
		CreatedAt:          wr.CreatedAt.UTC(),
		Status:             schemas.Status(wr.Status),
		Result:             schemas.Result(wr.Result),
		TaskType:           wr.TaskType,
		TaskName:           wr.TaskName,
		TaskData:           json.RawMessage(wr.TaskData),
		PriorityBase:       wr.PriorityBase,
		PriorityAdjustment: wr.PriorityAdjustment,
		Artifacts:          []int64{},
		Workspace:          wr.Workspace,
		Scope:              s.cfg.Scope,
		Attempt:            wr.Attempt,
		Output:             wr.Output,
		Reason:             wr.Reason,
		ErrorType:          wr.ErrorType,
		KillPending:        wr.KillPending,
		WorkerLostRetries:  wr.WorkerLostRetries,
		TimeoutSeconds:     wr.TimeoutSeconds,
	}
	if wr.DynamicTaskData.Valid {
		out.DynamicTaskData = json.RawMessage(wr.DynamicTaskData.String)
	} else {
		out.DynamicTaskData = json.RawMessage("null")
	}
	t := func(n sql.NullTime) *time.Time {
		if !n.Valid {
			return nil
		}
		v := n.Time.UTC()
		return &v
	}
	i := func(valid bool, v int64) *int64 {
		if !valid {
			return nil
		}
		return &v
	}
	out.StartedAt = t(wr.StartedAt)
	out.CompletedAt = t(wr.CompletedAt)
	out.AssignedAt = t(wr.AssignedAt)
	out.DeadlineAt = t(wr.DeadlineAt)
	out.Worker = i(wr.WorkerID.Valid, wr.WorkerID.Int64)
	out.CreatedBy = i(wr.CreatedBy.Valid, wr.CreatedBy.Int64)
	out.AbortedBy = i(wr.AbortedBy.Valid, wr.AbortedBy.Int64)
	out.Supersedes = i(wr.Supersedes.Valid, wr.Supersedes.Int64)
	out.SupersededBy = i(wr.SupersededBy.Valid, wr.SupersededBy.Int64)
	if out.StartedAt != nil && out.CompletedAt != nil {
		d := int64(out.CompletedAt.Sub(*out.StartedAt).Seconds())
		out.Duration = &d
	}
	if wr.WaitingReason.Valid {
		out.WaitingReason = wr.WaitingReason.String
	} else if wr.Status == string(schemas.StatusPending) && wr.WorkerID.Valid {
		out.WaitingReason = "assigned; waiting for the worker to start it"
	} else if wr.Status == string(schemas.StatusPending) {
		out.WaitingReason = "waiting for the scheduler"
	}
	return out
}

func (s *Server) createWorkRequest(w http.ResponseWriter, r *http.Request) {
	u := userFrom(r.Context())
	var in schemas.WorkRequestCreate
	const title = "Cannot deserialize work request"
	if !s.decodeBody(w, r, &in, title) {
		return
	}
	switch {
	case in.TaskName == "":
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: title, Detail: "task_name is required",
			ValidationErrors: map[string][]string{"/task_name": {"This field is required."}}})
		return
	case len(in.TaskData) == 0 || in.TaskData[0] != '{':
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: title, Detail: "task_data must be a JSON object",
			ValidationErrors: map[string][]string{"/task_data": {"must be a JSON object"}}})
		return
	}
	if !emptyObject(in.EventReactions) {
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: "Invalid event_reactions",
			Detail:           "Kiln does not support event reactions yet",
			ValidationErrors: map[string][]string{"/event_reactions": {"not supported"}}})
		return
	}
	prio := 0
	if in.PriorityBase != nil {
		if !u.IsAdmin {
			problem(w, http.StatusForbidden, "You are not permitted to set priority_base", "only admins may set a work request's base priority")
			return
		}
		prio = *in.PriorityBase
	}
	task, err := s.cfg.Registry.Get(in.TaskName)
	if err != nil {
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest,
			Title:            "Cannot create work request: task name is not registered",
			Detail:           fmt.Sprintf("Task name: %q. Registered task names: %s", in.TaskName, strings.Join(s.cfg.Registry.Names(), ", ")),
			ValidationErrors: map[string][]string{"/task_name": {"unknown task " + strconv.Quote(in.TaskName)}}})
		return
	}
	if schemas.IsDeviceTask(in.TaskName) {
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest,
			Title:            "Cannot create work request: device special task",
			Detail:           fmt.Sprintf("%s is a device special task: the scheduler runs it (ask for a health check with POST /api/1.0/device/NAME/health-check/)", in.TaskName),
			ValidationErrors: map[string][]string{"/task_name": {"device special tasks are created by the scheduler"}}})
		return
	}
	if err := s.cfg.Registry.Validate(in.TaskName, in.TaskData); err != nil {
		var ve *tasks.ValidationError
		if errors.As(err, &ve) {
			p := schemas.Problem{Status: http.StatusBadRequest, Title: "Cannot create work request: invalid task data",
				Detail: ve.Error(), ValidationErrors: map[string][]string{}}
			for _, vp := range ve.Problems {
				k := "/task_data" + vp.Pointer
				p.ValidationErrors[k] = append(p.ValidationErrors[k], vp.Message)
			}
			writeProblem(w, p)
			return
		}
		problem(w, http.StatusInternalServerError, "Error", err.Error())
		return
	}
	req, err := task.Requirements(in.TaskData)
	if err != nil {
		problem(w, http.StatusBadRequest, "Cannot create work request: invalid task data", err.Error())
		return
	}
	if !s.checkInputs(w, r, task, in.TaskData) {
		return
	}
	ws := in.Workspace
	if ws == "" {
		ws = s.cfg.Workspace
	}
	if ws != s.cfg.Workspace {
		// Kiln has one workspace per server so far; refuse others as
		// debusine refuses a workspace that does not exist.
		problem(w, http.StatusNotFound, "Workspace not found",
			fmt.Sprintf("Workspace %s not found in scope %s", ws, s.cfg.Scope))
		return
	}
	wr, err := s.store.CreateWorkRequest(r.Context(), store.NewWorkRequest{
		TaskName: in.TaskName, TaskType: string(task.Type()), TaskData: compactJSON(in.TaskData),
		Workspace: ws, PriorityBase: prio, CreatedBy: u.ID, Shape: tasks.ShapeKey(in.TaskName, req),
		TimeoutSeconds: s.timeoutFor(in.TaskName, in.TaskData),
	})
	if err != nil {
		s.internal(w, err)
		return
	}
	s.metrics.created.WithLabelValues(wr.TaskName).Inc()
	s.log.Info().Int64("work_request", wr.ID).Str("task", wr.TaskName).Str("user", u.Username).Msg("work request created")
	s.kickScheduler()
	s.writeWorkRequest(w, r, wr)
}

// checkInputs answers 400 and returns false when the task data names an
// input artifact that does not exist or is of a category the task does not
// take there: better said at once than by a worker after the request waited.
func (s *Server) checkInputs(w http.ResponseWriter, r *http.Request, task tasks.Task, data json.RawMessage) bool {
	t, ok := task.(tasks.Inputs)
	if !ok {
		return true
	}
	ins, err := t.InputArtifacts(data)
	if err != nil {
		problem(w, http.StatusBadRequest, "Cannot create work request: invalid task data", err.Error())
		return false
	}
	verrs := map[string][]string{}
	var details []string
	for _, in := range ins {
		a, err := s.store.ArtifactWithoutFiles(r.Context(), in.ID)
		switch {
		case errors.Is(err, store.ErrNotFound):
			err = fmt.Errorf("artifact %d does not exist", in.ID)
		case err != nil:
			s.internal(w, err)
			return false
		default:
			err = in.CheckCategory(a.Category)
		}
		if err != nil {
			verrs["/task_data"+in.Pointer] = append(verrs["/task_data"+in.Pointer], err.Error())
			details = append(details, in.Field()+": "+err.Error())
		}
	}
	if len(verrs) == 0 {
		return true
	}
	writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: "Cannot create work request: invalid input artifacts",
		Detail: strings.Join(details, "; "), ValidationErrors: verrs})
	return false
}

// timeoutFor is the run-time limit of a new request in whole seconds: the
// task data's "timeout", else the task's default, else the server's.
func (s *Server) timeoutFor(task string, data json.RawMessage) int {
	var d struct {
		Timeout float64 `json:"timeout"`
	}
	if json.Unmarshal(data, &d) == nil && d.Timeout > 0 {
		return max(int(math.Ceil(d.Timeout)), 1)
	}
	if t, ok := s.cfg.TaskTimeouts[task]; ok && t > 0 {
		return max(int(t/time.Second), 1)
	}
	return max(int(s.cfg.TaskTimeout/time.Second), 1)
}

// emptyObject reports whether raw is absent, null or an object without keys.
func emptyObject(raw json.RawMessage) bool {
	if len(raw) == 0 {
		return true
	}
	var m map[string]json.RawMessage
	return json.Unmarshal(raw, &m) == nil && len(m) == 0
}

func compactJSON(b json.RawMessage) string {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return string(b)
	}
	return buf.String()
}

func (s *Server) getWorkRequest(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	wr, err := s.store.WorkRequest(r.Context(), id)
	if err != nil {
		s.storeError(w, err)
		return
	}
	if !visible(r, wr) {
		s.storeError(w, store.ErrNotFound)
		return
	}
	s.writeWorkRequest(w, r, wr)
}

// visible says whether the caller may see request wr: users see every
// request; a worker only those assigned to it (any attempt), as it may
// only act on its own.
func visible(r *http.Request, wr store.WorkRequest) bool {
	if userFrom(r.Context()) != nil {
		return true
	}
	wk := workerFrom(r.Context())
	return wk != nil && wr.WorkerID.Valid && wr.WorkerID.Int64 == wk.ID
}

// listWorkRequests pages newest first with an opaque cursor; next and
// previous are absolute URLs, as the debusine client follows them verbatim.
func (s *Server) listWorkRequests(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := defaultPageSize
	for _, key := range []string{"limit", "page_size"} {
		if v := q.Get(key); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: "Invalid query",
					Detail: key + " must be a positive integer", ValidationErrors: map[string][]string{key: {"must be a positive integer"}}})
				return
			}
			limit = min(n, maxPageSize)
		}
	}
	f := store.ListFilter{Limit: limit + 1, Status: q.Get("status"), TaskName: q.Get("task_name")}
	switch schemas.Status(f.Status) {
	case "", schemas.StatusPending, schemas.StatusRunning, schemas.StatusCompleted, schemas.StatusAborted, schemas.StatusBlocked:
	default:
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: "Invalid query",
			Detail:           "status must be pending, running, completed, aborted or blocked",
			ValidationErrors: map[string][]string{"status": {"unknown status " + strconv.Quote(f.Status)}}})
		return
	}
	if v := q.Get("worker"); v != "" {
		var err error
		if f.WorkerID, err = strconv.ParseInt(v, 10, 64); err != nil || f.WorkerID < 1 {
			writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: "Invalid query",
				Detail: "worker must be a worker id", ValidationErrors: map[string][]string{"worker": {"must be a positive integer"}}})
			return
		}
	}
	if userFrom(r.Context()) == nil {
		if wk := workerFrom(r.Context()); wk != nil {
			// A worker lists its own requests only.
			if f.WorkerID != 0 && f.WorkerID != wk.ID {
				f.WorkerID = -1
			} else {
				f.WorkerID = wk.ID
			}
		}
	}
	back := false
	if c := q.Get("cursor"); c != "" {
		dir, id, err := decodeCursor(c)
		if err != nil {
			problem(w, http.StatusBadRequest, "Invalid cursor", err.Error())
			return
		}
		if dir == 'b' {
			f.BeforeID = id
		} else {
			f.AfterID, back = id, true
		}
	}
	rows, err := s.store.ListWorkRequests(r.Context(), f)
	if err != nil {
		s.internal(w, err)
		return
	}
	more := len(rows) > limit
	if more {
		rows = rows[:limit]
	}
	if back {
		for i, j := 0, len(rows)-1; i < j; i, j = i+1, j-1 {
			rows[i], rows[j] = rows[j], rows[i]
		}
	}
	page := schemas.Page[schemas.WorkRequest]{Results: make([]schemas.WorkRequest, 0, len(rows))}
	ids := make([]int64, len(rows))
	for i, wr := range rows {
		ids[i] = wr.ID
	}
	artifacts, err := s.store.ArtifactIDsForWorkRequests(r.Context(), ids)
	if err != nil {
		s.internal(w, err)
		return
	}
	for _, wr := range rows {
		out := s.toWire(wr)
		out.Artifacts = append([]int64{}, artifacts[wr.ID]...)
		page.Results = append(page.Results, out)
	}
	if len(rows) > 0 {
		hasNext := more || back
		hasPrev := (!back && f.BeforeID > 0) || (back && more)
		if hasNext {
			u := s.pageURL(r, "b", rows[len(rows)-1].ID)
			page.Next = &u
		}
		if hasPrev {
			u := s.pageURL(r, "a", rows[0].ID)
			page.Previous = &u
		}
	}
	writeJSON(w, http.StatusOK, page)
}

func (s *Server) pageURL(r *http.Request, dir string, id int64) string {
	q := r.URL.Query()
	q.Set("cursor", base64.RawURLEncoding.EncodeToString([]byte(dir+strconv.FormatInt(id, 10))))
	return s.baseURL(r) + r.URL.Path + "?" + q.Encode()
}

func decodeCursor(c string) (byte, int64, error) {
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(raw) < 2 || (raw[0] != 'a' && raw[0] != 'b') {
		return 0, 0, errors.New("the cursor is not one this server made")
	}
	id, err := strconv.ParseInt(string(raw[1:]), 10, 64)
	if err != nil {
		return 0, 0, errors.New("the cursor is not one this server made")
	}
	return raw[0], id, nil
}

// baseURL is PublicURL, or the scheme and host the request came to.
func (s *Server) baseURL(r *http.Request) string {
	if s.cfg.PublicURL != "" {
		return strings.TrimRight(s.cfg.PublicURL, "/")
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

func (s *Server) mayManage(u *store.User, wr store.WorkRequest) bool {
	return u.IsAdmin || (wr.CreatedBy.Valid && wr.CreatedBy.Int64 == u.ID)
}

func (s *Server) patchWorkRequest(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	u := userFrom(r.Context())
	var in schemas.WorkRequestPatch
	if !s.decodeBody(w, r, &in, "Cannot deserialize work request update") {
		return
	}
	wr, err := s.store.WorkRequest(r.Context(), id)
	if err != nil {
		s.storeError(w, err)
		return
	}
	if in.PriorityAdjustment != nil {
		adj := *in.PriorityAdjustment
		if (adj > 0 && !u.IsAdmin) || !s.mayManage(u, wr) {
			problem(w, http.StatusForbidden, "You are not permitted to set priority adjustments",
				"admins may set any adjustment; the creator of a request may lower its priority (adjustment <= 0)")
			return
		}
		if err := s.store.SetPriorityAdjustment(r.Context(), id, adj); err != nil {
			s.storeError(w, err)
			return
		}
		s.kickScheduler()
		if wr, err = s.store.WorkRequest(r.Context(), id); err != nil {
			s.storeError(w, err)
			return
		}
	}
	s.writeWorkRequest(w, r, wr)
}

// managed reads an action's empty body and the request it acts on, and
// checks that the user may manage it (its creator or an admin).
func (s *Server) managed(w http.ResponseWriter, r *http.Request, action string) (int64, *store.User, bool) {
	id, ok := pathID(w, r)
	if !ok || !s.decodeBody(w, r, &struct{}{}, "Cannot "+action+" work request") {
		return 0, nil, false
	}
	u := userFrom(r.Context())
	wr, err := s.store.WorkRequest(r.Context(), id)
	if err != nil {
		s.storeError(w, err)
		return 0, nil, false
	}
	if !s.mayManage(u, wr) {
		problem(w, http.StatusForbidden, "You are not permitted to "+action+" this work request",
			"only its creator and admins may "+action+" it")
		return 0, nil, false
	}
	return id, u, true
}

func (s *Server) abortWorkRequest(w http.ResponseWriter, r *http.Request) {
	id, u, ok := s.managed(w, r, "abort")
	if !ok {
		return
	}
	before, err := s.store.Abort(r.Context(), id, u.ID, time.Now().Add(s.cfg.KillConfirmTimeout))
	if errors.Is(err, store.ErrConflict) {
		problem(w, http.StatusBadRequest, "Cannot abort work request", "Only pending, blocked, or running tasks can be aborted")
		return
	}
	if err != nil {
		s.storeError(w, err)
		return
	}
	// The answer shows the request as the abort left it (with kill_pending
	// for a running one), read before the worker is told and may confirm.
	aborted, err := s.store.WorkRequest(r.Context(), id)
	if err != nil {
		s.storeError(w, err)
		return
	}
	if before.WorkerID.Valid {
		s.sendControl(r.Context(), before.WorkerID.Int64,
			bus.Control{Type: bus.ControlAbort, WorkRequestID: id, Attempt: before.Attempt, Reason: "aborted"},
			fmt.Sprintf("abort-%d-%d", id, before.Attempt))
	}
	s.log.Info().Int64("work_request", id).Str("user", u.Username).Msg("work request aborted")
	s.kickScheduler()
	s.writeWorkRequest(w, r, aborted)
}

func (s *Server) retryWorkRequest(w http.ResponseWriter, r *http.Request) {
	id, u, ok := s.managed(w, r, "retry")
	if !ok {
		return
	}
	nwr, err := s.store.Retry(r.Context(), id, u.ID)
	if errors.Is(err, store.ErrConflict) {
		detail := "Only aborted or failed tasks can be retried"
		if old, gerr := s.store.WorkRequest(r.Context(), id); gerr == nil && old.SupersededBy.Valid {
			detail = fmt.Sprintf("Cannot retry old superseded tasks (retried as %d)", old.SupersededBy.Int64)
		}
		problem(w, http.StatusBadRequest, "Cannot retry work request", detail)
		return
	}
	if err != nil {
		s.storeError(w, err)
		return
	}
	s.log.Info().Int64("work_request", nwr.ID).Int64("supersedes", id).Msg("work request retried")
	s.kickScheduler()
	s.writeWorkRequest(w, r, nwr)
}

func (s *Server) storeError(w http.ResponseWriter, err error) {
	if errors.Is(err, store.ErrNotFound) {
		problem(w, http.StatusNotFound, "Error", "No WorkRequest matches the given query.")
		return
	}
	s.internal(w, err)
}

func (s *Server) internal(w http.ResponseWriter, err error) {
	if store.Unavailable(err) {
		s.log.Warn().Err(err).Msg("database unavailable")
		dbUnavailable(w)
		return
	}
	s.log.Error().Err(err).Msg("internal error")
	problem(w, http.StatusInternalServerError, "Internal server error", "see the server log")
}

// retryAfterSeconds is what a client is told to wait while the database is
// away.
const retryAfterSeconds = "5"

// dbUnavailable answers 503 with Retry-After: the database is away, and
// the same request will work once it is back.
func dbUnavailable(w http.ResponseWriter) {
	w.Header().Set("Retry-After", retryAfterSeconds)
	problem(w, http.StatusServiceUnavailable, "Database unavailable", "the database cannot be reached; try again later")
}
