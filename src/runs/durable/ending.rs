//! The end of a run (`runner::job`): the ending is recorded before anything
//! is done about it (the first one wins), then carried out — the `exit`
//! runner receipt, the container's release, the D1 index row (with the
//! container time), the settle, and last the terminal status with its
//! `result` event, then the `Idempotency-Key` outcome, so whoever sees the
//! run ended sees all of it done. An ending cut short is carried out again by
//! the watchdog, from what is not marked done.

use serde::{Deserialize, Serialize};

use super::store::RunRow;
use super::RunCtx;
use crate::api::error::ApiError;
use crate::api::idempotency::Slot;
use crate::api::idempotency_d1;
use crate::common::time;
use crate::platform::bindings;
use crate::runner::job::{self, EndingRow};
use crate::runner::lifecycle::RunnerEvent;
use crate::runner::storage;
use crate::runs::billing::RunBilling;
use crate::runs::rows;
use crate::runs::spec;
use crate::wire::receipts::{Chain, ReceiptKind, Step};
use crate::wire::{RunResult, RunStatus};

/// How a run ended (recorded as JSON before it is carried out).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ending {
    ok: bool,
    result: Option<RunResult>,
}

impl RunCtx {
    /// Ends the run (once: a later ending changes nothing) and carries the
    /// ending out.
    pub(super) async fn finalize(
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
        let ending = serde_json::to_string(&Ending {
            ok,
            result: result.cloned(),
        })?;
        let recorded = job::record_ending(&row.id, status.as_str(), &ending, time::now_ms());
        storage::exec(&self.sql, &recorded)?;
        self.carry_out().await
    }

    /// The run's recorded ending, if it has one.
    pub(super) fn ending(&self) -> Result<Option<EndingRow>, ApiError> {
        let Some(row) = self.load()? else {
            return Ok(None);
        };
        storage::first(&self.sql, &job::ending_of(&row.id))
    }

    /// Carries out what is not done of the recorded ending, unless this
    /// instance is already at it.
    pub(super) async fn carry_out(&self) -> Result<(), ApiError> {
        let (Some(row), Some(recorded)) = (self.load()?, self.ending()?) else {
            return Ok(());
        };
        if recorded.done() || self.live.finalizing.replace(true) {
            return Ok(());
        }
        let carried = self.carry_out_alone(&row, &recorded).await;
        self.live.finalizing.set(false);
        carried
    }

    async fn carry_out_alone(&self, row: &RunRow, recorded: &EndingRow) -> Result<(), ApiError> {
        let status = RunStatus::parse(&recorded.status).unwrap_or(RunStatus::ContainerLost);
        let ending: Ending = serde_json::from_str(&recorded.ending)?;
        let ended_ms = recorded.ended_ms as i64;
        let container_ms = ending
            .result
            .as_ref()
            .map(|r| r.container_ms as i64)
            .unwrap_or_else(|| (ended_ms - row.created_ms as i64).max(0));
        // Once the terminal status is written, the release, the index and
        // the `result` event are done: an ending cut short after it only
        // records the answer again and is marked finished.
        let terminal = row.status().is_terminal();
        // A live run whose steps ran to their end keeps its container; its
        // billing moves into its first live period (settled when it ends).
        let goes_live =
            matches!(status, RunStatus::Passed | RunStatus::Failed) && self.terms(row)?.is_some();
        if !recorded.finished() && !terminal {
            if goes_live {
                self.index(row, RunStatus::Live, ending.ok, container_ms, ended_ms)
                    .await;
            } else {
                self.release_and_index(row, status, ending.ok, container_ms, ended_ms)
                    .await?;
            }
        }
        if !recorded.settled() && goes_live {
            storage::exec(&self.sql, &job::mark_settled(&row.id))?;
        } else if !recorded.settled() {
            // A failure here is retried by the watchdog (the hold, if any,
            // is released by the sweep past its expiry at the latest).
            match self
                .settle_billing(&row.id, &row.account_id, container_ms)
                .await
            {
                Ok(()) => storage::exec(&self.sql, &job::mark_settled(&row.id))?,
                Err(err) => worker::console_error!("runs: billing of {}: {err}", row.id),
            }
        }
        if !recorded.finished() {
            if !terminal {
                self.finish(row, status, goes_live, &ending, container_ms, ended_ms)?;
                if goes_live {
                    self.keep_container_up().await;
                }
            }
            if let Some(row) = self.load()? {
                let body = self.body(&row)?.to_string();
                let status = if ending.ok { 200 } else { 422 };
                if let Err(err) = self.record_idempotency(&row, status, &body).await {
                    worker::console_error!("runs: idempotency record of {}: {err}", row.id);
                }
            }
            storage::exec(&self.sql, &job::mark_finished(&row.id))?;
        }
        Ok(())
    }

