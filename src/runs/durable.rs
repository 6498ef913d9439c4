//! Repo runs inside the CloudboxRunner DO (one DO per run).
//!
//! The DO stores the run, every event and every receipt in its SQLite
//! storage as they arrive. A *pump* (spawned, so it outlives any client)
//! consumes the runner's NDJSON stream and resumes after the last stored
//! event when the connection breaks; a watchdog alarm restarts the pump if
//! the DO was evicted, and ends the run as `timed_out` past its deadline.
//! A runner that dies or stops answering ends the run as `container_lost`
//! with a receipt: a run never stays `running`.
//!
//! Internal routes (the Worker is the only caller; it passes the caller's
//! account in `x-cloudbox-account`):
//! `POST /runs/:id/start?respond=result|events`, `GET /runs/:id`,
//! `GET /runs/:id/events?after=N`, `GET /runs/:id/verify`,
//! `POST /runs/:id/cancel`, `DELETE /runs/:id`.

use std::rc::Rc;

use serde::Deserialize;
use serde_json::{json, Value};
use worker::{Env, Method, Request, Response, SqlStorage, State};

use crate::api::error::ApiError;
use crate::api::idempotency::Slot;
use crate::api::idempotency_d1;
use crate::runner::events::parse_last_event_id;
use crate::runner::follow::{self, Followed, Stop};
use crate::runner::lifecycle::{RunnerEvent, RunnerReceipt};
use crate::runner::link::{ensure_ready, record, send, Link};
use crate::runner::live::{wait_until, Live};
use crate::runner::sse::{self, EventLog, EventRow};
use crate::runs::billing::RunBilling;
use crate::runs::spec;
use crate::wire::receipts::{verify_chain, Chain, Receipt, ReceiptKind, Step};
use crate::wire::{RunEvent, RunResult, RunStart, RunStatus, WireEvent};
use crate::{common::time, platform::http};

/// The watchdog alarm's period while a run is not finished.
const WATCHDOG_MS: u64 = 5_000;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS run (
        id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        spec TEXT NOT NULL,
        status TEXT NOT NULL,
        ok INTEGER,
        created_ms INTEGER NOT NULL,
        finished_ms INTEGER,
        deadline_ms INTEGER NOT NULL,
        runner_seq INTEGER NOT NULL DEFAULT 0,
        dispatched INTEGER NOT NULL DEFAULT 0,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        container_ms INTEGER,
        artifact TEXT,
        diff TEXT
    )",
    "CREATE TABLE IF NOT EXISTS run_events (
        seq INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        data TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS run_receipts (
        seq INTEGER PRIMARY KEY,
        body TEXT NOT NULL
    )",
    // How the run ended, kept before the end is carried out (the release,
    // D1, the settle, then the terminal status): the first ending wins, and
    // one cut short by an eviction is finished by the watchdog.
    "CREATE TABLE IF NOT EXISTS run_ending (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        status TEXT NOT NULL,
        ok INTEGER NOT NULL,
        result TEXT,
        ended_ms INTEGER NOT NULL
    )",
    // The `Idempotency-Key` claim of the request that started the run: its
    // outcome is recorded when the run ends (the client may be gone).
    "CREATE TABLE IF NOT EXISTS run_idempotency (
        key TEXT NOT NULL,
        claimed_at INTEGER NOT NULL
    )",
    // The run's billing (`RunBilling` as JSON) until it is settled in D1.
    "CREATE TABLE IF NOT EXISTS run_billing (
        key_id TEXT NOT NULL,
        billing TEXT NOT NULL,
        settled INTEGER NOT NULL DEFAULT 0
    )",
];

