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
    // A live run (one row): its TTL, its open live period and what the
    // period's hold pays for. Period 1 begins with the run (its steps
    // included); each resume opens the next one.
    "CREATE TABLE IF NOT EXISTS run_live (
        ttl_seconds INTEGER NOT NULL,
        expires_ms INTEGER,
        since_ms INTEGER NOT NULL,
        period INTEGER NOT NULL,
        period_start_ms INTEGER NOT NULL,
        period_billing TEXT,
        paid_until_ms INTEGER,
        parent TEXT
    )",
    // The run's snapshots, newest last; the tree itself is in R2.
    "CREATE TABLE IF NOT EXISTS run_snapshots (
        id TEXT PRIMARY KEY,
        taken_ms INTEGER NOT NULL,
        files INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        tree_key TEXT NOT NULL
    )",
    // A live run's terms (`LiveTerms` as JSON), from its start.
    "CREATE TABLE IF NOT EXISTS run_live_terms (
        terms TEXT NOT NULL
    )",
    // A live run's execs: the runner seq stored of each, and its receipt
    // once it ended (or why it has none).
    "CREATE TABLE IF NOT EXISTS run_execs (
        id TEXT PRIMARY KEY,
        runner_seq INTEGER NOT NULL DEFAULT 0,
        done INTEGER NOT NULL DEFAULT 0,
        receipt_seq INTEGER,
        error TEXT
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
    /// A live run's `LiveTerms` JSON.
    pub live_terms: Option<&'a str>,
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
    if let Some(terms) = run.live_terms {
        plan.push(set_live_terms(terms));
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

// ---------------------------------------------------------------------------
// Live runs.

pub const LIVE: &str = "SELECT * FROM run_live LIMIT 1";

pub const LIVE_CREATE: &str = "INSERT INTO run_live \
     (ttl_seconds, expires_ms, since_ms, period, period_start_ms, period_billing, paid_until_ms, parent) \
     SELECT ?, ?, ?, 1, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM run_live)";

/// The status of a run past its steps (`live`, `stopped`, `expired`,
/// `container_lost`), and since when.
pub const SET_STATE: &str = "UPDATE run SET status = ?";

pub const LIVE_SINCE: &str = "UPDATE run_live SET since_ms = ?, expires_ms = ?";

/// The open period is settled: nothing is owed for it any more.
pub const PERIOD_SETTLED: &str = "UPDATE run_live SET period_billing = NULL WHERE period = ?";

/// A resume opens the next period with its own hold.
pub const PERIOD_OPEN: &str = "UPDATE run_live SET period = period + 1, period_start_ms = ?, \
     period_billing = ?, paid_until_ms = ?, expires_ms = ?, since_ms = ?";

pub const SNAPSHOT_ADD: &str =
    "INSERT INTO run_snapshots (id, taken_ms, files, bytes, tree_key) VALUES (?, ?, ?, ?, ?)";

pub const SNAPSHOT_LATEST: &str =
    "SELECT * FROM run_snapshots ORDER BY taken_ms DESC, id DESC LIMIT 1";

pub const LIVE_TERMS: &str = "SELECT terms AS live_terms FROM run_live_terms LIMIT 1";

pub const SET_LIVE_TERMS: &str = "INSERT INTO run_live_terms (terms) VALUES (?)";

pub const CONTAINER_MS: &str = "UPDATE run SET container_ms = ?";

pub const FINISHED_AT: &str = "UPDATE run SET finished_ms = ?";

/// An exec's receipt is stored (its `done` follows once it has ended).
pub const EXEC_RECEIPT: &str = "UPDATE run_execs SET receipt_seq = ? WHERE id = ?";

pub const EXEC_ADD: &str = "INSERT INTO run_execs (id) VALUES (?)";

pub const EXEC_SEQ: &str = "UPDATE run_execs SET runner_seq = ? WHERE id = ?";

pub const EXEC_DONE: &str =
    "UPDATE run_execs SET done = 1, receipt_seq = ?, error = ? WHERE id = ?";

pub const EXEC_OF: &str = "SELECT * FROM run_execs WHERE id = ?";

/// The exec that has not ended, if any (one at a time).
pub const EXEC_OPEN: &str = "SELECT * FROM run_execs WHERE done = 0 LIMIT 1";

pub struct NewLive<'a> {
    pub ttl_seconds: u64,
    pub expires_ms: Option<i64>,
    pub now_ms: i64,
    /// Period 1 begins with the run.
    pub period_start_ms: i64,
    pub billing_json: Option<&'a str>,
    pub paid_until_ms: Option<i64>,
    pub parent_json: Option<&'a str>,
}

pub fn live() -> Stmt {
    stmt(LIVE, Vec::new())
}

