-- The run (or execute) an Idempotency-Key's first request started, set once
-- its id is made: an SSE retry with the same key attaches to that run's
-- events instead of starting another (`api::idempotency`).

ALTER TABLE idempotency_records ADD COLUMN run_id TEXT;
