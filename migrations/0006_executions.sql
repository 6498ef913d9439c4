-- The index of /execute runs: which workspace (and so which CloudboxRunner
-- Durable Object) holds each one, for `POST /execute/:runId/cancel` and the
-- account's history. The execution itself (events, receipts, result) lives in
-- the workspace's Durable Object. Times are epoch milliseconds.

CREATE TABLE executions (
    id            TEXT PRIMARY KEY,
    account_id    TEXT    NOT NULL,
    key_id        TEXT    NOT NULL,
    workspace_id  TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    input_tokens  INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_micros   INTEGER NOT NULL DEFAULT 0,
    version       INTEGER,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    finished_at   INTEGER
);

CREATE INDEX executions_by_account ON executions (account_id, created_at DESC, id DESC);