pub fn init_schema(sql: &SqlStorage) {
    for stmt in SCHEMA {
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

#[derive(Debug, Clone, Deserialize)]
struct Ending {
    status: String,
    ok: f64,
    result: Option<String>,
    ended_ms: f64,
}

#[derive(Debug, Clone, Deserialize)]
struct RunRow {
    id: String,
    account_id: String,
    spec: String,
    status: String,
    ok: Option<f64>,
    created_ms: f64,
    finished_ms: Option<f64>,
    deadline_ms: f64,
    runner_seq: f64,
    dispatched: f64,
    container_ms: Option<f64>,
    artifact: Option<String>,
    diff: Option<String>,
}

impl RunRow {
    fn status(&self) -> RunStatus {
        RunStatus::parse(&self.status).unwrap_or(RunStatus::Running)
    }
    fn spec(&self) -> Result<RunStart, ApiError> {
        Ok(serde_json::from_str(&self.spec)?)
    }
}

/// What the Worker sends to start a run.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartBody {
    account_id: String,
    key_id: String,
    spec: RunStart,
    deadline_ms: u64,
    /// Metering: the price and the hold the Worker took (absent: not billed).
    #[serde(default)]
    billing: Option<RunBilling>,
    /// The claimed `Idempotency-Key` and its claim time.
    #[serde(default)]
    idempotency: Option<(String, i64)>,
}

fn int(v: i64) -> worker::SqlStorageValue {
    worker::SqlStorageValue::Integer(v)
}

impl RunCtx {
    fn load(&self) -> Result<Option<RunRow>, ApiError> {
        let rows: Vec<RunRow> = self
            .sql
            .exec("SELECT * FROM run LIMIT 1", None)?
            .to_array()?;
        Ok(rows.into_iter().next())
    }

    /// The run, if it belongs to `account`; else 404 as if absent.
    fn owned(&self, account: &str) -> Result<RunRow, ApiError> {
        match self.load()? {
            Some(row) if row.account_id == account => Ok(row),
            _ => Err(ApiError::RunNotFound),
        }
    }

    fn append_event(&self, kind: &str, data: &str) -> Result<(), ApiError> {
        self.sql.exec(
            "INSERT INTO run_events (seq, kind, data) \
             VALUES ((SELECT COALESCE(MAX(seq), 0) + 1 FROM run_events), ?, ?)",
            vec![kind.into(), data.into()],
        )?;
        self.live.notify();
        Ok(())
    }

    fn receipts(&self) -> Result<Vec<Receipt>, ApiError> {
        #[derive(Deserialize)]
        struct Row {
            body: String,
        }
        let rows: Vec<Row> = self
            .sql
            .exec("SELECT body FROM run_receipts ORDER BY seq", None)?
            .to_array()?;
        rows.iter()
            .map(|r| serde_json::from_str(&r.body).map_err(ApiError::from))
            .collect()
    }

    fn runner_receipts(&self, run_id: &str) -> Result<Vec<RunnerReceipt>, ApiError> {
        crate::runner::link::runner_receipts(&self.sql, run_id)
    }

    fn store_receipt(&self, receipt: &Receipt) -> Result<(), ApiError> {
        let body = serde_json::to_string(receipt)?;
        self.sql.exec(
            "INSERT OR IGNORE INTO run_receipts (seq, body) VALUES (?, ?)",
            vec![int(receipt.seq as i64), body.clone().into()],
        )?;
        self.append_event("receipt", &body)
    }

    /// Records a lifecycle step in `runnerReceipts` and as a `runner` event.
    fn runner_step(&self, run_id: &str, event: RunnerEvent) -> Result<(), ApiError> {
        let mut list = Vec::new();
        record(&self.sql, run_id, &mut list, event);
        for receipt in list {
            self.append_event("runner", &serde_json::to_string(&receipt)?)?;
        }
        Ok(())
    }

    /// The run as the API shows it (the contract body of `POST /api/runs`).
    fn body(&self, row: &RunRow) -> Result<Value, ApiError> {
        let spec = row.spec()?;
        let artifact: Value = match &row.artifact {
            Some(text) => serde_json::from_str(text)?,
            None => Value::Null,
        };
        let status = row.status();
        Ok(json!({
            "runId": row.id,
            "ok": if status.is_terminal() { json!(row.ok.unwrap_or(0.0) != 0.0) } else { Value::Null },
            "status": status,
            "repo": spec.repo,
            "ref": spec.git_ref,
            "createdAt": time::rfc3339(row.created_ms as i64),
            "finishedAt": row.finished_ms.map(|ms| time::rfc3339(ms as i64)),
            "containerMs": row.container_ms.map(|ms| ms as u64),
            "receipts": self.receipts()?,
            "runnerReceipts": self.runner_receipts(&row.id)?,
            "artifact": artifact,
            "diff": row.diff,
        }))
    }

    /// Ends the run (once): the `exit` runner receipt, the container's
    /// release, the D1 index row (with the container time, for metering),
    /// the settle, and last the terminal status with its `result` event — so
    /// whoever sees the run ended sees all of it done.
    async fn finalize(
        &self,
        status: RunStatus,
        ok: bool,
        result: Option<&RunResult>,
    ) -> Result<(), ApiError> {
        let Some(row) = self.load()? else {
            return Ok(());
        };
        if row.status().is_terminal() {
            return Ok(());
        }
        let result = match result {
            Some(r) => worker::SqlStorageValue::String(serde_json::to_string(r)?),
            None => worker::SqlStorageValue::Null,
        };
        // Kept before any await; a later ending does not replace it.
        self.sql.exec(
            "INSERT OR IGNORE INTO run_ending (id, status, ok, result, ended_ms) VALUES (1, ?, ?, ?, ?)",
            vec![
                status.as_str().into(),
                int(ok as i64),
                result,
                int(time::now_ms()),
            ],
        )?;
        self.finish_ending().await
    }

    /// How the run ended, once that is decided.
    fn ending(&self) -> Result<Option<Ending>, ApiError> {
        let rows: Vec<Ending> = self
            .sql
            .exec("SELECT status, ok, result, ended_ms FROM run_ending", None)?
            .to_array()?;
        Ok(rows.into_iter().next())
    }

    /// Carries out the recorded ending, unless the run is already over or
    /// this instance is already at it.
    async fn finish_ending(&self) -> Result<(), ApiError> {
        let (Some(row), Some(ending)) = (self.load()?, self.ending()?) else {
            return Ok(());
        };
        if row.status().is_terminal() || self.live.finalizing.replace(true) {
            return Ok(());
        }
        let status = RunStatus::parse(&ending.status).unwrap_or(RunStatus::ContainerLost);
        let result: Option<RunResult> = match &ending.result {
            Some(text) => Some(serde_json::from_str(text)?),
            None => None,
        };
        let ended = self
            .finalize_once(
                &row,
                status,
                ending.ok != 0.0,
                result.as_ref(),
                ending.ended_ms as i64,
            )
            .await;
        self.live.finalizing.set(false);
        ended
    }

    async fn finalize_once(
        &self,
        row: &RunRow,
        status: RunStatus,
        ok: bool,
        result: Option<&RunResult>,
        now: i64,
    ) -> Result<(), ApiError> {
        let container_ms = result
            .map(|r| r.container_ms as i64)
            .unwrap_or_else(|| (now - row.created_ms as i64).max(0));
        self.runner_step(
            &row.id,
            RunnerEvent::Exit {
                reason: status.as_str().to_string(),
            },
        )?;
        // A finished run's container is not left idle.
        let mut released = Vec::new();
        crate::runner::link::release(
            &self.sql,
            &self.link,
            &row.id,
            "the run ended",
            &mut released,
        )
        .await;
        for receipt in released {
            self.append_event("runner", &serde_json::to_string(&receipt)?)?;
        }
        let db = self.env.d1("DB")?;
        let updated = db
            .prepare(
                "UPDATE runs SET status = ?1, ok = ?2, container_ms = ?3, finished_at = ?4, updated_at = ?4 WHERE id = ?5",
            )
            .bind(&[
                status.as_str().into(),
                (ok as i32).into(),
                (container_ms as f64).into(),
                (now as f64).into(),
                row.id.as_str().into(),
            ])?
            .run()
            .await;
        if let Err(err) = updated {
            worker::console_error!("runs: D1 update of {}: {err}", row.id);
        }
        // A failure here is retried by the watchdog (the hold, if any, is
        // released by the sweep past its expiry at the latest).
        if let Err(err) = self
            .settle_billing(&row.id, &row.account_id, container_ms)
            .await
        {
            worker::console_error!("runs: billing of {}: {err}", row.id);
        }
        let artifact = match result.and_then(|r| r.artifact.as_ref()) {
            Some(a) => worker::SqlStorageValue::String(serde_json::to_string(a)?),
            None => worker::SqlStorageValue::Null,
        };
        let diff = match result.and_then(|r| r.diff.clone()) {
            Some(d) => worker::SqlStorageValue::String(d),
            None => worker::SqlStorageValue::Null,
        };
        self.sql.exec(
            "UPDATE run SET status = ?, ok = ?, finished_ms = ?, container_ms = ?, artifact = ?, diff = ?",
            vec![
                status.as_str().into(),
                int(ok as i64),
                int(now),
                int(container_ms),
                artifact,
                diff,
            ],
        )?;
        if let Some(row) = self.load()? {
            let body = self.body(&row)?.to_string();
            self.append_event("result", &body)?;
            let status = if ok { 200 } else { 422 };
            if let Err(err) = self.record_idempotency(&row, status, &body).await {
                worker::console_error!("runs: idempotency record of {}: {err}", row.id);
            }
        }
        Ok(())
    }

    /// Records the run's answer for the `Idempotency-Key` that started it.
    async fn record_idempotency(
        &self,
        row: &RunRow,
        status: u16,
        body: &str,
    ) -> Result<(), ApiError> {
        #[derive(Deserialize)]
        struct Claim {
            key: String,
            claimed_at: f64,
        }
        let claims: Vec<Claim> = self
            .sql
            .exec("SELECT key, claimed_at FROM run_idempotency", None)?
            .to_array()?;
        let Some(claim) = claims.into_iter().next() else {
            return Ok(());
        };
        let slot = Slot {
            account_id: row.account_id.clone(),
            scope: spec::IDEMPOTENCY_SCOPE,
            key: claim.key,
        };
        let db = self.env.d1("DB")?;
        idempotency_d1::record_outcome(&db, &slot, claim.claimed_at as i64, status, body).await
    }

    /// Settles the run's billing once (container time × price, the rest of
    /// the hold released); nothing to do once settled.
    async fn settle_billing(
        &self,
        run_id: &str,
        account_id: &str,
        container_ms: i64,
    ) -> Result<(), ApiError> {
        #[derive(Deserialize)]
        struct Row {
            key_id: String,
            billing: String,
        }
        let rows: Vec<Row> = self
            .sql
            .exec(
                "SELECT key_id, billing FROM run_billing WHERE settled = 0 LIMIT 1",
                None,
            )?
            .to_array()?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(());
        };
        let billing: RunBilling = serde_json::from_str(&row.billing)?;
        let db = self.env.d1("DB")?;
        crate::runs::billing_d1::settle(
            &db,
            account_id,
            &row.key_id,
            run_id,
            &billing,
            container_ms,
            time::now_ms(),
        )
        .await?;
        self.sql.exec("UPDATE run_billing SET settled = 1", None)?;
        Ok(())
    }

    /// Ends a run the runner cannot end itself: a `cancel` receipt saying
    /// why, continuing the chain, then `finalize`.
    async fn end_by_do(&self, status: RunStatus, reason: String) -> Result<(), ApiError> {
        let Some(row) = self.load()? else {
            return Ok(());
        };
        if row.status().is_terminal() {
            return Ok(());
        }
        if self.ending()?.is_some() {
            // It has already ended (its end is under way): no receipt after it.
            return self.finish_ending().await;
        }
        let receipts = self.receipts()?;
        let mut chain = Chain::after(receipts.last());
        let receipt = chain.append(Step {
            kind: ReceiptKind::Cancel,
            cmd: status.as_str().to_string(),
            exit_code: None,
            signal: None,
            stdout: String::new(),
            stderr: reason,
            truncated: false,
            timed_out: status == RunStatus::TimedOut,
            started_ms: time::now_ms(),
            duration_ms: 0,
        });
        self.store_receipt(&receipt)?;
        self.finalize(status, false, None).await
    }

    async fn wait_terminal(&self, limit_ms: Option<i64>) -> Result<RunRow, ApiError> {
        wait_until(
            &self.live,
            limit_ms,
            || self.load()?.ok_or(ApiError::RunNotFound),
            |row| row.status().is_terminal(),
        )
        .await
    }

    async fn cancel_on_runner(&self, run_id: &str) -> Result<u16, String> {
        crate::runner::link::cancel_on_runner(&self.link, &format!("/runs/{run_id}/cancel")).await
    }
}

