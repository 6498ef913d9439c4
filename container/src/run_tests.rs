//! The runner natively: real git, real bash, fixture repos behind the mirror.

use std::sync::Arc;
use std::time::Duration;

use cloudbox::wire::receipts::{verify_chain, ReceiptKind};
use cloudbox::wire::{RunEvent, RunStatus, StreamName};

use super::*;
use crate::testing::{self, bare_repo, gone, parse, Ran};

struct Fixture {
    dir: tempfile::TempDir,
    cfg: RunnerConfig,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    bare_repo(
        &dir.path().join("github"),
        "acme",
        "demo",
        &[("README.md", "hello\n"), ("src/lib.txt", "one\ntwo\n")],
    );
    let cfg = testing::config(dir.path());
    Fixture { dir, cfg }
}

async fn run(fx: &Fixture, spec: RunStart) -> Ran {
    let handle = Arc::new(RunHandle::new());
    execute(&fx.cfg, spec, &handle).await;
    parse(&handle)
}

fn kinds(ran: &Ran) -> Vec<ReceiptKind> {
    ran.receipts.iter().map(|r| r.kind).collect()
}

#[tokio::test]
async fn clones_runs_commands_and_diffs_modified_and_new_files() {
    let fx = fixture();
    let spec = testing::spec(
        "run_ok",
        &[
            "echo changed >> README.md",
            "mkdir -p out && echo fresh > out/new.txt",
        ],
        &["test -f out/new.txt", "grep -q changed README.md"],
    );
    let ran = run(&fx, spec).await;
    use ReceiptKind::*;
    assert_eq!(
        kinds(&ran),
        vec![Clone, Command, Command, Verify, Verify, Diff]
    );
    assert!(
        ran.receipts.iter().take(5).all(|r| r.exit_code == Some(0)),
        "{:#?}",
        ran.receipts
    );
    assert!(ran.result.ok);
    assert_eq!(ran.result.status, RunStatus::Passed);
    let diff = ran.result.diff.as_deref().unwrap();
    assert!(diff.contains("+changed"), "{diff}");
    assert!(
        diff.contains("diff --git a/out/new.txt b/out/new.txt"),
        "{diff}"
    );
    assert!(diff.contains("+fresh"), "{diff}");
    assert!(verify_chain(&ran.receipts).valid);
    // Event numbers are 1, 2, 3, … with the result last.
    let seqs: Vec<u64> = ran.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=ran.events.len() as u64).collect::<Vec<_>>());
    // The run's directory is gone.
    assert!(!fx.cfg.work_dir.join("run_ok").exists());
}

#[tokio::test]
async fn a_failing_command_does_not_stop_later_steps_and_a_failing_verify_fails_the_run() {
    let fx = fixture();
    let spec = testing::spec(
        "run_fail",
        &["echo before; exit 4", "echo after > after.txt"],
        &["test -f after.txt", "false"],
    );
    let ran = run(&fx, spec).await;
    let exits: Vec<Option<i32>> = ran.receipts.iter().map(|r| r.exit_code).collect();
    assert_eq!(
        exits,
        vec![Some(0), Some(4), Some(0), Some(0), Some(1), Some(0)]
    );
    assert_eq!(ran.receipts[1].stdout, "before\n");
    assert!(!ran.result.ok);
    assert_eq!(ran.result.status, RunStatus::Failed);
}

#[tokio::test]
async fn output_streams_live_before_the_receipt() {
    let fx = fixture();
    let ran = run(
        &fx,
        testing::spec("run_live", &["echo hi; echo oops >&2"], &[]),
    )
    .await;
    let chunks: Vec<(u64, StreamName, String)> = ran
        .events
        .iter()
        .filter_map(|e| match &e.event {
            RunEvent::Output(c) => Some((c.step, c.stream, c.text.clone())),
            _ => None,
        })
        .collect();
    assert!(
        chunks.contains(&(2, StreamName::Stdout, "hi\n".into())),
        "{chunks:?}"
    );
    assert!(
        chunks.contains(&(2, StreamName::Stderr, "oops\n".into())),
        "{chunks:?}"
    );
}

#[tokio::test]
async fn run_env_is_given_and_the_runner_env_is_not() {
    std::env::set_var("CLOUDBOX_RUNNER_SECRET", "leak");
    let fx = fixture();
    let mut spec = testing::spec(
        "run_env",
        &["echo \"$GREETING[$CLOUDBOX_RUNNER_SECRET]\""],
        &[],
    );
    spec.env.insert("GREETING".into(), "hello".into());
    let ran = run(&fx, spec).await;
    assert_eq!(ran.receipts[1].stdout, "hello[]\n");
}

