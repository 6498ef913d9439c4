//! Types that cross the wire between the CloudboxRunner Durable Object and
//! the runner server in the container. Both sides use these definitions.

pub mod pack;
pub mod receipts;

use crate::common::names::named_enum;
use serde::{Deserialize, Serialize};

/// The port the runner listens on inside the container (`EXPOSE 8080`).
pub const RUNNER_PORT: u16 = 8080;

/// Every call from the DO carries the container's secret in this header; the
/// runner answers 401 `runner_secret` to anything without it.
pub const RUNNER_SECRET_HEADER: &str = "x-cloudbox-runner-secret";
/// The runner's start environment: the secret it requires of every call.
pub const RUNNER_SECRET_ENV: &str = "RUNNER_SECRET";
/// The runner's start environment: where `https://github.com/` is served
/// from instead (dev and tests: a local git smart-HTTP server).
pub const GITHUB_MIRROR_ENV: &str = "CLOUDBOX_GITHUB_MIRROR";

/// `GET /health` of the runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerHealth {
    pub ok: bool,
    pub name: String,
    pub version: String,
    /// Names this runner process (random at its start): a new container, or
    /// a restarted runner, has a new one.
    #[serde(default)]
    pub instance_id: String,
}

// ---------------------------------------------------------------------------
// Repo runs: `POST /runs` (a `RunStart`) → NDJSON of `WireEvent`s;
// `GET /runs/:id/events?after=N` resumes after event N;
// `POST /runs/:id/cancel`.

use std::collections::BTreeMap;

use crate::wire::receipts::Receipt;

/// The runner sends a heartbeat line this often, so the DO can tell a slow
/// step from a dead runner.
pub const HEARTBEAT_MS: u64 = 1_000;
/// stdout/stderr kept per step (the tail), in characters.
pub const OUTPUT_TAIL_CHARS: usize = 64_000;
/// Artifact text returned (the head), in bytes.
pub const MAX_ARTIFACT_BYTES: u64 = 256 * 1024;
/// Diff text returned (the head), in bytes.
pub const MAX_DIFF_BYTES: u64 = 1024 * 1024;
/// Live `output` events per stream per step; the receipt keeps the tail anyway.
pub const LIVE_OUTPUT_CAP_BYTES: usize = 256 * 1024;

/// A run's full input, as the DO sends it to the runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunStart {
    pub run_id: String,
    /// `https://github.com/<owner>/<repo>` (validated by the Worker).
    pub repo: String,
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    #[serde(default)]
    pub commands: Vec<String>,
    #[serde(default)]
    pub verify: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    pub timeout_ms: u64,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Keep the checkout after the result (a live run).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub live: bool,
}

/// One NDJSON line. `seq` counts from 1 per run; heartbeats carry 0 and are
/// not part of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireEvent {
    pub seq: u64,
    #[serde(flatten)]
    pub event: RunEvent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
pub enum RunEvent {
    Receipt(Receipt),
    Output(OutputChunk),
    Result(RunResult),
    /// A workspace task's metered model call.
    Usage(UsageReport),
    /// A workspace task's end.
    Task(TaskResult),
    Heartbeat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamName {
    Stdout,
    Stderr,
}

/// Live output of the step that will get receipt number `step`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputChunk {
    pub step: u64,
    pub stream: StreamName,
    pub text: String,
}

named_enum! {
    pub enum RunStatus {
        Queued = "queued",
        Running = "running",
        Passed = "passed",
        Failed = "failed",
        Cancelled = "cancelled",
        TimedOut = "timed_out",
        ContainerLost = "container_lost",
        Live = "live",
        Stopped = "stopped",
        Expired = "expired",
    }
}

impl RunStatus {
    /// The steps are over (a live run's later states included).
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }

    /// The run's container is kept for it (a live run between its steps
    /// and its stop or expiry).
    pub fn holds_container(self) -> bool {
        self == RunStatus::Live
    }
}

/// How a run that reached its end came out. `ok` is the contract's rule:
/// the clone worked and every verify step exited 0 (200, else 422).
/// The status then says why it is not ok: `cancelled`, else `timed_out` if
/// any step hit its timeout, else `failed`.
pub fn outcome(
    clone_ok: bool,
    verify_ok: bool,
    any_timed_out: bool,
    cancelled: bool,
) -> (bool, RunStatus) {
    let ok = clone_ok && verify_ok && !cancelled;
    let status = if cancelled {
        RunStatus::Cancelled
    } else if ok {
        RunStatus::Passed
    } else if any_timed_out {
        RunStatus::TimedOut
    } else {
        RunStatus::Failed
    };
    (ok, status)
}

