//! Repo runs end to end: the built Worker under `wrangler dev`, the real
//! runner, real git (GitHub URLs served from local bare repos) and bash.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn key_with(perms: &[&str]) -> (String, String) {
    let minted = mint_key(json!({"name": "runs", "permissions": perms}));
    (
        minted["key"].as_str().unwrap().to_string(),
        minted["accountId"].as_str().unwrap().to_string(),
    )
}

fn key() -> String {
    key_with(&["execute", "read", "write"]).0
}

fn demo_repo(name: &str) -> String {
    fixture_repo(
        "acme",
        name,
        &[("README.md", "hello\n"), ("src/app.txt", "v1\n")],
    )
}

fn types(body: &Value) -> Vec<String> {
    body["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap().to_string())
        .collect()
}

fn events_of(runner_receipts: &Value) -> Vec<String> {
    runner_receipts
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_passing_run_answers_200_with_receipts_in_step_order() {
    let key = key();
    let repo = demo_repo("pass");
    let resp = post_json(
        "/api/runs",
        Some(&key),
        &json!({
            "repo": format!("{repo}.git"),
            "commands": ["echo v2 > src/app.txt", "mkdir -p out && echo 'score: 10' > out/report.txt", "echo \"$GREETING\""],
            "verify": ["grep -q v2 src/app.txt"],
            "artifact": "out/report.txt",
            "env": {"GREETING": "hi there"},
        }),
    );
    assert_eq!(resp.status, 200, "{}", resp.text);
    let body = resp.json();
    assert_eq!(body["ok"], true);
    assert_eq!(body["status"], "passed");
    assert_eq!(body["repo"], repo);
    let run_id = body["runId"].as_str().unwrap().to_string();
    assert!(run_id.starts_with("run_"));
    assert_eq!(resp.header("x-run-id"), Some(run_id.as_str()));
    assert_eq!(
        types(&body),
        vec!["clone", "command", "command", "command", "verify", "artifact", "diff"]
    );
    let receipts = body["receipts"].as_array().unwrap();
    for (i, r) in receipts.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1);
        assert_eq!(r["exitCode"], 0, "{r}");
        assert!(r["hash"].as_str().unwrap().len() == 64);
        assert!(r["startedAt"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(receipts[3]["stdout"], "hi there\n");
    assert_eq!(body["artifact"]["content"], "score: 10\n");
    assert_eq!(body["artifact"]["found"], true);
    let diff = body["diff"].as_str().unwrap();
    assert!(diff.contains("-v1") && diff.contains("+v2"), "{diff}");
    assert!(diff.contains("b/out/report.txt"), "{diff}");
    let lifecycle = events_of(&body["runnerReceipts"]);
    for step in [
        "container.start",
        "ready_attempt",
        "ready",
        "response",
        "exit",
        "container.release",
    ] {
        assert!(lifecycle.contains(&step.to_string()), "{lifecycle:?}");
    }

    // The same run, read back.
    let again = get(&format!("/api/runs/{run_id}"), Some(&key));
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["receipts"], body["receipts"]);
    assert_eq!(again.json()["status"], "passed");

    // The chain verifies, and its head is the last receipt's hash.
    let check = get(&format!("/api/runs/{run_id}/verify"), Some(&key));
    assert_eq!(check.status, 200, "{}", check.text);
    assert_eq!(check.json()["valid"], true);
    assert_eq!(check.json()["head"], receipts.last().unwrap()["hash"]);

    // The receipts verify offline with the shared pure function too.
    let parsed: Vec<cloudbox::wire::receipts::Receipt> =
        serde_json::from_value(body["receipts"].clone()).unwrap();
    assert!(cloudbox::wire::receipts::verify_chain(&parsed).valid);
}

#[test]
fn a_failing_verify_answers_422_with_the_same_body() {
    let key = key();
    let repo = demo_repo("fail");
    let resp = post_json(
        "/api/runs",
        Some(&key),
        &json!({"repo": repo, "commands": ["exit 3", "echo later"], "verify": ["test -f missing.txt"]}),
    );
    assert_eq!(resp.status, 422, "{}", resp.text);
    let body = resp.json();
    assert_eq!(body["ok"], false);
    assert_eq!(body["status"], "failed");
    assert_eq!(
        types(&body),
        vec!["clone", "command", "command", "verify", "diff"]
    );
    assert_eq!(body["receipts"][1]["exitCode"], 3);
    assert_eq!(body["receipts"][2]["stdout"], "later\n");
    assert_eq!(body["receipts"][3]["exitCode"], 1);
    for field in ["runId", "receipts", "runnerReceipts", "artifact", "diff"] {
        assert!(body.get(field).is_some(), "{field} missing");
    }
}

#[test]
fn every_contract_validation_error_is_refused_before_any_work() {
    let key = key();
    let good = "https://github.com/acme/pass";
    let many: Vec<String> = (0..33).map(|i| format!("echo {i}")).collect();
    let cases = [
        (
            json!({"repo": "https://gitlab.com/acme/pass", "commands": ["x"]}),
            "bad_run",
        ),
        (
            json!({"repo": "git@github.com:acme/pass.git", "commands": ["x"]}),
            "bad_run",
        ),
        (
            json!({"repo": "https://user:pw@github.com/acme/pass", "commands": ["x"]}),
            "bad_run",
        ),
        (
            json!({"repo": "https://140.82.112.3/acme/pass", "commands": ["x"]}),
            "bad_run",
        ),
        (
            json!({"repo": "https://github.com:8443/acme/pass", "commands": ["x"]}),
            "bad_run",
        ),
        (json!({"repo": good, "commands": many}), "bad_run"),
        (
            json!({"repo": good, "commands": ["x".repeat(4001)]}),
            "bad_run",
        ),
        (
            json!({"repo": good, "commands": ["x"], "artifact": "../x"}),
            "bad_path",
        ),
        (json!({"repo": good}), "bad_run"),
        (
            json!({"repo": good, "commands": [], "verify": []}),
            "bad_run",
        ),
        (
            json!({"repo": good, "commands": ["x"], "timeoutMs": 999}),
            "bad_run",
        ),
        (
            json!({"repo": good, "commands": ["x"], "env": {"A": 1}}),
            "bad_run",
        ),
    ];
    for (body, code) in cases {
        let resp = post_json("/api/runs", Some(&key), &body);
        assert_eq!(resp.status, 400, "{body}: {}", resp.text);
        assert_eq!(resp.json()["error"], code, "{body}");
    }
    let bad = send(
        "POST",
        "/api/runs",
        &[("authorization", &format!("Bearer {key}"))],
        Some(b"{not json"),
    );
    assert_eq!(bad.json()["error"], "bad_json");
    // Nothing was started by any of them.
    let list = get("/api/runs", Some(&key)).json();
    assert_eq!(list["runs"], json!([]));
}

#[test]
fn runs_need_a_key_with_the_right_permission() {
    let body = json!({"repo": "https://github.com/acme/pass", "commands": ["true"]});
    assert_eq!(post_json("/api/runs", None, &body).status, 401);
    let (read_only, _) = key_with(&["read"]);
    let resp = post_json("/api/runs", Some(&read_only), &body);
    assert_eq!(resp.status, 403);
    assert_eq!(resp.json()["error"], "forbidden");
    assert_eq!(get("/api/runs", Some(&read_only)).status, 200);
}

#[test]
fn another_account_cannot_see_or_touch_a_run() {
    let (key, owner_account) = key_with(&["execute", "read"]);
    let repo = demo_repo("private");
    let body = post_json(
        "/api/runs",
        Some(&key),
        &json!({"repo": repo, "commands": ["true"]}),
    )
    .json();
    let id = body["runId"].as_str().unwrap();
    let stranger = self::key();
    for path in [
        format!("/api/runs/{id}"),
        format!("/api/runs/{id}/events"),
        format!("/api/runs/{id}/verify"),
    ] {
        let resp = get(&path, Some(&stranger));
        assert_eq!(resp.status, 404, "{path}");
        assert_eq!(resp.json()["error"], "run_not_found");
    }
    let cancel = post_json(
        &format!("/api/runs/{id}/cancel"),
        Some(&stranger),
        &json!({}),
    );
    assert_eq!(cancel.status, 404);
    let auth = format!("Bearer {stranger}");
    let delete = send(
        "DELETE",
        &format!("/api/runs/{id}"),
        &[("authorization", &auth)],
        None,
    );
    assert_eq!(delete.status, 404);
    assert_eq!(get("/api/runs", Some(&stranger)).json()["runs"], json!([]));
    // The owner still has it, and so does a teammate (another key of the account).
    assert_eq!(get(&format!("/api/runs/{id}"), Some(&key)).status, 200);
    let teammate = mint_key(json!({"name": "teammate", "accountId": owner_account}));
    let seen = get(&format!("/api/runs/{id}"), teammate["key"].as_str());
    assert_eq!(seen.status, 200, "{}", seen.text);
    assert_eq!(get("/api/runs/run_doesnotexist", Some(&key)).status, 404);
}

#[test]
fn runs_are_listed_newest_first_with_a_cursor_and_can_be_deleted() {
    let key = key();
    let repo = demo_repo("listed");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let body = post_json(
            "/api/runs",
            Some(&key),
            &json!({"repo": repo, "commands": ["true"]}),
        )
        .json();
        ids.push(body["runId"].as_str().unwrap().to_string());
        std::thread::sleep(Duration::from_millis(5));
    }
    let first = get("/api/runs?limit=2", Some(&key)).json();
    let page: Vec<&str> = first["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["runId"].as_str().unwrap())
        .collect();
    assert_eq!(page, vec![ids[2].as_str(), ids[1].as_str()]);
    assert_eq!(first["runs"][0]["status"], "passed");
    let cursor = first["nextCursor"].as_str().unwrap();
    let second = get(&format!("/api/runs?limit=2&cursor={cursor}"), Some(&key)).json();
    let page: Vec<&str> = second["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["runId"].as_str().unwrap())
        .collect();
    assert_eq!(page, vec![ids[0].as_str()]);
    assert!(second["nextCursor"].is_null());
    assert_eq!(get("/api/runs?limit=0", Some(&key)).status, 400);
    assert_eq!(get("/api/runs?cursor=garbage", Some(&key)).status, 400);

    let auth = format!("Bearer {key}");
    let deleted = send(
        "DELETE",
        &format!("/api/runs/{}", ids[0]),
        &[("authorization", &auth)],
        None,
    );
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    assert_eq!(
        get(&format!("/api/runs/{}", ids[0]), Some(&key)).status,
        404
    );
    let left = get("/api/runs", Some(&key)).json();
    assert_eq!(left["runs"].as_array().unwrap().len(), 2);
}

// ---------------------------------------------------------------------------
// SSE

#[derive(Debug, Clone, PartialEq)]
struct Frame {
    event: String,
    id: u64,
    data: Value,
}

/// Reads SSE frames until `stop` says so or the stream ends.
fn read_frames(
    reader: &mut impl BufRead,
    mut stop: impl FnMut(&Frame) -> bool,
) -> (Vec<Frame>, usize) {
    let mut frames = Vec::new();
    let mut heartbeats = 0;
    let (mut event, mut id, mut data) = (String::new(), 0u64, String::new());
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return (frames, heartbeats);
        }
        let l = line.trim_end_matches('\n');
        if l.starts_with(':') {
            heartbeats += 1;
        } else if let Some(v) = l.strip_prefix("event: ") {
            event = v.to_string();
        } else if let Some(v) = l.strip_prefix("id: ") {
            id = v.parse().unwrap();
        } else if let Some(v) = l.strip_prefix("data: ") {
            data.push_str(v);
        } else if l.is_empty() && !event.is_empty() {
            let frame = Frame {
                event: std::mem::take(&mut event),
                id,
                data: serde_json::from_str(&std::mem::take(&mut data)).unwrap(),
            };
            let done = stop(&frame);
            frames.push(frame);
            if done {
                return (frames, heartbeats);
            }
        }
    }
}

fn open_sse(
    method: &str,
    path: &str,
    key: &str,
    last_event_id: Option<u64>,
    body: Option<&Value>,
) -> ureq::Response {
    open_sse_with(method, path, key, last_event_id, body, &[])
}

fn open_sse_with(
    method: &str,
    path: &str,
    key: &str,
    last_event_id: Option<u64>,
    body: Option<&Value>,
    extra: &[(&str, &str)],
) -> ureq::Response {
    let url = format!("{}{}", stack().base, path);
    let mut req = agent()
        .request(method, &url)
        .set("authorization", &format!("Bearer {key}"))
        .set("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.set("last-event-id", &id.to_string());
    }
    for (name, value) in extra {
        req = req.set(name, value);
    }
    let resp = match body {
        Some(b) => req.send_json(b.clone()),
        None => req.call(),
    }
    .expect("SSE request");
    assert_eq!(resp.status(), 200);
    assert!(resp
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/event-stream"));
    resp
}

#[test]
fn sse_delivers_every_receipt_and_the_result_and_resumes_without_gaps() {
    let key = key();
    let repo = demo_repo("sse");
    let spec = json!({
        "repo": repo,
        "commands": ["echo one", "sleep 1; echo two", "echo three"],
        "verify": ["true"],
    });
    let resp = open_sse("POST", "/api/runs", &key, None, Some(&spec));
    let run_id = resp.header("x-run-id").unwrap().to_string();
    let mut reader = BufReader::new(resp.into_reader());
    // Read until the second receipt, then drop the connection.
    let mut receipts_seen = 0;
    let (first, _) = read_frames(&mut reader, |f| {
        if f.event == "receipt" {
            receipts_seen += 1;
        }
        receipts_seen == 2
    });
    drop(reader);
    let last = first.last().unwrap().id;

    // Reconnect with Last-Event-ID: the rest, from last + 1, to the result.
    let resp = open_sse(
        "GET",
        &format!("/api/runs/{run_id}/events"),
        &key,
        Some(last),
        None,
    );
    let mut reader = BufReader::new(resp.into_reader());
    let (rest, _) = read_frames(&mut reader, |f| f.event == "result");
    let ids: Vec<u64> = first.iter().chain(rest.iter()).map(|f| f.id).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "gap or duplicate: {ids:?}"
    );
    let result = rest.last().unwrap();
    assert_eq!(result.event, "result");
    assert_eq!(result.data["status"], "passed");

    // Every receipt of the final body came as a receipt event, in order.
    let streamed: Vec<Value> = first
        .iter()
        .chain(rest.iter())
        .filter(|f| f.event == "receipt")
        .map(|f| f.data.clone())
        .collect();
    assert_eq!(Value::Array(streamed), result.data["receipts"]);
    let kinds: Vec<&str> = first
        .iter()
        .chain(rest.iter())
        .map(|f| f.event.as_str())
        .collect();
    assert!(
        kinds.contains(&"runner") && kinds.contains(&"output"),
        "{kinds:?}"
    );

    // A client that reconnects after the end gets only what it lacks.
    let resp = open_sse(
        "GET",
        &format!("/api/runs/{run_id}/events"),
        &key,
        Some(result.id - 1),
        None,
    );
    let (tail, _) = read_frames(&mut BufReader::new(resp.into_reader()), |_| false);
    assert_eq!(tail, vec![result.clone()]);
}

#[test]
fn an_sse_retry_with_the_idempotency_key_resumes_the_run_it_started() {
    let key = key();
    let repo = demo_repo("sse-idem");
    let spec = json!({
        "repo": repo,
        "commands": ["echo one", "sleep 2; echo two", "echo three"],
        "verify": ["true"],
    });
    let keyed = [("idempotency-key", "sse-run-1")];
    // The first stream names its run; it hangs up after the clone's receipt.
    let resp = open_sse_with("POST", "/api/runs", &key, None, Some(&spec), &keyed);
    let run_id = resp.header("x-run-id").expect("x-run-id").to_string();
    assert!(run_id.starts_with("run_"), "{run_id}");
    assert_eq!(resp.header("idempotent-replayed"), None);
    let mut reader = BufReader::new(resp.into_reader());
    let (first, _) = read_frames(&mut reader, |f| f.event == "receipt");
    drop(reader);
    let last = first.last().expect("frames before the first receipt").id;

    // The retry (same key, same body) attaches after the last event seen.
    let resp = open_sse_with("POST", "/api/runs", &key, Some(last), Some(&spec), &keyed);
    assert_eq!(resp.header("x-run-id"), Some(run_id.as_str()));
    assert_eq!(resp.header("idempotent-replayed"), Some("true"));
    let (rest, _) = read_frames(&mut BufReader::new(resp.into_reader()), |f| {
        f.event == "result"
    });
    let ids: Vec<u64> = first.iter().chain(rest.iter()).map(|f| f.id).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "gap or duplicate: {ids:?}"
    );
    assert_eq!(rest.first().map(|f| f.id), Some(last + 1));
    let result = rest.last().unwrap();
    assert_eq!(result.event, "result");
    assert_eq!(result.data["runId"], run_id.as_str());
    assert_eq!(result.data["status"], "passed", "{}", result.data);
    // Every receipt of the run came once, in order, across both streams.
    let streamed: Vec<Value> = first
        .iter()
        .chain(rest.iter())
        .filter(|f| f.event == "receipt")
        .map(|f| f.data.clone())
        .collect();
    assert_eq!(Value::Array(streamed), result.data["receipts"]);

    // The same key with another body: 422, and nothing starts.
    let auth = format!("Bearer {key}");
    let other = json!({"repo": repo, "commands": ["echo other"]});
    let refused = send(
        "POST",
        "/api/runs",
        &[
            ("authorization", auth.as_str()),
            ("accept", "text/event-stream"),
            ("idempotency-key", "sse-run-1"),
        ],
        Some(other.to_string().as_bytes()),
    );
    assert_eq!(refused.status, 422, "{}", refused.text);
    assert_eq!(refused.json()["error"], "idempotency_key_reused");

    // One run, one usage event.
    let listed = get("/api/runs", Some(&key)).json();
    let runs = listed["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{listed}");
    assert_eq!(runs[0]["runId"], run_id.as_str());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let totals = get("/billing/usage", Some(&key)).json()["totals"].clone();
        if totals["executions"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no usage recorded: {totals}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    let totals = get("/billing/usage", Some(&key)).json()["totals"].clone();
    assert_eq!(totals["executions"], 1, "a second run: {totals}");
}

// ---------------------------------------------------------------------------
// Cancel

#[test]
fn cancel_stops_the_running_command_and_ends_the_run_cancelled() {
    let key = key();
    let repo = demo_repo("cancel");
    let spec = json!({
        "repo": repo,
        "commands": ["echo $$ > /tmp/pid; sleep 60", "echo never"],
    });
    let resp = open_sse("POST", "/api/runs", &key, None, Some(&spec));
    let run_id = resp.header("x-run-id").unwrap().to_string();
    let container = run_container_id(&run_id, &key);
    let pid = wait_in_container(&container, "/tmp/pid");
    assert!(pid.trim().parse::<u32>().is_ok(), "{pid}");

    let cancelled = post_json(
        &format!("/api/runs/{run_id}/cancel"),
        Some(&key),
        &json!({}),
    );
    assert_eq!(cancelled.status, 200, "{}", cancelled.text);
    let body = cancelled.json();
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["ok"], false);
    assert_eq!(types(&body), vec!["clone", "command", "cancel"]);
    assert_eq!(body["receipts"][1]["signal"], "SIGKILL");
    // Nothing of the run survives it: its container is gone.
    assert!(
        container_gone(&container),
        "the cancelled run's container {container} is still there"
    );
    assert!(events_of(&body["runnerReceipts"]).contains(&"container.release".to_string()));

    // The open stream ends with the cancelled result.
    let (frames, _) = read_frames(&mut BufReader::new(resp.into_reader()), |f| {
        f.event == "result"
    });
    assert_eq!(frames.last().unwrap().data["status"], "cancelled");
    assert_eq!(
        get(&format!("/api/runs/{run_id}"), Some(&key)).json()["status"],
        "cancelled"
    );
    let again = post_json(
        &format!("/api/runs/{run_id}/cancel"),
        Some(&key),
        &json!({}),
    );
    assert_eq!(again.status, 409);
    assert_eq!(again.json()["error"], "run_not_running");
    assert_eq!(
        get(&format!("/api/runs/{run_id}/verify"), Some(&key)).json()["valid"],
        true
    );
}

