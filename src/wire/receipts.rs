//! Run receipts and their hash chain (pure). The runner seals each step's
//! receipt as it finishes; the CloudboxRunner DO seals the ones it adds
//! itself (a run it had to end) and recomputes the chain for
//! `GET /api/runs/:id/verify`.
//!
//! `hash` = lowercase hex SHA-256 of the receipt's canonical serialization:
//! the UTF-8 bytes of the compact JSON array
//! `["cloudbox.receipt.v1", prevHash, seq, type, cmd, exitCode, signal,
//!   stdout, stderr, truncated, timedOut, startedAt, finishedAt, durationMs, ms]`
//! (every field except `hash`, in this order; strings JSON-escaped as
//! serde_json does, `null` for an absent exit code or signal). The first
//! receipt's `prevHash` is 64 zeros.

use serde::{Deserialize, Serialize};

/// `prevHash` of the first receipt of a run (and of a computer's log).
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const TAG: &str = "cloudbox.receipt.v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptKind {
    Clone,
    Command,
    Verify,
    Artifact,
    Diff,
    Exec,
    Cancel,
    /// A live run's checkout saved (`stop`, expiry, a fork of a live run).
    Snapshot,
    /// A snapshot written into a fresh container (`resume`, a live fork).
    Restore,
    /// The first receipt of a forked run: its parent and snapshot.
    Fork,
}

impl ReceiptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptKind::Clone => "clone",
            ReceiptKind::Command => "command",
            ReceiptKind::Verify => "verify",
            ReceiptKind::Artifact => "artifact",
            ReceiptKind::Diff => "diff",
            ReceiptKind::Exec => "exec",
            ReceiptKind::Cancel => "cancel",
            ReceiptKind::Snapshot => "snapshot",
            ReceiptKind::Restore => "restore",
            ReceiptKind::Fork => "fork",
        }
    }
}

/// What a step produced, before it is numbered and sealed into the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub kind: ReceiptKind,
    pub cmd: String,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
    pub timed_out: bool,
    /// Epoch milliseconds when the step started.
    pub started_ms: i64,
    pub duration_ms: u64,
}

impl Step {
    /// A step the DO records itself that succeeded (a snapshot, a restore,
    /// a fork): exit 0, no signal, nothing on stderr.
    pub fn done(
        kind: ReceiptKind,
        cmd: String,
        stdout: String,
        started_ms: i64,
        now_ms: i64,
    ) -> Self {
        Step {
            kind,
            cmd,
            exit_code: Some(0),
            signal: None,
            stdout,
            stderr: String::new(),
            truncated: false,
            timed_out: false,
            started_ms,
            duration_ms: (now_ms - started_ms).max(0) as u64,
        }
    }
}

/// One receipt as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: ReceiptKind,
    pub cmd: String,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
    pub timed_out: bool,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    /// Epoch milliseconds of `startedAt`.
    pub ms: i64,
    pub hash: String,
    pub prev_hash: String,
}

/// The canonical bytes hashed for a receipt (see the module docs).
pub fn canonical(r: &Receipt) -> String {
    serde_json::json!([
        TAG,
        r.prev_hash,
        r.seq,
        r.kind.as_str(),
        r.cmd,
        r.exit_code,
        r.signal,
        r.stdout,
        r.stderr,
        r.truncated,
        r.timed_out,
        r.started_at,
        r.finished_at,
        r.duration_ms,
        r.ms,
    ])
    .to_string()
}

pub fn compute_hash(r: &Receipt) -> String {
    crate::common::canonical::sha256_hex(canonical(r).as_bytes())
}

/// The next number and hash of a run's chain; `append` seals a step into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub next_seq: u64,
    pub head: String,
}

impl Default for Chain {
    fn default() -> Self {
        Self {
            next_seq: 1,
            head: GENESIS.to_string(),
        }
    }
}

impl Chain {
    /// Continues after `last` (or starts fresh when there is none).
    pub fn after(last: Option<&Receipt>) -> Self {
        match last {
            Some(r) => Self {
                next_seq: r.seq + 1,
                head: r.hash.clone(),
            },
            None => Self::default(),
        }
    }

    pub fn append(&mut self, step: Step) -> Receipt {
        let finished_ms = step.started_ms.saturating_add(step.duration_ms as i64);
        let mut receipt = Receipt {
            seq: self.next_seq,
            kind: step.kind,
            cmd: step.cmd,
            exit_code: step.exit_code,
            signal: step.signal,
            stdout: step.stdout,
            stderr: step.stderr,
            truncated: step.truncated,
            timed_out: step.timed_out,
            started_at: crate::common::time::rfc3339(step.started_ms),
            finished_at: crate::common::time::rfc3339(finished_ms),
            duration_ms: step.duration_ms,
            ms: step.started_ms,
            hash: String::new(),
            prev_hash: self.head.clone(),
        };
        receipt.hash = compute_hash(&receipt);
        self.next_seq += 1;
        self.head = receipt.hash.clone();
        receipt
    }
}

/// The result of recomputing a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainCheck {
    pub valid: bool,
    /// Hash of the last receipt (`null` for an empty log).
    pub head: Option<String>,
    pub length: usize,
    /// The first receipt whose number, link or hash is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_invalid_seq: Option<u64>,
}

