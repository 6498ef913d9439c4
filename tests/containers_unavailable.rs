//! When no container can be had (here: its image is gone, so every start
//! fails), a run or an execute answers 503 `runner_unavailable` with
//! `retry-after`, and nothing is created, held or charged. Its own binary:
//! it breaks the stack's image.

mod common;

use common::*;
use serde_json::{json, Value};

fn micros(v: &Value) -> i64 {
    (v.as_f64().unwrap() * 1e6).round() as i64
}

#[test]
fn without_a_container_runs_and_executes_answer_503_and_nothing_is_held() {
    stack_with_vars(&[("RUN_USD_PER_MINUTE", "0.6")]);
    let minted = mint_key(json!({"name": "unavailable"}));
    let key = minted["key"].as_str().unwrap().to_string();
    let key_id = minted["id"].as_str().unwrap().to_string();
    let credit = send(
        "POST",
        &format!("/billing/admin/{key_id}/credits"),
        &[
            ("authorization", &format!("Bearer {ADMIN_KEY}")),
            ("content-type", "application/json"),
        ],
        Some(
            json!({"amount": 5, "description": "test"})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(credit.status, 200, "{}", credit.text);
    let repo = fixture_repo("gone", "image", &[("README.md", "hi\n")]);

    // Every image wrangler built for the DO's containers goes.
    let (_, images) = docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    let built: Vec<&str> = images
        .lines()
        .filter(|i| i.starts_with("cloudflare-dev/cloudboxrunner:"))
        .collect();
    assert!(!built.is_empty(), "no runner image from wrangler: {images}");
    for image in built {
        let (ok, out) = docker(&["rmi", "-f", image]);
        assert!(ok, "docker rmi {image}: {out}");
    }

    let run = post_json(
        "/api/runs",
        Some(&key),
        &json!({"repo": repo, "commands": ["true"]}),
    );
    assert_eq!(run.status, 503, "{}", run.text);
    assert_eq!(run.json()["error"], "runner_unavailable");
    assert_eq!(run.header("retry-after"), Some("5"));

    let exec = post_json(
        "/execute",
        Some(&key),
        &json!({"task": "anything", "workspaceId": "never", "maxCostUsd": 0.5}),
    );
    assert_eq!(exec.status, 503, "{}", exec.text);
    assert_eq!(exec.json()["error"], "runner_unavailable");
    assert_eq!(exec.header("retry-after"), Some("5"));

    // Nothing was created: no run, no workspace; nothing held or charged.
    let runs = get("/api/runs", Some(&key)).json();
    assert_eq!(runs["runs"], json!([]), "{runs}");
    assert_eq!(get("/workspaces/never", Some(&key)).status, 404);
    let account = get("/billing/account", Some(&key)).json();
    assert_eq!(micros(&account["heldCredits"]), 0, "{account}");
    assert_eq!(micros(&account["creditsBalance"]), 5_000_000, "{account}");
    let usage = get("/billing/transactions?limit=50", Some(&key)).json();
    let charged: Vec<&Value> = usage["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["type"] == "usage")
        .collect();
    assert!(charged.is_empty(), "{usage}");
}
