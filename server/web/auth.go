package web

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/kiln-ci/kiln/server/store"
)

// Cookies.
const (
	// sessionCookie holds the session secret.
	sessionCookie = "kiln_session"
	// loginCookie holds the login form's CSRF token: the form repeats it
	// (a double-submit token; there is no session yet to tie it to).
	loginCookie = "kiln_login"
	// flashCookie carries one message to the page an action redirects to.
	flashCookie = "kiln_flash"
	// csrfField and csrfHeader carry a form's CSRF token; htmx requests
	// send the header (hx-headers on the body).
	csrfField  = "csrf"
	csrfHeader = "X-CSRF-Token"
)

// viewer is who looks at a page: a logged-in user, or nobody (anonymous
// read-only access).
type viewer struct {
	User *store.User
	// CSRF is the session's CSRF token ("" when anonymous).
	CSRF    string
	session string
}

type viewerKey struct{}

func viewerFrom(ctx context.Context) *viewer {
	if v, ok := ctx.Value(viewerKey{}).(*viewer); ok {
		return v
	}
	return &viewer{}
}

// csrfToken is the CSRF token of a session: derived from its secret, one
// way, so that the token on a page tells nothing of the cookie.
func csrfToken(session string) string {
	sum := sha256.Sum256([]byte("kiln web csrf\x00" + session))
	return hex.EncodeToString(sum[:])
}

// session resolves the session cookie to its user.
func (d *Dashboard) session(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v := &viewer{}
		if c, err := r.Cookie(sessionCookie); err == nil && c.Value != "" {
			u, _, err := d.st.WebSessionUser(r.Context(), c.Value)
			switch {
			case err == nil:
				v = &viewer{User: &u, CSRF: csrfToken(c.Value), session: c.Value}
			case errors.Is(err, store.ErrNotFound):
				d.clearCookie(w, sessionCookie)
			default:
				d.fail(w, r, err)
				return
			}
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), viewerKey{}, v)))
	})
}

// sessionRecheck is how often a long event stream checks that its
// session still holds (logged out, expired, its token revoked).
const sessionRecheck = 30 * time.Second

// stillValid reports whether the viewer of a long-lived request may go on
// watching: anonymous viewers may while anonymous access is on, a session
// while it holds (checked at most every sessionRecheck, from *checked).
func (d *Dashboard) stillValid(ctx context.Context, v *viewer, checked *time.Time) bool {
	if v.session == "" {
		return d.opts.Anonymous
	}
	if time.Since(*checked) < sessionRecheck {
		return true
	}
	_, _, err := d.st.WebSessionUser(ctx, v.session)
	if errors.Is(err, store.ErrNotFound) {
		return false
	}
	*checked = time.Now() // a database error is not the session's end
	return true
}

// requireViewer sends visitors who have not logged in to the login form,
// unless anonymous read-only access is on.
func (d *Dashboard) requireViewer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if viewerFrom(r.Context()).User == nil && !d.opts.Anonymous {
			if strings.HasSuffix(r.URL.Path, "/events") {
				http.Error(w, "log in first", http.StatusUnauthorized)
				return
			}
			http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// requireUser refuses actions of visitors who have not logged in.
func (d *Dashboard) requireUser(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if viewerFrom(r.Context()).User == nil {
			d.errorPage(w, r, http.StatusForbidden, "Log in to do that.")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// requireCSRF checks the session's CSRF token on a state-changing request:
// in the form field or, for htmx, the header.
func (d *Dashboard) requireCSRF(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v := viewerFrom(r.Context())
		got := r.Header.Get(csrfHeader)
		if got == "" {
			got = r.PostFormValue(csrfField)
		}
		if v.CSRF == "" || !sameSecret(got, v.CSRF) {
			d.errorPage(w, r, http.StatusForbidden, "The form was stale or did not come from this site (CSRF check failed); reload the page and try again.")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func sameSecret(a, b string) bool {
	return len(a) == len(b) && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

func (d *Dashboard) setCookie(w http.ResponseWriter, name, value string, expires time.Time) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: "/", Expires: expires, HttpOnly: true,
		Secure: d.opts.Secure, SameSite: http.SameSiteLaxMode})
}

func (d *Dashboard) clearCookie(w http.ResponseWriter, name string) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		Secure: d.opts.Secure, SameSite: http.SameSiteLaxMode})
}