/// The artifact file, read as text (lossy UTF-8), or why it is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    pub path: String,
    pub found: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Size of the whole file.
    pub bytes: u64,
    /// SHA-256 of the whole file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Only the first `MAX_ARTIFACT_BYTES` are in `content`.
    pub truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The runner's last event of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    pub ok: bool,
    pub status: RunStatus,
    pub artifact: Option<Artifact>,
    pub diff: Option<String>,
    /// Wall time the run held the container, for metering.
    pub container_ms: u64,
}

// ---------------------------------------------------------------------------
// Live runs: a run started with `live: true` keeps its checkout
// (`<work_dir>/<run_id>/repo`) after its result, and then:
// `POST /runs/{id}/exec` (a `LiveExec`) → NDJSON of `WireEvent`s for the
// job `exec_id` (output chunks, one `exec` receipt, a `result`), resumable at
// `GET /runs/{exec_id}/events?after=N`, cancelled at
// `POST /runs/{exec_id}/cancel`;
// `GET /runs/{id}/file?path=P` → the file's bytes (`FILE_MODE_HEADER`:
// its mode in octal); `PUT /runs/{id}/file?path=P&mode=644` (the bytes) →
// a `FileWritten`; `POST /runs/{id}/snapshot` → a `Snapshot` of the checkout
// (its files added to the blob cache); `POST /runs/{id}/restore` (a
// `Restore`, its blobs pushed first) → a `Restored` checkout.

/// Largest file `GET /runs/{id}/file` returns (and `PUT` accepts).
pub const MAX_LIVE_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// The mode of a file read from a live checkout, in octal (e.g. `644`).
pub const FILE_MODE_HEADER: &str = "x-cloudbox-mode";

/// One command in a live run's checkout, as its own job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveExec {
    /// The job's id in the runner's registry (runs, tasks and execs share it).
    pub exec_id: String,
    pub command: String,
    pub timeout_ms: u64,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileWritten {
    pub path: String,
    pub written: u64,
}

/// The checkout of a live run, entry by entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub entries: Vec<crate::runs::tree::TreeEntry>,
}

/// A checkout to write for `run_id` (the run becomes live on this runner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Restore {
    pub entries: Vec<crate::runs::tree::TreeEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Restored {
    pub files: u64,
    pub bytes: u64,
}

/// Why the runner refused a call: the `error` of every error it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerErrorCode {
    /// The call did not carry the container's secret.
    RunnerSecret,
    /// Not a sha256 name.
    BadBlob,
    /// The bytes do not hash to their name.
    HashMismatch,
    BlobNotFound,
    /// A task names blobs the runner's cache lacks (`missing`).
    MissingBlobs,
    BadTask,
    TaskExists,
    BadRun,
    RunExists,
    /// The runner has no such run or task: it restarted since.
    RunNotFound,
    /// No live checkout of that run on this runner.
    NotLive,
    FileNotFound,
    FileTooLarge,
    BadPath,
    BadMode,
    /// A `Restore` whose entries fail `runs::tree::validate`.
    BadTree,
    Internal,
}

/// The body of every error the runner answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerError {
    pub error: RunnerErrorCode,
    pub message: String,
    /// With `missing_blobs`: the blobs to push first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

impl RunnerError {
    pub fn new(error: RunnerErrorCode, message: impl Into<String>) -> Self {
        Self {
            error,
            message: message.into(),
            missing: Vec::new(),
        }
    }

    /// The HTTP status each code is answered with (one place).
    pub fn status(&self) -> u16 {
        use RunnerErrorCode::*;
        match self.error {
            RunnerSecret => 401,
            BadBlob | HashMismatch | BadTask | BadRun | BadPath | BadMode | BadTree => 400,
            BlobNotFound | RunNotFound | NotLive | FileNotFound => 404,
            FileTooLarge => 413,
            MissingBlobs | TaskExists | RunExists => 409,
            Internal => 500,
        }
    }

