//! The receipt log of a computer (pure): each action appends
//! `{seq, ts, ms, kind, payload, hash, prevHash}`, where `hash` is the SHA-256
//! of the canonical JSON of `prevHash` and the other fields. Changing,
//! dropping or reordering any receipt breaks every later hash.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::common::canonical;

/// `prevHash` of the first receipt: the same 64 zeros as a run's chain.
pub use crate::wire::receipts::GENESIS;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    pub seq: u64,
    /// RFC 3339 time of the action.
    pub ts: String,
    /// The same time as epoch milliseconds.
    pub ms: i64,
    /// `read`, `write`, `ask`, `submit` or `grade`.
    pub kind: String,
    pub payload: Value,
    pub hash: String,
    pub prev_hash: String,
}

/// SHA-256 hex over the canonical `{prevHash, seq, ts, ms, kind, payload}`.
pub fn receipt_hash(
    prev_hash: &str,
    seq: u64,
    ts: &str,
    ms: i64,
    kind: &str,
    payload: &Value,
) -> String {
    let fields = json!({
        "prevHash": prev_hash,
        "seq": seq,
        "ts": ts,
        "ms": ms,
        "kind": kind,
        "payload": payload,
    });
    canonical::sha256_hex(canonical::to_string(&fields).as_bytes())
}

/// The receipt that follows `prev` (or starts the log). Its time never goes
/// backwards: a clock that stepped back is clamped to the previous receipt.
pub fn next_receipt(
    prev: Option<(&str, u64, i64)>,
    now_ms: i64,
    kind: &str,
    payload: Value,
) -> Receipt {
    let (prev_hash, seq, ms) = match prev {
        Some((hash, seq, ms)) => (hash.to_string(), seq + 1, now_ms.max(ms)),
        None => (GENESIS.to_string(), 1, now_ms),
    };
    let ts = crate::common::time::rfc3339(ms);
    let hash = receipt_hash(&prev_hash, seq, &ts, ms, kind, &payload);
    Receipt {
        seq,
        ts,
        ms,
        kind: kind.to_string(),
        payload,
        hash,
        prev_hash,
    }
}

/// Checks the whole chain; `Err(seq)` names the first receipt that does not fit.
pub fn verify_chain(receipts: &[Receipt]) -> Result<(), u64> {
    let mut prev_hash = GENESIS;
    for (i, r) in receipts.iter().enumerate() {
        let expected_seq = i as u64 + 1;
        let recomputed = receipt_hash(&r.prev_hash, r.seq, &r.ts, r.ms, &r.kind, &r.payload);
        if r.seq != expected_seq || r.prev_hash != prev_hash || r.hash != recomputed {
            return Err(r.seq);
        }
        prev_hash = &r.hash;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> Vec<Receipt> {
        let mut out: Vec<Receipt> = Vec::new();
        for (ms, kind, payload) in [
            (1000, "read", json!({"path": "a"})),
            (900, "write", json!({"path": "b", "bytes": 3})),
            (1500, "ask", json!({"who": "x"})),
        ] {
            let prev = out.last().map(|r| (r.hash.as_str(), r.seq, r.ms));
            let next = next_receipt(prev, ms, kind, payload);
            out.push(next);
        }
        out
    }

    #[test]
    fn receipts_chain_and_verify() {
        let log = chain();
        assert_eq!(log[0].prev_hash, GENESIS);
        assert_eq!(log[1].prev_hash, log[0].hash);
        assert_eq!(log.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(verify_chain(&log), Ok(()));
    }

    #[test]
    fn time_never_goes_backwards() {
        let log = chain();
        assert_eq!(log[1].ms, 1000, "clamped to the previous receipt");
        assert_eq!(log[1].ts, "1970-01-01T00:00:01.000Z");
        assert_eq!(log[2].ms, 1500);
    }

    #[test]
    fn any_change_breaks_the_chain() {
        let mut edited = chain();
        edited[1].payload = json!({"path": "c", "bytes": 3});
        assert_eq!(verify_chain(&edited), Err(2));
        let mut dropped = chain();
        dropped.remove(1);
        assert_eq!(verify_chain(&dropped), Err(3));
        let mut rehashed = chain();
        rehashed[0].kind = "write".into();
        rehashed[0].hash = receipt_hash(
            GENESIS,
            1,
            &rehashed[0].ts,
            1000,
            "write",
            &rehashed[0].payload,
        );
        assert_eq!(
            verify_chain(&rehashed),
            Err(2),
            "the next link still points at the old hash"
        );
    }

    #[test]
    fn the_hash_is_a_function_of_every_field() {
        let p = json!({"path": "a"});
        let h = receipt_hash(GENESIS, 1, "t", 1, "read", &p);
        assert_eq!(h.len(), 64);
        assert_eq!(
            h,
            receipt_hash(GENESIS, 1, "t", 1, "read", &json!({"path": "a"}))
        );
        assert_ne!(h, receipt_hash("x", 1, "t", 1, "read", &p));
        assert_ne!(h, receipt_hash(GENESIS, 2, "t", 1, "read", &p));
        assert_ne!(h, receipt_hash(GENESIS, 1, "u", 1, "read", &p));
        assert_ne!(h, receipt_hash(GENESIS, 1, "t", 2, "read", &p));
        assert_ne!(h, receipt_hash(GENESIS, 1, "t", 1, "write", &p));
        assert_ne!(
            h,
            receipt_hash(GENESIS, 1, "t", 1, "read", &json!({"path": "b"}))
        );
    }

    #[test]
    fn receipts_serialize_in_camel_case() {
        let v = serde_json::to_value(&chain()[0]).unwrap();
        for key in ["seq", "ts", "ms", "kind", "payload", "hash", "prevHash"] {
            assert!(v.get(key).is_some(), "{key}");
        }
    }
}
