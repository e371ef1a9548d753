package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/santhosh-tekuri/jsonschema/v5"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/kiln-ci/kiln/bus"
	"github.com/kiln-ci/kiln/schemas"
)

// openAPIFile is the API reference that the router is checked against. Its
// paths are complete (they include /api/1.0), so they compare directly with
// chi's route patterns.
const openAPIFile = "../docs/openapi.yaml"

// openAPIMethods are the operation keys of an OpenAPI 3.1 path item.
var openAPIMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

func loadOpenAPI(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile(openAPIFile)
	require.NoError(t, err)
	var doc map[string]any
	require.NoError(t, yaml.Unmarshal(b, &doc))
	require.Equal(t, "3.1.0", doc["openapi"], "docs/openapi.yaml must be OpenAPI 3.1")
	return doc
}

// obj walks doc along keys, failing when a step is not an object.
func obj(t *testing.T, doc any, keys ...string) map[string]any {
	t.Helper()
	cur := doc
	for i, k := range keys {
		m, ok := cur.(map[string]any)
		require.Truef(t, ok, "%s is not an object", strings.Join(keys[:i], "."))
		cur, ok = m[k]
		require.Truef(t, ok, "%s is missing", strings.Join(keys[:i+1], "."))
	}
	m, ok := cur.(map[string]any)
	require.Truef(t, ok, "%s is not an object", strings.Join(keys, "."))
	return m
}

// documentedOperations lists "METHOD /path" for every operation in doc.
func documentedOperations(t *testing.T, doc map[string]any) map[string]bool {
	t.Helper()
	ops := map[string]bool{}
	for path, item := range obj(t, doc, "paths") {
		m, ok := item.(map[string]any)
		require.Truef(t, ok, "path %s is not an object", path)
		for _, method := range openAPIMethods {
			if _, ok := m[method]; ok {
				ops[strings.ToUpper(method)+" "+path] = true
			}
		}
	}
	return ops
}

var chiParam = regexp.MustCompile(`\{([^}:]+)(?::[^}]*)?\}`)

// openAPIPathOf turns a chi route pattern into an OpenAPI path: {id:[0-9]+}
// becomes {id}.
func openAPIPathOf(route string) string { return chiParam.ReplaceAllString(route, "{$1}") }

// routerOperations lists "METHOD /path" for every route the router serves,
// and separately the paths registered for any method (chi's Handle), which
// chi.Walk reports once per method.
func routerOperations(t *testing.T, h http.Handler) (ops, anyMethod map[string]bool) {
	t.Helper()
	routes, ok := h.(chi.Routes)
	require.True(t, ok, "Handler() must return a chi router")
	ops = map[string]bool{}
	err := chi.Walk(routes, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		require.NotContainsf(t, route, "*", "wildcard route %s cannot be documented", route)
		ops[method+" "+openAPIPathOf(route)] = true
		return nil
	})
	require.NoError(t, err)
	anyMethod = map[string]bool{}
	var walk func(r chi.Routes, prefix string)
	walk = func(r chi.Routes, prefix string) {
		for _, rt := range r.Routes() {
			if rt.SubRoutes != nil {
				walk(rt.SubRoutes, prefix+strings.TrimSuffix(rt.Pattern, "/*"))
				continue
			}
			if rt.Handlers["*"] != nil {
				anyMethod[openAPIPathOf(prefix+rt.Pattern)] = true
			}
		}
	}
	walk(routes, "")
	return ops, anyMethod
}

