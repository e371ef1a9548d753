-- +goose Up
ALTER TABLE work_requests ADD COLUMN reason TEXT NOT NULL DEFAULT '';
ALTER TABLE work_requests ADD COLUMN timeout_seconds INTEGER NOT NULL DEFAULT 0;
ALTER TABLE work_requests ADD COLUMN deadline_at TIMESTAMP;
ALTER TABLE work_requests ADD COLUMN kill_pending BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE work_requests ADD COLUMN kill_deadline_at TIMESTAMP;
ALTER TABLE work_requests ADD COLUMN kill_confirmed_at TIMESTAMP;
ALTER TABLE work_requests ADD COLUMN kill_overdue BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX work_requests_deadline ON work_requests (deadline_at) WHERE status = 'running';
CREATE INDEX work_requests_kill_pending ON work_requests (kill_deadline_at) WHERE kill_pending;

-- +goose Down
DROP INDEX work_requests_kill_pending;
DROP INDEX work_requests_deadline;
ALTER TABLE work_requests DROP COLUMN kill_overdue;
ALTER TABLE work_requests DROP COLUMN kill_confirmed_at;
ALTER TABLE work_requests DROP COLUMN kill_deadline_at;
ALTER TABLE work_requests DROP COLUMN kill_pending;
ALTER TABLE work_requests DROP COLUMN deadline_at;
ALTER TABLE work_requests DROP COLUMN timeout_seconds;
ALTER TABLE work_requests DROP COLUMN reason;
