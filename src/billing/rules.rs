//! Billing rules (pure): pricing, money formatting, spend periods, the
//! budget check before a run, the size of a run's hold, and budget alerts.
//! Money is integer micro-dollars (`i64`); the API shows USD rounded to 6
//! decimals. The SQL that moves money is in `ledger_sql`.

use chrono::{DateTime, Datelike};
use serde::Serialize;

use crate::keys::api_key::KeyType;

pub const MICROS_PER_USD: i64 = 1_000_000;

/// Prices in micro-dollars per 1 000 tokens (`INPUT_USD_PER_1K` = 0.015 → 15 000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pricing {
    pub input_micros_per_1k: i64,
    pub output_micros_per_1k: i64,
}

impl Pricing {
    /// The defaults of the contract (1.5× the model's list price).
    pub const DEFAULT: Pricing = Pricing {
        input_micros_per_1k: 15_000,
        output_micros_per_1k: 45_000,
    };

    /// The cost of a run's tokens, rounded half up to the micro-dollar.
    pub fn cost_micros(&self, input_tokens: u64, output_tokens: u64) -> i64 {
        let milli = input_tokens as i128 * self.input_micros_per_1k as i128
            + output_tokens as i128 * self.output_micros_per_1k as i128;
        let micros = (milli + 500) / 1000;
        micros.min(i64::MAX as i128) as i64
    }
}

/// A USD amount (from JSON or a var) → micro-dollars, rounded to the nearest.
/// `None` for NaN, infinities and amounts beyond ±1e12 USD.
pub fn usd_to_micros(usd: f64) -> Option<i64> {
    (usd.is_finite() && usd.abs() <= 1e12).then(|| (usd * MICROS_PER_USD as f64).round() as i64)
}

/// A var such as `"0.015"` → micro-dollars; `None` if it is not a number ≥ 0.
pub fn parse_usd_var(text: &str) -> Option<i64> {
    let usd: f64 = text.trim().parse().ok()?;
    usd_to_micros(usd).filter(|m| *m >= 0)
}

/// Micro-dollars → the JSON number the API shows (6 decimals at most).
pub fn micros_to_usd(micros: i64) -> f64 {
    // Both operands are exact doubles (below 2^53), and IEEE division is
    // correctly rounded, so this is the double nearest the 6-decimal value.
    micros as f64 / MICROS_PER_USD as f64
}

/// The UTC day and month a moment belongs to, as spend periods:
/// (`d:YYYY-MM-DD`, `m:YYYY-MM`).
pub fn periods(now_ms: i64) -> (String, String) {
    let t = DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
    (
        format!("d:{:04}-{:02}-{:02}", t.year(), t.month(), t.day()),
        format!("m:{:04}-{:02}", t.year(), t.month()),
    )
}

/// The UTC date (`YYYY-MM-DD`) of a moment, for usage by day.
pub fn day_of(now_ms: i64) -> String {
    let t = DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
    format!("{:04}-{:02}-{:02}", t.year(), t.month(), t.day())
}

/// What the budget rules look at, for one key of one account, now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetState {
    pub balance: i64,
    pub held: i64,
    pub total_spent: i64,
    /// Spent and still held in today's / this month's period by this key.
    pub spent_today: i64,
    pub held_today: i64,
    pub spent_month: i64,
    pub held_month: i64,
    pub daily_limit: Option<i64>,
    pub monthly_limit: Option<i64>,
}

