//! `Idempotency-Key` rules (pure) and their SQL. A record is scoped per
//! account and surface (`scope`, e.g. `billing.credits`); its fingerprint
//! covers the method, the path and the canonical JSON body, so:
//! same key + same request → the first response is replayed; same key and
//! another request → 422 `idempotency_key_reused`; a first request still
//! running → 409 `in_flight`. Records live `RECORD_TTL_MS`; an `in_flight`
//! record older than the caller's `stale_after_ms` (its request died) may
//! be taken over. Surfaces use it through `idempotency_d1`.
//!
//! A record that started a run (`/execute`, `/api/runs`) learns the run's id
//! before the run is handed to its Durable Object. A retry in the events form
//! (`accept: text/event-stream`) then attaches to that run's events, in
//! flight or done, instead of starting another; a JSON retry is answered as
//! before (409 while in flight, then the stored answer), since a JSON answer
//! cannot be given before the run ends.

use sha2::{Digest, Sha256};

use crate::common::sql::{Arg, Stmt};

/// Replays are possible for a day.
pub const RECORD_TTL_MS: i64 = 24 * 3_600_000;
pub const MAX_KEY_LEN: usize = 255;

/// A header value is a key if it is 1–255 visible ASCII characters.
pub fn valid_key(key: &str) -> bool {
    (1..=MAX_KEY_LEN).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// SHA-256 over method, path and body. A JSON body is canonicalised (keys
/// sorted, no whitespace) so formatting does not make two requests differ.
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> String {
    let canonical = serde_json::from_slice::<serde_json::Value>(body)
        .map(|v| v.to_string().into_bytes())
        .unwrap_or_else(|_| body.to_vec());
    let mut h = Sha256::new();
    h.update(method.to_ascii_uppercase().as_bytes());
    h.update(b" ");
    h.update(path.as_bytes());
    h.update(b"\n");
    h.update(&canonical);
    hex::encode(h.finalize())
}

/// A stored record, as read back after a claim failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub fingerprint: String,
    pub done: bool,
    pub response_status: Option<u16>,
    pub response_body: Option<String>,
    pub created_at_ms: i64,
    /// The run the first request started, once its id was made.
    pub run_id: Option<String>,
}

/// How the retrying request wants its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// One JSON answer: the first one's, replayed.
    Json,
    /// `accept: text/event-stream`: the run's events.
    Events,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Replay the first response.
    Replay { status: u16, body: String },
    /// 422 `idempotency_key_reused`.
    Reused,
    /// 409 `in_flight`.
    InFlight,
    /// The first request died mid-way: take the record over and run.
    TakeOver,
    /// The record vanished meanwhile (expired or released): claim again.
    Retry,
    /// Follow the events of the run the first request started.
    Attach { run_id: String },
}

/// What to do when the key was already claimed.
pub fn decide(
    existing: Option<&Record>,
    fingerprint: &str,
    form: Form,
    now_ms: i64,
    stale_after_ms: i64,
) -> Decision {
    let Some(r) = existing else {
        return Decision::Retry;
    };
    if r.fingerprint != fingerprint {
        return Decision::Reused;
    }
    // A run's events can be followed while it runs and replayed after.
    if let (Form::Events, Some(run_id)) = (form, &r.run_id) {
        return Decision::Attach {
            run_id: run_id.clone(),
        };
    }
    match stored(r) {
        Some(replay) => replay,
        None if now_ms - r.created_at_ms >= stale_after_ms => Decision::TakeOver,
        None => Decision::InFlight,
    }
}

/// An attach found no such run: the first request recorded the id but its
/// start has not reached the run's Durable Object yet (or failed there, and
/// its answer is stored), or the run was deleted since. In flight until the
/// record is stale: then the first request died between naming the run and
/// handing it over, no run exists, and the retry takes the record over.
pub fn when_run_missing(record: &Record, now_ms: i64, stale_after_ms: i64) -> Decision {
    match stored(record) {
        Some(replay) => replay,
        None if now_ms - record.created_at_ms >= stale_after_ms => Decision::TakeOver,
        None => Decision::InFlight,
    }
}

/// The stored answer, once there is one.
fn stored(r: &Record) -> Option<Decision> {
    match (r.done, r.response_status, &r.response_body) {
        (true, Some(status), Some(body)) => Some(Decision::Replay {
            status,
            body: body.clone(),
        }),
        _ => None,
    }
}

/// Only responses that are the request's answer are kept for replay; a 5xx
/// (or a 402/409/429 about the moment — the balance, a conflict, a limit —
/// not the request) frees the key instead, so a retry may succeed later.
pub fn should_store(status: u16) -> bool {
    (200..500).contains(&status) && !matches!(status, 402 | 409 | 429)
}

