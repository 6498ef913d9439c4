//! Repo runs: the registry of runs this runner holds, each run's event log,
//! and the executor (clone → commands → verify → artifact → diff).
//!
//! A run executes in its own task, independent of any HTTP connection: the
//! DO may disconnect and resume after the last event it stored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudbox::wire::receipts::{Chain, ReceiptKind, Step};
use cloudbox::wire::{
    outcome, Artifact, OutputChunk, RunEvent, RunResult, RunStart, WireEvent, HEARTBEAT_MS,
    MAX_ARTIFACT_BYTES,
};
use futures_util::Stream;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::config::RunnerConfig;
use crate::git;
use crate::process::{self, Finished};

/// How long a finished run's log stays available for a late resume.
const RETAIN_AFTER_END: Duration = Duration::from_secs(600);

/// One run's log and controls.
pub struct RunHandle {
    lines: Mutex<Vec<Arc<str>>>,
    latest: watch::Sender<u64>,
    cancel: watch::Sender<bool>,
    done: AtomicBool,
}

impl RunHandle {
    pub(crate) fn new() -> Self {
        Self {
            lines: Mutex::new(Vec::new()),
            latest: watch::channel(0).0,
            cancel: watch::channel(false).0,
            done: AtomicBool::new(false),
        }
    }

    pub(crate) fn emit(&self, event: RunEvent) {
        let Ok(mut lines) = self.lines.lock() else {
            return;
        };
        let seq = lines.len() as u64 + 1;
        let line = match serde_json::to_string(&WireEvent { seq, event }) {
            Ok(text) => text + "\n",
            Err(err) => {
                eprintln!("cloudbox-runner: cannot encode event: {err}");
                return;
            }
        };
        lines.push(Arc::from(line));
        drop(lines);
        self.latest.send_replace(seq);
    }

    pub(crate) fn finish(&self) {
        self.done.store(true, Ordering::SeqCst);
        self.latest.send_modify(|_| {});
    }

    /// The job has emitted its last event.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    fn lines_after(&self, after: u64) -> Vec<Arc<str>> {
        match self.lines.lock() {
            Ok(lines) => lines.iter().skip(after as usize).cloned().collect(),
            Err(_) => Vec::new(),
        }
    }

    #[cfg(test)]
    pub fn all_lines(&self) -> Vec<Arc<str>> {
        self.lines_after(0)
    }

    /// Follows cancel requests (for work that runs outside `execute`).
    pub(crate) fn cancel_receiver(&self) -> watch::Receiver<bool> {
        self.cancel.subscribe()
    }

    pub fn cancel(&self) {
        self.cancel.send_replace(true);
    }

    /// The NDJSON log after event `after`, then live events and a heartbeat
    /// line every `HEARTBEAT_MS` while idle; ends after the last event.
    pub fn stream(
        self: Arc<Self>,
        after: u64,
    ) -> impl Stream<Item = Result<String, std::convert::Infallible>> + Send {
        let rx = self.latest.subscribe();
        futures_util::stream::unfold(
            (self, after, rx),
            |(handle, mut after, mut rx)| async move {
                loop {
                    rx.borrow_and_update();
                    let done = handle.done.load(Ordering::SeqCst);
                    let lines = handle.lines_after(after);
                    if !lines.is_empty() {
                        after += lines.len() as u64;
                        let chunk: String = lines.iter().map(|l| &**l).collect();
                        return Some((Ok(chunk), (handle, after, rx)));
                    }
                    if done {
                        return None;
                    }
                    let heartbeat = tokio::time::sleep(Duration::from_millis(HEARTBEAT_MS));
                    tokio::select! {
                        _ = rx.changed() => continue,
                        _ = heartbeat => {
                            let line = "{\"seq\":0,\"type\":\"heartbeat\"}\n".to_string();
                            return Some((Ok(line), (handle, after, rx)));
                        }
                    }
                }
            },
        )
    }
}

