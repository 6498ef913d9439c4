//! Workspace executes (`/execute`) inside the workspace's CloudboxRunner DO
//! (one DO per account and workspace, so two executes never race on a tree).
//!
//! Executes queue in this DO's SQLite and a *driver* (spawned, so it
//! outlives the client) runs them one at a time:
//! 1. the runner is made ready; the workspace's current manifest and its
//!    agent session (files in R2) are read;
//! 2. sync in: the runner answers which blobs its cache lacks, the DO
//!    streams just those from R2;
//! 3. `POST /tasks`; its NDJSON events (metered `usage`, the `exec`
//!    receipt, the final `task`) are stored as they arrive, and the stream is
//!    resumed after the last stored event if the connection breaks;
//! 4. sync out: only the blobs the account lacks are pulled into R2, then
//!    the new version is committed in one guarded step (replayed onto a
//!    version someone committed meanwhile). A task that is not ok commits
//!    nothing;
//! 5. the hold is settled once: the metered cost, never more than the hold.
//!
//! Internal routes (the Worker is the only caller and passes the caller's
//! account in `x-cloudbox-account`):
//! `POST /executions/:id/start?respond=result|events`,
//! `POST /executions/:id/cancel`.

use std::rc::Rc;
use std::time::Duration;

use futures_util::future::{select, Either};
use serde::Deserialize;
use worker::wasm_bindgen::JsValue;
use worker::{Delay, Env, Method, Request, Response, SqlStorage, SqlStorageValue, State};

use crate::api::auth::Caller;
use crate::api::error::{ApiError, FieldError};
use crate::api::idempotency::Slot;
use crate::api::idempotency_d1;
use crate::billing::ledger_d1::{self, BillingVars, HoldTicket};
use crate::billing::ledger_sql::Usage;
use crate::billing::rules::{self, Pricing};
use crate::executes::agent_events::TokenUsage;
use crate::executes::execution::{
    self, BillingBody, ExecStart, ExecStatus, ExecutionBody, UsageBody, MAX_QUEUED,
    MAX_QUEUE_WAIT_MS, STUCK_AFTER_MS, SYNC_LIMIT_MS, WATCHDOG_MS,
};
use crate::keys::api_key::KeyType;
use crate::platform::config::AgentVars;
use crate::runner::follow::{self, Followed, Stop};
use crate::runner::lifecycle::{idle_release_due, RunnerEvent, RunnerReceipt};
use crate::runner::link::{ensure_ready, record, send, send_body, Link};
use crate::runner::live::{wait_until, Live};
use crate::runner::sse::{self, EventLog, EventRow};
use crate::wire::receipts::Receipt;
use crate::wire::{BlobList, RunEvent, TaskResult, TaskStart, WireEvent};
use crate::workspaces::manifest::{self, FileEntry, Manifest};
use crate::{common::time, platform::http, workspaces::store};

/// Finished executes kept per workspace (with their events).
const KEEP_FINISHED: i64 = 50;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS executions (
        id TEXT PRIMARY KEY,
        queue_seq INTEGER NOT NULL,
        start TEXT NOT NULL,
        status TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        started_ms INTEGER,
        finished_ms INTEGER,
        dispatched INTEGER NOT NULL DEFAULT 0,
        runner_seq INTEGER NOT NULL DEFAULT 0,
        base_version INTEGER,
        session_id TEXT,
        usage TEXT,
        task_result TEXT,
        body TEXT,
        settled INTEGER NOT NULL DEFAULT 0
    )",
    "CREATE TABLE IF NOT EXISTS execution_events (
        exec_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (exec_id, seq)
    )",
];

pub fn init_schema(sql: &SqlStorage) {
    for stmt in SCHEMA {
        if let Err(err) = sql.exec(stmt, None) {
            worker::console_error!("executions schema: {err}");
        }
    }
}

fn int(v: i64) -> SqlStorageValue {
    SqlStorageValue::Integer(v)
}

/// Everything the handlers, the driver and the streams need; cheap to clone.
#[derive(Clone)]
pub struct ExecCtx {
    pub sql: SqlStorage,
    pub env: Env,
    pub link: Rc<Link>,
    pub live: Rc<Live>,
}

#[derive(Debug, Clone, Deserialize)]
struct ExecRow {
    id: String,
    start: String,
    status: String,
    created_ms: f64,
    started_ms: Option<f64>,
    dispatched: f64,
    runner_seq: f64,
    base_version: Option<f64>,
    session_id: Option<String>,
    usage: Option<String>,
    task_result: Option<String>,
    body: Option<String>,
    settled: f64,
}

