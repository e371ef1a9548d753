// Package cli is the kiln command: a cobra command tree that reads the
// debusine-style client configuration (config.ini), calls the server through
// package client and prints what comes back as YAML on standard output.
// Errors go to standard error with debusine's exit codes (2 for bad usage, 3
// for everything else). It owns no protocol of its own: every request is a
// client.Client method.
package cli
