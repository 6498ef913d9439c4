//! Repo runs: `POST /api/runs`, `GET /api/runs`, `GET /api/runs/:id`,
//! `GET /api/runs/:id/events`, `GET /api/runs/:id/verify`,
//! `POST /api/runs/:id/cancel`, `DELETE /api/runs/:id`; without a key,
//! `GET /api/runs/:id/public` and the proof page `GET /runs/:id`.
//!
//! The Worker authenticates and validates; each run is one CloudboxRunner
//! DO (named by the run id) that owns its state and checks the account.

use serde::Deserialize;
use serde_json::{json, Value};
use worker::{Request, Response};

use crate::api::auth::{self, Caller};
use crate::api::dispatch::Ctx;
use crate::api::error::{ApiError, FieldError};
use crate::api::idempotency::{self, Slot};
use crate::api::idempotency_d1;
use crate::keys::api_key::Permission;
use crate::platform::bindings;
use crate::runner::call::{ForkSource, LiveTerms, Respond, RunnerCall, StartFork, StartRun};
use crate::runner::events::{parse_limit, ListCursor};
use crate::wire::RunStart;
use crate::{common::ids, platform::http, runs::billing_d1, runs::spec};

async fn caller(req: &Request, ctx: &Ctx<'_>, permission: Permission) -> Result<Caller, ApiError> {
    let caller = auth::authenticate(req, ctx).await?;
    caller.require(permission)?;
    Ok(caller)
}

/// Sends one internal call to the run's DO.
async fn to_run_do(
    ctx: &Ctx<'_>,
    caller: &Caller,
    run_id: &str,
    call: &RunnerCall,
) -> Result<Response, ApiError> {
    let name = format!("run:{run_id}");
    crate::runner::durable::call(ctx.env, &name, &caller.account_id, ctx.request_id, call).await
}

/// Run ids are ours (`run_` + hex); anything else cannot exist.
fn run_id<'a>(ctx: &'a Ctx<'_>) -> Result<&'a str, ApiError> {
    let id = ctx.param("id")?;
    // Checked before any Durable Object is touched, so probing random ids
    // cannot create empty objects.
    if ids::has_shape(id, "run_") {
        Ok(id)
    } else {
        Err(ApiError::RunNotFound)
    }
}

/// A first `POST /api/runs` with an `Idempotency-Key` is "in flight" for
/// as long as its run may last, plus this; then a retry may take it over.
const IDEM_STALE_GRACE_MS: i64 = 60_000;

/// `POST /api/runs`. With `Idempotency-Key`: a retry with the same body
/// replays the first answer and starts nothing; with SSE, it follows the
/// run the first request started (`idempotency_d1::once`).
pub async fn create(mut req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let caller = caller(&req, ctx, Permission::Execute).await?;
    let idem_key = idempotency_d1::header_key(&req)?;
    let sse = http::wants_sse(&req);
    let after = http::last_event_id(&req)?;
    let bytes = http::read_body(&mut req, http::MAX_JSON_BYTES).await?;
    let spec = parse_spec(&bytes, ctx.cfg.live_ttl_min_seconds);
    let Some(idem) = idem_key else {
        return start_run(ctx, &caller, spec?, sse, None).await;
    };
    let db = bindings::db(ctx.env)?;
    let stale_after = match &spec {
        Ok(spec) => spec.deadline_ms() as i64 + IDEM_STALE_GRACE_MS,
        Err(_) => IDEM_STALE_GRACE_MS,
    };
    let slot = Slot {
        account_id: caller.account_id.clone(),
        scope: spec::IDEMPOTENCY_SCOPE,
        key: idem,
    };
    let fp = idempotency::fingerprint("POST", "/api/runs", &bytes);
    let caller = &caller;
    let follow = sse
        .then_some(move |run_id: String| async move { follow(ctx, caller, &run_id, after).await });
    idempotency_d1::once(
        &db,
        slot,
        &fp,
        ctx.now_ms,
        stale_after,
        ctx.request_id,
        follow,
        |claim| async move { start_run(ctx, caller, spec?, sse, Some(claim)).await },
    )
    .await
}

