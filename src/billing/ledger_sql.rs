//! The SQL that moves money, as plans: lists of statements with their
//! arguments, run as ONE D1 `batch` (one transaction). Pure, so the Worker
//! glue (`ledger_d1`) and the property test (`tests/ledger_props.rs`, on
//! SQLite) run exactly the same text.
//!
//! D1 has no interactive transactions, so every plan follows one pattern:
//! its first statement is a guarded insert of a row with a fresh id (the
//! hold, or the ledger entry) whose `WHERE` holds every precondition; each
//! following statement applies only if that row exists; the last statement
//! reports whether it does. A failed guard thus changes nothing, and a
//! hold can be resolved only while its status is still `held`.

use crate::common::sql::{stmt, Stmt};

/// The last statement of every plan answers one row `{applied: 0|1}`.
pub const APPLIED_ENTRY: &str =
    "SELECT EXISTS (SELECT 1 FROM ledger_entries WHERE id = ?1) AS applied";

// --- accounts ---------------------------------------------------------------

pub const ENSURE_ACCOUNT: &str = "INSERT OR IGNORE INTO billing_accounts \
     (account_id, created_at, updated_at) VALUES (?1, ?2, ?2)";

// --- credit / adjustment ------------------------------------------------------

/// Guard: the account exists and the balance stays ≥ what is held (so the
/// available balance never goes negative). A negative amount is an adjustment.
pub const CREDIT_ENTRY: &str = "INSERT INTO ledger_entries \
     (id, account_id, key_id, type, amount_micros, balance_after_micros, description, created_at) \
     SELECT ?1, a.account_id, ?3, CASE WHEN ?4 >= 0 THEN 'credit' ELSE 'adjustment' END, \
            ?4, a.balance_micros + ?4, ?5, ?6 \
     FROM billing_accounts a \
     WHERE a.account_id = ?2 AND ?4 <> 0 AND a.balance_micros + ?4 >= a.held_micros";

pub const CREDIT_APPLY: &str = "UPDATE billing_accounts \
     SET balance_micros = balance_micros + (SELECT amount_micros FROM ledger_entries WHERE id = ?1), \
         updated_at = ?3 \
     WHERE account_id = ?2 AND EXISTS (SELECT 1 FROM ledger_entries WHERE id = ?1)";

pub struct Credit<'a> {
    pub entry_id: &'a str,
    pub account_id: &'a str,
    pub key_id: Option<&'a str>,
    pub amount: i64,
    pub description: &'a str,
    pub now_ms: i64,
}

pub fn credit_plan(c: &Credit) -> Vec<Stmt> {
    vec![
        stmt(ENSURE_ACCOUNT, vec![c.account_id.into(), c.now_ms.into()]),
        stmt(
            CREDIT_ENTRY,
            vec![
                c.entry_id.into(),
                c.account_id.into(),
                c.key_id.into(),
                c.amount.into(),
                c.description.into(),
                c.now_ms.into(),
            ],
        ),
        stmt(
            CREDIT_APPLY,
            vec![c.entry_id.into(), c.account_id.into(), c.now_ms.into()],
        ),
        stmt(APPLIED_ENTRY, vec![c.entry_id.into()]),
    ]
}

// --- hold -------------------------------------------------------------------------

pub const ENSURE_SPEND: &str = "INSERT OR IGNORE INTO key_spend (key_id, period) VALUES (?1, ?2)";

/// Guard: a positive amount within the available balance and within the
/// room (spend + open holds) under the key's daily and monthly limits.
pub const HOLD_INSERT: &str = "INSERT INTO holds \
     (id, account_id, key_id, amount_micros, day_period, month_period, run_id, status, created_at, expires_at) \
     SELECT ?1, k.account_id, k.id, ?3, ?4, ?5, ?6, 'held', ?7, ?8 \
     FROM api_keys k \
     JOIN billing_accounts a ON a.account_id = k.account_id \
     JOIN key_spend d ON d.key_id = k.id AND d.period = ?4 \
     JOIN key_spend m ON m.key_id = k.id AND m.period = ?5 \
     WHERE k.id = ?2 AND ?3 > 0 \
       AND a.balance_micros - a.held_micros >= ?3 \
       AND (k.daily_limit_micros IS NULL OR d.spent_micros + d.held_micros + ?3 <= k.daily_limit_micros) \
       AND (k.monthly_limit_micros IS NULL OR m.spent_micros + m.held_micros + ?3 <= k.monthly_limit_micros)";

