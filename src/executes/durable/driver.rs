//! The driver: runs a workspace's queue one execute at a time (spawned,
//! so it outlives the client): readiness, the workspace and its session,
//! sync in, `POST /tasks`, following the task's events, then saving and
//! ending it.

use std::rc::Rc;
use std::time::Duration;

use futures_util::future::{select, Either};
use worker::{Delay, Method, Response};

use super::ending::Ending;
use super::follow::ExecJob;
use super::save::save;
use super::store::ExecRow;
use super::sync_in::{read_manifest_at, sync_in};
use super::ExecCtx;
use crate::api::error::ApiError;
use crate::platform::bindings;
use crate::platform::config::Config;

use crate::common::time;
use crate::executes::agent_events::TokenUsage;
use crate::executes::execution::{self, ExecStart, ExecStatus, MAX_QUEUE_WAIT_MS, SYNC_LIMIT_MS};
use crate::executes::queue;
use crate::runner::follow::{self, Followed, Stop};
use crate::runner::lifecycle::RunnerEvent;
use crate::runner::link::{ensure_ready, send};
use crate::runner::live::Live;
use crate::runner::storage;
use crate::wire::{TaskResult, TaskStart};
use crate::workspaces::manifest::Manifest;
use crate::workspaces::store;

struct DriveGuard {
    live: Rc<Live>,
    generation: u64,
}
impl Drop for DriveGuard {
    fn drop(&mut self) {
        // A replaced driver leaves the flag to its successor.
        if self.live.drive_gen.get() == self.generation {
            self.live.driving.set(false);
        }
    }
}

pub(super) async fn drive(ctx: ExecCtx) {
    if ctx.live.driving.get() {
        return;
    }
    ctx.live.driving.set(true);
    let generation = ctx.live.drive_gen.get();
    let _guard = DriveGuard {
        live: ctx.live.clone(),
        generation,
    };
    loop {
        if ctx.live.drive_gen.get() != generation {
            return; // replaced by the watchdog
        }
        let row = match ctx.next_open() {
            Ok(Some(row)) => row,
            Ok(None) => return,
            Err(err) => {
                worker::console_error!("executions driver: {err}");
                return;
            }
        };
        let id = row.id.clone();
        if let Err(err) = run_one(&ctx, row).await {
            worker::console_error!("execute {id}: {err}");
            let ending = Ending::without_work(
                ExecStatus::Failed,
                format!("internal error: {err}"),
                ctx.load(&id)
                    .ok()
                    .flatten()
                    .map(|r| r.usage())
                    .unwrap_or_default(),
            );
            if let Err(err) = ctx.end(&id, ending).await {
                worker::console_error!("execute {id}: cannot end: {err}");
                // Never loop on an execute that cannot be ended.
                if !ctx.is_terminal(&id) {
                    let ending = Ending::without_work(
                        ExecStatus::Failed,
                        "internal error",
                        TokenUsage::default(),
                    );
                    if let Ok(json) = serde_json::to_string(&ending) {
                        let plan = queue::end(&id, ending.status.as_str(), &json, time::now_ms());
                        let _ = storage::exec_plan(&ctx.sql, &plan);
                    }
                }
            }
        }
    }
}

enum Prepared {
    /// The task was sent; follow its events (the response, if the send answered).
    Dispatched(Option<Response>),
    /// Ended before the task was sent (cancelled meanwhile).
    Ended,
    Fail(ExecStatus, String),
}

async fn run_one(ctx: &ExecCtx, row: ExecRow) -> Result<(), ApiError> {
    let id = row.id.clone();
    let start = row.start()?;
    let now = time::now_ms();
    if row.status() == ExecStatus::Saving {
        // The task had ended when this driver's predecessor stopped.
        if let Some(text) = &row.task_result {
            let result: TaskResult = serde_json::from_str(text)?;
            return complete(ctx, &id, &start, result).await;
        }
    }
    if row.status() == ExecStatus::Queued {
        if now - row.created_ms as i64 > MAX_QUEUE_WAIT_MS {
            return ctx.end(&id, Ending::queue_expired()).await;
        }
        storage::exec(&ctx.sql, &queue::start(&id, now))?;
        let _ = bindings::db(&ctx.env)?
            .prepare("UPDATE executions SET status = 'running', updated_at = ?1 WHERE id = ?2")
            .bind(&[(now as f64).into(), id.as_str().into()])?
            .run()
            .await;
    }
    let first = if row.dispatched == 0.0 {
        match prepare(ctx, &id, &start).await? {
            Prepared::Dispatched(resp) => resp,
            Prepared::Ended => return Ok(()),
            Prepared::Fail(status, why) => {
                return ctx
                    .end(
                        &id,
                        Ending::without_work(status, why, TokenUsage::default()),
                    )
                    .await
            }
        }
    } else {
        None
    };
    let job = ExecJob {
        ctx,
        id: &id,
        start: &start,
        pricing: Config::from_env(&ctx.env).billing.pricing,
    };
    match follow::follow(&ctx.link, &job, first).await? {
        Followed::Result(result) => complete(ctx, &id, &start, result).await,
        Followed::Stopped(Stop::Ended) => {
            // Ended by the DO (a cancel): make sure the agent stops too.
            let _ = ctx.cancel_on_runner(&id).await;
            Ok(())
        }
        Followed::Lost(why) => {
            let _ = ctx.cancel_on_runner(&id).await;
            let usage = ctx.get(&id)?.usage();
            ctx.end(
                &id,
                Ending::without_work(ExecStatus::ContainerLost, why, usage),
            )
            .await
        }
        Followed::Stopped(Stop::Deadline) => {
            let _ = ctx.cancel_on_runner(&id).await;
            let usage = ctx.get(&id)?.usage();
            ctx.end(
                &id,
                Ending::without_work(
                    ExecStatus::TimedOut,
                    "the task passed its time limit",
                    usage,
                ),
            )
            .await
        }
    }
}

