//! The link from a CloudboxRunner DO to its runner server: its Container's
//! port (in production and under `wrangler dev` with containers), or a
//! native runner at the dev-only `RUNNER_URL`. Every lifecycle step is
//! recorded (`runnerReceipts`) in the DO's SQLite storage.
//!
//! The container's life: started (with a fresh per-container secret, kept in
//! storage, that every call carries), probed until ready, watched for its
//! exit, and released (destroyed) when its job ends or its workspace idles.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use futures_util::future::{select, Either};
use worker::js_sys::{Object, Reflect};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::{
    Container, Date, Delay, Env, Fetch, Method, Request, RequestInit, Response, SqlStorage, State,
};

use crate::api::error::ApiError;
use crate::platform::config::Config;
use crate::runner::lifecycle::{start_env, RunnerEvent, RunnerReceipt, READINESS};
use crate::wire::{RunnerHealth, RUNNER_PORT, RUNNER_SECRET_HEADER};

/// What the links of one DO instance share about its container.
#[derive(Default)]
pub(crate) struct LinkState {
    /// Why the container started last went away (set by its exit watcher):
    /// readiness stops waiting at once.
    exited: RefCell<Option<String>>,
    /// A readiness check is under way: another waits for it, so that two
    /// requests never start (or release) the container at once.
    readying: Cell<bool>,
}

/// Where the runner server is reached, and the secret every call carries.
pub(crate) struct Link {
    target: Target,
    /// The DO's storage: the container's secret lives there (`container_link`).
    sql: SqlStorage,
    /// A native runner's fixed secret (`RUNNER_SECRET`).
    dev_secret: Option<String>,
    /// Names the container in `runnerReceipts` (the DO's id).
    container_id: String,
    /// `RUNNER_GITHUB_MIRROR`, passed to each container at its start.
    github_mirror: Option<String>,
    shared: Rc<LinkState>,
}

/// Held while one request starts, probes or releases the container.
pub(crate) struct LinkGuard<'a>(&'a Cell<bool>);

impl Drop for LinkGuard<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

enum Target {
    Container(Container),
    Dev(String),
}

impl Link {
    pub(crate) fn new(
        state: &State,
        env: &Env,
        sql: &SqlStorage,
        shared: &Rc<LinkState>,
    ) -> Result<Link, ApiError> {
        let config = Config::from_env(env);
        let container_id = state.id().to_string();
        if let Some(container) = state.container() {
            return Ok(Link {
                target: Target::Container(container),
                sql: sql.clone(),
                dev_secret: None,
                container_id,
                github_mirror: config.runner_github_mirror,
                shared: shared.clone(),
            });
        }
        match (config.runner_url, config.runner_secret) {
            (Some(url), Some(secret)) => Ok(Link {
                target: Target::Dev(url.trim_end_matches('/').to_string()),
                sql: sql.clone(),
                dev_secret: Some(secret),
                container_id,
                github_mirror: None,
                shared: shared.clone(),
            }),
            (Some(_), None) => Err(ApiError::RunnerUnavailable(
                "RUNNER_URL is set without RUNNER_SECRET".into(),
            )),
            (None, _) => Err(ApiError::RunnerUnavailable(
                "no container binding and no RUNNER_URL".into(),
            )),
        }
    }

    /// The secret of the container (empty: no container of ours is known
    /// to run). Read from storage each time: it changes with every start.
    fn secret(&self) -> String {
        match &self.dev_secret {
            Some(secret) => secret.clone(),
            None => stored_secret(&self.sql).unwrap_or_default(),
        }
    }

    /// Waits until no other request of this DO instance is starting,
    /// probing or releasing the container, then holds it off until the
    /// guard drops.
    pub(crate) async fn lock(&self) -> LinkGuard<'_> {
        while self.shared.readying.get() {
            Delay::from(Duration::from_millis(20)).await;
        }
        self.shared.readying.set(true);
        LinkGuard(&self.shared.readying)
    }

    /// The DO's container was started and is no longer up (a native dev
    /// runner is never gone).
    pub(crate) fn container_gone(&self) -> bool {
        match &self.target {
            Target::Container(c) => !c.running() || self.shared.exited.borrow().is_some(),
            Target::Dev(_) => false,
        }
    }

    /// Keeps the container up for `ms` even while nothing calls this DO
    /// (the runtime otherwise stops a container whose Durable Object is
    /// idle): a live run's container must last until its expiry. Best
    /// effort: a runtime without the method keeps its own rule.
    pub(crate) async fn keep_up_for(&self, ms: i64) {
        let Target::Container(container) = &self.target else {
            return;
        };
        let inner: &JsValue = container.as_ref();
        let Ok(method) = Reflect::get(inner, &JsValue::from_str("setInactivityTimeout")) else {
            return;
        };
        let Some(method) = method.dyn_ref::<worker::js_sys::Function>() else {
            return;
        };
        match method.call1(inner, &JsValue::from_f64(ms.max(0) as f64)) {
            Ok(promise) => {
                if let Ok(promise) = promise.dyn_into::<worker::js_sys::Promise>() {
                    if let Err(err) = worker::wasm_bindgen_futures::JsFuture::from(promise).await {
                        worker::console_error!("runner_do: setInactivityTimeout: {err:?}");
                    }
                }
            }
            Err(err) => worker::console_error!("runner_do: setInactivityTimeout: {err:?}"),
        }
    }

    /// A container of this DO is up (a native dev runner never counts).
    pub(crate) fn container_running(&self) -> bool {
        matches!(&self.target, Target::Container(c) if c.running())
    }
}

