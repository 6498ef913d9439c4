//! `POST /execute` end to end: the wasm Worker under `wrangler dev`, the real
//! runner and the real Codex CLI (npm `@openai/codex`), with the scripted
//! Responses-API server (`common/responses_server.rs`) as the only stand-in.
//! Each task text carries a nonce, so a test finds its own model requests.
//!
//! Tests that kill or restart the stack's runner, or that need the machine
//! to themselves (the budget race), take the runner lock exclusively; the
//! others share it.

mod common;
#[path = "common/responses_server.rs"]
#[allow(dead_code)] // each user takes a different part of it
mod responses_server;

use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use cloudbox::billing::rules::{self, Pricing};
use common::*;
use responses_server::{ModelServer, USAGE_IN, USAGE_OUT};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Stack, keys, model

/// The scripted model server, started before this binary's stack, whose
/// Worker sends every agent's model calls to it (through the runner's proxy).
fn model() -> &'static ModelServer {
    static MODEL: OnceLock<ModelServer> = OnceLock::new();
    let model = MODEL.get_or_init(|| ModelServer::start_on(&containers().bridge_ip));
    stack_with_vars(&[
        ("AGENT_MODEL_BASE_URL", model.base_url.as_str()),
        ("AGENT_MODEL", "test-model"),
        ("OPENAI_API_KEY", "upstream-secret"),
    ]);
    model
}

static RUNNER: RwLock<()> = RwLock::new(());

/// For tests that use the stack's runner as it is.
fn shared() -> RwLockReadGuard<'static, ()> {
    RUNNER.read().unwrap_or_else(|e| e.into_inner())
}

/// For tests that kill or restart the runner, or must run alone.
fn exclusive() -> RwLockWriteGuard<'static, ()> {
    RUNNER.write().unwrap_or_else(|e| e.into_inner())
}

/// A unique token for task texts and workspace ids.
fn nonce() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    format!("n{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[derive(Clone)]
struct Key {
    key: String,
    id: String,
}

fn new_key(key_type: &str) -> Key {
    model();
    let minted = mint_key(json!({"name": "execute", "keyType": key_type}));
    Key {
        key: minted["key"].as_str().unwrap().to_string(),
        id: minted["id"].as_str().unwrap().to_string(),
    }
}

/// What most tests credit: enough that no low-balance alert is active
/// (`LOW_BALANCE_USD` = 1.00), which is tested on its own.
const CREDITS_USD: f64 = 5.0;
const CREDITS: i64 = 5_000_000;

/// A standard key with `usd` of credits.
fn funded_key(usd: f64) -> Key {
    let key = new_key("standard");
    let resp = post_json(
        &format!("/billing/admin/{}/credits", key.id),
        Some(ADMIN_KEY),
        &json!({"amount": usd, "description": "top-up"}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text);
    key
}

// ---------------------------------------------------------------------------
// Money

fn micros(v: &Value) -> i64 {
    rules::usd_to_micros(v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))).unwrap()
}

/// The price of `input` + `output` tokens (the wrangler.toml defaults).
fn cost(input: u64, output: u64) -> i64 {
    Pricing::DEFAULT.cost_micros(input, output)
}

/// The price of the tokens a body's `usage` reports.
fn usage_cost(body: &Value) -> i64 {
    let usage = &body["usage"];
    cost(
        usage["inputTokens"].as_u64().unwrap(),
        usage["outputTokens"].as_u64().unwrap(),
    )
}

fn account(key: &Key) -> Value {
    let resp = get("/billing/account", Some(&key.key));
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.json()
}

fn transactions(key: &Key) -> Vec<Value> {
    let resp = get("/billing/transactions?limit=100", Some(&key.key));
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.json()["transactions"].as_array().unwrap().clone()
}

fn usage_entries(key: &Key) -> Vec<Value> {
    transactions(key)
        .into_iter()
        .filter(|t| t["type"] == "usage")
        .collect()
}

