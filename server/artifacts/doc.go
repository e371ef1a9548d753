// Package artifacts owns the contents of artifact files: a content-addressed
// file store (each content once, by SHA-256, under the data directory), the
// bookkeeping of resumable chunked uploads (debusine's Content-Range
// protocol, hashed while streaming, the hash state kept between chunks) and
// the garbage collector that deletes expired artifacts and the contents no
// artifact lists any more. It changes the database only through the store
// package and never decides who may do what: the HTTP handlers do.
package artifacts