fn parse_spec(bytes: &[u8], min_ttl_seconds: u64) -> Result<spec::RunSpec, ApiError> {
    let body = http::parse_json_value(bytes)?;
    spec::validate_with(&body, min_ttl_seconds)
}

/// Billing first (budget checks, the hold: a refusal starts nothing), then
/// the run's DO. The DO settles the hold when the run ends, and records the
/// outcome of a claimed `Idempotency-Key` (the client may have hung up).
async fn start_run(
    ctx: &Ctx<'_>,
    caller: &Caller,
    spec: spec::RunSpec,
    sse: bool,
    claim: Option<idempotency_d1::Claim>,
) -> Result<Response, ApiError> {
    let run_id = ids::new_id("run_")?;
    let db = bindings::db(ctx.env)?;
    if let Some(claim) = &claim {
        idempotency_d1::started(&db, claim, &run_id).await?;
    }
    // A live run's hold pays for its steps and its first live period.
    let steps_ms = spec.deadline_ms() as i64;
    let ttl_ms = spec.live_ttl_seconds.map_or(0, |s| s as i64 * 1000);
    let (billing, paid_ms) =
        billing_d1::begin(&db, ctx.env, caller, &run_id, steps_ms + ttl_ms, ctx.now_ms).await?;
    let deadline_ms = paid_ms.min(steps_ms);
    let live = spec.live_ttl_seconds.map(|ttl_seconds| LiveTerms {
        ttl_seconds,
        paid_until_ms: billing.hold_id.as_ref().map(|_| ctx.now_ms + paid_ms),
    });
    let public = spec.public;
    let start = RunStart {
        run_id: run_id.clone(),
        repo: spec.repo,
        git_ref: spec.git_ref,
        commands: spec.commands,
        verify: spec.verify,
        artifact: spec.artifact,
        timeout_ms: spec.timeout_ms,
        env: spec.env,
        live: live.is_some(),
    };
    let call = RunnerCall::StartRun {
        start: StartRun {
            account_id: caller.account_id.clone(),
            key_id: caller.key_id.clone(),
            spec: start,
            deadline_ms: deadline_ms.max(0) as u64,
            billing: Some(billing.clone()),
            idempotency: claim.as_ref().map(idempotency_d1::Claim::key_and_time),
            public,
            live,
        },
        respond: if sse {
            Respond::Events
        } else {
            Respond::Result
        },
    };
    let sent = to_run_do(ctx, caller, &run_id, &call).await;
    let failed = match &sent {
        Ok(resp) => resp.status_code() >= 500,
        Err(_) => true,
    };
    if !failed {
        return sent;
    }
    match run_exists(&db, &run_id).await {
        Ok(false) => {
            // The run never came into being: give the hold back now.
            if billing.hold_id.is_some() {
                if let Err(err) = billing_d1::release(&db, &billing, ctx.now_ms).await {
                    worker::console_error!("runs: release of the hold of {run_id}: {err}");
                }
            }
            sent
        }
        // It did, and only its answer was lost (e.g. the DO restarted): a
        // stream follows it, so a keyed retry does not start a second run.
        Ok(true) if sse => follow(ctx, caller, &run_id, 0).await,
        _ => sent,
    }
}

async fn run_exists(db: &worker::D1Database, run_id: &str) -> Result<bool, ApiError> {
    let row: Option<Value> = db
        .prepare("SELECT 1 AS one FROM runs WHERE id = ?1")
        .bind(&[run_id.into()])?
        .first(None)
        .await?;
    Ok(row.is_some())
}

