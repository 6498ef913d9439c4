//! Routes of the runner's HTTP contract with the CloudboxRunner DO:
//! `GET /health`; `POST /runs` (a `RunStart`) → NDJSON events;
//! `GET /runs/{id}/events?after=N` → the rest of them; `POST /runs/{id}/cancel`.
//! Workspace tasks: `POST /blobs/missing`, `PUT|GET /blobs/{sha}`,
//! `POST /tasks` (a `TaskStart`) → NDJSON, `GET /tasks/{id}/events?after=N`,
//! `POST /tasks/{id}/cancel`. Runs and tasks share one registry of ids.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cloudbox::wire::{
    BlobList, RunStart, RunnerError, RunnerErrorCode, RunnerHealth, TaskStart, RUNNER_SECRET_HEADER,
};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::blob_cache::{BlobCache, PutError};
use crate::config::RunnerConfig;
use crate::run::{Registry, RunHandle, StartError};

/// Largest blob the runner accepts in one PUT.
const MAX_BLOB_BYTES: usize = 512 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    runs: Arc<Registry>,
    blobs: Arc<BlobCache>,
    secret: Arc<str>,
    instance_id: Arc<str>,
}

impl axum::extract::FromRef<AppState> for Arc<Registry> {
    fn from_ref(state: &AppState) -> Self {
        state.runs.clone()
    }
}

pub fn router(cfg: RunnerConfig) -> std::io::Result<Router> {
    let blobs = Arc::new(BlobCache::open(cfg.blob_dir.clone())?);
    let state = AppState {
        secret: cfg.secret.as_str().into(),
        instance_id: new_instance_id()?.into(),
        runs: Registry::new(cfg),
        blobs,
    };
    Ok(Router::new()
        .route("/health", get(health))
        .route("/runs", post(start_run))
        .route("/runs/{id}/events", get(run_events))
        .route("/runs/{id}/cancel", post(cancel_run))
        .route("/blobs/missing", post(blobs_missing))
        .route("/blobs/{sha}", axum::routing::put(blob_put).get(blob_get))
        .route("/tasks", post(start_task))
        .route("/tasks/{id}/events", get(run_events))
        .route("/tasks/{id}/cancel", post(cancel_run))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BLOB_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_secret,
        ))
        .with_state(state))
}

/// Refuses every call that does not carry the container's secret: the agent
/// and the run's steps share the container's loopback with this port.
async fn require_secret(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = req
        .headers()
        .get(RUNNER_SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if bool::from(given.ct_eq(state.secret.as_bytes())) {
        next.run(req).await
    } else {
        error(RunnerError::new(
            RunnerErrorCode::RunnerSecret,
            "this runner answers only its Durable Object",
        ))
    }
}

fn new_instance_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom").and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut bytes)
    })?;
    Ok(format!("rn_{}", hex::encode(bytes)))
}

async fn blobs_missing(
    State(state): State<AppState>,
    Json(list): Json<BlobList>,
) -> Json<BlobList> {
    Json(BlobList {
        sha256: state.blobs.missing(&list.sha256),
    })
}

async fn blob_put(State(state): State<AppState>, Path(sha): Path<String>, body: Body) -> Response {
    match state.blobs.put_stream(&sha, body.into_data_stream()).await {
        Ok(true) => (StatusCode::CREATED, Json(json!({"stored": true}))).into_response(),
        Ok(false) => Json(json!({"stored": false})).into_response(),
        Err(PutError::BadName) => error(RunnerError::new(RunnerErrorCode::BadBlob, "not a sha256")),
        Err(PutError::HashMismatch { actual }) => error(RunnerError::new(
            RunnerErrorCode::HashMismatch,
            format!("body hashes to {actual}"),
        )),
        Err(PutError::Io(err)) => {
            error(RunnerError::new(RunnerErrorCode::Internal, err.to_string()))
        }
    }
}

async fn blob_get(State(state): State<AppState>, Path(sha): Path<String>) -> Response {
    let Some(path) = state.blobs.path(&sha) else {
        return error(RunnerError::new(RunnerErrorCode::BadBlob, "not a sha256"));
    };
    match tokio::fs::File::open(&path).await {
        Ok(file) => {
            let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
            ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
        }
        Err(_) => error(RunnerError::new(
            RunnerErrorCode::BlobNotFound,
            "this runner has no such blob",
        )),
    }
}

async fn start_task(State(state): State<AppState>, Json(start): Json<TaskStart>) -> Response {
    let wanted: Vec<String> = start
        .files
        .iter()
        .chain(&start.session)
        .map(|f| f.sha256.clone())
        .collect();
    let missing = state.blobs.missing(&wanted);
    if !missing.is_empty() {
        return (
            StatusCode::CONFLICT,
            Json(RunnerError {
                missing,
                ..RunnerError::new(RunnerErrorCode::MissingBlobs, "push these blobs first")
            }),
        )
            .into_response();
    }
    let blobs = state.blobs.clone();
    let id = start.task_id.clone();
    let started = state.runs.spawn(&id, move |cfg, handle| {
        crate::task::execute(cfg, blobs, start, handle)
    });
    match started {
        Ok(handle) => ndjson(handle, 0),
        Err(StartError::BadId) => error(RunnerError::new(RunnerErrorCode::BadTask, "bad task id")),
        Err(StartError::Exists) => error(RunnerError::new(
            RunnerErrorCode::TaskExists,
            "this task was already started; resume with GET /tasks/{id}/events?after=N",
        )),
    }
}

