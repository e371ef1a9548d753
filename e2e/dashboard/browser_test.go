package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/kiln-ci/kiln/server/store/storetest"
)

// browser is a headless Chromium on one tab.
type browser struct {
	t    *testing.T
	ctx  context.Context
	base string
	shot int
}

// chromium finds Debian's Chromium (or another Chrome): KILN_TEST_CHROMIUM,
// else chromium or chromium-browser on the PATH. Without one the test is
// skipped, or fails under KILN_REQUIRE_ALL=1.
func chromium(t *testing.T) string {
	t.Helper()
	names := []string{"chromium", "chromium-browser"}
	if p := os.Getenv("KILN_TEST_CHROMIUM"); p != "" {
		names = []string{p}
	}
	var err error
	for _, name := range names {
		var p string
		if p, err = exec.LookPath(name); err == nil {
			return p
		}
	}
	storetest.Unavailable(t, "Chromium (apt-get install chromium)", err)
	return ""
}

// newBrowser starts a headless Chromium with a fresh profile and nothing
// that reaches for the network on its own; it stops at the end of the test.
func newBrowser(t *testing.T, base string) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("no-proxy-server", true),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
	})
	// The first Run starts the browser, for the life of ctx: a deadline
	// on it would end the browser, so a watchdog bounds the start.
	started := make(chan struct{})
	go func() {
		select {
		case <-started:
		case <-time.After(60 * time.Second):
			cancelAlloc()
		}
	}()
	err := chromedp.Do(ctx)
	close(started)
	if err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	return &browser{t: t, ctx: ctx, base: base}
}

// run runs actions with a deadline; on failure it saves a screenshot and
// fails the test.
func (br *browser) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	br.t.Helper()
	runIn(br, what, chromedp.Steps(actions...))
}

// runIn runs one action that returns a value, as run does.
func runIn[T any](br *browser, what string, action chromedp.Action[T]) T {
	br.t.Helper()
	ctx, cancel := context.WithTimeout(br.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, action)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = errors.New("timed out after 30s")
		}
		br.screenshot("failed")
		br.t.Fatalf("%s: %v", what, err)
	}
	return v
}

// text is the text of the element with that id.
func (br *browser) text(id string) string {
	br.t.Helper()
	return runIn(br, "read #"+id, chromedp.TextContent(chromedp.ID(id)))
}

// screenshot saves the whole page as a PNG in the test's artifact
// directory.
func (br *browser) screenshot(name string) {
	br.t.Helper()
	ctx, cancel := context.WithTimeout(br.ctx, 15*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		br.t.Logf("screenshot %s: %v", name, err)
		return
	}
	br.shot++
	path := filepath.Join(br.t.ArtifactDir(), fmt.Sprintf("%02d-%s.png", br.shot, unsafeName.ReplaceAllString(name, "_")))
	if err := os.WriteFile(path, png, 0o644); err != nil {
		br.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	br.t.Logf("screenshot: %s", path)
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// login logs in through the form with a user token.
func (br *browser) login(token string) {
	br.t.Helper()
	br.run("log in",
		chromedp.Navigate(br.base+"/login"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), token),
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("whoami")),
	)
}

// jsString is s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// textIncludes polls until the text of the element with that id includes
// s.
func textIncludes(id, s string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](`(function(){ var e = document.getElementById(`+jsString(id)+`);
		return e !== null && e.textContent.includes(`+jsString(s)+`); })()`, chromedp.WithPollingInterval(50*time.Millisecond))
}
