-- The index of repo runs, for listing an account's runs newest first. The
-- run itself (events, receipts, artifact, diff) lives in its CloudboxRunner
-- Durable Object. container_ms is the metering hook: the run's container
-- time, written when the run ends. Times are epoch milliseconds.

CREATE TABLE runs (
    id           TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    repo         TEXT NOT NULL,
    git_ref      TEXT,
    status       TEXT NOT NULL,
    ok           INTEGER,
    container_ms INTEGER,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    finished_at  INTEGER
);

CREATE INDEX runs_by_account ON runs (account_id, created_at DESC, id DESC);