/// Waits (briefly) until the account holds nothing, then returns it.
fn settled_account(key: &Key) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let a = account(key);
        if a["heldCredits"] == 0.0 {
            return a;
        }
        assert!(Instant::now() < deadline, "a hold stays open: {a}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------
// Execute

fn execute_with(key: &Key, body: &Value, extra: &[(&str, &str)]) -> Resp {
    let auth = format!("Bearer {}", key.key);
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    send(
        "POST",
        "/execute",
        &headers,
        Some(body.to_string().as_bytes()),
    )
}

fn execute(key: &Key, body: &Value) -> Resp {
    execute_with(key, body, &[])
}

/// A 200 execute: checks the common shape and returns the body.
fn succeeded(resp: &Resp, workspace: &str) -> Value {
    assert_eq!(resp.status, 200, "{}", resp.text);
    let body = resp.json();
    assert_eq!(body["ok"], true, "{body}");
    assert_eq!(body["status"], "succeeded", "{body}");
    assert_eq!(body["workspaceId"], workspace, "{body}");
    let run_id = body["runId"].as_str().expect("runId");
    assert!(run_id.starts_with("exe_"), "{run_id}");
    assert_eq!(resp.header("x-run-id"), Some(run_id));
    assert!(!body["sessionId"].as_str().expect("sessionId").is_empty());
    check_usage(&body);
    let receipts = body["receipts"].as_array().expect("receipts");
    assert!(
        receipts.iter().any(|r| r["type"] == "exec"),
        "no exec receipt: {body}"
    );
    body
}

/// A 422 execute with `status`: nothing committed, returns the body.
fn not_ok(resp: &Resp, status: &str, version: u64) -> Value {
    assert_eq!(resp.status, 422, "{}", resp.text);
    let body = resp.json();
    assert_eq!(body["ok"], false, "{body}");
    assert_eq!(body["error"], "execution_failed", "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert!(body["message"].is_string(), "{body}");
    assert_eq!(body["version"], version, "{body}");
    assert_eq!(body["changedFiles"], json!([]), "{body}");
    let run_id = body["runId"].as_str().expect("runId");
    assert_eq!(resp.header("x-run-id"), Some(run_id));
    check_usage(&body);
    body
}

/// `usage` is consistent: totals add up and the cost is tokens × price.
fn check_usage(body: &Value) {
    let usage = &body["usage"];
    let (input, output) = (
        usage["inputTokens"].as_u64().expect("inputTokens"),
        usage["outputTokens"].as_u64().expect("outputTokens"),
    );
    assert_eq!(usage["totalTokens"], input + output, "{body}");
    assert_eq!(micros(&usage["totalCost"]), cost(input, output), "{body}");
}

// ---------------------------------------------------------------------------
// Workspaces

fn workspace(key: &Key, id: &str) -> Resp {
    get(&format!("/workspaces/{id}"), Some(&key.key))
}

/// (version, paths) of a workspace's current manifest.
fn manifest(key: &Key, id: &str) -> (u64, Vec<String>) {
    let resp = get(&format!("/workspaces/{id}/manifest"), Some(&key.key));
    assert_eq!(resp.status, 200, "{}", resp.text);
    let m = resp.json();
    let paths = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect();
    (m["version"].as_u64().unwrap(), paths)
}

fn read_file(key: &Key, id: &str, path: &str) -> Resp {
    get(&format!("/workspaces/{id}/files/{path}"), Some(&key.key))
}

/// Writes `seed.txt` into a new workspace: version 1.
fn seed(key: &Key, id: &str) {
    let auth = format!("Bearer {}", key.key);
    let resp = send(
        "PUT",
        &format!("/workspaces/{id}/files/seed.txt"),
        &[("authorization", auth.as_str())],
        Some(b"seed\n"),
    );
    assert_eq!(resp.status, 201, "{}", resp.text);
    assert_eq!(resp.json()["version"], 1);
}

// ---------------------------------------------------------------------------
// SSE

#[derive(Debug)]
struct Event {
    id: Option<u64>,
    event: String,
    data: Option<String>,
}

impl Event {
    fn json(&self) -> Value {
        let data = self.data.as_deref().unwrap_or_default();
        serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

struct Sse {
    run_id: String,
    budget_warning: Option<String>,
    replayed: Option<String>,
    reader: BufReader<Box<dyn Read + Send + Sync>>,
}

/// `POST /execute` as an SSE stream (the headers arrive before the body).
fn execute_sse(key: &Key, body: &Value) -> Sse {
    execute_sse_with(key, body, &[])
}

fn execute_sse_with(key: &Key, body: &Value, extra: &[(&str, &str)]) -> Sse {
    let mut req = agent()
        .post(&format!("{}/execute", current().base))
        .set("authorization", &format!("Bearer {}", key.key))
        .set("accept", "text/event-stream");
    for (name, value) in extra {
        req = req.set(name, value);
    }
    let resp = req
        .send_json(body.clone())
        .unwrap_or_else(|e| panic!("POST /execute (SSE): {e}"));
    let sse = sse_of(resp);
    assert!(!sse.run_id.is_empty(), "no x-run-id");
    sse
}

/// `GET /execute/:runId/events` after `last`.
fn execute_events(key: &Key, run_id: &str, last: u64) -> Sse {
    let resp = agent()
        .get(&format!("{}/execute/{run_id}/events", current().base))
        .set("authorization", &format!("Bearer {}", key.key))
        .set("last-event-id", &last.to_string())
        .call()
        .unwrap_or_else(|e| panic!("GET /execute/{run_id}/events: {e}"));
    let mut sse = sse_of(resp);
    sse.run_id = run_id.to_string();
    sse
}

fn sse_of(resp: ureq::Response) -> Sse {
    assert_eq!(resp.status(), 200);
    assert!(
        resp.content_type().starts_with("text/event-stream"),
        "{}",
        resp.content_type()
    );
    Sse {
        run_id: resp.header("x-run-id").unwrap_or_default().to_string(),
        budget_warning: resp.header("x-budget-warning").map(str::to_string),
        replayed: resp.header("idempotent-replayed").map(str::to_string),
        reader: BufReader::new(resp.into_reader()),
    }
}

impl Sse {
    /// The next event (comments and data-less field blocks such as
    /// `retry:` skipped, as an EventSource does), or `None` at the end.
    fn next(&mut self) -> Option<Event> {
        let mut event = Event {
            id: None,
            event: "message".into(),
            data: None,
        };
        loop {
            let mut line = String::new();
            let at_end = self.reader.read_line(&mut line).unwrap_or(0) == 0;
            let line = line.trim_end_matches(['\r', '\n']);
            if at_end || line.is_empty() {
                if let Some(data) = event.data.take() {
                    return Some(Event {
                        id: event.id,
                        event: event.event,
                        data: Some(data),
                    });
                }
                if at_end {
                    return None;
                }
                event.id = None;
                event.event = "message".into();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match name {
                "id" => event.id = Some(value.parse().expect("numeric id")),
                "event" => event.event = value.to_string(),
                "data" => match &mut event.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => event.data = Some(value.to_string()),
                },
                _ => {}
            }
        }
    }

    fn rest(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.next()).collect()
    }
}

/// What the agent's tool calls returned to the model, for failure messages.
fn tool_outputs(model: &ModelServer, task: &str) -> String {
    let outputs: Vec<Value> = model
        .requests_for(task)
        .iter()
        .flat_map(|r| r["input"].as_array().cloned().unwrap_or_default())
        .filter(|i| i["type"] == "function_call_output")
        .collect();
    format!("tool outputs for {task:?}: {outputs:?}")
}

fn wait_for_model_call(model: &ModelServer, task: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while model.requests_for(task).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the agent never called the model"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// Execute

#[test]
fn an_internal_key_runs_unbilled_and_commits_what_the_agent_wrote() {
    let _lock = shared();
    let m = model();
    let a = new_key("internal");
    let n = nonce();
    let ws = format!("ws-{n}");
    let path = format!("notes/{n}.txt");
    let task = format!("write {path} hello-{n}");
    let resp = execute(&a, &json!({"task": task, "workspaceId": ws}));
    let body = succeeded(&resp, &ws);
    assert!(body.get("billing").is_none(), "billed: {body}");
    assert_eq!(body["version"], 1);
    assert_eq!(
        body["changedFiles"],
        json!([path]),
        "{}",
        tool_outputs(m, &task)
    );
    assert_eq!(body["output"], format!("wrote {path}"));
    // A tool call, then the message: two model calls, both metered.
    let calls = m.requests_for(&task).len() as u64;
    assert_eq!(calls, 2);
    assert_eq!(body["usage"]["inputTokens"], calls * USAGE_IN);
    assert_eq!(body["usage"]["outputTokens"], calls * USAGE_OUT);
    // The upstream got the real credential (from the runner's proxy) only.
    let auths = m.authorizations.lock().unwrap().clone();
    assert!(
        auths.iter().all(|a| a == "Bearer upstream-secret"),
        "{auths:?}"
    );

    let info = workspace(&a, &ws);
    assert_eq!(info.status, 200, "{}", info.text);
    let info = info.json();
    assert_eq!(info["version"], 1);
    assert_eq!(info["files"], 1);
    assert_eq!(info["sessionId"], body["sessionId"]);
    let file = read_file(&a, &ws, &path);
    assert_eq!(file.status, 200, "{}", file.text);
    assert_eq!(file.text, format!("hello-{n}"));

    // Internal keys: nothing held, nothing charged.
    assert!(transactions(&a).is_empty(), "{:?}", transactions(&a));
    let acct = account(&a);
    assert_eq!(acct["creditsBalance"], 0.0);
    assert_eq!(acct["heldCredits"], 0.0);

    // Another account: the same id is another (so far absent) workspace,
    // and A's session is not one of its sessions.
    let b = new_key("internal");
    assert_eq!(workspace(&b, &ws).status, 404);
    assert_eq!(read_file(&b, &ws, &path).status, 404);
    let foreign = execute(
        &b,
        &json!({"task": format!("echo {n}"), "workspaceId": ws, "sessionId": body["sessionId"]}),
    );
    assert_eq!(foreign.status, 400, "{}", foreign.text);
    assert_eq!(foreign.json()["details"][0]["field"], "sessionId");
    let other = format!("other-{n}.txt");
    let task_b = format!("write {other} b-{n}");
    let body_b = succeeded(
        &execute(&b, &json!({"task": task_b, "workspaceId": ws})),
        &ws,
    );
    assert_eq!(body_b["version"], 1);
    assert_eq!(
        body_b["changedFiles"],
        json!([other]),
        "{}",
        tool_outputs(m, &task_b)
    );
    assert_ne!(body_b["sessionId"], body["sessionId"]);
    assert_eq!(manifest(&b, &ws), (1, vec![other.clone()]));
    assert_eq!(manifest(&a, &ws), (1, vec![path.clone()]));
    assert_eq!(read_file(&a, &ws, &other).status, 404);
}

#[test]
fn a_standard_key_is_charged_tokens_times_price_then_stopped_at_its_daily_limit() {
    let _lock = shared();
    let m = model();
    let k = funded_key(CREDITS_USD);
    let n = nonce();
    let ws = format!("ws-{n}");
    let path = format!("{n}.txt");
    let task = format!("write {path} paid-{n}");
    let resp = execute(&k, &json!({"task": task, "workspaceId": ws}));
    let body = succeeded(&resp, &ws);
    assert_eq!(resp.header("x-budget-warning"), None, "no alert is active");
    let run_id = body["runId"].as_str().unwrap();
    let calls = m.requests_for(&task).len() as u64;
    assert_eq!(calls, 2);
    let expected = cost(calls * USAGE_IN, calls * USAGE_OUT);
    assert_eq!(expected, 39_000);
    assert_eq!(micros(&body["usage"]["totalCost"]), expected);
    assert_eq!(micros(&body["billing"]["balanceAfter"]), CREDITS - expected);
    assert_eq!(micros(&body["billing"]["totalSpent"]), expected);

    let acct = settled_account(&k);
    assert_eq!(micros(&acct["creditsBalance"]), CREDITS - expected);
    assert_eq!(micros(&acct["totalSpent"]), expected);
    assert_eq!(micros(&acct["spentToday"]), expected);
    let usage = usage_entries(&k);
    assert_eq!(usage.len(), 1, "{usage:?}");
    assert_eq!(micros(&usage[0]["amount"]), -expected);
    assert_eq!(usage[0]["runId"], run_id);
    assert_eq!(read_file(&k, &ws, &path).text, format!("paid-{n}"));

    // The key's daily limit is now reached: refused before any work.
    let limits = post_json(
        &format!("/billing/admin/{}/limits", k.id),
        Some(ADMIN_KEY),
        &json!({"dailyLimit": rules::micros_to_usd(expected)}),
    );
    assert_eq!(limits.status, 200, "{}", limits.text);
    let before = transactions(&k).len();
    let task2 = format!("echo over-limit {n}");
    let refused = execute(&k, &json!({"task": task2, "workspaceId": ws}));
    assert_eq!(refused.status, 429, "{}", refused.text);
    assert_eq!(refused.json()["error"], "spending_limit_exceeded");
    assert!(m.requests_for(&task2).is_empty());
    assert_eq!(transactions(&k).len(), before);
    let acct = account(&k);
    assert_eq!(acct["heldCredits"], 0.0);
    assert_eq!(micros(&acct["creditsBalance"]), CREDITS - expected);
    assert_eq!(workspace(&k, &ws).json()["version"], 1);
}

#[test]
fn a_low_balance_execute_answers_with_x_budget_warning() {
    let _lock = shared();
    model();
    let k = funded_key(0.5); // under LOW_BALANCE_USD (1.00)
    let n = nonce();
    let ws = format!("ws-{n}");
    let resp = execute(
        &k,
        &json!({"task": format!("echo low {n}"), "workspaceId": ws, "maxCostUsd": 0.1}),
    );
    let body = succeeded(&resp, &ws);
    let warning = resp.header("x-budget-warning").unwrap_or_default();
    assert!(
        warning.contains("low_balance"),
        "x-budget-warning: {warning:?}"
    );
    let balance = 500_000 - usage_cost(&body);
    assert_eq!(micros(&body["billing"]["balanceAfter"]), balance);
    // The SSE form carries it too.
    let mut sse = execute_sse(
        &k,
        &json!({"task": format!("echo low again {n}"), "workspaceId": ws, "maxCostUsd": 0.1}),
    );
    let warning = sse.budget_warning.clone().unwrap_or_default();
    assert!(
        warning.contains("low_balance"),
        "x-budget-warning: {warning:?}"
    );
    let result = sse.rest().pop().expect("events").json();
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(
        micros(&result["billing"]["balanceAfter"]),
        balance - usage_cost(&result)
    );
}

#[test]
fn without_credits_execute_is_refused_402_before_any_work() {
    let _lock = shared();
    let m = model();
    let k = new_key("standard");
    let n = nonce();
    let ws = format!("ws-{n}");
    seed(&k, &ws);
    let task = format!("write broke-{n}.txt x");
    let resp = execute(&k, &json!({"task": task, "workspaceId": ws}));
    assert_eq!(resp.status, 402, "{}", resp.text);
    let body = resp.json();
    assert_eq!(body["error"], "insufficient_credits");
    assert_eq!(body["details"]["currentBalance"], 0.0);
    assert_eq!(body["details"]["totalSpent"], 0.0);
    std::thread::sleep(Duration::from_millis(500));
    assert!(m.requests_for(&task).is_empty(), "the agent ran");
    assert_eq!(manifest(&k, &ws), (1, vec!["seed.txt".to_string()]));
    assert_eq!(workspace(&k, &ws).json()["sessionId"], Value::Null);
    assert!(transactions(&k).is_empty());
    assert_eq!(account(&k)["heldCredits"], 0.0);
}

#[test]
fn a_task_that_outspends_its_hold_is_stopped_and_charged_at_most_the_hold() {
    let _lock = shared();
    let m = model();
    let k = funded_key(CREDITS_USD);
    let n = nonce();
    let ws = format!("ws-{n}");
    seed(&k, &ws);
    let task = format!("loop {n}");
    let hold = 50_000; // 0.05 USD: the third model call (3 × 19 500) reaches it
    let resp = execute(
        &k,
        &json!({"task": task, "workspaceId": ws, "maxCostUsd": 0.05}),
    );
    let body = not_ok(&resp, "stopped", 1);
    let metered = usage_cost(&body);
    assert!(
        metered >= hold,
        "stopped before the hold was reached: {body}"
    );
    let charged = metered.min(hold);
    assert_eq!(micros(&body["billing"]["balanceAfter"]), CREDITS - charged);
    let acct = settled_account(&k);
    assert_eq!(micros(&acct["creditsBalance"]), CREDITS - charged);
    let usage = usage_entries(&k);
    assert_eq!(usage.len(), 1, "{usage:?}");
    assert_eq!(micros(&usage[0]["amount"]), -charged);
    // The agent was stopped: no model call beyond the one in flight, none later.
    let calls = m.requests_for(&task).len() as u64;
    assert!(
        calls * USAGE_IN <= body["usage"]["inputTokens"].as_u64().unwrap() + USAGE_IN,
        "{calls} calls"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(m.requests_for(&task).len() as u64, calls);
    // Its loop.log is not committed.
    assert_eq!(manifest(&k, &ws), (1, vec!["seed.txt".to_string()]));
}

/// The container an execute ran in (its `ready` runner receipt).
fn container_of(body: &Value) -> String {
    container_id_of(&body["runnerReceipts"]).unwrap_or_else(|| panic!("no container: {body}"))
}

#[test]
fn the_session_resumes_across_tasks_and_a_runner_restart_until_reset() {
    let _lock = exclusive();
    let m = model();
    let k = new_key("internal");
    let n = nonce();
    let ws = format!("ws-{n}");
    let run = |task: &str, extra: Value| {
        let mut body = json!({"task": task, "workspaceId": ws});
        if let Value::Object(more) = extra {
            body.as_object_mut().unwrap().extend(more);
        }
        succeeded(&execute(&k, &body), &ws)
    };
    let history = |task: &str| {
        let requests = m.requests_for(task);
        assert!(!requests.is_empty(), "no model call for {task}");
        requests[0]["input"].to_string()
    };

    let first = format!("remember alpha-{n}");
    let one = run(&first, json!({}));
    let session = one["sessionId"].as_str().unwrap().to_string();
    // A never-used workspace is created, empty, at version 1.
    assert_eq!(one["version"], 1);
    assert_eq!(one["changedFiles"], json!([]));
    assert_eq!(workspace(&k, &ws).json()["sessionId"], session.as_str());

    let second = format!("recall beta-{n}");
    let two = run(&second, json!({}));
    assert_eq!(two["sessionId"], session.as_str());
    assert_eq!(two["version"], 1);
    assert!(history(&second).contains(&first), "not resumed");
    // The workspace's second execute reused its container.
    assert!(
        runner_events(&one).contains(&"container.start".to_string()),
        "{one}"
    );
    assert!(
        !runner_events(&two).contains(&"container.start".to_string()),
        "{two}"
    );
    assert_eq!(container_of(&one), container_of(&two));
    assert_eq!(runner_instance(&one), runner_instance(&two));

    // The container dies; the next execute gets a fresh one (empty dirs),
    // and the session comes back from R2.
    kill_container(&container_of(&two));
    let third = format!("recall gamma-{n}");
    let three = run(&third, json!({}));
    assert!(
        runner_events(&three).contains(&"container.start".to_string()),
        "{three}"
    );
    assert_ne!(runner_instance(&three), runner_instance(&two));
    assert_eq!(three["sessionId"], session.as_str());
    let seen = history(&third);
    assert!(
        seen.contains(&first) && seen.contains(&second),
        "not resumed after a restart"
    );

    let reset = post_json(
        &format!("/workspaces/{ws}/session/reset"),
        Some(&k.key),
        &json!({}),
    );
    assert_eq!(reset.status, 200, "{}", reset.text);
    assert_eq!(workspace(&k, &ws).json()["sessionId"], Value::Null);
    let fourth = format!("fresh delta-{n}");
    let four = run(&fourth, json!({}));
    let new_session = four["sessionId"].as_str().unwrap().to_string();
    assert_ne!(new_session, session);
    assert!(!history(&fourth).contains(&first), "the old thread leaked");
    assert_eq!(workspace(&k, &ws).json()["sessionId"], new_session.as_str());

    // Naming the old session resumes it, not the new one.
    let fifth = format!("back to epsilon-{n}");
    let five = run(&fifth, json!({"sessionId": session}));
    assert_eq!(five["sessionId"], session.as_str());
    let seen = history(&fifth);
    assert!(seen.contains(&third) && !seen.contains(&fourth), "{seen}");
}

#[test]
fn cancel_stops_a_running_task_commits_nothing_and_charges_only_metered_usage() {
    let _lock = shared();
    let m = model();
    let k = funded_key(CREDITS_USD);
    let n = nonce();
    let ws = format!("ws-{n}");
    seed(&k, &ws);
    let task = format!("slow {n}");
    let mut sse = execute_sse(&k, &json!({"task": task, "workspaceId": ws}));
    let run_id = sse.run_id.clone();
    assert!(run_id.starts_with("exe_"), "{run_id}");
    wait_for_model_call(m, &task);

    // Not yours / not there → 404.
    let stranger = new_key("standard");
    for (key, id) in [
        (&stranger, run_id.as_str()),
        (&k, "exe_00000000000000000000000000000000"),
        (&k, "nonsense"),
    ] {
        let resp = post_json(&format!("/execute/{id}/cancel"), Some(&key.key), &json!({}));
        assert_eq!(resp.status, 404, "{id}: {}", resp.text);
        assert_eq!(resp.json()["error"], "run_not_found");
    }

    let cancel = post_json(
        &format!("/execute/{run_id}/cancel"),
        Some(&k.key),
        &json!({}),
    );
    assert_eq!(cancel.status, 200, "{}", cancel.text);
    let cancelled = cancel.json();
    assert_eq!(cancelled["runId"], run_id.as_str());
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["ok"], false);

    // The waiting request ends with the same outcome.
    let events = sse.rest();
    let last = events.last().expect("events");
    assert_eq!(last.event, "result", "{events:?}");
    let result = last.json();
    assert_eq!(result["status"], "cancelled", "{result}");
    assert_eq!(result["ok"], false);
    assert_eq!(result["error"], "execution_failed");
    assert_eq!(result["runId"], run_id.as_str());
    assert_eq!(result["version"], 1);
    assert_eq!(result["changedFiles"], json!([]));

    let charged = usage_cost(&result);
    let acct = settled_account(&k);
    assert_eq!(micros(&acct["creditsBalance"]), CREDITS - charged);
    assert_eq!(manifest(&k, &ws), (1, vec!["seed.txt".to_string()]));

    let again = post_json(
        &format!("/execute/{run_id}/cancel"),
        Some(&k.key),
        &json!({}),
    );
    assert_eq!(again.status, 409, "{}", again.text);
    assert_eq!(again.json()["error"], "run_not_running");
}

/// The ids of the tasks running in this stack's containers (their work dirs).
fn runner_tasks() -> Vec<String> {
    current()
        .container_tasks()
        .into_iter()
        .map(|(_, task)| task)
        .collect()
}

#[test]
fn cancel_ends_a_waiting_json_execute_422_and_a_queued_one_before_it_starts() {
    // Alone, so the one new task dir on the runner is this test's execute:
    // a JSON POST /execute tells its run id only when it has ended.
    let _lock = exclusive();
    let m = model();
    let k = funded_key(CREDITS_USD);
    let n = nonce();
    let ws = format!("ws-{n}");
    seed(&k, &ws);
    let before = runner_tasks();
    let task = format!("slow {n}");
    let waiting = {
        let (k, body) = (k.clone(), json!({"task": task, "workspaceId": ws}));
        std::thread::spawn(move || execute(&k, &body))
    };
    wait_for_model_call(m, &task);
    let started: Vec<String> = runner_tasks()
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");
    let run_id = started[0].clone();

    // `?wait=false` does not queue: 409, and its hold is given back.
    let auth = format!("Bearer {}", k.key);
    let busy = send(
        "POST",
        "/execute?wait=false",
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ],
        Some(
            json!({"task": format!("echo busy {n}"), "workspaceId": ws})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(busy.status, 409, "{}", busy.text);
    assert_eq!(busy.json()["error"], "workspace_busy");
    // Only the running execute's hold (DEFAULT_RUN_HOLD_USD) is open.
    assert_eq!(micros(&account(&k)["heldCredits"]), 1_000_000);

    // A second execute on the workspace waits in line; cancelled there, it
    // never starts and costs nothing.
    let queued_task = format!("write queued-{n}.txt q");
    let mut queued = execute_sse(&k, &json!({"task": queued_task, "workspaceId": ws}));
    let cancel = post_json(
        &format!("/execute/{}/cancel", queued.run_id),
        Some(&k.key),
        &json!({}),
    );
    assert_eq!(cancel.status, 200, "{}", cancel.text);
    assert_eq!(cancel.json()["status"], "cancelled");
    let events = queued.rest();
    let result = events.last().expect("events").json();
    assert_eq!(result["status"], "cancelled", "{result}");
    assert_eq!(result["usage"]["inputTokens"], 0, "{result}");
    assert!(m.requests_for(&queued_task).is_empty(), "it ran");

    let cancel = post_json(
        &format!("/execute/{run_id}/cancel"),
        Some(&k.key),
        &json!({}),
    );
    assert_eq!(cancel.status, 200, "{}", cancel.text);
    let resp = waiting.join().unwrap();
    let body = not_ok(&resp, "cancelled", 1);
    assert_eq!(body["runId"], run_id.as_str());
    let acct = settled_account(&k);
    assert_eq!(micros(&acct["creditsBalance"]), CREDITS - usage_cost(&body));
    assert_eq!(manifest(&k, &ws), (1, vec!["seed.txt".to_string()]));
}

#[test]
fn a_failing_agent_commits_nothing_and_is_charged_only_its_metered_usage() {
    let _lock = shared();
    let m = model();
    let k = funded_key(CREDITS_USD);
    let n = nonce();
    let ws = format!("ws-{n}");
    seed(&k, &ws);
    // One metered call that writes a file, then the model answers 500.
    let task = format!("writefail broken-{n}.txt x-{n}");
    let resp = execute(&k, &json!({"task": task, "workspaceId": ws}));
    let body = not_ok(&resp, "failed", 1);
    assert!(m.requests_for(&task).len() >= 2);
    assert_eq!(body["usage"]["inputTokens"], USAGE_IN);
    assert_eq!(body["usage"]["outputTokens"], USAGE_OUT);
    let charged = cost(USAGE_IN, USAGE_OUT);
    assert_eq!(micros(&body["billing"]["balanceAfter"]), CREDITS - charged);
    let acct = settled_account(&k);
    assert_eq!(micros(&acct["creditsBalance"]), CREDITS - charged);
    let usage = usage_entries(&k);
    assert_eq!(usage.len(), 1, "{usage:?}");
    assert_eq!(micros(&usage[0]["amount"]), -charged);
    assert_eq!(manifest(&k, &ws), (1, vec!["seed.txt".to_string()]));
}

#[test]
fn a_container_killed_mid_task_ends_container_lost_and_releases_the_hold() {
    let _lock = exclusive();
    let m = model();
    let k = funded_key(CREDITS_USD);
    let n = nonce();
    let ws = format!("ws-{n}");
    seed(&k, &ws);
    let task = format!("slow {n}");
    let waiting = {
        let key = k.clone();
        let body = json!({"task": task, "workspaceId": ws, "maxCostUsd": 0.5});
        std::thread::spawn(move || execute(&key, &body))
    };
    wait_for_model_call(m, &task);
    assert_eq!(micros(&account(&k)["heldCredits"]), 500_000);

    let running: Vec<(String, String)> = current().container_tasks();
    assert_eq!(running.len(), 1, "{running:?}");
    kill_container(&running[0].0);
    let resp = waiting.join().unwrap();
    let body = not_ok(&resp, "container_lost", 1);
    let acct = settled_account(&k);
    let balance = micros(&acct["creditsBalance"]);
    assert!(
        balance <= CREDITS && balance >= CREDITS - usage_cost(&body),
        "{acct} {body}"
    );
    assert_eq!(manifest(&k, &ws), (1, vec!["seed.txt".to_string()]));

    // A new container takes the next task.
    let echo = format!("after the crash {n}");
    let again = succeeded(&execute(&k, &json!({"task": echo, "workspaceId": ws})), &ws);
    assert_eq!(again["version"], 1);
}

#[test]
fn sse_streams_runner_usage_receipt_then_the_result_with_ids_in_order() {
    let _lock = shared();
    let m = model();
    let k = funded_key(CREDITS_USD);
    let n = nonce();
    let ws = format!("ws-{n}");
    let path = format!("{n}.md");
    let task = format!("write {path} streamed-{n}");
    let mut sse = execute_sse(&k, &json!({"task": task, "workspaceId": ws}));
    assert_eq!(sse.budget_warning, None, "no alert is active");
    let events = sse.rest();
    let ids: Vec<Option<u64>> = events.iter().map(|e| e.id).collect();
    let expected: Vec<Option<u64>> = (1..=events.len() as u64).map(Some).collect();
    assert_eq!(ids, expected, "{events:?}");
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds.last(), Some(&"result"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "result").count(), 1);
    let first_runner = kinds.iter().position(|k| *k == "runner").expect("runner");
    let first_usage = kinds.iter().position(|k| *k == "usage").expect("usage");
    let receipt = kinds.iter().position(|k| *k == "receipt").expect("receipt");
    assert!(
        first_runner < first_usage && first_usage < receipt,
        "{kinds:?}"
    );

    let result = events.last().unwrap().json();
    for field in [
        "ok",
        "status",
        "output",
        "runId",
        "sessionId",
        "workspaceId",
        "version",
        "changedFiles",
        "usage",
        "billing",
        "receipts",
    ] {
        assert!(result.get(field).is_some(), "no {field}: {result}");
    }
    assert_eq!(result["ok"], true);
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["runId"], sse.run_id.as_str());
    assert_eq!(result["workspaceId"], ws.as_str());
    assert_eq!(result["version"], 1);
    assert_eq!(
        result["changedFiles"],
        json!([path]),
        "{}",
        tool_outputs(m, &task)
    );
    check_usage(&result);

    // One cumulative usage event per model call, the last one the total.
    let usages: Vec<Value> = events
        .iter()
        .filter(|e| e.event == "usage")
        .map(Event::json)
        .collect();
    assert_eq!(usages.len(), m.requests_for(&task).len(), "{usages:?}");
    for (i, u) in usages.iter().enumerate() {
        assert_eq!(u["inputTokens"], (i as u64 + 1) * USAGE_IN, "{u}");
    }
    assert_eq!(usages.last().unwrap(), &result["usage"]);
    let receipt = events[receipt].json();
    assert_eq!(receipt["type"], "exec", "{receipt}");
    assert!(result["receipts"].as_array().unwrap().contains(&receipt));
    assert_eq!(read_file(&k, &ws, &path).text, format!("streamed-{n}"));
    assert_eq!(
        micros(&settled_account(&k)["creditsBalance"]),
        CREDITS - usage_cost(&result)
    );
}

#[test]
fn every_bad_field_is_refused_400_naming_it_and_nothing_starts() {
    let _lock = shared();
    let m = model();
    let k = funded_key(CREDITS_USD);
    let n = nonce();
    let ws = format!("ws-{n}");
    let task = format!("echo never-{n}");
    let with = |field: &str, value: Value| {
        let mut body = json!({"task": task, "workspaceId": ws});
        body[field] = value;
        body
    };
    let without = |field: &str| {
        let mut body = json!({"task": task, "workspaceId": ws});
        body.as_object_mut().unwrap().remove(field);
        body
    };
    let cases: Vec<(&str, Value)> = vec![
        ("task", without("task")),
        ("task", with("task", json!(42))),
        ("task", with("task", json!(""))),
        ("task", with("task", json!("x".repeat(100_001)))),
        ("workspaceId", without("workspaceId")),
        ("workspaceId", with("workspaceId", json!(7))),
        ("workspaceId", with("workspaceId", json!("has space"))),
        ("workspaceId", with("workspaceId", json!("../up"))),
        ("workspaceId", with("workspaceId", json!("w".repeat(129)))),
        ("sessionId", with("sessionId", json!(5))),
        ("sessionId", with("sessionId", json!(""))),
        ("sessionId", with("sessionId", json!("bad id!"))),
        ("sessionId", with("sessionId", json!("s".repeat(129)))),
        (
            "sessionId",
            with("sessionId", json!("never-had-this-session")),
        ),
        ("timeoutMs", with("timeoutMs", json!(999))),
        ("timeoutMs", with("timeoutMs", json!(3_600_001))),
        ("timeoutMs", with("timeoutMs", json!(1500.5))),
        ("timeoutMs", with("timeoutMs", json!("60000"))),
        ("maxCostUsd", with("maxCostUsd", json!(0))),
        ("maxCostUsd", with("maxCostUsd", json!(-1))),
        ("maxCostUsd", with("maxCostUsd", json!("1"))),
        ("maxCostUsd", with("maxCostUsd", json!(10_000.01))),
    ];
    for (field, body) in &cases {
        let resp = execute(&k, body);
        assert_eq!(resp.status, 400, "{field} {body}: {}", resp.text);
        let err = resp.json();
        assert_eq!(err["error"], "validation_failed", "{err}");
        let named = err["details"]
            .as_array()
            .map(|d| d.iter().any(|d| d["field"] == *field))
            .unwrap_or(false);
        assert!(named, "{field} not named: {err}");
    }
    // Unknown fields, bad JSON, a malformed Idempotency-Key (also with SSE).
    let unknown = execute(&k, &with("colour", json!("blue")));
    assert_eq!(unknown.status, 400, "{}", unknown.text);
    assert_eq!(unknown.json()["error"], "validation_failed");
    let auth = format!("Bearer {}", k.key);
    let bad_json = send(
        "POST",
        "/execute",
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ],
        Some(b"{\"task\": "),
    );
    assert_eq!(bad_json.status, 400, "{}", bad_json.text);
    assert_eq!(bad_json.json()["error"], "bad_json");
    let sse_idem = execute_with(
        &k,
        &with("timeoutMs", json!(60_000)),
        &[
            ("accept", "text/event-stream"),
            ("idempotency-key", "has space"),
        ],
    );
    assert_eq!(sse_idem.status, 400, "{}", sse_idem.text);
    assert_eq!(sse_idem.json()["error"], "validation_failed");
    // Auth and permission.
    let anonymous = post_json("/execute", None, &with("timeoutMs", json!(60_000)));
    assert_eq!(anonymous.status, 401, "{}", anonymous.text);
    let reader = mint_key(json!({"name": "ro", "permissions": ["read"]}));
    let forbidden = post_json(
        "/execute",
        reader["key"].as_str(),
        &with("timeoutMs", json!(60_000)),
    );
    assert_eq!(forbidden.status, 403, "{}", forbidden.text);
    assert_eq!(forbidden.json()["error"], "forbidden");

    std::thread::sleep(Duration::from_millis(500));
    assert!(m.requests_for(&task).is_empty(), "an agent ran");
    assert_eq!(workspace(&k, &ws).status, 404);
    let acct = account(&k);
    assert_eq!(acct["heldCredits"], 0.0);
    assert_eq!(acct["creditsBalance"], CREDITS_USD);
    assert_eq!(transactions(&k).len(), 1, "only the credit");
}

#[test]
fn an_idempotent_retry_replays_the_execution_without_a_second_run() {
    let _lock = shared();
    let m = model();
    let k = funded_key(CREDITS_USD);
    let n = nonce();
    let ws = format!("ws-{n}");
    let task = format!("write once-{n}.txt once-{n}");
    let body = json!({"task": task, "workspaceId": ws});
    let idem = format!("exec-{n}");
    let first = execute_with(&k, &body, &[("idempotency-key", idem.as_str())]);
    let first_body = succeeded(&first, &ws);
    let run_id = first_body["runId"].as_str().unwrap();
    let calls = m.requests_for(&task).len();
    let balance = micros(&settled_account(&k)["creditsBalance"]);

    let again = execute_with(&k, &body, &[("idempotency-key", idem.as_str())]);
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json(), first_body);
    assert_eq!(again.header("x-run-id"), Some(run_id));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));

    let other = execute_with(
        &k,
        &json!({"task": format!("echo other {n}"), "workspaceId": ws}),
        &[("idempotency-key", idem.as_str())],
    );
    assert_eq!(other.status, 422, "{}", other.text);
    assert_eq!(other.json()["error"], "idempotency_key_reused");

    // A retry while the first is still running: 409 in_flight.
    let nap = format!("nap {n}");
    let nap_body = json!({"task": nap, "workspaceId": format!("{ws}-nap")});
    let nap_key = format!("exec-nap-{n}");
    let running = {
        let (k, body, idem) = (k.clone(), nap_body.clone(), nap_key.clone());
        std::thread::spawn(move || execute_with(&k, &body, &[("idempotency-key", idem.as_str())]))
    };
    wait_for_model_call(m, &nap);
    let retry = execute_with(&k, &nap_body, &[("idempotency-key", nap_key.as_str())]);
    assert_eq!(retry.status, 409, "{}", retry.text);
    assert_eq!(retry.json()["error"], "in_flight");
    let nap_body = succeeded(&running.join().unwrap(), &format!("{ws}-nap"));
    assert_eq!(m.requests_for(&nap).len(), 1);
    let balance = balance - usage_cost(&nap_body);

    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(m.requests_for(&task).len(), calls, "a second model run");
    assert_eq!(micros(&account(&k)["creditsBalance"]), balance);
    assert_eq!(usage_entries(&k).len(), 2);
    assert_eq!(workspace(&k, &ws).json()["version"], 1);
}