impl ExecRow {
    fn status(&self) -> ExecStatus {
        ExecStatus::parse(&self.status).unwrap_or(ExecStatus::Failed)
    }
    fn start(&self) -> Result<ExecStart, ApiError> {
        Ok(serde_json::from_str(&self.start)?)
    }
    fn usage(&self) -> TokenUsage {
        self.usage
            .as_deref()
            .and_then(|u| serde_json::from_str(u).ok())
            .unwrap_or_default()
    }
    fn body(&self) -> Result<Option<ExecutionBody>, ApiError> {
        match &self.body {
            Some(text) => Ok(Some(serde_json::from_str(text)?)),
            None => Ok(None),
        }
    }
}

/// How an execute ends.
struct Ending {
    status: ExecStatus,
    detail: Option<String>,
    usage: TokenUsage,
    output: String,
    saved: Option<Saved>,
}

impl Ending {
    fn without_work(status: ExecStatus, detail: impl Into<String>, usage: TokenUsage) -> Self {
        Ending {
            status,
            detail: Some(detail.into()),
            usage,
            output: String::new(),
            saved: None,
        }
    }
}

impl Ending {
    /// A queued execute that waited too long: failed, nothing ran.
    fn queue_expired() -> Self {
        let why = "it waited over 30 minutes behind other executes of this workspace";
        Ending::without_work(ExecStatus::Failed, why, TokenUsage::default())
    }
}

fn waited_too_long(row: &ExecRow, now: i64) -> bool {
    now - row.created_ms as i64 > MAX_QUEUE_WAIT_MS
}

/// What a successful task left in the workspace.
struct Saved {
    version: u64,
    changed_files: Vec<String>,
    session_id: Option<String>,
}

impl ExecCtx {
    fn load(&self, id: &str) -> Result<Option<ExecRow>, ApiError> {
        let rows: Vec<ExecRow> = self
            .sql
            .exec("SELECT * FROM executions WHERE id = ?", vec![id.into()])?
            .to_array()?;
        Ok(rows.into_iter().next())
    }

    fn get(&self, id: &str) -> Result<ExecRow, ApiError> {
        self.load(id)?.ok_or(ApiError::RunNotFound)
    }

    /// The execute, if it belongs to `account`; else 404 as if absent.
    fn owned(&self, id: &str, account: &str) -> Result<ExecRow, ApiError> {
        let row = self.get(id)?;
        if row.start()?.account_id == account {
            Ok(row)
        } else {
            Err(ApiError::RunNotFound)
        }
    }

    /// The oldest execute not yet ended.
    fn next_open(&self) -> Result<Option<ExecRow>, ApiError> {
        let rows: Vec<ExecRow> = self
            .sql
            .exec(
                "SELECT * FROM executions WHERE status IN ('queued', 'running', 'saving') \
                 ORDER BY queue_seq LIMIT 1",
                None,
            )?
            .to_array()?;
        Ok(rows.into_iter().next())
    }

    fn open_count(&self) -> Result<usize, ApiError> {
        #[derive(Deserialize)]
        struct Count {
            n: f64,
        }
        let rows: Vec<Count> = self
            .sql
            .exec(
                "SELECT COUNT(*) AS n FROM executions \
                 WHERE status IN ('queued', 'running', 'saving')",
                None,
            )?
            .to_array()?;
        Ok(rows.first().map(|c| c.n as usize).unwrap_or(0))
    }

    fn append_event(&self, id: &str, kind: &str, data: &str) -> Result<(), ApiError> {
        self.sql.exec(
            "INSERT INTO execution_events (exec_id, seq, kind, data) VALUES (?, \
             (SELECT COALESCE(MAX(seq), 0) + 1 FROM execution_events WHERE exec_id = ?), ?, ?)",
            vec![id.into(), id.into(), kind.into(), data.into()],
        )?;
        self.live.notify();
        Ok(())
    }

    /// Records a lifecycle step in `runnerReceipts` and as a `runner` event.
    fn runner_step(&self, id: &str, event: RunnerEvent) -> Result<(), ApiError> {
        let mut list = Vec::new();
        record(&self.sql, id, &mut list, event);
        for receipt in list {
            self.append_event(id, "runner", &serde_json::to_string(&receipt)?)?;
        }
        Ok(())
    }

