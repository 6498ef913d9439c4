-- Workspaces: the current version of each workspace and its history live
-- here; the content lives in R2 under immutable keys
-- (blobs/<account>/<sha256>, manifests/<account>/<workspace>/<version>-<digest>.json).
-- A commit writes the manifest object first, then moves `version` with a
-- guarded UPDATE (or an INSERT for 0 → 1), so a failed or conflicting
-- commit leaves nothing visible. Times are epoch milliseconds.

CREATE TABLE workspaces (
    account_id   TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    manifest_key TEXT    NOT NULL,
    files        INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    session_id   TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (account_id, id)
);

-- Every committed version (for GET …/manifest?version=N).
CREATE TABLE workspace_versions (
    account_id   TEXT    NOT NULL,
    workspace_id TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    manifest_key TEXT    NOT NULL,
    files        INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (account_id, workspace_id, version)
);

-- The index of stored blobs per account: written after the R2 object, so
-- a row here means the bytes are in R2 and verified. `blobs/missing` and
-- the commit check read this, not R2.
CREATE TABLE blobs (
    account_id TEXT    NOT NULL,
    sha256     TEXT    NOT NULL,
    size       INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, sha256)
);
