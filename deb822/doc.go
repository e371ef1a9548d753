// Package deb822 parses Debian control-format files (.dsc, .changes,
// DEBIAN/control): paragraphs of "Name: value" fields with continuation
// lines, optionally wrapped in an OpenPGP clear signature. Field values are
// the strings python-debian's Deb822 gives, so that data built from them
// matches debusine's, and Dict reproduces python-debian's Dsc and Changes
// split of the checksum fields. It strips a clear-signature wrapper but never
// verifies it, and it knows nothing about artifacts or packages beyond the
// Files and Checksums-Sha256 fields (see package debpkg for those).
package deb822
