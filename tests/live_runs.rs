//! Live runs over real HTTP against `wrangler dev` with real containers:
//! exec, read and write in a kept checkout; stop (a snapshot, the container
//! released) and resume (a fresh container, the tree restored byte for
//! byte); fork; the expiry and the retention; a killed container; every
//! guard code from a real state; and the metering of each live period
//! (price 0.6 USD/min, a standard key: holds settled, none left).
//!
//! The TTL floor and the retention are lowered through vars, so the tests
//! wait seconds, not hours.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// An expired run stays resumable this long.
const RETENTION_SECONDS: u64 = 8;

fn stack() -> &'static Stack {
    stack_with_vars(&[
        ("RUN_USD_PER_MINUTE", "0.6"),
        ("LIVE_TTL_MIN_SECONDS", "1"),
        ("SNAPSHOT_RETENTION_SECONDS", "8"),
    ])
}

/// A standard key with 100 USD of credit: (key, key id).
fn credited_key() -> (String, String) {
    stack();
    let minted = mint_key(json!({"name": "live", "keyType": "standard"}));
    let (key, id) = (
        minted["key"].as_str().unwrap().to_string(),
        minted["id"].as_str().unwrap().to_string(),
    );
    let credited = post_json(
        &format!("/billing/admin/{id}/credits"),
        Some(ADMIN_KEY),
        &json!({"amount": 100.0, "description": "top-up"}),
    );
    assert_eq!(credited.status, 200, "{}", credited.text);
    (key, id)
}

fn start(key: &str, spec: Value) -> Value {
    let resp = post_json("/api/runs", Some(key), &spec);
    assert_eq!(resp.status, 200, "{}", resp.text);
    let body = resp.json();
    assert_eq!(body["status"], "live", "{body}");
    assert_eq!(body["live"]["state"], "live", "{body}");
    assert!(body["live"]["expiresAt"].is_string(), "{body}");
    body
}

fn run_of(key: &str, id: &str) -> Value {
    let resp = get(&format!("/api/runs/{id}"), Some(key));
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.json()
}

fn post(key: &str, id: &str, op: &str, body: Value) -> Resp {
    post_json(&format!("/api/runs/{id}/{op}"), Some(key), &body)
}

/// `exec` that must answer 200: its receipt.
fn exec(key: &str, id: &str, command: &str) -> Value {
    let resp = post(key, id, "exec", json!({"command": command}));
    assert_eq!(resp.status, 200, "{command}: {}", resp.text);
    let receipt = resp.json();
    assert_eq!(receipt["type"], "exec", "{receipt}");
    receipt
}