    fn runner_receipts(&self, id: &str) -> Result<Vec<RunnerReceipt>, ApiError> {
        crate::runner::link::runner_receipts(&self.sql, id)
    }

    fn receipts(&self, id: &str) -> Result<Vec<Receipt>, ApiError> {
        #[derive(Deserialize)]
        struct Row {
            data: String,
        }
        let rows: Vec<Row> = self
            .sql
            .exec(
                "SELECT data FROM execution_events WHERE exec_id = ? AND kind = 'receipt' \
                 ORDER BY seq",
                vec![id.into()],
            )?
            .to_array()?;
        rows.iter()
            .map(|r| serde_json::from_str(&r.data).map_err(ApiError::from))
            .collect()
    }

    fn is_terminal(&self, id: &str) -> bool {
        self.load(id)
            .ok()
            .flatten()
            .is_none_or(|row| row.status().is_terminal())
    }

    /// Waits until the execute has its final body (or `limit_ms` pass).
    async fn wait_finished(&self, id: &str, limit_ms: Option<i64>) -> Result<ExecRow, ApiError> {
        wait_until(
            &self.live,
            limit_ms,
            || self.get(id),
            |row| row.body.is_some(),
        )
        .await
    }

    async fn cancel_on_runner(&self, id: &str) -> Result<u16, String> {
        crate::runner::link::cancel_on_runner(&self.link, &format!("/tasks/{id}/cancel")).await
    }

    /// Ends the execute (once). The status is set first, synchronously, so
    /// nothing else starts or ends it meanwhile; then the hold is settled
    /// and the body stored. Waiters wait for the body.
    async fn end(&self, id: &str, ending: Ending) -> Result<(), ApiError> {
        let Some(row) = self.load(id)? else {
            return Ok(());
        };
        if row.status().is_terminal() {
            return Ok(());
        }
        self.sql.exec(
            "UPDATE executions SET status = ?, finished_ms = ? WHERE id = ?",
            vec![
                ending.status.as_str().into(),
                int(time::now_ms()),
                id.into(),
            ],
        )?;
        self.finish_end_once(row, ending).await
    }

    /// `finish_end` unless one is already in progress here for this execute
    /// (the watchdog must not run a second one beside a slow first).
    async fn finish_end_once(&self, row: ExecRow, ending: Ending) -> Result<(), ApiError> {
        let id = row.id.clone();
        if !self.live.ending.borrow_mut().insert(id.clone()) {
            return Ok(());
        }
        let result = self.finish_end(row, ending).await;
        self.live.ending.borrow_mut().remove(&id);
        result
    }

    /// Charges the metered usage against the hold (never more than it) and
    /// releases the rest; for internal keys, records the usage.
    async fn settle(
        &self,
        start: &ExecStart,
        id: &str,
        usage: &TokenUsage,
    ) -> Result<(), ApiError> {
        let pricing = BillingVars::from_env(&self.env).pricing;
        let (cost, _) = execution::charge_micros(&pricing, usage, None);
        let caller = Caller {
            key_id: start.key_id.clone(),
            account_id: start.account_id.clone(),
            key_type: KeyType::parse(&start.key_type).unwrap_or(KeyType::Standard),
            permissions: Vec::new(),
        };
        let hold = start.hold_id.as_ref().map(|hold_id| HoldTicket {
            hold_id: hold_id.clone(),
            amount_micros: start.hold_micros,
            expires_at_ms: start.hold_expires_ms,
        });
        let usage = Usage {
            input_tokens: usage.input_tokens as i64,
            output_tokens: usage.output_tokens as i64,
            cost_micros: cost,
        };
        let db = self.env.d1("DB")?;
        ledger_d1::finish_run(&db, &caller, hold.as_ref(), id, usage, time::now_ms()).await?;
        Ok(())
    }

