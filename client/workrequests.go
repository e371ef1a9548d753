package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/kiln-ci/kiln/schemas"
)

// Polling intervals of WaitWorkRequest.
const (
	waitMinInterval = 100 * time.Millisecond
	waitMaxInterval = 2 * time.Second
)

// ListOptions selects and pages work requests in ListWorkRequests. Zero
// fields are not sent.
type ListOptions struct {
	// Limit is the page size the server is asked for.
	Limit int
	// Status keeps requests with this status only.
	Status string
	// TaskName keeps requests of this task only.
	TaskName string
	// Cursor is the opaque position of a page, from a previous page's next
	// or previous URL.
	Cursor string
}

func (o ListOptions) query() url.Values {
	q := url.Values{}
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	if o.Status != "" {
		q.Set("status", o.Status)
	}
	if o.TaskName != "" {
		q.Set("task_name", o.TaskName)
	}
	if o.Cursor != "" {
		q.Set("cursor", o.Cursor)
	}
	return q
}

func workRequestPath(id int64, action string) string {
	p := "work-request/" + strconv.FormatInt(id, 10) + "/"
	if action != "" {
		p += action + "/"
	}
	return p
}

// CreateWorkRequest submits a work request and returns it as stored. Like
// the debusine client it always sends event_reactions and task_data, as {}
// when they are empty.
func (c *Client) CreateWorkRequest(ctx context.Context, wr schemas.WorkRequestCreate) (schemas.WorkRequest, error) {
	if len(wr.EventReactions) == 0 {
		wr.EventReactions = json.RawMessage("{}")
	}
	if len(wr.TaskData) == 0 {
		wr.TaskData = json.RawMessage("{}")
	}
	var out schemas.WorkRequest
	err := c.doJSON(ctx, call{
		method: http.MethodPost,
		url:    c.endpoint("work-request/", nil),
		body:   wr,
		expect: []int{http.StatusOK},
	}, &out)
	if err != nil {
		return schemas.WorkRequest{}, fmt.Errorf("create work request %q: %w", wr.TaskName, err)
	}
	return out, nil
}

// GetWorkRequest returns work request id.
func (c *Client) GetWorkRequest(ctx context.Context, id int64) (schemas.WorkRequest, error) {
	var out schemas.WorkRequest
	err := c.doJSON(ctx, call{
		method: http.MethodGet,
		url:    c.endpoint(workRequestPath(id, ""), nil),
		expect: []int{http.StatusOK},
	}, &out)
	if err != nil {
		return schemas.WorkRequest{}, fmt.Errorf("get work request %d: %w", id, err)
	}
	return out, nil
}

// ListWorkRequests returns the first page of work requests that opts
// selects, newest first. Follow the page's Next with NextPage.
func (c *Client) ListWorkRequests(ctx context.Context, opts ListOptions) (schemas.Page[schemas.WorkRequest], error) {
	page, err := c.getPage(ctx, c.endpoint("work-request/", opts.query()))
	if err != nil {
		return page, fmt.Errorf("list work requests: %w", err)
	}
	return page, nil
}

// NextPage returns the page of work requests at nextURL, a page's Next (or
// Previous) as the server gave it: an absolute URL, requested as it is with
// the Client's headers.
func (c *Client) NextPage(ctx context.Context, nextURL string) (schemas.Page[schemas.WorkRequest], error) {
	u, err := url.Parse(nextURL)
	if err != nil || !u.IsAbs() || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return schemas.Page[schemas.WorkRequest]{}, fmt.Errorf("list work requests: page URL %q is not an absolute http(s) URL", nextURL)
	}
	page, err := c.getPage(ctx, nextURL)
	if err != nil {
		return page, fmt.Errorf("list work requests: %w", err)
	}
	return page, nil
}

func (c *Client) getPage(ctx context.Context, u string) (schemas.Page[schemas.WorkRequest], error) {
	var page schemas.Page[schemas.WorkRequest]
	err := c.doJSON(ctx, call{method: http.MethodGet, url: u, expect: []int{http.StatusOK}}, &page)
	return page, err
}