pub const HOLD_ENTRY: &str = "INSERT INTO ledger_entries \
     (id, account_id, key_id, type, amount_micros, balance_after_micros, description, run_id, hold_id, created_at) \
     SELECT ?1, h.account_id, h.key_id, 'hold', h.amount_micros, a.balance_micros, ?3, h.run_id, h.id, ?4 \
     FROM holds h JOIN billing_accounts a ON a.account_id = h.account_id \
     WHERE h.id = ?2";

pub const HOLD_ACCOUNT: &str = "UPDATE billing_accounts \
     SET held_micros = held_micros + (SELECT amount_micros FROM holds WHERE id = ?1), updated_at = ?2 \
     WHERE account_id = (SELECT account_id FROM holds WHERE id = ?1)";

pub const HOLD_SPEND: &str = "UPDATE key_spend \
     SET held_micros = held_micros + (SELECT amount_micros FROM holds WHERE id = ?1) \
     WHERE key_id = (SELECT key_id FROM holds WHERE id = ?1) \
       AND period IN (SELECT day_period FROM holds WHERE id = ?1 \
                      UNION ALL SELECT month_period FROM holds WHERE id = ?1)";

pub const HOLD_APPLIED: &str = "SELECT EXISTS (SELECT 1 FROM holds WHERE id = ?1) AS applied";

pub struct Hold<'a> {
    pub hold_id: &'a str,
    pub entry_id: &'a str,
    pub key_id: &'a str,
    pub amount: i64,
    pub run_id: Option<&'a str>,
    pub description: &'a str,
    pub now_ms: i64,
    /// When the sweep may release it: now + the run's maximum life.
    pub expires_at_ms: i64,
}

pub fn hold_plan(h: &Hold) -> Vec<Stmt> {
    let (day, month) = crate::billing::rules::periods(h.now_ms);
    vec![
        stmt(ENSURE_SPEND, vec![h.key_id.into(), (&day).into()]),
        stmt(ENSURE_SPEND, vec![h.key_id.into(), (&month).into()]),
        stmt(
            HOLD_INSERT,
            vec![
                h.hold_id.into(),
                h.key_id.into(),
                h.amount.into(),
                (&day).into(),
                (&month).into(),
                h.run_id.into(),
                h.now_ms.into(),
                h.expires_at_ms.into(),
            ],
        ),
        stmt(
            HOLD_ENTRY,
            vec![
                h.entry_id.into(),
                h.hold_id.into(),
                h.description.into(),
                h.now_ms.into(),
            ],
        ),
        stmt(HOLD_ACCOUNT, vec![h.hold_id.into(), h.now_ms.into()]),
        stmt(HOLD_SPEND, vec![h.hold_id.into()]),
        stmt(HOLD_APPLIED, vec![h.hold_id.into()]),
    ]
}

// --- settle -------------------------------------------------------------------------

/// Guard: the hold is still open. Charges min(actual, hold), never below 0.
pub const SETTLE_USAGE_ENTRY: &str = "INSERT INTO ledger_entries \
     (id, account_id, key_id, type, amount_micros, balance_after_micros, description, run_id, hold_id, created_at) \
     SELECT ?1, h.account_id, h.key_id, 'usage', -MIN(MAX(?3, 0), h.amount_micros), \
            a.balance_micros - MIN(MAX(?3, 0), h.amount_micros), ?4, h.run_id, h.id, ?5 \
     FROM holds h JOIN billing_accounts a ON a.account_id = h.account_id \
     WHERE h.id = ?2 AND h.status = 'held'";

/// The part of the hold not charged goes back (no entry when nothing is left).
pub const SETTLE_RELEASE_ENTRY: &str = "INSERT INTO ledger_entries \
     (id, account_id, key_id, type, amount_micros, balance_after_micros, description, run_id, hold_id, created_at) \
     SELECT ?1, h.account_id, h.key_id, 'release', h.amount_micros + u.amount_micros, \
            u.balance_after_micros, ?4, h.run_id, h.id, ?5 \
     FROM holds h JOIN ledger_entries u ON u.id = ?3 \
     WHERE h.id = ?2 AND h.status = 'held' AND h.amount_micros + u.amount_micros > 0";

