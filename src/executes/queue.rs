//! A workspace's executes in its DO's SQLite (pure): the table, and every
//! statement the DO runs on it, as plans (`common::sql`). The property test
//! (`tests/job_props.rs`) runs the same statements on SQLite.
//!
//! An execute is `queued`, then `running` (its driver took it), then
//! `saving` (the agent is done, its result is being committed), then ended:
//! its ending is recorded in `job_endings` (`runner::job`) and its status
//! set from it in the same plan, so it ends once; its body is written once.

use crate::common::sql::{stmt, Arg, Stmt};
use crate::runner::job;

/// Finished executes kept per workspace (with their events).
pub const KEEP_FINISHED: i64 = 50;

pub const SCHEMA: &[&str] = &["CREATE TABLE IF NOT EXISTS executions (
        id TEXT PRIMARY KEY,
        queue_seq INTEGER NOT NULL,
        start TEXT NOT NULL,
        status TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        started_ms INTEGER,
        finished_ms INTEGER,
        dispatched INTEGER NOT NULL DEFAULT 0,
        runner_seq INTEGER NOT NULL DEFAULT 0,
        base_version INTEGER,
        session_id TEXT,
        usage TEXT,
        task_result TEXT,
        body TEXT
    )"];

/// The statuses of an execute that has not ended (spelled out in each
/// statement; a test checks they agree).
#[cfg(test)]
const OPEN: &str = "('queued', 'running', 'saving')";

pub const ENQUEUE: &str = "INSERT INTO executions (id, queue_seq, start, status, created_ms) \
     VALUES (?, (SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM executions), ?, 'queued', ?)";

pub const LOAD: &str = "SELECT * FROM executions WHERE id = ?";

pub const NEXT_OPEN: &str = "SELECT * FROM executions \
     WHERE status IN ('queued', 'running', 'saving') ORDER BY queue_seq LIMIT 1";

pub const OPEN_JOBS: &str = "SELECT * FROM executions \
     WHERE status IN ('queued', 'running', 'saving') ORDER BY queue_seq";

pub const OPEN_COUNT: &str = "SELECT COUNT(*) AS n FROM executions \
     WHERE status IN ('queued', 'running', 'saving')";

/// The driver takes a queued execute.
pub const START: &str = "UPDATE executions SET status = 'running', started_ms = ? \
     WHERE id = ? AND status = 'queued'";

/// A driver cut off before the task was sent: it is taken anew.
pub const REQUEUE: &str = "UPDATE executions SET status = 'queued' \
     WHERE id = ? AND status = 'running' AND dispatched = 0";

pub const SET_BASE: &str = "UPDATE executions SET base_version = ?, session_id = ? WHERE id = ?";

pub const DISPATCHED: &str = "UPDATE executions SET dispatched = 1 WHERE id = ?";

pub const RUNNER_SEQ: &str = "UPDATE executions SET runner_seq = ? WHERE id = ?";

pub const USAGE: &str = "UPDATE executions SET usage = ? WHERE id = ?";

/// The task's result is kept before it is acted on.
pub const SAVING: &str = "UPDATE executions SET task_result = ?, status = 'saving' \
     WHERE id = ? AND status = 'running'";

/// The status of an ended execute is the one of its recorded ending.
pub const END: &str = "UPDATE executions \
     SET status = (SELECT status FROM job_endings WHERE job_id = ?1), finished_ms = ?2 \
     WHERE id = ?1 AND status IN ('queued', 'running', 'saving') \
       AND EXISTS (SELECT 1 FROM job_endings WHERE job_id = ?1)";

/// The endings of this workspace's executes not yet carried out in full
/// (a DO serves one kind of job: a run's ending is never among them).
pub const UNDONE_ENDINGS: &str =
    "SELECT e.job_id, e.status, e.ending, e.ended_ms, e.settled, e.finished \
     FROM job_endings e JOIN executions x ON x.id = e.job_id \
     WHERE e.settled = 0 OR e.finished = 0 ORDER BY e.ended_ms";

/// The body is written once.
pub const WRITE_BODY: &str = "UPDATE executions SET body = ?, usage = ? \
     WHERE id = ? AND body IS NULL";

/// The execute that moved last, and when (for the idle release).
pub const LAST_ACTIVITY: &str = "SELECT id, COALESCE(finished_ms, started_ms, created_ms) AS ms \
     FROM executions ORDER BY queue_seq DESC LIMIT 1";

/// Finished executes beyond the newest `KEEP_FINISHED` (its `?`).
macro_rules! old_finished {
    () => {
        "SELECT id FROM executions WHERE body IS NOT NULL ORDER BY queue_seq DESC LIMIT -1 OFFSET ?"
    };
}