// ---------------------------------------------------------------------------
// The pump: runner stream → storage.

struct PumpGuard(Rc<Live>);
impl Drop for PumpGuard {
    fn drop(&mut self) {
        self.0.pumping.set(false);
    }
}

/// Consumes the runner's events until the run ends. Only one pump runs per
/// DO instance at a time.
async fn pump(ctx: RunCtx) {
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
        return ctx.finish_ending().await;
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
        ctx.sql
            .exec("UPDATE run SET dispatched = 1, status = 'running'", None)?;
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
                ctx.finish_ending().await?;
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
        ctx.sql
            .exec("UPDATE run SET runner_seq = ?", vec![int(event.seq as i64)])?;
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

/// The alarm: restarts a pump lost with an evicted instance, ends a run
/// past its deadline, and re-arms itself until the run is over.
pub async fn watchdog(ctx: RunCtx, state: &State) {
    let row = match ctx.load() {
        Ok(Some(row)) => row,
        _ => return,
    };
    if row.status().is_terminal() {
        // The run is over: its container must be gone (a destroy that
        // failed is tried again), and its billing may still need settling.
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
                let _ = state.storage().set_alarm(WATCHDOG_MS as i64).await;
            }
        }
        let container_ms = row.container_ms.unwrap_or(0.0) as i64;
        if let Err(err) = ctx
            .settle_billing(&row.id, &row.account_id, container_ms)
            .await
        {
            worker::console_error!("runs watchdog: billing of {}: {err}", row.id);
            let _ = state.storage().set_alarm(WATCHDOG_MS as i64).await;
        }
        return;
    }
    if let Err(err) = state.storage().set_alarm(WATCHDOG_MS as i64).await {
        worker::console_error!("runs watchdog: cannot re-arm: {err}");
    }
    if matches!(ctx.ending(), Ok(Some(_))) {
        // An end cut short (the instance was evicted on the way).
        if let Err(err) = ctx.finish_ending().await {
            worker::console_error!("runs watchdog: ending {}: {err}", row.id);
        }
        return;
    }
    if time::now_ms() > row.deadline_ms as i64 {
        let _ = ctx.cancel_on_runner(&row.id).await;
        let _ = ctx
            .end_by_do(
                RunStatus::TimedOut,
                "timed_out: the run passed its time limit".into(),
            )
            .await;
        return;
    }
    if !ctx.live.pumping.get() {
        pump(ctx).await;
    }
}

