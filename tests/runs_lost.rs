//! A runner that dies mid-run: the run ends `container_lost`, never stuck
//! `running`. Its own test binary, because it kills the stack's runner.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn heartbeats_flow_then_a_killed_runner_ends_the_run_container_lost() {
    let stack = stack_with_vars(&[("SSE_HEARTBEAT_MS", "300")]);
    let key = mint_key(json!({"name": "lost"}))["key"]
        .as_str()
        .unwrap()
        .to_string();
    let repo = fixture_repo("acme", "lost", &[("README.md", "hi\n")]);
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let spec = json!({
        "repo": repo,
        "commands": [format!("echo go > {}; sleep 60", marker.display())],
        "verify": ["true"],
    });
    let resp = agent()
        .post(&format!("{}/api/runs", stack.base))
        .set("authorization", &format!("Bearer {key}"))
        .set("accept", "text/event-stream")
        .send_json(spec)
        .expect("POST /api/runs");
    let run_id = resp.header("x-run-id").unwrap().to_string();
    let mut reader = BufReader::new(resp.into_reader());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(50));
    }

    // While the step sleeps, the stream stays alive with heartbeat comments.
    let mut heartbeats = 0;
    let mut line = String::new();
    while heartbeats < 2 {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "stream ended early"
        );
        if line.starts_with(": heartbeat") {
            heartbeats += 1;
        }
    }
    let running = get(&format!("/api/runs/{run_id}"), Some(&key)).json();
    assert_eq!(running["status"], "running");
    assert!(running["ok"].is_null());

    kill_group(stack.runner_pid());

    // The stream ends with a container_lost result; the run is never left running.
    let mut last_data = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if let Some(d) = line.strip_prefix("data: ") {
            last_data = d.trim().to_string();
        }
    }
    let result: serde_json::Value = serde_json::from_str(&last_data).unwrap();
    assert_eq!(result["status"], "container_lost", "{result}");
    let body = get(&format!("/api/runs/{run_id}"), Some(&key)).json();
    assert_eq!(body["status"], "container_lost");
    assert_eq!(body["ok"], false);
    let receipts = body["receipts"].as_array().unwrap();
    let last = receipts.last().unwrap();
    assert_eq!(last["type"], "cancel");
    assert!(
        last["stderr"].as_str().unwrap().contains("container_lost"),
        "{last}"
    );
    let lifecycle: Vec<&str> = body["runnerReceipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(lifecycle.last(), Some(&"exit"));
    assert_eq!(
        get(&format!("/api/runs/{run_id}/verify"), Some(&key)).json()["valid"],
        true
    );
    let listed = get("/api/runs", Some(&key)).json();
    assert_eq!(listed["runs"][0]["status"], "container_lost");
}