#[test]
fn an_sse_retry_with_the_idempotency_key_resumes_the_execute_it_started() {
    let _lock = shared();
    let m = model();
    let k = funded_key(CREDITS_USD);
    let n = nonce();
    let ws = format!("ws-{n}");
    // `nap`: the model answers after 5 s, so the retry finds it running.
    let task = format!("nap sse-{n}");
    let body = json!({"task": task, "workspaceId": ws});
    let idem = format!("exec-sse-{n}");
    let keyed = [("idempotency-key", idem.as_str())];

    // The first stream names its execute; it hangs up after one event.
    let mut first = execute_sse_with(&k, &body, &keyed);
    let run_id = first.run_id.clone();
    assert!(run_id.starts_with("exe_"), "x-run-id: {run_id:?}");
    assert_eq!(first.replayed, None);
    let seen = first.next().expect("a first event");
    let last = seen.id.expect("an event id");
    drop(first);

    // The retry attaches to the same execute after the last event seen.
    let last_text = last.to_string();
    let resumed = [
        ("idempotency-key", idem.as_str()),
        ("last-event-id", last_text.as_str()),
    ];
    let mut again = execute_sse_with(&k, &body, &resumed);
    assert_eq!(again.run_id, run_id);
    assert_eq!(again.replayed.as_deref(), Some("true"));
    let rest = again.rest();
    let ids: Vec<Option<u64>> = rest.iter().map(|e| e.id).collect();
    let expected: Vec<Option<u64>> = (last + 1..=last + rest.len() as u64).map(Some).collect();
    assert_eq!(ids, expected, "a gap or a duplicate after {last}: {rest:?}");
    let result = rest.last().expect("events after the first");
    assert_eq!(result.event, "result", "{rest:?}");
    assert_eq!(rest.iter().filter(|e| e.event == "result").count(), 1);
    let result_body = result.json();
    assert_eq!(result_body["runId"], run_id.as_str());
    assert_eq!(result_body["status"], "succeeded", "{result_body}");

    // The same key with another body is refused, in either form.
    let other = json!({"task": format!("echo other {n}"), "workspaceId": ws});
    for form in ["text/event-stream", "application/json"] {
        let resp = execute_with(
            &k,
            &other,
            &[("accept", form), ("idempotency-key", idem.as_str())],
        );
        assert_eq!(resp.status, 422, "{form}: {}", resp.text);
        assert_eq!(resp.json()["error"], "idempotency_key_reused");
    }
    // A JSON retry gets the answer the DO records just after the result
    // event (409 in_flight until then).
    let deadline = Instant::now() + Duration::from_secs(20);
    let replay = loop {
        let resp = execute_with(&k, &body, &keyed);
        if resp.status != 409 || Instant::now() > deadline {
            break resp;
        }
        assert_eq!(resp.json()["error"], "in_flight", "{}", resp.text);
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(replay.status, 200, "{}", replay.text);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.json(), result_body);
    // The events route gives the same stream: after the last but one, the result.
    let tail = execute_events(&k, &run_id, result.id.unwrap() - 1).rest();
    assert_eq!(tail.len(), 1, "{tail:?}");
    assert_eq!(tail[0].json(), result_body);

    // One execute: one model call, one hold, one usage, charged once.
    assert_eq!(m.requests_for(&task).len(), 1, "the task ran twice");
    let account = settled_account(&k);
    assert_eq!(
        micros(&account["creditsBalance"]),
        CREDITS - usage_cost(&result_body)
    );
    let holds = transactions(&k)
        .iter()
        .filter(|t| t["type"] == "hold")
        .count();
    assert_eq!(holds, 1, "one hold");
    assert_eq!(usage_entries(&k).len(), 1, "one usage");
}

