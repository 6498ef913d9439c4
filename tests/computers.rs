//! Computers over real HTTP against `wrangler dev` (no model configured:
//! the deterministic fallbacks answer).

mod common;

use cloudbox::computers::receipts::{verify_chain, Receipt};
use common::*;
use serde_json::{json, Value};

fn new_key() -> String {
    mint_key(json!({"name": "computers"}))["key"]
        .as_str()
        .expect("key")
        .to_string()
}

fn spec() -> Value {
    json!({
        "name": "outage triage",
        "profile": {"role": "on-call engineer", "team": "payments"},
        "filesystem": [
            {"path": "README.md", "kind": "doc", "content": "Payments service. Start with the incident."},
            {"path": "incident/summary.md", "kind": "incident", "description": "Checkout latency spiked at 02:00", "dependsOn": ["README.md"]},
            {"path": "logs/api.log", "kind": "log", "state": "rotated", "content": "02:00 p99=4s\n"}
        ],
        "collaborators": [
            {"id": "alice", "role": "SRE", "style": "terse", "focus": "the database",
             "privateFiles": [{"path": "private/alice-notes.md", "kind": "notes", "content": "The index on orders was dropped."}]},
            {"id": "bob", "role": "product manager"}
        ],
        "objectives": [{"id": "fix", "title": "Restore checkout latency"}],
        "rubric": [
            {"id": "read-readme-first", "weight": 2, "must": "Read the README before the incident", "mustEvent": {"type": "readBefore", "before": "README.md", "after": "incident/summary.md"}},
            {"id": "asked-alice", "must": "Ask the SRE", "mustEvent": {"type": "asked", "who": "alice"}},
            {"id": "not-bob", "must": "Do not bother the PM", "mustEvent": {"type": "askedOnly", "who": "alice", "notWho": "bob"}},
            {"id": "read-notes", "must": "Read alice's notes", "mustEvent": {"type": "read", "path": "private/alice-notes.md"}},
            {"id": "report", "weight": 3, "must": "Write a report", "mustEvent": {"type": "wrote", "path": "REPORT.md"}},
            {"id": "rollback", "weight": 2, "must": "Decide to restore the index", "mustEvent": {"type": "submitted", "objective": "fix", "decision": "restore-index"}},
            {"id": "tone", "weight": 0.5, "must": "The report is calm"}
        ]
    })
}

/// A fresh computer (the spec's name made unique, so each test has its own).
fn fresh(key: &str, tag: &str) -> String {
    let mut s = spec();
    s["name"] = json!(format!("outage triage {tag}"));
    let resp = post_json("/api/computers", Some(key), &s);
    assert_eq!(resp.status, 201, "{}", resp.text);
    resp.json()["id"].as_str().expect("id").to_string()
}

fn c(id: &str, action: &str) -> String {
    format!("/api/c/{id}/{action}")
}

fn receipts(key: &str, id: &str) -> Vec<Receipt> {
    let resp = get(&c(id, "receipts"), Some(key));
    assert_eq!(resp.status, 200, "{}", resp.text);
    serde_json::from_value(resp.json()["receipts"].clone()).expect("receipts")
}

/// The log after the `init` receipt it starts with (seq 1): what the
/// agent's actions left.
fn actions(key: &str, id: &str) -> Vec<Receipt> {
    let mut log = receipts(key, id);
    assert_eq!(
        log.first().map(|r| (r.kind.as_str(), r.seq)),
        Some(("init", 1)),
        "the log starts with init"
    );
    log.remove(0);
    log
}

