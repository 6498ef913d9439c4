//! The execute's rows in the DO's SQLite, read and written through the
//! plans of `executes::queue`.

use serde::Deserialize;

use super::ExecCtx;
use crate::api::error::ApiError;
use crate::executes::agent_events::TokenUsage;
use crate::executes::execution::{self, ExecStart, ExecStatus, ExecutionBody};
use crate::executes::queue;
use crate::runner::job;
use crate::runner::lifecycle::{RunnerEvent, RunnerReceipt};
use crate::runner::link::record;
use crate::runner::live::wait_until;
use crate::runner::storage;
use crate::wire::receipts::Receipt;

#[derive(Debug, Clone, Deserialize)]
pub(super) struct ExecRow {
    pub id: String,
    pub start: String,
    pub status: String,
    pub created_ms: f64,
    pub started_ms: Option<f64>,
    pub dispatched: f64,
    pub runner_seq: f64,
    pub base_version: Option<f64>,
    pub session_id: Option<String>,
    pub usage: Option<String>,
    pub task_result: Option<String>,
    pub body: Option<String>,
}

impl ExecRow {
    pub fn status(&self) -> ExecStatus {
        ExecStatus::parse(&self.status).unwrap_or(ExecStatus::Failed)
    }
    pub fn start(&self) -> Result<ExecStart, ApiError> {
        Ok(serde_json::from_str(&self.start)?)
    }
    pub fn usage(&self) -> TokenUsage {
        self.usage
            .as_deref()
            .and_then(|u| serde_json::from_str(u).ok())
            .unwrap_or_default()
    }
    pub fn body(&self) -> Result<Option<ExecutionBody>, ApiError> {
        match &self.body {
            Some(text) => Ok(Some(serde_json::from_str(text)?)),
            None => Ok(None),
        }
    }
    /// When the DO gives up on the running task: its timeout plus the grace.
    pub fn deadline_ms(&self, start: &ExecStart) -> i64 {
        let started = self.started_ms.unwrap_or(self.created_ms) as i64;
        execution::deadline_ms(started, start.timeout_ms)
    }
}

impl ExecCtx {
    pub(super) fn load(&self, id: &str) -> Result<Option<ExecRow>, ApiError> {
        storage::first(&self.sql, &queue::load(id))
    }

    pub(super) fn get(&self, id: &str) -> Result<ExecRow, ApiError> {
        self.load(id)?.ok_or(ApiError::RunNotFound)
    }

    /// The execute, if it belongs to `account`; else 404 as if absent.
    pub(super) fn owned(&self, id: &str, account: &str) -> Result<ExecRow, ApiError> {
        let row = self.get(id)?;
        if row.start()?.account_id == account {
            Ok(row)
        } else {
            Err(ApiError::RunNotFound)
        }
    }

    /// The oldest execute not yet ended.
    pub(super) fn next_open(&self) -> Result<Option<ExecRow>, ApiError> {
        storage::first(&self.sql, &queue::next_open())
    }

    pub(super) fn open_count(&self) -> Result<usize, ApiError> {
        #[derive(Deserialize)]
        struct Count {
            n: f64,
        }
        let count: Option<Count> = storage::first(&self.sql, &queue::open_count())?;
        Ok(count.map(|c| c.n as usize).unwrap_or(0))
    }

    pub(super) fn append_event(&self, id: &str, kind: &str, data: &str) -> Result<(), ApiError> {
        storage::exec(&self.sql, &job::append_event(id, kind, data))?;
        self.live.notify();
        Ok(())
    }

    /// Records a lifecycle step in `runnerReceipts` and as a `runner` event.
    pub(super) fn runner_step(&self, id: &str, event: RunnerEvent) -> Result<(), ApiError> {
        let mut list = Vec::new();
        record(&self.sql, id, &mut list, event);
        for receipt in list {
            self.append_event(id, "runner", &serde_json::to_string(&receipt)?)?;
        }
        Ok(())
    }

    pub(super) fn runner_receipts(&self, id: &str) -> Result<Vec<RunnerReceipt>, ApiError> {
        crate::runner::link::runner_receipts(&self.sql, id)
    }

    pub(super) fn receipts(&self, id: &str) -> Result<Vec<Receipt>, ApiError> {
        #[derive(Deserialize)]
        struct Row {
            data: String,
        }
        let rows: Vec<Row> = storage::rows(&self.sql, &job::events_of_kind(id, "receipt"))?;
        rows.iter()
            .map(|r| serde_json::from_str(&r.data).map_err(ApiError::from))
            .collect()
    }

    pub(super) fn is_terminal(&self, id: &str) -> bool {
        self.load(id)
            .ok()
            .flatten()
            .is_none_or(|row| row.status().is_terminal())
    }

    /// Waits until the execute has its final body (or `limit_ms` pass).
    pub(super) async fn wait_finished(
        &self,
        id: &str,
        limit_ms: Option<i64>,
    ) -> Result<ExecRow, ApiError> {
        wait_until(
            &self.live,
            limit_ms,
            || self.get(id),
            |row| row.body.is_some(),
        )
        .await
    }

    pub(super) async fn cancel_on_runner(&self, id: &str) -> Result<u16, String> {
        crate::runner::link::cancel_on_runner(&self.link, &format!("/tasks/{id}/cancel")).await
    }
}