// localPath returns next when it is a path on this site, else "/": the
// login form must not send anyone elsewhere.
func localPath(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return "/"
	}
	u, err := url.Parse(next)
	if err != nil || u.Host != "" || u.Scheme != "" {
		return "/"
	}
	return next
}

type loginData struct {
	Next  string
	Token string
	Error string
}

func (d *Dashboard) loginForm(w http.ResponseWriter, r *http.Request) {
	d.renderLogin(w, r, http.StatusOK, loginData{Next: localPath(r.URL.Query().Get("next"))})
}

func (d *Dashboard) renderLogin(w http.ResponseWriter, r *http.Request, status int, data loginData) {
	tok := ""
	if c, err := r.Cookie(loginCookie); err == nil && len(c.Value) == 64 {
		tok = c.Value
	} else {
		tok = store.NewSecret()
		d.setCookie(w, loginCookie, tok, time.Now().Add(time.Hour))
	}
	data.Token = tok
	d.render(w, r, status, "login", "Log in", data, "")
}

// login opens a session for the owner of the token typed into the form.
func (d *Dashboard) login(w http.ResponseWriter, r *http.Request) {
	next := localPath(r.PostFormValue("next"))
	c, err := r.Cookie(loginCookie)
	if err != nil || !sameSecret(r.PostFormValue(csrfField), c.Value) {
		d.renderLogin(w, r, http.StatusForbidden, loginData{Next: next,
			Error: "The login form was stale or did not come from this site; try again."})
		return
	}
	token := strings.TrimSpace(r.PostFormValue("token"))
	if token == "" {
		d.renderLogin(w, r, http.StatusBadRequest, loginData{Next: next, Error: "Enter your token."})
		return
	}
	expires := time.Now().Add(d.opts.SessionTTL)
	secret, u, err := d.st.CreateWebSession(r.Context(), token, expires)
	var expired *store.ExpiredTokenError
	switch {
	case errors.As(err, &expired):
		d.renderLogin(w, r, http.StatusForbidden, loginData{Next: next,
			Error: "This token expired at " + expired.ExpiresAt.Format(timeLayout) + "; ask an admin for a new one."})
		return
	case errors.Is(err, store.ErrNotFound):
		d.renderLogin(w, r, http.StatusForbidden, loginData{Next: next, Error: "Unknown or disabled token."})
		return
	case err != nil:
		d.fail(w, r, err)
		return
	}
	d.setCookie(w, sessionCookie, secret, expires)
	d.clearCookie(w, loginCookie)
	d.log.Info().Str("user", u.Username).Msg("dashboard login")
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (d *Dashboard) logout(w http.ResponseWriter, r *http.Request) {
	if v := viewerFrom(r.Context()); v.session != "" {
		if err := d.st.DeleteWebSession(r.Context(), v.session); err != nil {
			d.fail(w, r, err)
			return
		}
	}
	d.clearCookie(w, sessionCookie)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// flash is a message for the next page: the outcome of an action.
type flash struct {
	Error bool   `json:"e,omitempty"`
	Text  string `json:"t"`
}

func (d *Dashboard) setFlash(w http.ResponseWriter, f flash) {
	b, _ := json.Marshal(f)
	http.SetCookie(w, &http.Cookie{Name: flashCookie, Value: base64.RawURLEncoding.EncodeToString(b), Path: "/",
		MaxAge: 60, HttpOnly: true, Secure: d.opts.Secure, SameSite: http.SameSiteLaxMode})
}

// takeFlash returns the message waiting for this page, if any, and
// removes it.
func (d *Dashboard) takeFlash(w http.ResponseWriter, r *http.Request) *flash {
	c, err := r.Cookie(flashCookie)
	if err != nil {
		return nil
	}
	d.clearCookie(w, flashCookie)
	b, err := base64.RawURLEncoding.DecodeString(c.Value)
	if err != nil {
		return nil
	}
	var f flash
	if json.Unmarshal(b, &f) != nil || f.Text == "" {
		return nil
	}
	return &f
}