    /// The runner's error in an answer body, if it is one.
    pub fn parse(body: &str) -> Option<Self> {
        serde_json::from_str(body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_errors_round_trip_with_their_status() {
        let err = RunnerError::new(RunnerErrorCode::RunNotFound, "this runner has no such run");
        let text = serde_json::to_string(&err).unwrap();
        assert_eq!(
            text,
            r#"{"error":"run_not_found","message":"this runner has no such run"}"#
        );
        assert_eq!(RunnerError::parse(&text), Some(err.clone()));
        assert_eq!(err.status(), 404);
        assert_eq!(RunnerError::parse("not json"), None);
        let secret = RunnerError::new(RunnerErrorCode::RunnerSecret, "no");
        assert_eq!(secret.status(), 401);
    }

    #[test]
    fn events_serialize_as_tagged_lines() {
        let line = serde_json::to_string(&WireEvent {
            seq: 0,
            event: RunEvent::Heartbeat,
        })
        .unwrap();
        assert_eq!(line, r#"{"seq":0,"type":"heartbeat"}"#);
        let chunk = WireEvent {
            seq: 3,
            event: RunEvent::Output(OutputChunk {
                step: 2,
                stream: StreamName::Stderr,
                text: "hi".into(),
            }),
        };
        let text = serde_json::to_string(&chunk).unwrap();
        assert_eq!(
            text,
            r#"{"seq":3,"type":"output","data":{"step":2,"stream":"stderr","text":"hi"}}"#
        );
        assert_eq!(serde_json::from_str::<WireEvent>(&text).unwrap(), chunk);
    }

    #[test]
    fn outcomes_follow_the_contract() {
        assert_eq!(outcome(true, true, false, false), (true, RunStatus::Passed));
        assert_eq!(outcome(true, true, true, false), (true, RunStatus::Passed));
        assert_eq!(
            outcome(true, false, false, false),
            (false, RunStatus::Failed)
        );
        assert_eq!(
            outcome(true, false, true, false),
            (false, RunStatus::TimedOut)
        );
        assert_eq!(
            outcome(false, true, false, false),
            (false, RunStatus::Failed)
        );
        assert_eq!(
            outcome(true, true, false, true),
            (false, RunStatus::Cancelled)
        );
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            "queued",
            "running",
            "passed",
            "failed",
            "cancelled",
            "timed_out",
            "container_lost",
            "live",
            "stopped",
            "expired",
        ] {
            let st = RunStatus::parse(s).unwrap();
            assert_eq!(st.as_str(), s);
            assert_eq!(serde_json::to_value(st).unwrap(), s);
        }
        assert!(!RunStatus::Running.is_terminal());
        assert!(RunStatus::ContainerLost.is_terminal());
    }
}

// ---------------------------------------------------------------------------
// Workspace tasks (`/execute`): the DO syncs the workspace's blobs into the
// runner's cache (`POST /blobs/missing`, `PUT /blobs/{sha}`), starts the task,
// reads its NDJSON events (the same `WireEvent` framing as runs), and pulls
// back only the blobs it lacks (`GET /blobs/{sha}`).

/// `POST /tasks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStart {
    pub task_id: String,
    pub task: String,
    /// The workspace version the agent starts from; every blob must be cached.
    pub files: Vec<crate::workspaces::manifest::FileEntry>,
    /// The agent session's files (paths under `CODEX_HOME`), also cached blobs.
    #[serde(default)]
    pub session: Vec<crate::workspaces::manifest::FileEntry>,
    /// The thread to resume, if the workspace has one.
    pub resume_thread: Option<String>,
    /// `AGENT_COMMAND`; `None` runs the Codex CLI.
    pub agent_command: Option<String>,
    pub model: String,
    /// Upstream Responses-API base URL, e.g. `https://api.openai.com/v1`.
    pub model_base_url: String,
    /// The upstream credential: used by the runner's proxy only, never given
    /// to the agent process.
    pub model_api_key: Option<String>,
    pub input_micros_per_1k: i64,
    pub output_micros_per_1k: i64,
    /// Stop the agent once its metered cost reaches this (the hold).
    pub max_cost_micros: Option<i64>,
    pub timeout_ms: u64,
}

/// A metered model call (`type: "usage"` events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    pub call: crate::executes::agent_events::TokenUsage,
    pub total: crate::executes::agent_events::TokenUsage,
    pub total_cost_micros: i64,
}

/// The last event of a task (`type: "task"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskResult {
    /// The agent exited 0 and was neither stopped, cancelled nor timed out.
    pub ok: bool,
    pub output: String,
    pub thread_id: Option<String>,
    pub usage: crate::executes::agent_events::TokenUsage,
    pub cost_micros: i64,
    /// The tree after the agent ran (every blob is in the runner's cache).
    pub files: Vec<crate::workspaces::manifest::FileEntry>,
    pub session: Vec<crate::workspaces::manifest::FileEntry>,
    pub exit_code: Option<i32>,
    pub stopped_at_cap: bool,
    pub cancelled: bool,
    pub timed_out: bool,
    pub error: Option<String>,
    pub container_ms: u64,
}

/// `POST /blobs/missing` both ways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlobList {
    pub sha256: Vec<String>,
}
