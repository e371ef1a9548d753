package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
	"github.com/kiln-ci/kiln/tasks"
)

// deviceHistoryLength is how many of a device's latest changes
// GET /api/1.0/device/NAME/ shows.
const deviceHistoryLength = 50

var (
	// adminHealths are the healths an admin sets by hand: maintenance,
	// retired, and unknown to return a device to service until its next
	// health check. Health checks alone set good and bad.
	adminHealths = []schemas.DeviceHealth{schemas.HealthMaintenance, schemas.HealthRetired, schemas.HealthUnknown}
)

// deviceRoutes registers the devices under test endpoints (Kiln).
func (s *Server) deviceRoutes(r chi.Router) {
	r.Group(func(r chi.Router) {
		r.Use(s.requireWorker)
		r.Put("/worker/devices/", s.putWorkerDevices)
	})
	r.Group(func(r chi.Router) {
		r.Use(s.requireUserOrWorker)
		r.Get("/device/", s.listDevices)
		r.Get("/device/{name}/", s.getDevice)
	})
	r.Group(func(r chi.Router) {
		r.Use(s.requireUser)
		r.Post("/device/{name}/health/", s.setDeviceHealth)
		r.Post("/device/{name}/health-check/", s.requestHealthCheck)
	})
}

// putWorkerDevices replaces the list of devices the worker declares.
func (s *Server) putWorkerDevices(w http.ResponseWriter, r *http.Request) {
	wk := workerFrom(r.Context())
	const title = "Cannot declare devices"
	decl, ok := s.decodeDeclarations(w, r, title)
	if !ok {
		return
	}
	if ve := checkDeclarations(decl); len(ve) > 0 {
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: title,
			Detail: "invalid device declarations", ValidationErrors: ve})
		return
	}
	err := s.store.UpsertDevices(r.Context(), wk.ID, decl)
	switch {
	case errors.Is(err, store.ErrDeviceOwned):
		writeProblem(w, schemas.Problem{Status: http.StatusConflict, Title: title, Detail: err.Error(), Code: "device-owned"})
		return
	case err != nil:
		s.internal(w, err)
		return
	}
	s.log.Info().Str("worker", wk.Name).Int("devices", len(decl)).Msg("devices declared")
	s.kickScheduler()
	w.WriteHeader(http.StatusNoContent)
}

// decodeDeclarations reads the body of PUT worker/devices/: a JSON list of
// device declarations, with decodeBody's size limit and its strictness
// about unknown fields. It writes the problem itself and returns false when
// the body is unusable.
func (s *Server) decodeDeclarations(w http.ResponseWriter, r *http.Request, title string) ([]schemas.DeviceDeclaration, bool) {
	body, ok := s.readBody(w, r)
	if !ok {
		return nil, false
	}
	body = bytes.TrimSpace(body)
	if len(body) > 0 && body[0] != '[' {
		if !json.Valid(body) {
			var v any
			writeProblem(w, decodeProblem(json.Unmarshal(body, &v), title))
			return nil, false
		}
		body = nil
	}
	if len(body) == 0 {
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: title,
			Detail:           "the body must be a JSON list of device declarations ([] for none)",
			ValidationErrors: map[string][]string{"": {"must be a JSON list"}}})
		return nil, false
	}
	var raws []json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&raws); err != nil {
		writeProblem(w, decodeProblem(err, title))
		return nil, false
	}
	if dec.More() {
		problem(w, http.StatusBadRequest, "Malformed JSON", "unexpected data after the JSON list")
		return nil, false
	}
	out := make([]schemas.DeviceDeclaration, len(raws))
	ve := map[string][]string{}
	for i, raw := range raws {
		at := "/" + strconv.Itoa(i)
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(raw, &fields); err != nil || fields == nil {
			ve[at] = append(ve[at], "must be a JSON object")
			continue
		}
		for _, f := range unknownFields(fields, &out[i]) {
			ve[at+"/"+f] = append(ve[at+"/"+f], "unknown field")
		}
		var typ *json.UnmarshalTypeError
		if err := json.Unmarshal(raw, &out[i]); errors.As(err, &typ) {
			ptr := at + "/" + strings.ReplaceAll(typ.Field, ".", "/")
			ve[ptr] = append(ve[ptr], fmt.Sprintf("expected %s, got %s", typ.Type, typ.Value))
		} else if err != nil {
			ve[at] = append(ve[at], err.Error())
		}
	}
	if len(ve) > 0 {
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: title,
			Detail: "invalid device declarations", ValidationErrors: ve})
		return nil, false
	}
	return out, true
}

