package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/kiln-ci/kiln/schemas"
)

// stream performs cl and returns the open response body for the caller to
// read; errors are as for do.
func (c *Client) stream(ctx context.Context, cl call) (io.ReadCloser, error) {
	req, err := c.request(ctx, cl)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain, text/event-stream, "+schemas.ProblemContentType)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &transportError{err: err}
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err := responseError(cl, resp, b); err != nil {
			return nil, err
		}
		return nil, &HTTPError{StatusCode: resp.StatusCode, Body: string(b), Method: cl.method, URL: cl.url}
	}
	return resp.Body, nil
}

// Log writes the live log of a work request stored so far to w.
func (c *Client) Log(ctx context.Context, id int64, w io.Writer) error {
	cl := call{method: http.MethodGet, url: c.endpoint(workRequestPath(id, "log"), nil), expect: []int{http.StatusOK}}
	body, err := c.stream(ctx, cl)
	if err != nil {
		return fmt.Errorf("log of work request %d: %w", id, err)
	}
	defer body.Close()
	if _, err := io.Copy(w, body); err != nil {
		return &transportError{err: fmt.Errorf("log of work request %d: %w", id, err)}
	}
	return nil
}

// FollowLog streams the live log of a work request from its beginning,
// calling onChunk for every chunk, until the request has ended; it returns
// the final state.
func (c *Client) FollowLog(ctx context.Context, id int64, onChunk func(schemas.LogChunk)) (schemas.LogEnd, error) {
	q := url.Values{"follow": {"1"}}
	cl := call{method: http.MethodGet, url: c.endpoint(workRequestPath(id, "log"), q), expect: []int{http.StatusOK}}
	body, err := c.stream(ctx, cl)
	if err != nil {
		return schemas.LogEnd{}, fmt.Errorf("follow log of work request %d: %w", id, err)
	}
	defer body.Close()
	var end schemas.LogEnd
	err = readEvents(body, func(event, data string) (bool, error) {
		switch event {
		case "chunk":
			var ch schemas.LogChunk
			if err := json.Unmarshal([]byte(data), &ch); err != nil {
				return false, fmt.Errorf("log chunk: %w", err)
			}
			onChunk(ch)
		case "end":
			if err := json.Unmarshal([]byte(data), &end); err != nil {
				return false, fmt.Errorf("log end: %w", err)
			}
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		return end, fmt.Errorf("follow log of work request %d: %w", id, err)
	}
	if end.Status == "" {
		return end, &transportError{err: errors.New("the log stream ended before the work request did")}
	}
	return end, nil
}

// readEvents parses a text/event-stream, calling f for each event until f
// says it is done or the stream ends.
func readEvents(r io.Reader, f func(event, data string) (done bool, err error)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 8<<20)
	var event string
	var data []string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if len(data) > 0 {
				done, err := f(event, strings.Join(data, "\n"))
				if err != nil || done {
					return err
				}
			}
			event, data = "", nil
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "event:"):
			event = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "data:"):
			data = append(data, strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		}
	}
	if err := sc.Err(); err != nil {
		return &transportError{err: err}
	}
	return nil
}
