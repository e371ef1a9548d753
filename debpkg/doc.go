// Package debpkg describes Debian package files as debusine artifacts: a
// .dsc as a debian:source-package, a .changes as a debian:upload plus the
// source and binary package artifacts it carries, a .deb as a
// debian:binary-package, with the categories and data debusine's client
// gives them. It checks the files a .dsc or .changes lists against their
// sizes and checksums, and reads .deb control data with dpkg-deb. It only
// describes: uploading the artifacts is package client's job.
package debpkg