// ---------------------------------------------------------------------------
// Handlers.

pub async fn handle(ctx: RunCtx, state: &State, mut req: Request) -> Result<Response, ApiError> {
    let path = req.path();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let account = req
        .headers()
        .get("x-cloudbox-account")?
        .ok_or_else(|| ApiError::Internal("no account header".into()))?;
    let url = req.url()?;
    let query = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    match (req.method(), parts.as_slice()) {
        (Method::Post, ["runs", id, "start"]) => {
            let body: StartBody = serde_json::from_slice(&req.bytes().await?)?;
            if body.account_id != account || body.spec.run_id != *id {
                return Err(ApiError::Internal("start: account or id mismatch".into()));
            }
            start(ctx, state, body, query("respond").as_deref()).await
        }
        (Method::Get, ["runs", _]) => {
            let row = ctx.owned(&account)?;
            http::json(200, &ctx.body(&row)?)
        }
        (Method::Get, ["runs", _, "events"]) => {
            ctx.owned(&account)?;
            let after = parse_last_event_id(query("after").as_deref());
            sse_response(ctx, after)
        }
        (Method::Get, ["runs", _, "verify"]) => {
            ctx.owned(&account)?;
            let check = verify_chain(&ctx.receipts()?);
            http::json(200, &check)
        }
        (Method::Post, ["runs", _, "cancel"]) => {
            let row = ctx.owned(&account)?;
            if row.status().is_terminal() {
                return Err(ApiError::RunNotRunning);
            }
            let row = cancel(&ctx, &row).await?;
            http::json(200, &ctx.body(&row)?)
        }
        (Method::Delete, ["runs", id]) => {
            let row = ctx.owned(&account)?;
            if !row.status().is_terminal() {
                cancel(&ctx, &row).await?;
            }
            for stmt in [
                "DELETE FROM run_ending",
                "DELETE FROM run_billing",
                "DELETE FROM run_idempotency",
                "DELETE FROM run_events",
                "DELETE FROM run_receipts",
                "DELETE FROM run",
            ] {
                ctx.sql.exec(stmt, None)?;
            }
            ctx.sql.exec(
                "DELETE FROM runner_receipts WHERE op = ?",
                vec![(*id).into()],
            )?;
            let _ = state.storage().delete_alarm().await;
            ctx.env
                .d1("DB")?
                .prepare("DELETE FROM runs WHERE id = ?1 AND account_id = ?2")
                .bind(&[(*id).into(), account.as_str().into()])?
                .run()
                .await?;
            http::json(200, &json!({"runId": id, "deleted": true}))
        }
        _ => Err(ApiError::NotFound),
    }
}