// ---------------------------------------------------------------------------
// Concurrency

#[test]
fn parallel_executes_get_exactly_as_many_holds_as_the_balance_covers() {
    let _lock = exclusive();
    let m = model();
    const K: usize = 3;
    const TOTAL: usize = 20;
    // Holds of 2 USD: a finished run leaves over 1 USD available, so no
    // low-balance alert is active (tested on its own).
    const HOLD: i64 = 2_000_000;
    let k = Arc::new(funded_key(6.0));
    let credits = K as i64 * HOLD;
    let n = nonce();

    // Watch the account while the executes race.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (k, done) = (k.clone(), done.clone());
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let a = account(&k);
                samples.push((micros(&a["creditsBalance"]), micros(&a["heldCredits"])));
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        })
    };
    let runs: Vec<_> = (0..TOTAL)
        .map(|i| {
            let k = k.clone();
            let (task, ws) = (format!("nap {n}-{i}"), format!("ws-{n}-{i}"));
            std::thread::spawn(move || {
                let resp = execute(
                    &k,
                    &json!({"task": task, "workspaceId": ws, "maxCostUsd": 2.0}),
                );
                (task, ws, resp)
            })
        })
        .collect();
    let results: Vec<(String, String, Resp)> =
        runs.into_iter().map(|h| h.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    let samples = watcher.join().unwrap();

    let mut charged = 0;
    let mut ran = 0;
    for (task, ws, resp) in &results {
        match resp.status {
            200 => {
                let body = succeeded(resp, ws);
                charged += usage_cost(&body);
                assert!(micros(&body["billing"]["balanceAfter"]) >= 0, "{body}");
                ran += 1;
            }
            402 => {
                assert_eq!(resp.json()["error"], "insufficient_credits");
                assert!(m.requests_for(task).is_empty(), "{task} ran anyway");
            }
            other => panic!("{task}: {other} {}", resp.text),
        }
    }
    assert_eq!(ran, K, "{} ran, expected {K}", ran);
    assert_eq!(charged, K as i64 * cost(USAGE_IN, USAGE_OUT));
    for (balance, held) in &samples {
        assert!(*balance >= 0 && *held <= *balance, "{balance} {held}");
    }
    let acct = settled_account(&k);
    assert_eq!(micros(&acct["creditsBalance"]), credits - charged);
    assert_eq!(usage_entries(&k).len(), K);
}

