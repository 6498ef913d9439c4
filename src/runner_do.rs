//! The CloudboxRunner Durable Object: one per workspace or repo run. It owns
//! the link to the runner server — the Container's port in production, a
//! dev-only `RUNNER_URL` under `wrangler dev` — and records every lifecycle
//! step (`runnerReceipts`) in its SQLite storage. Repo runs live in
//! `runner_do/runs.rs` (one DO per run).

mod executions;
mod live;
mod runs;
mod sse;

use std::rc::Rc;
use std::time::Duration;

use futures_util::future::{select, Either};
use serde_json::json;
use worker::wasm_bindgen::JsValue;
use worker::{
    durable_object, Container, ContainerStartupOptions, Date, Delay, DurableObject, Env, Fetch,
    Method, Request, RequestInit, Response, SqlStorage, State,
};

use crate::config::Config;
use crate::error::ApiError;
use crate::http;
use crate::runner_link::{RunnerEvent, RunnerReceipt, READINESS};
use crate::wire::{RunnerHealth, RUNNER_PORT};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS runner_receipts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL,
    body TEXT NOT NULL
)";

/// One internal request from the Worker to the CloudboxRunner named
/// `name`, on behalf of `account` (the DO checks ownership with it).
pub async fn call(
    env: &Env,
    name: &str,
    account: &str,
    request_id: &str,
    method: Method,
    path_and_query: &str,
    body: Option<String>,
) -> Result<Response, ApiError> {
    let stub = env
        .durable_object("RUNNER")?
        .id_from_name(name)?
        .get_stub()?;
    let headers = worker::Headers::new();
    headers.set("x-cloudbox-account", account)?;
    headers.set("x-request-id", request_id)?;
    let mut init = RequestInit::new();
    init.with_method(method).with_headers(headers);
    if let Some(body) = body {
        init.with_body(Some(body.into()));
    }
    let req = Request::new_with_init(&format!("https://runner.do{path_and_query}"), &init)?;
    Ok(stub.fetch_with_request(req).await?)
}

/// Asks the CloudboxRunner named `name` to check its runner end to end.
pub async fn probe(env: &Env, name: &str) -> Result<serde_json::Value, ApiError> {
    let stub = env
        .durable_object("RUNNER")?
        .id_from_name(name)?
        .get_stub()?;
    let mut resp = stub.fetch_with_str("https://runner.do/probe").await?;
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
}

/// Where the runner server is reached.
pub(crate) enum Link {
    Container(Container),
    Dev(String),
}

impl DurableObject for CloudboxRunner {
    fn new(state: State, env: Env) -> Self {
        let sql = state.storage().sql();
        if let Err(err) = sql.exec(SCHEMA, None) {
            worker::console_error!("runner_do schema: {err}");
        }
        runs::init_schema(&sql);
        executions::init_schema(&sql);
        Self {
            state,
            env,
            sql,
            live: Rc::new(live::Live::default()),
        }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        let request_id = req
            .headers()
            .get("x-request-id")
            .ok()
            .flatten()
            .unwrap_or_else(|| "runner-do".to_string());
        let path = req.path();
        let result = match (req.method(), path.as_str()) {
            (Method::Get, "/probe") => self.probe().await,
            (_, p) if p.starts_with("/runs/") => match self.run_ctx() {
                Ok(ctx) => runs::handle(ctx, &self.state, req).await,
                Err(err) => Err(err),
            },
            (_, p) if p.starts_with("/executions/") => match self.exec_ctx() {
                Ok(ctx) => executions::handle(ctx, &self.state, req).await,
                Err(err) => Err(err),
            },
            _ => Err(ApiError::NotFound),
        };
        Ok(result.unwrap_or_else(|err| {
            if let ApiError::Internal(detail) = &err {
                worker::console_error!("runner_do: {detail}");
            }
            http::error_response(&err, &request_id)
        }))
    }

    async fn alarm(&self) -> worker::Result<Response> {
        // A DO serves either one repo run or one workspace; each watchdog
        // finds nothing to do in the other kind.
        if let Ok(ctx) = self.run_ctx() {
            runs::watchdog(ctx, &self.state).await;
        }
        if let Ok(ctx) = self.exec_ctx() {
            executions::watchdog(ctx, &self.state).await;
        }
        Response::ok("ok")
    }
}

impl CloudboxRunner {
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
        let op = crate::ids::new_id("probe_")?;
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
                return http::json(
                    503,
                    &json!({"error": "runner_unavailable", "message": why, "runnerReceipts": receipts}),
                );
            }
        };
        http::json(
            200,
            &json!({"ok": true, "runner": runner, "runnerReceipts": receipts}),
        )
    }

    fn link(&self) -> Result<Link, ApiError> {
        if let Some(container) = self.state.container() {
            return Ok(Link::Container(container));
        }
        match Config::from_env(&self.env).runner_url {
            Some(url) => Ok(Link::Dev(url.trim_end_matches('/').to_string())),
            None => Err(ApiError::RunnerUnavailable(
                "no container binding and no RUNNER_URL".into(),
            )),
        }
    }
}