/// The runs this runner holds.
pub struct Registry {
    cfg: Arc<RunnerConfig>,
    runs: Mutex<HashMap<String, Arc<RunHandle>>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum StartError {
    BadId,
    Exists,
}

/// Run ids become directory names: keep them plain.
pub fn valid_run_id(id: &str) -> bool {
    (1..=100).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Registry {
    pub fn new(cfg: RunnerConfig) -> Arc<Self> {
        Arc::new(Self {
            cfg: Arc::new(cfg),
            runs: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> Arc<RunnerConfig> {
        self.cfg.clone()
    }

    pub fn get(&self, id: &str) -> Option<Arc<RunHandle>> {
        self.runs.lock().ok()?.get(id).cloned()
    }

    /// Starts a run in the background and returns its handle.
    pub fn start(self: &Arc<Self>, spec: RunStart) -> Result<Arc<RunHandle>, StartError> {
        let id = spec.run_id.clone();
        self.spawn(&id, move |cfg, handle| async move {
            execute(&cfg, spec, &handle).await;
        })
    }

    /// Registers a new run or task under `id` and drives `work` in the
    /// background; its log is kept for a late resume, then dropped.
    pub fn spawn<F, Fut>(self: &Arc<Self>, id: &str, work: F) -> Result<Arc<RunHandle>, StartError>
    where
        F: FnOnce(Arc<RunnerConfig>, Arc<RunHandle>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if !valid_run_id(id) {
            return Err(StartError::BadId);
        }
        let handle = Arc::new(RunHandle::new());
        {
            let Ok(mut runs) = self.runs.lock() else {
                return Err(StartError::Exists);
            };
            if runs.contains_key(id) {
                return Err(StartError::Exists);
            }
            runs.insert(id.to_string(), handle.clone());
        }
        let registry = self.clone();
        let run_handle = handle.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            work(registry.cfg.clone(), run_handle.clone()).await;
            run_handle.finish();
            tokio::time::sleep(RETAIN_AFTER_END).await;
            if let Ok(mut runs) = registry.runs.lock() {
                runs.remove(&id);
            }
        });
        Ok(handle)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The state of one executing run (or live exec).
pub(crate) struct Exec<'a> {
    handle: &'a RunHandle,
    chain: Chain,
    cancel: watch::Receiver<bool>,
    /// The step number output chunks carry; `None`: the receipt's own.
    output_step: Option<u64>,
}

impl<'a> Exec<'a> {
    pub(crate) fn new(handle: &'a RunHandle, chain: Chain, output_step: Option<u64>) -> Self {
        Self {
            handle,
            chain,
            cancel: handle.cancel.subscribe(),
            output_step,
        }
    }

    fn cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    fn seal(&mut self, step: Step) {
        let receipt = self.chain.append(step);
        self.handle.emit(RunEvent::Receipt(receipt));
    }

    /// Runs one process as a step and emits its receipt.
    pub(crate) async fn step(
        &mut self,
        kind: ReceiptKind,
        cmd: String,
        spec: process::Spec<'_>,
    ) -> Finished {
        let started_ms = now_ms();
        let started = Instant::now();
        let step_no = self.output_step.unwrap_or(self.chain.next_seq);
        let handle = self.handle;
        let finished = process::run(spec, &mut self.cancel, |stream, text| {
            handle.emit(RunEvent::Output(OutputChunk {
                step: step_no,
                stream,
                text,
            }))
        })
        .await;
        self.seal(Step {
            kind,
            cmd,
            exit_code: finished.exit_code,
            signal: finished.signal.clone(),
            stdout: finished.stdout.clone(),
            stderr: finished.stderr.clone(),
            truncated: finished.truncated,
            timed_out: finished.timed_out,
            started_ms,
            duration_ms: started.elapsed().as_millis() as u64,
        });
        finished
    }

    fn cancel_receipt(&mut self) {
        self.seal(Step {
            kind: ReceiptKind::Cancel,
            cmd: "cancel".into(),
            exit_code: None,
            signal: Some("SIGKILL".into()),
            stdout: String::new(),
            stderr: "run cancelled by request; the running step's process group was killed".into(),
            truncated: false,
            timed_out: false,
            started_ms: now_ms(),
            duration_ms: 0,
        });
    }
}

/// Executes a run to its end, emitting every event, and removes its
/// directory — unless the run is live: then its checkout and home stay for
/// the execs, file calls and snapshot that follow (`crate::live`).
pub async fn execute(cfg: &RunnerConfig, spec: RunStart, handle: &RunHandle) {
    let started = Instant::now();
    let run_dir = cfg.work_dir.join(&spec.run_id);
    let result = execute_in(cfg, &spec, handle, &run_dir, started).await;
    if !spec.live {
        if let Err(err) = tokio::fs::remove_dir_all(&run_dir).await {
            if err.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "cloudbox-runner: cannot remove {}: {err}",
                    run_dir.display()
                );
            }
        }
    }
    handle.emit(RunEvent::Result(result));
}

/// The environment of a run's steps (and of a live run's execs): the clean
/// base with the run's own HOME, `extra` laid over it.
pub(crate) fn step_env(
    cfg: &RunnerConfig,
    home: &Path,
    extra: &std::collections::BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut env = cfg.base_env_with_home(home);
    env.retain(|(k, _)| !extra.contains_key(k));
    env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

async fn execute_in(
    cfg: &RunnerConfig,
    spec: &RunStart,
    handle: &RunHandle,
    run_dir: &Path,
    started: Instant,
) -> RunResult {
    let mut exec = Exec::new(handle, Chain::default(), None);
    let timeout = Duration::from_millis(spec.timeout_ms);
    let checkout = run_dir.join("repo");
    let container_ms = |started: Instant| started.elapsed().as_millis() as u64;
    let ended = |ok_parts: (bool, bool, bool, bool), artifact, diff| {
        let (ok, status) = outcome(ok_parts.0, ok_parts.1, ok_parts.2, ok_parts.3);
        RunResult {
            ok,
            status,
            artifact,
            diff,
            container_ms: container_ms(started),
        }
    };

    let created = match tokio::fs::create_dir_all(run_dir).await {
        Ok(()) => match cfg.step_user {
            Some(user) => crate::tree::give_to(run_dir, user),
            None => Ok(()),
        },
        Err(err) => Err(err),
    };
    if let Err(err) = created {
        let now = now_ms();
        exec.seal(Step {
            kind: ReceiptKind::Clone,
            cmd: git::clone_cmd(&spec.repo, spec.git_ref.as_deref()),
            exit_code: None,
            signal: None,
            stdout: String::new(),
            stderr: format!("cannot create the run directory: {err}"),
            truncated: false,
            timed_out: false,
            started_ms: now,
            duration_ms: 0,
        });
        return ended((false, false, false, false), None, None);
    }

    let clone = exec
        .step(
            ReceiptKind::Clone,
            git::clone_cmd(&spec.repo, spec.git_ref.as_deref()),
            process::Spec {
                program: "git",
                args: git::clone_args(&spec.repo, spec.git_ref.as_deref(), &checkout),
                cwd: run_dir,
                env: git::git_env(cfg),
                timeout,
                user: cfg.step_user,
            },
        )
        .await;
    let mut timed_out = clone.timed_out;
    if clone.cancelled || exec.cancelled() {
        exec.cancel_receipt();
        return ended((false, false, timed_out, true), None, None);
    }
    if !clone.succeeded() {
        return ended((false, false, timed_out, false), None, None);
    }

    // The steps get the run's own HOME: none of the runner's dotfiles or
    // credentials, and login shells start clean.
    let home = run_dir.join("home");
    let made = std::fs::create_dir_all(&home).and_then(|_| match cfg.step_user {
        Some(user) => crate::tree::give_to(&home, user),
        None => Ok(()),
    });
    if let Err(err) = made {
        eprintln!("cloudbox-runner: cannot create {}: {err}", home.display());
    }
    let env = step_env(cfg, &home, &spec.env);
    let mut verify_ok = true;
    let steps = spec
        .commands
        .iter()
        .map(|c| (ReceiptKind::Command, c))
        .chain(spec.verify.iter().map(|c| (ReceiptKind::Verify, c)));
    for (kind, cmd) in steps {
        if exec.cancelled() {
            exec.cancel_receipt();
            return ended((true, false, timed_out, true), None, None);
        }
        let finished = exec
            .step(
                kind,
                cmd.clone(),
                process::Spec {
                    program: "bash",
                    args: vec!["-lc".into(), cmd.clone()],
                    cwd: &checkout,
                    env: env.clone(),
                    timeout,
                    user: cfg.step_user,
                },
            )
            .await;
        timed_out |= finished.timed_out;
        if kind == ReceiptKind::Verify && !finished.succeeded() {
            verify_ok = false;
        }
        if finished.cancelled {
            exec.cancel_receipt();
            return ended((true, false, timed_out, true), None, None);
        }
    }

    // What the steps started is gone before the runner reads their tree.
    if let Some(user) = cfg.step_user {
        process::kill_user_processes(user);
    }
    let artifact = match &spec.artifact {
        Some(path) => {
            let started_ms = now_ms();
            let t0 = Instant::now();
            let artifact = read_artifact(&checkout, path).await;
            exec.seal(Step {
                kind: ReceiptKind::Artifact,
                cmd: path.clone(),
                exit_code: Some(if artifact.found { 0 } else { 1 }),
                signal: None,
                stdout: match (&artifact.sha256, artifact.found) {
                    (Some(sha), true) => format!("sha256={sha} bytes={}", artifact.bytes),
                    _ => String::new(),
                },
                stderr: artifact.error.clone().unwrap_or_default(),
                truncated: artifact.truncated,
                timed_out: false,
                started_ms,
                duration_ms: t0.elapsed().as_millis() as u64,
            });
            Some(artifact)
        }
        None => None,
    };

    let started_ms = now_ms();
    let t0 = Instant::now();
    let diff = git::diff(cfg, &checkout, timeout).await;
    exec.seal(Step {
        kind: ReceiptKind::Diff,
        cmd: "git diff".into(),
        exit_code: diff.exit_code,
        signal: None,
        stdout: format!(
            "sha256={} bytes={}",
            hex::encode(Sha256::digest(diff.text.as_bytes())),
            diff.bytes
        ),
        stderr: diff.error.clone(),
        truncated: diff.truncated,
        timed_out: false,
        started_ms,
        duration_ms: t0.elapsed().as_millis() as u64,
    });
    ended(
        (true, verify_ok, timed_out, false),
        artifact,
        Some(diff.text),
    )
}

/// Reads the artifact as text. The path must stay inside the checkout after
/// resolving symlinks; anything else is reported as not found, with why.
pub async fn read_artifact(checkout: &Path, path: &str) -> Artifact {
    let missing = |error: String| Artifact {
        path: path.to_string(),
        found: false,
        content: None,
        bytes: 0,
        sha256: None,
        truncated: false,
        error: Some(error),
    };
    if let Err(why) = cloudbox::common::paths::validate_path(path) {
        return missing(format!("bad artifact path: {why}"));
    }
    let root = match tokio::fs::canonicalize(checkout).await {
        Ok(root) => root,
        Err(err) => return missing(format!("no checkout: {err}")),
    };
    let real: PathBuf = match tokio::fs::canonicalize(checkout.join(path)).await {
        Ok(real) => real,
        Err(_) => return missing(format!("artifact not found: {path}")),
    };
    if !real.starts_with(&root) {
        return missing(format!("artifact {path} resolves outside the checkout"));
    }
    match tokio::fs::metadata(&real).await {
        Ok(meta) if meta.is_file() => {}
        _ => return missing(format!("artifact {path} is not a regular file")),
    }
    let (content, bytes, truncated) = match git::read_head(&real, MAX_ARTIFACT_BYTES).await {
        Ok(read) => read,
        Err(err) => return missing(format!("cannot read artifact {path}: {err}")),
    };
    let sha256 = match hash_file(&real).await {
        Ok(sha) => sha,
        Err(err) => return missing(format!("cannot read artifact {path}: {err}")),
    };
    Artifact {
        path: path.to_string(),
        found: true,
        content: Some(content),
        bytes,
        sha256: Some(sha256),
        truncated,
        error: None,
    }
}

async fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
