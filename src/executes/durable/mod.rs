//! Workspace executes (`/execute`) inside the workspace's CloudboxRunner DO
//! (one DO per account and workspace, so two executes never race on a tree),
//! one file per stage:
//!
//! - `store`: the execute's rows (plans of `executes::queue`);
//! - `driver`: runs the queue one execute at a time — readiness, the
//!   workspace and its session, `POST /tasks`, then saving and ending;
//! - `sync_in`: only the blobs the runner's cache lacks are streamed to it;
//! - `follow`: the task's NDJSON events, stored once each (`runner::follow`);
//! - `save`: sync out and the guarded commit of the new version;
//! - `ending`: end once, settle once, then the body (`runner::job`);
//! - `watchdog`: the alarm.
//!
//! The Worker is the only caller: `RunnerCall::{StartExecute, GetExecute,
//! ExecuteEvents, CancelExecute}` (`runner::call`).

mod driver;
mod ending;
mod follow;
mod save;
mod store;
mod sync_in;
mod watchdog;

use std::rc::Rc;

use worker::{Env, Response, SqlStorage, State};

use crate::api::error::ApiError;
use crate::common::time;
use crate::executes::execution::{ExecStart, ExecStatus, MAX_QUEUED, WATCHDOG_MS};
use crate::executes::queue;
use crate::platform::http;
use crate::runner::call::{Respond, RunnerCall};
use crate::runner::job;
use crate::runner::link::{abandon, ensure_ready, Link};
use crate::runner::live::Live;
use crate::runner::sse::{self, JobLog};
use crate::runner::storage;
use driver::drive;
use ending::Ending;
use store::ExecRow;
pub use watchdog::watchdog;

pub fn init_schema(sql: &SqlStorage) {
    for stmt in queue::SCHEMA.iter().chain(job::SCHEMA) {
        if let Err(err) = sql.exec(stmt, None) {
            worker::console_error!("executions schema: {err}");
        }
    }
}

/// Everything the handlers, the driver and the streams need; cheap to clone.
#[derive(Clone)]
pub struct ExecCtx {
    pub sql: SqlStorage,
    pub env: Env,
    pub link: Rc<Link>,
    pub live: Rc<Live>,
}

pub async fn handle(
    ctx: ExecCtx,
    state: &State,
    account: &str,
    call: RunnerCall,
) -> Result<Response, ApiError> {
    match call {
        RunnerCall::StartExecute { start, respond } => {
            if start.account_id != account {
                return Err(ApiError::Internal("start: account mismatch".into()));
            }
            begin(ctx, state, start, respond).await
        }
        RunnerCall::CancelExecute { run_id } => {
            let row = ctx.owned(&run_id, account)?;
            // Saving: the agent is done and its result is being committed.
            if row.status().is_terminal() || row.status() == ExecStatus::Saving {
                return Err(ApiError::RunNotRunning);
            }
            let row = cancel(&ctx, row).await?;
            match row.body()? {
                Some(body) if body.status == ExecStatus::Cancelled => http::json(200, &body),
                // It finished on its own before the cancel took.
                Some(_) => Err(ApiError::RunNotRunning),
                None => http::json(
                    202,
                    &serde_json::json!({"runId": row.id, "status": row.status()}),
                ),
            }
        }
        RunnerCall::GetExecute { run_id, wait } => {
            let row = ctx.owned(&run_id, account)?;
            let row = if wait {
                ctx.wait_finished(&run_id, None).await?
            } else {
                row
            };
            let mut resp = match row.body()? {
                Some(body) => http::json(body.http_status(), &body)?,
                None => http::json(
                    202,
                    &serde_json::json!({
                        "runId": row.id,
                        "status": row.status(),
                        "workspaceId": row.start()?.workspace_id,
                    }),
                )?,
            };
            resp.headers_mut().set("x-run-id", &row.id)?;
            Ok(resp)
        }
        RunnerCall::ExecuteEvents { run_id, after } => {
            ctx.owned(&run_id, account)?;
            sse_response(ctx, run_id, after)
        }
        _ => Err(ApiError::NotFound),
    }
}