fn stored_secret(sql: &SqlStorage) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Row {
        secret: String,
    }
    let rows: Vec<Row> = sql
        .exec("SELECT secret FROM container_link WHERE id = 1", None)
        .and_then(|c| c.to_array())
        .ok()?;
    rows.into_iter().next().map(|r| r.secret)
}

/// Starts the container with a fresh secret in its environment. The start
/// options go as a plain JS object: workers-rs's `ContainerStartupOptions`
/// carries `env` as a JS `Map`, which the runtime reads as empty.
fn start_container(sql: &SqlStorage, link: &Link, container: &Container) -> Result<(), String> {
    let secret = hex::encode(crate::common::ids::random_bytes::<32>().map_err(|e| e.to_string())?);
    sql.exec(
        "INSERT OR REPLACE INTO container_link (id, secret, started_ms) VALUES (1, ?, ?)",
        vec![
            secret.as_str().into(),
            (Date::now().as_millis() as f64).into(),
        ],
    )
    .map_err(|e| format!("store the container secret: {e}"))?;
    link.shared.exited.borrow_mut().take();
    let env = Object::new();
    for (name, value) in start_env(&secret, link.github_mirror.as_deref()) {
        Reflect::set(&env, &JsValue::from_str(name), &JsValue::from_str(&value))
            .map_err(|e| format!("start options: {e:?}"))?;
    }
    let options = Object::new();
    let set = |k: &str, v: &JsValue| {
        Reflect::set(&options, &JsValue::from_str(k), v)
            .map_err(|e| format!("start options: {e:?}"))
    };
    set("env", &env)?;
    // Clones and agent model calls need the internet.
    set("enableInternet", &JsValue::TRUE)?;
    let inner: &worker::worker_sys::Container = container.as_ref().unchecked_ref();
    inner
        .start(&options)
        .map_err(|e| format!("container start: {e:?}"))
}

/// Watches the container started by `op` and records its exit (a crash, a
/// kill) unless the DO released it; `running()` turns false with it.
fn watch_exit(sql: &SqlStorage, link: &Link, container: &Container, op: &str) {
    let (sql, op, secret) = (sql.clone(), op.to_string(), link.secret());
    let (container_id, shared) = (link.container_id.clone(), link.shared.clone());
    let watched: Container = container.as_ref().clone().unchecked_into();
    worker::wasm_bindgen_futures::spawn_local(async move {
        let reason = match watched.wait_for_exit().await {
            Ok(()) => "exited with status 0".to_string(),
            Err(err) => err.to_string(),
        };
        // A release records itself, and a newer container has another
        // secret: only an exit of the container still in use is recorded.
        if stored_secret(&sql).as_deref() == Some(secret.as_str()) {
            *shared.exited.borrow_mut() = Some(reason.clone());
            let mut list = Vec::new();
            record(
                &sql,
                &op,
                &mut list,
                RunnerEvent::ContainerExit {
                    container_id,
                    reason,
                },
            );
            let _ = sql.exec("DELETE FROM container_link", None);
        }
    });
}

/// Destroys the container (once its work is over) and records why. A
/// native runner is left alone.
pub(crate) async fn release(
    sql: &SqlStorage,
    link: &Link,
    op: &str,
    reason: &str,
    receipts: &mut Vec<RunnerReceipt>,
) {
    let Target::Container(container) = &link.target else {
        return;
    };
    // Forget the secret first: the exit watcher then knows it was us.
    let _ = sql.exec("DELETE FROM container_link", None);
    if let Err(err) = container.destroy(None).await {
        worker::console_error!("runner_do: destroy: {err}");
    }
    record(
        sql,
        op,
        receipts,
        RunnerEvent::ContainerRelease {
            container_id: link.container_id.clone(),
            reason: reason.to_string(),
        },
    );
}