#[test]
fn parallel_executes_on_one_workspace_all_commit_in_turn() {
    let _lock = shared();
    let k = Arc::new(new_key("internal"));
    let n = nonce();
    let ws = format!("ws-{n}");
    let runs: Vec<_> = (0..5)
        .map(|i| {
            let (k, ws) = (k.clone(), ws.clone());
            let path = format!("f{i}-{n}.txt");
            let task = format!("write {path} v{i}-{n}");
            std::thread::spawn(move || {
                let resp = execute(&k, &json!({"task": task, "workspaceId": ws}));
                (path, task, resp)
            })
        })
        .collect();
    let mut versions = Vec::new();
    let mut paths = Vec::new();
    for handle in runs {
        let (path, task, resp) = handle.join().unwrap();
        let body = succeeded(&resp, &ws);
        assert_eq!(
            body["changedFiles"],
            json!([path]),
            "{}",
            tool_outputs(model(), &task)
        );
        versions.push(body["version"].as_u64().unwrap());
        paths.push(path);
    }
    versions.sort_unstable();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    paths.sort();
    assert_eq!(manifest(&k, &ws), (5, paths.clone()));
    for (i, path) in paths.iter().enumerate() {
        assert_eq!(read_file(&k, &ws, path).text, format!("v{i}-{n}"));
    }
}