/// Readiness, the workspace and session, sync in, `POST /tasks`.
async fn prepare(ctx: &ExecCtx, id: &str, start: &ExecStart) -> Result<Prepared, ApiError> {
    let mut receipts = Vec::new();
    // `begin` made an idle workspace's runner ready just now.
    let readied = ctx.live.runner_ready_for.borrow_mut().take();
    let ready = if readied.as_deref() == Some(id) {
        receipts = ctx.runner_receipts(id)?;
        Ok(())
    } else {
        ensure_ready(&ctx.sql, &ctx.link, id, &mut receipts)
            .await
            .map(|_| ())
    };
    for receipt in &receipts {
        ctx.append_event(id, "runner", &serde_json::to_string(receipt)?)?;
    }
    if let Err(why) = ready {
        return Ok(Prepared::Fail(ExecStatus::ContainerLost, why));
    }
    let account = start.account_id.as_str();
    let db = bindings::db(&ctx.env)?;
    let ws = store::get_row(&db, account, &start.workspace_id).await?;
    let manifest = match &ws {
        Some(row) => {
            read_manifest_at(&ctx.env, account, &start.workspace_id, row.version as u64).await?
        }
        None => Manifest::empty(),
    };
    let session_id = start
        .session_id
        .clone()
        .or_else(|| ws.and_then(|w| w.session_id));
    let session_files = match &session_id {
        Some(sid) => store::load_session(&ctx.env, account, sid)
            .await?
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let base = queue::set_base(id, manifest.version, session_id.as_deref());
    storage::exec(&ctx.sql, &base)?;
    let synced = within(
        SYNC_LIMIT_MS,
        sync_in(ctx, account, &manifest.files, &session_files),
    )
    .await
    .unwrap_or_else(|| Err(format!("it took over {} s", SYNC_LIMIT_MS / 1000)));
    if let Err(why) = synced {
        return Ok(Prepared::Fail(
            ExecStatus::Failed,
            format!("sending the workspace to the runner: {why}"),
        ));
    }
    let agent = Config::from_env(&ctx.env).agent;
    let pricing = Config::from_env(&ctx.env).billing.pricing;
    let task = TaskStart {
        task_id: id.to_string(),
        task: start.task.clone(),
        files: manifest.files,
        session: session_files,
        resume_thread: session_id,
        agent_command: agent.command,
        model: agent.model,
        model_base_url: agent.model_base_url,
        model_api_key: agent.model_api_key,
        input_micros_per_1k: pricing.input_micros_per_1k,
        output_micros_per_1k: pricing.output_micros_per_1k,
        max_cost_micros: start.cap_micros,
        timeout_ms: start.timeout_ms,
    };
    let body = serde_json::to_string(&task)?;
    // A cancel may have ended it during the sync.
    if ctx.is_terminal(id) {
        return Ok(Prepared::Ended);
    }
    storage::exec(&ctx.sql, &queue::dispatched(id))?;
    let sent = send(&ctx.link, Method::Post, "/tasks", Some(body), 30_000).await;
    if ctx.is_terminal(id) {
        // Cancelled while the task was being started.
        let _ = ctx.cancel_on_runner(id).await;
    }
    match sent {
        Ok(resp) => {
            ctx.runner_step(
                id,
                RunnerEvent::Response {
                    status: resp.status_code(),
                },
            )?;
            if resp.status_code() == 200 {
                Ok(Prepared::Dispatched(Some(resp)))
            } else {
                let why = crate::runner::blobs::refusal(resp).await;
                Ok(Prepared::Fail(
                    ExecStatus::Failed,
                    format!("the runner refused the task: {why}"),
                ))
            }
        }
        // It may have started anyway: follow its events, which also tells.
        Err(_) => Ok(Prepared::Dispatched(None)),
    }
}

/// The task ended on the runner: save what a good one left, then end.
async fn complete(
    ctx: &ExecCtx,
    id: &str,
    start: &ExecStart,
    result: TaskResult,
) -> Result<(), ApiError> {
    let status = execution::outcome(&result);
    // What the proxy metered as the task ran counts even if the runner's
    // last report lost it (a task that failed after the agent ran).
    let metered = ctx.get(id)?.usage();
    let usage = TokenUsage {
        input_tokens: result.usage.input_tokens.max(metered.input_tokens),
        output_tokens: result.usage.output_tokens.max(metered.output_tokens),
        ..result.usage
    };
    let mut ending = Ending {
        status,
        detail: result.error.clone(),
        usage,
        output: result.output.clone(),
        saved: None,
    };
    if status == ExecStatus::Succeeded {
        let saved = within(SYNC_LIMIT_MS, save(ctx, id, start, &result))
            .await
            .unwrap_or_else(|| {
                Err(ApiError::RunnerUnavailable(format!(
                    "it took over {} s",
                    SYNC_LIMIT_MS / 1000
                )))
            });
        match saved {
            Ok(saved) => ending.saved = Some(saved),
            Err(err) => {
                ending.status = ExecStatus::Failed;
                ending.detail = Some(format!("saving the result: {}", err.message()));
            }
        }
    }
    ctx.end(id, ending).await
}

/// `fut`'s output, or `None` if it takes longer than `ms` (it is dropped).
async fn within<T>(ms: i64, fut: impl std::future::Future<Output = T>) -> Option<T> {
    let timer = Delay::from(Duration::from_millis(ms.max(0) as u64));
    match select(Box::pin(fut), timer).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}
