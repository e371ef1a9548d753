-- +goose Up
-- The web dashboard (issue 8). A session is what a user's token buys in a
-- browser: only the SHA-256 of its secret is kept, as for tokens. It ends at
-- expires_at, and with the token it was made from (deleted, disabled or
-- expired).
CREATE TABLE web_sessions (
    id BIGSERIAL PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_id BIGINT NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX web_sessions_expires_at ON web_sessions (expires_at);
CREATE INDEX web_sessions_token ON web_sessions (token_id);
-- The dashboard's work request filters, newest first (keyset pagination on
-- id): by task and by creator. Status and worker have theirs (00001, 00009).
CREATE INDEX work_requests_task ON work_requests (task_name, id);
CREATE INDEX work_requests_created_by ON work_requests (created_by, id);

-- +goose Down
DROP INDEX work_requests_created_by;
DROP INDEX work_requests_task;
DROP TABLE web_sessions;
