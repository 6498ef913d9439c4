//! Live runs (pure): the TTL rule, when a live run expires, how long an
//! expired run's snapshot is kept, and the guard of every live action —
//! which state allows what, and the contract's code for everything else.
//!
//! After its steps a live run is `live` (its container kept); `stop` saves a
//! snapshot and makes it `stopped`; at its expiry it is snapshotted and
//! `expired`; a container that dies makes it `container_lost`. `resume`
//! and `fork` start from its latest snapshot. An expired run is kept for
//! `SNAPSHOT_RETENTION_SECONDS`, then answers 410 `run_expired`.

use crate::api::error::ApiError;
use crate::wire::RunStatus;

pub const MIN_TTL_SECONDS: u64 = 60;
pub const MAX_TTL_SECONDS: u64 = 2_592_000;
pub const DEFAULT_TTL_SECONDS: u64 = 3_600;
/// How long an expired run's snapshot stays resumable by default (7 days).
pub const DEFAULT_SNAPSHOT_RETENTION_SECONDS: u64 = 7 * 24 * 3_600;

/// What a caller asks of a live run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Exec,
    Read,
    Write,
    Stop,
    Resume,
    Fork,
}

/// What the guard needs to know of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub status: RunStatus,
    /// Started with `live: true` (or forked).
    pub live: bool,
    pub has_snapshot: bool,
    /// Until when an expired run stays resumable.
    pub retained_until_ms: Option<i64>,
}

/// `Ok` when `action` may run on the run now; else the contract's error:
/// 410 `run_expired` past the retention, 409 `run_not_live` for exec, read,
/// write (and fork without anything to fork from), 409 `run_not_running`
/// for a stop of a run that is not live and a resume of one that is
/// neither stopped, expired nor lost with a snapshot.
pub fn guard(action: Action, view: &View, now_ms: i64) -> Result<(), ApiError> {
    if view.status == RunStatus::Expired
        && view.retained_until_ms.is_some_and(|until| now_ms >= until)
    {
        return Err(ApiError::RunExpired);
    }
    let is_live = view.live && view.status == RunStatus::Live;
    let resumable = view.live
        && view.has_snapshot
        && matches!(
            view.status,
            RunStatus::Stopped | RunStatus::Expired | RunStatus::ContainerLost
        );
    match action {
        Action::Exec | Action::Read | Action::Write if is_live => Ok(()),
        Action::Exec | Action::Read | Action::Write => Err(ApiError::RunNotLive),
        Action::Stop if is_live => Ok(()),
        Action::Stop => Err(ApiError::RunNotRunning),
        Action::Resume if resumable => Ok(()),
        Action::Resume => Err(ApiError::RunNotRunning),
        Action::Fork if is_live || resumable => Ok(()),
        Action::Fork => Err(ApiError::RunNotLive),
    }
}

/// When a live period that starts at `start_ms` ends: its TTL, cut to what
/// its hold pays for.
pub fn expires_at(start_ms: i64, ttl_seconds: u64, paid_until_ms: Option<i64>) -> i64 {
    let by_ttl = start_ms.saturating_add((ttl_seconds as i64).saturating_mul(1000));
    match paid_until_ms {
        Some(paid) => by_ttl.min(paid),
        None => by_ttl,
    }
}

/// Until when an expired run stays resumable.
pub fn retained_until(expired_ms: i64, retention_seconds: u64) -> i64 {
    expired_ms.saturating_add((retention_seconds as i64).saturating_mul(1000))
}

