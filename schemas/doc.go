// Package schemas owns the shapes that cross a process boundary: the JSON
// Schema of every task's task_data (embedded files under tasks/) and the wire
// types of the REST API and the NATS messages. The server, the worker, the
// client and the tests all use these types, so a field is defined once. It
// must not depend on any other Kiln package.
package schemas
