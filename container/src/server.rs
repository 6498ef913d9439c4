//! Routes of the runner's HTTP contract with the CloudboxRunner DO:
//! `GET /health`; `POST /runs` (a `RunStart`) → NDJSON events;
//! `GET /runs/{id}/events?after=N` → the rest of them; `POST /runs/{id}/cancel`.
//! Workspace tasks: `POST /blobs/missing`, `PUT|GET /blobs/{sha}`,
//! `POST /blobs/pack` and `POST /blobs/unpack` (many blobs at once, `wire::pack`),
//! `POST /tasks` (a `TaskStart`) → NDJSON, `GET /tasks/{id}/events?after=N`,
//! `POST /tasks/{id}/cancel`.
//! Live runs (`crate::live`; 404 `not_live` without a kept checkout):
//! `POST /runs/{id}/exec` (a `LiveExec`) → NDJSON of the job `execId`,
//! resumed and cancelled as a run; `GET /runs/{id}/file?path=P` → the bytes
//! (`FILE_MODE_HEADER`: their mode); `PUT /runs/{id}/file?path=P&mode=644`
//! (the bytes) → a `FileWritten`; `POST /runs/{id}/snapshot` → a `Snapshot`
//! (its blobs in the cache); `POST /runs/{id}/restore` (a `Restore`) → a
//! `Restored`. Runs, tasks and execs share one registry of ids.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cloudbox::wire::pack;
use cloudbox::wire::{
    BlobList, FileWritten, LiveExec, Restore, Restored, RunStart, RunnerError, RunnerErrorCode,
    RunnerHealth, Snapshot, TaskStart, FILE_MODE_HEADER, MAX_LIVE_FILE_BYTES, RUNNER_SECRET_HEADER,
};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::blob_cache::{BlobCache, PutError};
use crate::config::RunnerConfig;
use crate::live;
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
        .route("/runs/{id}/exec", post(live_exec))
        .route("/runs/{id}/file", get(file_get).put(file_put))
        .route("/runs/{id}/snapshot", post(snapshot))
        .route("/runs/{id}/restore", post(restore))
        .route("/blobs/missing", post(blobs_missing))
        .route("/blobs/pack", post(blobs_pack))
        .route("/blobs/unpack", post(blobs_unpack))
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

/// Many blobs in one answer (a `wire::pack`), for the DO to store:
/// all of them are checked first, so a pack is whole or refused.
async fn blobs_pack(State(state): State<AppState>, Json(list): Json<BlobList>) -> Response {
    use futures_util::StreamExt;
    let mut files: Vec<(String, u64, std::path::PathBuf)> = Vec::with_capacity(list.sha256.len());
    let mut total = 0u64;
    for sha in &list.sha256 {
        let Some(path) = state.blobs.path(sha) else {
            return error(RunnerError::new(RunnerErrorCode::BadBlob, "not a sha256"));
        };
        let size = match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => meta.len(),
            _ => {
                return error(RunnerError::new(
                    RunnerErrorCode::BlobNotFound,
                    format!("this runner has no blob {sha}"),
                ))
            }
        };
        total += size + pack::HEADER_BYTES as u64;
        if size > pack::MAX_PACKED_BLOB_BYTES || total > pack::MAX_PACK_BYTES {
            return error(RunnerError::new(
                RunnerErrorCode::BadBlob,
                "the pack is over its limits (wire::pack)",
            ));
        }
        files.push((sha.clone(), size, path));
    }
    let frames = futures_util::stream::iter(files).then(|(sha, size, path)| async move {
        let header = pack::record_header(&sha, size)
            .ok_or_else(|| std::io::Error::other(format!("{sha} is not a blob hash")))?;
        let mut frame = header.to_vec();
        let bytes = tokio::fs::read(&path).await?;
        if bytes.len() as u64 != size {
            return Err(std::io::Error::other(format!("blob {sha} changed size")));
        }
        frame.extend_from_slice(&bytes);
        Ok::<_, std::io::Error>(bytes::Bytes::from(frame))
    });
    let body = Body::from_stream(frames);
    ([(header::CONTENT_TYPE, pack::CONTENT_TYPE)], body).into_response()
}

