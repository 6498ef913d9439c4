//! Repo runs inside the CloudboxRunner DO (one DO per run), one file per
//! stage:
//!
//! - `store`: the run, its events and receipts in the DO's SQLite;
//! - `pump`: dispatches the run and stores the runner's NDJSON events as
//!   they arrive (`runner::follow`), spawned so that it outlives any client;
//! - `ending`: end once, settle once, then the terminal status
//!   (`runner::job`);
//! - `watchdog`: the alarm — an ending cut short, a run past its deadline,
//!   a pump lost with an evicted instance.
//!
//! A runner that dies or stops answering ends the run as `container_lost`
//! with a receipt: a run never stays `running`.
//!
//! The Worker is the only caller: `RunnerCall::{StartRun, GetRun,
//! RunEvents, VerifyRun, CancelRun, DeleteRun}` (`runner::call`).

mod ending;
mod live;
mod pump;
mod store;
mod watchdog;

use std::rc::Rc;

use serde_json::json;
use worker::{Env, Response, SqlStorage, State};

use crate::api::error::ApiError;
use crate::common::time;
use crate::platform::bindings;
use crate::platform::http;
use crate::runner::call::{Respond, RunnerCall, StartRun};
use crate::runner::job;
use crate::runner::link::{abandon, ensure_ready, Link};
use crate::runner::live::Live;
use crate::runner::sse::{self, JobLog};
use crate::runner::storage;
use crate::runs::life::WATCHDOG_MS;
use crate::runs::rows;
use crate::wire::receipts::verify_chain;
use crate::wire::RunStatus;
use store::RunRow;
pub use watchdog::watchdog;

/// This DO holds a repo run (else it serves a workspace, or nothing yet).
pub fn holds_run(ctx: &RunCtx) -> bool {
    matches!(ctx.load(), Ok(Some(_)))
}

pub fn init_schema(sql: &SqlStorage) {
    for stmt in rows::SCHEMA.iter().chain(job::SCHEMA) {
        if let Err(err) = sql.exec(stmt, None) {
            worker::console_error!("runs schema: {err}");
        }
    }
}

// ---------------------------------------------------------------------------

/// Everything a run's handlers, pump and streams need; cheap to clone.
#[derive(Clone)]
pub struct RunCtx {
    pub sql: SqlStorage,
    pub env: Env,
    pub link: Rc<Link>,
    pub live: Rc<Live>,
}

pub async fn handle(
    ctx: RunCtx,
    state: &State,
    account: &str,
    call: RunnerCall,
) -> Result<Response, ApiError> {
    match call {
        RunnerCall::StartRun {
            start: body,
            respond,
        } => {
            if body.account_id != account {
                return Err(ApiError::Internal("start: account mismatch".into()));
            }
            start(ctx, state, body, respond).await
        }
        RunnerCall::GetRun { run_id } => {
            let row = ctx.owned(&run_id, account)?;
            http::json(200, &ctx.body(&row)?)
        }
        RunnerCall::SetRunPublic { run_id, public } => {
            let row = ctx.owned(&run_id, account)?;
            for s in rows::set_public(public, time::now_ms()) {
                storage::exec(&ctx.sql, &s)?;
            }
            http::json(200, &ctx.body(&row)?)
        }
        RunnerCall::RunEvents { run_id, after } => {
            ctx.owned(&run_id, account)?;
            sse_response(ctx, &run_id, after)
        }
        RunnerCall::VerifyRun { run_id } => {
            ctx.owned(&run_id, account)?;
            let check = verify_chain(&ctx.receipts()?);
            http::json(200, &check)
        }
        RunnerCall::CancelRun { run_id } => {
            let row = ctx.owned(&run_id, account)?;
            if row.status().is_terminal() {
                return Err(ApiError::RunNotRunning);
            }
            let row = cancel(&ctx, &row).await?;
            http::json(200, &ctx.body(&row)?)
        }
        RunnerCall::ExecRun {
            run_id,
            exec,
            respond,
        } => {
            let row = ctx.owned(&run_id, account)?;
            ctx.exec(&row, exec, respond).await
        }
        RunnerCall::ReadRunFile { run_id, path } => {
            let row = ctx.owned(&run_id, account)?;
            ctx.read_file(&row, &path).await
        }
        RunnerCall::WriteRunFile {
            run_id,
            path,
            content_base64,
            mode,
        } => {
            let row = ctx.owned(&run_id, account)?;
            ctx.write_file(&row, &path, &content_base64, mode).await
        }
        RunnerCall::StopRun { run_id } => {
            let row = ctx.owned(&run_id, account)?;
            ctx.stop(&row).await
        }
        RunnerCall::ResumeRun {
            run_id,
            terms,
            billing,
        } => {
            let row = ctx.owned(&run_id, account)?;
            ctx.resume(state, &row, terms, billing).await
        }
        RunnerCall::ForkSource { run_id } => {
            let row = ctx.owned(&run_id, account)?;
            ctx.fork_source(&row).await
        }
        RunnerCall::StartFork { fork } => {
            if fork.account_id != account {
                return Err(ApiError::Internal("fork: account mismatch".into()));
            }
            ctx.start_fork(state, fork).await
        }
        RunnerCall::DeleteRun { run_id } => {
            let row = ctx.owned(&run_id, account)?;
            if !row.status().is_terminal() {
                cancel(&ctx, &row).await?;
            }
            if row.status() == RunStatus::Live {
                ctx.end_for_delete(&row).await?;
            }
            storage::exec_plan(&ctx.sql, &rows::delete(&run_id))?;
            let _ = state.storage().delete_alarm().await;
            bindings::db(&ctx.env)?
                .prepare("DELETE FROM runs WHERE id = ?1 AND account_id = ?2")
                .bind(&[run_id.as_str().into(), account.into()])?
                .run()
                .await?;
            http::json(200, &json!({"runId": run_id, "deleted": true}))
        }
        _ => Err(ApiError::NotFound),
    }
}

