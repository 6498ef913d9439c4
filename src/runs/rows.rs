//! A repo run's rows in its DO's SQLite (pure): the tables, and every
//! statement the DO runs on them, as plans (`common::sql`). One DO holds
//! one run. Its event log and its ending live in `runner::job`'s tables.

use crate::common::sql::{stmt, Arg, Stmt};
use crate::runner::job;

pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS run (
        id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        spec TEXT NOT NULL,
        status TEXT NOT NULL,
        ok INTEGER,
        created_ms INTEGER NOT NULL,
        finished_ms INTEGER,
        deadline_ms INTEGER NOT NULL,
        runner_seq INTEGER NOT NULL DEFAULT 0,
        dispatched INTEGER NOT NULL DEFAULT 0,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        container_ms INTEGER,
        artifact TEXT,
        diff TEXT
    )",
    // The run's hash-chained receipts, by their seq (one each).
    "CREATE TABLE IF NOT EXISTS run_receipts (
        seq INTEGER PRIMARY KEY,
        body TEXT NOT NULL
    )",
    // The `Idempotency-Key` claim of the request that started the run: its
    // outcome is recorded when the run ends (the client may be gone).
    "CREATE TABLE IF NOT EXISTS run_idempotency (
        key TEXT NOT NULL,
        claimed_at INTEGER NOT NULL
    )",
    // The run's billing (`RunBilling` as JSON), settled when it ends.
    "CREATE TABLE IF NOT EXISTS run_billing (
        key_id TEXT NOT NULL,
        billing TEXT NOT NULL
    )",
    // A row when the run is public (a table of its own: older runs' DOs
    // gain it without a migration).
    "CREATE TABLE IF NOT EXISTS run_public (
        since_ms INTEGER NOT NULL
    )",
];

pub const LOAD: &str = "SELECT * FROM run LIMIT 1";

pub const CREATE: &str = "INSERT INTO run (id, account_id, spec, status, created_ms, deadline_ms) \
     VALUES (?, ?, ?, 'queued', ?, ?)";

pub const CLAIM: &str = "INSERT INTO run_idempotency (key, claimed_at) VALUES (?, ?)";

pub const CLAIM_OF: &str = "SELECT key, claimed_at FROM run_idempotency LIMIT 1";

pub const BILLING: &str = "INSERT INTO run_billing (key_id, billing) VALUES (?, ?)";

pub const BILLING_OF: &str = "SELECT key_id, billing FROM run_billing LIMIT 1";

pub const PUBLIC: &str = "INSERT INTO run_public (since_ms) VALUES (?)";

pub const IS_PUBLIC: &str = "SELECT since_ms FROM run_public LIMIT 1";

/// The run is sent to the runner (once: a pump after an eviction follows it).
pub const DISPATCHED: &str = "UPDATE run SET dispatched = 1, status = 'running' \
     WHERE status IN ('queued', 'running')";

pub const RUNNER_SEQ: &str = "UPDATE run SET runner_seq = ?";

pub const CANCEL_REQUESTED: &str = "UPDATE run SET cancel_requested = 1";

pub const RECEIPTS: &str = "SELECT body FROM run_receipts ORDER BY seq";

pub const STORE_RECEIPT: &str = "INSERT OR IGNORE INTO run_receipts (seq, body) VALUES (?, ?)";

/// The terminal status (once: an ended run is not ended again).
pub const FINISH: &str = "UPDATE run \
     SET status = ?, ok = ?, finished_ms = ?, container_ms = ?, artifact = ?, diff = ? \
     WHERE status IN ('queued', 'running')";

pub fn load() -> Stmt {
    stmt(LOAD, Vec::new())
}

pub struct NewRun<'a> {
    pub run_id: &'a str,
    pub account_id: &'a str,
    pub spec_json: &'a str,
    pub now_ms: i64,
    pub deadline_ms: i64,
    /// The claimed `Idempotency-Key` and its claim time.
    pub claim: Option<(&'a str, i64)>,
    /// The key and its `RunBilling` JSON.
    pub billing: Option<(&'a str, &'a str)>,
    pub public: bool,
}

