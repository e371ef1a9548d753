// Package client is the Go library of Kiln's REST API, used by the kiln
// command, the worker daemon and the end-to-end tests. It speaks debusine's
// dialect of the API: requests go to <api-url>/1.0/<path>/ with the Token and
// X-Debusine-Scope headers, and application/problem+json errors come back as
// *ProblemError. It holds no state beyond its configuration and does not
// retry, except WaitWorkRequest, which polls until a work request ends;
// callers bound every call with their context.
package client
