package client

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/kiln-ci/kiln/schemas"
)

// ProblemError is an application/problem+json response, whatever its status
// code. Methods return it wrapped with what they were doing; find it with
// errors.As.
type ProblemError struct {
	// StatusCode is the HTTP status of the response.
	StatusCode int
	// Problem is the decoded body.
	Problem schemas.Problem
	// Method and URL name the request.
	Method, URL string
}

// Error returns the title, the status, the detail and every validation error.
func (e *ProblemError) Error() string {
	var b strings.Builder
	title := e.Problem.Title
	if title == "" {
		title = "problem"
	}
	fmt.Fprintf(&b, "%s (HTTP %d)", title, e.StatusCode)
	if e.Problem.Detail != "" {
		b.WriteString(": ")
		b.WriteString(e.Problem.Detail)
	}
	for _, v := range e.ValidationErrors() {
		b.WriteString("; ")
		b.WriteString(v.Pointer)
		b.WriteString(": ")
		b.WriteString(v.Message)
	}
	return b.String()
}

// ValidationErrors returns the problem's validation errors, one per message,
// sorted by pointer.
func (e *ProblemError) ValidationErrors() []schemas.ValidationProblem {
	pointers := make([]string, 0, len(e.Problem.ValidationErrors))
	for p := range e.Problem.ValidationErrors {
		pointers = append(pointers, p)
	}
	sort.Strings(pointers)
	var out []schemas.ValidationProblem
	for _, p := range pointers {
		for _, m := range e.Problem.ValidationErrors[p] {
			out = append(out, schemas.ValidationProblem{Pointer: p, Message: m})
		}
	}
	return out
}

// HTTPError is a response with a status the call did not expect and no
// problem+json body. Methods return it wrapped; find it with errors.As.
type HTTPError struct {
	// StatusCode is the HTTP status of the response.
	StatusCode int
	// Body is the response body (at most MaxResponseBytes).
	Body string
	// Method and URL name the request.
	Method, URL string
}

// Error returns the status, the request and the start of the body.
func (e *HTTPError) Error() string {
	msg := fmt.Sprintf("unexpected HTTP status %d %s from %s %s", e.StatusCode, http.StatusText(e.StatusCode), e.Method, e.URL)
	if body := strings.TrimSpace(e.Body); body != "" {
		msg += ": " + truncate(body, 200)
	}
	return msg
}

// StatusCode returns the HTTP status of the response that err reports (a
// *ProblemError or an *HTTPError), or 0 when err has none.
func StatusCode(err error) int {
	var pe *ProblemError
	if errors.As(err, &pe) {
		return pe.StatusCode
	}
	var he *HTTPError
	if errors.As(err, &he) {
		return he.StatusCode
	}
	return 0
}

// IsNotFound reports whether err is a 404 response.
func IsNotFound(err error) bool { return StatusCode(err) == http.StatusNotFound }

// IsForbidden reports whether err is a 403 response: a missing, unknown or
// disabled token, or a token without the permission.
func IsForbidden(err error) bool { return StatusCode(err) == http.StatusForbidden }

// IsConflict reports whether err is a 409 response.
func IsConflict(err error) bool { return StatusCode(err) == http.StatusConflict }

// IsTransient reports whether a caller may retry the call that returned
// err: no complete response arrived (connection refused or reset, a
// timeout), or the server answered 429, 500, 502, 503 or 504. It does not
// look at the caller's context; check ctx.Err() first.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	if isTransport(err) {
		return true
	}
	switch StatusCode(err) {
	case http.StatusTooManyRequests, http.StatusInternalServerError, http.StatusBadGateway,
		http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}
