package web

import (
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/server/store"
)

func TestPrettyJSON(t *testing.T) {
	cases := []struct{ in, want string }{
		{`{"a":1}`, "{\n  \"a\": 1\n}"},
		{`{"s":"\u003cb\u003e \u0026 \u003e"}`, "{\n  \"s\": \"<b> & >\"\n}"},
		{`{"s":"\\u003cb"}`, "{\n  \"s\": \"\\\\u003cb\"\n}"},
		{`{"s":"\"\u00e9\n"}`, "{\n  \"s\": \"\\\"\\u00e9\\n\"\n}"},
		{`not json <b>`, `not json <b>`},
		{`{"z":1,"a":2}`, "{\n  \"z\": 1,\n  \"a\": 2\n}"},
	}
	for _, tc := range cases {
		require.Equal(t, tc.want, prettyJSON(tc.in), tc.in)
	}
	require.Equal(t, `{"k":"<x> & y"}`, compactJSON(map[string]string{"k": "<x> & y"}))
}

func TestLocalPath(t *testing.T) {
	for in, want := range map[string]string{
		"/workers/":            "/workers/",
		"/work-requests/?a=1":  "/work-requests/?a=1",
		"":                     "/",
		"https://evil.example": "/",
		"//evil.example/x":     "/",
		"/\\evil.example":      "/",
		"/ok\r\nSet-Cookie: x": "/",
		"relative":             "/",
	} {
		require.Equal(t, want, localPath(in), in)
	}
}

func TestEventStreamFormat(t *testing.T) {
	rec := httptest.NewRecorder()
	es := startEvents(rec)
	require.NoError(t, es.send("log", "7", "a\r\nb\rc\n"))
	require.NoError(t, es.send("done", "", ""))
	require.Equal(t, "event: log\nid: 7\ndata: a\ndata: b\ndata: c\ndata: \n\nevent: done\ndata: \n\n", rec.Body.String())
	require.Equal(t, "text/event-stream", rec.Header().Get("Content-Type"))
}

func TestEventsPath(t *testing.T) {
	require.Equal(t, "/events", eventsPath("/"))
	require.Equal(t, "/work-requests/events", eventsPath("/work-requests/"))
	require.Equal(t, "/workers/{id}/events", eventsPath("/workers/{id}/"))
}

func TestLongStreamsEndWithTheirSession(t *testing.T) {
	ctx := t.Context()
	st, err := store.Open(ctx, "", t.TempDir())
	require.NoError(t, err)
	defer st.Close()
	u, err := st.CreateUser(ctx, "carol", "", false)
	require.NoError(t, err)
	tok, err := st.CreateUserToken(ctx, u.ID, "")
	require.NoError(t, err)
	secret, _, err := st.CreateWebSession(ctx, tok, time.Now().Add(time.Hour))
	require.NoError(t, err)

	d, err := New(st, nil, Options{})
	require.NoError(t, err)
	v := &viewer{User: &u, session: secret}
	checked := time.Now()
	require.True(t, d.stillValid(ctx, v, &checked))
	require.NoError(t, st.DeleteWebSession(ctx, secret))
	require.True(t, d.stillValid(ctx, v, &checked), "not checked again so soon")
	checked = time.Now().Add(-sessionRecheck)
	require.False(t, d.stillValid(ctx, v, &checked), "logged out elsewhere")

	anon := &viewer{}
	require.False(t, d.stillValid(ctx, anon, &checked))
	d.opts.Anonymous = true
	require.True(t, d.stillValid(ctx, anon, &checked))
}
