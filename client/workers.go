package client

import (
	"context"
	"fmt"
	"net/http"

	"github.com/kiln-ci/kiln/schemas"
)

// RegisterWorker registers a worker by the token in reg (which the worker
// made up and will use from then on). The server answers 201 with no body.
// activationToken, when not empty, is sent in the Token header instead of
// the Client's token; when empty, no Token header is sent.
func (c *Client) RegisterWorker(ctx context.Context, reg schemas.WorkerRegister, activationToken string) error {
	err := c.doEmpty(ctx, call{
		method:   http.MethodPost,
		url:      c.endpoint("worker/register/", nil),
		body:     reg,
		expect:   []int{http.StatusCreated},
		token:    activationToken,
		tokenSet: true,
	})
	if err != nil {
		return fmt.Errorf("register worker %q: %w", reg.FQDN, err)
	}
	return nil
}

// PutDynamicMetadata replaces the worker's dynamic metadata (a flat object
// of keys such as system:architectures); the server answers 204.
func (c *Client) PutDynamicMetadata(ctx context.Context, metadata map[string]any) error {
	if metadata == nil {
		metadata = map[string]any{}
	}
	err := c.doEmpty(ctx, call{
		method: http.MethodPut,
		url:    c.endpoint("worker/dynamic-metadata/", nil),
		body:   metadata,
		expect: []int{http.StatusNoContent},
	})
	if err != nil {
		return fmt.Errorf("put dynamic metadata: %w", err)
	}
	return nil
}

// WorkerConfig returns what the worker needs to take assignments over NATS.
func (c *Client) WorkerConfig(ctx context.Context) (schemas.WorkerConfig, error) {
	var out schemas.WorkerConfig
	err := c.doJSON(ctx, call{
		method: http.MethodGet,
		url:    c.endpoint("worker/config/", nil),
		expect: []int{http.StatusOK},
	}, &out)
	if err != nil {
		return schemas.WorkerConfig{}, fmt.Errorf("get worker config: %w", err)
	}
	return out, nil
}

// GetNextForWorker returns the work request assigned to the worker, or nil
// when the server has none for it (204).
func (c *Client) GetNextForWorker(ctx context.Context) (*schemas.WorkRequest, error) {
	cl := call{
		method: http.MethodGet,
		url:    c.endpoint("work-request/get-next-for-worker/", nil),
		expect: []int{http.StatusOK, http.StatusNoContent},
	}
	resp, err := c.do(ctx, cl)
	if err != nil {
		return nil, fmt.Errorf("get next work request: %w", err)
	}
	if resp.status == http.StatusNoContent {
		return nil, nil
	}
	var out schemas.WorkRequest
	if err := decodeBody(cl, resp, &out); err != nil {
		return nil, fmt.Errorf("get next work request: %w", err)
	}
	return &out, nil
}

// StartWorkRequest tells the server that the worker starts attempt of work
// request id, which it took from an assignment, and returns the request.
func (c *Client) StartWorkRequest(ctx context.Context, id int64, attempt int) (schemas.WorkRequest, error) {
	var out schemas.WorkRequest
	err := c.doJSON(ctx, call{
		method: http.MethodPost,
		url:    c.endpoint(workRequestPath(id, "start"), nil),
		body:   schemas.WorkRequestStart{Attempt: attempt},
		expect: []int{http.StatusOK},
	}, &out)
	if err != nil {
		return schemas.WorkRequest{}, fmt.Errorf("start work request %d attempt %d: %w", id, attempt, err)
	}
	return out, nil
}

// CompleteWorkRequest reports the result of work request id. The server
// answers 200 with an empty body, which the debusine client insists on.
func (c *Client) CompleteWorkRequest(ctx context.Context, id int64, done schemas.WorkRequestCompleted) error {
	err := c.doEmpty(ctx, call{
		method: http.MethodPut,
		url:    c.endpoint(workRequestPath(id, "completed"), nil),
		body:   done,
		expect: []int{http.StatusOK},
	})
	if err != nil {
		return fmt.Errorf("complete work request %d with %q: %w", id, done.Result, err)
	}
	return nil
}

// ListWorkers returns every worker.
func (c *Client) ListWorkers(ctx context.Context) ([]schemas.Worker, error) {
	var out []schemas.Worker
	err := c.doJSON(ctx, call{
		method: http.MethodGet,
		url:    c.endpoint("worker/", nil),
		expect: []int{http.StatusOK},
	}, &out)
	if err != nil {
		return nil, fmt.Errorf("list workers: %w", err)
	}
	return out, nil
}

// ConfirmKill tells the server that nothing of the given attempt of an
// aborted or timed-out work request runs any more, freeing the worker's slot.
func (c *Client) ConfirmKill(ctx context.Context, id int64, attempt int) error {
	err := c.doEmpty(ctx, call{
		method: http.MethodPost,
		url:    c.endpoint(workRequestPath(id, "killed"), nil),
		body:   schemas.WorkRequestKilled{Attempt: attempt},
		expect: []int{http.StatusNoContent},
	})
	if err != nil {
		return fmt.Errorf("confirm kill of work request %d: %w", id, err)
	}
	return nil
}

// AbandonWorkRequest tells the server that this worker lost attempt of
// request id (it restarted, or stopped the run to shut down): the server
// retries the request as a new attempt at once.
func (c *Client) AbandonWorkRequest(ctx context.Context, id int64, attempt int, reason string) error {
	err := c.doEmpty(ctx, call{
		method: http.MethodPost,
		url:    c.endpoint(workRequestPath(id, "abandoned"), nil),
		body:   schemas.WorkRequestAbandoned{Attempt: attempt, Reason: reason},
		expect: []int{http.StatusNoContent},
	})
	if err != nil {
		return fmt.Errorf("abandon work request %d: %w", id, err)
	}
	return nil
}
