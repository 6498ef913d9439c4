//! D1 glue for billing: runs the `ledger_sql` plans as one `batch` each, and
//! the module API the run surfaces call (no route exposes it):
//!
//! ```text
//! let hold = ledger_d1::begin_run(&db, &vars, &caller, max_cost, run_id, max_life_ms, now).await?;
//! … run, metering cost up to hold.amount …
//! ledger_d1::finish_run(&db, &caller, hold.as_ref(), run_id, usage, now).await?;
//! ```
//! `begin_run` applies the contract's budget checks (429 / 402) and takes
//! the hold; `finish_run` settles it (charge the actual cost, release the
//! rest, record usage) or, for internal keys, only records usage. Holds that
//! outlive their run are released by `sweep` (the scheduled handler).

use serde::de::DeserializeOwned;
use serde::Deserialize;
use worker::{wasm_bindgen::JsValue, D1Database, D1PreparedStatement};

use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::billing::ledger_sql::{self as sql, ReleaseKind, Usage};
use crate::billing::rules::{self, BudgetState};
use crate::common::ids;
use crate::common::sql::{Arg, Stmt};
use crate::keys::api_key::KeyType;
use crate::platform::config::BillingVars;

// --- running statements -----------------------------------------------------------

fn js(arg: &Arg) -> JsValue {
    match arg {
        Arg::Int(n) => JsValue::from_f64(*n as f64),
        Arg::Text(s) => JsValue::from_str(s),
        Arg::Null => JsValue::NULL,
    }
}

pub fn bind(db: &D1Database, s: &Stmt) -> Result<D1PreparedStatement, ApiError> {
    let args: Vec<JsValue> = s.args.iter().map(js).collect();
    Ok(db.prepare(s.sql).bind(&args)?)
}

pub async fn first<T: DeserializeOwned>(db: &D1Database, s: &Stmt) -> Result<Option<T>, ApiError> {
    Ok(bind(db, s)?.first::<T>(None).await?)
}

pub async fn all<T: DeserializeOwned>(db: &D1Database, s: &Stmt) -> Result<Vec<T>, ApiError> {
    Ok(bind(db, s)?.all().await?.results::<T>()?)
}

#[derive(Deserialize)]
struct Applied {
    applied: i64,
}

/// Runs a plan as one batch (one transaction); true if its guard held.
pub async fn run_plan(db: &D1Database, plan: &[Stmt]) -> Result<bool, ApiError> {
    let statements = plan
        .iter()
        .map(|s| bind(db, s))
        .collect::<Result<Vec<_>, _>>()?;
    let results = db.batch(statements).await?;
    let last = results
        .last()
        .ok_or_else(|| ApiError::Internal("empty batch result".into()))?;
    let rows: Vec<Applied> = last.results()?;
    Ok(rows.first().is_some_and(|r| r.applied == 1))
}

// --- reads --------------------------------------------------------------------------

/// A key's budget row (`ledger_sql::BUDGET_OF_KEY`).
#[derive(Debug, Clone, Deserialize)]
pub struct BudgetRow {
    pub key_id: String,
    pub account_id: String,
    pub key_type: String,
    pub daily_limit_micros: Option<i64>,
    pub monthly_limit_micros: Option<i64>,
    pub balance_micros: i64,
    pub held_micros: i64,
    pub total_spent_micros: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub spent_today: i64,
    pub held_today: i64,
    pub spent_month: i64,
    pub held_month: i64,
}

impl BudgetRow {
    pub fn key_type(&self) -> KeyType {
        KeyType::parse(&self.key_type).unwrap_or(KeyType::Standard)
    }
    pub fn state(&self) -> BudgetState {
        BudgetState {
            balance: self.balance_micros,
            held: self.held_micros,
            total_spent: self.total_spent_micros,
            spent_today: self.spent_today,
            held_today: self.held_today,
            spent_month: self.spent_month,
            held_month: self.held_month,
            daily_limit: self.daily_limit_micros,
            monthly_limit: self.monthly_limit_micros,
        }
    }
}

pub async fn budget_of_key(
    db: &D1Database,
    key_id: &str,
    now_ms: i64,
) -> Result<Option<BudgetRow>, ApiError> {
    first(db, &sql::budget_of_key(key_id, now_ms)).await
}

/// The `x-budget-warning` value for a caller now, if an alert is active.
pub async fn budget_warning(
    db: &D1Database,
    vars: &BillingVars,
    caller: &Caller,
    now_ms: i64,
) -> Result<Option<String>, ApiError> {
    let Some(row) = budget_of_key(db, &caller.key_id, now_ms).await? else {
        return Ok(None);
    };
    let alerts = rules::alerts(row.key_type(), &row.state(), vars.low_balance);
    Ok(rules::budget_warning(&alerts))
}

// --- the run cycle --------------------------------------------------------------------

/// A hold taken for one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldTicket {
    pub hold_id: String,
    pub amount_micros: i64,
    pub expires_at_ms: i64,
}