#[test]
fn an_execute_can_be_fetched_by_its_run_id_while_running_and_after() {
    let _lock = shared();
    let key = new_key("internal");
    let other = new_key("internal");
    let ws = format!("get-{}", nonce());
    let tag = nonce();
    // A 5 s model call keeps it running long enough to look at.
    let mut sse = execute_sse(
        &key,
        &json!({"task": format!("nap {tag}"), "workspaceId": ws}),
    );
    let path = format!("/execute/{}", sse.run_id);
    let running = get(&path, Some(&key.key));
    assert_eq!(running.status, 202, "{}", running.text);
    let running = running.json();
    assert_eq!(running["runId"], sse.run_id.as_str());
    assert_eq!(running["workspaceId"], ws.as_str());
    assert!(
        ["queued", "running"].contains(&running["status"].as_str().unwrap_or("")),
        "{running}"
    );
    // Another account, an unknown id and a malformed id are all 404.
    assert_eq!(get(&path, Some(&other.key)).status, 404);
    assert_eq!(
        get("/execute/exe_000000000000000000000000", Some(&key.key)).json()["error"],
        "run_not_found"
    );
    assert_eq!(get("/execute/nope", Some(&key.key)).status, 404);
    // ?wait=true answers the outcome, the same as the stream's result.
    let waited = get(&format!("{path}?wait=true"), Some(&key.key));
    let body = succeeded(&waited, &ws);
    let mut result = None;
    while let Some(event) = sse.next() {
        if event.event == "result" {
            result = Some(event.json());
        }
    }
    assert_eq!(result.expect("result event"), body);
    let again = get(&path, Some(&key.key));
    assert_eq!(again.status, 200);
    assert_eq!(again.json(), body);
}