pub const SETTLE_ACCOUNT: &str = "UPDATE billing_accounts \
     SET balance_micros = balance_micros + (SELECT amount_micros FROM ledger_entries WHERE id = ?1), \
         held_micros = held_micros - (SELECT amount_micros FROM holds WHERE id = ?2), \
         total_spent_micros = total_spent_micros - (SELECT amount_micros FROM ledger_entries WHERE id = ?1), \
         updated_at = ?3 \
     WHERE account_id = (SELECT account_id FROM holds WHERE id = ?2 AND status = 'held') \
       AND EXISTS (SELECT 1 FROM ledger_entries WHERE id = ?1)";

pub const SETTLE_SPEND: &str = "UPDATE key_spend \
     SET spent_micros = spent_micros - (SELECT amount_micros FROM ledger_entries WHERE id = ?1), \
         held_micros = held_micros - (SELECT amount_micros FROM holds WHERE id = ?2) \
     WHERE key_id = (SELECT key_id FROM holds WHERE id = ?2 AND status = 'held') \
       AND period IN (SELECT day_period FROM holds WHERE id = ?2 \
                      UNION ALL SELECT month_period FROM holds WHERE id = ?2) \
       AND EXISTS (SELECT 1 FROM ledger_entries WHERE id = ?1)";

pub const SETTLE_USAGE_EVENT: &str = "INSERT INTO usage_events \
     (id, account_id, key_id, run_id, input_tokens, output_tokens, cost_micros, charged_micros, day, created_at) \
     SELECT ?1, u.account_id, u.key_id, u.run_id, ?3, ?4, ?5, -u.amount_micros, ?6, ?7 \
     FROM ledger_entries u WHERE u.id = ?2";

pub const SETTLE_HOLD: &str = "UPDATE holds \
     SET status = 'settled', \
         charged_micros = -(SELECT amount_micros FROM ledger_entries WHERE id = ?1), \
         resolved_at = ?3 \
     WHERE id = ?2 AND status = 'held' AND EXISTS (SELECT 1 FROM ledger_entries WHERE id = ?1)";

/// Tokens and cost of a finished run, recorded with its settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_micros: i64,
}

pub struct Settle<'a> {
    pub hold_id: &'a str,
    pub usage_entry_id: &'a str,
    pub release_entry_id: &'a str,
    pub usage_event_id: &'a str,
    pub usage: Usage,
    pub description: &'a str,
    pub now_ms: i64,
}

pub fn settle_plan(s: &Settle) -> Vec<Stmt> {
    vec![
        stmt(
            SETTLE_USAGE_ENTRY,
            vec![
                s.usage_entry_id.into(),
                s.hold_id.into(),
                s.usage.cost_micros.into(),
                s.description.into(),
                s.now_ms.into(),
            ],
        ),
        stmt(
            SETTLE_RELEASE_ENTRY,
            vec![
                s.release_entry_id.into(),
                s.hold_id.into(),
                s.usage_entry_id.into(),
                "unused part of the hold".into(),
                s.now_ms.into(),
            ],
        ),
        stmt(
            SETTLE_ACCOUNT,
            vec![s.usage_entry_id.into(), s.hold_id.into(), s.now_ms.into()],
        ),
        stmt(
            SETTLE_SPEND,
            vec![s.usage_entry_id.into(), s.hold_id.into()],
        ),
        stmt(
            SETTLE_USAGE_EVENT,
            vec![
                s.usage_event_id.into(),
                s.usage_entry_id.into(),
                s.usage.input_tokens.into(),
                s.usage.output_tokens.into(),
                s.usage.cost_micros.into(),
                crate::billing::rules::day_of(s.now_ms).as_str().into(),
                s.now_ms.into(),
            ],
        ),
        stmt(
            SETTLE_HOLD,
            vec![s.usage_entry_id.into(), s.hold_id.into(), s.now_ms.into()],
        ),
        stmt(APPLIED_ENTRY, vec![s.usage_entry_id.into()]),
    ]
}

/// A finished job (a repo run, an execute) to settle.
pub struct FinishJob<'a> {
    /// Its hold, if one was taken (none for internal keys).
    pub hold_id: Option<&'a str>,
    pub job_id: &'a str,
    pub account_id: &'a str,
    pub key_id: &'a str,
    pub usage_entry_id: &'a str,
    pub release_entry_id: &'a str,
    pub usage: Usage,
    pub description: &'a str,
    pub now_ms: i64,
}

