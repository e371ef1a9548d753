-- +goose Up
ALTER TABLE work_requests ADD COLUMN error_type TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE work_requests DROP COLUMN error_type;
