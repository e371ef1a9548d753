package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/kiln-ci/kiln/schemas"
)

// DefaultUserAgent is the User-Agent header sent unless WithUserAgent
// replaces it.
const DefaultUserAgent = "kiln-client"

// MaxResponseBytes caps how much of a response body the client reads; a
// longer body is an error.
const MaxResponseBytes = 32 << 20

// maxRedirects is how many redirects the default redirect policy follows.
const maxRedirects = 10

// Header names of debusine's API.
const (
	headerToken = "Token"
	headerScope = "X-Debusine-Scope"
)

// Client calls Kiln's REST API. It is safe for concurrent use.
type Client struct {
	apiURL    string // as given to New, without trailing slashes
	token     string
	scope     string
	userAgent string
	http      *http.Client
}

// Option configures a Client in New.
type Option func(*Client)

// WithScope sends scope in the X-Debusine-Scope header of every request.
// Default: no header, which the server reads as its default scope.
func WithScope(scope string) Option {
	return func(c *Client) { c.scope = scope }
}

// WithHTTPClient makes the Client send its requests with hc. Default: a
// client on http.DefaultTransport without an overall timeout (bound calls
// with their context). Unless hc has its own CheckRedirect, the Client
// follows at most 10 redirects and drops the Token header on a redirect to
// another scheme or host.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) {
		if hc == nil {
			return
		}
		cp := *hc
		if cp.CheckRedirect == nil {
			cp.CheckRedirect = checkRedirect
		}
		c.http = &cp
	}
}

// WithUserAgent sets the User-Agent header. Default: DefaultUserAgent.
func WithUserAgent(ua string) Option {
	return func(c *Client) { c.userAgent = ua }
}

// New returns a Client of the API at apiURL, which includes the /api prefix
// (debusine's api-url, for example http://127.0.0.1:8080/api, with or without
// a trailing slash). token, when not empty, is sent in the Token header.
func New(apiURL, token string, opts ...Option) *Client {
	c := &Client{
		apiURL:    strings.TrimRight(apiURL, "/"),
		token:     token,
		userAgent: DefaultUserAgent,
		http:      &http.Client{CheckRedirect: checkRedirect},
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// APIURL returns the API URL the Client was made with, without trailing
// slashes.
func (c *Client) APIURL() string { return c.apiURL }

// checkRedirect is the default redirect policy: at most maxRedirects, and
// never the token to another scheme or host.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("stopped after %d redirects", maxRedirects)
	}
	first := via[0].URL
	if req.URL.Scheme != first.Scheme || req.URL.Host != first.Host {
		req.Header.Del(headerToken)
	}
	return nil
}

// endpoint returns the URL of an API path such as "work-request/5/".
func (c *Client) endpoint(path string, query url.Values) string {
	u := c.apiURL + "/1.0/" + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	return u
}

// call is one HTTP exchange with the API.
type call struct {
	method string
	url    string
	// body, when not nil, is sent as JSON.
	body any
	// expect lists the acceptable status codes.
	expect []int
	// token, when tokenSet, replaces the Client's token for this call.
	token    string
	tokenSet bool
}

// response is what came back from a successful call.
type response struct {
	status int
	body   []byte
}

// do performs cl. It returns a *ProblemError for any problem+json response,
// an *HTTPError for any other status not in cl.expect, and a transport error
// (see IsTransient) when no complete response arrived.
func (c *Client) do(ctx context.Context, cl call) (response, error) {
	req, err := c.request(ctx, cl)
	if err != nil {
		return response{}, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return response{}, &transportError{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes+1))
	if err != nil {
		return response{}, &transportError{err: fmt.Errorf("read response of %s %s: %w", cl.method, cl.url, err)}
	}
	if len(b) > MaxResponseBytes {
		return response{}, fmt.Errorf("response of %s %s is larger than %d bytes", cl.method, cl.url, MaxResponseBytes)
	}
	if err := responseError(cl, resp, b); err != nil {
		return response{}, err
	}
	return response{status: resp.StatusCode, body: b}, nil
}

// request builds the HTTP request of cl with the Client's headers.
func (c *Client) request(ctx context.Context, cl call) (*http.Request, error) {
	var body io.Reader
	if cl.body != nil {
		b, err := json.Marshal(cl.body)
		if err != nil {
			return nil, fmt.Errorf("encode request body: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, cl.url, body)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	if cl.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json, "+schemas.ProblemContentType)
	if c.userAgent != "" {
		req.Header.Set("User-Agent", c.userAgent)
	}
	token := c.token
	if cl.tokenSet {
		token = cl.token
	}
	if token != "" {
		req.Header.Set(headerToken, token)
	}
	if c.scope != "" {
		req.Header.Set(headerScope, c.scope)
	}
	return req, nil
}

// responseError returns the error that resp (with body b) stands for: a
// *ProblemError for any problem+json response, an *HTTPError for any other
// status not in cl.expect, nil otherwise.
func responseError(cl call, resp *http.Response, b []byte) error {
	if isProblem(resp.Header.Get("Content-Type")) {
		var p schemas.Problem
		if json.Unmarshal(b, &p) == nil {
			return &ProblemError{StatusCode: resp.StatusCode, Problem: p, Method: cl.method, URL: cl.url}
		}
	}
	if !slices.Contains(cl.expect, resp.StatusCode) {
		return &HTTPError{StatusCode: resp.StatusCode, Body: string(b), Method: cl.method, URL: cl.url}
	}
	return nil
}

// isProblem reports whether a Content-Type header names
// application/problem+json, whatever its parameters.
func isProblem(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && mt == schemas.ProblemContentType
}

// doJSON performs cl and decodes the body of the response into out.
func (c *Client) doJSON(ctx context.Context, cl call, out any) error {
	resp, err := c.do(ctx, cl)
	if err != nil {
		return err
	}
	return decodeBody(cl, resp, out)
}

// decodeBody decodes the JSON body of resp, the response to cl, into out.
func decodeBody(cl call, resp response, out any) error {
	if err := json.Unmarshal(resp.body, out); err != nil {
		return fmt.Errorf("decode response of %s %s (HTTP %d): %w", cl.method, cl.url, resp.status, err)
	}
	return nil
}

// doEmpty performs cl and checks that the response has no body, as the
// debusine client does for endpoints that return nothing.
func (c *Client) doEmpty(ctx context.Context, cl call) error {
	resp, err := c.do(ctx, cl)
	if err != nil {
		return err
	}
	if len(resp.body) != 0 {
		return fmt.Errorf("%s %s (HTTP %d): expected an empty body, got %q", cl.method, cl.url, resp.status, truncate(string(resp.body), 200))
	}
	return nil
}

// WhoAmI returns who the server takes the Client's token for.
func (c *Client) WhoAmI(ctx context.Context) (schemas.WhoAmI, error) {
	var w schemas.WhoAmI
	err := c.doJSON(ctx, call{method: http.MethodGet, url: c.endpoint("whoami/", nil), expect: []int{http.StatusOK}}, &w)
	if err != nil {
		return schemas.WhoAmI{}, fmt.Errorf("whoami: %w", err)
	}
	return w, nil
}

// transportError marks a failure to get a complete response: the request
// may not have reached the server, so a caller may retry it.
type transportError struct{ err error }

func (e *transportError) Error() string { return e.err.Error() }
func (e *transportError) Unwrap() error { return e.err }

// isTransport reports whether err is a transport failure.
func isTransport(err error) bool {
	var te *transportError
	return errors.As(err, &te)
}

// truncate shortens s to at most n bytes, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