async fn start(
    ctx: RunCtx,
    state: &State,
    body: StartBody,
    respond: Option<&str>,
) -> Result<Response, ApiError> {
    if ctx.load()?.is_some() {
        return Err(ApiError::Internal("run id reused".into()));
    }
    let spec = &body.spec;
    // A container first: when none can be had, the caller gets 503
    // `runner_unavailable` and nothing exists (the Worker gives the hold back).
    let mut ready = Vec::new();
    if let Err(why) = ensure_ready(&ctx.sql, &ctx.link, &spec.run_id, &mut ready).await {
        crate::runner::link::abandon(&ctx.sql, &ctx.link, &spec.run_id, "it never became ready")
            .await;
        return Err(ApiError::RunnerUnavailable(why));
    }
    ctx.live.runner_ready.set(true);
    let now = time::now_ms();
    // The index row first: if D1 fails, nothing exists yet (and the
    // container goes).
    let indexed = async {
        ctx.env
            .d1("DB")?
            .prepare(
                "INSERT INTO runs (id, account_id, key_id, repo, git_ref, status, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?6)",
            )
            .bind(&[
                spec.run_id.as_str().into(),
                body.account_id.as_str().into(),
                body.key_id.as_str().into(),
                spec.repo.as_str().into(),
                spec.git_ref.as_deref().map(Into::into).unwrap_or(worker::wasm_bindgen::JsValue::NULL),
                (now as f64).into(),
            ])?
            .run()
            .await?;
        Ok::<(), ApiError>(())
    }
    .await;
    if let Err(err) = indexed {
        crate::runner::link::abandon(&ctx.sql, &ctx.link, &spec.run_id, "the run was not created")
            .await;
        return Err(err);
    }
    ctx.sql.exec(
        "INSERT INTO run (id, account_id, spec, status, created_ms, deadline_ms) VALUES (?, ?, ?, 'queued', ?, ?)",
        vec![
            spec.run_id.as_str().into(),
            body.account_id.as_str().into(),
            serde_json::to_string(spec)?.into(),
            int(now),
            int(now + body.deadline_ms as i64),
        ],
    )?;
    if let Some((key, claimed_at)) = &body.idempotency {
        ctx.sql.exec(
            "INSERT INTO run_idempotency (key, claimed_at) VALUES (?, ?)",
            vec![key.as_str().into(), int(*claimed_at)],
        )?;
    }
    if let Some(billing) = &body.billing {
        ctx.sql.exec(
            "INSERT INTO run_billing (key_id, billing) VALUES (?, ?)",
            vec![
                body.key_id.as_str().into(),
                serde_json::to_string(billing)?.into(),
            ],
        )?;
    }
    for receipt in &ready {
        ctx.append_event("runner", &serde_json::to_string(receipt)?)?;
    }
    state.storage().set_alarm(WATCHDOG_MS as i64).await?;
    worker::wasm_bindgen_futures::spawn_local(pump(ctx.clone()));
    let mut resp = match respond {
        Some("events") => sse_response(ctx, 0)?,
        _ => {
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
    ctx.sql.exec("UPDATE run SET cancel_requested = 1", None)?;
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

/// The run's events.
struct RunLog(RunCtx);

impl EventLog for RunLog {
    fn events_after(&self, after: u64) -> Vec<EventRow> {
        self.0
            .sql
            .exec(
                "SELECT seq, kind, data FROM run_events WHERE seq > ? ORDER BY seq LIMIT 200",
                vec![int(after as i64)],
            )
            .and_then(|c| c.to_array())
            .unwrap_or_default()
    }

    fn finished(&self) -> bool {
        match self.0.load() {
            Ok(Some(row)) => row.status().is_terminal(),
            _ => true,
        }
    }

    fn live(&self) -> &Rc<Live> {
        &self.0.live
    }
}

/// The run's events after `after` as SSE, live until the `result` event.
fn sse_response(ctx: RunCtx, after: u64) -> Result<Response, ApiError> {
    let env = ctx.env.clone();
    sse::response(RunLog(ctx), &env, after)
}
