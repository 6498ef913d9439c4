//! Workspace tasks (`/execute` on the runner side): write the workspace and
//! the agent session out of the blob cache, run the agent behind the metering
//! proxy, then read the changed tree and session back into the cache and
//! report their manifests. The DO pulls only the blobs it lacks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudbox::billing::rules::Pricing;
use cloudbox::executes::agent_events::TokenUsage;
use cloudbox::wire::receipts::{Chain, ReceiptKind, Step};
use cloudbox::wire::{RunEvent, TaskResult, TaskStart, UsageReport};
use tokio::sync::watch;

use crate::agent::{run_agent, AgentTask};
use crate::blob_cache::BlobCache;
use crate::config::RunnerConfig;
use crate::model_proxy::{self, ProxyConfig};
use crate::run::RunHandle;
use crate::tree;

/// Session files live under this directory of `CODEX_HOME`.
const SESSION_DIR: &str = "sessions";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn failed(error: String, started: Instant) -> TaskResult {
    TaskResult {
        ok: false,
        output: String::new(),
        thread_id: None,
        usage: TokenUsage::default(),
        cost_micros: 0,
        files: Vec::new(),
        session: Vec::new(),
        exit_code: None,
        stopped_at_cap: false,
        cancelled: false,
        timed_out: false,
        error: Some(error),
        container_ms: started.elapsed().as_millis() as u64,
    }
}

/// Runs one task to its end, emitting `usage` events, an `exec` receipt and
/// the final `task` event; removes the task's directory afterwards.
pub async fn execute(
    cfg: Arc<RunnerConfig>,
    cache: Arc<BlobCache>,
    start: TaskStart,
    handle: Arc<RunHandle>,
) {
    let started = Instant::now();
    let dir = cfg.work_dir.join(&start.task_id);
    let result = match execute_in(&cfg, &cache, &start, &handle, &dir, started).await {
        Ok(result) => result,
        Err(error) => failed(error, started),
    };
    handle.emit(RunEvent::Task(result));
    if let Err(err) = tokio::fs::remove_dir_all(&dir).await {
        if err.kind() != std::io::ErrorKind::NotFound {
            eprintln!("cloudbox-runner: cannot remove {}: {err}", dir.display());
        }
    }
}

