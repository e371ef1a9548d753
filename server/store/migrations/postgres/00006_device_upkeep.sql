-- +goose Up
-- Device upkeep (Autotest's special tasks). needs is the special task the
-- device needs next (verify, cleanup, reset, repair, provision; '' for
-- none) and needs_reason why; the scheduler turns it into a work request,
-- upkeep_work_request_id, and the request's completion decides what comes
-- next. held_for is the job the device is being prepared for: no other job
-- may take it meanwhile. Neither is a foreign key: they are cleared by the
-- scheduler's reconciliation, which also repairs them after a crash.
ALTER TABLE devices ADD COLUMN needs TEXT NOT NULL DEFAULT '';
ALTER TABLE devices ADD COLUMN needs_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE devices ADD COLUMN upkeep_work_request_id BIGINT;
ALTER TABLE devices ADD COLUMN held_for BIGINT;

-- +goose Down
ALTER TABLE devices DROP COLUMN held_for;
ALTER TABLE devices DROP COLUMN upkeep_work_request_id;
ALTER TABLE devices DROP COLUMN needs_reason;
ALTER TABLE devices DROP COLUMN needs;