fn file_paths(key: &str, id: &str) -> Vec<String> {
    let resp = get(&c(id, "files"), Some(key));
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.json()["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

fn read(key: &str, id: &str, path: &str) -> common::Resp {
    get(&format!("{}?path={}", c(id, "read"), path), Some(key))
}

#[test]
fn the_same_spec_is_the_same_computer_and_changed_content_is_another() {
    let key = new_key();
    let first = post_json("/api/computers", Some(&key), &spec());
    assert_eq!(first.status, 201, "{}", first.text);
    let body = first.json();
    let id = body["id"].as_str().unwrap();
    assert!(cloudbox::computers::spec::is_computer_id(id), "{id}");
    assert_eq!(body["baseUrl"], format!("/api/c/{id}"));

    // Same content, keys in another order: the same computer, 200.
    let text = r#"{"rubric": [], "objectives": [], "collaborators": [], "filesystem": [], "profile": {"team": "x", "role": "r"}}"#;
    let reordered = r#"{"profile": {"role": "r", "team": "x"}, "filesystem": [], "collaborators": [], "objectives": [], "rubric": []}"#;
    let auth = format!("Bearer {key}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let a = send("POST", "/api/computers", &headers, Some(text.as_bytes()));
    let b = send(
        "POST",
        "/api/computers",
        &headers,
        Some(reordered.as_bytes()),
    );
    assert_eq!((a.status, b.status), (201, 200), "{} {}", a.text, b.text);
    assert_eq!(a.json()["id"], b.json()["id"]);

    let again = post_json("/api/computers", Some(&key), &spec());
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["id"], id);

    let mut nested = spec();
    nested["collaborators"][0]["privateFiles"][0]["content"] = json!("The index was fine.");
    let changed = post_json("/api/computers", Some(&key), &nested);
    assert_eq!(changed.status, 201, "{}", changed.text);
    assert_ne!(changed.json()["id"], id);

    // GET spec gives the spec back.
    let got = get(&c(id, "spec"), Some(&key)).json();
    assert_eq!(got["id"], id);
    assert_eq!(got["spec"], spec());
}

#[test]
fn invalid_specs_answer_precise_errors() {
    let key = new_key();
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (json!([1]), 400, "bad_spec", "body"),
        (json!({"profile": {}}), 400, "bad_spec", "profile.role"),
        (
            {
                let mut s = spec();
                s.as_object_mut().unwrap().remove("rubric");
                s
            },
            400,
            "bad_spec",
            "rubric",
        ),
        (
            {
                let mut s = spec();
                s["filesystem"][2]["path"] = json!("README.md");
                s
            },
            400,
            "bad_spec",
            "filesystem[2].path",
        ),
        (
            {
                let mut s = spec();
                s["filesystem"][0]["dependsOn"] = json!(["incident/summary.md"]);
                s
            },
            400,
            "bad_spec",
            "cycle",
        ),
        (
            {
                let mut s = spec();
                s["rubric"][1]["mustEvent"]["who"] = json!("carol");
                s
            },
            400,
            "bad_spec",
            "rubric[1].mustEvent.who",
        ),
        (
            {
                let mut s = spec();
                s["filesystem"][1]["path"] = json!("../escape.md");
                s
            },
            400,
            "bad_path",
            "filesystem[1].path",
        ),
    ];
    for (body, status, code, needle) in cases {
        let resp = post_json("/api/computers", Some(&key), &body);
        assert_eq!(resp.status, status, "{}", resp.text);
        let err = resp.json();
        assert_eq!(err["error"], code, "{}", resp.text);
        assert!(
            err["message"].as_str().unwrap().contains(needle),
            "{} lacks {needle}",
            resp.text
        );
    }
    let mut big = spec();
    big["filesystem"][0]["content"] = json!("x".repeat(300 * 1024));
    let resp = post_json("/api/computers", Some(&key), &big);
    assert_eq!(resp.status, 413, "{}", resp.text);
    assert_eq!(resp.json()["error"], "spec_too_large");
    let auth = format!("Bearer {key}");
    let resp = send(
        "POST",
        "/api/computers",
        &[("authorization", &auth)],
        Some(b"{nope"),
    );
    assert_eq!(resp.json()["error"], "bad_json");
}

#[test]
fn actions_produce_chained_receipts_in_order() {
    let key = new_key();
    let id = fresh(&key, "receipts");
    assert!(actions(&key, &id).is_empty());
    assert_eq!(read(&key, &id, "README.md").status, 200);
    let w = post_json(
        &c(&id, "write"),
        Some(&key),
        &json!({"path": "REPORT.md", "content": "héllo"}),
    );
    assert_eq!(w.status, 200, "{}", w.text);
    assert_eq!(w.json(), json!({"path": "REPORT.md", "written": 6}));
    let a = post_json(
        &c(&id, "ask"),
        Some(&key),
        &json!({"who": "bob", "message": "status?"}),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let s = post_json(
        &c(&id, "submit"),
        Some(&key),
        &json!({"objective": "fix", "decision": "wait", "paths": ["REPORT.md"], "notes": "n"}),
    );
    assert_eq!(s.status, 200, "{}", s.text);
    assert_eq!(s.json(), json!({"objective": "fix", "accepted": true}));
    assert_eq!(get(&c(&id, "grade"), Some(&key)).status, 200);

    let log = receipts(&key, &id);
    let kinds: Vec<&str> = log.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds,
        vec!["init", "read", "write", "ask", "submit", "grade"]
    );
    assert_eq!(
        log.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert!(
        log.windows(2).all(|w| w[0].ms <= w[1].ms),
        "times go backwards"
    );
    assert!(log.windows(2).all(|w| w[0].ts <= w[1].ts));
    assert_eq!(verify_chain(&log), Ok(()));
    // What the materialization made: 3 files and 1 private file, one of
    // them (no content, no model configured) from the template.
    assert_eq!(
        log[0].payload,
        json!({"files": 3, "privateFiles": 1, "sources": {"spec": 3, "template": 1}})
    );
    assert_eq!(log[1].payload, json!({"path": "README.md"}));
    assert_eq!(log[2].payload["bytes"], 6);
    assert_eq!(log[3].payload["who"], "bob");
    assert_eq!(log[4].payload["decision"], "wait");
    assert_eq!(log[4].payload["paths"], json!(["REPORT.md"]));
    // Writes are listed and readable as the agent's own.
    assert!(file_paths(&key, &id).contains(&"REPORT.md".to_string()));
    let back = read(&key, &id, "REPORT.md").json();
    assert_eq!(
        back,
        json!({"path": "REPORT.md", "kind": "agent-write", "content": "héllo"})
    );
}

#[test]
fn private_files_are_hidden_until_their_owner_is_asked() {
    let key = new_key();
    let id = fresh(&key, "private");
    let secret = "private/alice-notes.md";
    assert!(!file_paths(&key, &id).contains(&secret.to_string()));
    let hidden = read(&key, &id, secret);
    assert_eq!(hidden.status, 404);
    assert_eq!(hidden.json()["error"], "file_not_found");
    let unknown = read(&key, &id, "nope.md");
    assert_eq!(unknown.json()["error"], "file_not_found");
    assert!(actions(&key, &id).is_empty(), "404 reads leave no receipt");

    // Asking someone else reveals nothing.
    let bob = post_json(
        &c(&id, "ask"),
        Some(&key),
        &json!({"who": "bob", "message": "hi"}),
    )
    .json();
    assert_eq!(bob["revealed"], json!([]));
    assert_eq!(read(&key, &id, secret).status, 404);

    let ask = post_json(
        &c(&id, "ask"),
        Some(&key),
        &json!({"who": "alice", "message": "What changed in the DB?"}),
    );
    assert_eq!(ask.status, 200, "{}", ask.text);
    let body = ask.json();
    assert_eq!(body["from"], "alice");
    assert_eq!(body["role"], "SRE");
    assert_eq!(body["style"], "terse");
    assert_eq!(body["revealed"], json!([secret]));
    let reply = body["reply"].as_str().unwrap();
    assert!(
        reply.contains("What changed in the DB?") && reply.contains("the database"),
        "{reply}"
    );

    assert!(file_paths(&key, &id).contains(&secret.to_string()));
    let now = read(&key, &id, secret);
    assert_eq!(now.status, 200);
    assert_eq!(now.json()["content"], "The index on orders was dropped.");
    let again = post_json(
        &c(&id, "ask"),
        Some(&key),
        &json!({"who": "alice", "message": "thanks"}),
    )
    .json();
    assert_eq!(again["revealed"], json!([]), "only the first ask reveals");

    let log = receipts(&key, &id);
    let asks: Vec<&Receipt> = log.iter().filter(|r| r.kind == "ask").collect();
    assert_eq!(asks[1].payload["revealed"], json!([secret]));
    assert_eq!(asks[1].payload["source"], "template");

    // Reset hides them again and clears writes and receipts.
    post_json(
        &c(&id, "write"),
        Some(&key),
        &json!({"path": "x.md", "content": "x"}),
    );
    let reset = post_json(&c(&id, "reset"), Some(&key), &json!({}));
    assert_eq!(reset.status, 200, "{}", reset.text);
    assert!(
        actions(&key, &id).is_empty(),
        "the new log is its init alone"
    );
    assert_eq!(read(&key, &id, secret).status, 404);
    assert_eq!(read(&key, &id, "x.md").status, 404);
    assert!(!file_paths(&key, &id).contains(&"x.md".to_string()));
    assert_eq!(
        get(&c(&id, "spec"), Some(&key)).status,
        200,
        "the spec survives"
    );
}

#[test]
fn files_are_listed_sorted_with_generated_content() {
    let key = new_key();
    let id = fresh(&key, "files");
    let resp = get(&c(&id, "files"), Some(&key)).json();
    let files = resp["files"].as_array().unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        vec!["README.md", "incident/summary.md", "logs/api.log"]
    );
    assert_eq!(files[1]["dependsOn"], json!(["README.md"]));
    assert_eq!(files[1]["description"], "Checkout latency spiked at 02:00");
    assert_eq!(files[2]["state"], "rotated");
    assert!(files[0].get("content").is_none());
    let generated = read(&key, &id, "incident/summary.md").json();
    assert_eq!(generated["kind"], "incident");
    let text = generated["content"].as_str().unwrap();
    assert!(
        text.contains("Checkout latency spiked at 02:00") && text.contains("Builds on: README.md"),
        "{text}"
    );
}

#[test]
fn a_computer_holds_at_most_500_agent_files() {
    let key = new_key();
    let id = fresh(&key, "full");
    for i in 0..500 {
        let ok = post_json(
            &c(&id, "write"),
            Some(&key),
            &json!({"path": format!("out/{i}.txt"), "content": "x"}),
        );
        assert_eq!(ok.status, 200, "write {i}: {}", ok.text);
    }
    let full = post_json(
        &c(&id, "write"),
        Some(&key),
        &json!({"path": "out/one-more.txt", "content": "x"}),
    );
    assert_eq!(full.status, 413, "{}", full.text);
    assert_eq!(full.json()["error"], "computer_full");
    assert_eq!(
        read(&key, &id, "out/one-more.txt").json()["error"],
        "file_not_found"
    );
    // Rewriting a file already written is still allowed.
    let again = post_json(
        &c(&id, "write"),
        Some(&key),
        &json!({"path": "out/7.txt", "content": "seven"}),
    );
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(read(&key, &id, "out/7.txt").json()["content"], "seven");
    // 500 writes, the rewrite and the read left receipts; the refused
    // write and the failed read did not.
    assert_eq!(actions(&key, &id).len(), 502);
}

#[test]
fn write_limits_and_bad_inputs() {
    let key = new_key();
    let id = fresh(&key, "limits");
    let at_limit = "a".repeat(256 * 1024);
    let ok = post_json(
        &c(&id, "write"),
        Some(&key),
        &json!({"path": "big.txt", "content": at_limit}),
    );
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.json()["written"], 256 * 1024);
    let over = post_json(
        &c(&id, "write"),
        Some(&key),
        &json!({"path": "big.txt", "content": "a".repeat(256 * 1024 + 1)}),
    );
    assert_eq!(over.status, 413);
    assert_eq!(over.json()["error"], "content_too_large");
    let bad = post_json(
        &c(&id, "write"),
        Some(&key),
        &json!({"path": "/etc/passwd", "content": "x"}),
    );
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"], "bad_path");
    let missing = post_json(&c(&id, "write"), Some(&key), &json!({"path": "a"}));
    assert_eq!(missing.json()["error"], "validation_failed");
    assert_eq!(read(&key, &id, "a/../b").json()["error"], "bad_path");
    assert_eq!(
        get(&c(&id, "read"), Some(&key)).json()["error"],
        "validation_failed"
    );
    // Only the successful write left a receipt.
    assert_eq!(actions(&key, &id).len(), 1);
}

