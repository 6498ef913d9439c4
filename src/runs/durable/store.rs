//! The run's rows in the DO's SQLite: the run, its events (the SSE log),
//! its receipts, and the body the API answers.

use serde::Deserialize;
use serde_json::{json, Value};

use super::RunCtx;
use crate::api::error::ApiError;
use crate::common::time;
use crate::runner::job;
use crate::runner::lifecycle::{RunnerEvent, RunnerReceipt};
use crate::runner::link::record;
use crate::runner::live::wait_until;
use crate::runner::storage;
use crate::runs::rows;
use crate::wire::receipts::Receipt;
use crate::wire::{RunStart, RunStatus};

#[derive(Debug, Clone, Deserialize)]
pub(super) struct RunRow {
    pub id: String,
    pub account_id: String,
    pub spec: String,
    pub status: String,
    pub ok: Option<f64>,
    pub created_ms: f64,
    pub finished_ms: Option<f64>,
    pub deadline_ms: f64,
    pub runner_seq: f64,
    pub dispatched: f64,
    pub container_ms: Option<f64>,
    pub artifact: Option<String>,
    pub diff: Option<String>,
}

impl RunRow {
    pub fn status(&self) -> RunStatus {
        RunStatus::parse(&self.status).unwrap_or(RunStatus::Running)
    }
    pub fn spec(&self) -> Result<RunStart, ApiError> {
        Ok(serde_json::from_str(&self.spec)?)
    }
}

impl RunCtx {
    pub(super) fn load(&self) -> Result<Option<RunRow>, ApiError> {
        storage::first(&self.sql, &rows::load())
    }

    /// The run `run_id`, if it belongs to `account`; else 404 as if absent.
    pub(super) fn owned(&self, run_id: &str, account: &str) -> Result<RunRow, ApiError> {
        match self.load()? {
            Some(row) if row.id == run_id && row.account_id == account => Ok(row),
            _ => Err(ApiError::RunNotFound),
        }
    }

    /// Appends to the run's event log (`runner::job`).
    pub(super) fn append_event(&self, kind: &str, data: &str) -> Result<(), ApiError> {
        let Some(row) = self.load()? else {
            return Ok(());
        };
        storage::exec(&self.sql, &job::append_event(&row.id, kind, data))?;
        self.live.notify();
        Ok(())
    }

    pub(super) fn receipts(&self) -> Result<Vec<Receipt>, ApiError> {
        #[derive(Deserialize)]
        struct Row {
            body: String,
        }
        let rows: Vec<Row> = storage::rows(&self.sql, &rows::receipts())?;
        rows.iter()
            .map(|r| serde_json::from_str(&r.body).map_err(ApiError::from))
            .collect()
    }

    pub(super) fn runner_receipts(&self, run_id: &str) -> Result<Vec<RunnerReceipt>, ApiError> {
        crate::runner::link::runner_receipts(&self.sql, run_id)
    }

    pub(super) fn store_receipt(&self, receipt: &Receipt) -> Result<(), ApiError> {
        let body = serde_json::to_string(receipt)?;
        storage::exec(&self.sql, &rows::store_receipt(receipt.seq, &body))?;
        self.append_event("receipt", &body)
    }

    /// Records a lifecycle step in `runnerReceipts` and as a `runner` event.
    pub(super) fn runner_step(&self, run_id: &str, event: RunnerEvent) -> Result<(), ApiError> {
        let mut list = Vec::new();
        record(&self.sql, run_id, &mut list, event);
        for receipt in list {
            self.append_event("runner", &serde_json::to_string(&receipt)?)?;
        }
        Ok(())
    }

    /// The run as the API shows it (the contract body of `POST /api/runs`).
    pub(super) fn body(&self, row: &RunRow) -> Result<Value, ApiError> {
        let spec = row.spec()?;
        let artifact: Value = match &row.artifact {
            Some(text) => serde_json::from_str(text)?,
            None => Value::Null,
        };
        let status = row.status();
        let public: Option<Value> = storage::first(&self.sql, &rows::is_public())?;
        let mut body = json!({
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
        });
        if public.is_some() {
            body["publicUrl"] = json!(format!("/runs/{}", row.id));
        }
        self.live_fields(row, &mut body)?;
        Ok(body)
    }

    pub(super) async fn wait_terminal(&self, limit_ms: Option<i64>) -> Result<RunRow, ApiError> {
        wait_until(
            &self.live,
            limit_ms,
            || self.load()?.ok_or(ApiError::RunNotFound),
            |row| row.status().is_terminal(),
        )
        .await
    }

    pub(super) async fn cancel_on_runner(&self, run_id: &str) -> Result<u16, String> {
        crate::runner::link::cancel_on_runner(&self.link, &format!("/runs/{run_id}/cancel")).await
    }
}
