package server

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
)

// TestExpiredTokenForbidden checks that a user token past its expiry gets
// 403 token-expired on every kind of endpoint, as docs/openapi.yaml says,
// while unexpired and never-expiring tokens keep working.
func TestExpiredTokenForbidden(t *testing.T) {
	s := newOpenAPITestServer(t)
	k := newConformance(t, s.URL())
	ctx := t.Context()
	st := s.Store()
	alice, err := st.CreateUser(ctx, "alice", "", false)
	require.NoError(t, err)
	never, err := st.CreateUserToken(ctx, alice.ID, "never")
	require.NoError(t, err)
	fresh, err := st.CreateUserTokenExpiring(ctx, alice.ID, "fresh", time.Now().Add(time.Hour))
	require.NoError(t, err)
	past := time.Now().Add(-time.Hour)
	expired, err := st.CreateUserTokenExpiring(ctx, alice.ID, "expired", past)
	require.NoError(t, err)

	const (
		whoami  = "/api/1.0/whoami/"
		wrs     = "/api/1.0/work-request/"
		workers = "/api/1.0/worker/"
		next    = "/api/1.0/work-request/get-next-for-worker/"
	)
	for _, tok := range []string{never, fresh} {
		code, body := k.do("GET", whoami, whoami, tok, "")
		require.Equal(t, 200, code, "%s", body)
		var me schemas.WhoAmI
		require.NoError(t, json.Unmarshal(body, &me))
		require.Equal(t, "alice", me.User)
		code, body = k.do("GET", wrs, wrs, tok, "")
		require.Equal(t, 200, code, "%s", body)
	}

	// The anonymous whoami, the user-or-worker list, a user-only and a
	// worker-only endpoint all refuse the expired token the same way.
	for _, path := range []string{whoami, wrs, workers, next} {
		code, body := k.do("GET", path, path, expired, "")
		require.Equal(t, 403, code, "GET %s: %s", path, body)
		var p schemas.Problem
		require.NoError(t, json.Unmarshal(body, &p))
		require.Equal(t, "token-expired", p.Code, path)
		require.Equal(t, "Token expired", p.Title, path)
		require.Equal(t, 403, p.Status, path)
		require.Contains(t, p.Detail, past.UTC().Format(time.RFC3339), "the detail says when")
		require.NotContains(t, string(body), expired, "the answer never holds the token")
	}

	// An unknown token is still unknown-token where a token is needed.
	code, body := k.do("GET", wrs, wrs, store.NewSecret(), "")
	require.Equal(t, 403, code)
	require.True(t, strings.Contains(string(body), `"code":"unknown-token"`), "%s", body)
}
