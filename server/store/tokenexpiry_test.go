package store

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestTokenExpiry(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		alice, err := st.CreateUser(ctx, "alice", "", false)
		require.NoError(t, err)

		never, err := st.CreateUserToken(ctx, alice.ID, "never")
		require.NoError(t, err)
		zero, err := st.CreateUserTokenExpiring(ctx, alice.ID, "zero time", time.Time{})
		require.NoError(t, err)
		future := time.Now().Add(time.Hour)
		fresh, err := st.CreateUserTokenExpiring(ctx, alice.ID, "fresh", future)
		require.NoError(t, err)
		past := time.Now().Add(-time.Minute)
		expired, err := st.CreateUserTokenExpiring(ctx, alice.ID, "expired", past)
		require.NoError(t, err)

		for name, secret := range map[string]string{"NULL": never, "zero time": zero, "future": fresh} {
			u, err := st.UserForToken(ctx, secret)
			require.NoError(t, err, name)
			require.Equal(t, alice.ID, u.ID, name)
		}

		_, err = st.UserForToken(ctx, expired)
		require.ErrorIs(t, err, ErrTokenExpired)
		require.NotErrorIs(t, err, ErrNotFound, "an expired token is not an unknown one")
		var ete *ExpiredTokenError
		require.ErrorAs(t, err, &ete)
		require.Equal(t, alice.ID, ete.UserID)
		require.WithinDuration(t, past, ete.ExpiresAt, time.Microsecond)
		require.Equal(t, time.UTC, ete.ExpiresAt.Location())
		require.NotContains(t, err.Error(), expired, "errors never show a token")

		// An unknown token stays ErrNotFound.
		_, err = st.UserForToken(ctx, NewSecret())
		require.ErrorIs(t, err, ErrNotFound)
		require.NotErrorIs(t, err, ErrTokenExpired)

		// A disabled token is unknown, expired or not.
		rawExec(t, st, `UPDATE tokens SET enabled = ? WHERE hash = ?`, false, HashToken(expired))
		_, err = st.UserForToken(ctx, expired)
		require.ErrorIs(t, err, ErrNotFound)

		// What is stored: NULL for never, the expiry (UTC, to the
		// microsecond) otherwise.
		var toks []Token
		require.NoError(t, st.r.SelectContext(ctx, &toks, `SELECT * FROM tokens ORDER BY id`))
		require.Len(t, toks, 4)
		require.False(t, toks[0].ExpiresAt.Valid, "CreateUserToken never expires")
		require.False(t, toks[1].ExpiresAt.Valid, "the zero time means never")
		require.True(t, toks[2].ExpiresAt.Valid)
		require.True(t, toks[2].ExpiresAt.Time.Equal(future.UTC().Truncate(time.Microsecond)), "%s != %s", toks[2].ExpiresAt.Time, future)

		// The same token crosses its expiry: moved into the past it is
		// refused, cleared it never expires again.
		rawExec(t, st, `UPDATE tokens SET expires_at = ? WHERE hash = ?`, time.Now().UTC().Add(-time.Second), HashToken(fresh))
		_, err = st.UserForToken(ctx, fresh)
		require.ErrorIs(t, err, ErrTokenExpired)
		rawExec(t, st, `UPDATE tokens SET expires_at = NULL WHERE hash = ?`, HashToken(fresh))
		_, err = st.UserForToken(ctx, fresh)
		require.NoError(t, err)
	})
}
