//! The alarm of a workspace's DO. While executes are open or an ending is
//! not carried out in full, it re-arms every `WATCHDOG_MS` and does what
//! `runner::job::watchdog_action` says for each execute; it restarts a
//! driver lost with an evicted instance. With nothing open, it releases the
//! workspace's idle container.

use serde::Deserialize;
use worker::State;

use super::driver::drive;
use super::ending::Ending;
use super::store::ExecRow;
use super::ExecCtx;
use crate::api::error::ApiError;
use crate::common::time;
use crate::executes::execution::{ExecStatus, MAX_QUEUE_WAIT_MS, STUCK_AFTER_MS, WATCHDOG_MS};
use crate::executes::queue;
use crate::platform::config::Config;
use crate::runner::job::{self, Action, EndingRow, JobView, Patience};
use crate::runner::lifecycle::idle_release_due;
use crate::runner::link::release;
use crate::runner::storage;

const PATIENCE: Patience = Patience {
    queue_wait_ms: MAX_QUEUE_WAIT_MS,
    overrun_ms: STUCK_AFTER_MS,
};

pub async fn watchdog(ctx: ExecCtx, state: &State) {
    let undone: Vec<EndingRow> =
        storage::rows(&ctx.sql, &queue::undone_endings()).unwrap_or_default();
    let open: Vec<ExecRow> = storage::rows(&ctx.sql, &queue::open_jobs()).unwrap_or_default();
    if undone.is_empty() && open.is_empty() {
        release_when_idle(&ctx, state).await;
        return;
    }
    if let Err(err) = state.storage().set_alarm(WATCHDOG_MS).await {
        worker::console_error!("executions watchdog: cannot re-arm: {err}");
    }
    for ending in undone {
        if let Err(err) = ctx.carry_out(&ending.job_id).await {
            worker::console_error!("executions watchdog: ending {}: {err}", ending.job_id);
        }
    }
    let now = time::now_ms();
    for row in open {
        if let Err(err) = check(&ctx, &row, now).await {
            worker::console_error!("executions watchdog: {}: {err}", row.id);
        }
    }
    if ctx.live.driving.get() {
        return;
    }
    if let Ok(Some(open)) = ctx.next_open() {
        if open.status() == ExecStatus::Running && open.dispatched == 0.0 {
            // Cut off during the sync: the task never started; start it anew.
            let _ = storage::exec(&ctx.sql, &queue::requeue(&open.id));
        }
        // Not awaited: an alarm must not carry a whole queue.
        worker::wasm_bindgen_futures::spawn_local(drive(ctx));
    }
}

/// One open execute at `now`: ended if it waited or ran too long.
async fn check(ctx: &ExecCtx, row: &ExecRow, now: i64) -> Result<(), ApiError> {
    let start = row.start()?;
    let view = JobView {
        queued: row.status() == ExecStatus::Queued,
        created_ms: row.created_ms as i64,
        deadline_ms: row.deadline_ms(&start),
        ending: None,
    };
    match job::watchdog_action(&view, &PATIENCE, now) {
        Action::ExpireQueued => ctx.end(&row.id, Ending::queue_expired()).await,
        Action::TimeOut => {
            // The driver should have ended it by now: it is stuck. End the
            // execute and hand the queue to a new driver.
            let _ = ctx.cancel_on_runner(&row.id).await;
            ctx.live.drive_gen.set(ctx.live.drive_gen.get() + 1);
            ctx.live.driving.set(false);
            let ending = Ending::without_work(
                ExecStatus::TimedOut,
                "the task passed its time limit",
                row.usage(),
            );
            ctx.end(&row.id, ending).await
        }
        Action::Nothing | Action::CarryOutEnding => Ok(()),
    }
}

/// With nothing queued or running: releases the workspace's container once
/// it has idled `WORKSPACE_IDLE_SECONDS` since the last execute ended, and
/// until then keeps an alarm for that moment.
async fn release_when_idle(ctx: &ExecCtx, state: &State) {
    if !ctx.link.container_running() {
        return;
    }
    #[derive(Deserialize)]
    struct Last {
        id: Option<String>,
        ms: Option<f64>,
    }
    let last: Option<Last> = storage::first(&ctx.sql, &queue::last_activity())
        .ok()
        .flatten();
    let (op, last_ms) = match last {
        Some(Last {
            id: Some(id),
            ms: Some(ms),
        }) => (id, ms as i64),
        _ => ("idle".to_string(), 0),
    };
    let idle_ms = Config::from_env(&ctx.env).workspace_idle_seconds * 1000;
    let now = time::now_ms();
    if idle_release_due(false, last_ms, now, idle_ms) {
        // Not while an execute is being taken (its `begin` makes the
        // container ready under the same lock); re-checked once we hold it.
        let _alone = ctx.link.lock().await;
        if ctx.open_count().unwrap_or(1) > 0 || ctx.live.driving.get() {
            return;
        }
        let mut receipts = Vec::new();
        let reason = format!("the workspace was idle for {} s", idle_ms / 1000);
        release(&ctx.sql, &ctx.link, &op, &reason, &mut receipts).await;
        if ctx.link.container_running() {
            // The destroy failed: try again at the next alarm.
            let _ = state.storage().set_alarm(WATCHDOG_MS).await;
        }
    } else {
        let wait = (last_ms + idle_ms as i64 - now).max(1_000);
        if let Err(err) = state.storage().set_alarm(wait).await {
            worker::console_error!("executions watchdog: cannot arm the idle alarm: {err}");
        }
    }
}
