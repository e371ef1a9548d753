// Package cache is a worker-local, content-addressed cache of large input
// files (build environment tarballs and the like) that many runs reuse. It
// owns the sha256/ and tmp/ subdirectories of its directory, keeps every file
// under its lower-case hex SHA-256, verifies what it stores, and evicts the
// least recently used unpinned files beyond a byte cap; a file a caller holds
// is never removed under it.
//
// It must not be shared between processes: one worker process owns the
// directory, so the cache locks only within the process and never on disk.
// It does not know where files come from; the caller's fill function fetches
// them.
package cache
