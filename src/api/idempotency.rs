//! `Idempotency-Key` rules (pure) and their SQL. A record is scoped per
//! account and surface (`scope`, e.g. `billing.credits`); its fingerprint
//! covers the method, the path and the canonical JSON body, so:
//! same key + same request → the first response is replayed; same key and
//! another request → 422 `idempotency_key_reused`; a first request still
//! running → 409 `in_flight`. Records live `RECORD_TTL_MS`; an `in_flight`
//! record older than the caller's `stale_after_ms` (its request died) may
//! be taken over. Surfaces use it through `idempotency_d1`.

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
}

/// What to do when the key was already claimed.
pub fn decide(
    existing: Option<&Record>,
    fingerprint: &str,
    now_ms: i64,
    stale_after_ms: i64,
) -> Decision {
    let Some(r) = existing else {
        return Decision::Retry;
    };
    if r.fingerprint != fingerprint {
        return Decision::Reused;
    }
    match (r.done, r.response_status, &r.response_body) {
        (true, Some(status), Some(body)) => Decision::Replay {
            status,
            body: body.clone(),
        },
        _ if now_ms - r.created_at_ms >= stale_after_ms => Decision::TakeOver,
        _ => Decision::InFlight,
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
       response_body = NULL, created_at = excluded.created_at, expires_at = excluded.expires_at \
     WHERE idempotency_records.expires_at <= excluded.created_at \
     RETURNING created_at";

/// Takes over a stale `in_flight` record (guarded by its old `created_at`,
/// so two takers cannot both win).
pub const TAKE_OVER: &str = "UPDATE idempotency_records SET created_at = ?5, expires_at = ?6 \
     WHERE account_id = ?1 AND scope = ?2 AND idem_key = ?3 AND state = 'in_flight' \
       AND created_at = ?4 RETURNING created_at";

pub const READ: &str = "SELECT fingerprint, state, response_status, response_body, created_at \
     FROM idempotency_records WHERE account_id = ?1 AND scope = ?2 AND idem_key = ?3";

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
        }
    }

    #[test]
    fn same_request_replays_the_first_response() {
        assert_eq!(
            decide(Some(&record("f", true)), "f", 2_000, 60_000),
            Decision::Replay {
                status: 200,
                body: "{\"ok\":1}".into()
            }
        );
    }

    #[test]
    fn another_request_with_the_same_key_is_refused() {
        assert_eq!(
            decide(Some(&record("f", true)), "g", 2_000, 60_000),
            Decision::Reused
        );
        assert_eq!(
            decide(Some(&record("f", false)), "g", 2_000, 60_000),
            Decision::Reused
        );
    }

    #[test]
    fn a_running_first_request_is_in_flight_until_stale() {
        assert_eq!(
            decide(Some(&record("f", false)), "f", 2_000, 60_000),
            Decision::InFlight
        );
        assert_eq!(
            decide(Some(&record("f", false)), "f", 61_000, 60_000),
            Decision::TakeOver
        );
        assert_eq!(decide(None, "f", 0, 60_000), Decision::Retry);
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