func newOpenAPITestServer(t *testing.T) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := New(ctx, Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", NATSListen: "127.0.0.1:0",
		MaxBodyBytes: 64 << 10,
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestOpenAPIRoutesAreDocumented checks docs/openapi.yaml against the router
// both ways: every route is documented and every documented operation is
// served.
func TestOpenAPIRoutesAreDocumented(t *testing.T) {
	doc := loadOpenAPI(t)
	documented := documentedOperations(t, doc)
	s := newOpenAPITestServer(t)
	served, anyMethod := routerOperations(t, s.Handler())
	require.NotEmpty(t, served)

	documentedPaths := map[string]bool{}
	for op := range documented {
		_, path, _ := strings.Cut(op, " ")
		documentedPaths[path] = true
	}
	for _, op := range sortedKeys(served) {
		_, path, _ := strings.Cut(op, " ")
		if anyMethod[path] {
			require.Truef(t, documentedPaths[path], "route %s (any method) is not documented in %s", path, openAPIFile)
			continue
		}
		require.Truef(t, documented[op], "route %s is not documented in %s", op, openAPIFile)
	}
	for _, op := range sortedKeys(documented) {
		_, path, _ := strings.Cut(op, " ")
		require.Truef(t, served[op] || anyMethod[path], "%s documents %s, which the router does not serve", openAPIFile, op)
	}

	// Each API operation states its auth, takes X-Debusine-Scope and has a
	// success response.
	for path, item := range obj(t, doc, "paths") {
		for _, method := range openAPIMethods {
			op, ok := item.(map[string]any)[method].(map[string]any)
			if !ok {
				continue
			}
			name := strings.ToUpper(method) + " " + path
			require.Containsf(t, op, "security", "%s: no security", name)
			success := false
			for code := range obj(t, op, "responses") {
				success = success || strings.HasPrefix(code, "2")
			}
			require.Truef(t, success, "%s: no 2xx response", name)
			if !strings.HasPrefix(path, "/api/1.0/") {
				continue
			}
			require.Truef(t, strings.HasSuffix(path, "/"), "%s: API paths end with a slash", name)
			params, _ := item.(map[string]any)["parameters"].([]any)
			require.Containsf(t, params, map[string]any{"$ref": "#/components/parameters/Scope"}, "%s: no X-Debusine-Scope", name)
		}
	}
}

// jsonFields returns the JSON names of a struct's fields and which of them
// are omitempty.
func jsonFields(v any) (names []string, omitempty map[string]bool) {
	omitempty = map[string]bool{}
	tp := reflect.TypeOf(v)
	for i := range tp.NumField() {
		f := tp.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		names = append(names, name)
		omitempty[name] = slices.Contains(strings.Split(opts, ","), "omitempty")
	}
	sort.Strings(names)
	return names, omitempty
}

func stringList(t *testing.T, v any) []string {
	t.Helper()
	if v == nil {
		return nil
	}
	l, ok := v.([]any)
	require.Truef(t, ok, "%v is not a list", v)
	out := make([]string, 0, len(l))
	for _, x := range l {
		out = append(out, x.(string))
	}
	sort.Strings(out)
	return out
}

// TestOpenAPISchemasMatchWireTypes checks that each component schema has
// exactly the JSON fields of its wire type: responses require the fields that
// are always present, request bodies reject unknown fields.
func TestOpenAPISchemasMatchWireTypes(t *testing.T) {
	doc := loadOpenAPI(t)
	cases := []struct {
		schema  string
		wire    any
		request bool
	}{
		{"WorkRequest", schemas.WorkRequest{}, false},
		{"WorkRequestCreate", schemas.WorkRequestCreate{}, true},
		{"WorkRequestPatch", schemas.WorkRequestPatch{}, true},
		{"WorkRequestStart", schemas.WorkRequestStart{}, true},
		{"WorkRequestCompleted", schemas.WorkRequestCompleted{}, true},
		{"Device", schemas.Device{}, false},
		{"DeviceEvent", schemas.DeviceEvent{}, false},
		{"DeviceDeclaration", schemas.DeviceDeclaration{}, true},
		{"DeviceHealthChange", schemas.DeviceHealthChange{}, true},
		{"DeviceHealthCheck", schemas.DeviceHealthCheck{}, true},
		{"Page", schemas.Page[schemas.WorkRequest]{}, false},
		{"Worker", schemas.Worker{}, false},
		{"WorkerRegister", schemas.WorkerRegister{}, true},
		{"WorkerConfig", schemas.WorkerConfig{}, false},
		{"WhoAmI", schemas.WhoAmI{}, false},
		{"Problem", schemas.Problem{}, false},
		{"Assignment", schemas.Assignment{}, false},
		{"Heartbeat", schemas.Heartbeat{}, false},
		{"Control", bus.Control{}, false},
		{"WorkRequestKilled", schemas.WorkRequestKilled{}, true},
		{"WorkRequestAbandoned", schemas.WorkRequestAbandoned{}, true},
		{"LogChunk", schemas.LogChunk{}, false},
		{"LogEnd", schemas.LogEnd{}, false},
		{"Artifact", schemas.Artifact{}, false},
		{"ArtifactFile", schemas.ArtifactFile{}, false},
		{"ArtifactCreate", schemas.ArtifactCreate{}, true},
		{"ArtifactFileCreate", schemas.ArtifactFileCreate{}, true},
		{"ArtifactRelation", schemas.ArtifactRelation{}, false},
		{"ArtifactRelationCreate", schemas.ArtifactRelationCreate{}, true},
	}
	for _, tc := range cases {
		t.Run(tc.schema, func(t *testing.T) {
			sch := obj(t, doc, "components", "schemas", tc.schema)
			names, omitempty := jsonFields(tc.wire)
			props := obj(t, sch, "properties")
			documented := make([]string, 0, len(props))
			for k := range props {
				documented = append(documented, k)
			}
			sort.Strings(documented)
			require.Equal(t, names, documented, "properties of %s must be the JSON fields of %T", tc.schema, tc.wire)
			if tc.request {
				require.Equal(t, false, sch["additionalProperties"], "%s: unknown fields are rejected", tc.schema)
				return
			}
			var always []string
			for _, n := range names {
				if !omitempty[n] {
					always = append(always, n)
				}
			}
			require.Equal(t, always, stringList(t, sch["required"]), "%s: required must be the fields that are never omitted", tc.schema)
		})
	}
}

// jsonRoundTrip normalises a YAML- or JSON-decoded value to what
// encoding/json makes of it.
func jsonRoundTrip(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	var out any
	require.NoError(t, json.Unmarshal(b, &out))
	return out
}

// TestOpenAPINoopTaskDataIsTheTaskSchema checks that the documented noop
// task_data schema is the one the server validates with.
func TestOpenAPINoopTaskDataIsTheTaskSchema(t *testing.T) {
	doc := loadOpenAPI(t)
	raw, err := schemas.TaskSchema("noop")
	require.NoError(t, err)
	var embedded any
	require.NoError(t, json.Unmarshal(raw, &embedded))
	require.Equal(t, embedded, jsonRoundTrip(t, obj(t, doc, "components", "schemas", "NoopTaskData")))
}

// conformance sends requests to a running server and checks each answer
// against docs/openapi.yaml: the status code is documented for the
// operation, and the body has a documented content type and matches its
// schema (or is empty when none is documented).
type conformance struct {
	t       *testing.T
	base    string
	doc     map[string]any
	comp    *jsonschema.Compiler
	schemas map[string]*jsonschema.Schema
}

const openAPIResource = "file:///openapi.json"

func newConformance(t *testing.T, base string) *conformance {
	doc := loadOpenAPI(t)
	b, err := json.Marshal(doc)
	require.NoError(t, err)
	c := jsonschema.NewCompiler()
	c.Draft = jsonschema.Draft2020
	require.NoError(t, c.AddResource(openAPIResource, bytes.NewReader(b)))
	return &conformance{t: t, base: base, doc: doc, comp: c, schemas: map[string]*jsonschema.Schema{}}
}

// pointerToken escapes one JSON pointer token for use in a URI fragment.
func pointerToken(s string) string {
	s = strings.ReplaceAll(s, "~", "~0")
	s = strings.ReplaceAll(s, "/", "~1")
	return strings.NewReplacer("+", "%2B", "{", "%7B", "}", "%7D").Replace(s)
}

func (k *conformance) schema(ptr string) *jsonschema.Schema {
	k.t.Helper()
	if s, ok := k.schemas[ptr]; ok {
		return s
	}
	s, err := k.comp.Compile(openAPIResource + "#" + ptr)
	require.NoError(k.t, err, "compile %s", ptr)
	k.schemas[ptr] = s
	return s
}

// do sends method to path (an instance of the documented specPath) and
// checks the answer. hdr holds extra header name/value pairs.
func (k *conformance) do(method, specPath, path, token, body string, hdr ...string) (int, []byte) {
	t := k.t
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, k.base+path, rd)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Token", token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	name := method + " " + path
	code := strconv.Itoa(resp.StatusCode)

	op := obj(t, k.doc, "paths", specPath, strings.ToLower(method))
	responses := obj(t, op, "responses")
	r, ok := responses[code].(map[string]any)
	require.Truef(t, ok, "%s answered %s, which %s does not document for %s %s; body: %s",
		name, code, openAPIFile, method, specPath, got)
	ptr := "/paths/" + pointerToken(specPath) + "/" + strings.ToLower(method) + "/responses/" + code
	if ref, ok := r["$ref"].(string); ok {
		// A shared response: #/components/responses/NAME (names need no escaping).
		ptr = strings.TrimPrefix(ref, "#")
		r = obj(t, k.doc, strings.Split(strings.TrimPrefix(ptr, "/"), "/")...)
	}
	content, hasContent := r["content"].(map[string]any)
	if !hasContent {
		require.Emptyf(t, got, "%s %s: documented without a body", name, code)
		return resp.StatusCode, got
	}
	ct, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	require.NoErrorf(t, err, "%s %s: Content-Type %q", name, code, resp.Header.Get("Content-Type"))
	require.Containsf(t, content, ct, "%s %s: Content-Type %s is not documented", name, code, ct)
	if ct == schemas.ProblemContentType {
		require.Equal(t, schemas.ProblemContentType, resp.Header.Get("Content-Type"), "%s: problem content type has no parameters", name)
	}
	if !strings.HasSuffix(ct, "json") {
		require.NotEmptyf(t, got, "%s %s: empty body", name, code)
		return resp.StatusCode, got
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(got))
	dec.UseNumber()
	require.NoErrorf(t, dec.Decode(&v), "%s %s: body is not JSON: %s", name, code, got)
	sch := k.schema(ptr + "/content/" + pointerToken(ct) + "/schema")
	require.NoErrorf(t, sch.Validate(v), "%s %s: body does not match the documented schema: %s", name, code, got)
	return resp.StatusCode, got
}

