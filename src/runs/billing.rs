//! Metering of repo runs (pure): what the Worker hands the run's DO, and
//! the plans that settle a run's container time in the ledger. The money
//! moves through `ledger_sql`'s plans; this only adds what runs need:
//! a usage event named after the run (so recording it twice is impossible)
//! carrying the run's container milliseconds.

use serde::{Deserialize, Serialize};

use crate::billing::ledger_sql::{self as sql, Usage};
use crate::common::sql::{Arg, Stmt};

/// Billing of one run, decided by the Worker before the run starts and
/// kept by the run's DO until the run is settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunBilling {
    /// `RUN_USD_PER_MINUTE` in micro-dollars per minute (0: usage only).
    pub usd_per_minute_micros: i64,
    /// The hold taken for a standard key when the price is above 0.
    pub hold_id: Option<String>,
    pub hold_micros: i64,
}

/// The event's container time (settle and record plans insert it without).
pub const SET_CONTAINER_MS: &str = "UPDATE usage_events SET container_ms = ?2 WHERE id = ?1";

/// Records the run's usage uncharged, unless it was recorded already.
pub const RECORD_RUN_USAGE: &str = "INSERT OR IGNORE INTO usage_events \
     (id, account_id, key_id, run_id, input_tokens, output_tokens, cost_micros, charged_micros, day, created_at) \
     VALUES (?1, ?2, ?3, ?4, 0, 0, ?5, 0, ?6, ?7)";

pub const APPLIED_USAGE: &str =
    "SELECT EXISTS (SELECT 1 FROM usage_events WHERE id = ?1) AS applied";

/// The usage event of a run's billing period: period 1 (the steps, and a
/// live run's first live period) is named after the run; each resume's
/// period after the run and its number. So each period is recorded once.
pub fn period_event_id(run_id: &str, period: i64) -> String {
    let id = sql::usage_event_id(run_id);
    if period <= 1 {
        id
    } else {
        format!("{id}_{period}")
    }
}

/// Fresh ids for one settlement's ledger entries.
pub struct EntryIds<'a> {
    pub usage_entry_id: &'a str,
    pub release_entry_id: &'a str,
}

/// Settles the run's hold: charges min(cost, hold), releases the rest,
/// records the usage event with the container time, in one batch. Does
/// nothing if the hold is no longer open (settled before, or swept): the
/// ledger's guard on `holds.status = 'held'`.
pub fn settle_run_plan(
    hold_id: &str,
    event_id: &str,
    ids: &EntryIds,
    container_ms: i64,
    cost_micros: i64,
    now_ms: i64,
) -> Vec<Stmt> {
    let mut plan = sql::settle_plan(&sql::Settle {
        hold_id,
        usage_entry_id: ids.usage_entry_id,
        release_entry_id: ids.release_entry_id,
        usage_event_id: event_id,
        usage: Usage {
            input_tokens: 0,
            output_tokens: 0,
            cost_micros,
        },
        description: "run container time",
        now_ms,
    });
    // Before the final `applied` row: the container time of the event.
    let at = plan.len().saturating_sub(1);
    plan.insert(at, set_container_ms(event_id, container_ms));
    plan
}

/// Records the run's usage without charging (price 0, internal keys, or a
/// hold already resolved); a second call changes nothing.
pub fn record_run_plan(
    account_id: &str,
    key_id: &str,
    run_id: &str,
    event_id: &str,
    container_ms: i64,
    cost_micros: i64,
    now_ms: i64,
) -> Vec<Stmt> {
    vec![
        Stmt {
            sql: RECORD_RUN_USAGE,
            args: vec![
                Arg::Text(event_id.to_string()),
                account_id.into(),
                key_id.into(),
                run_id.into(),
                Arg::Int(cost_micros),
                Arg::Text(crate::billing::rules::day_of(now_ms)),
                Arg::Int(now_ms),
            ],
        },
        set_container_ms(event_id, container_ms),
        Stmt {
            sql: APPLIED_USAGE,
            args: vec![Arg::Text(event_id.to_string())],
        },
    ]
}

fn set_container_ms(event_id: &str, container_ms: i64) -> Stmt {
    Stmt {
        sql: SET_CONTAINER_MS,
        args: vec![event_id.into(), Arg::Int(container_ms)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_gets_as_many_args_as_it_numbers() {
        let ids = EntryIds {
            usage_entry_id: "u",
            release_entry_id: "r",
        };
        let plans = [
            settle_run_plan("h", "use_run_1", &ids, 5, 6, 0),
            record_run_plan("a", "k", "run_1", "use_run_1", 5, 6, 0),
        ];
        for s in plans.iter().flatten() {
            let highest = (1..=20)
                .rev()
                .find(|n| s.sql.contains(&format!("?{n}")))
                .unwrap_or(0);
            assert_eq!(highest, s.args.len(), "{}", s.sql);
        }
    }

    #[test]
    fn the_usage_event_is_named_after_the_run_and_plans_end_with_applied() {
        assert_eq!(sql::usage_event_id("run_ab"), "use_run_ab");
        let ids = EntryIds {
            usage_entry_id: "u",
            release_entry_id: "r",
        };
        assert_eq!(period_event_id("run_ab", 1), "use_run_ab");
        assert_eq!(period_event_id("run_ab", 3), "use_run_ab_3");
        let settle = settle_run_plan("h", &period_event_id("run_ab", 1), &ids, 5, 6, 0);
        assert!(settle.last().unwrap().sql.contains("AS applied"));
        assert_eq!(settle[settle.len() - 2].sql, SET_CONTAINER_MS);
        assert!(settle
            .iter()
            .any(|s| s.args.contains(&Arg::Text("use_run_ab".into()))));
        let record = record_run_plan("a", "k", "run_ab", "use_run_ab", 5, 6, 0);
        assert_eq!(record.last().unwrap().sql, APPLIED_USAGE);
    }
}
