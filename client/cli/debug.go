package cli

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// debugBodyBytes caps how much of each body --debug prints.
const debugBodyBytes = 64 << 10

// debugTransport prints each request and response on w for --debug, with
// the Token header hidden.
type debugTransport struct {
	next http.RoundTripper
	mu   sync.Mutex
	w    io.Writer
}

// RoundTrip implements http.RoundTripper.
func (t *debugTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "> %s %s\n", req.Method, req.URL)
	writeHeaders(&b, "> ", req.Header)
	if req.GetBody != nil {
		if body, err := req.GetBody(); err == nil {
			data, _ := io.ReadAll(io.LimitReader(body, debugBodyBytes))
			body.Close()
			writeBody(&b, "> ", data)
		}
	}
	t.print(b.String())

	start := time.Now()
	resp, err := t.next.RoundTrip(req)
	b.Reset()
	if err != nil {
		fmt.Fprintf(&b, "< error after %s: %v\n", time.Since(start).Round(time.Millisecond), err)
		t.print(b.String())
		return nil, err
	}
	fmt.Fprintf(&b, "< %s (%s)\n", resp.Status, time.Since(start).Round(time.Millisecond))
	writeHeaders(&b, "< ", resp.Header)
	data, rerr := io.ReadAll(io.LimitReader(resp.Body, debugBodyBytes))
	writeBody(&b, "< ", data)
	t.print(b.String())
	resp.Body = readCloser{Reader: io.MultiReader(bytes.NewReader(data), errReader{rerr}, resp.Body), Closer: resp.Body}
	return resp, nil
}

func (t *debugTransport) print(s string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	io.WriteString(t.w, s)
}

func writeHeaders(b *strings.Builder, prefix string, h http.Header) {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range h[k] {
			if http.CanonicalHeaderKey(k) == "Token" {
				v = "(hidden)"
			}
			fmt.Fprintf(b, "%s%s: %s\n", prefix, k, v)
		}
	}
}

func writeBody(b *strings.Builder, prefix string, data []byte) {
	if len(data) == 0 {
		return
	}
	for line := range strings.SplitSeq(strings.TrimRight(string(data), "\n"), "\n") {
		fmt.Fprintf(b, "%s%s\n", prefix, line)
	}
}

// readCloser joins a Reader and a Closer.
type readCloser struct {
	io.Reader
	io.Closer
}

// errReader returns err, or io.EOF when err is nil.
type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	return 0, io.EOF
}
