//! Rules for reaching the runner (pure): the readiness backoff schedule and
//! the `runnerReceipts` record of the container lifecycle.

use serde::{Deserialize, Serialize};

/// How hard the CloudboxRunner DO tries before it calls the runner lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadinessPolicy {
    pub max_attempts: u32,
    pub attempt_timeout_ms: u64,
    pub first_delay_ms: u64,
    pub max_delay_ms: u64,
}

/// A container cold start takes seconds; a local runner answers at once.
pub const READINESS: ReadinessPolicy = ReadinessPolicy {
    max_attempts: 12,
    attempt_timeout_ms: 5_000,
    first_delay_ms: 100,
    max_delay_ms: 3_000,
};

impl ReadinessPolicy {
    /// Delay after failed attempt `attempt` (1-based): doubling, capped.
    pub fn delay_after(&self, attempt: u32) -> u64 {
        let factor = 1u64 << attempt.saturating_sub(1).min(16);
        self.first_delay_ms
            .saturating_mul(factor)
            .min(self.max_delay_ms)
    }
}

/// One step of the container lifecycle, as listed in `runnerReceipts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum RunnerEvent {
    #[serde(rename = "container.start")]
    ContainerStart,
    #[serde(rename = "ready_attempt", rename_all = "camelCase")]
    ReadyAttempt {
        attempt: u32,
        elapsed_ms: u64,
        ok: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    #[serde(rename = "ready", rename_all = "camelCase")]
    Ready { elapsed_ms: u64 },
    #[serde(rename = "response")]
    Response { status: u16 },
    #[serde(rename = "exit")]
    Exit { reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerReceipt {
    #[serde(flatten)]
    pub event: RunnerEvent,
    pub ms: i64,
    pub at: String,
}

impl RunnerReceipt {
    pub fn new(event: RunnerEvent, ms: i64) -> Self {
        Self {
            event,
            ms,
            at: crate::time::rfc3339(ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        let delays: Vec<u64> = (1..=7).map(|a| READINESS.delay_after(a)).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 3000, 3000]);
        assert_eq!(READINESS.delay_after(1000), 3000);
    }

    #[test]
    fn total_wait_covers_a_cold_start() {
        let waited: u64 = (1..READINESS.max_attempts)
            .map(|a| READINESS.delay_after(a))
            .sum();
        assert!(waited >= 20_000, "only {waited} ms of patience");
    }

    #[test]
    fn receipts_serialize_as_the_contract_names_them() {
        let r = RunnerReceipt::new(
            RunnerEvent::ReadyAttempt {
                attempt: 2,
                elapsed_ms: 150,
                ok: true,
                error: None,
            },
            0,
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["event"], "ready_attempt");
        assert_eq!(v["elapsedMs"], 150);
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["ok"], true);
        let start =
            serde_json::to_value(RunnerReceipt::new(RunnerEvent::ContainerStart, 0)).unwrap();
        assert_eq!(start["event"], "container.start");
    }
}