#[test]
fn at_the_default_price_a_run_records_its_container_time_uncharged() {
    let key = key();
    let repo = demo_repo("metered-free");
    let resp = post_json(
        "/api/runs",
        Some(&key),
        &json!({"repo": repo, "commands": ["sleep 0.2"], "verify": ["true"]}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text);
    let container_ms = resp.json()["containerMs"].as_u64().unwrap();
    // The usage event is written as the run is settled, a moment after the answer.
    let deadline = Instant::now() + Duration::from_secs(20);
    let totals = loop {
        let usage = get("/billing/usage", Some(&key));
        assert_eq!(usage.status, 200, "{}", usage.text);
        let totals = usage.json()["totals"].clone();
        if totals["executions"] == 1 {
            break totals;
        }
        assert!(Instant::now() < deadline, "no usage recorded: {totals}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(totals["containerSeconds"], container_ms as f64 / 1000.0);
    assert_eq!(totals["cost"], 0.0);
    assert_eq!(totals["charged"], 0.0);
    // No budget check, no hold, no charge: the ledger stays empty.
    let txns = get("/billing/transactions", Some(&key)).json();
    assert_eq!(txns["transactions"], json!([]));
    let account = get("/billing/account", Some(&key)).json();
    assert_eq!(account["creditsBalance"], 0.0);
    assert_eq!(account["heldCredits"], 0.0);
}

/// Printed by a step of the public runs: must show as text, never run.
const HOSTILE: &str = r#"<script>document.title="pwned"</script><img src=x onerror="alert(1)">"#;

/// A finished public run (of the fixture repo `name`) whose output holds
/// `HOSTILE` and whose env holds a secret; (its id, its body).
fn hostile_public_run(key: &str, name: &str) -> (String, Value) {
    let repo = demo_repo(name);
    let resp = post_json(
        "/api/runs",
        Some(key),
        &json!({
            "repo": repo,
            "commands": [format!("printf '%s\\n' '{HOSTILE}'"), "echo v2 > src/app.txt"],
            "verify": ["grep -q v2 src/app.txt"],
            "env": {"SECRET_TOKEN": "s3cr3t-value"},
            "public": true,
        }),
    );
    assert_eq!(resp.status, 200, "{}", resp.text);
    let body = resp.json();
    (body["runId"].as_str().unwrap().to_string(), body)
}

#[test]
fn a_public_run_has_a_proof_page_and_a_body_for_anyone_and_a_private_one_is_404() {
    let key = key();
    let (id, body) = hostile_public_run(&key, "public");
    assert_eq!(body["publicUrl"], format!("/runs/{id}"));
    assert!(body["receipts"][1]["stdout"]
        .as_str()
        .unwrap()
        .contains(HOSTILE));
    // The runner's git reads no per-user file: nothing to complain of.
    assert!(
        !body["receipts"][0]["stderr"]
            .as_str()
            .unwrap()
            .contains("Permission denied"),
        "{}",
        body["receipts"][0]["stderr"]
    );

    // The JSON, without a key, and without the env's values.
    let public = get(&format!("/api/runs/{id}/public"), None);
    assert_eq!(public.status, 200, "{}", public.text);
    assert_eq!(public.json()["receipts"], body["receipts"]);
    assert!(!public.text.contains("s3cr3t-value"));

    // The page: every receipt, the chain checked, hostile text escaped.
    let page = get(&format!("/runs/{id}"), None);
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = &page.text;
    for r in body["receipts"].as_array().unwrap() {
        assert!(
            html.contains(&format!("#{}</span>", r["seq"])),
            "receipt {} missing",
            r["seq"]
        );
    }
    let verified = get(&format!("/api/runs/{id}/verify"), Some(&key)).json();
    assert_eq!(verified["valid"], true);
    assert!(html.contains("valid: every receipt"));
    assert!(html.contains(verified["head"].as_str().unwrap()));
    assert!(
        !html.contains("<script") && !html.contains("<img"),
        "unescaped output"
    );
    assert!(html.contains("&lt;script&gt;document.title=&quot;pwned&quot;&lt;/script&gt;"));
    assert!(
        html.contains("<span class=\"add\">+v2</span>"),
        "the diff is not coloured"
    );
    assert!(!html.contains("s3cr3t-value"));

    // A private run: 404 on both, with or without a key (its owner's too).
    let private = post_json(
        "/api/runs",
        Some(&key),
        &json!({"repo": demo_repo("private"), "commands": ["true"]}),
    );
    assert_eq!(private.status, 200, "{}", private.text);
    let pid = private.json()["runId"].as_str().unwrap().to_string();
    assert!(private.json().get("publicUrl").is_none());
    for k in [None, Some(key.as_str())] {
        assert_eq!(get(&format!("/api/runs/{pid}/public"), k).status, 404);
        assert_eq!(get(&format!("/runs/{pid}"), k).status, 404);
    }
    // Made public later by its owner, private again: the page follows.
    let toggle = |public: bool, k: &str| {
        post_json(
            &format!("/api/runs/{pid}/public"),
            Some(k),
            &json!({"public": public}),
        )
    };
    let other = key_with(&["execute", "read", "write"]).0;
    assert_eq!(
        toggle(true, &other).status,
        404,
        "another account made it public"
    );
    let made = toggle(true, &key);
    assert_eq!(made.status, 200, "{}", made.text);
    assert_eq!(made.json()["publicUrl"], format!("/runs/{pid}"));
    assert_eq!(get(&format!("/runs/{pid}"), None).status, 200);
    let unmade = toggle(false, &key);
    assert_eq!(unmade.status, 200, "{}", unmade.text);
    assert!(unmade.json().get("publicUrl").is_none());
    assert_eq!(get(&format!("/runs/{pid}"), None).status, 404);
    assert_eq!(get(&format!("/api/runs/{pid}/public"), None).status, 404);
    let bad = post_json(
        &format!("/api/runs/{pid}/public"),
        Some(&key),
        &json!({"public": "yes"}),
    );
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert_eq!(get("/runs/run_000000000000000000000000", None).status, 404);
    assert_eq!(get("/runs/not-a-run", None).status, 404);
}

/// Headless Chromium (Debian's; `scripts/browser.sh` finds or installs it).
fn chromium() -> String {
    if let Ok(path) = std::env::var("CLOUDBOX_CHROMIUM") {
        if !path.is_empty() {
            return path;
        }
    }
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("scripts/browser.sh"))
        .output()
        .expect("scripts/browser.sh");
    assert!(
        out.status.success(),
        "no Chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs Chromium headless on `url` with `args`, killed after 90 s.
fn browse(url: &str, args: &[String]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(chromium())
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn the_proof_page_in_a_real_browser_fetches_nothing_else_and_runs_no_script() {
    let key = key();
    let (id, body) = hostile_public_run(&key, "public-browser");
    let url = format!("{}/runs/{id}", current().base);
    let work = tempfile::tempdir().unwrap();
    let netlog = work.path().join("netlog.json");
    // The DOM after load, and every URL the browser asked for.
    let out = browse(
        &url,
        &[
            "--dump-dom".into(),
            format!("--log-net-log={}", netlog.display()),
        ],
    );
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    // The script never ran: the title is the page's, no element came from
    // the run's output, and its text is on the page as text.
    assert!(
        dom.contains(&format!("<title>Run {id} · Cloudbox</title>")),
        "{dom}"
    );
    assert!(!dom.contains("pwned</title>"));
    assert!(!dom.contains("<script") && !dom.contains("<img"), "{dom}");
    assert!(
        dom.contains("&lt;script&gt;document.title=\"pwned\"&lt;/script&gt;"),
        "{dom}"
    );
    for r in body["receipts"].as_array().unwrap() {
        assert!(dom.contains(&format!("#{}</span>", r["seq"])));
    }
    assert!(dom.contains("valid: every receipt"));
    // Every request the page made: the net log's URL requests whose
    // initiator is the page's origin (the browser's own background traffic
    // has none), and every request to the stack at all.
    let log: Value = serde_json::from_str(&std::fs::read_to_string(&netlog).expect("the net log"))
        .expect("the net log is JSON");
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].clone();
    assert!(
        start_job.is_number(),
        "no URL_REQUEST_START_JOB in the net log"
    );
    let origin = current().base.clone();
    let requests: Vec<(String, String)> = log["events"]
        .as_array()
        .expect("net log events")
        .iter()
        .filter(|e| e["type"] == start_job)
        .map(|e| {
            let p = &e["params"];
            (
                p["url"].as_str().unwrap_or("").to_string(),
                p["initiator"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        requests.iter().any(|(u, _)| *u == url),
        "the page itself is not in the net log: {requests:?}"
    );
    let favicon = format!("{origin}/favicon.ico");
    let outside: Vec<&(String, String)> = requests
        .iter()
        .filter(|(u, initiator)| initiator.starts_with(&origin) || u.starts_with(&origin))
        .filter(|(u, _)| *u != url && *u != favicon)
        .collect();
    assert!(outside.is_empty(), "requests outside the page: {outside:?}");

    // Screenshots at a phone's width and a desktop's, for a person to look at.
    let shots = repo_root().join("target/proof-page");
    std::fs::create_dir_all(&shots).unwrap();
    for width in [390, 1280] {
        let file = shots.join(format!("run-{width}.png"));
        let _ = std::fs::remove_file(&file);
        let out = browse(
            &url,
            &[
                format!("--screenshot={}", file.display()),
                format!("--window-size={width},2400"),
                "--hide-scrollbars".into(),
            ],
        );
        assert!(
            out.status.success(),
            "chromium: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let png = std::fs::read(&file).expect("the screenshot");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{} bytes",
            png.len()
        );
    }
}