    /// The second half of `end`: billing, body, `result` event, D1 index.
    async fn finish_end(&self, row: ExecRow, ending: Ending) -> Result<(), ApiError> {
        let id = row.id.as_str();
        let start = row.start()?;
        let now = time::now_ms();
        let vars = BillingVars::from_env(&self.env);
        let (cost, _) = execution::charge_micros(&vars.pricing, &ending.usage, None);
        let db = self.env.d1("DB")?;
        let key_type = KeyType::parse(&start.key_type).unwrap_or(KeyType::Standard);
        let mut billing_body = None;
        let settled = match self.settle(&start, id, &ending.usage).await {
            Ok(()) => true,
            // The watchdog retries; the sweep releases the hold at the latest.
            Err(err) => {
                worker::console_error!("execute {id}: settling: {err}");
                false
            }
        };
        if settled && key_type == KeyType::Standard {
            match ledger_d1::budget_of_key(&db, &start.key_id, now).await {
                Ok(Some(budget)) => {
                    billing_body = Some(BillingBody {
                        balance_after: rules::micros_to_usd(budget.balance_micros),
                        total_spent: rules::micros_to_usd(budget.total_spent_micros),
                    })
                }
                Ok(None) => {}
                Err(err) => worker::console_error!("execute {id}: balance after: {err}"),
            }
        }
        let (version, changed_files, session_id) = match ending.saved {
            Some(saved) => (saved.version, saved.changed_files, saved.session_id),
            None => {
                let ws = store::get_row(&db, &start.account_id, &start.workspace_id)
                    .await
                    .ok()
                    .flatten();
                let version = ws
                    .as_ref()
                    .map(|w| w.version as u64)
                    .or(row.base_version.map(|v| v as u64))
                    .unwrap_or(0);
                let session = row
                    .session_id
                    .clone()
                    .or_else(|| ws.and_then(|w| w.session_id));
                (version, Vec::new(), session)
            }
        };
        let failure = execution::failure(ending.status, ending.detail.as_deref());
        let body = ExecutionBody {
            error: failure.as_ref().map(|f| f.0.clone()),
            message: failure.map(|f| f.1),
            ok: ending.status == ExecStatus::Succeeded,
            status: ending.status,
            output: ending.output,
            run_id: id.to_string(),
            session_id,
            workspace_id: start.workspace_id.clone(),
            version,
            changed_files,
            usage: UsageBody::new(&ending.usage, cost),
            billing: billing_body,
            receipts: self.receipts(id)?,
            runner_receipts: self.runner_receipts(id)?,
        };
        let text = serde_json::to_string(&body)?;
        // Checked and written with no await between: one body, one result.
        if self.get(id)?.body.is_some() {
            return Ok(());
        }
        self.sql.exec(
            "UPDATE executions SET body = ?, usage = ?, settled = ? WHERE id = ?",
            vec![
                text.clone().into(),
                serde_json::to_string(&ending.usage)?.into(),
                int(settled as i64),
                id.into(),
            ],
        )?;
        self.runner_step(
            id,
            RunnerEvent::Exit {
                reason: ending.status.as_str().to_string(),
            },
        )?;
        self.append_event(id, "result", &text)?;
        if let Some((key, claimed_at)) = &start.idempotency {
            let slot = Slot {
                account_id: start.account_id.clone(),
                scope: execution::IDEMPOTENCY_SCOPE,
                key: key.clone(),
            };
            let recorded =
                idempotency_d1::record_outcome(&db, &slot, *claimed_at, body.http_status(), &text)
                    .await;
            if let Err(err) = recorded {
                worker::console_error!("execute {id}: idempotency record: {err}");
            }
        }
        let indexed = db
            .prepare(
                "UPDATE executions SET status = ?1, input_tokens = ?2, output_tokens = ?3, \
                 cost_micros = ?4, version = ?5, finished_at = ?6, updated_at = ?6 WHERE id = ?7",
            )
            .bind(&[
                ending.status.as_str().into(),
                (ending.usage.input_tokens as f64).into(),
                (ending.usage.output_tokens as f64).into(),
                (cost as f64).into(),
                (body.version as f64).into(),
                (now as f64).into(),
                id.into(),
            ])?
            .run()
            .await;
        if let Err(err) = indexed {
            worker::console_error!("execute {id}: D1 index: {err}");
        }
        self.prune()
    }