/// How a finished job is settled: `settle` first (with a hold), and if it
/// does not apply (no hold, or the hold was resolved already: settled
/// before, or swept) `record`, the usage uncharged. Both name the usage
/// event after the job, so a settle repeated after an eviction adds nothing.
pub struct FinishPlans {
    pub settle: Option<Vec<Stmt>>,
    pub record: Vec<Stmt>,
}

pub fn finish_job_plans(f: &FinishJob) -> FinishPlans {
    let event_id = usage_event_id(f.job_id);
    let settle = f.hold_id.map(|hold_id| {
        settle_plan(&Settle {
            hold_id,
            usage_entry_id: f.usage_entry_id,
            release_entry_id: f.release_entry_id,
            usage_event_id: &event_id,
            usage: f.usage,
            description: f.description,
            now_ms: f.now_ms,
        })
    });
    let record = record_usage_plan(&UsageRecord {
        event_id: &event_id,
        account_id: f.account_id,
        key_id: f.key_id,
        run_id: Some(f.job_id),
        usage: f.usage,
        now_ms: f.now_ms,
    });
    FinishPlans { settle, record }
}

// --- release / expire -----------------------------------------------------------------

/// Guard: the hold is open and (for the sweep) past its expiry.
pub const RELEASE_ENTRY: &str = "INSERT INTO ledger_entries \
     (id, account_id, key_id, type, amount_micros, balance_after_micros, description, run_id, hold_id, created_at) \
     SELECT ?1, h.account_id, h.key_id, 'release', h.amount_micros, a.balance_micros, ?3, h.run_id, h.id, ?4 \
     FROM holds h JOIN billing_accounts a ON a.account_id = h.account_id \
     WHERE h.id = ?2 AND h.status = 'held' AND h.expires_at <= ?5";

pub const RELEASE_ACCOUNT: &str = "UPDATE billing_accounts \
     SET held_micros = held_micros - (SELECT amount_micros FROM holds WHERE id = ?2), updated_at = ?3 \
     WHERE account_id = (SELECT account_id FROM holds WHERE id = ?2 AND status = 'held') \
       AND EXISTS (SELECT 1 FROM ledger_entries WHERE id = ?1)";

pub const RELEASE_SPEND: &str = "UPDATE key_spend \
     SET held_micros = held_micros - (SELECT amount_micros FROM holds WHERE id = ?2) \
     WHERE key_id = (SELECT key_id FROM holds WHERE id = ?2 AND status = 'held') \
       AND period IN (SELECT day_period FROM holds WHERE id = ?2 \
                      UNION ALL SELECT month_period FROM holds WHERE id = ?2) \
       AND EXISTS (SELECT 1 FROM ledger_entries WHERE id = ?1)";

pub const RELEASE_HOLD: &str = "UPDATE holds SET status = ?3, resolved_at = ?4 \
     WHERE id = ?2 AND status = 'held' AND EXISTS (SELECT 1 FROM ledger_entries WHERE id = ?1)";

/// Open holds whose maximum life is over, oldest first.
pub const EXPIRED_HOLDS: &str = "SELECT id FROM holds \
     WHERE status = 'held' AND expires_at <= ?1 ORDER BY expires_at LIMIT ?2";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseKind {
    /// The run ended without usage to charge (or was refused after the hold).
    Release,
    /// The scheduled sweep: only once the hold's expiry has passed.
    Expire,
}

pub fn release_plan(
    hold_id: &str,
    entry_id: &str,
    kind: ReleaseKind,
    description: &str,
    now_ms: i64,
) -> Vec<Stmt> {
    let (status, not_after) = match kind {
        ReleaseKind::Release => ("released", i64::MAX),
        ReleaseKind::Expire => ("expired", now_ms),
    };
    vec![
        stmt(
            RELEASE_ENTRY,
            vec![
                entry_id.into(),
                hold_id.into(),
                description.into(),
                now_ms.into(),
                not_after.into(),
            ],
        ),
        stmt(
            RELEASE_ACCOUNT,
            vec![entry_id.into(), hold_id.into(), now_ms.into()],
        ),
        stmt(RELEASE_SPEND, vec![entry_id.into(), hold_id.into()]),
        stmt(
            RELEASE_HOLD,
            vec![
                entry_id.into(),
                hold_id.into(),
                status.into(),
                now_ms.into(),
            ],
        ),
        stmt(APPLIED_ENTRY, vec![entry_id.into()]),
    ]
}

// --- usage without a hold (internal keys) -------------------------------------------

