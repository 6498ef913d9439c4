//! Repo runs metered by container time, with a price above 0
//! (`RUN_USD_PER_MINUTE` = 0.6, i.e. 10 micro-dollars per ms), over real
//! HTTP against `wrangler dev` and the real runner: the budget check before
//! any work, the hold, the settlement (container time × price, the rest
//! released), internal keys, and `Idempotency-Key` on `POST /api/runs`.

mod common;

use std::time::{Duration, Instant};

use cloudbox::billing::rules::{self, run_cost_micros};
use common::*;
use serde_json::{json, Value};

const PRICE: &str = "0.6";

fn price_micros() -> i64 {
    rules::parse_usd_var(PRICE).unwrap()
}

/// A key of the priced stack: (key, key id).
fn key(key_type: &str) -> (String, String) {
    stack_with_vars(&[("RUN_USD_PER_MINUTE", PRICE)]);
    let minted = mint_key(json!({"name": "metered", "keyType": key_type}));
    (
        minted["key"].as_str().unwrap().to_string(),
        minted["id"].as_str().unwrap().to_string(),
    )
}

fn credit(key_id: &str, usd: f64) {
    let resp = post_json(
        &format!("/billing/admin/{key_id}/credits"),
        Some(ADMIN_KEY),
        &json!({"amount": usd, "description": "top-up"}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text);
}

fn micros(v: &Value) -> i64 {
    rules::usd_to_micros(v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))).unwrap()
}

fn account(key: &str) -> Value {
    let resp = get("/billing/account", Some(key));
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.json()
}

fn transactions(key: &str) -> Vec<Value> {
    let resp = get("/billing/transactions", Some(key));
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.json()["transactions"].as_array().unwrap().clone()
}

fn runs(key: &str) -> Vec<Value> {
    let resp = get("/api/runs", Some(key));
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.json()["runs"].as_array().unwrap().clone()
}

fn usage_totals(key: &str) -> Value {
    let resp = get("/billing/usage", Some(key));
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.json()["totals"].clone()
}

