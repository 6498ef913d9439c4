//! How long a repo run lives (pure): the watchdog's period and patience,
//! and the life of the run's hold. A run is never queued; its deadline is
//! fixed when it starts (`timeoutMs` × (1 + steps) + 60 s, cut to what the
//! hold pays for), and the watchdog ends it at its first alarm past it.

use crate::billing::rules::RUN_HOLD_GRACE_MS;
use crate::runner::job::Patience;

/// The watchdog alarm's period while a run is not over.
pub const WATCHDOG_MS: i64 = 5_000;

/// A run is never queued, and the watchdog ends it at its deadline.
pub const PATIENCE: Patience = Patience {
    queue_wait_ms: i64::MAX,
    overrun_ms: 0,
};

/// The longest a run can stay open: to its deadline, then the next alarm.
pub fn max_life_ms(deadline_ms: i64) -> i64 {
    deadline_ms + WATCHDOG_MS
}

/// The life of a run's hold: the sweep releases it only after this.
pub fn hold_life_ms(deadline_ms: i64) -> i64 {
    deadline_ms + RUN_HOLD_GRACE_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_outlives_the_longest_life_of_its_run() {
        for deadline_ms in [61_000, 600_000, 33 * 3_600_000] {
            assert!(hold_life_ms(deadline_ms) > max_life_ms(deadline_ms));
        }
    }
}
