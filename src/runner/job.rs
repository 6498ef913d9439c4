//! What every job on a CloudboxRunner — a repo run or an execute — keeps
//! in the DO's SQLite, and how it ends (pure): its event log (`job_events`,
//! what its SSE stream serves), its ending, and what its watchdog does.
//! Both kinds end the same way:
//!
//! 1. the ending (how the job ended, as the surface's JSON) is recorded
//!    before anything is done about it, and the first one recorded wins:
//!    a job ends exactly once;
//! 2. it is carried out: the hold is settled (once: the ledger's guard on
//!    the hold, and the usage event named after the job), then the
//!    surface's part (the body, the `result` event, the D1 index, the
//!    `Idempotency-Key` outcome), each marked done in the ending's row;
//! 3. an ending cut short (the instance was evicted, a call failed) is
//!    carried out again by the watchdog, from what is not marked done.
//!
//! The statements are plans (`common::sql`), run by the DO glue and by the
//! property test on SQLite (`tests/job_props.rs`).

use crate::common::sql::{stmt, Arg, Stmt};

pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS job_endings (
        job_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        ending TEXT NOT NULL,
        ended_ms INTEGER NOT NULL,
        settled INTEGER NOT NULL DEFAULT 0,
        finished INTEGER NOT NULL DEFAULT 0
    )",
    // Each job's event log, in order: what its SSE stream replays after
    // `Last-Event-ID` (the seq) and then follows live.
    "CREATE TABLE IF NOT EXISTS job_events (
        job_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
    )",
];

pub const APPEND_EVENT: &str = "INSERT INTO job_events (job_id, seq, kind, data) \
     VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM job_events WHERE job_id = ?1), ?2, ?3)";

/// A page of a job's events after a seq.
pub const EVENTS_AFTER: &str = "SELECT seq, kind, data FROM job_events \
     WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT 200";

pub const EVENTS_OF_KIND: &str = "SELECT data FROM job_events \
     WHERE job_id = ? AND kind = ? ORDER BY seq";

pub const FORGET_EVENTS: &str = "DELETE FROM job_events WHERE job_id = ?";

/// The seq of a job's last event (`NULL` before the first).
pub const LAST_EVENT_SEQ: &str = "SELECT MAX(seq) AS seq FROM job_events WHERE job_id = ?";

pub fn last_event_seq(job_id: &str) -> Stmt {
    stmt(LAST_EVENT_SEQ, vec![job_id.into()])
}

pub fn append_event(job_id: &str, kind: &str, data: &str) -> Stmt {
    stmt(APPEND_EVENT, vec![job_id.into(), kind.into(), data.into()])
}

pub fn events_after(job_id: &str, after: u64) -> Stmt {
    stmt(EVENTS_AFTER, vec![job_id.into(), Arg::Int(after as i64)])
}

pub fn events_of_kind(job_id: &str, kind: &str) -> Stmt {
    stmt(EVENTS_OF_KIND, vec![job_id.into(), kind.into()])
}

pub fn forget_events(job_id: &str) -> Stmt {
    stmt(FORGET_EVENTS, vec![job_id.into()])
}

/// The first ending of a job is kept; a later one changes nothing.
pub const RECORD_ENDING: &str = "INSERT OR IGNORE INTO job_endings \
     (job_id, status, ending, ended_ms) VALUES (?, ?, ?, ?)";

pub const ENDING_OF: &str = "SELECT job_id, status, ending, ended_ms, settled, finished \
     FROM job_endings WHERE job_id = ?";

pub const MARK_SETTLED: &str = "UPDATE job_endings SET settled = 1 WHERE job_id = ?";

pub const MARK_FINISHED: &str = "UPDATE job_endings SET finished = 1 WHERE job_id = ?";

pub const FORGET_ENDING: &str = "DELETE FROM job_endings WHERE job_id = ?";

pub fn record_ending(job_id: &str, status: &str, ending_json: &str, now_ms: i64) -> Stmt {
    stmt(
        RECORD_ENDING,
        vec![
            job_id.into(),
            status.into(),
            ending_json.into(),
            Arg::Int(now_ms),
        ],
    )
}

pub fn ending_of(job_id: &str) -> Stmt {
    stmt(ENDING_OF, vec![job_id.into()])
}

pub fn mark_settled(job_id: &str) -> Stmt {
    stmt(MARK_SETTLED, vec![job_id.into()])
}