/// The run-scoped routes that only forward to the run's DO: check the key
/// and the id, then send the call `call` makes of the run id.
async fn forward(
    req: &Request,
    ctx: &Ctx<'_>,
    permission: Permission,
    call: fn(String) -> RunnerCall,
) -> Result<Response, ApiError> {
    let caller = caller(req, ctx, permission).await?;
    let id = run_id(ctx)?;
    to_run_do(ctx, &caller, id, &call(id.to_string())).await
}

pub async fn get(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    forward(&req, ctx, Permission::Read, |run_id| RunnerCall::GetRun {
        run_id,
    })
    .await
}

/// `GET /api/runs/:id/events`: the run's SSE stream after `Last-Event-ID`.
pub async fn events(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let caller = caller(&req, ctx, Permission::Read).await?;
    let id = run_id(ctx)?;
    follow(ctx, &caller, id, http::last_event_id(&req)?).await
}

/// A run's events after `after`, as SSE: for `GET …/events`, and for a
/// keyed SSE retry of `POST /api/runs`, which follows the run it started.
async fn follow(
    ctx: &Ctx<'_>,
    caller: &Caller,
    run_id: &str,
    after: u64,
) -> Result<Response, ApiError> {
    let call = RunnerCall::RunEvents {
        run_id: run_id.to_string(),
        after,
    };
    to_run_do(ctx, caller, run_id, &call).await
}

pub async fn verify(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    forward(&req, ctx, Permission::Read, |run_id| {
        RunnerCall::VerifyRun { run_id }
    })
    .await
}

pub async fn cancel(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    forward(&req, ctx, Permission::Execute, |run_id| {
        RunnerCall::CancelRun { run_id }
    })
    .await
}

pub async fn delete(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    forward(&req, ctx, Permission::Execute, |run_id| {
        RunnerCall::DeleteRun { run_id }
    })
    .await
}

// ---------------------------------------------------------------------------
// Live runs: exec, read, write, stop, resume, fork (their rules in
// `runs::live`, their work in the run's DO).

/// `POST /api/runs/:id/exec` → the `exec` receipt (SSE with `accept:
/// text/event-stream`).
pub async fn exec(mut req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let caller = caller(&req, ctx, Permission::Execute).await?;
    let id = run_id(ctx)?;
    let sse = http::wants_sse(&req);
    let body = http::parse_json_value(&http::read_body(&mut req, http::MAX_JSON_BYTES).await?)?;
    let call = RunnerCall::ExecRun {
        run_id: id.to_string(),
        exec: spec::validate_exec(&body)?,
        respond: if sse {
            Respond::Events
        } else {
            Respond::Result
        },
    };
    to_run_do(ctx, &caller, id, &call).await
}

/// `GET /api/runs/:id/read?path=`.
pub async fn read(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let caller = caller(&req, ctx, Permission::Read).await?;
    let id = run_id(ctx)?;
    let path = http::query(&req, "path")?
        .ok_or_else(|| ApiError::BadPath("path is required (?path=)".into()))?;
    crate::common::paths::check_path("path", &path)?;
    let call = RunnerCall::ReadRunFile {
        run_id: id.to_string(),
        path,
    };
    to_run_do(ctx, &caller, id, &call).await
}

/// `POST /api/runs/:id/write {path, content | contentBase64, mode?}`.
pub async fn write(mut req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let caller = caller(&req, ctx, Permission::Execute).await?;
    let id = run_id(ctx)?;
    let body = http::parse_json_value(&http::read_body(&mut req, http::MAX_JSON_BYTES).await?)?;
    let write = spec::validate_write(&body)?;
    let call = RunnerCall::WriteRunFile {
        run_id: id.to_string(),
        path: write.path,
        content_base64: write.content_base64,
        mode: write.mode,
    };
    to_run_do(ctx, &caller, id, &call).await
}

pub async fn stop(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    forward(&req, ctx, Permission::Execute, |run_id| {
        RunnerCall::StopRun { run_id }
    })
    .await
}