// TestOpenAPIResponsesConform drives a real server through the work request
// and worker protocol and checks every answer against the document.
func TestOpenAPIResponsesConform(t *testing.T) {
	s := newOpenAPITestServer(t)
	k := newConformance(t, s.URL())
	ctx := context.Background()
	alice, err := s.Store().CreateUser(ctx, "alice", "alice@example.org", false)
	require.NoError(t, err)
	user, err := s.Store().CreateUserToken(ctx, alice.ID, "openapi test")
	require.NoError(t, err)
	worker := strings.Repeat("w0rker-", 6)

	const (
		whoami    = "/api/1.0/whoami/"
		wrs       = "/api/1.0/work-request/"
		wr        = "/api/1.0/work-request/{id}/"
		next      = "/api/1.0/work-request/get-next-for-worker/"
		abort     = "/api/1.0/work-request/{id}/abort/"
		retry     = "/api/1.0/work-request/{id}/retry/"
		start     = "/api/1.0/work-request/{id}/start/"
		completed = "/api/1.0/work-request/{id}/completed/"
		workers   = "/api/1.0/worker/"
		register  = "/api/1.0/worker/register/"
		metadata  = "/api/1.0/worker/dynamic-metadata/"
		config    = "/api/1.0/worker/config/"
	)
	expect := func(want int, method, specPath, path, token, body string, hdr ...string) []byte {
		t.Helper()
		code, got := k.do(method, specPath, path, token, body, hdr...)
		require.Equalf(t, want, code, "%s %s: %s", method, path, got)
		return got
	}
	decode := func(b []byte, v any) {
		t.Helper()
		require.NoError(t, json.Unmarshal(b, v))
	}

	expect(200, "GET", whoami, whoami, "", "")
	expect(200, "GET", whoami, whoami, user, "")
	expect(200, "GET", whoami, whoami, "not-a-token", "")

	// Registration, then a worker that is not enabled yet.
	reg := `{"token":"` + worker + `","fqdn":"builder-1.example.org"}`
	expect(201, "POST", register, register, "", reg)
	expect(409, "POST", register, register, "", reg)
	expect(400, "POST", register, register, "", `{"token":"short","fqdn":"-"}`)
	expect(403, "POST", register, register, "unknown-activation", `{"token":"`+strings.Repeat("a", 40)+`","fqdn":"b"}`)
	expect(200, "GET", whoami, whoami, worker, "")
	expect(403, "GET", config, config, worker, "")
	expect(403, "PUT", metadata, metadata, worker, `{}`)
	expect(403, "GET", wrs, wrs, worker, "")

	// Work requests as a user.
	expect(403, "POST", wrs, wrs, "", `{}`)
	expect(403, "POST", wrs, wrs, worker, `{}`)
	expect(400, "POST", wrs, wrs, user, `{"task_name":"noop","task_data":{},"colour":"red"}`)
	expect(400, "POST", wrs, wrs, user, `{"task_name":"noop","task_data":{"result":"yes"}}`)
	expect(400, "POST", wrs, wrs, user, `{"task_name":"nope","task_data":{}}`)
	expect(400, "POST", wrs, wrs, user, `{"task_name":`)
	expect(403, "POST", wrs, wrs, user, `{"task_name":"noop","task_data":{},"priority_base":5}`)
	expect(413, "POST", wrs, wrs, user, `{"task_name":"noop","task_data":{},"workspace":"`+strings.Repeat("x", 65<<10)+`"}`)
	expect(404, "POST", wrs, wrs, user, `{"task_name":"noop","task_data":{}}`, "X-Debusine-Scope", "elsewhere")
	var first schemas.WorkRequest
	decode(expect(200, "POST", wrs, wrs, user, `{"task_name":"noop","task_data":{"result":true}}`,
		"X-Debusine-Scope", "debusine"), &first)
	require.Equal(t, schemas.StatusPending, first.Status)
	id1 := "/api/1.0/work-request/" + strconv.FormatInt(first.ID, 10) + "/"
	expect(200, "GET", wr, id1, user, "")
	expect(404, "GET", wr, "/api/1.0/work-request/999999/", user, "")
	expect(404, "GET", wr, "/api/1.0/work-request/nine/", user, "")
	expect(200, "PATCH", wr, id1, user, `{"priority_adjustment":-1}`)
	expect(403, "PATCH", wr, id1, user, `{"priority_adjustment":1}`)
	expect(400, "PATCH", wr, id1, user, `{"priority":1}`)
	expect(200, "GET", workers, workers, user, "")
	expect(403, "GET", workers, workers, "", "")

	var second schemas.WorkRequest
	decode(expect(200, "POST", wrs, wrs, user, `{"task_name":"noop","task_data":{"sleep_seconds":60}}`), &second)
	id2 := "/api/1.0/work-request/" + strconv.FormatInt(second.ID, 10) + "/"
	var page schemas.Page[schemas.WorkRequest]
	decode(expect(200, "GET", wrs, wrs+"?limit=1", user, ""), &page)
	require.Nil(t, page.Count)
	require.Len(t, page.Results, 1)
	require.Equal(t, second.ID, page.Results[0].ID, "newest first")
	require.NotNil(t, page.Next)
	require.True(t, strings.HasPrefix(*page.Next, s.URL()+wrs+"?"), "next is absolute: %s", *page.Next)
	decode(expect(200, "GET", wrs, strings.TrimPrefix(*page.Next, s.URL()), user, ""), &page)
	require.Equal(t, first.ID, page.Results[0].ID)
	require.NotNil(t, page.Previous)
	expect(200, "GET", wrs, wrs+"?status=pending&task_name=noop&page_size=5", user, "")
	expect(400, "GET", wrs, wrs+"?limit=0", user, "")
	expect(400, "GET", wrs, wrs+"?cursor=bogus", user, "")

	expect(400, "POST", abort, id2+"abort/", user, `{"why":"no"}`)
	expect(200, "POST", abort, id2+"abort/", user, "")
	expect(400, "POST", abort, id2+"abort/", user, "")
	var third schemas.WorkRequest
	decode(expect(200, "POST", retry, id2+"retry/", user, `{}`), &third)
	require.NotNil(t, third.Supersedes)
	require.Equal(t, second.ID, *third.Supersedes)
	expect(400, "POST", retry, id2+"retry/", user, "")
	expect(404, "POST", retry, "/api/1.0/work-request/999999/retry/", user, "")
	id3 := "/api/1.0/work-request/" + strconv.FormatInt(third.ID, 10) + "/"
	expect(200, "POST", abort, id3+"abort/", user, "")

	// The worker side, once an admin has enabled the worker.
	wk, err := s.Store().WorkerByName(ctx, "builder-1.example.org")
	require.NoError(t, err)
	require.NoError(t, s.Store().SetWorkerEnabled(ctx, wk.ID, true))
	expect(400, "PUT", metadata, metadata, worker, `{"noop:version":`)
	expect(403, "GET", config, config, user, "")
	expect(204, "PUT", metadata, metadata, worker,
		`{"system:worker_type":"external","system:architectures":["amd64"],"noop:version":1,"kiln:concurrency":1}`)
	expect(200, "GET", config, config, worker, "")
	expect(200, "GET", wrs, wrs, worker, "")

	var assigned schemas.WorkRequest
	for deadline := time.Now().Add(15 * time.Second); ; {
		decode(expect(200, "GET", wr, id1, user, ""), &assigned)
		if assigned.Worker != nil {
			break
		}
		require.True(t, time.Now().Before(deadline), "the scheduler did not assign work request %d", first.ID)
		time.Sleep(20 * time.Millisecond)
	}
	// A worker sees its own requests only.
	expect(200, "GET", wr, id1, worker, "")
	require.Equal(t, wk.ID, *assigned.Worker)
	expect(403, "GET", next, next, user, "")
	expect(409, "POST", start, id1+"start/", worker, `{"attempt":2}`)
	expect(400, "POST", start, id1+"start/", worker, `{"attempt":"one"}`)
	expect(400, "POST", start, id1+"start/", worker, `{}`)
	expect(404, "POST", start, "/api/1.0/work-request/999999/start/", worker, `{"attempt":1}`)
	expect(200, "POST", start, id1+"start/", worker, `{"attempt":1}`)
	expect(409, "POST", start, id1+"start/", worker, `{"attempt":1}`)
	expect(204, "GET", next, next, worker, "")
	expect(400, "PUT", completed, id1+"completed/", worker, `{"result":"great"}`)
	expect(409, "PUT", completed, id1+"completed/", worker, `{"result":"success","attempt":7}`)
	expect(404, "PUT", completed, "/api/1.0/work-request/999999/completed/", worker, `{"result":"success"}`)
	expect(403, "PUT", completed, id1+"completed/", user, `{"result":"success"}`)
	expect(200, "PUT", completed, id1+"completed/", worker, `{"result":"success","attempt":1,"output":"noop: success\n","output_data":{}}`)
	expect(200, "PUT", completed, id1+"completed/", worker, `{"result":"success","attempt":1}`)
	expect(409, "PUT", completed, id1+"completed/", worker, `{"result":"failure","attempt":1}`)
	var done schemas.WorkRequest
	decode(expect(200, "GET", wr, id1, user, ""), &done)
	require.Equal(t, schemas.StatusCompleted, done.Status)
	require.Equal(t, schemas.ResultSuccess, done.Result)
	expect(200, "GET", workers, workers, user, "")

	// debusine's pull protocol: get-next-for-worker hands over (and starts)
	// the next assigned request.
	var fourth schemas.WorkRequest
	decode(expect(200, "POST", wrs, wrs, user, `{"task_name":"noop","task_data":{}}`), &fourth)
	id4 := "/api/1.0/work-request/" + strconv.FormatInt(fourth.ID, 10) + "/"
	for deadline := time.Now().Add(15 * time.Second); ; {
		decode(expect(200, "GET", wr, id4, user, ""), &assigned)
		if assigned.Worker != nil {
			break
		}
		require.True(t, time.Now().Before(deadline), "the scheduler did not assign work request %d", fourth.ID)
		time.Sleep(20 * time.Millisecond)
	}
	var pulled schemas.WorkRequest
	decode(expect(200, "GET", next, next, worker, ""), &pulled)
	require.Equal(t, fourth.ID, pulled.ID)
	decode(expect(200, "GET", wr, id4, worker, ""), &pulled)
	require.Equal(t, schemas.StatusRunning, pulled.Status)
	expect(200, "PUT", completed, id4+"completed/", worker, `{"result":"success"}`)

	expect(200, "GET", "/healthz", "/healthz", "", "")
	expect(200, "GET", "/metrics", "/metrics", "", "")
}
