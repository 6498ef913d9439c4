-- Billing: balances, holds, the append-only ledger, per-key spend per
-- period, usage records, idempotency records and rate-limit counters.
-- Money is integer micro-dollars; times are epoch milliseconds.
-- The statements that change these tables live in src/ledger_sql.rs, shared
-- by the Worker (D1) and the property test (SQLite).

-- Per-key request limit per RATE_LIMIT_WINDOW_SECONDS window (NULL: none).
ALTER TABLE api_keys ADD COLUMN rate_limit_requests INTEGER;

-- One row per account. available = balance − held, never negative.
CREATE TABLE billing_accounts (
    account_id         TEXT PRIMARY KEY REFERENCES accounts(id),
    balance_micros     INTEGER NOT NULL DEFAULT 0,
    held_micros        INTEGER NOT NULL DEFAULT 0,
    total_spent_micros INTEGER NOT NULL DEFAULT 0,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    CHECK (held_micros >= 0 AND balance_micros >= held_micros AND total_spent_micros >= 0)
);

INSERT INTO billing_accounts (account_id, created_at, updated_at)
SELECT id, created_at, updated_at FROM accounts;

-- A reservation of credits for one run. Resolved once: settled (charged
-- the actual cost, the rest released), released, or expired by the sweep.
-- The spend it turns into counts towards the day and month it was taken in.
CREATE TABLE holds (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL REFERENCES accounts(id),
    key_id         TEXT NOT NULL REFERENCES api_keys(id),
    amount_micros  INTEGER NOT NULL CHECK (amount_micros > 0),
    day_period     TEXT NOT NULL,
    month_period   TEXT NOT NULL,
    run_id         TEXT,
    status         TEXT NOT NULL CHECK (status IN ('held', 'settled', 'released', 'expired')),
    charged_micros INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    resolved_at    INTEGER
);

CREATE INDEX holds_open_by_expiry ON holds (expires_at) WHERE status = 'held';

-- Spend and open holds of one key in one period ('d:YYYY-MM-DD' or 'm:YYYY-MM', UTC).
CREATE TABLE key_spend (
    key_id       TEXT NOT NULL REFERENCES api_keys(id),
    period       TEXT NOT NULL,
    spent_micros INTEGER NOT NULL DEFAULT 0 CHECK (spent_micros >= 0),
    held_micros  INTEGER NOT NULL DEFAULT 0 CHECK (held_micros >= 0),
    PRIMARY KEY (key_id, period)
);

-- Append-only. amount is the signed change to the balance for credit,
-- adjustment and usage; for hold and release it is the amount held or
-- returned (those leave the balance unchanged).
CREATE TABLE ledger_entries (
    seq                  INTEGER PRIMARY KEY AUTOINCREMENT,
    id                   TEXT NOT NULL UNIQUE,
    account_id           TEXT NOT NULL REFERENCES accounts(id),
    key_id               TEXT,
    type                 TEXT NOT NULL CHECK (type IN ('credit', 'hold', 'usage', 'release', 'adjustment')),
    amount_micros        INTEGER NOT NULL,
    balance_after_micros INTEGER NOT NULL CHECK (balance_after_micros >= 0),
    description          TEXT,
    run_id               TEXT,
    hold_id              TEXT,
    created_at           INTEGER NOT NULL
);

CREATE INDEX ledger_by_account ON ledger_entries (account_id, seq);
CREATE INDEX ledger_by_hold ON ledger_entries (hold_id) WHERE hold_id IS NOT NULL;

CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger entries are append-only');
END;

CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger entries are append-only');
END;

-- Usage of every execution, billed or not (internal keys record usage too).
CREATE TABLE usage_events (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL REFERENCES accounts(id),
    key_id         TEXT NOT NULL,
    run_id         TEXT,
    input_tokens   INTEGER NOT NULL,
    output_tokens  INTEGER NOT NULL,
    cost_micros    INTEGER NOT NULL,
    charged_micros INTEGER NOT NULL,
    day            TEXT NOT NULL,
    created_at     INTEGER NOT NULL
);

CREATE INDEX usage_by_account_day ON usage_events (account_id, day);
CREATE INDEX usage_by_key ON usage_events (key_id, created_at);

-- Idempotency-Key records, scoped per account and surface.
CREATE TABLE idempotency_records (
    account_id      TEXT NOT NULL,
    scope           TEXT NOT NULL,
    idem_key        TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('in_flight', 'done')),
    response_status INTEGER,
    response_body   TEXT,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    PRIMARY KEY (account_id, scope, idem_key)
);

CREATE INDEX idempotency_by_expiry ON idempotency_records (expires_at);

-- Fixed-window counters: bucket is e.g. 'ip:1.2.3.4:requests' or 'key:<id>'.
CREATE TABLE rate_limit_counters (
    bucket       TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    hits         INTEGER NOT NULL,
    PRIMARY KEY (bucket, window_start)
);
