//! The pump: the runner's NDJSON stream of a run into the DO's storage
//! (`runner::follow`), spawned so that it outlives any client. It dispatches
//! the run first (`POST /runs`) unless a pump before it did.

use std::rc::Rc;

use worker::Method;

use super::RunCtx;
use crate::api::error::ApiError;
use crate::common::time;
use crate::runner::follow::{self, Followed, Stop};
use crate::runner::lifecycle::RunnerEvent;
use crate::runner::link::{ensure_ready, send};
use crate::runner::live::Live;
use crate::runner::storage;
use crate::runs::rows;
use crate::wire::{RunEvent, RunStatus, WireEvent};

struct PumpGuard(Rc<Live>);
impl Drop for PumpGuard {
    fn drop(&mut self) {
        self.0.pumping.set(false);
    }
}

/// Consumes the runner's events until the run ends. Only one pump runs per
/// DO instance at a time.
pub(super) async fn pump(ctx: RunCtx) {
    if ctx.live.pumping.get() {
        return;
    }
    ctx.live.pumping.set(true);
    let _guard = PumpGuard(ctx.live.clone());
    if let Err(err) = pump_inner(&ctx).await {
        worker::console_error!("runs pump: {err}");
    }
}

async fn pump_inner(ctx: &RunCtx) -> Result<(), ApiError> {
    let Some(row) = ctx.load()? else {
        return Ok(());
    };
    if row.status().is_terminal() {
        return Ok(());
    }
    if ctx.ending()?.is_some() {
        return ctx.carry_out().await;
    }
    let mut first = None;
    if row.dispatched == 0.0 && time::now_ms() <= row.deadline_ms as i64 {
        // `start` made the runner ready; a pump restarted after an
        // eviction checks again.
        if !ctx.live.runner_ready.get() {
            let mut list = Vec::new();
            let ready = ensure_ready(&ctx.sql, &ctx.link, &row.id, &mut list).await;
            for receipt in &list {
                ctx.append_event("runner", &serde_json::to_string(receipt)?)?;
            }
            if let Err(why) = ready {
                return ctx
                    .end_by_do(RunStatus::ContainerLost, format!("container_lost: {why}"))
                    .await;
            }
        }
        // Re-check: a cancel may have ended the run while we waited.
        if ctx.load()?.is_none_or(|r| r.status().is_terminal()) {
            return Ok(());
        }
        storage::exec(&ctx.sql, &rows::dispatched())?;
        let spec = row.spec()?;
        let sent = send(
            &ctx.link,
            Method::Post,
            "/runs",
            Some(serde_json::to_string(&spec)?),
            10_000,
        )
        .await;
        if let Ok(resp) = sent {
            ctx.runner_step(
                &row.id,
                RunnerEvent::Response {
                    status: resp.status_code(),
                },
            )?;
            first = Some(resp);
        }
    }
    let job = RunJob { ctx, id: &row.id };
    match follow::follow(&ctx.link, &job, first).await? {
        Followed::Result(()) | Followed::Stopped(Stop::Ended) => {
            if ctx.ending()?.is_some() {
                ctx.carry_out().await?;
            }
            Ok(())
        }
        Followed::Stopped(Stop::Deadline) => {
            let _ = ctx.cancel_on_runner(&row.id).await;
            ctx.end_by_do(
                RunStatus::TimedOut,
                "timed_out: the run passed its time limit".into(),
            )
            .await
        }
        Followed::Lost(why) => {
            ctx.end_by_do(RunStatus::ContainerLost, format!("container_lost: {why}"))
                .await
        }
    }
}

/// The run as the follower sees it.
struct RunJob<'a> {
    ctx: &'a RunCtx,
    id: &'a str,
}

impl follow::Job for RunJob<'_> {
    type Result = ();
    const NOUN: &'static str = "run";

    fn events_path(&self, after: u64) -> String {
        format!("/runs/{}/events?after={after}", self.id)
    }

    fn stored_seq(&self) -> Result<u64, ApiError> {
        Ok(self.ctx.load()?.map(|r| r.runner_seq as u64).unwrap_or(0))
    }

    fn stop(&self) -> Result<Option<Stop>, ApiError> {
        let Some(row) = self.ctx.load()? else {
            return Ok(Some(Stop::Ended));
        };
        Ok(
            if row.status().is_terminal() || self.ctx.ending()?.is_some() {
                Some(Stop::Ended)
            } else if time::now_ms() > row.deadline_ms as i64 {
                Some(Stop::Deadline)
            } else {
                None
            },
        )
    }

    async fn store(&self, event: WireEvent) -> Result<Option<()>, ApiError> {
        let ctx = self.ctx;
        storage::exec(&ctx.sql, &rows::runner_seq(event.seq))?;
        match event.event {
            RunEvent::Receipt(receipt) => ctx.store_receipt(&receipt)?,
            RunEvent::Output(chunk) => {
                ctx.append_event("output", &serde_json::to_string(&chunk)?)?
            }
            RunEvent::Result(result) => {
                ctx.finalize(result.status, result.ok, Some(&result))
                    .await?;
                return Ok(Some(()));
            }
            RunEvent::Heartbeat | RunEvent::Usage(_) | RunEvent::Task(_) => {}
        }
        Ok(None)
    }
}
