//! The rules of one `/execute` (pure): its states, how a task's end maps to
//! a state, what it is charged, and the body the API answers.

use crate::common::names::named_enum;
use serde::{Deserialize, Serialize};

use crate::billing::rules::{self, Pricing};
use crate::executes::agent_events::TokenUsage;
use crate::runner::lifecycle::RunnerReceipt;
use crate::wire::receipts::Receipt;
use crate::wire::TaskResult;

/// At most this many executes wait behind the running one of a workspace.
pub const MAX_QUEUED: usize = 8;
/// An execute that waited longer than this in its workspace's queue is
/// failed instead of started: its hold was sized for its own run, not for
/// an unbounded wait.
pub const MAX_QUEUE_WAIT_MS: i64 = 30 * 60_000;
/// The watchdog alarm's period while an execute is open.
pub const WATCHDOG_MS: i64 = 5_000;
/// Sync in, and sync out with the commit, each get at most this long; a
/// slower one fails the execute.
pub const SYNC_LIMIT_MS: i64 = 6 * 60_000;
/// Past its timeout, a task gets this long (both syncs at their limit)
/// before the DO ends it as `timed_out`.
pub const DEADLINE_GRACE_MS: i64 = 2 * SYNC_LIMIT_MS + 60_000;
/// Past that deadline, the watchdog waits this long for the driver before
/// it ends the execute itself (a driver that hangs).
pub const STUCK_AFTER_MS: i64 = 12 * WATCHDOG_MS;

/// When the DO gives up on a running task started at `started_ms`.
pub fn deadline_ms(started_ms: i64, timeout_ms: u64) -> i64 {
    started_ms + timeout_ms as i64 + DEADLINE_GRACE_MS
}

/// The longest an execute can stay open after it is queued: waiting to the
/// queue limit (seen at the next alarm), then running to its deadline, then
/// the watchdog's patience with a hung driver (seen at the next alarm).
pub fn max_life_ms(timeout_ms: u64) -> i64 {
    MAX_QUEUE_WAIT_MS + WATCHDOG_MS + deadline_ms(0, timeout_ms) + STUCK_AFTER_MS + WATCHDOG_MS
}

/// How long a hold outlives the longest life of its execute: the watchdog
/// keeps retrying a settle that failed, and the sweep releases the hold
/// only after this.
pub const HOLD_MARGIN_MS: i64 = 10 * 60_000;

/// The life of an execute's hold (and of its `Idempotency-Key` claim).
pub fn hold_life_ms(timeout_ms: u64) -> i64 {
    max_life_ms(timeout_ms) + HOLD_MARGIN_MS
}

named_enum! {
    pub enum ExecStatus {
        Queued = "queued",
        Running = "running",
        /// The agent is done and its result is being stored and committed
        /// (internal: a cancel now waits for the outcome instead of ending it).
        Saving = "saving",
        Succeeded = "succeeded",
        /// The agent exited non-zero, the model failed, or the sync failed.
        Failed = "failed",
        Cancelled = "cancelled",
        /// The metered cost reached the hold (or `maxCostUsd`).
        Stopped = "stopped",
        TimedOut = "timed_out",
        /// The runner died or restarted mid-task.
        ContainerLost = "container_lost",
    }
}

impl ExecStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            ExecStatus::Queued | ExecStatus::Running | ExecStatus::Saving
        )
    }
}

/// How a task that reached its end came out.
pub fn outcome(result: &TaskResult) -> ExecStatus {
    if result.ok {
        ExecStatus::Succeeded
    } else if result.stopped_at_cap {
        ExecStatus::Stopped
    } else if result.cancelled {
        ExecStatus::Cancelled
    } else if result.timed_out {
        ExecStatus::TimedOut
    } else {
        ExecStatus::Failed
    }
}

/// What the metered tokens cost, and what is charged: never more than the
/// hold (the agent is stopped at it; a last response may overshoot).
pub fn charge_micros(
    pricing: &Pricing,
    usage: &TokenUsage,
    hold_micros: Option<i64>,
) -> (i64, i64) {
    let cost = pricing.cost_micros(usage.input_tokens, usage.output_tokens);
    let charged = match hold_micros {
        Some(hold) => rules::settle_charge(hold, cost),
        None => cost,
    };
    (cost, charged)
}