// checkDeclarations returns what is wrong with decl, by JSON pointer.
func checkDeclarations(decl []schemas.DeviceDeclaration) map[string][]string {
	ve := map[string][]string{}
	add := func(ptr, msg string) { ve[ptr] = append(ve[ptr], msg) }
	first := map[string]int{}
	for i, d := range decl {
		at := "/" + strconv.Itoa(i)
		switch j, seen := first[d.Name]; {
		case !tasks.ValidDeviceName(d.Name):
			add(at+"/name", tasks.DeviceNameRule)
		case seen:
			add(at+"/name", fmt.Sprintf("device %q is declared twice (also at /%d)", d.Name, j))
		default:
			first[d.Name] = i
		}
		if d.DeviceType == "" {
			add(at+"/device_type", "This field is required.")
		}
		for k, p := range d.Power {
			if !slices.Contains(tasks.PowerActions, p) {
				add(at+"/power/"+strconv.Itoa(k), fmt.Sprintf("unknown power action %q: must be on, off or reset", p))
			}
		}
		if u, err := url.Parse(d.Connection); err == nil && u.User != nil {
			if _, hasPassword := u.User.Password(); hasPassword {
				add(at+"/connection", "must not contain a password: secrets stay on the worker")
			}
		}
	}
	return ve
}

// deviceToWire is the JSON form of d, with its latest history when
// withHistory.
func (s *Server) deviceToWire(r *http.Request, d store.Device, withHistory bool) (schemas.Device, error) {
	out := d.Wire()
	if !withHistory {
		return out, nil
	}
	h, err := s.store.DeviceEvents(r.Context(), d.ID, deviceHistoryLength)
	if err != nil {
		return schemas.Device{}, err
	}
	out.History = h
	return out, nil
}

// listDevices lists the devices by name, optionally only those of a device
// type, a worker (by name) or a health.
func (s *Server) listDevices(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ds, err := s.store.Devices(r.Context())
	if err != nil {
		s.internal(w, err)
		return
	}
	out := make([]schemas.Device, 0, len(ds))
	for _, d := range ds {
		if (q.Has("device_type") && d.DeviceType != q.Get("device_type")) ||
			(q.Has("worker") && d.WorkerName != q.Get("worker")) ||
			(q.Has("health") && d.Health != q.Get("health")) {
			continue
		}
		out = append(out, d.Wire())
	}
	writeJSON(w, http.StatusOK, out)
}

func deviceNotFound(w http.ResponseWriter) {
	problem(w, http.StatusNotFound, "Error", "No Device matches the given query.")
}

// deviceFromPath returns the device named in the path, or answers 404.
func (s *Server) deviceFromPath(w http.ResponseWriter, r *http.Request) (store.Device, bool) {
	name := chi.URLParam(r, "name")
	if !tasks.ValidDeviceName(name) {
		deviceNotFound(w)
		return store.Device{}, false
	}
	d, err := s.store.DeviceByName(r.Context(), name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		deviceNotFound(w)
		return store.Device{}, false
	case err != nil:
		s.internal(w, err)
		return store.Device{}, false
	}
	return d, true
}

