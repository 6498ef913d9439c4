//! Test helpers: fixture repos behind the GitHub mirror, runs collected to
//! their end, and a check that a process is really gone.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use cloudbox::wire::receipts::Receipt;
use cloudbox::wire::{RunEvent, RunResult, RunStart, WireEvent};

use crate::config::RunnerConfig;
use crate::run::RunHandle;

/// True once `pid` no longer exists (or is a zombie nobody has reaped yet).
pub async fn gone(pid: i32) -> bool {
    for _ in 0..50 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat) => {
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                if state.starts_with('Z') {
                    return true;
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates `<mirror>/<owner>/<name>.git` holding one commit of `files`.
pub fn bare_repo(mirror: &Path, owner: &str, name: &str, files: &[(&str, &str)]) {
    let work = tempfile::tempdir().unwrap();
    git(work.path(), &["init", "-q", "."]);
    for (path, content) in files {
        let full = work.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
    }
    git(work.path(), &["add", "-A"]);
    git(work.path(), &["commit", "-q", "-m", "fixture"]);
    let dest = mirror.join(owner).join(format!("{name}.git"));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    git(
        work.path(),
        &["clone", "-q", "--bare", ".", dest.to_str().unwrap()],
    );
}

/// A config whose runs clone from `<dir>/github` and work in `<dir>/work`.
pub fn config(dir: &Path) -> RunnerConfig {
    RunnerConfig {
        github_mirror: Some(crate::config::GithubMirror::Dir(dir.join("github"))),
        ..RunnerConfig::for_tests(&dir.join("work"))
    }
}

pub fn spec(id: &str, commands: &[&str], verify: &[&str]) -> RunStart {
    RunStart {
        run_id: id.into(),
        repo: "https://github.com/acme/demo".into(),
        git_ref: None,
        commands: commands.iter().map(|s| s.to_string()).collect(),
        verify: verify.iter().map(|s| s.to_string()).collect(),
        artifact: None,
        timeout_ms: 20_000,
        env: Default::default(),
        live: false,
    }
}

/// Serves the runner's routes on a loopback port.
pub async fn serve(cfg: RunnerConfig) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = crate::server::router(cfg).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

pub struct Ran {
    pub events: Vec<WireEvent>,
    pub receipts: Vec<Receipt>,
    pub result: RunResult,
}

pub fn parse(handle: &Arc<RunHandle>) -> Ran {
    let events: Vec<WireEvent> = handle
        .all_lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let receipts = events
        .iter()
        .filter_map(|e| match &e.event {
            RunEvent::Receipt(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    let result = match &events.last().unwrap().event {
        RunEvent::Result(r) => r.clone(),
        other => panic!("last event is not a result: {other:?}"),
    };
    Ran {
        events,
        receipts,
        result,
    }
}
