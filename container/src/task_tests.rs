//! Workspace tasks natively: a real blob cache, real files, real processes,
//! a scripted agent (AGENT_COMMAND) and a scripted upstream model behind the
//! real metering proxy.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use cloudbox::wire::{RunEvent, TaskResult, TaskStart, WireEvent};
use cloudbox::workspaces::manifest::FileEntry;

use crate::blob_cache::BlobCache;
use crate::config::RunnerConfig;
use crate::run::RunHandle;

struct Fixture {
    _dir: tempfile::TempDir,
    cfg: Arc<RunnerConfig>,
    cache: Arc<BlobCache>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RunnerConfig::for_tests(&dir.path().join("work"));
    let cache = Arc::new(BlobCache::open(cfg.blob_dir.clone()).unwrap());
    Fixture {
        cfg: Arc::new(cfg),
        cache,
        _dir: dir,
    }
}

/// Puts `files` into the cache; returns their manifest entries.
fn seed(cache: &BlobCache, files: &[(&str, &str)]) -> Vec<FileEntry> {
    let src = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let p = src.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    crate::tree::scan(cache, src.path(), &[]).unwrap()
}

fn start(id: &str, command: &str, files: Vec<FileEntry>, model: &str) -> TaskStart {
    TaskStart {
        task_id: id.into(),
        task: "do the thing".into(),
        files,
        session: vec![],
        resume_thread: None,
        agent_command: Some(command.into()),
        model: "test-model".into(),
        model_base_url: model.into(),
        model_api_key: Some("upstream-secret".into()),
        input_micros_per_1k: 15_000,
        output_micros_per_1k: 45_000,
        max_cost_micros: None,
        timeout_ms: 20_000,
    }
}

async fn run(fx: &Fixture, start: TaskStart) -> (Vec<WireEvent>, TaskResult) {
    let handle = Arc::new(RunHandle::new());
    crate::task::execute(fx.cfg.clone(), fx.cache.clone(), start, handle.clone()).await;
    let events: Vec<WireEvent> = handle
        .all_lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let result = match &events.last().unwrap().event {
        RunEvent::Task(r) => r.clone(),
        other => panic!("last event is not a task result: {other:?}"),
    };
    (events, result)
}

fn paths(files: &[FileEntry]) -> Vec<&str> {
    files.iter().map(|f| f.path.as_str()).collect()
}