impl BudgetState {
    pub fn available(&self) -> i64 {
        (self.balance - self.held).max(0)
    }
    /// Room left under the daily limit, counting open holds (`None`: no limit).
    pub fn day_room(&self) -> Option<i64> {
        self.daily_limit
            .map(|l| (l - self.spent_today - self.held_today).max(0))
    }
    pub fn month_room(&self) -> Option<i64> {
        self.monthly_limit
            .map(|l| (l - self.spent_month - self.held_month).max(0))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum BudgetRefusal {
    /// 429 `spending_limit_exceeded`.
    SpendingLimit { period: &'static str },
    /// 402 `insufficient_credits`.
    InsufficientCredits { balance: i64, total_spent: i64 },
}

impl From<BudgetRefusal> for crate::api::error::ApiError {
    fn from(r: BudgetRefusal) -> Self {
        use crate::api::error::ApiError;
        match r {
            BudgetRefusal::SpendingLimit { period } => ApiError::SpendingLimitExceeded(format!(
                "the {period} spending limit of this key is reached"
            )),
            BudgetRefusal::InsufficientCredits {
                balance,
                total_spent,
            } => ApiError::InsufficientCredits {
                current_balance: micros_to_usd(balance),
                total_spent: micros_to_usd(total_spent),
            },
        }
    }
}

/// The contract's checks before any work starts, in order: a daily or
/// monthly limit already reached (spend plus open holds), then no available
/// balance. Internal keys are never budget-checked.
pub fn check_budget(key_type: KeyType, s: &BudgetState) -> Result<(), BudgetRefusal> {
    if key_type == KeyType::Internal {
        return Ok(());
    }
    if s.day_room() == Some(0) {
        return Err(BudgetRefusal::SpendingLimit { period: "daily" });
    }
    if s.month_room() == Some(0) {
        return Err(BudgetRefusal::SpendingLimit { period: "monthly" });
    }
    if s.available() <= 0 {
        return Err(BudgetRefusal::InsufficientCredits {
            balance: s.balance,
            total_spent: s.total_spent,
        });
    }
    Ok(())
}

/// The hold for a run: its cost cap (`maxCostUsd`, else the default), never
/// more than the available balance nor the room under the key's limits.
pub fn hold_amount(requested: Option<i64>, default: i64, s: &BudgetState) -> i64 {
    let mut amount = requested.unwrap_or(default).min(s.available());
    if let Some(room) = s.day_room() {
        amount = amount.min(room);
    }
    if let Some(room) = s.month_room() {
        amount = amount.min(room);
    }
    amount.max(0)
}

/// The part of a hold that settling charges: the actual cost, capped by the
/// hold (a run is stopped when its metered cost reaches the hold).
pub fn settle_charge(hold: i64, actual: i64) -> i64 {
    actual.clamp(0, hold.max(0))
}

/// The price of a repo run's container time: `usd_per_minute` (micro-dollars
/// per minute, from `RUN_USD_PER_MINUTE`) × `container_ms`, rounded half up
/// to the micro-dollar. 0 when either is 0 (or negative).
pub fn run_cost_micros(container_ms: i64, usd_per_minute: i64) -> i64 {
    if container_ms <= 0 || usd_per_minute <= 0 {
        return 0;
    }
    let micros = (container_ms as i128 * usd_per_minute as i128 + 30_000) / 60_000;
    micros.min(i64::MAX as i128) as i64
}

/// The container time a hold pays for at `usd_per_minute` (rounded down, so
/// `run_cost_micros(run_affordable_ms(h, p), p) <= h`); `i64::MAX` when free.
pub fn run_affordable_ms(hold_micros: i64, usd_per_minute: i64) -> i64 {
    if usd_per_minute <= 0 {
        return i64::MAX;
    }
    let ms = (hold_micros.max(0) as i128 * 60_000) / usd_per_minute as i128;
    ms.min(i64::MAX as i128) as i64
}

/// How long a run's hold outlives the run's maximum life before the
/// scheduled sweep may release it (the DO settles it at the run's end; the
/// watchdog ends a run within seconds of its deadline).
pub const RUN_HOLD_GRACE_MS: i64 = 10 * 60_000;

/// A crossed budget threshold, as listed in `GET /billing/account`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// `daily_limit`, `monthly_limit` or `low_balance`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Percent of the limit reached (50, 80 or 100); absent for `low_balance`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u8>,
    pub message: String,
}

const THRESHOLDS: [u8; 3] = [100, 80, 50];

fn limit_alert(kind: &'static str, label: &str, spent: i64, limit: Option<i64>) -> Option<Alert> {
    let limit = limit?;
    // A zero limit is fully used from the start.
    let crossed = THRESHOLDS
        .into_iter()
        .find(|t| spent as i128 * 100 >= limit as i128 * *t as i128)?;
    Some(Alert {
        kind,
        threshold: Some(crossed),
        message: format!(
            "{crossed}% of the {label} limit used ({:.6} of {:.6} USD)",
            micros_to_usd(spent),
            micros_to_usd(limit)
        ),
    })
}

/// Active alerts: the highest crossed threshold (50/80/100 %) of each limit,
/// by spend (settled, not held), and a balance under `low_balance`.
/// Internal keys are not billed, so they get none.
pub fn alerts(key_type: KeyType, s: &BudgetState, low_balance: i64) -> Vec<Alert> {
    if key_type == KeyType::Internal {
        return Vec::new();
    }
    let mut out = Vec::new();
    out.extend(limit_alert(
        "daily_limit",
        "daily",
        s.spent_today,
        s.daily_limit,
    ));
    out.extend(limit_alert(
        "monthly_limit",
        "monthly",
        s.spent_month,
        s.monthly_limit,
    ));
    if s.available() < low_balance {
        out.push(Alert {
            kind: "low_balance",
            threshold: None,
            message: format!(
                "available balance {:.6} USD is under {:.6} USD",
                micros_to_usd(s.available()),
                micros_to_usd(low_balance)
            ),
        });
    }
    out
}

/// The `x-budget-warning` header for `/execute` responses: the active
/// alerts as comma-separated tokens, e.g. `daily_limit_80, low_balance`.
pub fn budget_warning(alerts: &[Alert]) -> Option<String> {
    let tokens: Vec<String> = alerts
        .iter()
        .map(|a| match a.threshold {
            Some(t) => format!("{}_{t}", a.kind),
            None => a.kind.to_string(),
        })
        .collect();
    (!tokens.is_empty()).then(|| tokens.join(", "))
}

/// The days `GET /billing/usage?from&to` covers: `YYYY-MM-DD` (or RFC 3339)
/// bounds, inclusive; default the last 30 days to today; at most 366 days.
pub fn usage_range(
    from: Option<&str>,
    to: Option<&str>,
    now_ms: i64,
) -> Result<(String, String), Vec<crate::api::error::FieldError>> {
    use crate::api::error::FieldError;
    use chrono::NaiveDate;
    let parse = |field: &str, s: &str| -> Result<NaiveDate, FieldError> {
        let s = s.trim();
        s.parse::<NaiveDate>()
            .or_else(|_| chrono::DateTime::parse_from_rfc3339(s).map(|t| t.naive_utc().date()))
            .map_err(|_| FieldError::new(field, "a date YYYY-MM-DD or an RFC 3339 time"))
    };
    let today = DateTime::from_timestamp_millis(now_ms)
        .unwrap_or_default()
        .date_naive();
    let mut errors = Vec::new();
    let to = match to {
        None => today,
        Some(s) => parse("to", s).unwrap_or_else(|e| {
            errors.push(e);
            today
        }),
    };
    let from = match from {
        None => to - chrono::Days::new(29),
        Some(s) => parse("from", s).unwrap_or_else(|e| {
            errors.push(e);
            to
        }),
    };
    if errors.is_empty() && from > to {
        errors.push(FieldError::new("from", "must not be after to"));
    }
    if errors.is_empty() && (to - from).num_days() > 365 {
        errors.push(FieldError::new("from", "the range is at most 366 days"));
    }
    if errors.is_empty() {
        Ok((from.to_string(), to.to_string()))
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_example_costs_0_10308() {
        let cost = Pricing::DEFAULT.cost_micros(6548, 108);
        assert_eq!(cost, 103_080);
        assert_eq!(micros_to_usd(cost), 0.10308);
        assert_eq!(
            serde_json::json!(micros_to_usd(cost)).to_string(),
            "0.10308"
        );
    }

    #[test]
    fn pricing_comes_from_the_vars() {
        let p = Pricing {
            input_micros_per_1k: parse_usd_var("0.015").unwrap(),
            output_micros_per_1k: parse_usd_var(" 0.045 ").unwrap(),
        };
        assert_eq!(p, Pricing::DEFAULT);
        assert_eq!(parse_usd_var("-1"), None);
        assert_eq!(parse_usd_var("abc"), None);
        assert_eq!(parse_usd_var("NaN"), None);
    }

    #[test]
    fn costs_round_half_up_to_the_micro_dollar() {
        // 1 input token = 15 micro-dollars exactly; 1 token at 0.0015/1K = 1.5 → 2.
        let p = Pricing {
            input_micros_per_1k: 1_500,
            output_micros_per_1k: 1_499,
        };
        assert_eq!(p.cost_micros(1, 0), 2);
        assert_eq!(p.cost_micros(0, 1), 1);
        assert_eq!(p.cost_micros(0, 0), 0);
        assert_eq!(Pricing::DEFAULT.cost_micros(u64::MAX, u64::MAX), i64::MAX);
    }

    #[test]
    fn money_shows_at_most_six_decimals() {
        assert_eq!(micros_to_usd(1), 0.000001);
        assert_eq!(micros_to_usd(1_234_567), 1.234567);
        assert_eq!(micros_to_usd(-2_500_000), -2.5);
        assert_eq!(micros_to_usd(0), 0.0);
        assert_eq!(usd_to_micros(0.1 + 0.2), Some(300_000));
        assert_eq!(usd_to_micros(1.0000004), Some(1_000_000));
        assert_eq!(usd_to_micros(1.0000005), Some(1_000_001));
        assert_eq!(usd_to_micros(f64::INFINITY), None);
        for micros in [3, 103_080, 999_999, 123_456_789_012] {
            let shown = serde_json::json!(micros_to_usd(micros)).to_string();
            let back: f64 = shown.parse().unwrap();
            assert_eq!(usd_to_micros(back), Some(micros), "{shown}");
        }
    }

    #[test]
    fn usage_ranges_default_to_30_days_and_are_bounded() {
        let now = 1_795_314_600_000; // 2026-11-22
        assert_eq!(
            usage_range(None, None, now),
            Ok(("2026-10-24".into(), "2026-11-22".into()))
        );
        assert_eq!(
            usage_range(Some("2026-11-01"), Some("2026-11-02T10:00:00Z"), now),
            Ok(("2026-11-01".into(), "2026-11-02".into()))
        );
        assert!(usage_range(Some("2026-11-03"), Some("2026-11-02"), now).is_err());
        assert!(usage_range(Some("2024-01-01"), Some("2026-01-01"), now).is_err());
        let errs = usage_range(Some("x"), Some("y"), now).unwrap_err();
        assert_eq!(errs.len(), 2);
    }

    #[test]
    fn periods_are_utc_days_and_months() {
        // 2026-11-22T02:30:00Z
        assert_eq!(
            periods(1_795_314_600_000),
            ("d:2026-11-22".into(), "m:2026-11".into())
        );
        assert_eq!(periods(0), ("d:1970-01-01".into(), "m:1970-01".into()));
        assert_eq!(day_of(1_795_314_600_000), "2026-11-22");
        // One millisecond before midnight is still the old day.
        let midnight = 1_795_392_000_000; // 2026-11-23T00:00:00Z
        assert_eq!(periods(midnight - 1).0, "d:2026-11-22");
        assert_eq!(periods(midnight).0, "d:2026-11-23");
    }

    fn state() -> BudgetState {
        BudgetState {
            balance: 5_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn limits_are_checked_before_the_balance() {
        let mut s = state();
        s.daily_limit = Some(1_000_000);
        s.spent_today = 1_000_000;
        s.balance = 0;
        assert_eq!(
            check_budget(KeyType::Standard, &s),
            Err(BudgetRefusal::SpendingLimit { period: "daily" })
        );
        assert_eq!(check_budget(KeyType::Internal, &s), Ok(()));
    }

    #[test]
    fn open_holds_count_towards_the_limits() {
        let mut s = state();
        s.monthly_limit = Some(2_000_000);
        s.spent_month = 1_500_000;
        s.held_month = 400_000;
        assert_eq!(check_budget(KeyType::Standard, &s), Ok(()));
        s.held_month = 500_000;
        assert_eq!(
            check_budget(KeyType::Standard, &s),
            Err(BudgetRefusal::SpendingLimit { period: "monthly" })
        );
    }

    #[test]
    fn refusals_map_to_the_contract_errors() {
        let e: crate::api::error::ApiError =
            BudgetRefusal::SpendingLimit { period: "daily" }.into();
        assert_eq!((e.status(), e.code()), (429, "spending_limit_exceeded"));
        let e: crate::api::error::ApiError = BudgetRefusal::InsufficientCredits {
            balance: 250_000,
            total_spent: 103_080,
        }
        .into();
        assert_eq!((e.status(), e.code()), (402, "insufficient_credits"));
        assert_eq!(
            e.details().unwrap(),
            serde_json::json!({"currentBalance": 0.25, "totalSpent": 0.10308})
        );
    }

    #[test]
    fn no_available_balance_is_insufficient_credits() {
        let mut s = state();
        s.held = s.balance;
        s.total_spent = 7;
        assert_eq!(
            check_budget(KeyType::Standard, &s),
            Err(BudgetRefusal::InsufficientCredits {
                balance: 5_000_000,
                total_spent: 7
            })
        );
        s.balance = 0;
        s.held = 0;
        assert!(check_budget(KeyType::Standard, &s).is_err());
        assert_eq!(check_budget(KeyType::Internal, &s), Ok(()));
    }

    #[test]
    fn a_hold_never_exceeds_balance_or_limit_room() {
        let mut s = state();
        assert_eq!(hold_amount(None, 1_000_000, &s), 1_000_000);
        assert_eq!(hold_amount(Some(9_000_000), 1_000_000, &s), 5_000_000);
        s.daily_limit = Some(3_000_000);
        s.spent_today = 2_500_000;
        assert_eq!(hold_amount(Some(9_000_000), 1_000_000, &s), 500_000);
        s.monthly_limit = Some(100);
        assert_eq!(hold_amount(Some(9_000_000), 1_000_000, &s), 100);
        s.held = 6_000_000;
        assert_eq!(hold_amount(None, 1_000_000, &s), 0);
    }

    #[test]
    fn settling_charges_at_most_the_hold() {
        assert_eq!(settle_charge(100, 40), 40);
        assert_eq!(settle_charge(100, 400), 100);
        assert_eq!(settle_charge(100, -5), 0);
    }

    #[test]
    fn run_cost_is_container_time_times_the_minute_price() {
        // 0.60 USD per minute = 10 micro-dollars per ms.
        let price = parse_usd_var("0.6").unwrap();
        assert_eq!(run_cost_micros(1_234, price), 12_340);
        assert_eq!(run_cost_micros(60_000, price), 600_000);
        // Half a micro-dollar rounds up, less rounds down.
        assert_eq!(run_cost_micros(1, 30_000), 1);
        assert_eq!(run_cost_micros(1, 29_999), 0);
        // Free when the price is 0; nothing for no time.
        assert_eq!(run_cost_micros(90_000, 0), 0);
        assert_eq!(run_cost_micros(0, price), 0);
        assert_eq!(run_cost_micros(-5, price), 0);
        assert_eq!(run_cost_micros(i64::MAX, i64::MAX), i64::MAX);
    }

    #[test]
    fn a_hold_buys_at_most_its_worth_of_container_time() {
        let price = 600_000;
        assert_eq!(run_affordable_ms(750_000, price), 75_000);
        assert_eq!(run_affordable_ms(1, price), 0);
        assert_eq!(run_affordable_ms(5, 0), i64::MAX);
        for hold in [1, 7, 999, 123_457, 5_000_000] {
            for price in [1, 7, 30_000, 600_000, 1_000_000_000] {
                let ms = run_affordable_ms(hold, price);
                assert!(run_cost_micros(ms, price) <= hold, "{hold} {price}");
            }
        }
    }

    #[test]
    fn alerts_report_the_highest_crossed_threshold() {
        let mut s = state();
        s.daily_limit = Some(1_000_000);
        s.monthly_limit = Some(10_000_000);
        s.spent_today = 499_999;
        s.spent_month = 8_000_000;
        let a = alerts(KeyType::Standard, &s, 1_000_000);
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].kind, a[0].threshold), ("monthly_limit", Some(80)));
        s.spent_today = 500_000;
        let a = alerts(KeyType::Standard, &s, 1_000_000);
        assert_eq!((a[0].kind, a[0].threshold), ("daily_limit", Some(50)));
        s.spent_today = 1_200_000;
        s.spent_month = 10_000_000;
        let a = alerts(KeyType::Standard, &s, 1_000_000);
        assert_eq!(
            budget_warning(&a).as_deref(),
            Some("daily_limit_100, monthly_limit_100")
        );
        assert!(alerts(KeyType::Internal, &s, 1_000_000).is_empty());
    }

    #[test]
    fn low_balance_uses_the_available_balance() {
        let mut s = state();
        assert!(alerts(KeyType::Standard, &s, 1_000_000).is_empty());
        s.held = 4_500_000;
        let a = alerts(KeyType::Standard, &s, 1_000_000);
        assert_eq!(a[0].kind, "low_balance");
        assert_eq!(budget_warning(&a).as_deref(), Some("low_balance"));
        assert_eq!(budget_warning(&[]), None);
        let zero = BudgetState {
            daily_limit: Some(0),
            balance: 5_000_000,
            ..Default::default()
        };
        assert_eq!(alerts(KeyType::Standard, &zero, 0)[0].threshold, Some(100));
    }
}