/// `ttlSeconds`: `min_seconds`–`MAX_TTL_SECONDS` (the floor is
/// `MIN_TTL_SECONDS` unless a deployment lowers it), default 3600.
pub fn check_ttl(value: Option<u64>, min_seconds: u64) -> Result<u64, String> {
    match value {
        None => Ok(DEFAULT_TTL_SECONDS.max(min_seconds)),
        Some(s) if (min_seconds..=MAX_TTL_SECONDS).contains(&s) => Ok(s),
        Some(_) => Err(format!(
            "ttlSeconds must be an integer from {min_seconds} to {MAX_TTL_SECONDS}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(status: RunStatus, has_snapshot: bool) -> View {
        View {
            status,
            live: true,
            has_snapshot,
            retained_until_ms: Some(1_000),
        }
    }

    fn code(r: Result<(), ApiError>) -> &'static str {
        match r {
            Ok(()) => "ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn each_state_allows_what_the_contract_says() {
        use Action::*;
        use RunStatus::*;
        // (state, snapshot?) → exec, read, write, stop, resume, fork
        let table = [
            (
                Running,
                false,
                [
                    "run_not_live",
                    "run_not_live",
                    "run_not_live",
                    "run_not_running",
                    "run_not_running",
                    "run_not_live",
                ],
            ),
            (
                Live,
                false,
                ["ok", "ok", "ok", "ok", "run_not_running", "ok"],
            ),
            (
                Stopped,
                true,
                [
                    "run_not_live",
                    "run_not_live",
                    "run_not_live",
                    "run_not_running",
                    "ok",
                    "ok",
                ],
            ),
            (
                Expired,
                true,
                [
                    "run_not_live",
                    "run_not_live",
                    "run_not_live",
                    "run_not_running",
                    "ok",
                    "ok",
                ],
            ),
            (
                ContainerLost,
                true,
                [
                    "run_not_live",
                    "run_not_live",
                    "run_not_live",
                    "run_not_running",
                    "ok",
                    "ok",
                ],
            ),
            (
                ContainerLost,
                false,
                [
                    "run_not_live",
                    "run_not_live",
                    "run_not_live",
                    "run_not_running",
                    "run_not_running",
                    "run_not_live",
                ],
            ),
            (
                Passed,
                false,
                [
                    "run_not_live",
                    "run_not_live",
                    "run_not_live",
                    "run_not_running",
                    "run_not_running",
                    "run_not_live",
                ],
            ),
        ];
        for (status, snap, want) in table {
            for (action, want) in [Exec, Read, Write, Stop, Resume, Fork]
                .into_iter()
                .zip(want)
            {
                assert_eq!(
                    code(guard(action, &view(status, snap), 0)),
                    want,
                    "{status:?} {action:?}"
                );
            }
        }
    }

    #[test]
    fn a_run_that_was_not_live_allows_none_of_it() {
        let mut v = view(RunStatus::Live, true);
        v.live = false;
        for action in [Action::Exec, Action::Stop, Action::Resume, Action::Fork] {
            assert!(guard(action, &v, 0).is_err(), "{action:?}");
        }
    }

    #[test]
    fn an_expired_run_is_gone_once_its_retention_passes() {
        let v = view(RunStatus::Expired, true);
        assert_eq!(code(guard(Action::Resume, &v, 999)), "ok");
        for action in [
            Action::Exec,
            Action::Read,
            Action::Stop,
            Action::Resume,
            Action::Fork,
        ] {
            assert_eq!(code(guard(action, &v, 1_000)), "run_expired", "{action:?}");
        }
        assert_eq!(retained_until(5_000, 2), 7_000);
    }

    #[test]
    fn expiry_is_the_ttl_cut_to_the_hold() {
        assert_eq!(expires_at(1_000, 60, None), 61_000);
        assert_eq!(expires_at(1_000, 60, Some(30_000)), 30_000);
        assert_eq!(expires_at(1_000, 60, Some(90_000)), 61_000);
        assert_eq!(expires_at(i64::MAX - 1, MAX_TTL_SECONDS, None), i64::MAX);
    }

    #[test]
    fn ttl_bounds_and_default() {
        assert_eq!(check_ttl(None, MIN_TTL_SECONDS), Ok(3_600));
        assert_eq!(check_ttl(Some(60), MIN_TTL_SECONDS), Ok(60));
        assert!(check_ttl(Some(59), MIN_TTL_SECONDS).is_err());
        assert!(check_ttl(Some(MAX_TTL_SECONDS + 1), MIN_TTL_SECONDS).is_err());
        assert_eq!(check_ttl(Some(2), 1), Ok(2));
    }
}