async fn start(
    ctx: RunCtx,
    state: &State,
    body: StartRun,
    respond: Respond,
) -> Result<Response, ApiError> {
    if ctx.load()?.is_some() {
        return Err(ApiError::Internal("run id reused".into()));
    }
    let spec = &body.spec;
    // A container first: when none can be had, the caller gets 503
    // `runner_unavailable` and nothing exists (the Worker gives the hold back).
    let mut ready = Vec::new();
    if let Err(why) = ensure_ready(&ctx.sql, &ctx.link, &spec.run_id, &mut ready).await {
        abandon(&ctx.sql, &ctx.link, &spec.run_id, "it never became ready").await;
        return Err(ApiError::RunnerUnavailable(why));
    }
    ctx.live.runner_ready.set(true);
    let now = time::now_ms();
    // The index row first: if D1 fails, nothing exists yet (and the
    // container goes).
    let indexed = async {
        bindings::db(&ctx.env)?
            .prepare(
                "INSERT INTO runs (id, account_id, key_id, repo, git_ref, status, created_at, updated_at, public) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?6, ?7)",
            )
            .bind(&[
                spec.run_id.as_str().into(),
                body.account_id.as_str().into(),
                body.key_id.as_str().into(),
                spec.repo.as_str().into(),
                spec.git_ref.as_deref().map(Into::into).unwrap_or(worker::wasm_bindgen::JsValue::NULL),
                (now as f64).into(),
                (if body.public { 1.0 } else { 0.0 }).into(),
            ])?
            .run()
            .await?;
        Ok::<(), ApiError>(())
    }
    .await;
    if let Err(err) = indexed {
        abandon(&ctx.sql, &ctx.link, &spec.run_id, "the run was not created").await;
        return Err(err);
    }
    let spec_json = serde_json::to_string(spec)?;
    let billing_json = match &body.billing {
        Some(billing) => Some(serde_json::to_string(billing)?),
        None => None,
    };
    let terms_json = match &body.live {
        Some(terms) => Some(serde_json::to_string(terms)?),
        None => None,
    };
    let created = rows::create(&rows::NewRun {
        run_id: &spec.run_id,
        account_id: &body.account_id,
        spec_json: &spec_json,
        now_ms: now,
        deadline_ms: body.deadline_ms as i64,
        claim: body.idempotency.as_ref().map(|(k, at)| (k.as_str(), *at)),
        billing: billing_json.as_deref().map(|b| (body.key_id.as_str(), b)),
        public: body.public,
        live_terms: terms_json.as_deref(),
    });
    storage::exec_plan(&ctx.sql, &created)?;
    for receipt in &ready {
        ctx.append_event("runner", &serde_json::to_string(receipt)?)?;
    }
    state.storage().set_alarm(WATCHDOG_MS).await?;
    worker::wasm_bindgen_futures::spawn_local(pump::pump(ctx.clone()));
    let mut resp = match respond {
        Respond::Events => sse_response(ctx, &spec.run_id, 0)?,
        Respond::Result => {
            let row = ctx.wait_terminal(None).await?;
            let status = if row.ok.unwrap_or(0.0) != 0.0 {
                200
            } else {
                422
            };
            http::json(status, &ctx.body(&row)?)?
        }
    };
    resp.headers_mut().set("x-run-id", &spec.run_id)?;
    Ok(resp)
}

/// Asks the runner to cancel; if it cannot confirm within 10 s (or is
/// gone), the DO ends the run as `cancelled` itself.
async fn cancel(ctx: &RunCtx, row: &RunRow) -> Result<RunRow, ApiError> {
    storage::exec(&ctx.sql, &rows::cancel_requested())?;
    let confirmed = row.dispatched != 0.0 && matches!(ctx.cancel_on_runner(&row.id).await, Ok(200));
    if confirmed {
        let row = ctx.wait_terminal(Some(10_000)).await?;
        if row.status().is_terminal() {
            return Ok(row);
        }
    }
    ctx.end_by_do(RunStatus::Cancelled, "cancelled by request".into())
        .await?;
    // An end already under way (a result that just arrived) is waited for.
    ctx.wait_terminal(Some(10_000)).await
}

// ---------------------------------------------------------------------------
// SSE.

/// The run's events after `after` as SSE, live until the `result` event.
fn sse_response(ctx: RunCtx, run_id: &str, after: u64) -> Result<Response, ApiError> {
    let env = ctx.env.clone();
    let log = JobLog {
        sql: ctx.sql.clone(),
        live: ctx.live.clone(),
        job_id: run_id.to_string(),
        finished: Box::new(move || match ctx.load() {
            Ok(Some(row)) => row.status().is_terminal(),
            _ => true,
        }),
    };
    sse::response(log, &env, after)
}