#[test]
fn a_task_past_its_timeout_ends_timed_out_and_commits_nothing() {
    let _lock = shared();
    let key = funded_key(CREDITS_USD);
    let ws = format!("timeout-{}", nonce());
    let resp = execute(
        &key,
        &json!({"task": format!("slow {}", nonce()), "workspaceId": ws, "timeoutMs": 2000}),
    );
    let body = not_ok(&resp, "timed_out", 0);
    // Nothing was metered (the model never answered): nothing is charged
    // and the hold is gone.
    let account = settled_account(&key);
    assert_eq!(
        micros(&account["creditsBalance"]),
        CREDITS - usage_cost(&body)
    );
    assert_eq!(micros(&account["heldCredits"]), 0);
    assert_eq!(workspace(&key, &ws).status, 404);
}

#[test]
fn a_client_that_hangs_up_gets_the_outcome_on_retry_without_a_second_run() {
    let _lock = shared();
    let key = new_key("internal");
    let ws = format!("hangup-{}", nonce());
    let task = format!("nap {}", nonce());
    let body = json!({"task": task, "workspaceId": ws});
    let idem = format!("idem-{}", nonce());
    // The client gives up after 1 s; the 5 s model call is still going.
    let impatient = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(1))
        .build();
    let first = impatient
        .post(&format!("{}/execute", current().base))
        .set("authorization", &format!("Bearer {}", key.key))
        .set("idempotency-key", &idem)
        .send_json(body.clone());
    assert!(first.is_err(), "the first call was meant to time out");
    // The execute runs on; its outcome is recorded for the key.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let replay = loop {
        let resp = execute_with(&key, &body, &[("idempotency-key", idem.as_str())]);
        if resp.status != 409 || std::time::Instant::now() > deadline {
            break resp;
        }
        assert_eq!(resp.json()["error"], "in_flight", "{}", resp.text);
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let done = succeeded(&replay, &ws);
    assert_eq!(
        replay.header("idempotent-replayed"),
        Some("true"),
        "{}",
        replay.text
    );
    assert_eq!(model().requests_for(&task).len(), 1, "the task ran twice");
    assert_eq!(workspace(&key, &ws).json()["version"], done["version"]);
}