fn read(key: &str, id: &str, path: &str) -> Resp {
    get(
        &format!("/api/runs/{id}/read?path={}", query_escape(path)),
        Some(key),
    )
}

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn error_code(resp: &Resp) -> String {
    resp.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn assert_refused(resp: Resp, status: u16, code: &str) {
    assert_eq!(resp.status, status, "{}", resp.text);
    assert_eq!(error_code(&resp), code, "{}", resp.text);
}

fn wait_status(key: &str, id: &str, status: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let body = run_of(key, id);
        if body["status"] == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} never became {status}: {body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn account(key: &str) -> Value {
    let resp = get("/billing/account", Some(key));
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.json()
}

/// No hold is left open (settlement happens a moment after the answer).
fn wait_no_hold(key: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = account(key);
        if a["heldCredits"] == 0.0 {
            return a;
        }
        assert!(Instant::now() < deadline, "a hold is left: {a}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn verify_chain(key: &str, id: &str) -> Value {
    let resp = get(&format!("/api/runs/{id}/verify"), Some(key));
    assert_eq!(resp.status, 200, "{}", resp.text);
    let check = resp.json();
    assert_eq!(check["valid"], true, "{check}");
    check
}

fn receipt_types(body: &Value) -> Vec<String> {
    body["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap().to_string())
        .collect()
}

/// Paths, kinds, modes, sizes, link targets and contents of the checkout
/// (`.git` included), and what git says of it: equal fingerprints, equal trees.
const FINGERPRINT: &str = "find . -printf '%p %y %m %s %l\\n' | LC_ALL=C sort | sha256sum; \
     find . -type f -exec sha256sum {} + | LC_ALL=C sort | sha256sum; \
     GIT_OPTIONAL_LOCKS=0 git status --porcelain | sha256sum; git diff | sha256sum; find . | wc -l";

#[test]
fn a_live_run_execs_reads_and_writes_then_stops_and_resumes() {
    let (key, _) = credited_key();
    let repo = fixture_repo("live", "basic", &[("README.md", "hi\n")]);
    let body = start(
        &key,
        json!({"repo": repo, "commands": ["echo built > out.txt"], "verify": ["test -f out.txt"],
               "live": true, "ttlSeconds": 600, "timeoutMs": 60000}),
    );
    let id = body["runId"].as_str().unwrap().to_string();
    assert_eq!(body["ok"], true);
    let steps = body["receipts"].as_array().unwrap().len() as u64;

    // exec sees the steps' files; its receipt continues the chain.
    let receipt = exec(&key, &id, "cat out.txt; echo err >&2; exit 3");
    assert_eq!(receipt["stdout"], "built\n");
    assert_eq!(receipt["stderr"], "err\n");
    assert_eq!(receipt["exitCode"], 3);
    assert_eq!(receipt["seq"], steps + 1);
    let check = verify_chain(&key, &id);
    assert_eq!(check["head"], receipt["hash"]);

    // write, then read the same bytes: text and binary.
    let wrote = post(
        &key,
        &id,
        "write",
        json!({"path": "notes/a.txt", "content": "hello\n"}),
    );
    assert_eq!(wrote.status, 200, "{}", wrote.text);
    assert_eq!(wrote.json()["written"], 6);
    let text = read(&key, &id, "notes/a.txt");
    assert_eq!(text.status, 200, "{}", text.text);
    assert_eq!(text.json()["content"], "hello\n");
    assert_eq!(text.json()["size"], 6);
    let wrote = post(
        &key,
        &id,
        "write",
        json!({"path": "bin/blob", "contentBase64": "AAEC/w==", "mode": "755"}),
    );
    assert_eq!(wrote.status, 200, "{}", wrote.text);
    let binary = read(&key, &id, "bin/blob").json();
    assert_eq!(binary["contentBase64"], "AAEC/w==", "{binary}");
    assert_eq!(binary["mode"], 0o755);
    let listed = exec(&key, &id, "cat notes/a.txt; stat -c '%a %U' bin/blob");
    assert_eq!(listed["stdout"], "hello\n755 agent\n", "{listed}");

    // No escape: unsafe paths, a link out of the checkout, a missing file.
    assert_refused(read(&key, &id, "../etc/passwd"), 400, "bad_path");
    exec(&key, &id, "ln -s /etc/passwd leak; ln -s /etc outdir");
    assert_refused(read(&key, &id, "leak"), 400, "bad_path");
    let through = post(
        &key,
        &id,
        "write",
        json!({"path": "outdir/x", "content": "no"}),
    );
    assert_refused(through, 400, "bad_path");
    assert_refused(read(&key, &id, "nope.txt"), 404, "file_not_found");
    let bad = post(
        &key,
        &id,
        "write",
        json!({"path": "a", "content": "x", "mode": "9"}),
    );
    assert_refused(bad, 400, "bad_run");
    assert_refused(
        post(&key, &id, "exec", json!({"command": ""})),
        400,
        "bad_run",
    );
    // Live: resume is refused, and so is a cancel (the steps are over).
    assert_refused(post(&key, &id, "resume", json!({})), 409, "run_not_running");

    // exec as SSE: output chunks, the receipt, then the result.
    let resp = agent()
        .post(&format!("{}/api/runs/{id}/exec", current().base))
        .set("authorization", &format!("Bearer {key}"))
        .set("accept", "text/event-stream")
        .send_json(json!({"command": "echo streamed"}))
        .expect("exec as SSE");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut resp.into_reader(), &mut text).unwrap();
    let output = text.find("event: output").expect(&text);
    let receipt = text.find("event: receipt").expect(&text);
    let result = text.rfind("event: result").expect(&text);
    assert!(output < receipt && receipt < result, "{text}");
    assert!(text.contains("streamed"), "{text}");

    // One exec at a time.
    let slow = {
        let (key, id) = (key.clone(), id.clone());
        std::thread::spawn(move || exec(&key, &id, "sleep 3; echo slept"))
    };
    std::thread::sleep(Duration::from_millis(1000));
    assert_refused(
        post(&key, &id, "exec", json!({"command": "true"})),
        409,
        "in_flight",
    );
    assert_eq!(slow.join().unwrap()["stdout"], "slept\n");
    exec(&key, &id, "true");

    // stop: a snapshot receipt, the container gone, the period settled.
    let container = container_id_of(&body["runnerReceipts"]).unwrap();
    let stopped = post(&key, &id, "stop", json!({}));
    assert_eq!(stopped.status, 200, "{}", stopped.text);
    let stopped = stopped.json();
    assert_eq!(stopped["status"], "stopped");
    assert!(stopped["live"]["expiresAt"].is_null(), "{stopped}");
    assert!(
        stopped["snapshot"]["files"].as_u64().unwrap() >= 4,
        "{stopped}"
    );
    assert_eq!(receipt_types(&stopped).last().unwrap(), "snapshot");
    assert!(
        container_gone(&container),
        "the stopped run's container is still up"
    );
    let settled = wait_no_hold(&key);
    assert!(settled["totalSpent"].as_f64().unwrap() > 0.0, "{settled}");
    verify_chain(&key, &id);

    // Every guard of a stopped run.
    assert_refused(
        post(&key, &id, "exec", json!({"command": "ls"})),
        409,
        "run_not_live",
    );
    assert_refused(read(&key, &id, "out.txt"), 409, "run_not_live");
    let write = post(&key, &id, "write", json!({"path": "x", "content": "x"}));
    assert_refused(write, 409, "run_not_live");
    assert_refused(post(&key, &id, "stop", json!({})), 409, "run_not_running");

    // resume: a fresh container with the files back.
    let resumed = post(&key, &id, "resume", json!({}));
    assert_eq!(resumed.status, 200, "{}", resumed.text);
    let resumed = resumed.json();
    assert_eq!(resumed["status"], "live");
    assert_eq!(receipt_types(&resumed).last().unwrap(), "restore");
    let again = exec(&key, &id, "cat out.txt notes/a.txt; readlink leak");
    assert_eq!(again["stdout"], "built\nhello\n/etc/passwd\n");
    verify_chain(&key, &id);

    // Another account sees none of it.
    let (other, _) = credited_key();
    assert_refused(
        post(&other, &id, "exec", json!({"command": "ls"})),
        404,
        "run_not_found",
    );
    assert_refused(read(&other, &id, "out.txt"), 404, "run_not_found");
    assert_refused(post(&other, &id, "stop", json!({})), 404, "run_not_found");
    assert_refused(post(&other, &id, "fork", json!({})), 404, "run_not_found");

    // Deleting a live run releases its container and settles its period.
    let deleted = send(
        "DELETE",
        &format!("/api/runs/{id}"),
        &[("authorization", &format!("Bearer {key}"))],
        None,
    );
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    wait_no_hold(&key);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !container_gone(&container) {
        assert!(
            Instant::now() < deadline,
            "the deleted run's container is up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_run_that_is_not_live_refuses_every_live_action() {
    let (key, _) = credited_key();
    let repo = fixture_repo("live", "plain", &[("README.md", "hi\n")]);
    let resp = post_json(
        "/api/runs",
        Some(&key),
        &json!({"repo": repo, "commands": ["true"]}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text);
    let body = resp.json();
    assert!(body.get("live").is_none(), "{body}");
    let id = body["runId"].as_str().unwrap();
    assert_refused(
        post(&key, id, "exec", json!({"command": "ls"})),
        409,
        "run_not_live",
    );
    assert_refused(read(&key, id, "README.md"), 409, "run_not_live");
    assert_refused(post(&key, id, "stop", json!({})), 409, "run_not_running");
    assert_refused(post(&key, id, "resume", json!({})), 409, "run_not_running");
    assert_refused(post(&key, id, "fork", json!({})), 409, "run_not_live");
    let bad_ttl = json!({"repo": repo, "commands": ["true"], "live": true, "ttlSeconds": 0});
    assert_refused(post_json("/api/runs", Some(&key), &bad_ttl), 400, "bad_run");
    wait_no_hold(&key);
}

#[test]
fn stop_and_resume_restore_a_tree_byte_for_byte_and_a_second_stop_moves_one_blob() {
    let (key, _) = credited_key();
    let repo = fixture_repo(
        "live",
        "tree",
        &[("README.md", "hi\n"), ("src/lib.rs", "fn a() {}\n")],
    );
    let make_tree = "mkdir -p gen/deep/er gen/empty gen/private && chmod 700 gen/private && \
        for i in $(seq 1 200); do echo \"file $i\" > gen/f$i.txt; done && \
        chmod 755 gen/f1.txt gen/f2.txt && chmod 444 gen/f3.txt && chmod 600 gen/f4.txt && \
        ln -s ../README.md gen/link && ln -s deep/er gen/dirlink && \
        printf '\\x00\\x01binary' > gen/deep/er/bin && echo changed >> README.md";
    let body = start(
        &key,
        json!({"repo": repo, "commands": [make_tree], "live": true, "ttlSeconds": 600, "timeoutMs": 60000}),
    );
    let id = body["runId"].as_str().unwrap().to_string();
    let before = exec(&key, &id, FINGERPRINT)["stdout"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(before.lines().count() == 5, "{before}");

    let stopped = post(&key, &id, "stop", json!({}));
    assert_eq!(
        stopped.status,
        200,
        "{} {}",
        stopped.text,
        run_of(&key, &id)
    );
    let resumed = post(&key, &id, "resume", json!({}));
    assert_eq!(resumed.status, 200, "{}", resumed.text);
    let after = exec(&key, &id, FINGERPRINT)["stdout"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(before, after, "the restored tree differs");
    let git = exec(
        &key,
        &id,
        "GIT_OPTIONAL_LOCKS=0 git status --porcelain; git diff --stat",
    );
    assert!(
        git["stdout"].as_str().unwrap().contains("README.md"),
        "{git}"
    );

    // git refreshed its index in the restored tree (new inodes): that is
    // saved once; then one changed file is one uploaded blob.
    assert_eq!(post(&key, &id, "stop", json!({})).status, 200);
    assert_eq!(post(&key, &id, "resume", json!({})).status, 200);
    exec(&key, &id, "echo one more >> gen/f10.txt");
    let second = post(&key, &id, "stop", json!({}));
    assert_eq!(second.status, 200, "{}", second.text);
    let second = second.json();
    let snapshot = second["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|r| r["type"] == "snapshot")
        .unwrap()
        .clone();
    assert!(
        snapshot["stdout"].as_str().unwrap().contains("; 1 of "),
        "{snapshot}"
    );
    wait_no_hold(&key);
}

#[test]
fn a_fork_of_a_live_run_leaves_the_parent_untouched() {
    let (key, _) = credited_key();
    let repo = fixture_repo("live", "fork", &[("README.md", "hi\n")]);
    let parent = start(
        &key,
        json!({"repo": repo, "commands": ["echo parent > p.txt"], "live": true, "ttlSeconds": 600, "timeoutMs": 60000}),
    );
    let parent_id = parent["runId"].as_str().unwrap().to_string();
    exec(&key, &parent_id, "echo later > later.txt");
    let parent_before = run_of(&key, &parent_id);

    let forked = post(&key, &parent_id, "fork", json!({}));
    assert_eq!(forked.status, 201, "{}", forked.text);
    let child = forked.json();
    let child_id = child["runId"].as_str().unwrap().to_string();
    assert_ne!(child_id, parent_id);
    assert_eq!(child["status"], "live", "{child}");
    let first = &child["receipts"][0];
    assert_eq!(first["type"], "fork", "{child}");
    assert_eq!(first["seq"], 1);
    let named: Value = serde_json::from_str(first["stdout"].as_str().unwrap()).unwrap();
    assert_eq!(named["parentRunId"], parent_id);
    assert_eq!(named["snapshotId"], child["snapshot"]["id"]);
    assert_eq!(child["live"]["forkedFrom"]["runId"], parent_id);
    verify_chain(&key, &child_id);

    // The child has the parent's files, and its own changes stay its own.
    let seen = exec(&key, &child_id, "cat p.txt later.txt; echo child > c.txt");
    assert_eq!(seen["stdout"], "parent\nlater\n");
    assert_refused(read(&key, &parent_id, "c.txt"), 404, "file_not_found");
    let parent_after = run_of(&key, &parent_id);
    assert_eq!(parent_after["status"], "live");
    assert_eq!(parent_after["receipts"], parent_before["receipts"]);
    let child_container = container_id_of(&child["runnerReceipts"]).unwrap();
    let parent_container = container_id_of(&parent["runnerReceipts"]).unwrap();
    assert_ne!(child_container, parent_container);

    // A fork created stopped, then resumed.
    let quiet = post(&key, &child_id, "fork", json!({"live": false}));
    assert_eq!(quiet.status, 201, "{}", quiet.text);
    let quiet = quiet.json();
    assert_eq!(quiet["status"], "stopped", "{quiet}");
    let quiet_id = quiet["runId"].as_str().unwrap().to_string();
    let resumed = post(&key, &quiet_id, "resume", json!({}));
    assert_eq!(resumed.status, 200, "{}", resumed.text);
    let seen = exec(&key, &quiet_id, "cat p.txt c.txt");
    assert_eq!(seen["stdout"], "parent\nchild\n");

    for id in [&parent_id, &child_id, &quiet_id] {
        let stopped = post(&key, id, "stop", json!({}));
        assert_eq!(stopped.status, 200, "{}", stopped.text);
    }
    wait_no_hold(&key);
}

#[test]
fn a_live_run_expires_stays_resumable_then_answers_410() {
    let (key, _) = credited_key();
    let repo = fixture_repo("live", "ttl", &[("README.md", "hi\n")]);
    let body = start(
        &key,
        json!({"repo": repo, "commands": ["echo kept > k.txt"], "live": true, "ttlSeconds": 6, "timeoutMs": 60000}),
    );
    let id = body["runId"].as_str().unwrap().to_string();
    let container = container_id_of(&body["runnerReceipts"]).unwrap();
    let expired = wait_status(&key, &id, "expired", Duration::from_secs(40));
    assert!(expired["snapshot"]["id"].is_string(), "{expired}");
    assert!(expired["live"]["retainedUntil"].is_string(), "{expired}");
    assert_eq!(receipt_types(&expired).last().unwrap(), "snapshot");
    assert!(
        container_gone(&container),
        "the expired run's container is up"
    );
    assert_refused(
        post(&key, &id, "exec", json!({"command": "ls"})),
        409,
        "run_not_live",
    );
    wait_no_hold(&key);

    // Within the retention: resumed with its files.
    let resumed = post(&key, &id, "resume", json!({}));
    assert_eq!(resumed.status, 200, "{}", resumed.text);
    assert_eq!(exec(&key, &id, "cat k.txt")["stdout"], "kept\n");

    // Expired again, then past the retention: gone (410), still listed.
    wait_status(&key, &id, "expired", Duration::from_secs(40));
    std::thread::sleep(Duration::from_secs(RETENTION_SECONDS + 1));
    assert_refused(post(&key, &id, "resume", json!({})), 410, "run_expired");
    assert_refused(post(&key, &id, "fork", json!({})), 410, "run_expired");
    assert_refused(
        post(&key, &id, "exec", json!({"command": "ls"})),
        410,
        "run_expired",
    );
    assert_eq!(run_of(&key, &id)["status"], "expired");
    wait_no_hold(&key);
}

#[test]
fn a_killed_live_container_is_container_lost_and_resumable_from_its_snapshot() {
    let (key, _) = credited_key();
    let repo = fixture_repo("live", "lost", &[("README.md", "hi\n")]);
    let body = start(
        &key,
        json!({"repo": repo, "commands": ["echo saved > s.txt"], "live": true, "ttlSeconds": 600, "timeoutMs": 60000}),
    );
    let id = body["runId"].as_str().unwrap().to_string();
    assert_eq!(post(&key, &id, "stop", json!({})).status, 200);
    assert_eq!(post(&key, &id, "resume", json!({})).status, 200);
    exec(&key, &id, "echo unsaved > u.txt");
    let container = container_id_of(&body["runnerReceipts"]).unwrap();
    kill_container(&container);

    let lost = wait_status(&key, &id, "container_lost", Duration::from_secs(40));
    assert_eq!(lost["live"]["state"], "container_lost");
    wait_no_hold(&key);

    let resumed = post(&key, &id, "resume", json!({}));
    assert_eq!(resumed.status, 200, "{}", resumed.text);
    let seen = exec(
        &key,
        &id,
        "cat s.txt; test -e u.txt && echo unexpected || echo gone",
    );
    assert_eq!(seen["stdout"], "saved\ngone\n");
    assert_eq!(post(&key, &id, "stop", json!({})).status, 200);
    wait_no_hold(&key);
}
