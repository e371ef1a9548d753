-- +goose Up
-- A worker's busy slots are counted as
--   worker_id = ? AND (status IN ('pending', 'running') OR kill_pending)
-- (an aborted run holds its slot until the kill is confirmed). The partial
-- index of 00001 left kill_pending out, so neither SQLite nor PostgreSQL
-- could use it for that count and every worker lookup scanned the whole
-- table (kiln-bench: 56 s for one scheduler pass at 100k pending on
-- SQLite). Its predicate is now the count's own condition; a query with
-- only the status part still matches it, as each arm of an OR implies the OR.
DROP INDEX work_requests_worker_active;
CREATE INDEX work_requests_worker_active ON work_requests (worker_id)
    WHERE status IN ('pending', 'running') OR kill_pending;
-- All of a worker's requests, newest first (lists filtered by worker; the
-- foreign key's checks when a worker row goes).
CREATE INDEX work_requests_worker ON work_requests (worker_id, id);

-- +goose Down
DROP INDEX work_requests_worker;
DROP INDEX work_requests_worker_active;
CREATE INDEX work_requests_worker_active ON work_requests (worker_id)
    WHERE status IN ('pending', 'running');
