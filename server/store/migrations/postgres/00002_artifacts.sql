-- +goose Up
-- Artifacts: a category, JSON data and a set of files. A file's content is
-- a row of files (by SHA-256 and size), kept once in the content-addressed
-- store however many artifacts list it.
CREATE TABLE artifacts (
    id BIGSERIAL PRIMARY KEY,
    category TEXT NOT NULL,
    workspace TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}',
    work_request_id BIGINT REFERENCES work_requests(id) ON DELETE SET NULL,
    created_by BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_by_worker BIGINT REFERENCES workers(id) ON DELETE SET NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expire_at TIMESTAMPTZ
);

CREATE INDEX artifacts_work_request ON artifacts (work_request_id) WHERE work_request_id IS NOT NULL;
CREATE INDEX artifacts_expire_at ON artifacts (expire_at) WHERE expire_at IS NOT NULL;

-- stored: the content is in the file store (always true for empty files,
-- which the store does not hold).
CREATE TABLE files (
    id BIGSERIAL PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    stored BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL,
    UNIQUE (sha256, size)
);

-- One file of an artifact. received and hash_state are the state of its
-- upload (bytes received in order, and the SHA-256 state after them).
CREATE TABLE artifact_files (
    id BIGSERIAL PRIMARY KEY,
    artifact_id BIGINT NOT NULL REFERENCES artifacts(id) ON DELETE CASCADE,
    path TEXT NOT NULL,
    file_id BIGINT NOT NULL REFERENCES files(id),
    content_type TEXT,
    complete BOOLEAN NOT NULL DEFAULT FALSE,
    received BIGINT NOT NULL DEFAULT 0,
    hash_state BYTEA,
    upload_updated_at TIMESTAMPTZ,
    UNIQUE (artifact_id, path)
);

CREATE INDEX artifact_files_file ON artifact_files (file_id);

CREATE TABLE artifact_relations (
    id BIGSERIAL PRIMARY KEY,
    artifact_id BIGINT NOT NULL REFERENCES artifacts(id) ON DELETE CASCADE,
    target_id BIGINT NOT NULL REFERENCES artifacts(id) ON DELETE CASCADE,
    type TEXT NOT NULL CHECK (type IN ('extends', 'relates-to', 'built-using')),
    created_at TIMESTAMPTZ NOT NULL,
    UNIQUE (artifact_id, target_id, type)
);

CREATE INDEX artifact_relations_target ON artifact_relations (target_id);

-- +goose Down
DROP TABLE artifact_relations;
DROP TABLE artifact_files;
DROP TABLE files;
DROP TABLE artifacts;
