//! `POST /execute`, `GET /execute/:runId`, `GET /execute/:runId/events`
//! and `POST /execute/:runId/cancel`.
//!
//! The Worker authenticates, validates and takes the hold (a refusal starts
//! nothing); the workspace's CloudboxRunner DO (named by account and
//! workspace) queues the execute, runs it, commits and settles — see
//! `executes::durable`. D1 `executions` says which DO holds a run id.

use serde::Deserialize;
use serde_json::Value;
use worker::{Headers, Request, Response};

use crate::api::auth::{self, Caller};
use crate::api::dispatch::Ctx;
use crate::api::error::{ApiError, FieldError};
use crate::api::idempotency::{self, Slot};
use crate::api::idempotency_d1;
use crate::billing::ledger_d1::{self, HoldTicket};
use crate::executes::execution::{self, ExecStart};
use crate::executes::spec::{self, ExecuteSpec};
use crate::keys::api_key::{KeyType, Permission};
use crate::platform::bindings;
use crate::platform::config::Config;
use crate::runner::call::{Respond, RunnerCall};
use crate::{common::ids, platform::http, workspaces::manifest};

async fn caller(req: &Request, ctx: &Ctx<'_>) -> Result<Caller, ApiError> {
    let caller = auth::authenticate(req, ctx).await?;
    caller.require(Permission::Execute)?;
    Ok(caller)
}

/// The DO of one workspace of one account.
fn workspace_do_name(account: &str, workspace_id: &str) -> String {
    format!("ws:{account}:{workspace_id}")
}

async fn to_workspace_do(
    ctx: &Ctx<'_>,
    account: &str,
    workspace_id: &str,
    call: &RunnerCall,
) -> Result<Response, ApiError> {
    let name = workspace_do_name(account, workspace_id);
    crate::runner::durable::call(ctx.env, &name, account, ctx.request_id, call).await
}

/// `?wait=false` refuses instead of queueing behind another execute.
fn wait_param(req: &Request) -> Result<bool, ApiError> {
    match http::query(req, "wait")?.as_deref() {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(_) => Err(ApiError::ValidationFailed(vec![FieldError::new(
            "wait",
            "must be true or false",
        )])),
    }
}

/// `POST /execute`. With `Idempotency-Key`: a retry with the same body
/// replays the first answer and runs nothing; with SSE, it follows the
/// execute the first request started (`idempotency_d1::once`).
pub async fn create(mut req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let caller = caller(&req, ctx).await?;
    let idem_key = idempotency_d1::header_key(&req)?;
    let sse = http::wants_sse(&req);
    let after = http::last_event_id(&req)?;
    let wait = wait_param(&req)?;
    let bytes = http::read_body(&mut req, http::MAX_JSON_BYTES).await?;
    let spec = parse_spec(&bytes);
    let Some(idem) = idem_key else {
        return start(ctx, &caller, spec?, wait, sse, None).await;
    };
    let db = bindings::db(ctx.env)?;
    let stale_after = match &spec {
        Ok(spec) => execution::hold_life_ms(spec.timeout_ms),
        Err(_) => execution::hold_life_ms(0),
    };
    let slot = Slot {
        account_id: caller.account_id.clone(),
        scope: execution::IDEMPOTENCY_SCOPE,
        key: idem,
    };
    let fp = idempotency::fingerprint("POST", "/execute", &bytes);
    let caller = &caller;
    let follow = sse
        .then_some(move |run_id: String| async move { follow(ctx, caller, &run_id, after).await });
    let resp = idempotency_d1::once(
        &db,
        slot,
        &fp,
        ctx.now_ms,
        stale_after,
        ctx.request_id,
        follow,
        |claim| async move { start(ctx, caller, spec?, wait, sse, Some(claim)).await },
    )
    .await?;
    with_budget_warning(ctx, caller, resp).await
}

fn parse_spec(bytes: &[u8]) -> Result<ExecuteSpec, ApiError> {
    let body = http::parse_json_value(bytes)?;
    spec::validate(&body)
}

/// `x-budget-warning` when one of the caller's alerts is active.
async fn with_budget_warning(
    ctx: &Ctx<'_>,
    caller: &Caller,
    mut resp: Response,
) -> Result<Response, ApiError> {
    let db = bindings::db(ctx.env)?;
    let vars = Config::from_env(ctx.env).billing;
    match ledger_d1::budget_warning(&db, &vars, caller, crate::common::time::now_ms()).await {
        Ok(Some(warning)) => resp.headers_mut().set("x-budget-warning", &warning)?,
        Ok(None) => {}
        Err(err) => worker::console_error!("execute: budget warning: {err}"),
    }
    Ok(resp)
}

