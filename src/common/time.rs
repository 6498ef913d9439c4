//! Time formatting (pure). Handlers read the clock once (`Date::now()` in the
//! Worker) and pass milliseconds down, so rules stay testable.

use chrono::{DateTime, SecondsFormat};

/// RFC 3339 with milliseconds and `Z`, e.g. `2026-11-22T02:30:00.000Z`.
pub fn rfc3339(ms: i64) -> String {
    match DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => "1970-01-01T00:00:00.000Z".to_string(),
    }
}

/// The Worker's clock in epoch milliseconds, for the Durable Objects, which
/// have no request `Ctx` to carry `now_ms`.
#[cfg(feature = "worker-runtime")]
pub fn now_ms() -> i64 {
    worker::Date::now().as_millis() as i64
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_epoch_millis() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339(1_795_314_600_123),
            "2026-11-22T02:30:00.123Z"
        );
    }
}
