//! The end of an execute (`runner::job`): its ending is recorded and its
//! status set from it in one plan (the first ending wins), then carried
//! out — the hold settled, then the body, the `exit` receipt and the
//! `result` event (written once, together), the `Idempotency-Key` outcome
//! and the D1 index — each step marked done, so that the watchdog carries
//! out again only what an eviction or a failure cut short.

use serde::{Deserialize, Serialize};

use super::store::ExecRow;
use super::ExecCtx;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::api::idempotency::Slot;
use crate::api::idempotency_d1;
use crate::billing::ledger_d1::{self, HoldTicket};
use crate::billing::ledger_sql::Usage;
use crate::billing::rules;
use crate::common::time;
use crate::executes::agent_events::TokenUsage;
use crate::executes::execution::{
    self, BillingBody, ExecStart, ExecStatus, ExecutionBody, UsageBody, MAX_QUEUE_WAIT_MS,
};
use crate::executes::queue::{self, KEEP_FINISHED};
use crate::keys::api_key::KeyType;
use crate::platform::bindings;
use crate::platform::config::Config;
use crate::runner::job::{self, EndingRow};
use crate::runner::lifecycle::RunnerEvent;
use crate::runner::storage;
use crate::workspaces::store;

/// How an execute ended (recorded as JSON before it is carried out).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Ending {
    pub status: ExecStatus,
    pub detail: Option<String>,
    pub usage: TokenUsage,
    pub output: String,
    pub saved: Option<Saved>,
}

/// What a successful task left in the workspace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Saved {
    pub version: u64,
    pub changed_files: Vec<String>,
    pub session_id: Option<String>,
}

impl Ending {
    pub fn without_work(status: ExecStatus, detail: impl Into<String>, usage: TokenUsage) -> Self {
        Ending {
            status,
            detail: Some(detail.into()),
            usage,
            output: String::new(),
            saved: None,
        }
    }

    /// A queued execute that waited too long: failed, nothing ran.
    pub fn queue_expired() -> Self {
        let why = format!(
            "it waited over {} minutes behind other executes of this workspace",
            MAX_QUEUE_WAIT_MS / 60_000
        );
        Ending::without_work(ExecStatus::Failed, why, TokenUsage::default())
    }
}

impl ExecCtx {
    /// Ends the execute (once: a later ending changes nothing) and carries
    /// the ending out. Waiters wait for the body.
    pub(super) async fn end(&self, id: &str, ending: Ending) -> Result<(), ApiError> {
        let json = serde_json::to_string(&ending)?;
        let plan = queue::end(id, ending.status.as_str(), &json, time::now_ms());
        storage::exec_plan(&self.sql, &plan)?;
        self.carry_out(id).await
    }

    /// Carries out what is not done of the execute's recorded ending, unless
    /// this instance is already at it (the watchdog must not run a second
    /// one beside a slow first).
    pub(super) async fn carry_out(&self, id: &str) -> Result<(), ApiError> {
        if !self.live.ending.borrow_mut().insert(id.to_string()) {
            return Ok(());
        }
        let result = self.carry_out_alone(id).await;
        self.live.ending.borrow_mut().remove(id);
        result
    }

    async fn carry_out_alone(&self, id: &str) -> Result<(), ApiError> {
        let Some(recorded) = storage::first::<EndingRow>(&self.sql, &job::ending_of(id))? else {
            return Ok(());
        };
        let ending: Ending = serde_json::from_str(&recorded.ending)?;
        let row = self.get(id)?;
        let start = row.start()?;
        let mut settled = recorded.settled();
        if !settled {
            match self.settle(&start, id, &ending.usage).await {
                Ok(()) => {
                    storage::exec(&self.sql, &job::mark_settled(id))?;
                    settled = true;
                }
                // The watchdog retries; the sweep releases the hold at the latest.
                Err(err) => worker::console_error!("execute {id}: settling: {err}"),
            }
        }
        if !recorded.finished() {
            self.finish(&row, &start, ending, settled).await?;
            storage::exec(&self.sql, &job::mark_finished(id))?;
            storage::exec_plan(&self.sql, &queue::prune(KEEP_FINISHED))?;
        }
        Ok(())
    }

    /// Charges the metered usage against the hold (never more than it) and
    /// releases the rest; for internal keys, records the usage. Once: the
    /// hold settles once, and the usage event is named after the execute.
    async fn settle(
        &self,
        start: &ExecStart,
        id: &str,
        usage: &TokenUsage,
    ) -> Result<(), ApiError> {
        let pricing = Config::from_env(&self.env).billing.pricing;
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
        let db = bindings::db(&self.env)?;
        ledger_d1::finish_run(&db, &caller, hold.as_ref(), id, usage, time::now_ms()).await?;
        Ok(())
    }

    /// The body, the `exit` receipt and the `result` event (once), then the
    /// `Idempotency-Key` outcome and the D1 index (both safe to repeat).
    async fn finish(
        &self,
        row: &ExecRow,
        start: &ExecStart,
        ending: Ending,
        settled: bool,
    ) -> Result<(), ApiError> {
        let id = row.id.as_str();
        let db = bindings::db(&self.env)?;
        let text = match &row.body {
            Some(text) => text.clone(),
            None => {
                let body = self.body(row, start, &ending, settled).await?;
                let text = serde_json::to_string(&body)?;
                let usage = serde_json::to_string(&ending.usage)?;
                // With no await between: one body, one `exit`, one `result`.
                storage::exec(&self.sql, &queue::write_body(id, &text, &usage))?;
                self.runner_step(
                    id,
                    RunnerEvent::Exit {
                        reason: ending.status.as_str().to_string(),
                    },
                )?;
                self.append_event(id, "result", &text)?;
                text
            }
        };
        let body: ExecutionBody = serde_json::from_str(&text)?;
        let pricing = Config::from_env(&self.env).billing.pricing;
        let (cost, _) = execution::charge_micros(&pricing, &ending.usage, None);
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
                (time::now_ms() as f64).into(),
                id.into(),
            ])?
            .run()
            .await;
        if let Err(err) = indexed {
            worker::console_error!("execute {id}: D1 index: {err}");
        }
        Ok(())
    }

    /// The execute's answer: what it did, what it cost, what it left.
    async fn body(
        &self,
        row: &ExecRow,
        start: &ExecStart,
        ending: &Ending,
        settled: bool,
    ) -> Result<ExecutionBody, ApiError> {
        let id = row.id.as_str();
        let now = time::now_ms();
        let vars = Config::from_env(&self.env).billing;
        let (cost, _) = execution::charge_micros(&vars.pricing, &ending.usage, None);
        let db = bindings::db(&self.env)?;
        let key_type = KeyType::parse(&start.key_type).unwrap_or(KeyType::Standard);
        let mut billing_body = None;
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
        let (version, changed_files, session_id) = match ending.saved.clone() {
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
        Ok(ExecutionBody {
            error: failure.as_ref().map(|f| f.0.clone()),
            message: failure.map(|f| f.1),
            ok: ending.status == ExecStatus::Succeeded,
            status: ending.status,
            output: ending.output.clone(),
            run_id: id.to_string(),
            session_id,
            workspace_id: start.workspace_id.clone(),
            version,
            changed_files,
            usage: UsageBody::new(&ending.usage, cost),
            billing: billing_body,
            receipts: self.receipts(id)?,
            runner_receipts: self.runner_receipts(id)?,
        })
    }
}
