package web_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/e2e/testtasks"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server"
	"github.com/kiln-ci/kiln/server/store"
	"github.com/kiln-ci/kiln/server/web"
)

// bundle is a running kiln-server (SQLite, embedded NATS, no worker) with
// an admin and two users.
type bundle struct {
	t   *testing.T
	ctx context.Context
	srv *server.Server
	st  *store.Store
	// tokens by user name: admin, alice, bob.
	tokens map[string]string
	ids    map[string]int64
}

func setup(t *testing.T, change func(*server.Config)) *bundle {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cfg := server.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), NATSListen: "127.0.0.1:0",
		LogMaxBytes: 8 << 20, Registry: testtasks.Registry()}
	if change != nil {
		change(&cfg)
	}
	srv, err := server.New(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	b := &bundle{t: t, ctx: ctx, srv: srv, st: srv.Store(), tokens: map[string]string{}, ids: map[string]int64{}}
	for _, u := range []struct {
		name  string
		admin bool
	}{{"admin", true}, {"alice", false}, {"bob", false}} {
		usr, err := b.st.CreateUser(ctx, u.name, "", u.admin)
		require.NoError(t, err)
		tok, err := b.st.CreateUserToken(ctx, usr.ID, "test")
		require.NoError(t, err)
		b.tokens[u.name], b.ids[u.name] = tok, usr.ID
	}
	return b
}

func (b *bundle) api(user string) *client.Client { return client.New(b.srv.APIURL(), b.tokens[user]) }

func (b *bundle) create(user, task, data string) schemas.WorkRequest {
	b.t.Helper()
	wr, err := b.api(user).CreateWorkRequest(b.ctx, schemas.WorkRequestCreate{TaskName: task, TaskData: []byte(data)})
	require.NoError(b.t, err)
	return wr
}

// browser is an HTTP client with cookies that does not follow redirects.
type browser struct {
	t    *testing.T
	c    *http.Client
	base string
}