/// The run with its claim and billing, in one plan.
pub fn create(run: &NewRun) -> Vec<Stmt> {
    let mut plan = vec![stmt(
        CREATE,
        vec![
            run.run_id.into(),
            run.account_id.into(),
            run.spec_json.into(),
            Arg::Int(run.now_ms),
            Arg::Int(run.now_ms + run.deadline_ms),
        ],
    )];
    if let Some((key, claimed_at)) = run.claim {
        plan.push(stmt(CLAIM, vec![key.into(), Arg::Int(claimed_at)]));
    }
    if let Some((key_id, billing_json)) = run.billing {
        plan.push(stmt(BILLING, vec![key_id.into(), billing_json.into()]));
    }
    if run.public {
        plan.push(stmt(PUBLIC, vec![Arg::Int(run.now_ms)]));
    }
    plan
}

pub fn is_public() -> Stmt {
    stmt(IS_PUBLIC, Vec::new())
}

pub const NOT_PUBLIC: &str = "DELETE FROM run_public";

/// Makes the run public (once) or private.
pub fn set_public(public: bool, now_ms: i64) -> Vec<Stmt> {
    let mut plan = vec![stmt(NOT_PUBLIC, Vec::new())];
    if public {
        plan.push(stmt(PUBLIC, vec![Arg::Int(now_ms)]));
    }
    plan
}

pub fn claim_of() -> Stmt {
    stmt(CLAIM_OF, Vec::new())
}

pub fn billing_of() -> Stmt {
    stmt(BILLING_OF, Vec::new())
}

pub fn dispatched() -> Stmt {
    stmt(DISPATCHED, Vec::new())
}

pub fn runner_seq(seq: u64) -> Stmt {
    stmt(RUNNER_SEQ, vec![Arg::Int(seq as i64)])
}

pub fn cancel_requested() -> Stmt {
    stmt(CANCEL_REQUESTED, Vec::new())
}

pub fn receipts() -> Stmt {
    stmt(RECEIPTS, Vec::new())
}

pub fn store_receipt(seq: u64, body_json: &str) -> Stmt {
    stmt(STORE_RECEIPT, vec![Arg::Int(seq as i64), body_json.into()])
}

pub struct Finish<'a> {
    pub status: &'a str,
    pub ok: bool,
    pub ended_ms: i64,
    pub container_ms: i64,
    pub artifact_json: Option<&'a str>,
    pub diff: Option<&'a str>,
}

pub fn finish(f: &Finish) -> Stmt {
    stmt(
        FINISH,
        vec![
            f.status.into(),
            Arg::Int(f.ok as i64),
            Arg::Int(f.ended_ms),
            Arg::Int(f.container_ms),
            f.artifact_json.into(),
            f.diff.into(),
        ],
    )
}

/// Forgets the run `run_id`: its rows, its runner receipts, its ending and
/// its events.
pub fn delete(run_id: &str) -> Vec<Stmt> {
    let mut plan: Vec<Stmt> = [
        "DELETE FROM run_billing",
        "DELETE FROM run_idempotency",
        "DELETE FROM run_receipts",
        "DELETE FROM run",
    ]
    .into_iter()
    .map(|sql| stmt(sql, Vec::new()))
    .collect();
    plan.push(stmt(
        "DELETE FROM runner_receipts WHERE op = ?",
        vec![run_id.into()],
    ));
    plan.push(job::forget_ending(run_id));
    plan.push(job::forget_events(run_id));
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_gets_one_argument_per_placeholder() {
        let run = NewRun {
            run_id: "run_1",
            account_id: "acct",
            spec_json: "{}",
            now_ms: 1,
            deadline_ms: 2,
            claim: Some(("key", 1)),
            billing: Some(("key_1", "{}")),
            public: true,
        };
        let mut plans = create(&run);
        plans.extend([
            load(),
            claim_of(),
            billing_of(),
            is_public(),
            dispatched(),
            runner_seq(3),
            cancel_requested(),
            receipts(),
            store_receipt(1, "{}"),
            finish(&Finish {
                status: "passed",
                ok: true,
                ended_ms: 5,
                container_ms: 4,
                artifact_json: None,
                diff: Some("d"),
            }),
        ]);
        plans.extend(delete("run_1"));
        plans.extend(set_public(true, 9));
        assert_eq!(create(&run).len(), 4);
        for s in plans {
            assert_eq!(s.sql.matches('?').count(), s.args.len(), "{}", s.sql);
        }
    }

    #[test]
    fn a_run_is_finished_only_while_it_is_open() {
        use crate::wire::RunStatus;
        for status in RunStatus::ALL {
            let open = !status.is_terminal();
            let listed = FINISH.contains(&format!("'{}'", status.as_str()));
            assert_eq!(open, listed, "{status:?}");
        }
    }
}
