//! Rules for reaching the runner (pure): the readiness backoff schedule, the
//! container's start environment, when an idle workspace container is
//! released, and the `runnerReceipts` record of the container lifecycle.

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

/// A workspace's container is released after this long without an execute
/// (`WORKSPACE_IDLE_SECONDS`); the next execute starts a fresh one.
pub const DEFAULT_WORKSPACE_IDLE_SECONDS: u64 = 600;

/// The container's start environment: the per-container secret the runner
/// requires of every call, and (dev and tests only) where the runner clones
/// `https://github.com/` from instead.
pub fn start_env(secret: &str, github_mirror: Option<&str>) -> Vec<(&'static str, String)> {
    let mut env = vec![(crate::wire::RUNNER_SECRET_ENV, secret.to_string())];
    if let Some(mirror) = github_mirror {
        env.push((crate::wire::GITHUB_MIRROR_ENV, mirror.to_string()));
    }
    env
}

/// Whether a workspace's container should be released now: nothing queued
/// or running, and idle for `idle_ms` since the last execute ended.
pub fn idle_release_due(busy: bool, last_active_ms: i64, now_ms: i64, idle_ms: u64) -> bool {
    !busy && now_ms.saturating_sub(last_active_ms) >= idle_ms as i64
}

/// One step of the container lifecycle, as listed in `runnerReceipts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum RunnerEvent {
    /// A container was started for this work; `containerId` names it (the
    /// Durable Object's id: one container per DO, named after it).
    #[serde(rename = "container.start", rename_all = "camelCase")]
    ContainerStart { container_id: String },
    /// The container was destroyed: the run ended, or the workspace idled.
    #[serde(rename = "container.release", rename_all = "camelCase")]
    ContainerRelease {
        container_id: String,
        reason: String,
    },
    /// The container exited without being released (it crashed, was killed).
    #[serde(rename = "container.exit", rename_all = "camelCase")]
    ContainerExit {
        container_id: String,
        reason: String,
    },
    #[serde(rename = "ready_attempt", rename_all = "camelCase")]
    ReadyAttempt {
        attempt: u32,
        elapsed_ms: u64,
        ok: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    #[serde(rename = "ready", rename_all = "camelCase")]
    Ready {
        elapsed_ms: u64,
        /// The container that answered (the DO's id; empty for a native runner).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        container_id: String,
        /// The runner process that answered (new with every container).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        instance_id: String,
    },
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
            at: crate::common::time::rfc3339(ms),
        }
    }
}

/// The DO tables of the container link: every lifecycle step under its
/// op (`runnerReceipts`), and the running container's secret.
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS runner_receipts (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        op TEXT NOT NULL,
        body TEXT NOT NULL
    )",
    // The secret of the container this DO started last (one row). It
    // outlives an eviction of the DO, while the container keeps running.
    "CREATE TABLE IF NOT EXISTS container_link (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        secret TEXT NOT NULL,
        started_ms INTEGER NOT NULL
    )",
];

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
        let start = serde_json::to_value(RunnerReceipt::new(
            RunnerEvent::ContainerStart {
                container_id: "abc".into(),
            },
            0,
        ))
        .unwrap();
        assert_eq!(start["event"], "container.start");
        assert_eq!(start["containerId"], "abc");
        let release = serde_json::to_value(RunnerReceipt::new(
            RunnerEvent::ContainerRelease {
                container_id: "abc".into(),
                reason: "run ended".into(),
            },
            0,
        ))
        .unwrap();
        assert_eq!(release["event"], "container.release");
        assert_eq!(release["reason"], "run ended");
    }

    #[test]
    fn the_start_env_carries_the_secret_and_the_mirror() {
        assert_eq!(
            start_env("s3cret", None),
            vec![("RUNNER_SECRET", "s3cret".to_string())]
        );
        let env = start_env("s", Some("http://172.17.0.1:9/"));
        assert_eq!(
            env[1],
            ("CLOUDBOX_GITHUB_MIRROR", "http://172.17.0.1:9/".to_string())
        );
    }

    #[test]
    fn an_idle_container_is_released_only_when_nothing_waits() {
        assert!(idle_release_due(false, 0, 600_000, 600_000));
        assert!(!idle_release_due(false, 0, 599_999, 600_000));
        assert!(!idle_release_due(true, 0, 10_000_000, 600_000));
    }
}
