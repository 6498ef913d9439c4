//! The CloudboxRunner Durable Object: one per workspace or repo run. It
//! routes the Worker's internal requests to the job it serves — a repo run
//! (`runs::durable`, one DO per run) or a workspace's executes
//! (`executes::durable`) — and runs their watchdogs from its alarm. Its
//! link to the runner server is in `runner::link`.

use std::rc::Rc;

use serde_json::json;
use worker::{durable_object, DurableObject, Env, Method, Request, Response, SqlStorage, State};

use crate::api::error::ApiError;
use crate::executes::durable as executions;
use crate::platform::{bindings, http};
use crate::runner::call::{RunnerCall, CALL_URL};
use crate::runner::lifecycle;
use crate::runner::lifecycle::RunnerEvent;
use crate::runner::link::{ensure_ready, record, release, Link, LinkState};
use crate::runner::live;
use crate::runs::durable as runs;

/// One internal call from the Worker to the CloudboxRunner named `name`,
/// on behalf of `account` (the DO checks ownership with it).
pub async fn call(
    env: &Env,
    name: &str,
    account: &str,
    request_id: &str,
    call: &RunnerCall,
) -> Result<Response, ApiError> {
    let json = serde_json::to_string(call)?;
    bindings::call_do(
        env,
        bindings::RUNNER,
        name,
        CALL_URL,
        account,
        request_id,
        json,
    )
    .await
}

/// Asks the CloudboxRunner named `name` to check its runner end to end.
pub async fn probe(env: &Env, name: &str, request_id: &str) -> Result<serde_json::Value, ApiError> {
    let mut resp = call(env, name, "operator", request_id, &RunnerCall::Probe).await?;
    let body: serde_json::Value = resp.json().await?;
    if resp.status_code() == 200 {
        Ok(body)
    } else {
        let why = body["message"].as_str().unwrap_or("runner probe failed");
        Err(ApiError::RunnerUnavailable(why.to_string()))
    }
}

#[durable_object]
pub struct CloudboxRunner {
    state: State,
    env: Env,
    sql: SqlStorage,
    live: Rc<live::Live>,
    link_state: Rc<LinkState>,
}

impl DurableObject for CloudboxRunner {
    fn new(state: State, env: Env) -> Self {
        let sql = state.storage().sql();
        for stmt in lifecycle::SCHEMA {
            if let Err(err) = sql.exec(stmt, None) {
                worker::console_error!("runner_do schema: {err}");
            }
        }
        runs::init_schema(&sql);
        executions::init_schema(&sql);
        Self {
            state,
            env,
            sql,
            live: Rc::new(live::Live::default()),
            link_state: Rc::new(LinkState::default()),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let request_id = bindings::request_id_of(&req, "runner-do");
        let result = self.handle(&mut req).await;
        Ok(result.unwrap_or_else(|err| {
            if let ApiError::Internal(detail) = &err {
                worker::console_error!("runner_do: {detail}");
            }
            http::error_response(&err, &request_id)
        }))
    }

    async fn alarm(&self) -> worker::Result<Response> {
        // A DO serves either one repo run or one workspace: only that
        // kind's watchdog runs (the workspace's would release a live
        // run's container as idle).
        match self.run_ctx() {
            Ok(ctx) if runs::holds_run(&ctx) => runs::watchdog(ctx, &self.state).await,
            _ => {
                if let Ok(ctx) = self.exec_ctx() {
                    executions::watchdog(ctx, &self.state).await;
                }
            }
        }
        Response::ok("ok")
    }
}

impl CloudboxRunner {
    /// One call from the Worker: to the run this DO holds, to the
    /// workspace's executes, or a probe.
    async fn handle(&self, req: &mut Request) -> Result<Response, ApiError> {
        if req.method() != Method::Post || http::path(req) != "/call" {
            return Err(ApiError::NotFound);
        }
        let account = bindings::account_of(req)?;
        let call: RunnerCall = serde_json::from_slice(&req.bytes().await?)
            .map_err(|e| ApiError::Internal(format!("bad runner call: {e}")))?;
        match call {
            RunnerCall::Probe => self.probe().await,
            RunnerCall::StartRun { .. }
            | RunnerCall::GetRun { .. }
            | RunnerCall::RunEvents { .. }
            | RunnerCall::VerifyRun { .. }
            | RunnerCall::CancelRun { .. }
            | RunnerCall::DeleteRun { .. }
            | RunnerCall::SetRunPublic { .. }
            | RunnerCall::ExecRun { .. }
            | RunnerCall::ReadRunFile { .. }
            | RunnerCall::WriteRunFile { .. }
            | RunnerCall::StopRun { .. }
            | RunnerCall::ResumeRun { .. }
            | RunnerCall::ForkSource { .. }
            | RunnerCall::StartFork { .. } => {
                runs::handle(self.run_ctx()?, &self.state, &account, call).await
            }
            RunnerCall::StartExecute { .. }
            | RunnerCall::GetExecute { .. }
            | RunnerCall::ExecuteEvents { .. }
            | RunnerCall::CancelExecute { .. } => {
                executions::handle(self.exec_ctx()?, &self.state, &account, call).await
            }
        }
    }

    fn run_ctx(&self) -> Result<runs::RunCtx, ApiError> {
        Ok(runs::RunCtx {
            sql: self.sql.clone(),
            env: self.env.clone(),
            link: Rc::new(self.link()?),
            live: self.live.clone(),
        })
    }

    fn exec_ctx(&self) -> Result<executions::ExecCtx, ApiError> {
        Ok(executions::ExecCtx {
            sql: self.sql.clone(),
            env: self.env.clone(),
            link: Rc::new(self.link()?),
            live: self.live.clone(),
        })
    }

    async fn probe(&self) -> Result<Response, ApiError> {
        let op = crate::common::ids::new_id("probe_")?;
        let mut receipts = Vec::new();
        let link = self.link()?;
        let outcome = ensure_ready(&self.sql, &link, &op, &mut receipts).await;
        let runner = match outcome {
            Ok(health) => health,
            Err(why) => {
                record(
                    &self.sql,
                    &op,
                    &mut receipts,
                    RunnerEvent::Exit {
                        reason: why.clone(),
                    },
                );
                release(&self.sql, &link, &op, "the probe failed", &mut receipts).await;
                return http::json(
                    503,
                    &json!({"error": "runner_unavailable", "message": why, "runnerReceipts": receipts}),
                );
            }
        };
        // A probe's container is not kept: the next probe starts afresh.
        release(&self.sql, &link, &op, "the probe ended", &mut receipts).await;
        http::json(
            200,
            &json!({"ok": true, "runner": runner, "runnerReceipts": receipts}),
        )
    }

    fn link(&self) -> Result<Link, ApiError> {
        Link::new(&self.state, &self.env, &self.sql, &self.link_state)
    }
}