/// The run's body as its DO answers it for its owner.
async fn run_body(ctx: &Ctx<'_>, caller: &Caller, id: &str) -> Result<Value, ApiError> {
    let call = RunnerCall::GetRun {
        run_id: id.to_string(),
    };
    let mut resp = to_run_do(ctx, caller, id, &call).await?;
    if resp.status_code() != 200 {
        return Err(ApiError::RunNotFound);
    }
    Ok(resp.json().await?)
}

/// A new live period's hold (`ttl` of container time at the price), and
/// its terms: the TTL, cut to what the hold pays for.
async fn begin_period(
    ctx: &Ctx<'_>,
    caller: &Caller,
    run_id: &str,
    ttl_seconds: u64,
) -> Result<(LiveTerms, crate::runs::billing::RunBilling), ApiError> {
    let db = bindings::db(ctx.env)?;
    let ttl_ms = ttl_seconds as i64 * 1000;
    let (billing, paid_ms) =
        billing_d1::begin(&db, ctx.env, caller, run_id, ttl_ms, ctx.now_ms).await?;
    let terms = LiveTerms {
        ttl_seconds,
        paid_until_ms: billing.hold_id.as_ref().map(|_| ctx.now_ms + paid_ms),
    };
    Ok((terms, billing))
}

/// Gives a period's hold back when the DO did not open the period.
async fn give_back_if_failed(
    ctx: &Ctx<'_>,
    sent: &Result<Response, ApiError>,
    billing: &crate::runs::billing::RunBilling,
) {
    let failed = match sent {
        Ok(resp) => resp.status_code() >= 300,
        Err(_) => true,
    };
    if failed && billing.hold_id.is_some() {
        if let Ok(db) = bindings::db(ctx.env) {
            if let Err(err) = billing_d1::release(&db, billing, ctx.now_ms).await {
                worker::console_error!("runs: release of a live period's hold: {err}");
            }
        }
    }
}

fn ttl_of(body: &Value) -> Option<u64> {
    body["live"]["ttlSeconds"].as_u64()
}

/// `POST /api/runs/:id/resume`: the period's hold first (402 / 429 start
/// nothing), then the DO restores the snapshot; a failure gives it back.
pub async fn resume(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let caller = caller(&req, ctx, Permission::Execute).await?;
    let id = run_id(ctx)?;
    let body = run_body(ctx, &caller, id).await?;
    let Some(ttl_seconds) = ttl_of(&body) else {
        return Err(ApiError::RunNotRunning);
    };
    let resumable = matches!(
        body["status"].as_str(),
        Some("stopped" | "expired" | "container_lost")
    );
    if !resumable {
        // The DO's guard says which code (running, live, gone).
        let call = RunnerCall::ResumeRun {
            run_id: id.to_string(),
            terms: LiveTerms {
                ttl_seconds,
                paid_until_ms: Some(ctx.now_ms),
            },
            billing: None,
        };
        return to_run_do(ctx, &caller, id, &call).await;
    }
    let (terms, billing) = begin_period(ctx, &caller, id, ttl_seconds).await?;
    let call = RunnerCall::ResumeRun {
        run_id: id.to_string(),
        terms,
        billing: Some(billing.clone()),
    };
    let sent = to_run_do(ctx, &caller, id, &call).await;
    give_back_if_failed(ctx, &sent, &billing).await;
    sent
}