#[test]
fn unknown_collaborators_and_objectives_are_404() {
    let key = new_key();
    let id = fresh(&key, "unknown");
    let ask = post_json(
        &c(&id, "ask"),
        Some(&key),
        &json!({"who": "carol", "message": "hi"}),
    );
    assert_eq!(ask.status, 404);
    assert_eq!(ask.json()["error"], "collaborator_not_found");
    let submit = post_json(&c(&id, "submit"), Some(&key), &json!({"objective": "nope"}));
    assert_eq!(submit.status, 404);
    assert_eq!(submit.json()["error"], "objective_not_found");
    assert!(actions(&key, &id).is_empty());
    let none = get(
        "/api/c/cb_00000000000000000000000000000000/files",
        Some(&key),
    );
    assert_eq!(none.status, 404);
    assert_eq!(none.json()["error"], "computer_not_found");
    assert_eq!(
        get("/api/c/not-an-id/files", Some(&key)).json()["error"],
        "computer_not_found"
    );
}

#[test]
fn grading_replays_the_log_and_is_repeatable() {
    let key = new_key();
    let id = fresh(&key, "grade");
    let empty = get(&c(&id, "grade"), Some(&key)).json();
    assert_eq!(
        (empty["score"].as_f64(), empty["max"].as_f64()),
        (Some(0.0), Some(10.0))
    );

    read(&key, &id, "README.md");
    read(&key, &id, "incident/summary.md");
    post_json(
        &c(&id, "ask"),
        Some(&key),
        &json!({"who": "alice", "message": "db?"}),
    );
    read(&key, &id, "private/alice-notes.md");
    post_json(
        &c(&id, "write"),
        Some(&key),
        &json!({"path": "REPORT.md", "content": "restore the index"}),
    );
    post_json(
        &c(&id, "submit"),
        Some(&key),
        &json!({"objective": "fix", "decision": "restore-index"}),
    );

    let first = get(&c(&id, "grade"), Some(&key));
    assert_eq!(first.status, 200, "{}", first.text);
    let g = first.json();
    assert_eq!(g["score"].as_f64(), Some(10.0));
    assert_eq!(g["max"].as_f64(), Some(10.0));
    assert_eq!(g["totalWeight"].as_f64(), Some(10.5));
    assert_eq!(
        (
            g["passed"].as_u64(),
            g["failed"].as_u64(),
            g["ungraded"].as_u64()
        ),
        (Some(6), Some(0), Some(1))
    );
    let statuses: Vec<&str> = g["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        vec!["passed", "passed", "passed", "passed", "passed", "passed", "ungraded"]
    );
    assert_eq!(g["detail"][6]["id"], "tone");
    assert_eq!(g["detail"][0]["weight"].as_f64(), Some(2.0));

    // Asking bob now breaks askedOnly.
    post_json(
        &c(&id, "ask"),
        Some(&key),
        &json!({"who": "bob", "message": "fyi"}),
    );
    let second = get(&c(&id, "grade"), Some(&key)).json();
    let third = get(&c(&id, "grade"), Some(&key)).json();
    assert_eq!(second["score"].as_f64(), Some(9.0));
    assert_eq!(second["detail"][2]["status"], "failed");
    assert_eq!(second, third, "grading twice gives the same answer");
    let grades: Vec<Receipt> = receipts(&key, &id)
        .into_iter()
        .filter(|r| r.kind == "grade")
        .collect();
    assert_eq!(grades.len(), 4);
    assert_eq!(grades[2].payload["score"].as_f64(), Some(9.0));
    assert_eq!(grades[3].payload["score"].as_f64(), Some(9.0));
}

