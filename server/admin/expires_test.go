package admin

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/server/store"
)

func TestParseExpiry(t *testing.T) {
	zone := time.FixedZone("UTC+2", 2*60*60)
	now := time.Date(2026, 1, 15, 12, 0, 0, 0, zone)
	cases := []struct {
		in      string
		want    time.Time
		wantErr string
	}{
		{in: "720h", want: now.Add(720 * time.Hour)},
		{in: "90m", want: now.Add(90 * time.Minute)},
		{in: " 1h ", want: now.Add(time.Hour)},
		{in: "2026-02-01T18:00:00Z", want: time.Date(2026, 2, 1, 18, 0, 0, 0, time.UTC)},
		{in: "2026-01-15T12:00:01+02:00", want: now.Add(time.Second)},
		{in: "2026-01-16", want: time.Date(2026, 1, 16, 0, 0, 0, 0, zone)},
		{in: "0", wantErr: "must be positive"},
		{in: "0s", wantErr: "must be positive"},
		{in: "-1h", wantErr: "must be positive"},
		{in: "2026-01-15T12:00:00+02:00", wantErr: "has passed"},
		{in: "2026-01-15T09:59:59Z", wantErr: "has passed"},
		{in: "2026-01-15", wantErr: "has passed"},
		{in: "2020-01-01", wantErr: "has passed"},
		{in: "", wantErr: "want a duration"},
		{in: "30d", wantErr: "want a duration"},
		{in: "tomorrow", wantErr: "want a duration"},
		{in: "2026-13-01", wantErr: "want a duration"},
		{in: "2026-02-01 18:00", wantErr: "want a duration"},
	}
	for _, tc := range cases {
		got, err := parseExpiry(tc.in, now)
		if tc.wantErr != "" {
			require.ErrorContains(t, err, tc.wantErr, "%q", tc.in)
			require.ErrorContains(t, err, "--expires", "%q", tc.in)
			continue
		}
		require.NoError(t, err, "%q", tc.in)
		require.True(t, got.Equal(tc.want), "%q: got %s, want %s", tc.in, got, tc.want)
	}
}

// TestCreateTokenExpires runs the admin commands on a SQLite store.
func TestCreateTokenExpires(t *testing.T) {
	dir := t.TempDir()
	open := func(ctx context.Context) (*store.Store, error) { return store.Open(ctx, "", dir) }
	run := func(args ...string) (stdout, stderr string, err error) {
		t.Helper()
		var out, errOut bytes.Buffer
		cmd := Command(open)
		cmd.SetArgs(args)
		cmd.SetOut(&out)
		cmd.SetErr(&errOut)
		cmd.SilenceUsage = true
		err = cmd.ExecuteContext(t.Context())
		return strings.TrimSpace(out.String()), errOut.String(), err
	}
	st, err := open(t.Context())
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })

	forever, stderr, err := run("create-user", "alice")
	require.NoError(t, err)
	require.NotContains(t, stderr, "expires")
	_, err = st.UserForToken(t.Context(), forever)
	require.NoError(t, err)

	tok, stderr, err := run("create-token", "alice", "--comment", "ci", "--expires", "720h")
	require.NoError(t, err)
	require.Len(t, tok, 64, "stdout holds only the token")
	require.Contains(t, stderr, "The token expires at ")
	u, err := st.UserForToken(t.Context(), tok)
	require.NoError(t, err)
	require.Equal(t, "alice", u.Username)

	tok, _, err = run("create-user", "bob", "--expires", time.Now().AddDate(0, 0, 2).Format(time.DateOnly))
	require.NoError(t, err)
	_, err = st.UserForToken(t.Context(), tok)
	require.NoError(t, err)

	for _, bad := range []string{"-1h", "0s", "2000-01-01", "2000-01-01T00:00:00Z", "soon", ""} {
		out, _, err := run("create-token", "alice", "--expires", bad)
		require.Error(t, err, "--expires %q", bad)
		require.Empty(t, out, "--expires %q: no token printed", bad)
	}
	// A bad --expires creates no user.
	_, _, err = run("create-user", "carol", "--expires", "-1h")
	require.Error(t, err)
	_, err = st.UserByName(t.Context(), "carol")
	require.ErrorIs(t, err, store.ErrNotFound)
}