async fn execute_in(
    cfg: &RunnerConfig,
    cache: &BlobCache,
    start: &TaskStart,
    handle: &RunHandle,
    dir: &std::path::Path,
    started: Instant,
) -> Result<TaskResult, String> {
    let workdir = dir.join("workspace");
    let codex_home = dir.join("codex-home");
    // The agent's own HOME: nothing of the runner's home (its dotfiles and
    // credentials) reaches the agent, and its shell starts clean.
    let home = dir.join("home");
    std::fs::create_dir_all(&workdir).map_err(|e| format!("workdir: {e}"))?;
    std::fs::create_dir_all(&home).map_err(|e| format!("home: {e}"))?;
    tree::materialize(cache, &start.files, &workdir).map_err(|e| format!("workspace: {e}"))?;
    tree::materialize(cache, &start.session, &codex_home).map_err(|e| format!("session: {e}"))?;
    if let Some(user) = cfg.step_user {
        // Nothing of an earlier task may be alive while root works in a
        // tree that user owns.
        crate::process::kill_user_processes(user);
        tree::give_to(dir, user).map_err(|e| format!("task dir: {e}"))?;
    }

    let pricing = Pricing {
        input_micros_per_1k: start.input_micros_per_1k,
        output_micros_per_1k: start.output_micros_per_1k,
    };
    let cap = start.max_cost_micros;
    let mut proxy = model_proxy::start(ProxyConfig {
        upstream: start.model_base_url.trim_end_matches('/').to_string(),
        api_key: start.model_api_key.clone(),
        over_cap: Arc::new(move |total: &TokenUsage| {
            cap.is_some_and(|cap| {
                pricing.cost_micros(total.input_tokens, total.output_tokens) >= cap
            })
        }),
    })
    .await
    .map_err(|e| format!("model proxy: {e}"))?;

    // The agent stops on a cancel request or when the proxy reports the cap.
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let mut cancel = handle.cancel_receiver();
    let mut capped = proxy.capped.clone();
    let stopper = tokio::spawn(async move {
        loop {
            if *cancel.borrow() || *capped.borrow() {
                let _ = stop_tx.send(true);
                return;
            }
            tokio::select! {
                r = cancel.changed() => if r.is_err() { return },
                r = capped.changed() => if r.is_err() { return },
            }
        }
    });

    let base_url = proxy.base_url.clone();
    let agent_started_ms = now_ms();
    let agent_started = Instant::now();
    let agent = run_agent(
        AgentTask {
            workdir: &workdir,
            codex_home: &codex_home,
            task: &start.task,
            resume_thread: start.resume_thread.as_deref(),
            command: start.agent_command.as_deref(),
            codex_bin: &cfg.codex_bin,
            model: &start.model,
            model_base_url: &base_url,
            timeout: Duration::from_millis(start.timeout_ms),
            base_env: cfg.base_env_with_home(&home),
            user: cfg.step_user,
        },
        &mut stop_rx,
        |_| {},
    );
    tokio::pin!(agent);
    // Report each metered call while the agent runs.
    let report = |(call, total): (TokenUsage, TokenUsage)| {
        handle.emit(RunEvent::Usage(UsageReport {
            call,
            total,
            total_cost_micros: pricing.cost_micros(total.input_tokens, total.output_tokens),
        }))
    };
    let (summary, finished) = loop {
        tokio::select! {
            done = &mut agent => break done,
            Some(usage) = proxy.usage.recv() => report(usage),
        }
    };
    stopper.abort();
    // Nothing the agent started may still change the tree while it is read.
    if let Some(user) = cfg.step_user {
        crate::process::kill_user_processes(user);
    }
    while let Ok(usage) = proxy.usage.try_recv() {
        report(usage);
    }
    let stopped_at_cap = *proxy.capped.borrow();
    // What the proxy metered is the truth for billing; an agent that never
    // called the model through it (a custom AGENT_COMMAND) reports its own.
    let metered = proxy.total();
    let usage = if metered.total() > 0 {
        metered
    } else {
        summary.usage
    };
    drop(proxy);

    let mut chain = Chain::after(None);
    let receipt = chain.append(Step {
        kind: ReceiptKind::Exec,
        cmd: format!("agent: {}", first_chars(&start.task, 200)),
        exit_code: finished.exit_code,
        signal: finished.signal.clone(),
        stdout: summary.output.clone(),
        stderr: finished.stderr.clone(),
        truncated: finished.truncated,
        timed_out: finished.timed_out,
        started_ms: agent_started_ms,
        duration_ms: agent_started.elapsed().as_millis() as u64,
    });
    handle.emit(RunEvent::Receipt(receipt));

    let files = tree::scan(cache, &workdir, &[]).map_err(|e| format!("scan workspace: {e}"))?;
    let session_root = codex_home.join(SESSION_DIR);
    let session = if session_root.is_dir() {
        tree::scan(
            cache,
            &codex_home,
            &["shell_snapshots", "skills", ".tmp", "tmp"],
        )
        .map_err(|e| format!("scan session: {e}"))?
        .into_iter()
        .filter(|f| f.path.starts_with("sessions/"))
        .collect()
    } else {
        Vec::new()
    };
    let ok = finished.exit_code == Some(0)
        && !finished.cancelled
        && !finished.timed_out
        && !stopped_at_cap;
    let error = summary.failure.clone().or_else(|| {
        (!ok).then(|| {
            if stopped_at_cap {
                "stopped: the task's cost reached its hold".to_string()
            } else if finished.timed_out {
                "the agent timed out".to_string()
            } else if finished.cancelled {
                "cancelled".to_string()
            } else {
                format!(
                    "the agent exited with {:?}: {}",
                    finished.exit_code,
                    last_chars(&finished.stderr, 2000)
                )
            }
        })
    });
    Ok(TaskResult {
        ok,
        output: summary.output,
        thread_id: summary.thread_id.or_else(|| start.resume_thread.clone()),
        usage,
        cost_micros: pricing.cost_micros(usage.input_tokens, usage.output_tokens),
        files,
        session,
        exit_code: finished.exit_code,
        stopped_at_cap,
        cancelled: finished.cancelled && !stopped_at_cap,
        timed_out: finished.timed_out,
        error,
        container_ms: started.elapsed().as_millis() as u64,
    })
}

fn first_chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn last_chars(s: &str, n: usize) -> String {
    let count = s.chars().count();
    s.chars().skip(count.saturating_sub(n)).collect()
}