pub const PRUNE_EVENTS: &str = concat!(
    "DELETE FROM job_events WHERE job_id IN (",
    old_finished!(),
    ")"
);
pub const PRUNE_RUNNER_RECEIPTS: &str = concat!(
    "DELETE FROM runner_receipts WHERE op IN (",
    old_finished!(),
    ")"
);
pub const PRUNE_ENDINGS: &str = concat!(
    "DELETE FROM job_endings WHERE finished = 1 AND settled = 1 AND job_id IN (",
    old_finished!(),
    ")"
);
/// Last: the executes go once their events, receipts and done endings have.
pub const PRUNE_EXECUTIONS: &str = concat!(
    "DELETE FROM executions WHERE id NOT IN (SELECT job_id FROM job_endings) AND id IN (",
    old_finished!(),
    ")"
);

pub fn enqueue(id: &str, start_json: &str, now_ms: i64) -> Stmt {
    stmt(
        ENQUEUE,
        vec![id.into(), start_json.into(), Arg::Int(now_ms)],
    )
}

pub fn load(id: &str) -> Stmt {
    stmt(LOAD, vec![id.into()])
}

pub fn next_open() -> Stmt {
    stmt(NEXT_OPEN, Vec::new())
}

pub fn open_jobs() -> Stmt {
    stmt(OPEN_JOBS, Vec::new())
}

pub fn open_count() -> Stmt {
    stmt(OPEN_COUNT, Vec::new())
}

pub fn start(id: &str, now_ms: i64) -> Stmt {
    stmt(START, vec![Arg::Int(now_ms), id.into()])
}

pub fn requeue(id: &str) -> Stmt {
    stmt(REQUEUE, vec![id.into()])
}

pub fn set_base(id: &str, version: u64, session_id: Option<&str>) -> Stmt {
    stmt(
        SET_BASE,
        vec![Arg::Int(version as i64), session_id.into(), id.into()],
    )
}

pub fn dispatched(id: &str) -> Stmt {
    stmt(DISPATCHED, vec![id.into()])
}

pub fn runner_seq(id: &str, seq: u64) -> Stmt {
    stmt(RUNNER_SEQ, vec![Arg::Int(seq as i64), id.into()])
}

pub fn usage(id: &str, usage_json: &str) -> Stmt {
    stmt(USAGE, vec![usage_json.into(), id.into()])
}

pub fn saving(id: &str, task_result_json: &str) -> Stmt {
    stmt(SAVING, vec![task_result_json.into(), id.into()])
}

/// Ends the execute: its ending first (the first one recorded wins), then
/// its status from that ending. One plan, so nothing sees one without the
/// other.
pub fn end(id: &str, status: &str, ending_json: &str, now_ms: i64) -> Vec<Stmt> {
    vec![
        job::record_ending(id, status, ending_json, now_ms),
        stmt(END, vec![id.into(), Arg::Int(now_ms)]),
    ]
}

pub fn undone_endings() -> Stmt {
    stmt(UNDONE_ENDINGS, Vec::new())
}

pub fn write_body(id: &str, body_json: &str, usage_json: &str) -> Stmt {
    stmt(
        WRITE_BODY,
        vec![body_json.into(), usage_json.into(), id.into()],
    )
}

pub fn last_activity() -> Stmt {
    stmt(LAST_ACTIVITY, Vec::new())
}

/// Forgets all but the newest `keep` finished executes: their events,
/// runner receipts and (carried out) endings, then the executes. An
/// execute whose ending is not yet carried out in full is kept.
pub fn prune(keep: i64) -> Vec<Stmt> {
    [
        PRUNE_EVENTS,
        PRUNE_RUNNER_RECEIPTS,
        PRUNE_ENDINGS,
        PRUNE_EXECUTIONS,
    ]
    .into_iter()
    .map(|sql| stmt(sql, vec![Arg::Int(keep)]))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `?` placeholders take one argument each; `?N` ones as many as the
    /// highest N.
    fn wanted_args(sql: &str) -> usize {
        let numbered = (1..=9).rev().find(|n| sql.contains(&format!("?{n}")));
        numbered.unwrap_or_else(|| sql.matches('?').count())
    }

    #[test]
    fn every_statement_gets_as_many_args_as_it_has_placeholders() {
        let mut plans = vec![
            enqueue("e", "{}", 1),
            load("e"),
            next_open(),
            open_jobs(),
            open_count(),
            start("e", 1),
            requeue("e"),
            set_base("e", 3, None),
            dispatched("e"),
            runner_seq("e", 4),
            usage("e", "{}"),
            saving("e", "{}"),
            write_body("e", "{}", "{}"),
            last_activity(),
            undone_endings(),
        ];
        plans.extend(end("e", "failed", "{}", 1));
        plans.extend(prune(KEEP_FINISHED));
        for s in plans {
            assert_eq!(wanted_args(s.sql), s.args.len(), "{}", s.sql);
        }
    }

    #[test]
    fn open_statuses_are_the_ones_the_rules_call_open() {
        use crate::executes::execution::ExecStatus;
        for status in [ExecStatus::Queued, ExecStatus::Running, ExecStatus::Saving] {
            assert!(!status.is_terminal());
            assert!(OPEN.contains(&format!("'{}'", status.as_str())));
        }
        for sql in [NEXT_OPEN, OPEN_JOBS, OPEN_COUNT, END] {
            assert!(sql.contains(OPEN), "{sql}");
        }
    }
}