    /// Forgets all but the last `KEEP_FINISHED` finished executes.
    fn prune(&self) -> Result<(), ApiError> {
        let old = "SELECT id FROM executions WHERE body IS NOT NULL \
                   ORDER BY queue_seq DESC LIMIT -1 OFFSET ?";
        self.sql.exec(
            &format!("DELETE FROM execution_events WHERE exec_id IN ({old})"),
            vec![int(KEEP_FINISHED)],
        )?;
        self.sql.exec(
            &format!("DELETE FROM runner_receipts WHERE op IN ({old})"),
            vec![int(KEEP_FINISHED)],
        )?;
        self.sql.exec(
            &format!("DELETE FROM executions WHERE id IN ({old})"),
            vec![int(KEEP_FINISHED)],
        )?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The driver: runs the queue, one execute at a time.

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

async fn drive(ctx: ExecCtx) {
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
                    let _ = ctx.sql.exec(
                        "UPDATE executions SET status = 'failed' WHERE id = ?",
                        vec![id.as_str().into()],
                    );
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
        if waited_too_long(&row, now) {
            return ctx.end(&id, Ending::queue_expired()).await;
        }
        ctx.sql.exec(
            "UPDATE executions SET status = 'running', started_ms = ? WHERE id = ?",
            vec![int(now), id.as_str().into()],
        )?;
        let _ = ctx
            .env
            .d1("DB")?
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
        pricing: BillingVars::from_env(&ctx.env).pricing,
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
    let db = store::db(&ctx.env)?;
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
    ctx.sql.exec(
        "UPDATE executions SET base_version = ?, session_id = ? WHERE id = ?",
        vec![
            int(manifest.version as i64),
            session_id
                .clone()
                .map(SqlStorageValue::String)
                .unwrap_or(SqlStorageValue::Null),
            id.into(),
        ],
    )?;
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
    let agent = AgentVars::from_env(&ctx.env);
    let pricing = BillingVars::from_env(&ctx.env).pricing;
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
    ctx.sql.exec(
        "UPDATE executions SET dispatched = 1 WHERE id = ?",
        vec![id.into()],
    )?;
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
                let why = refusal(resp).await;
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

async fn refusal(mut resp: Response) -> String {
    let status = resp.status_code();
    let text = resp.text().await.unwrap_or_default();
    format!("{status} {}", text.chars().take(500).collect::<String>())
}

/// The manifest of `version` (0: the empty one).
async fn read_manifest_at(
    env: &Env,
    account: &str,
    workspace_id: &str,
    version: u64,
) -> Result<Manifest, ApiError> {
    if version == 0 {
        return Ok(Manifest::empty());
    }
    store::read_manifest(env, account, workspace_id, Some(version)).await
}

/// Streams to the runner only the blobs its cache lacks.
async fn sync_in(
    ctx: &ExecCtx,
    account: &str,
    files: &[FileEntry],
    session: &[FileEntry],
) -> Result<(), String> {
    let all: Vec<FileEntry> = files.iter().chain(session).cloned().collect();
    let wanted = manifest::unique_blobs(&all);
    if wanted.is_empty() {
        return Ok(());
    }
    let list = serde_json::to_string(&BlobList { sha256: wanted }).map_err(|e| e.to_string())?;
    let mut resp = send(
        &ctx.link,
        Method::Post,
        "/blobs/missing",
        Some(list),
        30_000,
    )
    .await?;
    if resp.status_code() != 200 {
        return Err(format!("/blobs/missing answered {}", resp.status_code()));
    }
    let missing: BlobList = resp.json().await.map_err(|e| e.to_string())?;
    for sha in &missing.sha256 {
        let object = store::get_blob(&ctx.env, account, sha)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("blob {sha} is missing from storage"))?;
        let body = object
            .body()
            .ok_or_else(|| format!("blob {sha} has no body"))?
            .response_body()
            .map_err(|e| e.to_string())?;
        let body: JsValue = match body {
            worker::ResponseBody::Stream(stream) => stream.into(),
            worker::ResponseBody::Body(bytes) => {
                worker::js_sys::Uint8Array::from(bytes.as_slice()).into()
            }
            worker::ResponseBody::Empty => worker::js_sys::Uint8Array::new_with_length(0).into(),
        };
        let resp = send_body(
            &ctx.link,
            Method::Put,
            &format!("/blobs/{sha}"),
            Some((body, "application/octet-stream")),
            120_000,
        )
        .await?;
        if ![200, 201].contains(&resp.status_code()) {
            return Err(format!("PUT /blobs/{sha}: {}", refusal(resp).await));
        }
    }
    Ok(())
}

/// One execute as the follower sees it.
struct ExecJob<'a> {
    ctx: &'a ExecCtx,
    id: &'a str,
    start: &'a ExecStart,
    pricing: Pricing,
}

impl follow::Job for ExecJob<'_> {
    type Result = TaskResult;
    const NOUN: &'static str = "task";

    fn events_path(&self, after: u64) -> String {
        format!("/tasks/{}/events?after={after}", self.id)
    }

    fn stored_seq(&self) -> Result<u64, ApiError> {
        Ok(self.ctx.get(self.id)?.runner_seq as u64)
    }

