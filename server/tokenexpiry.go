package server

import (
	"errors"
	"net/http"
	"time"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
)

// codeTokenExpired is the problem code of a user token past its expiry.
const codeTokenExpired = "token-expired"

// tokenExpired answers a request that carries a known user token past its
// expiry: 403 token-expired, saying when it expired. Unlike an unknown
// token it is refused on every endpoint, so that a script learns at once
// that it needs a new token. Neither the answer nor the log holds the token.
func (s *Server) tokenExpired(w http.ResponseWriter, err error) {
	detail := "The token has expired: ask an admin for a new one (kiln-server admin create-token)."
	var ete *store.ExpiredTokenError
	if errors.As(err, &ete) {
		at := ete.ExpiresAt.UTC().Format(time.RFC3339)
		detail = "The token expired at " + at + ": ask an admin for a new one (kiln-server admin create-token)."
		s.log.Debug().Int64("user_id", ete.UserID).Str("expired_at", at).Msg("expired token refused")
	}
	writeProblem(w, schemas.Problem{Title: "Token expired", Detail: detail, Status: http.StatusForbidden, Code: codeTokenExpired})
}