func (b *bundle) browser() *browser {
	jar, err := cookiejar.New(nil)
	require.NoError(b.t, err)
	return &browser{t: b.t, base: b.srv.URL(), c: &http.Client{Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (br *browser) do(req *http.Request) (*http.Response, string) {
	br.t.Helper()
	resp, err := br.c.Do(req)
	require.NoError(br.t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(br.t, err)
	return resp, string(body)
}

func (br *browser) get(path string) (*http.Response, string) {
	br.t.Helper()
	req, err := http.NewRequest(http.MethodGet, br.base+path, nil)
	require.NoError(br.t, err)
	return br.do(req)
}

func (br *browser) post(path string, form url.Values, header http.Header) (*http.Response, string) {
	br.t.Helper()
	req, err := http.NewRequest(http.MethodPost, br.base+path, strings.NewReader(form.Encode()))
	require.NoError(br.t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range header {
		req.Header[k] = v
	}
	return br.do(req)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([0-9a-f]{64})"`)

func csrfOf(t *testing.T, body string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(body)
	require.NotNil(t, m, "no CSRF token in:\n%s", body)
	return m[1]
}

// login logs in with a token through the form and returns the session's
// CSRF token.
func (br *browser) login(token string) string {
	br.t.Helper()
	_, form := br.get("/login?next=/workers/")
	resp, _ := br.post("/login", url.Values{"csrf": {csrfOf(br.t, form)}, "token": {token}, "next": {"/workers/"}}, nil)
	require.Equal(br.t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(br.t, "/workers/", resp.Header.Get("Location"))
	resp, page := br.get("/workers/")
	require.Equal(br.t, http.StatusOK, resp.StatusCode)
	return csrfOf(br.t, page)
}

func cookieNamed(resp *http.Response, name string) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func TestLoginIsRequiredByDefault(t *testing.T) {
	b := setup(t, nil)
	br := b.browser()
	resp, _ := br.get("/work-requests/?status=pending")
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, "/login?next="+url.QueryEscape("/work-requests/?status=pending"), resp.Header.Get("Location"))
	resp, _ = br.get("/events")
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "an event stream is not redirected")
	resp, js := br.get("/static/htmx.min.js")
	require.Equal(t, http.StatusOK, resp.StatusCode, "assets need no login")
	require.Contains(t, resp.Header.Get("Content-Type"), "javascript")
	require.Contains(t, js, "htmx")
	resp, _ = br.get("/static/README.md")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)

	// The API keeps its own answers.
	resp, body := br.get("/api/1.0/no-such-endpoint/")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Equal(t, schemas.ProblemContentType, resp.Header.Get("Content-Type"), body)
	resp, _ = br.get("/api/elsewhere")
	require.Equal(t, schemas.ProblemContentType, resp.Header.Get("Content-Type"))
	resp, _ = br.get("/healthz")
	require.Equal(t, http.StatusOK, resp.StatusCode)

	// Every page keeps scripts to its own files.
	resp, _ = br.get("/login")
	require.Contains(t, resp.Header.Get("Content-Security-Policy"), "script-src 'self'")
	require.Equal(t, "DENY", resp.Header.Get("X-Frame-Options"))
	resp, _ = br.get("/no/such/page")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Contains(t, resp.Header.Get("Content-Type"), "text/html")
}

func TestLogin(t *testing.T) {
	b := setup(t, nil)
	br := b.browser()
	resp, form := br.get("/login?next=" + url.QueryEscape("/devices/?x=1"))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	formToken := csrfOf(t, form)
	require.Contains(t, form, `value="/devices/?x=1"`)

	cases := []struct {
		name   string
		form   url.Values
		status int
		says   string
	}{
		{"no form token", url.Values{"token": {b.tokens["alice"]}}, http.StatusForbidden, "stale"},
		{"wrong form token", url.Values{"csrf": {strings.Repeat("0", 64)}, "token": {b.tokens["alice"]}}, http.StatusForbidden, "stale"},
		{"no token", url.Values{"csrf": {formToken}}, http.StatusBadRequest, "Enter your token"},
		{"unknown token", url.Values{"csrf": {formToken}, "token": {store.NewSecret()}}, http.StatusForbidden, "Unknown or disabled token"},
	}
	for _, tc := range cases {
		resp, body := br.post("/login", tc.form, nil)
		require.Equal(t, tc.status, resp.StatusCode, tc.name)
		require.Contains(t, body, tc.says, tc.name)
		require.Nil(t, cookieNamed(resp, "kiln_session"), tc.name)
	}

	expiring, err := b.st.CreateUserTokenExpiring(b.ctx, b.ids["alice"], "old", time.Now().Add(-time.Minute))
	require.NoError(t, err)
	resp, body := br.post("/login", url.Values{"csrf": {formToken}, "token": {expiring}}, nil)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	require.Contains(t, body, "This token expired at")

	// Elsewhere is not a place to go after logging in.
	resp, _ = br.post("/login", url.Values{"csrf": {formToken}, "token": {b.tokens["alice"]}, "next": {"//evil.example/x"}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, "/", resp.Header.Get("Location"))
	c := cookieNamed(resp, "kiln_session")
	require.NotNil(t, c)
	require.True(t, c.HttpOnly)
	require.Equal(t, http.SameSiteLaxMode, c.SameSite)
	require.Equal(t, "/", c.Path)
	require.False(t, c.Secure, "plain HTTP")
	require.Len(t, c.Value, 64)
	require.NotEqual(t, b.tokens["alice"], c.Value, "the cookie is not the token")
	require.WithinDuration(t, time.Now().Add(web.DefaultSessionTTL), c.Expires, time.Minute)

	resp, page := br.get("/")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, page, `<span id="whoami">alice</span>`)
	csrf := csrfOf(t, page)

	// Logging out needs the CSRF token, and ends the session for good.
	resp, _ = br.post("/logout", url.Values{}, nil)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	resp, _ = br.post("/logout", url.Values{"csrf": {csrf}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	resp, _ = br.get("/")
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	old := b.browser()
	u, _ := url.Parse(b.srv.URL())
	old.c.Jar.SetCookies(u, []*http.Cookie{{Name: "kiln_session", Value: c.Value}})
	resp, _ = old.get("/")
	require.Equal(t, http.StatusSeeOther, resp.StatusCode, "the old cookie is worth nothing")
}

func TestSecureCookiesUnderTLS(t *testing.T) {
	b := setup(t, nil)
	d, err := web.New(b.st, nil, web.Options{Secure: true})
	require.NoError(t, err)
	req, err := http.NewRequest(http.MethodGet, "/login", nil)
	require.NoError(t, err)
	rec := httptest.NewRecorder()
	d.ServeHTTP(rec, req)
	require.Equal(t, http.StatusOK, rec.Code)
	login := rec.Result().Cookies()
	require.Len(t, login, 1)
	require.True(t, login[0].Secure)

	form := url.Values{"csrf": {login[0].Value}, "token": {b.tokens["bob"]}}
	req, err = http.NewRequest(http.MethodPost, "/login", strings.NewReader(form.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(login[0])
	rec = httptest.NewRecorder()
	d.ServeHTTP(rec, req)
	require.Equal(t, http.StatusSeeOther, rec.Code)
	c := cookieNamed(rec.Result(), "kiln_session")
	require.NotNil(t, c)
	require.True(t, c.Secure)
	require.True(t, c.HttpOnly)
}

func TestActionsNeedTheCSRFToken(t *testing.T) {
	b := setup(t, nil)
	wr := b.create("alice", "noop", `{}`)
	path := "/work-requests/" + strconv.FormatInt(wr.ID, 10) + "/"
	alice := b.browser()
	csrf := alice.login(b.tokens["alice"])
	_, page := alice.get(path)
	require.Contains(t, page, `id="abort"`, "its creator may abort it")
	require.NotContains(t, page, `id="retry"`, "a pending request cannot be retried")

	status := func(id int64) schemas.Status {
		got, err := b.api("admin").GetWorkRequest(b.ctx, id)
		require.NoError(t, err)
		return got.Status
	}
	for _, tc := range []struct {
		name   string
		form   url.Values
		header http.Header
	}{
		{"no token", url.Values{}, nil},
		{"wrong token", url.Values{"csrf": {strings.Repeat("a", 64)}}, nil},
		{"another session's token", url.Values{"csrf": {b.browser().login(b.tokens["alice"])}}, nil},
		{"wrong header", url.Values{}, http.Header{"X-Csrf-Token": {"x"}}},
	} {
		resp, body := alice.post(path+"abort", tc.form, tc.header)
		require.Equal(t, http.StatusForbidden, resp.StatusCode, tc.name)
		require.Contains(t, body, "CSRF check failed", tc.name)
		require.Equal(t, schemas.StatusPending, status(wr.ID), tc.name)
	}

	// Another user may not: the API's rule, told on the page.
	bob := b.browser()
	bobCSRF := bob.login(b.tokens["bob"])
	_, page = bob.get(path)
	require.NotContains(t, page, `id="abort"`)
	resp, _ := bob.post(path+"abort", url.Values{"csrf": {bobCSRF}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	_, page = bob.get(path)
	require.Contains(t, page, "You are not permitted to abort this work request")
	require.Equal(t, schemas.StatusPending, status(wr.ID))

	// htmx sends the token in a header.
	resp, _ = alice.post(path+"abort", url.Values{}, http.Header{"X-Csrf-Token": {csrf}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, path, resp.Header.Get("Location"))
	require.Equal(t, schemas.StatusAborted, status(wr.ID))
	_, page = alice.get(path)
	require.Contains(t, page, "aborted.</p>", "the outcome is told once")
	require.Contains(t, page, `data-status="aborted"`)
	require.Contains(t, page, `id="retry"`)
	_, page = alice.get(path)
	require.NotContains(t, page, `id="flash"`)

	resp, _ = alice.post(path+"retry", url.Values{"csrf": {csrf}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	next := resp.Header.Get("Location")
	require.NotEqual(t, path, next)
	_, page = alice.get(next)
	require.Contains(t, page, "retried as")
	require.Contains(t, page, "Retry of")
}

func TestAnonymousReadOnly(t *testing.T) {
	b := setup(t, func(c *server.Config) { c.WebAnonymous = true })
	wr := b.create("alice", "noop", `{}`)
	path := "/work-requests/" + strconv.FormatInt(wr.ID, 10) + "/"
	anon := b.browser()
	for _, p := range []string{"/", "/work-requests/", path, "/workers/", "/devices/"} {
		resp, page := anon.get(p)
		require.Equal(t, http.StatusOK, resp.StatusCode, p)
		require.Contains(t, page, "read-only", p)
		require.NotContains(t, page, `name="csrf"`, p)
	}
	resp, body := anon.post(path+"abort", url.Values{}, nil)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	require.Contains(t, body, "Log in to do that")
	got, err := b.api("admin").GetWorkRequest(b.ctx, wr.ID)
	require.NoError(t, err)
	require.Equal(t, schemas.StatusPending, got.Status)
}

// declaringWorker registers a worker through the API and has it declare
// devices, as kiln-worker does; no worker daemon runs.
func (b *bundle) declaringWorker(name string, decl ...schemas.DeviceDeclaration) store.Worker {
	b.t.Helper()
	token := store.NewSecret()
	require.NoError(b.t, client.New(b.srv.APIURL(), "").RegisterWorker(b.ctx,
		schemas.WorkerRegister{Token: token, FQDN: name, WorkerType: "external"}, ""))
	wk, err := b.st.WorkerByName(b.ctx, name)
	require.NoError(b.t, err)
	require.NoError(b.t, b.st.SetWorkerEnabled(b.ctx, wk.ID, true))
	wc := client.New(b.srv.APIURL(), token)
	require.NoError(b.t, wc.PutDynamicMetadata(b.ctx, schemas.Metadata{"noop:version": 1, "system:note": "<b>bold</b>"}))
	if len(decl) > 0 {
		require.NoError(b.t, wc.DeclareDevices(b.ctx, decl))
	}
	return wk
}

func TestAdminActions(t *testing.T) {
	b := setup(t, nil)
	wk := b.declaringWorker("lab-1", schemas.DeviceDeclaration{Name: "rpi4-01", DeviceType: "rpi4", Connection: "serial"})
	require.NoError(t, b.st.SetStaticMetadata(b.ctx, wk.ID, map[string]any{"noop:version": 1, "lab:room": "B2"}))
	workerPath := "/workers/" + strconv.FormatInt(wk.ID, 10) + "/"

	alice := b.browser()
	aliceCSRF := alice.login(b.tokens["alice"])
	_, page := alice.get(workerPath)
	require.NotContains(t, page, `id="disable"`, "for admins only")
	resp, _ := alice.post(workerPath+"disable", url.Values{"csrf": {aliceCSRF}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	_, page = alice.get(workerPath)
	require.Contains(t, page, "Only admins may enable or disable workers.")
	got, err := b.st.WorkerByID(b.ctx, wk.ID)
	require.NoError(t, err)
	require.True(t, got.Enabled)
	_, page = alice.get("/devices/rpi4-01/")
	require.NotContains(t, page, `id="maintenance"`)
	resp, _ = alice.post("/devices/rpi4-01/health", url.Values{"csrf": {aliceCSRF}, "health": {"maintenance"}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	_, page = alice.get("/devices/rpi4-01/")
	require.Contains(t, page, "only admins may change a device")

	admin := b.browser()
	csrf := admin.login(b.tokens["admin"])
	_, page = admin.get(workerPath)
	// The merged metadata shows which keys are the admin's.
	require.Regexp(t, `(?s)<tr class="static" data-key="lab:room">.*?static override`, page)
	require.Regexp(t, `(?s)<tr class="static" data-key="noop:version">.*?static override.*?worker reports <code>1</code>`, page)
	require.Regexp(t, `(?s)<tr data-key="system:note">\s*<td>system:note</td>\s*<td><code>&#34;&lt;b&gt;bold&lt;/b&gt;&#34;</code>`, page)
	require.NotContains(t, page, "<b>bold</b>")

	resp, _ = admin.post(workerPath+"disable", url.Values{"csrf": {csrf}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, workerPath, resp.Header.Get("Location"))
	got, err = b.st.WorkerByID(b.ctx, wk.ID)
	require.NoError(t, err)
	require.False(t, got.Enabled)
	_, page = admin.get(workerPath)
	require.Contains(t, page, `data-status="disabled"`)
	require.Contains(t, page, `id="enable"`)

	resp, _ = admin.post("/devices/rpi4-01/health", url.Values{"csrf": {csrf}, "health": {"good"}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	_, page = admin.get("/devices/rpi4-01/")
	require.Contains(t, page, "good and bad are set by health checks only", "the API's validation")
	resp, _ = admin.post("/devices/rpi4-01/health", url.Values{"csrf": {csrf}, "health": {"maintenance"}, "reason": {"new <cable>"}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	_, page = admin.get("/devices/rpi4-01/")
	require.Contains(t, page, `<td id="device-health"><span class="status status-maintenance" data-status="maintenance">`)
	require.Contains(t, page, "new &lt;cable&gt;")
	dv, err := b.api("admin").GetDevice(b.ctx, "rpi4-01")
	require.NoError(t, err)
	require.Equal(t, schemas.HealthMaintenance, dv.Health)
	resp, _ = admin.post("/devices/rpi4-01/health-check", url.Values{"csrf": {csrf}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	_, page = admin.get("/devices/rpi4-01/")
	require.Contains(t, page, "return it to service first")
	resp, _ = admin.post("/devices/rpi4-01/health", url.Values{"csrf": {csrf}, "health": {"unknown"}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	resp, _ = admin.post("/devices/rpi4-01/health-check", url.Values{"csrf": {csrf}, "reason": {"after the move"}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	_, page = admin.get("/devices/rpi4-01/")
	require.Contains(t, page, "Health check of rpi4-01 requested")
	require.Contains(t, page, "health check requested by admin: after the move")
	resp, _ = admin.post("/devices/no-such/health", url.Values{"csrf": {csrf}, "health": {"maintenance"}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	_, page = admin.get("/devices/")
	require.Contains(t, page, "No Device matches the given query.")
	require.Contains(t, page, `<tr id="device-rpi4-01">`)
	require.Contains(t, page, `<a href="/workers/`+strconv.FormatInt(wk.ID, 10)+`/">lab-1</a>`)
}

func TestPages(t *testing.T) {
	b := setup(t, nil)
	wk := b.declaringWorker("builder-1")
	one := b.create("alice", "noop", `{}`)
	two := b.create("bob", "script", `{"script": "echo hi"}`)
	a, err := b.st.CreateArtifact(b.ctx, store.NewArtifact{Category: "debian:upload", Workspace: "System",
		Data: `{"source": "<hello>"}`, CreatedBy: b.ids["alice"], Files: []store.NewArtifactFile{
			{Path: "dir/<b>x.dsc", SHA256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", Size: 0}}})
	require.NoError(t, err)
	other, err := b.st.CreateArtifact(b.ctx, store.NewArtifact{Category: "debian:source-package", Workspace: "System", Data: `{}`,
		CreatedBy: b.ids["alice"]})
	require.NoError(t, err)
	_, _, err = b.st.CreateRelation(b.ctx, a.ID, other.ID, "extends")
	require.NoError(t, err)

	br := b.browser()
	br.login(b.tokens["alice"])
	page := func(p string) string {
		t.Helper()
		resp, body := br.get(p)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", p, body)
		require.Equal(t, "no-store", resp.Header.Get("Cache-Control"), p)
		return body
	}
	overview := page("/")
	require.Contains(t, overview, `data-count="pending">2</a>`)
	require.Contains(t, overview, `<ul class="reasons" id="reasons">`)
	require.Regexp(t, `sse-connect="/events\?v=[0-9a-f]{24}"`, overview)

	list := page("/work-requests/")
	require.Contains(t, list, `id="wr-`+strconv.FormatInt(one.ID, 10)+`"`)
	require.Contains(t, list, "2 matching")
	for _, tc := range []struct {
		query string
		want  []int64
		says  string
	}{
		{"task=script", []int64{two.ID}, ""},
		{"created_by=alice", []int64{one.ID}, ""},
		{"status=running", nil, ""},
		{"workspace=System&task=noop", []int64{one.ID}, ""},
		{"worker=nobody", nil, "There is no worker named &#34;nobody&#34;."},
		{"created_by=nobody", nil, "There is no user named &#34;nobody&#34;."},
	} {
		body := page("/work-requests/?" + tc.query)
		for _, id := range []int64{one.ID, two.ID} {
			row := `id="wr-` + strconv.FormatInt(id, 10) + `"`
			if contains(tc.want, id) {
				require.Contains(t, body, row, tc.query)
			} else {
				require.NotContains(t, body, row, tc.query)
			}
		}
		require.Contains(t, body, tc.says, tc.query)
	}
	req, err := http.NewRequest(http.MethodGet, br.base+"/work-requests/?status=&task=script&worker=", nil)
	require.NoError(t, err)
	req.Header.Set("HX-Request", "true")
	resp, body := br.do(req)
	require.Equal(t, "/work-requests/?task=script", resp.Header.Get("HX-Push-Url"), "htmx shows the address without empty fields")
	require.Contains(t, body, `sse-connect="/work-requests/events?task=script&amp;v=`)
	resp, _ = br.get("/work-requests/?status=shiny")
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	resp, _ = br.get("/work-requests/?before=x")
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)

	detail := page("/work-requests/" + strconv.FormatInt(one.ID, 10) + "/")
	require.Contains(t, detail, `id="waiting-reason">`)
	require.Contains(t, detail, "created by alice")
	resp, _ = br.get("/work-requests/999999/")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	resp, _ = br.get("/work-requests/abc/")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)

	require.Contains(t, page("/workers/"), `<a href="/workers/`+strconv.FormatInt(wk.ID, 10)+`/">builder-1</a>`)
	require.Contains(t, page("/workers/"+strconv.FormatInt(wk.ID, 10)+"/"), "Recent work requests")
	require.Contains(t, page("/devices/"), "No worker declares devices under test.")
	resp, _ = br.get("/devices/nope/")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)

	art := page("/artifacts/" + strconv.FormatInt(a.ID, 10) + "/")
	require.Contains(t, art, "debian:upload")
	require.Contains(t, art, "dir/&lt;b&gt;x.dsc")
	require.Contains(t, art, `href="/artifacts/`+strconv.FormatInt(a.ID, 10)+`/files/dir/%3Cb%3Ex.dsc"`)
	require.Contains(t, art, "&#34;source&#34;: &#34;&lt;hello&gt;&#34;")
	require.Contains(t, art, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
	require.Contains(t, art, "debian:source-package")
	require.NotContains(t, art, "<b>x")
	resp, body = br.get("/artifacts/" + strconv.FormatInt(a.ID, 10) + "/files/dir/%3Cb%3Ex.dsc")
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	require.Equal(t, `attachment; filename="<b>x.dsc"`, resp.Header.Get("Content-Disposition"))
	resp, _ = br.get("/artifacts/" + strconv.FormatInt(a.ID, 10) + "/download")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "application/gzip", resp.Header.Get("Content-Type"))
	resp, _ = br.get("/artifacts/" + strconv.FormatInt(a.ID, 10) + "/files/nope")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
}

func contains(ids []int64, id int64) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// event is one Server-Sent Event.
type event struct{ name, id, data string }

// readEvents parses an event stream into ch until it ends.
func readEvents(r io.Reader, ch chan<- event) {
	defer close(ch)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var ev event
	var data []string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev.name != "" || len(data) > 0 {
				ev.data = strings.Join(data, "\n")
				ch <- ev
			}
			ev, data = event{}, nil
		case strings.HasPrefix(line, "event: "):
			ev.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "id: "):
			ev.id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "data: "):
			data = append(data, strings.TrimPrefix(line, "data: "))
		}
	}
}

func TestEventStreamPushesChanges(t *testing.T) {
	b := setup(t, nil)
	wr := b.create("alice", "noop", `{}`)
	// The scheduler's word first, so that the page does not change before
	// the abort.
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := b.api("alice").GetWorkRequest(b.ctx, wr.ID)
		require.NoError(t, err)
		if got.WaitingReason == "no enabled worker" {
			break
		}
		require.True(t, time.Now().Before(deadline), "no waiting reason: %q", got.WaitingReason)
		time.Sleep(20 * time.Millisecond)
	}
	path := "/work-requests/" + strconv.FormatInt(wr.ID, 10) + "/"
	br := b.browser()
	br.login(b.tokens["alice"])
	_, page := br.get(path)
	m := regexp.MustCompile(`sse-connect="(/work-requests/\d+/events\?v=[0-9a-f]+)"`).FindStringSubmatch(page)
	require.NotNil(t, m, page)

	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, br.base+m[1], nil)
	require.NoError(t, err)
	resp, err := br.c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	events := make(chan event, 100)
	go readEvents(resp.Body, events)

	_, err = b.api("alice").AbortWorkRequest(b.ctx, wr.ID)
	require.NoError(t, err)
	var got []string
	for ev := range events {
		got = append(got, ev.name)
		if ev.name == "summary" {
			require.Contains(t, ev.data, `data-status="aborted"`)
		}
		if ev.name == "done" {
			break
		}
	}
	// The page was up to date: nothing is sent until the abort; then the
	// parts that changed, and the end of the stream.
	require.Equal(t, []string{"actions", "results", "summary", "done"}, got)
}
