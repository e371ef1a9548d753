-- +goose Up
-- Leases (issue 6). lease_renewed_at is when the request's worker last
-- showed it holds the request (assignment, start, a heartbeat that lists
-- it); past the lease timeout the request is taken back from the worker.
-- worker_lost_retries counts the automatic retries after lost workers.
ALTER TABLE work_requests ADD COLUMN lease_renewed_at TIMESTAMP;
ALTER TABLE work_requests ADD COLUMN worker_lost_retries INTEGER NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE work_requests DROP COLUMN worker_lost_retries;
ALTER TABLE work_requests DROP COLUMN lease_renewed_at;