    /// The `exit` receipt, the container's release and the D1 index row.
    async fn release_and_index(
        &self,
        row: &RunRow,
        status: RunStatus,
        ok: bool,
        container_ms: i64,
        ended_ms: i64,
    ) -> Result<(), ApiError> {
        self.runner_step(
            &row.id,
            RunnerEvent::Exit {
                reason: status.as_str().to_string(),
            },
        )?;
        // A finished run's container is not left idle.
        self.release_container(row, "the run ended").await?;
        self.index(row, status, ok, container_ms, ended_ms).await;
        Ok(())
    }

    /// The run's terminal state in its D1 index row (logged if it fails:
    /// the DO's own row is the truth).
    async fn index(
        &self,
        row: &RunRow,
        status: RunStatus,
        ok: bool,
        container_ms: i64,
        ended_ms: i64,
    ) {
        let updated = async {
            bindings::db(&self.env)?
            .prepare(
                "UPDATE runs SET status = ?1, ok = ?2, container_ms = ?3, finished_at = ?4, updated_at = ?4 WHERE id = ?5",
            )
            .bind(&[
                status.as_str().into(),
                (ok as i32).into(),
                (container_ms as f64).into(),
                (ended_ms as f64).into(),
                row.id.as_str().into(),
            ])?
            .run()
            .await?;
            Ok::<(), ApiError>(())
        }
        .await;
        if let Err(err) = updated {
            worker::console_error!("runs: D1 update of {}: {err}", row.id);
        }
    }

    /// The terminal status with the artifact and diff, and the `result`
    /// event: with no await between, so they are written together, once.
    fn finish(
        &self,
        row: &RunRow,
        status: RunStatus,
        goes_live: bool,
        ending: &Ending,
        container_ms: i64,
        ended_ms: i64,
    ) -> Result<(), ApiError> {
        let result = ending.result.as_ref();
        let artifact = match result.and_then(|r| r.artifact.as_ref()) {
            Some(a) => Some(serde_json::to_string(a)?),
            None => None,
        };
        let status = if goes_live { RunStatus::Live } else { status };
        let mut plan = vec![rows::finish(&rows::Finish {
            status: status.as_str(),
            ok: ending.ok,
            ended_ms,
            container_ms,
            artifact_json: artifact.as_deref(),
            diff: result.and_then(|r| r.diff.as_deref()),
        })];
        if goes_live {
            plan.extend(self.go_live_plan(row, ended_ms)?);
        }
        storage::exec_plan(&self.sql, &plan)?;
        let Some(row) = self.load()? else {
            return Ok(());
        };
        let body = self.body(&row)?.to_string();
        self.append_event("result", &body)
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
        let Some(claim) = storage::first::<Claim>(&self.sql, &rows::claim_of())? else {
            return Ok(());
        };
        let slot = Slot {
            account_id: row.account_id.clone(),
            scope: spec::IDEMPOTENCY_SCOPE,
            key: claim.key,
        };
        let db = bindings::db(&self.env)?;
        idempotency_d1::record_outcome(&db, &slot, claim.claimed_at as i64, status, body).await
    }

    /// Settles the run's billing (container time × price, the rest of the
    /// hold released). Once: the hold settles once, and the usage event is
    /// named after the run.
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
        let Some(row) = storage::first::<Row>(&self.sql, &rows::billing_of())? else {
            return Ok(());
        };
        let billing: RunBilling = serde_json::from_str(&row.billing)?;
        let db = bindings::db(&self.env)?;
        crate::runs::billing_d1::settle(
            &db,
            account_id,
            &row.key_id,
            run_id,
            1,
            &billing,
            container_ms,
            time::now_ms(),
        )
        .await?;
        Ok(())
    }

    /// Ends a run the runner cannot end itself: a `cancel` receipt saying
    /// why, continuing the chain, then `finalize`.
    pub(super) async fn end_by_do(
        &self,
        status: RunStatus,
        reason: String,
    ) -> Result<(), ApiError> {
        let Some(row) = self.load()? else {
            return Ok(());
        };
        if row.status().is_terminal() {
            return Ok(());
        }
        if self.ending()?.is_some() {
            // It has already ended (its end is under way): no receipt after it.
            return self.carry_out().await;
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
}
