-- +goose Up
-- Devices under test (LAVA-style). A lab worker declares the devices it
-- controls; the scheduler leases a device to one work request at a time.
-- labels is a JSON object of strings, power a JSON list of the power actions
-- the worker can take (on, off, reset). declared is false once the worker
-- stopped declaring the device (it then gets no work). state is the
-- scheduler's (idle, reserved, running), health LAVA's (good, unknown, bad,
-- maintenance, retired).
CREATE TABLE devices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    worker_id BIGINT NOT NULL REFERENCES workers(id) ON DELETE CASCADE,
    device_type TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    connection TEXT NOT NULL DEFAULT '',
    power TEXT NOT NULL DEFAULT '[]',
    declared BOOLEAN NOT NULL DEFAULT TRUE,
    state TEXT NOT NULL DEFAULT 'idle',
    health TEXT NOT NULL DEFAULT 'unknown',
    dirty BOOLEAN NOT NULL DEFAULT FALSE,
    lease_work_request_id BIGINT REFERENCES work_requests(id) ON DELETE SET NULL,
    jobs_since_health_check INTEGER NOT NULL DEFAULT 0,
    last_health_check_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

CREATE INDEX devices_worker ON devices (worker_id);
CREATE INDEX devices_device_type ON devices (device_type);

-- A device's history: one row per change of its state, health or dirty
-- flag. work_request_id is the request that caused it, if any; it is not a
-- foreign key so that the history outlives the request.
CREATE TABLE device_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    at TIMESTAMP NOT NULL,
    kind TEXT NOT NULL,
    from_value TEXT NOT NULL,
    to_value TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    work_request_id BIGINT
);

CREATE INDEX device_events_device ON device_events (device_id, id);

-- +goose Down
DROP TABLE device_events;
DROP TABLE devices;