// --- SQL ----------------------------------------------------------------------------

/// Claims a key: inserts an `in_flight` record unless one exists
/// (an expired one is replaced). `changes` = 1 means the caller owns it.
pub const CLAIM: &str = "INSERT INTO idempotency_records \
     (account_id, scope, idem_key, fingerprint, state, created_at, expires_at) \
     VALUES (?1, ?2, ?3, ?4, 'in_flight', ?5, ?6) \
     ON CONFLICT (account_id, scope, idem_key) DO UPDATE SET \
       fingerprint = excluded.fingerprint, state = 'in_flight', response_status = NULL, \
       response_body = NULL, run_id = NULL, created_at = excluded.created_at, \
       expires_at = excluded.expires_at \
     WHERE idempotency_records.expires_at <= excluded.created_at \
     RETURNING created_at";

/// Takes over a stale `in_flight` record (guarded by its old `created_at`,
/// so two takers cannot both win). The dead request's run is forgotten.
pub const TAKE_OVER: &str = "UPDATE idempotency_records \
     SET created_at = ?5, expires_at = ?6, run_id = NULL \
     WHERE account_id = ?1 AND scope = ?2 AND idem_key = ?3 AND state = 'in_flight' \
       AND created_at = ?4 RETURNING created_at";

pub const READ: &str = "SELECT fingerprint, state, response_status, response_body, created_at, \
     run_id FROM idempotency_records WHERE account_id = ?1 AND scope = ?2 AND idem_key = ?3";

/// Names the run the claim started (once: a claim starts one run).
/// No row back: the claim was taken over meanwhile, so it must start nothing.
pub const STARTED: &str = "UPDATE idempotency_records SET run_id = ?4 \
     WHERE account_id = ?1 AND scope = ?2 AND idem_key = ?3 AND state = 'in_flight' \
       AND created_at = ?5 AND run_id IS NULL RETURNING run_id";

pub const FINISH: &str = "UPDATE idempotency_records \
     SET state = 'done', response_status = ?4, response_body = ?5 \
     WHERE account_id = ?1 AND scope = ?2 AND idem_key = ?3 AND created_at = ?6";

pub const ABANDON: &str = "DELETE FROM idempotency_records \
     WHERE account_id = ?1 AND scope = ?2 AND idem_key = ?3 AND state = 'in_flight' AND created_at = ?4";

pub const PURGE_EXPIRED: &str = "DELETE FROM idempotency_records WHERE expires_at <= ?1";

/// Who holds a key: its account, surface and the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub account_id: String,
    pub scope: &'static str,
    pub key: String,
}

impl Slot {
    fn args(&self) -> Vec<Arg> {
        vec![
            Arg::Text(self.account_id.clone()),
            Arg::Text(self.scope.to_string()),
            Arg::Text(self.key.clone()),
        ]
    }

    pub fn claim(&self, fingerprint: &str, now_ms: i64) -> Stmt {
        let mut args = self.args();
        args.extend([
            Arg::Text(fingerprint.into()),
            Arg::Int(now_ms),
            Arg::Int(now_ms + RECORD_TTL_MS),
        ]);
        Stmt { sql: CLAIM, args }
    }

    pub fn take_over(&self, old_created_at: i64, now_ms: i64) -> Stmt {
        let mut args = self.args();
        args.extend([
            Arg::Int(old_created_at),
            Arg::Int(now_ms),
            Arg::Int(now_ms + RECORD_TTL_MS),
        ]);
        Stmt {
            sql: TAKE_OVER,
            args,
        }
    }

    pub fn read(&self) -> Stmt {
        Stmt {
            sql: READ,
            args: self.args(),
        }
    }

    pub fn finish(&self, status: u16, body: &str, claimed_at: i64) -> Stmt {
        let mut args = self.args();
        args.extend([
            Arg::Int(status as i64),
            Arg::Text(body.into()),
            Arg::Int(claimed_at),
        ]);
        Stmt { sql: FINISH, args }
    }

    pub fn started(&self, run_id: &str, claimed_at: i64) -> Stmt {
        let mut args = self.args();
        args.extend([Arg::Text(run_id.into()), Arg::Int(claimed_at)]);
        Stmt { sql: STARTED, args }
    }

    pub fn abandon(&self, claimed_at: i64) -> Stmt {
        let mut args = self.args();
        args.push(Arg::Int(claimed_at));
        Stmt { sql: ABANDON, args }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fp: &str, done: bool) -> Record {
        Record {
            fingerprint: fp.into(),
            done,
            response_status: done.then_some(200),
            response_body: done.then(|| "{\"ok\":1}".into()),
            created_at_ms: 1_000,
            run_id: None,
        }
    }