// IterWorkRequests returns up to maxItems work requests that opts selects
// (all of them when maxItems <= 0), newest first, following each page's next URL.
func (c *Client) IterWorkRequests(ctx context.Context, opts ListOptions, maxItems int) ([]schemas.WorkRequest, error) {
	page, err := c.ListWorkRequests(ctx, opts)
	if err != nil {
		return nil, err
	}
	var out []schemas.WorkRequest
	seen := map[string]bool{}
	for {
		out = append(out, page.Results...)
		if maxItems > 0 && len(out) >= maxItems {
			return out[:maxItems], nil
		}
		if page.Next == nil || *page.Next == "" {
			return out, nil
		}
		next := *page.Next
		if seen[next] {
			return out, fmt.Errorf("list work requests: page %s came back twice", next)
		}
		seen[next] = true
		if page, err = c.NextPage(ctx, next); err != nil {
			return out, err
		}
	}
}

// UpdateWorkRequest changes what patch sets and returns the request.
func (c *Client) UpdateWorkRequest(ctx context.Context, id int64, patch schemas.WorkRequestPatch) (schemas.WorkRequest, error) {
	var out schemas.WorkRequest
	err := c.doJSON(ctx, call{
		method: http.MethodPatch,
		url:    c.endpoint(workRequestPath(id, ""), nil),
		body:   patch,
		expect: []int{http.StatusOK},
	}, &out)
	if err != nil {
		return schemas.WorkRequest{}, fmt.Errorf("update work request %d: %w", id, err)
	}
	return out, nil
}

// AbortWorkRequest aborts work request id and returns it.
func (c *Client) AbortWorkRequest(ctx context.Context, id int64) (schemas.WorkRequest, error) {
	out, err := c.postAction(ctx, id, "abort")
	if err != nil {
		return out, fmt.Errorf("abort work request %d: %w", id, err)
	}
	return out, nil
}

// RetryWorkRequest retries work request id and returns the new work request
// that supersedes it.
func (c *Client) RetryWorkRequest(ctx context.Context, id int64) (schemas.WorkRequest, error) {
	out, err := c.postAction(ctx, id, "retry")
	if err != nil {
		return out, fmt.Errorf("retry work request %d: %w", id, err)
	}
	return out, nil
}

// postAction POSTs {} to a work request's action endpoint, as debusine's
// client does for abort and retry.
func (c *Client) postAction(ctx context.Context, id int64, action string) (schemas.WorkRequest, error) {
	var out schemas.WorkRequest
	err := c.doJSON(ctx, call{
		method: http.MethodPost,
		url:    c.endpoint(workRequestPath(id, action), nil),
		body:   struct{}{},
		expect: []int{http.StatusOK},
	}, &out)
	if err != nil {
		return schemas.WorkRequest{}, err
	}
	return out, nil
}

// WaitWorkRequest polls work request id until its status is terminal
// (completed or aborted) and returns it. It calls onChange, when not nil,
// with the first state it sees and again whenever the status changes. The
// interval grows from 100ms to 2s and starts over after a change. Transient
// errors (see IsTransient) are retried; any other error ends the wait. When
// ctx ends first, it returns the last state seen and ctx's error, wrapped.
func (c *Client) WaitWorkRequest(ctx context.Context, id int64, onChange func(schemas.WorkRequest)) (schemas.WorkRequest, error) {
	var (
		last     schemas.WorkRequest
		seen     bool
		interval = waitMinInterval
	)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("wait for work request %d: %w", id, ctx.Err())
		case <-timer.C:
		}
		wr, err := c.GetWorkRequest(ctx, id)
		switch {
		case err == nil:
			if !seen || wr.Status != last.Status {
				interval = waitMinInterval
				if onChange != nil {
					onChange(wr)
				}
			}
			last, seen = wr, true
			if wr.Status.Terminal() {
				return wr, nil
			}
		case ctx.Err() != nil:
			return last, fmt.Errorf("wait for work request %d: %w", id, ctx.Err())
		case !IsTransient(err):
			return last, fmt.Errorf("wait for work request %d: %w", id, err)
		}
		timer.Reset(interval)
		interval = min(2*interval, waitMaxInterval)
	}
}