async fn health(State(state): State<AppState>) -> Json<RunnerHealth> {
    Json(RunnerHealth {
        ok: true,
        name: "cloudbox-runner".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        instance_id: state.instance_id.to_string(),
    })
}

#[derive(Deserialize)]
struct After {
    #[serde(default)]
    after: u64,
}

fn error(err: RunnerError) -> Response {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(err)).into_response()
}

fn ndjson(handle: Arc<RunHandle>, after: u64) -> Response {
    let body = Body::from_stream(handle.stream(after));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

async fn start_run(State(runs): State<Arc<Registry>>, Json(spec): Json<RunStart>) -> Response {
    match runs.start(spec) {
        Ok(handle) => ndjson(handle, 0),
        Err(StartError::BadId) => error(RunnerError::new(RunnerErrorCode::BadRun, "bad run id")),
        Err(StartError::Exists) => error(RunnerError::new(
            RunnerErrorCode::RunExists,
            "this run was already started; resume with GET /runs/{id}/events?after=N",
        )),
    }
}

async fn run_events(
    State(runs): State<Arc<Registry>>,
    Path(id): Path<String>,
    Query(q): Query<After>,
) -> Response {
    match runs.get(&id) {
        Some(handle) => ndjson(handle, q.after),
        None => error(RunnerError::new(
            RunnerErrorCode::RunNotFound,
            "this runner has no such run",
        )),
    }
}

async fn cancel_run(State(runs): State<Arc<Registry>>, Path(id): Path<String>) -> Response {
    match runs.get(&id) {
        Some(handle) => {
            handle.cancel();
            Json(json!({"cancelled": true})).into_response()
        }
        None => error(RunnerError::new(
            RunnerErrorCode::RunNotFound,
            "this runner has no such run",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn serve(cfg: RunnerConfig) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(cfg).unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> String {
        http_with(addr, method, path, body, RunnerConfig::TEST_SECRET).await
    }

    async fn http_with(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        body: &str,
        secret: &str,
    ) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{RUNNER_SECRET_HEADER}: {secret}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn health_reports_ok_over_real_http() {
        let dir = tempfile::tempdir().unwrap();
        let addr = serve(RunnerConfig::for_tests(dir.path())).await;
        let response = http(addr, "GET", "/health", "").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let body = response.split("\r\n\r\n").nth(1).unwrap();
        let health: RunnerHealth = serde_json::from_str(body).unwrap();
        assert!(health.ok);
        assert_eq!(health.name, "cloudbox-runner");
        assert!(health.instance_id.starts_with("rn_"));
    }

    #[tokio::test]
    async fn every_route_refuses_a_call_without_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let addr = serve(RunnerConfig::for_tests(dir.path())).await;
        for (method, path) in [
            ("GET", "/health"),
            ("POST", "/runs"),
            ("POST", "/tasks"),
            ("POST", "/blobs/missing"),
            ("GET", "/runs/x/events"),
            ("POST", "/runs/x/cancel"),
            ("GET", "/nope"),
        ] {
            for secret in ["", "wrong", "test-runner-secre"] {
                let response = http_with(addr, method, path, "{}", secret).await;
                assert!(
                    response.starts_with("HTTP/1.1 401"),
                    "{method} {path}: {response}"
                );
                assert!(response.contains("runner_secret"), "{response}");
            }
        }
    }

    #[tokio::test]
    async fn a_run_streams_ndjson_over_http_and_unknown_runs_are_404() {
        let dir = tempfile::tempdir().unwrap();
        crate::testing::bare_repo(
            &dir.path().join("github"),
            "acme",
            "demo",
            &[("a.txt", "a")],
        );
        let addr = serve(crate::testing::config(dir.path())).await;
        let spec =
            serde_json::to_string(&crate::testing::spec("run_http", &["echo hi"], &[])).unwrap();
        let response = http(addr, "POST", "/runs", &spec).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("application/x-ndjson"));
        assert!(response.contains("\"type\":\"receipt\""));
        assert!(response.contains("\"type\":\"result\""));
        let again = http(addr, "GET", "/runs/run_http/events?after=2", "").await;
        assert!(again.contains("{\"seq\":3,"), "{again}");
        assert!(
            !again.lines().any(|l| l.starts_with("{\"seq\":2,")),
            "{again}"
        );
        let missing = http(addr, "GET", "/runs/nope/events", "").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let cancel = http(addr, "POST", "/runs/nope/cancel", "").await;
        assert!(cancel.starts_with("HTTP/1.1 404"), "{cancel}");
    }
}
