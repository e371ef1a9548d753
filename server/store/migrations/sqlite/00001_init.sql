-- +goose Up
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE,
    email TEXT NOT NULL DEFAULT '',
    is_admin BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMP NOT NULL
);

CREATE TABLE workers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT UNIQUE,
    worker_type TEXT NOT NULL DEFAULT 'external',
    enabled BOOLEAN NOT NULL DEFAULT FALSE,
    static_metadata TEXT NOT NULL DEFAULT '{}',
    dynamic_metadata TEXT NOT NULL DEFAULT '{}',
    dynamic_metadata_updated_at TIMESTAMP,
    concurrency INTEGER NOT NULL DEFAULT 1,
    concurrency_override INTEGER,
    registered_at TIMESTAMP NOT NULL,
    connected_at TIMESTAMP,
    last_seen_at TIMESTAMP
);

CREATE TABLE tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    user_id BIGINT REFERENCES users(id) ON DELETE CASCADE,
    worker_id BIGINT REFERENCES workers(id) ON DELETE CASCADE,
    comment TEXT NOT NULL DEFAULT '',
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    created_at TIMESTAMP NOT NULL,
    last_used_at TIMESTAMP
);

CREATE TABLE work_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_name TEXT NOT NULL,
    task_type TEXT NOT NULL,
    task_data TEXT NOT NULL,
    dynamic_task_data TEXT,
    status TEXT NOT NULL,
    result TEXT NOT NULL DEFAULT '',
    priority_base INTEGER NOT NULL DEFAULT 0,
    priority_adjustment INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0,
    worker_id BIGINT REFERENCES workers(id) ON DELETE SET NULL,
    workspace TEXT NOT NULL,
    created_by BIGINT REFERENCES users(id) ON DELETE SET NULL,
    aborted_by BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_at TIMESTAMP NOT NULL,
    assigned_at TIMESTAMP,
    started_at TIMESTAMP,
    completed_at TIMESTAMP,
    attempt INTEGER NOT NULL DEFAULT 1,
    supersedes BIGINT REFERENCES work_requests(id) ON DELETE SET NULL,
    superseded_by BIGINT REFERENCES work_requests(id) ON DELETE SET NULL,
    shape TEXT NOT NULL,
    output TEXT NOT NULL DEFAULT ''
);

CREATE INDEX work_requests_queue ON work_requests (shape, priority DESC, created_at, id)
    WHERE status = 'pending' AND worker_id IS NULL;
CREATE INDEX work_requests_worker_active ON work_requests (worker_id)
    WHERE status IN ('pending', 'running');
CREATE INDEX work_requests_status ON work_requests (status, id);

CREATE TABLE waiting_reasons (
    shape TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);

-- +goose Down
DROP TABLE outbox;
DROP TABLE waiting_reasons;
DROP TABLE work_requests;
DROP TABLE tokens;
DROP TABLE workers;
DROP TABLE users;