/// Gives back the container of work that never came into being (no
/// container could be made ready, or the work could not be recorded): it is
/// destroyed, and nothing of `op` is left in storage.
pub(crate) async fn abandon(sql: &SqlStorage, link: &Link, op: &str, reason: &str) {
    release(sql, link, op, reason, &mut Vec::new()).await;
    if let Err(err) = sql.exec("DELETE FROM runner_receipts WHERE op = ?", vec![op.into()]) {
        worker::console_error!("runner_do abandon: {err}");
    }
}

/// The lifecycle steps recorded under `op`, in order.
pub(crate) fn runner_receipts(sql: &SqlStorage, op: &str) -> Result<Vec<RunnerReceipt>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Row {
        body: String,
    }
    let rows: Vec<Row> = sql
        .exec(
            "SELECT body FROM runner_receipts WHERE op = ? ORDER BY seq",
            vec![op.into()],
        )?
        .to_array()?;
    rows.iter()
        .map(|r| serde_json::from_str(&r.body).map_err(ApiError::from))
        .collect()
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
/// backoff until it answers, recording each attempt. A container that
/// `running()` calls up but that does not answer (or whose secret this DO
/// no longer has) is destroyed and started afresh, once.
pub(crate) async fn ensure_ready(
    sql: &SqlStorage,
    link: &Link,
    op: &str,
    receipts: &mut Vec<RunnerReceipt>,
) -> Result<RunnerHealth, String> {
    let _alone = link.lock().await;
    ensure_ready_alone(sql, link, op, receipts).await
}

async fn ensure_ready_alone(
    sql: &SqlStorage,
    link: &Link,
    op: &str,
    receipts: &mut Vec<RunnerReceipt>,
) -> Result<RunnerHealth, String> {
    let mut fresh = false;
    if let Target::Container(container) = &link.target {
        if container.running() && link.secret().is_empty() {
            release(
                sql,
                link,
                op,
                "no secret for the running container",
                receipts,
            )
            .await;
        } else if container.running() && link.shared.exited.borrow().is_some() {
            // `running()` can lag the exit its watcher saw.
            release(sql, link, op, "the container had exited", receipts).await;
        }
        if !container.running() {
            start_and_watch(sql, link, container, op, receipts)?;
            fresh = true;
        }
    }
    match poll_health(sql, link, op, receipts).await {
        Ok(health) => Ok(health),
        Err(why) => match &link.target {
            Target::Container(container) if !fresh => {
                release(
                    sql,
                    link,
                    op,
                    "the running container did not answer",
                    receipts,
                )
                .await;
                start_and_watch(sql, link, container, op, receipts)?;
                poll_health(sql, link, op, receipts).await
            }
            _ => Err(why),
        },
    }
}

fn start_and_watch(
    sql: &SqlStorage,
    link: &Link,
    container: &Container,
    op: &str,
    receipts: &mut Vec<RunnerReceipt>,
) -> Result<(), String> {
    start_container(sql, link, container)?;
    record(
        sql,
        op,
        receipts,
        RunnerEvent::ContainerStart {
            container_id: link.container_id.clone(),
        },
    );
    watch_exit(sql, link, container, op);
    Ok(())
}

async fn poll_health(
    sql: &SqlStorage,
    link: &Link,
    op: &str,
    receipts: &mut Vec<RunnerReceipt>,
) -> Result<RunnerHealth, String> {
    let started = Date::now().as_millis();
    let mut last_error = String::new();
    for attempt in 1..=READINESS.max_attempts {
        if let Some(reason) = link.shared.exited.borrow().clone() {
            return Err(format!("the container exited: {reason}"));
        }
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
        let error = health.as_ref().err().cloned();
        record(
            sql,
            op,
            receipts,
            RunnerEvent::ReadyAttempt {
                attempt,
                elapsed_ms,
                ok: error.is_none(),
                error,
            },
        );
        match health {
            Ok(health) => {
                record(
                    sql,
                    op,
                    receipts,
                    RunnerEvent::Ready {
                        elapsed_ms,
                        container_id: match link.target {
                            Target::Container(_) => link.container_id.clone(),
                            Target::Dev(_) => String::new(),
                        },
                        instance_id: health.instance_id.clone(),
                    },
                );
                return Ok(health);
            }
            Err(error) => last_error = error,
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
    let headers = worker::Headers::new();
    let _ = headers.set(RUNNER_SECRET_HEADER, &link.secret());
    if let Some((body, content_type)) = body {
        let _ = headers.set("content-type", content_type);
        init.with_body(Some(body));
    }
    init.with_headers(headers);
    let request = async {
        match &link.target {
            Target::Container(container) => {
                let port = container.get_tcp_port(RUNNER_PORT)?;
                port.fetch(format!("http://container{path}"), Some(init))
                    .await
            }
            Target::Dev(base) => {
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