#[tokio::test]
async fn steps_get_the_runs_own_empty_home() {
    let fx = fixture();
    let spec = testing::spec(
        "run_home",
        &["echo \"$HOME\"; ls -A \"$HOME\" | wc -l"],
        &[],
    );
    let ran = run(&fx, spec).await;
    let out = &ran.receipts[1].stdout;
    let mut lines = out.lines();
    let home = lines.next().unwrap_or_default();
    assert!(home.ends_with("run_home/home"), "{out}");
    assert_eq!(lines.next().map(str::trim), Some("0"), "{out}");
}

#[tokio::test]
async fn a_timeout_kills_the_step_and_its_children() {
    let fx = fixture();
    let pids = fx.dir.path().join("pids");
    let script = format!(
        "sleep 60 & echo $! > {0}; echo $$ >> {0}; wait",
        pids.display()
    );
    let mut spec = testing::spec("run_timeout", &[&script, "echo next"], &[]);
    spec.timeout_ms = 1_000;
    let started = std::time::Instant::now();
    let ran = run(&fx, spec).await;
    assert!(started.elapsed() < Duration::from_secs(15));
    let step = &ran.receipts[1];
    assert!(step.timed_out);
    assert_eq!(step.exit_code, None);
    assert_eq!(step.signal.as_deref(), Some("SIGKILL"));
    assert!(step.stderr.contains("timed out after 1000 ms"));
    assert_eq!(ran.receipts[2].stdout, "next\n", "later steps still run");
    for pid in std::fs::read_to_string(&pids).unwrap().lines() {
        let pid: i32 = pid.trim().parse().unwrap();
        assert!(gone(pid).await, "process {pid} survived the timeout");
    }
    // No verify step: the contract's ok rule holds, and the timeout is on the receipt.
    assert!(ran.result.ok);
    let mut spec = testing::spec("run_timeout_verify", &[], &["sleep 30"]);
    spec.timeout_ms = 1_000;
    let ran = run(&fx, spec).await;
    assert_eq!(ran.result.status, RunStatus::TimedOut);
}

#[tokio::test]
async fn one_megabyte_of_output_keeps_the_last_64000_chars() {
    let fx = fixture();
    let cmd = "for i in $(seq 1 20000); do printf '%049d\\n' $i; done";
    let ran = run(&fx, testing::spec("run_big", &[cmd], &[])).await;
    let r = &ran.receipts[1];
    assert!(r.truncated);
    assert_eq!(r.stdout.chars().count(), 64_000);
    assert!(r.stdout.ends_with(&format!("{:049}\n", 20000)));
    let live: usize = ran
        .events
        .iter()
        .filter_map(|e| match &e.event {
            RunEvent::Output(c) => Some(c.text.len()),
            _ => None,
        })
        .sum();
    assert!(live < 300 * 1024, "live output is capped ({live} bytes)");
}

#[tokio::test]
async fn artifacts_are_read_or_reported_missing() {
    let fx = fixture();
    let mut spec = testing::spec(
        "run_art",
        &["mkdir -p out && printf 'score: 9\\n' > out/report.txt"],
        &[],
    );
    spec.artifact = Some("out/report.txt".into());
    let ran = run(&fx, spec).await;
    let art = ran.result.artifact.clone().unwrap();
    assert!(art.found);
    assert_eq!(art.content.as_deref(), Some("score: 9\n"));
    assert_eq!(art.bytes, 9);
    let receipt = ran
        .receipts
        .iter()
        .find(|r| r.kind == ReceiptKind::Artifact)
        .unwrap();
    assert_eq!(receipt.exit_code, Some(0));
    assert!(receipt.stdout.contains(art.sha256.as_deref().unwrap()));

    let mut spec = testing::spec("run_art_missing", &["true"], &[]);
    spec.artifact = Some("nope.txt".into());
    let ran = run(&fx, spec).await;
    let art = ran.result.artifact.clone().unwrap();
    assert!(!art.found && art.content.is_none());
    let receipt = ran
        .receipts
        .iter()
        .find(|r| r.kind == ReceiptKind::Artifact)
        .unwrap();
    assert_eq!(receipt.exit_code, Some(1));
}

