//! The runner alone, in a container of the runner image, with its real Codex
//! CLI (npm `@openai/codex`) against the scripted Responses-API server: workspace blobs pushed to the
//! runner, a task that makes the CLI run a tool that writes a file, usage
//! metered per model call by the runner's proxy, and the session resumed by a
//! second task in a fresh CODEX_HOME from the session files the first
//! returned — what a new container sees.

mod common;
#[path = "common/responses_server.rs"]
#[allow(dead_code)] // each user takes a different part of it
mod responses_server;

use std::io::Read;

use cloudbox::wire::{RunEvent, TaskResult, TaskStart, WireEvent};
use cloudbox::workspaces::manifest::FileEntry;
use responses_server::{ModelServer, USAGE_IN, USAGE_OUT};
use sha2::{Digest, Sha256};

fn runner() -> common::RunnerContainer {
    common::runner_container(&[])
}

fn put_blob(runner: &common::RunnerContainer, bytes: &[u8]) -> String {
    let sha = hex::encode(Sha256::digest(bytes));
    let resp = runner
        .request("PUT", &format!("/blobs/{sha}"))
        .send_bytes(bytes)
        .unwrap();
    assert!([200, 201].contains(&resp.status()));
    sha
}

fn run_task(runner: &common::RunnerContainer, start: &TaskStart) -> (Vec<WireEvent>, TaskResult) {
    let resp = runner
        .request("POST", "/tasks")
        .send_json(serde_json::to_value(start).unwrap())
        .unwrap();
    let mut body = String::new();
    resp.into_reader().read_to_string(&mut body).unwrap();
    let events: Vec<WireEvent> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &WireEvent| e.seq > 0)
        .collect();
    let result = match &events.last().expect("events").event {
        RunEvent::Task(result) => result.clone(),
        other => panic!("last event: {other:?}"),
    };
    (events, result)
}

fn start(id: &str, task: &str, files: Vec<FileEntry>, model: &ModelServer) -> TaskStart {
    TaskStart {
        task_id: id.into(),
        task: task.into(),
        files,
        session: vec![],
        resume_thread: None,
        agent_command: None,
        model: "test-model".into(),
        model_base_url: model.base_url.clone(),
        model_api_key: Some("upstream-secret".into()),
        input_micros_per_1k: 15_000,
        output_micros_per_1k: 45_000,
        max_cost_micros: None,
        timeout_ms: 120_000,
    }
}

fn blob(runner: &common::RunnerContainer, sha: &str) -> Vec<u8> {
    let resp = runner
        .request("GET", &format!("/blobs/{sha}"))
        .call()
        .unwrap();
    let mut bytes = Vec::new();
    resp.into_reader().read_to_end(&mut bytes).unwrap();
    bytes
}

#[test]
fn the_codex_cli_edits_the_workspace_and_resumes_its_session_in_a_fresh_home() {
    let runner = runner();
    let model = ModelServer::start_on(&common::containers().bridge_ip);
    let readme = put_blob(&runner, b"# demo\n");
    let files = vec![FileEntry {
        path: "README.md".into(),
        sha256: readme,
        size: 7,
        mode: 0o644,
    }];

    let (events, first) = run_task(
        &runner,
        &start(
            "codex_1",
            "write notes/hello.txt hi-from-codex",
            files,
            &model,
        ),
    );
    assert!(first.ok, "{first:?}");
    let thread = first.thread_id.clone().expect("thread id");
    let paths: Vec<&str> = first.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["README.md", "notes/hello.txt"]);
    let hello = first
        .files
        .iter()
        .find(|f| f.path == "notes/hello.txt")
        .unwrap();
    assert_eq!(blob(&runner, &hello.sha256), b"hi-from-codex");
    assert_eq!(first.output, "wrote notes/hello.txt");
    // Two model calls (tool call, then the message), each metered by the proxy.
    assert_eq!(first.usage.input_tokens, 2 * USAGE_IN);
    assert_eq!(first.usage.output_tokens, 2 * USAGE_OUT);
    let usage_events = events
        .iter()
        .filter(|e| matches!(e.event, RunEvent::Usage(_)))
        .count();
    assert_eq!(usage_events, 2);
    assert!(
        first
            .session
            .iter()
            .any(|f| f.path.starts_with("sessions/") && f.path.contains(&thread)),
        "no rollout file for {thread}: {:?}",
        first.session
    );
    // The upstream saw the real credential's effect only through the proxy:
    // the CLI itself never had it (its key is a placeholder).
    let calls_after_first = model.request_count();

    let mut second = start(
        "codex_2",
        "what did you write before?",
        first.files.clone(),
        &model,
    );
    second.resume_thread = Some(thread.clone());
    second.session = first.session.clone();
    let (_, resumed) = run_task(&runner, &second);
    assert!(resumed.ok, "{resumed:?}");
    assert_eq!(resumed.thread_id.as_deref(), Some(thread.as_str()));
    let requests = model.requests.lock().unwrap();
    let history = requests[calls_after_first].to_string();
    assert!(
        history.contains("write notes/hello.txt hi-from-codex"),
        "the resumed conversation does not carry the first task"
    );
}
