// Package web is kiln-server's dashboard: server-rendered pages
// (html/template) of work requests, workers, devices and artifacts, kept
// live with htmx and Server-Sent Events, and the browser login (sessions,
// CSRF tokens). It reads through the store and acts (abort, retry, device
// health, worker enable) only through the Backend the server gives it, so
// that the server's own rules decide who may do what; it writes no SQL and
// holds no state of its own beyond what a request needs. All assets are
// embedded files: it works offline and needs no build step.
package web