pub fn mark_finished(job_id: &str) -> Stmt {
    stmt(MARK_FINISHED, vec![job_id.into()])
}

pub fn forget_ending(job_id: &str) -> Stmt {
    stmt(FORGET_ENDING, vec![job_id.into()])
}

/// One row of `job_endings` (SQLite numbers come back as doubles in a DO).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct EndingRow {
    pub job_id: String,
    pub status: String,
    pub ending: String,
    pub ended_ms: f64,
    pub settled: f64,
    pub finished: f64,
}

impl EndingRow {
    pub fn settled(&self) -> bool {
        self.settled != 0.0
    }
    pub fn finished(&self) -> bool {
        self.finished != 0.0
    }
    pub fn done(&self) -> bool {
        self.settled() && self.finished()
    }
}

/// A job as its watchdog sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobView {
    /// Waiting its turn (an execute behind another); `created_ms` counts.
    pub queued: bool,
    pub created_ms: i64,
    /// When the job must be over once it runs.
    pub deadline_ms: i64,
    /// Its ending, if one is recorded: (settled, finished).
    pub ending: Option<(bool, bool)>,
}

/// How long a job may wait and overrun, per kind of job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// A queued job that waited longer than this is ended unstarted.
    pub queue_wait_ms: i64,
    /// Past its deadline, the job's own loop gets this long to end it
    /// before the watchdog does.
    pub overrun_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Carry out what is not done of the recorded ending.
    CarryOutEnding,
    /// End the queued job unstarted: it waited too long.
    ExpireQueued,
    /// End the job as timed out: it ran past its deadline.
    TimeOut,
}

/// What the watchdog does for one job at `now_ms`.
pub fn watchdog_action(job: &JobView, patience: &Patience, now_ms: i64) -> Action {
    match job.ending {
        Some((true, true)) => Action::Nothing,
        Some(_) => Action::CarryOutEnding,
        None if job.queued => {
            if now_ms - job.created_ms > patience.queue_wait_ms {
                Action::ExpireQueued
            } else {
                Action::Nothing
            }
        }
        None if now_ms > job.deadline_ms + patience.overrun_ms => Action::TimeOut,
        None => Action::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Patience = Patience {
        queue_wait_ms: 1_000,
        overrun_ms: 100,
    };

    fn job(queued: bool, ending: Option<(bool, bool)>) -> JobView {
        JobView {
            queued,
            created_ms: 0,
            deadline_ms: 5_000,
            ending,
        }
    }

    #[test]
    fn an_ending_not_carried_out_in_full_is_carried_out_again() {
        for ending in [(false, false), (true, false), (false, true)] {
            let action = watchdog_action(&job(false, Some(ending)), &PATIENCE, 0);
            assert_eq!(action, Action::CarryOutEnding, "{ending:?}");
        }
        let done = watchdog_action(&job(false, Some((true, true))), &PATIENCE, 99_999);
        assert_eq!(done, Action::Nothing);
    }

    #[test]
    fn a_queued_job_expires_after_its_wait_and_a_running_one_after_its_overrun() {
        assert_eq!(
            watchdog_action(&job(true, None), &PATIENCE, 1_000),
            Action::Nothing
        );
        assert_eq!(
            watchdog_action(&job(true, None), &PATIENCE, 1_001),
            Action::ExpireQueued
        );
        // A queued job is not timed out by a deadline it has not started.
        assert_eq!(
            watchdog_action(&job(true, None), &PATIENCE, 900),
            Action::Nothing
        );
        assert_eq!(
            watchdog_action(&job(false, None), &PATIENCE, 5_100),
            Action::Nothing
        );
        assert_eq!(
            watchdog_action(&job(false, None), &PATIENCE, 5_101),
            Action::TimeOut
        );
    }

    #[test]
    fn plans_bind_one_argument_per_placeholder() {
        let numbered = [append_event("j", "output", "{}")];
        for s in numbered {
            assert!(s.sql.contains("?3") && !s.sql.contains("?4"), "{}", s.sql);
            assert_eq!(s.args.len(), 3);
        }
        let plans = [
            events_after("j", 0),
            events_of_kind("j", "receipt"),
            forget_events("j"),
            record_ending("j", "failed", "{}", 1),
            ending_of("j"),
            mark_settled("j"),
            mark_finished("j"),
            forget_ending("j"),
        ];
        for s in plans {
            assert_eq!(s.sql.matches('?').count(), s.args.len(), "{}", s.sql);
        }
    }
}