/// The run is settled a moment after its answer: wait for the usage event.
fn wait_for_usage(key: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let totals = usage_totals(key);
        if totals["executions"] == 1 {
            return totals;
        }
        assert!(Instant::now() < deadline, "no usage recorded: {totals}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn post_run(key: &str, body: &Value, idem: Option<&str>) -> Resp {
    let auth = format!("Bearer {key}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(k) = idem {
        headers.push(("idempotency-key", k));
    }
    send(
        "POST",
        "/api/runs",
        &headers,
        Some(body.to_string().as_bytes()),
    )
}

/// clone + 1 command + 1 verify at 5 s each, + 60 s: 75 s at most = 0.75 USD.
fn short_run(repo: &str) -> Value {
    json!({"repo": repo, "commands": ["sleep 0.3"], "verify": ["true"], "timeoutMs": 5000})
}
const SHORT_RUN_MAX_MICROS: i64 = 750_000;

#[test]
fn without_available_credits_a_run_is_refused_before_any_work() {
    let (key, _) = key("standard");
    let repo = fixture_repo("acme", "broke", &[("README.md", "hi\n")]);
    let resp = post_run(&key, &short_run(&repo), None);
    assert_eq!(resp.status, 402, "{}", resp.text);
    let body = resp.json();
    assert_eq!(body["error"], "insufficient_credits");
    assert_eq!(body["details"]["currentBalance"], 0.0);
    assert!(runs(&key).is_empty(), "a refused run was created");
    assert!(transactions(&key).is_empty());
    assert_eq!(account(&key)["heldCredits"], 0.0);
}

#[test]
fn a_run_is_charged_exactly_its_container_time_times_the_price() {
    let (key, key_id) = key("standard");
    credit(&key_id, 5.0);
    let repo = fixture_repo("acme", "metered", &[("README.md", "hi\n")]);
    let resp = post_run(&key, &short_run(&repo), None);
    assert_eq!(resp.status, 200, "{}", resp.text);
    let run = resp.json();
    let run_id = run["runId"].as_str().unwrap();
    let container_ms = run["containerMs"].as_i64().unwrap();
    assert!(container_ms >= 300, "{container_ms}");
    let cost = run_cost_micros(container_ms, price_micros());
    assert!(cost > 0 && cost < SHORT_RUN_MAX_MICROS, "{cost}");

    let totals = wait_for_usage(&key);
    assert_eq!(micros(&totals["cost"]), cost);
    assert_eq!(micros(&totals["charged"]), cost);
    assert_eq!(totals["containerSeconds"], container_ms as f64 / 1000.0);

    // Newest first: release, usage, hold, credit.
    let txns = transactions(&key);
    let kinds: Vec<&str> = txns.iter().map(|t| t["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["release", "usage", "hold", "credit"], "{txns:?}");
    let (release, usage, hold) = (&txns[0], &txns[1], &txns[2]);
    for t in [release, usage, hold] {
        assert_eq!(t["runId"], run_id, "{t}");
    }
    assert_eq!(micros(&hold["amount"]), SHORT_RUN_MAX_MICROS);
    assert_eq!(micros(&hold["balanceAfter"]), 5_000_000);
    assert_eq!(micros(&usage["amount"]), -cost);
    assert_eq!(micros(&usage["balanceAfter"]), 5_000_000 - cost);
    assert_eq!(micros(&release["amount"]), SHORT_RUN_MAX_MICROS - cost);
    assert_eq!(micros(&release["balanceAfter"]), 5_000_000 - cost);

    let a = account(&key);
    assert_eq!(micros(&a["creditsBalance"]), 5_000_000 - cost);
    assert_eq!(a["heldCredits"], 0.0);
    assert_eq!(micros(&a["totalSpent"]), cost);

    // Nothing more happens later (the DO settles once).
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(transactions(&key).len(), 4);
    assert_eq!(usage_totals(&key)["executions"], 1);
}

#[test]
fn a_run_is_stopped_when_its_cost_reaches_the_hold() {
    let (key, key_id) = key("standard");
    credit(&key_id, 0.03); // 3 000 ms of container time
    let repo = fixture_repo("acme", "pricey", &[("README.md", "hi\n")]);
    let resp = post_run(
        &key,
        &json!({"repo": repo, "commands": ["sleep 30"], "verify": ["true"]}),
        None,
    );
    assert_eq!(resp.status, 422, "{}", resp.text);
    assert_eq!(resp.json()["status"], "timed_out");
    wait_for_usage(&key);
    let txns = transactions(&key);
    let kinds: Vec<&str> = txns.iter().map(|t| t["type"].as_str().unwrap()).collect();
    // The whole hold is used: no release entry.
    assert_eq!(kinds, ["usage", "hold", "credit"], "{txns:?}");
    assert_eq!(micros(&txns[1]["amount"]), 30_000);
    assert_eq!(micros(&txns[0]["amount"]), -30_000);
    let a = account(&key);
    assert_eq!(a["creditsBalance"], 0.0);
    assert_eq!(a["heldCredits"], 0.0);
    // And the next run is refused.
    assert_eq!(post_run(&key, &short_run(&repo), None).status, 402);
}

#[test]
fn an_internal_key_is_never_charged_but_its_usage_is_recorded() {
    let (key, _) = key("internal");
    let repo = fixture_repo("acme", "inhouse", &[("README.md", "hi\n")]);
    let resp = post_run(&key, &short_run(&repo), None);
    assert_eq!(resp.status, 200, "{}", resp.text);
    let container_ms = resp.json()["containerMs"].as_i64().unwrap();
    let totals = wait_for_usage(&key);
    assert_eq!(
        micros(&totals["cost"]),
        run_cost_micros(container_ms, price_micros())
    );
    assert_eq!(totals["charged"], 0.0);
    assert!(transactions(&key).is_empty());
}

#[test]
fn an_idempotent_retry_replays_the_run_and_starts_nothing() {
    let (key, key_id) = key("standard");
    credit(&key_id, 5.0);
    let repo = fixture_repo("acme", "once", &[("README.md", "hi\n")]);
    let body = short_run(&repo);
    let first = post_run(&key, &body, Some("run-once-1"));
    assert_eq!(first.status, 200, "{}", first.text);
    let run_id = first.json()["runId"].as_str().unwrap().to_string();
    assert_eq!(first.header("x-run-id"), Some(run_id.as_str()));

    let again = post_run(&key, &body, Some("run-once-1"));
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json()["runId"], run_id.as_str());
    assert_eq!(again.json()["receipts"], first.json()["receipts"]);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.header("x-run-id"), Some(run_id.as_str()));

    let other = post_run(
        &key,
        &json!({"repo": repo, "commands": ["echo other"], "timeoutMs": 5000}),
        Some("run-once-1"),
    );
    assert_eq!(other.status, 422, "{}", other.text);
    assert_eq!(other.json()["error"], "idempotency_key_reused");

    // One run, one hold.
    assert_eq!(runs(&key).len(), 1);
    wait_for_usage(&key);
    let holds = transactions(&key)
        .iter()
        .filter(|t| t["type"] == "hold")
        .count();
    assert_eq!(holds, 1);

    // An SSE retry of the same key attaches to the run it started (ended
    // here): its whole event stream, no second run or hold.
    let auth = format!("Bearer {key}");
    let sse = send(
        "POST",
        "/api/runs",
        &[
            ("authorization", auth.as_str()),
            ("accept", "text/event-stream"),
            ("idempotency-key", "run-once-1"),
        ],
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(sse.status, 200, "{}", sse.text);
    assert_eq!(sse.header("x-run-id"), Some(run_id.as_str()));
    assert_eq!(sse.header("idempotent-replayed"), Some("true"));
    let result = sse
        .text
        .split("\n\n")
        .find(|frame| frame.contains("event: result"))
        .and_then(|frame| frame.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|data| serde_json::from_str::<Value>(data).unwrap())
        .unwrap_or_else(|| panic!("no result event: {}", sse.text));
    assert_eq!(result["runId"], run_id.as_str());
    assert_eq!(result["receipts"], first.json()["receipts"]);
    assert_eq!(runs(&key).len(), 1);
    let holds = transactions(&key)
        .iter()
        .filter(|t| t["type"] == "hold")
        .count();
    assert_eq!(holds, 1);
}

#[test]
fn a_retry_while_the_first_run_is_going_is_409_in_flight() {
    let (key, key_id) = key("standard");
    credit(&key_id, 5.0);
    let repo = fixture_repo("acme", "inflight", &[("README.md", "hi\n")]);
    let body =
        json!({"repo": repo, "commands": ["sleep 4"], "verify": ["true"], "timeoutMs": 10000});
    let first = {
        let (key, body) = (key.clone(), body.clone());
        std::thread::spawn(move || post_run(&key, &body, Some("slow-1")))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while runs(&key).is_empty() {
        assert!(Instant::now() < deadline, "the first run never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let retry = post_run(&key, &body, Some("slow-1"));
    assert_eq!(retry.status, 409, "{}", retry.text);
    assert_eq!(retry.json()["error"], "in_flight");
    let first = first.join().unwrap();
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(runs(&key).len(), 1);
}

#[test]
fn a_client_that_hangs_up_gets_the_outcome_on_retry_without_a_second_run() {
    let (key, key_id) = key("standard");
    credit(&key_id, 5.0);
    let repo = fixture_repo("acme", "hangup", &[("README.md", "hi\n")]);
    let body =
        json!({"repo": repo, "commands": ["sleep 3"], "verify": ["true"], "timeoutMs": 10000});
    // The client gives up after 1 s; the run goes on in its DO.
    let impatient = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(1))
        .build();
    let first = impatient
        .post(&format!("{}/api/runs", current().base))
        .set("authorization", &format!("Bearer {key}"))
        .set("idempotency-key", "hangup-1")
        .send_json(body.clone());
    assert!(first.is_err(), "the first call was meant to time out");
    // The run's outcome is recorded for the key by the DO when it ends.
    let deadline = Instant::now() + Duration::from_secs(60);
    let replay = loop {
        let resp = post_run(&key, &body, Some("hangup-1"));
        if resp.status != 409 || Instant::now() > deadline {
            break resp;
        }
        assert_eq!(resp.json()["error"], "in_flight", "{}", resp.text);
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(replay.status, 200, "{}", replay.text);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.json()["status"], "passed", "{}", replay.text);
    let listed = runs(&key);
    assert_eq!(listed.len(), 1, "one run: {listed:?}");
    assert_eq!(replay.json()["runId"], listed[0]["runId"]);
    wait_for_usage(&key);
    let holds = transactions(&key)
        .iter()
        .filter(|t| t["type"] == "hold")
        .count();
    assert_eq!(holds, 1, "one hold");
}

#[test]
fn a_key_at_its_daily_limit_is_refused_with_429_before_any_work() {
    let (key, key_id) = key("standard");
    credit(&key_id, 5.0);
    let limits = post_json(
        &format!("/billing/admin/{key_id}/limits"),
        Some(ADMIN_KEY),
        &json!({"dailyLimit": 0}),
    );
    assert_eq!(limits.status, 200, "{}", limits.text);
    let repo = fixture_repo("acme", "capped", &[("README.md", "hi\n")]);
    let resp = post_run(&key, &short_run(&repo), None);
    assert_eq!(resp.status, 429, "{}", resp.text);
    assert_eq!(resp.json()["error"], "spending_limit_exceeded");
    assert!(runs(&key).is_empty(), "a refused run was created");
    assert_eq!(account(&key)["heldCredits"], 0.0);
    let kinds: Vec<Value> = transactions(&key)
        .iter()
        .map(|t| t["type"].clone())
        .collect();
    assert_eq!(kinds, vec![json!("credit")]);
}