/// A model that answers every call with 1000 input + 100 output tokens.
async fn upstream_model() -> String {
    let app = Router::new().route(
        "/v1/responses",
        post(|_: HeaderMap| async move {
            let body = "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":1000,\"output_tokens\":100}}}\n\n";
            ([("content-type", "text/event-stream")], body).into_response()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn the_agent_edits_the_workspace_and_the_new_tree_comes_back_cached() {
    let fx = fixture();
    let files = seed(
        &fx.cache,
        &[("keep.txt", "same"), ("edit.txt", "old"), ("gone.txt", "x")],
    );
    let script = r#"printf new > edit.txt; rm gone.txt; mkdir -p src; printf 'fn main(){}' > src/main.rs
echo '{"type":"thread.started","thread_id":"th-1"}'
echo '{"type":"item.completed","item":{"type":"agent_message","text":"edited"}}'
echo '{"type":"turn.completed","usage":{"input_tokens":6548,"output_tokens":108}}'"#;
    let (events, result) = run(
        &fx,
        start("task_edit", script, files.clone(), "http://127.0.0.1:9/v1"),
    )
    .await;
    assert!(result.ok, "{result:?}");
    assert_eq!(result.output, "edited");
    assert_eq!(result.thread_id.as_deref(), Some("th-1"));
    assert_eq!(
        paths(&result.files),
        ["edit.txt", "keep.txt", "src/main.rs"]
    );
    // 6548 in + 108 out at the contract's prices = 0.10308 USD.
    assert_eq!(result.cost_micros, 103_080);
    for f in &result.files {
        assert!(fx.cache.contains(&f.sha256), "{} not cached", f.path);
    }
    let keep = result.files.iter().find(|f| f.path == "keep.txt").unwrap();
    assert_eq!(
        keep.sha256,
        files.iter().find(|f| f.path == "keep.txt").unwrap().sha256
    );
    let receipts: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            RunEvent::Receipt(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].exit_code, Some(0));
    assert!(
        !fx.cfg.work_dir.join("task_edit").exists(),
        "task dir left behind"
    );
}

#[tokio::test]
async fn model_calls_are_metered_through_the_proxy_and_stopped_at_the_cap() {
    let fx = fixture();
    let model = upstream_model().await;
    // Calls the model until stopped; the agent only knows the proxy URL and
    // a placeholder key.
    let script = r#"test "$CLOUDBOX_MODEL_KEY" = cloudbox-proxy || exit 3
while true; do curl -sf -X POST "$CLOUDBOX_MODEL_BASE_URL/responses" -d '{}' > /dev/null || true; sleep 0.05; done"#;
    let mut task = start("task_cap", script, vec![], &model);
    // Each call costs 15 000 + 4 500 = 19 500 micro-dollars; cap after 3.
    task.max_cost_micros = Some(50_000);
    let (events, result) = run(&fx, task).await;
    assert!(result.stopped_at_cap, "{result:?}");
    assert!(!result.ok);
    assert_eq!(result.usage.input_tokens % 1000, 0);
    let calls = result.usage.input_tokens / 1000;
    assert!((3..=4).contains(&calls), "{calls} calls metered");
    assert_eq!(result.cost_micros, calls as i64 * 19_500);
    let usage_events = events
        .iter()
        .filter(|e| matches!(e.event, RunEvent::Usage(_)))
        .count();
    assert_eq!(usage_events as u64, calls);
}

#[tokio::test]
async fn cancel_stops_the_agent_and_reports_it() {
    let fx = fixture();
    let handle = Arc::new(RunHandle::new());
    let task = start("task_cancel", "sleep 30", vec![], "http://127.0.0.1:9/v1");
    let h = handle.clone();
    let cfg = fx.cfg.clone();
    let cache = fx.cache.clone();
    let running = tokio::spawn(async move { crate::task::execute(cfg, cache, task, h).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    handle.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap();
    let last: WireEvent = serde_json::from_str(handle.all_lines().last().unwrap()).unwrap();
    match last.event {
        RunEvent::Task(r) => {
            assert!(r.cancelled && !r.ok, "{r:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn session_files_are_returned_and_restored_for_the_next_task() {
    let fx = fixture();
    let first = r#"mkdir -p "$CODEX_HOME/sessions/2026" && echo "turn one" > "$CODEX_HOME/sessions/2026/rollout-th.jsonl"
mkdir -p "$CODEX_HOME/tmp" && echo junk > "$CODEX_HOME/tmp/x""#;
    let (_, one) = run(
        &fx,
        start("task_s1", first, vec![], "http://127.0.0.1:9/v1"),
    )
    .await;
    assert!(one.ok, "{one:?}");
    assert_eq!(paths(&one.session), ["sessions/2026/rollout-th.jsonl"]);
    let second = r#"cat "$CODEX_HOME/sessions/2026/rollout-th.jsonl" > seen.txt"#;
    let mut task = start("task_s2", second, vec![], "http://127.0.0.1:9/v1");
    task.session = one.session.clone();
    task.resume_thread = Some("th".into());
    let (_, two) = run(&fx, task).await;
    assert!(two.ok, "{two:?}");
    let seen = two.files.iter().find(|f| f.path == "seen.txt").unwrap();
    let bytes = std::fs::read(fx.cache.path(&seen.sha256).unwrap()).unwrap();
    assert_eq!(bytes, b"turn one\n");
    assert_eq!(two.thread_id.as_deref(), Some("th"));
}

#[tokio::test]
async fn a_failing_agent_is_reported_with_its_error() {
    let fx = fixture();
    let (_, result) = run(
        &fx,
        start(
            "task_fail",
            "echo boom >&2; exit 4",
            vec![],
            "http://127.0.0.1:9/v1",
        ),
    )
    .await;
    assert!(!result.ok);
    assert_eq!(result.exit_code, Some(4));
    assert!(result.error.unwrap_or_default().contains("boom"));
}

#[tokio::test]
async fn the_agent_gets_its_own_home_not_the_runners() {
    let fx = fixture();
    let script = r#"printf '%s' "$HOME" > home.txt; ls -A "$HOME" > listing.txt"#;
    let (_, result) = run(
        &fx,
        start("task_home", script, vec![], "http://127.0.0.1:9/v1"),
    )
    .await;
    assert!(result.ok, "{result:?}");
    let blob = |path: &str| {
        let entry = result.files.iter().find(|f| f.path == path).unwrap();
        std::fs::read_to_string(fx.cache.path(&entry.sha256).unwrap()).unwrap()
    };
    let home = blob("home.txt");
    assert!(home.ends_with("task_home/home"), "{home}");
    assert_ne!(home, fx.cfg.home);
    assert_eq!(blob("listing.txt"), "", "a fresh home is empty");
}
