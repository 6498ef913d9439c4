//! The alarm of a run's DO: it re-arms every `WATCHDOG_MS` until the run
//! is over and its ending carried out in full, and does what
//! `runner::job::watchdog_action` says — carry out an ending cut short, end
//! a run past its deadline — or restarts a pump lost with an evicted
//! instance. A finished run's container must be gone: a destroy that
//! failed is tried again.

use worker::State;

use super::pump::pump;
use super::RunCtx;
use crate::common::time;
use crate::runner::job::{self, Action, JobView};
use crate::runs::life::{PATIENCE, WATCHDOG_MS};
use crate::wire::RunStatus;

pub async fn watchdog(ctx: RunCtx, state: &State) {
    let (Ok(Some(row)), Ok(ending)) = (ctx.load(), ctx.ending()) else {
        return;
    };
    let view = JobView {
        queued: false,
        created_ms: row.created_ms as i64,
        deadline_ms: row.deadline_ms as i64,
        ending: ending.as_ref().map(|e| (e.settled(), e.finished())),
    };
    let over = row.status().is_terminal() && ending.as_ref().is_none_or(|e| e.done());
    if over && matches!(ctx.live_row(), Ok(Some(_))) {
        // Past its steps, a live run's alarm keeps its expiry.
        ctx.live_watchdog(state).await;
        return;
    }
    if over {
        if ctx.link.container_running() {
            crate::runner::link::release(
                &ctx.sql,
                &ctx.link,
                &row.id,
                "the run had ended",
                &mut Vec::new(),
            )
            .await;
            if ctx.link.container_running() {
                let _ = state.storage().set_alarm(WATCHDOG_MS).await;
            }
        }
        return;
    }
    if let Err(err) = state.storage().set_alarm(WATCHDOG_MS).await {
        worker::console_error!("runs watchdog: cannot re-arm: {err}");
    }
    match job::watchdog_action(&view, &PATIENCE, time::now_ms()) {
        Action::CarryOutEnding => {
            if let Err(err) = ctx.carry_out().await {
                worker::console_error!("runs watchdog: ending {}: {err}", row.id);
            }
        }
        Action::TimeOut | Action::ExpireQueued => {
            let _ = ctx.cancel_on_runner(&row.id).await;
            let _ = ctx
                .end_by_do(
                    RunStatus::TimedOut,
                    "timed_out: the run passed its time limit".into(),
                )
                .await;
        }
        Action::Nothing if !ctx.live.pumping.get() => pump(ctx).await,
        Action::Nothing => {}
    }
}