/// What the Worker hands the workspace's Durable Object to start an execute
/// (after validation and the hold).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecStart {
    pub run_id: String,
    pub account_id: String,
    pub key_id: String,
    /// `standard` or `internal`.
    pub key_type: String,
    pub workspace_id: String,
    pub task: String,
    /// A session named by the request (else the workspace's own).
    pub session_id: Option<String>,
    pub timeout_ms: u64,
    /// The hold taken for this execute (standard keys).
    pub hold_id: Option<String>,
    pub hold_micros: i64,
    pub hold_expires_ms: i64,
    /// Stop the agent once its metered cost reaches this: the hold, or
    /// `maxCostUsd` for an internal key that gave one.
    pub cap_micros: Option<i64>,
    /// `false`: refuse (409 `workspace_busy`) instead of queueing.
    pub wait: bool,
    /// The request's `Idempotency-Key` and when it was claimed: the DO
    /// records the outcome for replay itself, so a client that disconnected
    /// mid-execute gets it on retry instead of a second run.
    #[serde(default)]
    pub idempotency: Option<(String, i64)>,
}

/// The `Idempotency-Key` scope of `POST /execute`.
pub const IDEMPOTENCY_SCOPE: &str = "execute";

/// The cost cap the agent is stopped at.
pub fn cap_micros(hold_micros: Option<i64>, requested: Option<i64>) -> Option<i64> {
    hold_micros.or(requested)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageBody {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    /// USD.
    pub total_cost: f64,
}

impl UsageBody {
    pub fn new(usage: &TokenUsage, cost_micros: i64) -> Self {
        Self {
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            total_tokens: usage.total(),
            total_cost: rules::micros_to_usd(cost_micros),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BillingBody {
    pub balance_after: f64,
    pub total_spent: f64,
}

/// The answer of `POST /execute` (200 when `ok`, else 422 with `error` and
/// `message` set), also the data of the SSE `result` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub ok: bool,
    pub status: ExecStatus,
    pub output: String,
    pub run_id: String,
    pub session_id: Option<String>,
    pub workspace_id: String,
    /// The version the execute committed, else the workspace's version.
    pub version: u64,
    pub changed_files: Vec<String>,
    /// What the agent consumed; `totalCost` is what it cost at the price,
    /// `billing` what was charged (capped at the hold).
    pub usage: UsageBody,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing: Option<BillingBody>,
    pub receipts: Vec<Receipt>,
    /// The container's lifecycle during this execute (`ready` names the
    /// container that did the work; a reused one has no `container.start`).
    #[serde(default)]
    pub runner_receipts: Vec<RunnerReceipt>,
}

impl ExecutionBody {
    pub fn http_status(&self) -> u16 {
        if self.ok {
            200
        } else {
            422
        }
    }
}

/// The `error`/`message` pair of a body that is not ok.
pub fn failure(status: ExecStatus, detail: Option<&str>) -> Option<(String, String)> {
    let why = match status {
        ExecStatus::Succeeded | ExecStatus::Queued | ExecStatus::Running | ExecStatus::Saving => {
            return None
        }
        ExecStatus::Failed => "the agent failed",
        ExecStatus::Cancelled => "the execute was cancelled",
        ExecStatus::Stopped => "stopped: the metered cost reached the hold",
        ExecStatus::TimedOut => "the agent ran past timeoutMs",
        ExecStatus::ContainerLost => "the runner was lost mid-task",
    };
    // The runner's own words add to a failure; for the other endings they
    // only repeat the status.
    let message = match detail {
        Some(d)
            if matches!(status, ExecStatus::Failed | ExecStatus::ContainerLost)
                && !d.is_empty() =>
        {
            format!("{why}: {d}")
        }
        _ => why.to_string(),
    };
    Some((
        "execution_failed".to_string(),
        message + "; nothing was committed",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_outlives_the_longest_life_of_its_execute() {
        for timeout_ms in [1_000, 60_000, 10 * 60_000, 3_600_000, 6 * 3_600_000] {
            let hold_life = hold_life_ms(timeout_ms);
            assert!(
                hold_life > max_life_ms(timeout_ms),
                "timeout {timeout_ms}: the hold lives {hold_life} ms, the execute up to {} ms",
                max_life_ms(timeout_ms)
            );
        }
    }

    fn result() -> TaskResult {
        TaskResult {
            ok: true,
            output: String::new(),
            thread_id: None,
            usage: TokenUsage::default(),
            cost_micros: 0,
            files: vec![],
            session: vec![],
            exit_code: Some(0),
            stopped_at_cap: false,
            cancelled: false,
            timed_out: false,
            error: None,
            container_ms: 0,
        }
    }

    #[test]
    fn outcomes_name_why_a_task_is_not_ok() {
        assert_eq!(outcome(&result()), ExecStatus::Succeeded);
        let not_ok = TaskResult {
            ok: false,
            ..result()
        };
        assert_eq!(outcome(&not_ok), ExecStatus::Failed);
        let capped = TaskResult {
            stopped_at_cap: true,
            cancelled: true,
            ..not_ok.clone()
        };
        assert_eq!(outcome(&capped), ExecStatus::Stopped);
        let cancelled = TaskResult {
            cancelled: true,
            ..not_ok.clone()
        };
        assert_eq!(outcome(&cancelled), ExecStatus::Cancelled);
        let timed_out = TaskResult {
            timed_out: true,
            ..not_ok
        };
        assert_eq!(outcome(&timed_out), ExecStatus::TimedOut);
    }

    #[test]
    fn the_charge_is_the_metered_cost_capped_at_the_hold() {
        let usage = TokenUsage {
            input_tokens: 6548,
            output_tokens: 108,
            ..TokenUsage::default()
        };
        let p = Pricing::DEFAULT;
        assert_eq!(charge_micros(&p, &usage, None), (103_080, 103_080));
        assert_eq!(charge_micros(&p, &usage, Some(200_000)), (103_080, 103_080));
        assert_eq!(charge_micros(&p, &usage, Some(50_000)), (103_080, 50_000));
    }

    #[test]
    fn statuses_round_trip_and_only_three_are_open() {
        for s in [
            "queued",
            "running",
            "saving",
            "succeeded",
            "failed",
            "cancelled",
            "stopped",
            "timed_out",
            "container_lost",
        ] {
            let st = ExecStatus::parse(s).unwrap();
            assert_eq!(st.as_str(), s);
            assert_eq!(serde_json::to_value(st).unwrap(), s);
            assert_eq!(
                st.is_terminal(),
                !matches!(
                    st,
                    ExecStatus::Queued | ExecStatus::Running | ExecStatus::Saving
                )
            );
        }
    }

    #[test]
    fn failures_say_nothing_was_committed() {
        assert_eq!(failure(ExecStatus::Succeeded, None), None);
        let (code, msg) = failure(ExecStatus::Failed, Some("exit 2")).unwrap();
        assert_eq!(code, "execution_failed");
        assert_eq!(msg, "the agent failed: exit 2; nothing was committed");
        let (_, msg) = failure(ExecStatus::Stopped, Some("stopped: cap")).unwrap();
        assert_eq!(
            msg,
            "stopped: the metered cost reached the hold; nothing was committed"
        );
    }

    #[test]
    fn bodies_use_the_contract_names() {
        let body = ExecutionBody {
            error: None,
            message: None,
            ok: true,
            status: ExecStatus::Succeeded,
            output: "done".into(),
            run_id: "exe_1".into(),
            session_id: Some("th".into()),
            workspace_id: "w".into(),
            version: 2,
            changed_files: vec!["a".into()],
            usage: UsageBody::new(
                &TokenUsage {
                    input_tokens: 6548,
                    output_tokens: 108,
                    ..TokenUsage::default()
                },
                103_080,
            ),
            billing: None,
            receipts: vec![],
            runner_receipts: vec![],
        };
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(v["runId"], "exe_1");
        assert_eq!(v["changedFiles"][0], "a");
        assert_eq!(v["usage"]["totalTokens"], 6656);
        assert_eq!(v["usage"]["totalCost"], 0.10308);
        assert!(v.get("billing").is_none() && v.get("error").is_none());
        assert_eq!(body.http_status(), 200);
    }
}