    fn started(fp: &str, done: bool) -> Record {
        Record {
            run_id: Some("run_1".into()),
            ..record(fp, done)
        }
    }

    fn attach() -> Decision {
        Decision::Attach {
            run_id: "run_1".into(),
        }
    }

    #[test]
    fn same_request_replays_the_first_response() {
        assert_eq!(
            decide(Some(&record("f", true)), "f", Form::Json, 2_000, 60_000),
            Decision::Replay {
                status: 200,
                body: "{\"ok\":1}".into()
            }
        );
    }

    #[test]
    fn another_request_with_the_same_key_is_refused() {
        assert_eq!(
            decide(Some(&record("f", true)), "g", Form::Json, 2_000, 60_000),
            Decision::Reused
        );
        assert_eq!(
            decide(Some(&record("f", false)), "g", Form::Json, 2_000, 60_000),
            Decision::Reused
        );
    }

    #[test]
    fn a_running_first_request_is_in_flight_until_stale() {
        assert_eq!(
            decide(Some(&record("f", false)), "f", Form::Json, 2_000, 60_000),
            Decision::InFlight
        );
        assert_eq!(
            decide(Some(&record("f", false)), "f", Form::Json, 61_000, 60_000),
            Decision::TakeOver
        );
        assert_eq!(decide(None, "f", Form::Json, 0, 60_000), Decision::Retry);
    }

    #[test]
    fn an_events_retry_attaches_to_the_run_in_flight_or_done() {
        for done in [false, true] {
            let r = started("f", done);
            assert_eq!(decide(Some(&r), "f", Form::Events, 2_000, 60_000), attach());
            // Also past the stale mark: the run's own watchdog ends it.
            assert_eq!(
                decide(Some(&r), "f", Form::Events, 99_000, 60_000),
                attach()
            );
            // Another body is refused whatever the form.
            assert_eq!(
                decide(Some(&r), "g", Form::Events, 2_000, 60_000),
                Decision::Reused
            );
        }
    }

    #[test]
    fn an_events_retry_without_a_run_is_answered_as_a_json_one() {
        // Claimed, no run id yet: in flight (then stale: taken over).
        let claimed = record("f", false);
        assert_eq!(
            decide(Some(&claimed), "f", Form::Events, 2_000, 60_000),
            Decision::InFlight
        );
        assert_eq!(
            decide(Some(&claimed), "f", Form::Events, 61_000, 60_000),
            Decision::TakeOver
        );
        // Done without a run (a stored refusal, e.g. a 400): replayed.
        assert!(matches!(
            decide(Some(&record("f", true)), "f", Form::Events, 2_000, 60_000),
            Decision::Replay { status: 200, .. }
        ));
    }

    #[test]
    fn a_json_retry_of_a_started_run_waits_for_its_answer() {
        assert_eq!(
            decide(Some(&started("f", false)), "f", Form::Json, 2_000, 60_000),
            Decision::InFlight
        );
        assert!(matches!(
            decide(Some(&started("f", true)), "f", Form::Json, 2_000, 60_000),
            Decision::Replay { status: 200, .. }
        ));
    }

    #[test]
    fn a_missing_run_is_in_flight_until_its_answer_is_stored_or_it_is_stale() {
        let r = started("f", false);
        assert_eq!(when_run_missing(&r, 2_000, 60_000), Decision::InFlight);
        assert_eq!(
            when_run_missing(&r, r.created_at_ms + 60_000, 60_000),
            Decision::TakeOver
        );
        assert!(matches!(
            when_run_missing(&started("f", true), 99_000, 60_000),
            Decision::Replay { status: 200, .. }
        ));
    }

    /// The statements on SQLite with the real migrations, as D1 runs them.
    mod sql {
        use super::super::*;
        use rusqlite::{types::Value, Connection};

        fn open() -> Connection {
            let db = Connection::open_in_memory().unwrap();
            for m in [
                include_str!("../../migrations/0001_accounts_and_keys.sql"),
                include_str!("../../migrations/0002_billing.sql"),
                include_str!("../../migrations/0007_idempotency_run.sql"),
            ] {
                db.execute_batch(m).unwrap();
            }
            db
        }

        fn args(stmt: &Stmt) -> Vec<Value> {
            stmt.args
                .iter()
                .map(|a| match a {
                    Arg::Int(n) => Value::Integer(*n),
                    Arg::Text(t) => Value::Text(t.clone()),
                    Arg::Null => Value::Null,
                })
                .collect()
        }

