package store

import (
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestHashTokenAndNewSecret(t *testing.T) {
	// SHA-256 test vector.
	require.Equal(t, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", HashToken("abc"))

	a, b := NewSecret(), NewSecret()
	require.Len(t, a, 64)
	_, err := hex.DecodeString(a)
	require.NoError(t, err)
	require.NotEqual(t, a, b)
	require.NotEqual(t, a, HashToken(a))
}

func TestUsers(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		before := time.Now().Add(-time.Minute)
		u, err := st.CreateUser(ctx, "alice", "alice@example.org", true)
		require.NoError(t, err)
		require.NotZero(t, u.ID)
		require.Equal(t, "alice", u.Username)
		require.True(t, u.IsAdmin)

		byName, err := st.UserByName(ctx, "alice")
		require.NoError(t, err)
		require.Equal(t, u.ID, byName.ID)
		require.Equal(t, "alice@example.org", byName.Email)
		require.True(t, byName.IsAdmin)
		require.True(t, byName.CreatedAt.After(before), "created_at %v", byName.CreatedAt)
		require.True(t, byName.CreatedAt.Equal(u.CreatedAt), "stored %v, returned %v", byName.CreatedAt, u.CreatedAt)

		byID, err := st.UserByID(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "alice", byID.Username)

		_, err = st.CreateUser(ctx, "alice", "other@example.org", false)
		require.ErrorIs(t, err, ErrConflict, "duplicate username")

		bob, err := st.CreateUser(ctx, "bob", "", false)
		require.NoError(t, err)
		require.NotEqual(t, u.ID, bob.ID)
		require.False(t, bob.IsAdmin)

		_, err = st.UserByName(ctx, "nobody")
		require.ErrorIs(t, err, ErrNotFound)
		_, err = st.UserByID(ctx, 999999)
		require.ErrorIs(t, err, ErrNotFound)
	})
}

func TestUserTokens(t *testing.T) {
	forEachDialect(t, func(t *testing.T, st *Store) {
		ctx := t.Context()
		alice, err := st.CreateUser(ctx, "alice", "", false)
		require.NoError(t, err)
		bob, err := st.CreateUser(ctx, "bob", "", false)
		require.NoError(t, err)

		secretA, err := st.CreateUserToken(ctx, alice.ID, "laptop")
		require.NoError(t, err)
		require.Len(t, secretA, 64)
		secretB, err := st.CreateUserToken(ctx, bob.ID, "ci")
		require.NoError(t, err)
		require.NotEqual(t, secretA, secretB)

		got, err := st.UserForToken(ctx, secretA)
		require.NoError(t, err)
		require.Equal(t, alice.ID, got.ID)
		got, err = st.UserForToken(ctx, secretB)
		require.NoError(t, err)
		require.Equal(t, bob.ID, got.ID)

		// An activation token is not a user token.
		w, err := st.CreateWorker(ctx, "pre", "external")
		require.NoError(t, err)
		activation, err := st.CreateActivationToken(ctx, w.ID)
		require.NoError(t, err)

		// Only hashes are stored: no column of any token row holds a secret.
		var toks []Token
		require.NoError(t, st.r.SelectContext(ctx, &toks, `SELECT * FROM tokens ORDER BY id`))
		require.Len(t, toks, 3)
		for _, tok := range toks {
			for _, secret := range []string{secretA, secretB, activation} {
				for _, col := range []string{tok.Hash, tok.Kind, tok.Comment} {
					require.NotContains(t, col, secret, "token %d stores a secret", tok.ID)
				}
			}
		}
		require.Equal(t, HashToken(secretA), toks[0].Hash)
		require.Equal(t, TokenUser, toks[0].Kind)
		require.Equal(t, "laptop", toks[0].Comment)
		require.True(t, toks[0].Enabled)
		require.Equal(t, alice.ID, toks[0].UserID.Int64)
		require.False(t, toks[0].WorkerID.Valid)
		require.Equal(t, HashToken(activation), toks[2].Hash)
		require.Equal(t, TokenActivation, toks[2].Kind)
		require.Equal(t, w.ID, toks[2].WorkerID.Int64)
		require.False(t, toks[2].UserID.Valid)

		for name, secret := range map[string]string{
			"unknown":            NewSecret(),
			"empty":              "",
			"the hash itself":    HashToken(secretA),
			"activation token":   activation,
			"case-changed token": strings.ToUpper(secretA),
		} {
			_, err := st.UserForToken(ctx, secret)
			require.ErrorIs(t, err, ErrNotFound, name)
			if secret != "" {
				require.NotContains(t, err.Error(), secret, "errors never show a token")
			}
		}

		// A disabled token no longer authenticates; the other one still does.
		rawExec(t, st, `UPDATE tokens SET enabled = ? WHERE hash = ?`, false, HashToken(secretA))
		_, err = st.UserForToken(ctx, secretA)
		require.ErrorIs(t, err, ErrNotFound, "disabled token")
		_, err = st.UserForToken(ctx, secretB)
		require.NoError(t, err)
	})
}
