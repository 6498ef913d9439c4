//! A container that dies mid-run: the run ends `container_lost`, never stuck
//! `running`, and nothing of it is left running.

mod common;

use std::io::{BufRead, BufReader};

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
    let spec = json!({
        "repo": repo,
        "commands": ["echo go > /tmp/started; sleep 60"],
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
    let container = run_container_id(&run_id, &key);
    wait_in_container(&container, "/tmp/started");

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

    // The container dies (SIGKILL), as on a host failure.
    kill_container(&container);

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
    assert!(lifecycle.contains(&"exit"), "{lifecycle:?}");
    assert_eq!(
        lifecycle.last(),
        Some(&"container.release"),
        "{lifecycle:?}"
    );
    // Nothing brings it back for the ended run: not Docker's restart
    // policy, not the DO. (A container that died is left to Docker as it
    // is: `destroy()` of a stopped container does nothing.)
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        !container_running(&container),
        "the lost run's container came back"
    );
    assert_eq!(
        get(&format!("/api/runs/{run_id}/verify"), Some(&key)).json()["valid"],
        true
    );
    let listed = get("/api/runs", Some(&key)).json();
    assert_eq!(listed["runs"][0]["status"], "container_lost");
}