#[test]
fn computers_belong_to_their_account() {
    let owner = mint_key(json!({"name": "owner"}));
    let owner_key = owner["key"].as_str().unwrap().to_string();
    let id = fresh(&owner_key, "owner");
    let stranger = new_key();
    for path in [
        c(&id, "files"),
        c(&id, "receipts"),
        c(&id, "grade"),
        c(&id, "spec"),
        format!("{}?path=README.md", c(&id, "read")),
    ] {
        let resp = get(&path, Some(&stranger));
        assert_eq!(resp.status, 404, "{path}: {}", resp.text);
        assert_eq!(resp.json()["error"], "computer_not_found");
    }
    for (action, body) in [
        ("write", json!({"path": "x", "content": "x"})),
        ("ask", json!({"who": "alice", "message": "hi"})),
        ("submit", json!({"objective": "fix"})),
        ("reset", json!({})),
    ] {
        let resp = post_json(&c(&id, action), Some(&stranger), &body);
        assert_eq!(resp.status, 404, "{action}: {}", resp.text);
    }
    assert!(
        actions(&owner_key, &id).is_empty(),
        "the stranger left no trace"
    );
    // The same spec from another account is another computer.
    let mut s = spec();
    s["name"] = json!("outage triage owner");
    let theirs = post_json("/api/computers", Some(&stranger), &s);
    assert_eq!(theirs.status, 201);
    assert_ne!(theirs.json()["id"], id);

    // A teammate (another key of the same account) shares it.
    let account = owner["accountId"].as_str().unwrap();
    let mate = mint_key(json!({"name": "mate", "accountId": account}))["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(get(&c(&id, "files"), Some(&mate)).status, 200);
}

#[test]
fn keys_and_permissions_are_checked() {
    assert_eq!(post_json("/api/computers", None, &spec()).status, 401);
    let read_only = mint_key(json!({"name": "ro", "permissions": ["read"]}))["key"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = post_json("/api/computers", Some(&read_only), &spec());
    assert_eq!(resp.status, 403);
    assert_eq!(resp.json()["error"], "forbidden");
    let full = mint_key(json!({"name": "rw", "permissions": ["read", "write"]}));
    let account = full["accountId"].as_str().unwrap();
    let writer = full["key"].as_str().unwrap();
    let id = fresh(writer, "perms");
    let reader = mint_key(json!({"name": "ro2", "permissions": ["read"], "accountId": account}))
        ["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        get(&c(&id, "files"), Some(&reader)).status,
        200,
        "same account, read key"
    );
    let denied = post_json(
        &c(&id, "write"),
        Some(&reader),
        &json!({"path": "x", "content": "x"}),
    );
    assert_eq!(denied.status, 403);
}

#[test]
fn a_brief_drafts_a_spec_that_validates_and_materializes() {
    let key = new_key();
    let resp = post_json(
        "/api/brief",
        Some(&key),
        &json!({"brief": "Migrate the billing cron to a queue"}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text);
    let body = resp.json();
    assert_eq!(body["source"], "template");
    let draft = body["spec"].clone();
    assert!(cloudbox::computers::spec::parse(&draft).is_ok());
    let created = post_json("/api/computers", Some(&key), &draft);
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json()["id"].as_str().unwrap().to_string();
    let paths = file_paths(&key, &id);
    assert!(paths.contains(&"TASK.md".to_string()), "{paths:?}");
    for path in &paths {
        let file = read(&key, &id, path);
        assert_eq!(file.status, 200);
        assert!(
            !file.json()["content"].as_str().unwrap().is_empty(),
            "{path} is empty"
        );
    }
    let task = read(&key, &id, "TASK.md").json();
    assert!(task["content"]
        .as_str()
        .unwrap()
        .contains("Migrate the billing cron"));
    // Not stored: the brief alone created nothing.
    for bad in [json!({}), json!({"brief": ""}), json!({"brief": 3})] {
        let resp = post_json("/api/brief", Some(&key), &bad);
        assert_eq!(resp.status, 400, "{}", resp.text);
        assert_eq!(resp.json()["error"], "validation_failed");
    }
}

#[test]
fn grades_stay_right_after_many_receipts_and_after_a_reset() {
    let key = new_key();
    let id = fresh(&key, "many");
    let act = |action: &str, body: Value| {
        let resp = post_json(&c(&id, action), Some(&key), &body);
        assert_eq!(resp.status, 200, "{action}: {}", resp.text);
    };
    let score = || {
        let resp = get(&c(&id, "grade"), Some(&key));
        assert_eq!(resp.status, 200, "{}", resp.text);
        resp.json()
    };
    let the_right_steps = || {
        read(&key, &id, "README.md");
        read(&key, &id, "incident/summary.md");
        act("ask", json!({"who": "alice", "message": "db?"}));
        read(&key, &id, "private/alice-notes.md");
        act("write", json!({"path": "REPORT.md", "content": "restore"}));
        act(
            "submit",
            json!({"objective": "fix", "decision": "restore-index"}),
        );
    };
    // The incident read first, in a long log; then everything else.
    read(&key, &id, "incident/summary.md");
    for i in 0..300 {
        match i % 3 {
            0 => assert_eq!(read(&key, &id, "logs/api.log").status, 200),
            1 => act(
                "write",
                json!({"path": format!("out/{}.txt", i % 10), "content": "x"}),
            ),
            _ => act("submit", json!({"objective": "fix", "decision": "wait"})),
        }
    }
    the_right_steps();
    let g = score();
    assert_eq!(
        g["detail"][0]["status"], "failed",
        "README after the incident"
    );
    assert_eq!(
        (g["score"].as_f64(), g["max"].as_f64()),
        (Some(8.0), Some(10.0))
    );
    // The summary the DO kept grades like the whole log.
    let rubric = cloudbox::computers::spec::parse(&spec()).unwrap().rubric;
    let log = receipts(&key, &id);
    assert_eq!(
        log.len(),
        1 + 1 + 300 + 6 + 1,
        "init, the incident, 300, the steps, a grade"
    );
    let replayed = cloudbox::computers::grade::grade(&rubric, &log);
    assert_eq!(
        serde_json::to_value(&replayed).unwrap(),
        g,
        "DO summary vs replayed log"
    );

    // A reset forgets the summary with the log: nothing done, nothing passes.
    act("reset", json!({}));
    let empty = score();
    assert_eq!(
        (empty["score"].as_f64(), empty["passed"].as_u64()),
        (Some(0.0), Some(0))
    );
    // The incident read before the reset no longer comes first.
    the_right_steps();
    let g = score();
    assert_eq!(
        (g["score"].as_f64(), g["max"].as_f64()),
        (Some(10.0), Some(10.0))
    );
    assert_eq!(actions(&key, &id).len(), 1 + 6 + 1);
}