/// `POST /api/runs/:id/fork {live?, ttlSeconds?, public?}` → 201 the new run.
pub async fn fork(mut req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let caller = caller(&req, ctx, Permission::Execute).await?;
    let id = run_id(ctx)?;
    let body = http::read_body(&mut req, http::MAX_JSON_BYTES).await?;
    let body = if body.is_empty() {
        json!({})
    } else {
        http::parse_json_value(&body)?
    };
    let request = spec::validate_fork(&body, ctx.cfg.live_ttl_min_seconds)?;
    let source_call = RunnerCall::ForkSource {
        run_id: id.to_string(),
    };
    let mut resp = to_run_do(ctx, &caller, id, &source_call).await?;
    if resp.status_code() != 200 {
        return Ok(resp);
    }
    let source: ForkSource = resp.json().await?;
    let child_id = ids::new_id("run_")?;
    let ttl_seconds = request.ttl_seconds.unwrap_or(source.ttl_seconds);
    let (terms, billing) = if request.live {
        let (terms, billing) = begin_period(ctx, &caller, &child_id, ttl_seconds).await?;
        (terms, Some(billing))
    } else {
        (
            LiveTerms {
                ttl_seconds,
                paid_until_ms: None,
            },
            None,
        )
    };
    let call = RunnerCall::StartFork {
        fork: StartFork {
            account_id: caller.account_id.clone(),
            key_id: caller.key_id.clone(),
            run_id: child_id.clone(),
            parent_run_id: id.to_string(),
            source,
            live: request.live,
            terms,
            billing: billing.clone(),
            public: request.public,
        },
    };
    let sent = to_run_do(ctx, &caller, &child_id, &call).await;
    if let Some(billing) = &billing {
        give_back_if_failed(ctx, &sent, billing).await;
    }
    sent
}

#[derive(Deserialize)]
struct ListRow {
    id: String,
    repo: String,
    git_ref: Option<String>,
    status: String,
    ok: Option<f64>,
    container_ms: Option<f64>,
    created_at: f64,
    finished_at: Option<f64>,
}

pub async fn list(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let caller = caller(&req, ctx, Permission::Read).await?;
    let limit = parse_limit(http::query(&req, "limit")?.as_deref())
        .map_err(|m| ApiError::ValidationFailed(vec![FieldError::new("limit", m)]))?;
    let cursor = match http::query(&req, "cursor")? {
        None => None,
        Some(text) => Some(ListCursor::decode(&text).ok_or_else(|| {
            ApiError::ValidationFailed(vec![FieldError::new(
                "cursor",
                "not a cursor from this API",
            )])
        })?),
    };
    let db = bindings::db(ctx.env)?;
    let (created, id) = match &cursor {
        Some(c) => (c.created_ms as f64, c.run_id.clone()),
        None => (f64::MAX, String::new()),
    };
    let rows: Vec<ListRow> = db
        .prepare(
            "SELECT id, repo, git_ref, status, ok, container_ms, created_at, finished_at FROM runs \
             WHERE account_id = ?1 AND (?2 = 0 OR created_at < ?3 OR (created_at = ?3 AND id < ?4)) \
             ORDER BY created_at DESC, id DESC LIMIT ?5",
        )
        .bind(&[
            caller.account_id.as_str().into(),
            (cursor.is_some() as i32).into(),
            created.into(),
            id.as_str().into(),
            (limit + 1).into(),
        ])?
        .all()
        .await?
        .results()?;
    let more = rows.len() > limit as usize;
    let page = &rows[..rows.len().min(limit as usize)];
    let next = if more {
        page.last().map(|r| {
            ListCursor {
                created_ms: r.created_at as i64,
                run_id: r.id.clone(),
            }
            .encode()
        })
    } else {
        None
    };
    let runs: Vec<_> = page
        .iter()
        .map(|r| {
            let terminal = crate::wire::RunStatus::parse(&r.status).is_some_and(|s| s.is_terminal());
            json!({
                "runId": r.id,
                "repo": r.repo,
                "ref": r.git_ref,
                "status": r.status,
                "ok": if terminal { json!(r.ok.unwrap_or(0.0) != 0.0) } else { serde_json::Value::Null },
                "containerMs": r.container_ms.map(|m| m as u64),
                "createdAt": crate::common::time::rfc3339(r.created_at as i64),
                "finishedAt": r.finished_at.map(|m| crate::common::time::rfc3339(m as i64)),
            })
        })
        .collect();
    http::json(
        200,
        &json!({"runs": runs, "nextCursor": next, "limit": limit}),
    )
}

