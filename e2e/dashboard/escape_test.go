package dashboard

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server"
)

// The same content as TestUserContentShowsAsText, looked at as the server
// sends it, without a browser: the page, the event stream of its log and
// the plain-text log.
func TestUserContentIsEscapedServerSide(t *testing.T) {
	b := setup(t, func(c *server.Config) { c.WebAnonymous = true })
	b.startWorker("runner", nil)
	wr := b.create("alice", "script", scriptData(userContent))
	b.waitFor("the request to end", func() bool { return b.get(wr.ID).Status == schemas.StatusCompleted })

	get := func(path string) (*http.Response, string) {
		t.Helper()
		resp, err := http.Get(b.srv.URL() + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		return resp, string(body)
	}
	page := fmt.Sprintf("/work-requests/%d/", wr.ID)
	_, html := get(page)
	require.Contains(t, html, `&lt;script&gt;window.kilnDataXSS=1&lt;/script&gt;&lt;b id=\&#34;data-bold\&#34;&gt;bold&lt;/b&gt;`)
	require.NotContains(t, html, "<script>window.kiln")
	require.NotContains(t, html, `<b id=`)
	require.Contains(t, html, "&lt;script&gt;window.kilnLogXSS=1", "the output at completion")

	// The log, as the page's event stream sends it.
	live := regexp.MustCompile(`sse-connect="([^"]+)"`).FindStringSubmatch(html)
	require.NotNil(t, live)
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.srv.URL()+strings.ReplaceAll(live[1], "&amp;", "&"), nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var logData []string
	sc := bufio.NewScanner(resp.Body)
	event := ""
	for sc.Scan() {
		line := sc.Text()
		if e, ok := strings.CutPrefix(line, "event: "); ok {
			event = e
		}
		if d, ok := strings.CutPrefix(line, "data: "); ok && event == "log" {
			logData = append(logData, d)
		}
		if line == "" && event == "done" {
			break
		}
		if line == "" {
			event = ""
		}
	}
	stream := strings.Join(logData, "\n")
	require.Contains(t, stream, `&lt;script&gt;window.kilnLogXSS=1&lt;/script&gt;&lt;img id=&#34;log-img&#34; src=&#34;x&#34;&gt; &amp; done`)
	require.NotContains(t, stream, "<")

	resp2, text := get(page + "log.txt")
	require.Equal(t, "text/plain; charset=utf-8", resp2.Header.Get("Content-Type"))
	require.Equal(t, "nosniff", resp2.Header.Get("X-Content-Type-Options"))
	require.Contains(t, text, `<script>window.kilnLogXSS=1</script><img id="log-img" src="x"> & done`)
}