/// Budget checks and the hold first (a refusal starts nothing), then the
/// workspace's DO. A start the DO refuses gives the hold back at once.
async fn start(
    ctx: &Ctx<'_>,
    caller: &Caller,
    spec: ExecuteSpec,
    wait: bool,
    sse: bool,
    claim: Option<idempotency_d1::Claim>,
) -> Result<Response, ApiError> {
    if let Some(sid) = &spec.session_id {
        let known =
            crate::workspaces::store::session_exists(ctx.env, &caller.account_id, sid).await?;
        if !known {
            return Err(ApiError::ValidationFailed(vec![FieldError::new(
                "sessionId",
                "no such session in this account",
            )]));
        }
    }
    let run_id = ids::new_id("exe_")?;
    let db = bindings::db(ctx.env)?;
    if let Some(claim) = &claim {
        idempotency_d1::started(&db, claim, &run_id).await?;
    }
    let vars = Config::from_env(ctx.env).billing;
    let max_life = execution::hold_life_ms(spec.timeout_ms);
    let hold = ledger_d1::begin_run(
        &db,
        &vars,
        caller,
        spec.max_cost_micros,
        &run_id,
        max_life,
        ctx.now_ms,
    )
    .await?;
    let index = index_execution(ctx, caller, &run_id, &spec.workspace_id).await;
    if let Err(err) = index {
        give_back(ctx, hold.as_ref()).await;
        return Err(err);
    }
    let start = ExecStart {
        run_id: run_id.clone(),
        account_id: caller.account_id.clone(),
        key_id: caller.key_id.clone(),
        key_type: match caller.key_type {
            KeyType::Internal => "internal".into(),
            KeyType::Standard => "standard".into(),
        },
        workspace_id: spec.workspace_id.clone(),
        task: spec.task,
        session_id: spec.session_id,
        timeout_ms: spec.timeout_ms,
        hold_id: hold.as_ref().map(|h| h.hold_id.clone()),
        hold_micros: hold.as_ref().map(|h| h.amount_micros).unwrap_or(0),
        hold_expires_ms: hold.as_ref().map(|h| h.expires_at_ms).unwrap_or(0),
        cap_micros: execution::cap_micros(
            hold.as_ref().map(|h| h.amount_micros),
            spec.max_cost_micros,
        ),
        wait,
        idempotency: claim.as_ref().map(idempotency_d1::Claim::key_and_time),
    };
    let respond = if sse {
        Respond::Events
    } else {
        Respond::Result
    };
    let sent = to_workspace_do(
        ctx,
        &caller.account_id,
        &spec.workspace_id,
        &RunnerCall::StartExecute { start, respond },
    )
    .await;
    // 409: the DO refused before queueing, so nothing ran.
    if matches!(&sent, Ok(resp) if resp.status_code() == 409) {
        give_back(ctx, hold.as_ref()).await;
        forget_execution(ctx, &run_id).await;
    }
    // A 5xx or a lost connection (e.g. the DO restarted) is ambiguous: ask
    // the DO. If it never took the execute, nothing ran; if it did, it runs
    // it to the end and settles, and the JSON form answers its outcome, the
    // SSE form its events (so a keyed retry does not start a second one).
    let failed = match &sent {
        Ok(resp) => resp.status_code() >= 500,
        Err(_) => true,
    };
    let sent = if failed {
        let asked = to_workspace_do(
            ctx,
            &caller.account_id,
            &spec.workspace_id,
            &RunnerCall::GetExecute {
                run_id: run_id.clone(),
                wait: !sse,
            },
        )
        .await;
        match asked {
            Ok(resp) if resp.status_code() == 404 => {
                give_back(ctx, hold.as_ref()).await;
                forget_execution(ctx, &run_id).await;
                sent
            }
            Ok(resp) if !sse && matches!(resp.status_code(), 200 | 422) => Ok(resp),
            Ok(resp) if sse && matches!(resp.status_code(), 200 | 202 | 422) => {
                follow(ctx, caller, &run_id, 0).await
            }
            _ => sent,
        }
    } else {
        sent
    };
    // A Durable Object's response has immutable headers: answer a copy.
    let mut resp = sent?;
    let status = resp.status_code();
    let retry_after = resp.headers().get("retry-after")?;
    let resp = if sse && status == 200 {
        let headers = Headers::new();
        headers.set("content-type", "text/event-stream")?;
        headers.set("cache-control", "no-cache")?;
        Response::from_stream(resp.stream()?)?.with_headers(headers)
    } else {
        let body: Value = resp.json().await?;
        http::json(status, &body)?
    };
    let mut resp = resp;
    if matches!(status, 200 | 422) {
        resp.headers_mut().set("x-run-id", &run_id)?;
    }
    if let Some(retry_after) = retry_after {
        resp.headers_mut().set("retry-after", &retry_after)?;
    }
    with_budget_warning(ctx, caller, resp).await
}