// ---------------------------------------------------------------------------
// Public runs: `GET /api/runs/:id/public` and the proof page `GET /runs/:id`,
// without a key.

/// The account of a run that is public; none for a private or unknown run.
const PUBLIC_RUN: &str = "SELECT account_id FROM runs WHERE id = ?1 AND public = 1";

#[derive(Deserialize)]
struct PublicRow {
    account_id: String,
}

/// The body of a public run, for anyone. The D1 index says whether the run
/// is public and whose it is; the run's DO answers for that account as for
/// its owner. A private or unknown run is 404, as if it did not exist.
async fn public_body(ctx: &Ctx<'_>) -> Result<Value, ApiError> {
    let id = run_id(ctx)?;
    let db = bindings::db(ctx.env)?;
    let query = crate::common::sql::stmt(PUBLIC_RUN, vec![id.into()]);
    let Some(row) = crate::billing::ledger_d1::first::<PublicRow>(&db, &query).await? else {
        return Err(ApiError::RunNotFound);
    };
    let call = RunnerCall::GetRun {
        run_id: id.to_string(),
    };
    let name = format!("run:{id}");
    let mut resp =
        crate::runner::durable::call(ctx.env, &name, &row.account_id, ctx.request_id, &call)
            .await?;
    if resp.status_code() != 200 {
        return Err(ApiError::RunNotFound);
    }
    Ok(resp.json().await?)
}

pub async fn public(_req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    http::json(200, &public_body(ctx).await?)
}

/// The proof page: HTML rendered here, with a policy that lets nothing but
/// its own inline styles load or run.
pub async fn page(_req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let body = public_body(ctx).await?;
    let mut resp = Response::from_html(crate::runs::proof_page::render(&body))?;
    let headers = resp.headers_mut();
    headers.set(
        "content-security-policy",
        crate::runs::proof_page::CONTENT_SECURITY_POLICY,
    )?;
    headers.set("x-content-type-options", "nosniff")?;
    headers.set("referrer-policy", "no-referrer")?;
    headers.set("cache-control", "no-store")?;
    Ok(resp)
}

/// Turns a run public or private again (D1 first: with the account in its
/// condition it is the ownership check, and the page follows it at once).
const SET_PUBLIC: &str =
    "UPDATE runs SET public = ?3 WHERE id = ?1 AND account_id = ?2 RETURNING id";

#[derive(Deserialize)]
struct Updated {
    #[allow(dead_code)] // only its presence matters
    id: String,
}

/// `POST /api/runs/:id/public {public}` → the run's body.
pub async fn set_public(mut req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let caller = caller(&req, ctx, Permission::Execute).await?;
    let id = run_id(ctx)?;
    let body = http::parse_json_value(&http::read_body(&mut req, http::MAX_JSON_BYTES).await?)?;
    let public = match body.as_object() {
        Some(obj) if obj.keys().all(|k| k == "public") => {
            obj.get("public").and_then(Value::as_bool)
        }
        _ => None,
    };
    let Some(public) = public else {
        return Err(ApiError::ValidationFailed(vec![FieldError::new(
            "public",
            "the body is {\"public\": true|false}",
        )]));
    };
    let db = bindings::db(ctx.env)?;
    let flag: i64 = if public { 1 } else { 0 };
    let update = crate::common::sql::stmt(
        SET_PUBLIC,
        vec![id.into(), caller.account_id.as_str().into(), flag.into()],
    );
    if crate::billing::ledger_d1::first::<Updated>(&db, &update)
        .await?
        .is_none()
    {
        return Err(ApiError::RunNotFound);
    }
    let call = RunnerCall::SetRunPublic {
        run_id: id.to_string(),
        public,
    };
    to_run_do(ctx, &caller, id, &call).await
}
