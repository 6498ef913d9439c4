//! D1 glue for metering repo runs (rules in `rules::run_cost_micros`,
//! plans in `runs::billing`). The Worker calls `begin` before a run starts;
//! the run's DO calls `settle` once the run is over (any terminal status).

use worker::{D1Database, Env};

use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::billing::ledger_d1::{self, run_plan, HoldTicket};
use crate::billing::rules;
use crate::common::ids;
use crate::platform::config::Config;
use crate::runs::billing::{self, EntryIds, RunBilling};
use crate::runs::life;

/// Before a run: with a price above 0 and a standard key, the budget checks
/// (429 / 402: the run is refused before any work) and a hold for the run's
/// maximum cost (its whole deadline at the price, at most the available
/// balance). Returns the billing the DO keeps and the run's deadline, cut
/// to the container time the hold pays for.
pub async fn begin(
    db: &D1Database,
    env: &Env,
    caller: &Caller,
    run_id: &str,
    deadline_ms: i64,
    now_ms: i64,
) -> Result<(RunBilling, i64), ApiError> {
    let config = Config::from_env(env);
    let price = config.run_usd_per_minute;
    let free = RunBilling {
        usd_per_minute_micros: price,
        hold_id: None,
        hold_micros: 0,
    };
    if price == 0 {
        return Ok((free, deadline_ms));
    }
    let max_cost = rules::run_cost_micros(deadline_ms, price);
    let vars = config.billing;
    let max_life = life::hold_life_ms(deadline_ms);
    let hold =
        ledger_d1::begin_run(db, &vars, caller, Some(max_cost), run_id, max_life, now_ms).await?;
    Ok(match hold {
        None => (free, deadline_ms), // internal key: never billed
        Some(ticket) => {
            let affordable = rules::run_affordable_ms(ticket.amount_micros, price);
            (
                RunBilling {
                    usd_per_minute_micros: price,
                    hold_id: Some(ticket.hold_id),
                    hold_micros: ticket.amount_micros,
                },
                deadline_ms.min(affordable),
            )
        }
    })
}

/// Gives a hold back uncharged (the run could not be started).
pub async fn release(db: &D1Database, b: &RunBilling, now_ms: i64) -> Result<(), ApiError> {
    if let Some(hold_id) = &b.hold_id {
        let ticket = HoldTicket {
            hold_id: hold_id.clone(),
            amount_micros: b.hold_micros,
            expires_at_ms: now_ms,
        };
        ledger_d1::release(db, &ticket, now_ms).await?;
    }
    Ok(())
}

/// After a run: charges container time × price against the hold (the rest
/// released) and records the usage event; without a hold (price 0, an
/// internal key) or with one already resolved, records the usage
/// uncharged. Safe to call again: the hold settles once, and the usage
/// event is named after the run. Returns the amount charged.
#[allow(clippy::too_many_arguments)]
pub async fn settle(
    db: &D1Database,
    account_id: &str,
    key_id: &str,
    run_id: &str,
    period: i64,
    b: &RunBilling,
    container_ms: i64,
    now_ms: i64,
) -> Result<i64, ApiError> {
    let cost = rules::run_cost_micros(container_ms, b.usd_per_minute_micros);
    let event_id = billing::period_event_id(run_id, period);
    if let Some(hold_id) = &b.hold_id {
        let usage_entry_id = ids::new_id("txn_")?;
        let release_entry_id = ids::new_id("txn_")?;
        let ids = EntryIds {
            usage_entry_id: &usage_entry_id,
            release_entry_id: &release_entry_id,
        };
        let plan = billing::settle_run_plan(hold_id, &event_id, &ids, container_ms, cost, now_ms);
        if run_plan(db, &plan).await? {
            return Ok(rules::settle_charge(b.hold_micros, cost));
        }
    }
    let plan = billing::record_run_plan(
        account_id,
        key_id,
        run_id,
        &event_id,
        container_ms,
        cost,
        now_ms,
    );
    run_plan(db, &plan).await?;
    Ok(0)
}
