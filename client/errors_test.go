package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
)

func TestErrorClassification(t *testing.T) {
	problem := func(status int) error {
		return fmt.Errorf("get work request 5: %w", &ProblemError{StatusCode: status, Problem: schemas.Problem{Title: "Error"}})
	}
	plain := func(status int) error {
		return fmt.Errorf("get work request 5: %w", &HTTPError{StatusCode: status, Method: "GET", URL: "http://h/api/1.0/x/"})
	}
	transport := fmt.Errorf("whoami: %w", &transportError{err: errors.New("connection refused")})
	tests := []struct {
		name                                 string
		err                                  error
		status                               int
		notFound, forbidden, conflict, retry bool
	}{
		{name: "nil", err: nil},
		{name: "problem 404", err: problem(http.StatusNotFound), status: 404, notFound: true},
		{name: "plain 404", err: plain(http.StatusNotFound), status: 404, notFound: true},
		{name: "problem 403", err: problem(http.StatusForbidden), status: 403, forbidden: true},
		{name: "problem 409", err: problem(http.StatusConflict), status: 409, conflict: true},
		{name: "plain 503", err: plain(http.StatusServiceUnavailable), status: 503, retry: true},
		{name: "problem 500", err: problem(http.StatusInternalServerError), status: 500, retry: true},
		{name: "plain 429", err: plain(http.StatusTooManyRequests), status: 429, retry: true},
		{name: "problem 400", err: problem(http.StatusBadRequest), status: 400},
		{name: "transport", err: transport, retry: true},
		{name: "other", err: context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.status, StatusCode(tt.err))
			require.Equal(t, tt.notFound, IsNotFound(tt.err))
			require.Equal(t, tt.forbidden, IsForbidden(tt.err))
			require.Equal(t, tt.conflict, IsConflict(tt.err))
			require.Equal(t, tt.retry, IsTransient(tt.err))
		})
	}
}

func TestProblemErrorMessage(t *testing.T) {
	err := &ProblemError{StatusCode: 400, Problem: schemas.Problem{
		Title:  "Cannot deserialize work request",
		Detail: "task data is invalid",
		ValidationErrors: map[string][]string{
			"/task_data/sleep_seconds": {"must be >= 0"},
			"non_field_errors":         {"Invalid fields: foo", "Invalid fields: bar"},
		},
	}}
	require.Equal(t, "Cannot deserialize work request (HTTP 400): task data is invalid; "+
		"/task_data/sleep_seconds: must be >= 0; non_field_errors: Invalid fields: foo; non_field_errors: Invalid fields: bar", err.Error())
}

func TestIsProblem(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/problem+json":                true,
		"application/problem+json; charset=utf-8": true,
		"Application/Problem+JSON":                true,
		"application/json":                        false,
		"":                                        false,
		"text/html; charset=utf-8":                false,
	} {
		require.Equal(t, want, isProblem(ct), ct)
	}
}

func TestEndpoint(t *testing.T) {
	for _, api := range []string{"http://127.0.0.1:8080/api", "http://127.0.0.1:8080/api/", "http://127.0.0.1:8080/api//"} {
		c := New(api, "")
		require.Equal(t, "http://127.0.0.1:8080/api/1.0/work-request/5/abort/", c.endpoint(workRequestPath(5, "abort"), nil))
		require.Equal(t, "http://127.0.0.1:8080/api/1.0/work-request/?limit=20&status=running&task_name=noop",
			c.endpoint("work-request/", ListOptions{Limit: 20, Status: "running", TaskName: "noop"}.query()))
	}
}