#[tokio::test]
async fn an_artifact_symlink_cannot_escape_the_checkout() {
    let fx = fixture();
    let secret = fx.dir.path().join("secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    let mut spec = testing::spec(
        "run_escape",
        &[&format!("ln -s {} leak.txt", secret.display())],
        &[],
    );
    spec.artifact = Some("leak.txt".into());
    let ran = run(&fx, spec).await;
    let art = ran.result.artifact.unwrap();
    assert!(!art.found);
    assert!(art.content.is_none());
    assert!(art.error.unwrap().contains("outside the checkout"));
}

#[tokio::test]
async fn a_clone_of_an_unknown_repo_fails_the_run_without_running_steps() {
    let fx = fixture();
    let mut spec = testing::spec("run_noclone", &["echo never"], &["true"]);
    spec.repo = "https://github.com/acme/missing".into();
    let ran = run(&fx, spec).await;
    assert_eq!(kinds(&ran), vec![ReceiptKind::Clone]);
    assert_ne!(ran.receipts[0].exit_code, Some(0));
    assert!(!ran.result.ok);
    assert_eq!(ran.result.status, RunStatus::Failed);
}

#[tokio::test]
async fn a_ref_selects_the_branch() {
    let fx = fixture();
    let mut spec = testing::spec("run_ref", &["git rev-parse --abbrev-ref HEAD"], &[]);
    spec.git_ref = Some("main".into());
    let ran = run(&fx, spec).await;
    assert_eq!(ran.receipts[1].stdout, "main\n");
    let mut spec = testing::spec("run_badref", &["true"], &[]);
    spec.git_ref = Some("nope".into());
    let ran = run(&fx, spec).await;
    assert_ne!(ran.receipts[0].exit_code, Some(0));
}

#[tokio::test]
async fn cancel_mid_command_kills_it_and_records_a_cancel_receipt() {
    let fx = fixture();
    let pidfile = fx.dir.path().join("pid");
    let script = format!("echo $$ > {}; sleep 60", pidfile.display());
    let registry = Registry::new(fx.cfg.clone());
    let handle = registry
        .start(testing::spec(
            "run_cancel",
            &[&script, "echo never"],
            &["true"],
        ))
        .unwrap();
    let mut waited = 0;
    while !pidfile.exists() || std::fs::read_to_string(&pidfile).unwrap().trim().is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
        assert!(waited < 200, "command never started");
    }
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    handle.cancel();
    let mut waited = 0;
    while !handle.done.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
        assert!(waited < 200, "run did not end after cancel");
    }
    let ran = parse(&handle);
    assert_eq!(
        kinds(&ran),
        vec![
            ReceiptKind::Clone,
            ReceiptKind::Command,
            ReceiptKind::Cancel
        ]
    );
    assert_eq!(ran.receipts[1].signal.as_deref(), Some("SIGKILL"));
    assert_eq!(ran.result.status, RunStatus::Cancelled);
    assert!(!ran.result.ok);
    assert!(gone(pid).await, "cancelled command {pid} still running");
    assert!(verify_chain(&ran.receipts).valid);
    assert!(!fx.cfg.work_dir.join("run_cancel").exists());
}

#[tokio::test]
async fn a_resumed_stream_continues_after_the_given_event() {
    let fx = fixture();
    let registry = Registry::new(fx.cfg.clone());
    let handle = registry
        .start(testing::spec("run_resume", &["echo a", "echo b"], &[]))
        .unwrap();
    use futures_util::StreamExt;
    let all: String = handle
        .clone()
        .stream(0)
        .map(|r| r.unwrap())
        .collect::<Vec<_>>()
        .await
        .concat();
    let lines: Vec<&str> = all.lines().filter(|l| !l.contains("heartbeat")).collect();
    let rest: String = handle
        .clone()
        .stream(3)
        .map(|r| r.unwrap())
        .collect::<Vec<_>>()
        .await
        .concat();
    let rest: Vec<&str> = rest.lines().filter(|l| !l.contains("heartbeat")).collect();
    assert_eq!(rest, lines[3..].to_vec());
    assert!(matches!(
        registry.start(testing::spec("run_resume", &["x"], &[])),
        Err(StartError::Exists)
    ));
    assert!(matches!(
        registry.start(testing::spec("../evil", &["x"], &[])),
        Err(StartError::BadId)
    ));
}