/// The live row (once) and the run's state, together.
pub fn go_live(state: &str, l: &NewLive) -> Vec<Stmt> {
    vec![
        stmt(
            LIVE_CREATE,
            vec![
                Arg::Int(l.ttl_seconds as i64),
                l.expires_ms.into(),
                Arg::Int(l.now_ms),
                Arg::Int(l.period_start_ms),
                l.billing_json.into(),
                l.paid_until_ms.into(),
                l.parent_json.into(),
            ],
        ),
        set_state(state),
    ]
}

pub fn set_state(state: &str) -> Stmt {
    stmt(SET_STATE, vec![state.into()])
}

/// A state past the live one (stopped, expired, lost): no expiry any more.
pub fn leave_live(state: &str, now_ms: i64) -> Vec<Stmt> {
    vec![
        set_state(state),
        stmt(LIVE_SINCE, vec![Arg::Int(now_ms), Arg::Null]),
    ]
}

pub fn period_settled(period: i64) -> Stmt {
    stmt(PERIOD_SETTLED, vec![Arg::Int(period)])
}

pub struct NewPeriod<'a> {
    pub now_ms: i64,
    pub billing_json: Option<&'a str>,
    pub paid_until_ms: Option<i64>,
    pub expires_ms: i64,
}

/// Live again (a resume): the next period, its hold and expiry.
pub fn period_open(p: &NewPeriod) -> Vec<Stmt> {
    vec![
        stmt(
            PERIOD_OPEN,
            vec![
                Arg::Int(p.now_ms),
                p.billing_json.into(),
                p.paid_until_ms.into(),
                Arg::Int(p.expires_ms),
                Arg::Int(p.now_ms),
            ],
        ),
        set_state("live"),
    ]
}

pub fn snapshot_add(id: &str, taken_ms: i64, files: u64, bytes: u64, tree_key: &str) -> Stmt {
    stmt(
        SNAPSHOT_ADD,
        vec![
            id.into(),
            Arg::Int(taken_ms),
            Arg::Int(files as i64),
            Arg::Int(bytes as i64),
            tree_key.into(),
        ],
    )
}

pub fn snapshot_latest() -> Stmt {
    stmt(SNAPSHOT_LATEST, Vec::new())
}

pub fn live_terms() -> Stmt {
    stmt(LIVE_TERMS, Vec::new())
}

pub fn set_live_terms(terms_json: &str) -> Stmt {
    stmt(SET_LIVE_TERMS, vec![terms_json.into()])
}

pub fn container_ms(total: i64) -> Stmt {
    stmt(CONTAINER_MS, vec![Arg::Int(total)])
}

pub fn finished_at(ms: i64) -> Stmt {
    stmt(FINISHED_AT, vec![Arg::Int(ms)])
}

pub fn exec_receipt(id: &str, receipt_seq: u64) -> Stmt {
    stmt(EXEC_RECEIPT, vec![Arg::Int(receipt_seq as i64), id.into()])
}

pub fn exec_add(id: &str) -> Stmt {
    stmt(EXEC_ADD, vec![id.into()])
}

pub fn exec_seq(id: &str, seq: u64) -> Stmt {
    stmt(EXEC_SEQ, vec![Arg::Int(seq as i64), id.into()])
}

pub fn exec_done(id: &str, receipt_seq: Option<u64>, error: Option<&str>) -> Stmt {
    stmt(
        EXEC_DONE,
        vec![
            receipt_seq.map(|s| s as i64).into(),
            error.into(),
            id.into(),
        ],
    )
}

pub fn exec_of(id: &str) -> Stmt {
    stmt(EXEC_OF, vec![id.into()])
}

pub fn exec_open() -> Stmt {
    stmt(EXEC_OPEN, Vec::new())
}

/// Forgets the run `run_id`: its rows, its runner receipts, its ending and
/// its events.
pub fn delete(run_id: &str) -> Vec<Stmt> {
    let mut plan: Vec<Stmt> = [
        "DELETE FROM run_live",
        "DELETE FROM run_live_terms",
        "DELETE FROM run_snapshots",
        "DELETE FROM run_execs",
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
            live_terms: Some("{}"),
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
        let new_live = NewLive {
            ttl_seconds: 60,
            expires_ms: Some(5),
            now_ms: 1,
            period_start_ms: 0,
            billing_json: None,
            paid_until_ms: Some(9),
            parent_json: None,
        };
        plans.extend(go_live("live", &new_live));
        plans.extend(leave_live("stopped", 3));
        plans.extend(period_open(&NewPeriod {
            now_ms: 1,
            billing_json: Some("{}"),
            paid_until_ms: None,
            expires_ms: 2,
        }));
        plans.extend([
            live(),
            period_settled(1),
            snapshot_add("snap_1", 1, 2, 3, "k"),
            snapshot_latest(),
            exec_add("x"),
            live_terms(),
            set_live_terms("{}"),
            container_ms(3),
            finished_at(4),
            exec_receipt("x", 2),
            exec_seq("x", 2),
            exec_done("x", Some(3), None),
            exec_of("x"),
            exec_open(),
        ]);
        assert_eq!(create(&run).len(), 5);
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