/// Before any work: the budget checks (429 `spending_limit_exceeded`, 402
/// `insufficient_credits`), then a hold for the run's cost cap. Internal
/// keys are not checked and get no hold (`None`).
#[allow(clippy::too_many_arguments)]
pub async fn begin_run(
    db: &D1Database,
    vars: &BillingVars,
    caller: &Caller,
    max_cost_micros: Option<i64>,
    run_id: &str,
    max_life_ms: i64,
    now_ms: i64,
) -> Result<Option<HoldTicket>, ApiError> {
    if caller.key_type == KeyType::Internal {
        return Ok(None);
    }
    // A concurrent hold may take the room between the read and the guarded
    // insert; then read again and size the hold anew.
    for _ in 0..3 {
        let row = budget_of_key(db, &caller.key_id, now_ms)
            .await?
            .ok_or(ApiError::InvalidKey)?;
        let state = row.state();
        rules::check_budget(row.key_type(), &state)?;
        let amount = rules::hold_amount(max_cost_micros, vars.default_run_hold, &state);
        let ticket = HoldTicket {
            hold_id: ids::new_id("hold_")?,
            amount_micros: amount,
            expires_at_ms: now_ms + max_life_ms,
        };
        let applied = run_plan(
            db,
            &sql::hold_plan(&sql::Hold {
                hold_id: &ticket.hold_id,
                entry_id: &ids::new_id("txn_")?,
                key_id: &caller.key_id,
                amount,
                run_id: Some(run_id),
                description: "hold for run",
                now_ms,
                expires_at_ms: ticket.expires_at_ms,
            }),
        )
        .await?;
        if applied {
            return Ok(Some(ticket));
        }
    }
    let row = budget_of_key(db, &caller.key_id, now_ms)
        .await?
        .ok_or(ApiError::InvalidKey)?;
    Err(rules::BudgetRefusal::InsufficientCredits {
        balance: row.balance_micros,
        total_spent: row.total_spent_micros,
    }
    .into())
}

/// After a run: settles its hold (charges min(cost, hold), releases the
/// rest, records usage) in one batch. Without a hold (internal key), or if
/// the hold was already resolved (swept), usage is recorded uncharged.
/// Returns the amount charged.
pub async fn finish_run(
    db: &D1Database,
    caller: &Caller,
    hold: Option<&HoldTicket>,
    run_id: &str,
    usage: Usage,
    now_ms: i64,
) -> Result<i64, ApiError> {
    let plans = sql::finish_job_plans(&sql::FinishJob {
        hold_id: hold.map(|h| h.hold_id.as_str()),
        job_id: run_id,
        account_id: &caller.account_id,
        key_id: &caller.key_id,
        usage_entry_id: &ids::new_id("txn_")?,
        release_entry_id: &ids::new_id("txn_")?,
        usage,
        description: "run usage",
        now_ms,
    });
    if let (Some(settle), Some(hold)) = (&plans.settle, hold) {
        if run_plan(db, settle).await? {
            return Ok(rules::settle_charge(hold.amount_micros, usage.cost_micros));
        }
    }
    run_plan_unguarded(db, &plans.record).await?;
    Ok(0)
}

/// Releases a hold without charging (a run refused or failed before work).
pub async fn release(db: &D1Database, hold: &HoldTicket, now_ms: i64) -> Result<bool, ApiError> {
    run_plan(
        db,
        &sql::release_plan(
            &hold.hold_id,
            &ids::new_id("txn_")?,
            ReleaseKind::Release,
            "run ended without charge",
            now_ms,
        ),
    )
    .await
}

async fn run_plan_unguarded(db: &D1Database, plan: &[Stmt]) -> Result<(), ApiError> {
    let statements = plan
        .iter()
        .map(|s| bind(db, s))
        .collect::<Result<Vec<_>, _>>()?;
    db.batch(statements).await?;
    Ok(())
}

/// The scheduled sweep: releases holds past their maximum life, and purges
/// expired idempotency records and old rate-limit windows.
pub async fn sweep(db: &D1Database, now_ms: i64, rate_window_secs: i64) -> Result<usize, ApiError> {
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    let expired: Vec<Id> = all(
        db,
        &Stmt {
            sql: sql::EXPIRED_HOLDS,
            args: vec![Arg::Int(now_ms), Arg::Int(200)],
        },
    )
    .await?;
    let mut released = 0;
    for hold in &expired {
        let entry = ids::new_id("txn_")?;
        let plan = sql::release_plan(
            &hold.id,
            &entry,
            ReleaseKind::Expire,
            "hold expired (run outlived its maximum life)",
            now_ms,
        );
        if run_plan(db, &plan).await? {
            released += 1;
        }
    }
    let old_windows = now_ms - 2 * rate_window_secs.max(1) * 1000;
    run_plan_unguarded(
        db,
        &[
            Stmt {
                sql: crate::api::idempotency::PURGE_EXPIRED,
                args: vec![Arg::Int(now_ms)],
            },
            Stmt {
                sql: crate::api::ratelimit::PURGE_OLD,
                args: vec![Arg::Int(old_windows)],
            },
        ],
    )
    .await?;
    Ok(released)
}