    fn stop(&self) -> Result<Option<Stop>, ApiError> {
        let row = self.ctx.get(self.id)?;
        Ok(if row.status().is_terminal() {
            Some(Stop::Ended)
        } else if time::now_ms() > deadline_of(&row, self.start) {
            Some(Stop::Deadline)
        } else {
            None
        })
    }

    async fn store(&self, event: WireEvent) -> Result<Option<TaskResult>, ApiError> {
        let (ctx, id) = (self.ctx, self.id);
        ctx.sql.exec(
            "UPDATE executions SET runner_seq = ? WHERE id = ?",
            vec![int(event.seq as i64), id.into()],
        )?;
        match event.event {
            RunEvent::Usage(report) => {
                ctx.sql.exec(
                    "UPDATE executions SET usage = ? WHERE id = ?",
                    vec![serde_json::to_string(&report.total)?.into(), id.into()],
                )?;
                let cost = self
                    .pricing
                    .cost_micros(report.total.input_tokens, report.total.output_tokens);
                let body = UsageBody::new(&report.total, cost);
                ctx.append_event(id, "usage", &serde_json::to_string(&body)?)?;
            }
            RunEvent::Receipt(receipt) => {
                ctx.append_event(id, "receipt", &serde_json::to_string(&receipt)?)?
            }
            RunEvent::Output(chunk) => {
                ctx.append_event(id, "output", &serde_json::to_string(&chunk)?)?
            }
            RunEvent::Task(result) => {
                // Kept before it is acted on: a restarted driver resumes
                // from here, and a cancel now waits for the outcome.
                ctx.sql.exec(
                    "UPDATE executions SET task_result = ?, status = 'saving' WHERE id = ?",
                    vec![serde_json::to_string(&result)?.into(), id.into()],
                )?;
                return Ok(Some(result));
            }
            RunEvent::Result(_) | RunEvent::Heartbeat => {}
        }
        Ok(None)
    }
}

/// `fut`'s output, or `None` if it takes longer than `ms` (it is dropped).
async fn within<T>(ms: i64, fut: impl std::future::Future<Output = T>) -> Option<T> {
    let timer = Delay::from(Duration::from_millis(ms.max(0) as u64));
    match select(Box::pin(fut), timer).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}