pub const RECORD_USAGE: &str = "INSERT OR IGNORE INTO usage_events \
     (id, account_id, key_id, run_id, input_tokens, output_tokens, cost_micros, charged_micros, day, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9)";

/// The usage event of a job (a repo run, an execute): one per job, named
/// after it, so that a settle or record repeated after an eviction finds it
/// there and adds nothing.
pub fn usage_event_id(job_id: &str) -> String {
    format!("use_{job_id}")
}

pub struct UsageRecord<'a> {
    pub event_id: &'a str,
    pub account_id: &'a str,
    pub key_id: &'a str,
    pub run_id: Option<&'a str>,
    pub usage: Usage,
    pub now_ms: i64,
}

/// Records usage that is not charged (internal keys; a run whose hold was
/// already swept).
pub fn record_usage_plan(u: &UsageRecord) -> Vec<Stmt> {
    vec![stmt(
        RECORD_USAGE,
        vec![
            u.event_id.into(),
            u.account_id.into(),
            u.key_id.into(),
            u.run_id.into(),
            u.usage.input_tokens.into(),
            u.usage.output_tokens.into(),
            u.usage.cost_micros.into(),
            crate::billing::rules::day_of(u.now_ms).as_str().into(),
            u.now_ms.into(),
        ],
    )]
}

// --- reads ----------------------------------------------------------------------------

/// Everything the budget rules need for one key, now (?2 day, ?3 month period).
pub const BUDGET_OF_KEY: &str = "SELECT k.id AS key_id, k.account_id, k.key_type, \
       k.daily_limit_micros, k.monthly_limit_micros, \
       COALESCE(a.balance_micros, 0) AS balance_micros, \
       COALESCE(a.held_micros, 0) AS held_micros, \
       COALESCE(a.total_spent_micros, 0) AS total_spent_micros, \
       COALESCE(a.created_at, k.created_at) AS created_at, \
       COALESCE(a.updated_at, k.updated_at) AS updated_at, \
       COALESCE(d.spent_micros, 0) AS spent_today, COALESCE(d.held_micros, 0) AS held_today, \
       COALESCE(m.spent_micros, 0) AS spent_month, COALESCE(m.held_micros, 0) AS held_month \
     FROM api_keys k \
     LEFT JOIN billing_accounts a ON a.account_id = k.account_id \
     LEFT JOIN key_spend d ON d.key_id = k.id AND d.period = ?2 \
     LEFT JOIN key_spend m ON m.key_id = k.id AND m.period = ?3 \
     WHERE k.id = ?1";

pub fn budget_of_key(key_id: &str, now_ms: i64) -> Stmt {
    let (day, month) = crate::billing::rules::periods(now_ms);
    stmt(
        BUDGET_OF_KEY,
        vec![key_id.into(), (&day).into(), (&month).into()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// D1 and SQLite bind `?N` by position: every plan must give exactly as
    /// many arguments as the highest `?N` its statement uses.
    #[test]
    fn every_statement_gets_as_many_args_as_it_numbers() {
        let usage = Usage {
            input_tokens: 1,
            output_tokens: 2,
            cost_micros: 3,
        };
        let mut plans = vec![
            credit_plan(&Credit {
                entry_id: "e",
                account_id: "a",
                key_id: Some("k"),
                amount: 1,
                description: "d",
                now_ms: 0,
            }),
            hold_plan(&Hold {
                hold_id: "h",
                entry_id: "e",
                key_id: "k",
                amount: 1,
                run_id: None,
                description: "d",
                now_ms: 0,
                expires_at_ms: 1,
            }),
            settle_plan(&Settle {
                hold_id: "h",
                usage_entry_id: "u",
                release_entry_id: "r",
                usage_event_id: "v",
                usage,
                description: "d",
                now_ms: 0,
            }),
            release_plan("h", "e", ReleaseKind::Expire, "d", 0),
            record_usage_plan(&UsageRecord {
                event_id: "v",
                account_id: "a",
                key_id: "k",
                run_id: None,
                usage,
                now_ms: 0,
            }),
        ];
        plans.push(vec![budget_of_key("k", 0)]);
        for s in plans.into_iter().flatten() {
            let highest = (1..=20)
                .rev()
                .find(|n| s.sql.contains(&format!("?{n}")))
                .unwrap_or(0);
            assert_eq!(highest, s.args.len(), "{}", s.sql);
        }
    }
}