async fn begin(
    ctx: ExecCtx,
    state: &State,
    start: ExecStart,
    respond: Respond,
) -> Result<Response, ApiError> {
    if ctx.load(&start.run_id)?.is_some() {
        return Err(ApiError::Internal("execute id reused".into()));
    }
    // The busy check and the insert have no await between them, so
    // another request cannot slip in.
    let start_json = serde_json::to_string(&start)?;
    // The watchdog first: once the row exists, it must be driven.
    state.storage().set_alarm(WATCHDOG_MS).await?;
    let open = ctx.open_count()?;
    if (open > 0 && !start.wait) || open > MAX_QUEUED {
        return Err(ApiError::WorkspaceBusy);
    }
    if open == 0 && !ctx.live.driving.get() {
        // An idle workspace gets its container first: when none can be had,
        // the caller gets 503 `runner_unavailable` and nothing is queued
        // (the Worker gives the hold back).
        let mut ready = Vec::new();
        if let Err(why) = ensure_ready(&ctx.sql, &ctx.link, &start.run_id, &mut ready).await {
            abandon(&ctx.sql, &ctx.link, &start.run_id, "it never became ready").await;
            return Err(ApiError::RunnerUnavailable(why));
        }
        *ctx.live.runner_ready_for.borrow_mut() = Some(start.run_id.clone());
        // Checked again: the insert below follows with no await between.
        let open = ctx.open_count()?;
        if (open > 0 && !start.wait) || open > MAX_QUEUED {
            return Err(ApiError::WorkspaceBusy);
        }
    }
    let queued = queue::enqueue(&start.run_id, &start_json, time::now_ms());
    storage::exec(&ctx.sql, &queued)?;
    worker::wasm_bindgen_futures::spawn_local(drive(ctx.clone()));
    let id = start.run_id.clone();
    let mut resp = match respond {
        Respond::Events => sse_response(ctx, id.clone(), 0)?,
        Respond::Result => {
            let row = ctx.wait_finished(&id, None).await?;
            let body = row
                .body()?
                .ok_or_else(|| ApiError::Internal("finished without a body".into()))?;
            http::json(body.http_status(), &body)?
        }
    };
    resp.headers_mut().set("x-run-id", &id)?;
    Ok(resp)
}

/// A queued execute ends at once; a running one is stopped on the runner
/// (its usage so far is charged). If the runner cannot confirm within
/// 10 s, the DO ends it itself.
async fn cancel(ctx: &ExecCtx, row: ExecRow) -> Result<ExecRow, ApiError> {
    let id = row.id.clone();
    if row.status() == ExecStatus::Running && row.dispatched != 0.0 {
        if let Ok(200) = ctx.cancel_on_runner(&id).await {
            let row = ctx.wait_finished(&id, Some(10_000)).await?;
            if row.body.is_some() {
                return Ok(row);
            }
        }
    }
    let now = ctx.get(&id)?;
    if now.status() == ExecStatus::Saving {
        // The agent finished before the cancel reached it: its result is
        // being committed; that outcome stands.
        return ctx.wait_finished(&id, Some(60_000)).await;
    }
    let usage = now.usage();
    ctx.end(
        &id,
        Ending::without_work(ExecStatus::Cancelled, "cancelled by request", usage),
    )
    .await?;
    ctx.wait_finished(&id, Some(30_000)).await
}

/// The execute's events after `after` as SSE, live until `result`.
fn sse_response(ctx: ExecCtx, id: String, after: u64) -> Result<Response, ApiError> {
    let env = ctx.env.clone();
    let log = JobLog {
        sql: ctx.sql.clone(),
        live: ctx.live.clone(),
        job_id: id.clone(),
        finished: Box::new(move || match ctx.load(&id) {
            Ok(Some(row)) => row.body.is_some(),
            _ => true,
        }),
    };
    sse::response(log, &env, after)
}
