-- Accounts own workspaces, runs, computers and credits; keys belong to an
-- account (several keys of one account form a team). Keys are stored only as
-- SHA-256 / HMAC hashes. Times are epoch milliseconds.

CREATE TABLE accounts (
    id         TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id                   TEXT PRIMARY KEY,
    account_id           TEXT NOT NULL REFERENCES accounts(id),
    key_hash             TEXT NOT NULL UNIQUE,
    key_prefix           TEXT NOT NULL,
    name                 TEXT NOT NULL,
    description          TEXT,
    metadata             TEXT,
    key_type             TEXT NOT NULL CHECK (key_type IN ('standard', 'internal')),
    permissions          TEXT NOT NULL,
    expires_at           INTEGER,
    revoked_at           INTEGER,
    daily_limit_micros   INTEGER,
    monthly_limit_micros INTEGER,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
);

CREATE INDEX api_keys_by_account ON api_keys (account_id);