        /// Runs `stmt`; its first column of the first row, if any.
        fn run(db: &Connection, stmt: &Stmt) -> Option<i64> {
            let mut st = db.prepare(stmt.sql).unwrap();
            let mut rows = st.query(rusqlite::params_from_iter(args(stmt))).unwrap();
            rows.next().unwrap().map(|r| r.get(0).unwrap_or(0))
        }

        /// Rows changed (a `RETURNING` statement's rows are drained first).
        fn changes(db: &Connection, stmt: &Stmt) -> usize {
            let mut st = db.prepare(stmt.sql).unwrap();
            let mut rows = st.query(rusqlite::params_from_iter(args(stmt))).unwrap();
            while rows.next().unwrap().is_some() {}
            db.changes() as usize
        }

        fn run_id(db: &Connection, slot: &Slot) -> Option<String> {
            let read = slot.read();
            let mut st = db.prepare(read.sql).unwrap();
            let mut rows = st.query(rusqlite::params_from_iter(args(&read))).unwrap();
            rows.next().unwrap().and_then(|r| r.get(5).unwrap())
        }

        fn slot() -> Slot {
            Slot {
                account_id: "acct".into(),
                scope: "runs.create",
                key: "k".into(),
            }
        }

        #[test]
        fn a_claim_names_its_run_once_and_keeps_it_when_done() {
            let db = open();
            let slot = slot();
            assert_eq!(run(&db, &slot.claim("f", 1_000)), Some(1_000));
            // Another claim of a live key gets nothing.
            assert_eq!(run(&db, &slot.claim("f", 2_000)), None);
            assert_eq!(run_id(&db, &slot), None);
            // Only the claim's own time names the run, and only once.
            assert_eq!(changes(&db, &slot.started("run_a", 999)), 0);
            assert_eq!(changes(&db, &slot.started("run_a", 1_000)), 1);
            assert_eq!(changes(&db, &slot.started("run_b", 1_000)), 0);
            assert_eq!(run_id(&db, &slot).as_deref(), Some("run_a"));
            assert_eq!(changes(&db, &slot.finish(200, "{}", 1_000)), 1);
            assert_eq!(run_id(&db, &slot).as_deref(), Some("run_a"));
            // A done record is not named again.
            assert_eq!(changes(&db, &slot.started("run_c", 1_000)), 0);
        }

        #[test]
        fn a_new_claim_or_a_take_over_forgets_the_old_run() {
            let db = open();
            let slot = slot();
            run(&db, &slot.claim("f", 1_000));
            changes(&db, &slot.started("run_a", 1_000));
            // Taken over (the first request died): no run until named again.
            assert_eq!(run(&db, &slot.take_over(1_000, 5_000)), Some(5_000));
            assert_eq!(run_id(&db, &slot), None);
            changes(&db, &slot.started("run_b", 5_000));
            changes(&db, &slot.finish(200, "{}", 5_000));
            // Expired: the next claim starts afresh.
            let later = 5_000 + RECORD_TTL_MS;
            assert_eq!(run(&db, &slot.claim("g", later)), Some(later));
            assert_eq!(run_id(&db, &slot), None);
            // Abandoned: the record, its run id with it, is gone.
            changes(&db, &slot.started("run_c", later));
            assert_eq!(changes(&db, &slot.abandon(later)), 1);
            assert_eq!(run_id(&db, &slot), None);
        }
    }

    #[test]
    fn fingerprints_ignore_json_formatting_but_not_content_or_path() {
        let a = fingerprint("POST", "/p", br#"{"amount": 5, "description":"x"}"#);
        let b = fingerprint("post", "/p", br#"{"description":"x","amount":5}"#);
        assert_eq!(a, b);
        assert_ne!(
            a,
            fingerprint("POST", "/p", br#"{"amount":6,"description":"x"}"#)
        );
        assert_ne!(
            a,
            fingerprint("POST", "/q", br#"{"amount":5,"description":"x"}"#)
        );
        assert_ne!(
            fingerprint("POST", "/p", b"not json"),
            fingerprint("POST", "/p", b"not  json")
        );
    }

    #[test]
    fn key_shape() {
        assert!(valid_key("abc-123_XYZ:1"));
        assert!(!valid_key(""));
        assert!(!valid_key("has space"));
        assert!(!valid_key(&"k".repeat(256)));
        assert!(!valid_key("ключ"));
    }

    #[test]
    fn only_answers_about_the_request_are_stored() {
        assert!(should_store(200) && should_store(201) && should_store(400) && should_store(404));
        assert!(
            !should_store(402)
                && !should_store(409)
                && !should_store(429)
                && !should_store(500)
                && !should_store(503)
        );
    }
}