/// Stores every blob of a pack (`wire::pack`), each checked against
/// its name; answers how many were new.
async fn blobs_unpack(State(state): State<AppState>, body: Body) -> Response {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut unpacker = pack::Unpacker::default();
    let mut stored = 0u64;
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(err) => return error(RunnerError::new(RunnerErrorCode::BadBlob, err.to_string())),
        };
        received += chunk.len() as u64;
        if received > pack::MAX_PACK_BYTES {
            return error(RunnerError::new(
                RunnerErrorCode::BadBlob,
                "the pack is too large",
            ));
        }
        let blobs = match unpacker.push(&chunk) {
            Ok(blobs) => blobs,
            Err(why) => {
                return error(RunnerError::new(
                    RunnerErrorCode::HashMismatch,
                    why.to_string(),
                ))
            }
        };
        for (sha, bytes) in blobs {
            let one =
                futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(bytes))]);
            match state.blobs.put_stream(&sha, one).await {
                Ok(new) => stored += new as u64,
                Err(PutError::Io(err)) => {
                    return error(RunnerError::new(RunnerErrorCode::Internal, err.to_string()))
                }
                Err(_) => {
                    return error(RunnerError::new(
                        RunnerErrorCode::BadBlob,
                        "bad blob in pack",
                    ))
                }
            }
        }
    }
    if let Err(why) = unpacker.finish() {
        return error(RunnerError::new(RunnerErrorCode::BadBlob, why.to_string()));
    }
    Json(json!({"stored": stored})).into_response()
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
        return error(RunnerError {
            missing,
            ..RunnerError::new(RunnerErrorCode::MissingBlobs, "push these blobs first")
        });
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

/// Runs file-system work of a live checkout off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RunnerError> + Send + 'static,
) -> Result<T, RunnerError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|err| {
            Err(RunnerError::new(
                RunnerErrorCode::Internal,
                format!("the runner's worker failed: {err}"),
            ))
        })
}

async fn live_exec(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(exec): Json<LiveExec>,
) -> Response {
    let checkout = match live::checkout(&state.runs.config(), &id) {
        Ok(checkout) => checkout,
        Err(err) => return error(err),
    };
    let exec_id = exec.exec_id.clone();
    let started = state.runs.spawn(&exec_id, move |cfg, handle| async move {
        live::exec(&cfg, &checkout.run_dir, exec, &handle).await;
    });
    match started {
        Ok(handle) => ndjson(handle, 0),
        Err(StartError::BadId) => error(RunnerError::new(RunnerErrorCode::BadRun, "bad exec id")),
        Err(StartError::Exists) => error(RunnerError::new(
            RunnerErrorCode::RunExists,
            "this exec was already started; resume with GET /runs/{execId}/events?after=N",
        )),
    }
}

#[derive(Deserialize)]
struct FileQuery {
    #[serde(default)]
    path: String,
    mode: Option<String>,
}

async fn file_get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
) -> Response {
    let checkout = match live::checkout(&state.runs.config(), &id) {
        Ok(checkout) => checkout,
        Err(err) => return error(err),
    };
    match blocking(move || live::read_file(&checkout.repo, &q.path)).await {
        Ok(read) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            [(FILE_MODE_HEADER, format!("{:03o}", read.mode))],
            read.bytes,
        )
            .into_response(),
        Err(err) => error(err),
    }
}

async fn file_put(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
    body: Body,
) -> Response {
    let cfg = state.runs.config();
    let checkout = match live::checkout(&cfg, &id) {
        Ok(checkout) => checkout,
        Err(err) => return error(err),
    };
    let mode = match q.mode.as_deref().map(live::parse_mode).transpose() {
        Ok(mode) => mode,
        Err(err) => return error(err),
    };
    let bytes = match read_body(body, MAX_LIVE_FILE_BYTES).await {
        Ok(bytes) => bytes,
        Err(err) => return error(err),
    };
    let path = q.path.clone();
    let user = cfg.step_user;
    match blocking(move || live::write_file(&checkout.repo, &path, &bytes, mode, user)).await {
        Ok(written) => Json(FileWritten {
            path: q.path,
            written,
        })
        .into_response(),
        Err(err) => error(err),
    }
}