/// Checks numbering (1, 2, …), links (`prevHash` = previous `hash`, the first
/// one GENESIS) and every hash.
pub fn verify_chain(receipts: &[Receipt]) -> ChainCheck {
    let mut expected = Chain::default();
    for r in receipts {
        let ok =
            r.seq == expected.next_seq && r.prev_hash == expected.head && r.hash == compute_hash(r);
        if !ok {
            return ChainCheck {
                valid: false,
                head: receipts.last().map(|r| r.hash.clone()),
                length: receipts.len(),
                first_invalid_seq: Some(r.seq),
            };
        }
        expected.next_seq += 1;
        expected.head = r.hash.clone();
    }
    ChainCheck {
        valid: true,
        head: receipts.last().map(|r| r.hash.clone()),
        length: receipts.len(),
        first_invalid_seq: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_done_step_exits_0_and_lasts_from_its_start_to_now() {
        let step = Step::done(
            ReceiptKind::Restore,
            "restore s".into(),
            "2 files".into(),
            1_000,
            1_250,
        );
        assert_eq!((step.exit_code, step.duration_ms), (Some(0), 250));
        assert!(step.signal.is_none() && step.stderr.is_empty() && !step.timed_out);
        let clock_back = Step::done(ReceiptKind::Fork, "f".into(), String::new(), 5, 1);
        assert_eq!(clock_back.duration_ms, 0);
    }
    use sha2::{Digest, Sha256};

    fn step(kind: ReceiptKind, cmd: &str, exit: i32) -> Step {
        Step {
            kind,
            cmd: cmd.into(),
            exit_code: Some(exit),
            signal: None,
            stdout: format!("out of {cmd}\n"),
            stderr: String::new(),
            truncated: false,
            timed_out: false,
            started_ms: 1_700_000_000_000,
            duration_ms: 12,
        }
    }

    fn sample() -> Vec<Receipt> {
        let mut chain = Chain::default();
        vec![
            chain.append(step(ReceiptKind::Clone, "git clone", 0)),
            chain.append(step(ReceiptKind::Command, "make", 0)),
            chain.append(step(ReceiptKind::Verify, "make test", 1)),
        ]
    }

    #[test]
    fn receipts_are_numbered_and_linked() {
        let r = sample();
        assert_eq!(r[0].prev_hash, GENESIS);
        assert_eq!(r[1].prev_hash, r[0].hash);
        assert_eq!(r[2].prev_hash, r[1].hash);
        assert_eq!(r.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(r[0].finished_at, "2023-11-14T22:13:20.012Z");
        let check = verify_chain(&r);
        assert!(check.valid);
        assert_eq!(check.head.as_deref(), Some(r[2].hash.as_str()));
    }

    #[test]
    fn the_hash_is_sha256_of_the_documented_canonical_form() {
        let r = &sample()[0];
        let text = canonical(r);
        assert!(text.starts_with(&format!(
            "[\"cloudbox.receipt.v1\",\"{GENESIS}\",1,\"clone\",\"git clone\",0,null,"
        )));
        assert_eq!(r.hash, hex::encode(Sha256::digest(text.as_bytes())));
        assert_eq!(r.hash.len(), 64);
    }

    #[test]
    fn any_tampered_field_breaks_the_chain() {
        type Tamper = Box<dyn Fn(&mut Receipt)>;
        let tamper: Vec<Tamper> = vec![
            Box::new(|r| r.stdout.push('!')),
            Box::new(|r| r.exit_code = Some(7)),
            Box::new(|r| r.cmd = "make -k".into()),
            Box::new(|r| r.duration_ms += 1),
            Box::new(|r| r.timed_out = true),
            Box::new(|r| r.signal = Some("SIGKILL".into())),
        ];
        for change in tamper {
            let mut r = sample();
            change(&mut r[1]);
            let check = verify_chain(&r);
            assert!(!check.valid);
            assert_eq!(check.first_invalid_seq, Some(2));
        }
    }

    #[test]
    fn rehashing_a_tampered_receipt_still_breaks_the_next_link() {
        let mut r = sample();
        r[1].stdout = "forged".into();
        r[1].hash = compute_hash(&r[1]);
        let check = verify_chain(&r);
        assert!(!check.valid);
        assert_eq!(check.first_invalid_seq, Some(3));
    }

    #[test]
    fn dropped_or_reordered_receipts_are_detected() {
        let mut r = sample();
        r.remove(1);
        assert!(!verify_chain(&r).valid);
        let mut r = sample();
        r.swap(1, 2);
        assert!(!verify_chain(&r).valid);
    }

    #[test]
    fn an_empty_log_is_valid_with_no_head() {
        let check = verify_chain(&[]);
        assert!(check.valid);
        assert_eq!(check.head, None);
    }

    #[test]
    fn a_chain_continues_after_its_last_receipt() {
        let r = sample();
        let mut chain = Chain::after(r.last());
        let mut all = r.clone();
        all.push(chain.append(step(ReceiptKind::Cancel, "container_lost", 0)));
        assert!(verify_chain(&all).valid);
    }

    #[test]
    fn receipts_serialize_with_contract_names() {
        let v = serde_json::to_value(&sample()[0]).unwrap();
        for field in [
            "seq",
            "type",
            "cmd",
            "exitCode",
            "signal",
            "stdout",
            "stderr",
            "truncated",
            "startedAt",
            "finishedAt",
            "durationMs",
            "hash",
            "prevHash",
            "ms",
        ] {
            assert!(v.get(field).is_some(), "{field} missing");
        }
        assert_eq!(v["type"], "clone");
    }
}
