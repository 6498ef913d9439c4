//! The Worker → CloudboxRunner DO contract (pure): every internal request
//! is one `RunnerCall`, POSTed as JSON to `CALL_URL`, with the caller's
//! account in `bindings::ACCOUNT_HEADER` (the DO checks ownership with it).

use serde::{Deserialize, Serialize};

use crate::executes::execution::ExecStart;
use crate::runs::billing::RunBilling;
use crate::wire::RunStart;

/// Where the Worker sends calls (the host is never resolved: a DO stub).
pub const CALL_URL: &str = "https://runner.do/call";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Externally tagged (`{"runEvents": {…}}`, `"probe"`): see `ComputerCall`.
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum RunnerCall {
    /// Starts a container, checks the runner end to end, releases it.
    Probe,
    StartRun {
        start: StartRun,
        respond: Respond,
    },
    GetRun {
        run_id: String,
    },
    /// The run's events with a seq above `after`, as SSE.
    RunEvents {
        run_id: String,
        after: u64,
    },
    VerifyRun {
        run_id: String,
    },
    CancelRun {
        run_id: String,
    },
    DeleteRun {
        run_id: String,
    },
    /// Makes the run public (`publicUrl` in its body) or private again.
    SetRunPublic {
        run_id: String,
        public: bool,
    },
    /// A live run: one command in its checkout.
    ExecRun {
        run_id: String,
        exec: ExecRequest,
        respond: Respond,
    },
    /// A live run: one file of its checkout.
    ReadRunFile {
        run_id: String,
        path: String,
    },
    /// A live run: writes one file of its checkout.
    WriteRunFile {
        run_id: String,
        path: String,
        content_base64: String,
        mode: Option<u32>,
    },
    /// A live run: snapshot, release the container, `stopped`.
    StopRun {
        run_id: String,
    },
    /// A stopped or expired run: a fresh container with its snapshot, `live`
    /// again for `terms`.
    ResumeRun {
        run_id: String,
        terms: LiveTerms,
        billing: Option<RunBilling>,
    },
    /// The parent of a fork: its latest snapshot (one taken now if live).
    ForkSource {
        run_id: String,
    },
    /// A new run from another run's snapshot.
    StartFork {
        fork: StartFork,
    },
    StartExecute {
        start: ExecStart,
        respond: Respond,
    },
    /// The execute's answer, or 202 while it runs (`wait`: until it ends).
    GetExecute {
        run_id: String,
        wait: bool,
    },
    /// The execute's events with a seq above `after`, as SSE.
    ExecuteEvents {
        run_id: String,
        after: u64,
    },
    CancelExecute {
        run_id: String,
    },
}

/// How a start answers: the final JSON body, or the events as SSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Respond {
    Result,
    Events,
}

/// What the Worker hands a run's DO to start it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartRun {
    pub account_id: String,
    pub key_id: String,
    pub spec: RunStart,
    pub deadline_ms: u64,
    /// Metering: the price and the hold the Worker took.
    pub billing: Option<RunBilling>,
    /// The claimed `Idempotency-Key` and its claim time: the DO records
    /// the run's answer for it when the run ends.
    pub idempotency: Option<(String, i64)>,
    /// `public: true`: the run's body names its page (`publicUrl`).
    #[serde(default)]
    pub public: bool,
    /// `live: true`: its TTL and what its hold pays for.
    #[serde(default)]
    pub live: Option<LiveTerms>,
}

/// A live run's TTL, and until when its hold pays for its container
/// (`None`: unbilled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveTerms {
    pub ttl_seconds: u64,
    pub paid_until_ms: Option<i64>,
}

/// `POST /api/runs/:id/exec`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecRequest {
    pub command: String,
    pub timeout_ms: u64,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}

/// A snapshot as another run may start from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRef {
    pub id: String,
    pub taken_ms: i64,
    pub files: u64,
    pub bytes: u64,
    pub tree_key: String,
}

/// What a fork's parent answers: its snapshot and what the child copies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForkSource {
    pub snapshot: SnapshotRef,
    pub spec: RunStart,
    pub ttl_seconds: u64,
}

/// What the Worker hands a fork's DO.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartFork {
    pub account_id: String,
    pub key_id: String,
    pub run_id: String,
    pub parent_run_id: String,
    pub source: ForkSource,
    /// Live at once (`live: true`), else created `stopped`.
    pub live: bool,
    pub terms: LiveTerms,
    pub billing: Option<RunBilling>,
    pub public: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_tagged_by_name_with_camel_case_fields() {
        let call = RunnerCall::RunEvents {
            run_id: "run_1".into(),
            after: 3,
        };
        let json = serde_json::to_value(&call).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"runEvents": {"runId": "run_1", "after": 3}})
        );
        let back: RunnerCall = serde_json::from_value(json).unwrap();
        assert_eq!(back, call);
        let probe = serde_json::to_value(RunnerCall::Probe).unwrap();
        assert_eq!(probe, serde_json::json!("probe"));
    }

    #[test]
    fn an_unknown_op_is_refused() {
        let bad = serde_json::from_str::<RunnerCall>(r#"{"dropTables": {}}"#);
        assert!(bad.is_err());
    }
}