/// The whole body, refused once it grows past `limit`.
async fn read_body(body: Body, limit: u64) -> Result<Vec<u8>, RunnerError> {
    use futures_util::StreamExt;
    let mut chunks = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|err| {
            RunnerError::new(
                RunnerErrorCode::Internal,
                format!("cannot read the body: {err}"),
            )
        })?;
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(RunnerError::new(
                RunnerErrorCode::FileTooLarge,
                format!("a file is at most {limit} bytes"),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

async fn snapshot(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let checkout = match live::checkout(&state.runs.config(), &id) {
        Ok(checkout) => checkout,
        Err(err) => return error(err),
    };
    let blobs = state.blobs.clone();
    match blocking(move || live::snapshot(&checkout.repo, &blobs)).await {
        Ok(entries) => Json(Snapshot { entries }).into_response(),
        Err(err) => error(err),
    }
}

async fn restore(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(restore): Json<Restore>,
) -> Response {
    // A run still executing keeps the checkout its steps work in.
    if state.runs.get(&id).is_some_and(|run| !run.is_done()) {
        return error(RunnerError::new(
            RunnerErrorCode::RunExists,
            "this run is still executing; its checkout is not replaced",
        ));
    }
    let cfg = state.runs.config();
    let blobs = state.blobs.clone();
    match blocking(move || live::restore(&cfg, &blobs, &id, &restore.entries)).await {
        Ok(totals) => Json(Restored {
            files: totals.files,
            bytes: totals.bytes,
        })
        .into_response(),
        Err(err) => error(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::serve;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> String {
        http_with(addr, method, path, body, RunnerConfig::TEST_SECRET).await
    }

    /// A raw exchange with a binary body; the whole response as bytes.
    async fn http_bytes(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Vec<u8> {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{RUNNER_SECRET_HEADER}: {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            RunnerConfig::TEST_SECRET,
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        response
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
    async fn blobs_travel_in_packs_both_ways_and_bad_packs_store_nothing() {
        use sha2::{Digest, Sha256};
        let dir = tempfile::tempdir().unwrap();
        let addr = serve(RunnerConfig::for_tests(dir.path())).await;
        let blobs = ["first blob\n", "", "second"];
        let hashes: Vec<String> = blobs
            .iter()
            .map(|b| hex::encode(Sha256::digest(b.as_bytes())))
            .collect();
        let body = pack::encode(
            hashes
                .iter()
                .map(String::as_str)
                .zip(blobs.iter().map(|b| b.as_bytes())),
        )
        .unwrap();
        let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
        let stored =
            text(http_bytes(addr, "POST", "/blobs/unpack", pack::CONTENT_TYPE, &body).await);
        assert!(stored.starts_with("HTTP/1.1 200"), "{stored}");
        assert!(stored.contains(r#"{"stored":3}"#), "{stored}");
        let list = serde_json::to_string(&BlobList {
            sha256: hashes.clone(),
        })
        .unwrap();
        let packed = http_bytes(
            addr,
            "POST",
            "/blobs/pack",
            "application/json",
            list.as_bytes(),
        )
        .await;
        assert!(packed.starts_with(b"HTTP/1.1 200"), "{}", text(packed));
        // The records come back as they went (chunked transfer around them).
        for (sha, b) in hashes.iter().zip(blobs) {
            let mut record = pack::record_header(sha, b.len() as u64).unwrap().to_vec();
            record.extend_from_slice(b.as_bytes());
            assert!(
                packed.windows(record.len()).any(|w| w == record),
                "{sha} missing from the pack"
            );
        }
        let unknown = serde_json::to_string(&BlobList {
            sha256: vec!["0".repeat(64)],
        })
        .unwrap();
        let missing = http(addr, "POST", "/blobs/pack", &unknown).await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        // A record whose bytes do not hash to its name is refused, not stored.
        let lie = pack::encode([("1".repeat(64).as_str(), b"tampered".as_slice())]).unwrap();
        let refused =
            text(http_bytes(addr, "POST", "/blobs/unpack", pack::CONTENT_TYPE, &lie).await);
        assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
        let mut cut = pack::record_header(&hashes[0], 11).unwrap().to_vec();
        cut.extend_from_slice(b"short");
        let refused =
            text(http_bytes(addr, "POST", "/blobs/unpack", pack::CONTENT_TYPE, &cut).await);
        assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
        assert!(!dir.path().join("blobs").join("11").exists());
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
            ("POST", "/runs/x/exec"),
            ("GET", "/runs/x/file?path=a"),
            ("PUT", "/runs/x/file?path=a"),
            ("POST", "/runs/x/snapshot"),
            ("POST", "/runs/x/restore"),
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