/// Stores one lifecycle step under `op` (a probe or run id) and appends it
/// to `receipts`.
pub(crate) fn record(
    sql: &SqlStorage,
    op: &str,
    receipts: &mut Vec<RunnerReceipt>,
    event: RunnerEvent,
) {
    let receipt = RunnerReceipt::new(event, Date::now().as_millis() as i64);
    if let Ok(body) = serde_json::to_string(&receipt) {
        let stored = sql.exec(
            "INSERT INTO runner_receipts (op, body) VALUES (?, ?)",
            vec![op.into(), body.into()],
        );
        if let Err(err) = stored {
            worker::console_error!("runner_do record: {err}");
        }
    }
    receipts.push(receipt);
}

/// Starts the container if needed and polls the runner's `/health` with
/// backoff until it answers, recording each attempt.
pub(crate) async fn ensure_ready(
    sql: &SqlStorage,
    link: &Link,
    op: &str,
    receipts: &mut Vec<RunnerReceipt>,
) -> Result<RunnerHealth, String> {
    if let Link::Container(container) = link {
        if !container.running() {
            let mut options = ContainerStartupOptions::new();
            // Clones and agent model calls need the internet.
            options.enable_internet(true);
            container
                .start(Some(options))
                .map_err(|e| format!("container start: {e}"))?;
            record(sql, op, receipts, RunnerEvent::ContainerStart);
        }
    }
    let started = Date::now().as_millis();
    let mut last_error = String::new();
    for attempt in 1..=READINESS.max_attempts {
        let result = send(
            link,
            Method::Get,
            "/health",
            None,
            READINESS.attempt_timeout_ms,
        )
        .await;
        let elapsed_ms = Date::now().as_millis().saturating_sub(started);
        let health = match result {
            Ok(mut resp) if resp.status_code() == 200 => resp
                .json::<RunnerHealth>()
                .await
                .map_err(|e| format!("bad /health body: {e}")),
            Ok(resp) => Err(format!("/health answered {}", resp.status_code())),
            Err(e) => Err(e),
        };
        match health {
            Ok(health) => {
                record(
                    sql,
                    op,
                    receipts,
                    RunnerEvent::ReadyAttempt {
                        attempt,
                        elapsed_ms,
                        ok: true,
                        error: None,
                    },
                );
                record(sql, op, receipts, RunnerEvent::Ready { elapsed_ms });
                return Ok(health);
            }
            Err(error) => {
                record(
                    sql,
                    op,
                    receipts,
                    RunnerEvent::ReadyAttempt {
                        attempt,
                        elapsed_ms,
                        ok: false,
                        error: Some(error.clone()),
                    },
                );
                last_error = error;
            }
        }
        if attempt < READINESS.max_attempts {
            Delay::from(Duration::from_millis(READINESS.delay_after(attempt))).await;
        }
    }
    Err(format!(
        "runner not ready after {} attempts: {last_error}",
        READINESS.max_attempts
    ))
}

/// Asks the runner to stop a run or task (`path` is its cancel route);
/// answers the runner's status, or why it could not be reached in 3 s.
pub(crate) async fn cancel_on_runner(link: &Link, path: &str) -> Result<u16, String> {
    send(link, Method::Post, path, None, 3_000)
        .await
        .map(|r| r.status_code())
}

/// One HTTP request to the runner, with a timeout on getting its headers.
pub(crate) async fn send(
    link: &Link,
    method: Method,
    path: &str,
    body: Option<String>,
    timeout_ms: u64,
) -> Result<Response, String> {
    let body = body.map(|json| (JsValue::from_str(&json), "application/json"));
    send_body(link, method, path, body, timeout_ms).await
}

/// `send` with any body (a string or a `ReadableStream`) and its content type.
pub(crate) async fn send_body(
    link: &Link,
    method: Method,
    path: &str,
    body: Option<(JsValue, &str)>,
    timeout_ms: u64,
) -> Result<Response, String> {
    let mut init = RequestInit::new();
    init.with_method(method);
    if let Some((body, content_type)) = body {
        let headers = worker::Headers::new();
        let _ = headers.set("content-type", content_type);
        init.with_headers(headers);
        init.with_body(Some(body));
    }
    let request = async {
        match link {
            Link::Container(container) => {
                let port = container.get_tcp_port(RUNNER_PORT)?;
                port.fetch(format!("http://container{path}"), Some(init))
                    .await
            }
            Link::Dev(base) => {
                let req = Request::new_with_init(&format!("{base}{path}"), &init)?;
                Fetch::Request(req).send().await
            }
        }
    };
    let timeout = Delay::from(Duration::from_millis(timeout_ms));
    match select(Box::pin(request), timeout).await {
        Either::Left((Ok(resp), _)) => Ok(resp),
        Either::Left((Err(err), _)) => Err(err.to_string()),
        Either::Right(_) => Err(format!("no answer within {timeout_ms} ms")),
    }
}
