//! Following the task's events (`runner::follow`): what an execute stores
//! of each — metered usage, receipts, output, and the task's result.

use super::ExecCtx;
use crate::api::error::ApiError;
use crate::billing::rules::Pricing;
use crate::common::time;
use crate::executes::execution::{ExecStart, UsageBody};
use crate::executes::queue;
use crate::runner::follow::{self, Stop};
use crate::runner::storage;
use crate::wire::{RunEvent, TaskResult, WireEvent};

/// One execute as the follower sees it.
pub(super) struct ExecJob<'a> {
    pub ctx: &'a ExecCtx,
    pub id: &'a str,
    pub start: &'a ExecStart,
    pub pricing: Pricing,
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
        } else if time::now_ms() > row.deadline_ms(self.start) {
            Some(Stop::Deadline)
        } else {
            None
        })
    }

    async fn store(&self, event: WireEvent) -> Result<Option<TaskResult>, ApiError> {
        let (ctx, id) = (self.ctx, self.id);
        storage::exec(&ctx.sql, &queue::runner_seq(id, event.seq))?;
        match event.event {
            RunEvent::Usage(report) => {
                let total = serde_json::to_string(&report.total)?;
                storage::exec(&ctx.sql, &queue::usage(id, &total))?;
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
                let text = serde_json::to_string(&result)?;
                storage::exec(&ctx.sql, &queue::saving(id, &text))?;
                return Ok(Some(result));
            }
            RunEvent::Result(_) | RunEvent::Heartbeat => {}
        }
        Ok(None)
    }
}
