// Package dashboard holds the end-to-end tests of the web dashboard: a real
// kiln-server (SQLite, embedded NATS) and a real worker in the test
// process, driven through Debian's Chromium, headless, with chromedp. A
// machine without Chromium skips them, or fails them under
// KILN_REQUIRE_ALL=1. Each test saves screenshots in its artifact
// directory (go test -artifacts keeps them under -outputdir).
package dashboard
