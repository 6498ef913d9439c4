//! Query-string paging rules (pure): `limit` and `offset`.

use crate::api::error::FieldError;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

/// `limit`: a whole number 1–200, default 50.
pub fn limit(raw: Option<&str>) -> Result<i64, FieldError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => s
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| FieldError::new("limit", format!("a whole number 1–{MAX_LIMIT}"))),
    }
}

/// `offset`: a whole number ≥ 0, default 0.
pub fn offset(raw: Option<&str>) -> Result<i64, FieldError> {
    match raw {
        None => Ok(0),
        Some(s) => s
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| (0..=1_000_000_000).contains(n))
            .ok_or_else(|| FieldError::new("offset", "a whole number ≥ 0")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_offsets() {
        assert_eq!(limit(None), Ok(50));
        assert_eq!(limit(Some("200")), Ok(200));
        assert!(
            limit(Some("0")).is_err() && limit(Some("201")).is_err() && limit(Some("x")).is_err()
        );
        assert_eq!(offset(None), Ok(0));
        assert_eq!(offset(Some("7")), Ok(7));
        assert!(offset(Some("-1")).is_err());
    }
}