/// When the DO gives up on a running task: its timeout plus the grace.
fn deadline_of(row: &ExecRow, start: &ExecStart) -> i64 {
    let started = row.started_ms.unwrap_or(row.created_ms) as i64;
    execution::deadline_ms(started, start.timeout_ms)
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

/// Sync out and commit: pulls the blobs the account lacks, stores the
/// session, commits the tree as the next version (replaying the agent's
/// changes onto a version committed meanwhile).
async fn save(
    ctx: &ExecCtx,
    id: &str,
    start: &ExecStart,
    result: &TaskResult,
) -> Result<Saved, ApiError> {
    let account = start.account_id.as_str();
    let ws = start.workspace_id.as_str();
    let db = store::db(&ctx.env)?;
    let now = time::now_ms();
    let all: Vec<FileEntry> = result
        .files
        .iter()
        .chain(&result.session)
        .cloned()
        .collect();
    let wanted = manifest::unique_blobs(&all);
    let limit = store::max_blob_bytes(&ctx.env);
    for sha in store::missing_blobs(&db, account, &wanted).await? {
        let mut resp = send(
            &ctx.link,
            Method::Get,
            &format!("/blobs/{sha}"),
            None,
            30_000,
        )
        .await
        .map_err(ApiError::RunnerUnavailable)?;
        if resp.status_code() != 200 {
            return Err(ApiError::RunnerUnavailable(format!(
                "GET /blobs/{sha} answered {}",
                resp.status_code()
            )));
        }
        store::put_blob_stream(&ctx.env, account, &sha, resp.stream()?, limit, now).await?;
    }

    let session_id = result.thread_id.clone();
    if let Some(sid) = &session_id {
        let key = manifest::session_key(account, sid);
        store::bucket(&ctx.env)?
            .put(&key, serde_json::to_vec(&result.session)?)
            .execute()
            .await?;
    }

    let row = ctx.get(id)?;
    let base = read_manifest_at(
        &ctx.env,
        account,
        ws,
        row.base_version.unwrap_or(0.0) as u64,
    )
    .await?;
    let changes = manifest::diff(&base.files, &result.files);
    if changes.is_empty() && base.version > 0 {
        // Nothing to commit: the workspace keeps its version (someone may
        // have committed meanwhile), the session is stored.
        if let Some(sid) = &session_id {
            store::set_session(&db, account, ws, Some(sid), now).await?;
        }
        let current = store::get_row(&db, account, ws)
            .await?
            .map(|w| w.version as u64)
            .unwrap_or(base.version);
        return Ok(Saved {
            version: current,
            changed_files: Vec::new(),
            session_id,
        });
    }
    let mut current_version = base.version;
    let mut files = result.files.clone();
    for _ in 0..5 {
        match store::commit(
            &ctx.env,
            account,
            ws,
            current_version,
            files.clone(),
            session_id.as_deref(),
            now,
        )
        .await
        {
            Ok(manifest) => {
                return Ok(Saved {
                    version: manifest.version,
                    changed_files: changes.changed_files(),
                    session_id,
                })
            }
            Err(ApiError::VersionConflict { current }) => {
                if current == 0 && base.version > 0 {
                    return Err(ApiError::ValidationFailed(vec![FieldError::new(
                        "workspaceId",
                        "the workspace was deleted while the agent ran",
                    )]));
                }
                let latest = read_manifest_at(&ctx.env, account, ws, current).await?;
                current_version = latest.version;
                files = manifest::rebase(&base.files, &result.files, &latest.files);
                if latest.version > base.version && files == latest.files {
                    // Our commit already landed (a driver that stopped
                    // after committing is resumed): nothing more to do.
                    return Ok(Saved {
                        version: latest.version,
                        changed_files: changes.changed_files(),
                        session_id,
                    });
                }
            }
            Err(err) => return Err(err),
        }
    }
    Err(ApiError::Internal(
        "the workspace kept changing during the commit".into(),
    ))
}

// ---------------------------------------------------------------------------
// The alarm.

/// Re-arms while executes are open: finishes an end cut short by an
/// eviction, ends a task past its deadline, restarts a driver lost with an
/// evicted instance.
pub async fn watchdog(ctx: ExecCtx, state: &State) {
    let unfinished: Vec<ExecRow> = ctx
        .sql
        .exec(
            "SELECT * FROM executions WHERE body IS NULL OR settled = 0 ORDER BY queue_seq",
            None,
        )
        .and_then(|c| c.to_array())
        .unwrap_or_default();
    if unfinished.is_empty() {
        release_when_idle(&ctx, state).await;
        return;
    }
    if let Err(err) = state.storage().set_alarm(WATCHDOG_MS).await {
        worker::console_error!("executions watchdog: cannot re-arm: {err}");
    }
    let now = time::now_ms();
    for row in unfinished {
        if let Err(err) = check(&ctx, row, now).await {
            worker::console_error!("executions watchdog: {err}");
        }
    }
    if ctx.live.driving.get() {
        return;
    }
    if let Ok(Some(open)) = ctx.next_open() {
        if open.status() == ExecStatus::Running && open.dispatched == 0.0 {
            // Cut off during the sync: the task never started; start it anew.
            let _ = ctx.sql.exec(
                "UPDATE executions SET status = 'queued' WHERE id = ?",
                vec![open.id.as_str().into()],
            );
        }
        // Not awaited: an alarm must not carry a whole queue.
        worker::wasm_bindgen_futures::spawn_local(drive(ctx));
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
    let last: Option<Last> = ctx
        .sql
        .exec(
            "SELECT id, COALESCE(finished_ms, started_ms, created_ms) AS ms FROM executions \
             ORDER BY queue_seq DESC LIMIT 1",
            None,
        )
        .and_then(|c| c.to_array())
        .ok()
        .and_then(|rows| rows.into_iter().next());
    let (op, last_ms) = match last {
        Some(Last {
            id: Some(id),
            ms: Some(ms),
        }) => (id, ms as i64),
        _ => ("idle".to_string(), 0),
    };
    let idle_ms = crate::platform::config::Config::from_env(&ctx.env).workspace_idle_seconds * 1000;
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
        crate::runner::link::release(&ctx.sql, &ctx.link, &op, &reason, &mut receipts).await;
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

/// One unfinished execute, as the watchdog sees it.
async fn check(ctx: &ExecCtx, row: ExecRow, now: i64) -> Result<(), ApiError> {
    let id = row.id.clone();
    let start = row.start()?;
    let status = row.status();
    if status.is_terminal() {
        if row.body.is_none() {
            // Its end was cut short (the instance was evicted or failed).
            let usage = row.usage();
            let ending = Ending::without_work(status, "ended while the service restarted", usage);
            return ctx.finish_end_once(row, ending).await;
        }
        if row.settled == 0.0 {
            ctx.settle(&start, &id, &row.usage()).await?;
            ctx.sql.exec(
                "UPDATE executions SET settled = 1 WHERE id = ?",
                vec![id.as_str().into()],
            )?;
        }
        return Ok(());
    }
    if status == ExecStatus::Queued && waited_too_long(&row, now) {
        return ctx.end(&id, Ending::queue_expired()).await;
    }
    if status != ExecStatus::Queued && now > deadline_of(&row, &start) + STUCK_AFTER_MS {
        // The driver should have ended it by now: it is stuck. End the
        // execute and hand the queue to a new driver.
        let _ = ctx.cancel_on_runner(&id).await;
        ctx.live.drive_gen.set(ctx.live.drive_gen.get() + 1);
        ctx.live.driving.set(false);
        let usage = row.usage();
        return ctx
            .end(
                &id,
                Ending::without_work(
                    ExecStatus::TimedOut,
                    "the task passed its time limit",
                    usage,
                ),
            )
            .await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Handlers.

pub async fn handle(ctx: ExecCtx, state: &State, mut req: Request) -> Result<Response, ApiError> {
    let path = req.path();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let account = req
        .headers()
        .get("x-cloudbox-account")?
        .ok_or_else(|| ApiError::Internal("no account header".into()))?;
    let respond = http::query(&req, "respond")?;
    match (req.method(), parts.as_slice()) {
        (Method::Post, ["executions", id, "start"]) => {
            let start: ExecStart = serde_json::from_slice(&req.bytes().await?)?;
            if start.account_id != account || start.run_id != *id {
                return Err(ApiError::Internal("start: account or id mismatch".into()));
            }
            begin(ctx, state, start, respond.as_deref()).await
        }
        (Method::Post, ["executions", id, "cancel"]) => {
            let row = ctx.owned(id, &account)?;
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
        (Method::Get, ["executions", id]) => {
            let row = ctx.owned(id, &account)?;
            let row = if http::query(&req, "wait")?.as_deref() == Some("true") {
                ctx.wait_finished(id, None).await?
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
        _ => Err(ApiError::NotFound),
    }
}

async fn begin(
    ctx: ExecCtx,
    state: &State,
    start: ExecStart,
    respond: Option<&str>,
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
            crate::runner::link::abandon(
                &ctx.sql,
                &ctx.link,
                &start.run_id,
                "it never became ready",
            )
            .await;
            return Err(ApiError::RunnerUnavailable(why));
        }
        *ctx.live.runner_ready_for.borrow_mut() = Some(start.run_id.clone());
        // Checked again: the insert below follows with no await between.
        let open = ctx.open_count()?;
        if (open > 0 && !start.wait) || open > MAX_QUEUED {
            return Err(ApiError::WorkspaceBusy);
        }
    }
    ctx.sql.exec(
        "INSERT INTO executions (id, queue_seq, start, status, created_ms) VALUES (?, \
         (SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM executions), ?, 'queued', ?)",
        vec![
            start.run_id.as_str().into(),
            start_json.into(),
            int(time::now_ms()),
        ],
    )?;
    worker::wasm_bindgen_futures::spawn_local(drive(ctx.clone()));
    let id = start.run_id.clone();
    let mut resp = match respond {
        Some("events") => sse_response(ctx, id.clone(), 0)?,
        _ => {
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

// ---------------------------------------------------------------------------
// SSE.

/// One execute's events.
struct ExecLog {
    ctx: ExecCtx,
    id: String,
}

impl EventLog for ExecLog {
    fn events_after(&self, after: u64) -> Vec<EventRow> {
        self.ctx
            .sql
            .exec(
                "SELECT seq, kind, data FROM execution_events WHERE exec_id = ? AND seq > ? \
                 ORDER BY seq LIMIT 200",
                vec![self.id.as_str().into(), int(after as i64)],
            )
            .and_then(|c| c.to_array())
            .unwrap_or_default()
    }

    fn finished(&self) -> bool {
        match self.ctx.load(&self.id) {
            Ok(Some(row)) => row.body.is_some(),
            _ => true,
        }
    }

    fn live(&self) -> &Rc<Live> {
        &self.ctx.live
    }
}

/// The execute's events after `after` as SSE, live until `result`.
fn sse_response(ctx: ExecCtx, id: String, after: u64) -> Result<Response, ApiError> {
    let env = ctx.env.clone();
    sse::response(ExecLog { ctx, id }, &env, after)
}