func (s *Server) getDevice(w http.ResponseWriter, r *http.Request) {
	d, ok := s.deviceFromPath(w, r)
	if !ok {
		return
	}
	s.writeDevice(w, r, d)
}

// writeDevice answers 200 with the device and its latest history.
func (s *Server) writeDevice(w http.ResponseWriter, r *http.Request, d store.Device) {
	out, err := s.deviceToWire(r, d, true)
	if err != nil {
		s.internal(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// setDeviceHealth is an admin taking a device out of service (maintenance,
// retired) or returning it (unknown).
func (s *Server) setDeviceHealth(w http.ResponseWriter, r *http.Request) {
	u := userFrom(r.Context())
	const title = "Cannot change device health"
	if !u.IsAdmin {
		forbidden(w, "admin-required", "You do not have permission to perform this action: only admins may change a device's health.")
		return
	}
	var in schemas.DeviceHealthChange
	if !s.decodeBody(w, r, &in, title) {
		return
	}
	if !slices.Contains(adminHealths, in.Health) {
		msg := "must be maintenance, retired or unknown (return to service)"
		if in.Health == schemas.HealthGood || in.Health == schemas.HealthBad {
			msg = "good and bad are set by health checks only; " + msg
		}
		writeProblem(w, schemas.Problem{Status: http.StatusBadRequest, Title: title, Detail: "health " + msg,
			ValidationErrors: map[string][]string{"/health": {msg}}})
		return
	}
	in.Reason = truncate(in.Reason, maxReasonBytes)
	name := chi.URLParam(r, "name")
	if !tasks.ValidDeviceName(name) {
		deviceNotFound(w)
		return
	}
	d, err := s.store.SetDeviceHealth(r.Context(), name, in.Health, in.Reason)
	switch {
	case errors.Is(err, store.ErrNotFound):
		deviceNotFound(w)
		return
	case err != nil:
		s.internal(w, err)
		return
	}
	s.log.Info().Str("device", d.Name).Str("health", d.Health).Str("user", u.Username).Str("reason", in.Reason).Msg("device health changed")
	s.kickScheduler()
	s.writeDevice(w, r, d)
}

// requestHealthCheck is an admin asking for a health check of a device
// now: the scheduler runs a verify on it before any other job (a device
// that already needs a special task keeps that one, which checks it too).
func (s *Server) requestHealthCheck(w http.ResponseWriter, r *http.Request) {
	u := userFrom(r.Context())
	if !u.IsAdmin {
		forbidden(w, "admin-required", "You do not have permission to perform this action: only admins may ask for a health check.")
		return
	}
	var in schemas.DeviceHealthCheck
	if r.ContentLength != 0 && !s.decodeBody(w, r, &in, "Cannot request a health check") {
		return
	}
	d, ok := s.deviceFromPath(w, r)
	if !ok {
		return
	}
	reason := "health check requested by " + u.Username
	if in.Reason != "" {
		reason += ": " + truncate(in.Reason, maxReasonBytes)
	}
	_, err := s.store.SetDeviceNeeds(r.Context(), d.ID, schemas.DeviceTaskVerify, reason)
	switch {
	case errors.Is(err, store.ErrConflict):
		problem(w, http.StatusConflict, "Cannot request a health check",
			fmt.Sprintf("device %s is %s: return it to service first (its return runs a health check)", d.Name, describeOutOfService(d)))
		return
	case err != nil:
		s.internal(w, err)
		return
	}
	s.log.Info().Str("device", d.Name).Str("user", u.Username).Msg("health check requested")
	s.kickScheduler()
	if d, err = s.store.DeviceByName(r.Context(), d.Name); err != nil {
		s.internal(w, err)
		return
	}
	s.writeDevice(w, r, d)
}

// describeOutOfService says why a device takes no health check.
func describeOutOfService(d store.Device) string {
	if !d.Declared {
		return "no longer declared by its worker"
	}
	return "in " + d.Health
}

// truncate cuts s to at most n bytes, on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