/// Releases a hold of an execute that never ran.
async fn give_back(ctx: &Ctx<'_>, hold: Option<&HoldTicket>) {
    let Some(hold) = hold else { return };
    let released = match bindings::db(ctx.env) {
        Ok(db) => ledger_d1::release(&db, hold, crate::common::time::now_ms()).await,
        Err(err) => Err(err),
    };
    if let Err(err) = released {
        worker::console_error!("execute: release of {}: {err}", hold.hold_id);
    }
}

async fn index_execution(
    ctx: &Ctx<'_>,
    caller: &Caller,
    run_id: &str,
    workspace_id: &str,
) -> Result<(), ApiError> {
    let now = ctx.now_ms as f64;
    bindings::db(ctx.env)?
        .prepare(
            "INSERT INTO executions (id, account_id, key_id, workspace_id, status, created_at, \
             updated_at) VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?5)",
        )
        .bind(&[
            run_id.into(),
            caller.account_id.as_str().into(),
            caller.key_id.as_str().into(),
            workspace_id.into(),
            now.into(),
        ])?
        .run()
        .await?;
    Ok(())
}

async fn forget_execution(ctx: &Ctx<'_>, run_id: &str) {
    let deleted = async {
        bindings::db(ctx.env)?
            .prepare("DELETE FROM executions WHERE id = ?1")
            .bind(&[run_id.into()])?
            .run()
            .await?;
        Ok::<(), ApiError>(())
    }
    .await;
    if let Err(err) = deleted {
        worker::console_error!("execute: forgetting {run_id}: {err}");
    }
}

#[derive(Deserialize)]
struct Located {
    workspace_id: String,
}

/// The workspace of the caller's execute `run_id` (404 for any other id).
async fn locate(ctx: &Ctx<'_>, caller: &Caller, run_id: &str) -> Result<String, ApiError> {
    // Checked before D1 or any Durable Object is touched.
    if !ids::has_shape(run_id, "exe_") {
        return Err(ApiError::RunNotFound);
    }
    let located: Option<Located> = bindings::db(ctx.env)?
        .prepare("SELECT workspace_id FROM executions WHERE id = ?1 AND account_id = ?2")
        .bind(&[run_id.into(), caller.account_id.as_str().into()])?
        .first(None)
        .await?;
    let located = located.ok_or(ApiError::RunNotFound)?;
    manifest::validate_workspace_id(&located.workspace_id)?;
    Ok(located.workspace_id)
}

/// `POST /execute/:runId/cancel`.
pub async fn cancel(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let caller = caller(&req, ctx).await?;
    let run_id = ctx.param("runId")?;
    let workspace_id = locate(ctx, &caller, run_id).await?;
    let call = RunnerCall::CancelExecute {
        run_id: run_id.to_string(),
    };
    to_workspace_do(ctx, &caller.account_id, &workspace_id, &call).await
}

/// `GET /execute/:runId/events`: the execute's SSE stream after
/// `Last-Event-ID`.
pub async fn events(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let caller = auth::authenticate(&req, ctx).await?;
    caller.require(Permission::Read)?;
    let run_id = ctx.param("runId")?;
    follow(ctx, &caller, run_id, http::last_event_id(&req)?).await
}

/// An execute's events after `after`, as SSE: for `GET …/events`, and for
/// a keyed SSE retry of `POST /execute`, which follows the execute it started.
async fn follow(
    ctx: &Ctx<'_>,
    caller: &Caller,
    run_id: &str,
    after: u64,
) -> Result<Response, ApiError> {
    let workspace_id = locate(ctx, caller, run_id).await?;
    let call = RunnerCall::ExecuteEvents {
        run_id: run_id.to_string(),
        after,
    };
    to_workspace_do(ctx, &caller.account_id, &workspace_id, &call).await
}

/// `GET /execute/:runId`: the execute's answer once it has ended (the same
/// body and status as `POST /execute`), else 202 `{runId, status,
/// workspaceId}`. `?wait=true` waits for the end.
pub async fn get(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let caller = auth::authenticate(&req, ctx).await?;
    caller.require(Permission::Read)?;
    let run_id = ctx.param("runId")?;
    let workspace_id = locate(ctx, &caller, run_id).await?;
    let wait = http::query(&req, "wait")?.as_deref() == Some("true");
    let call = RunnerCall::GetExecute {
        run_id: run_id.to_string(),
        wait,
    };
    to_workspace_do(ctx, &caller.account_id, &workspace_id, &call).await
}
