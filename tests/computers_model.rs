//! Computers with a configured model: a scripted OpenAI-compatible server on
//! 127.0.0.1 (tests/common/model_server.rs) stands in for the model service.
//! Replies, generated files, briefs and judgments come from it; when it fails
//! (500) or is too slow (past MODEL_TIMEOUT_MS), the deterministic fallback
//! answers and the action still succeeds.

mod common;
#[path = "common/model_server.rs"]
mod model_server;

use std::sync::OnceLock;

use common::*;
use serde_json::{json, Value};

const MODEL_KEY: &str = "test-model-key";
const TIMEOUT_MS: &str = "1500";

fn model() -> &'static model_server::ModelServer {
    static SERVER: OnceLock<model_server::ModelServer> = OnceLock::new();
    let server = SERVER.get_or_init(model_server::start);
    stack_with_vars(&[
        ("OPENAI_BASE_URL", server.base_url.as_str()),
        ("OPENAI_API_KEY", MODEL_KEY),
        ("OPENAI_MODEL", "scripted-model"),
        ("MODEL_TIMEOUT_MS", TIMEOUT_MS),
    ]);
    server
}

fn new_key() -> String {
    model();
    mint_key(json!({"name": "model"}))["key"]
        .as_str()
        .unwrap()
        .to_string()
}

fn spec(tag: &str, description: &str, private_description: &str) -> Value {
    json!({
        "name": tag,
        "profile": {"role": "analyst"},
        "filesystem": [
            {"path": "brief.md", "kind": "brief", "content": "given"},
            {"path": "data/summary.md", "kind": "summary", "description": description, "dependsOn": ["brief.md"]}
        ],
        "collaborators": [
            {"id": "dana", "role": "data lead", "style": "warm", "focus": "quality",
             "privateFiles": [{"path": "private/dana.md", "kind": "notes", "description": private_description}]}
        ],
        "objectives": [{"id": "answer", "title": "Answer"}],
        "rubric": [
            {"id": "asked", "must": "Ask dana", "mustEvent": {"type": "asked", "who": "dana"}},
            {"id": "judged-pass", "weight": 2, "must": "pass-me: is polite"},
            {"id": "judged-fail", "must": "cites sources"}
        ]
    })
}

fn create(key: &str, spec: &Value) -> String {
    let resp = post_json("/api/computers", Some(key), spec);
    assert_eq!(resp.status, 201, "{}", resp.text);
    resp.json()["id"].as_str().unwrap().to_string()
}

fn read(key: &str, id: &str, path: &str) -> Value {
    let resp = get(&format!("/api/c/{id}/read?path={path}"), Some(key));
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.json()
}

fn ask(key: &str, id: &str, message: &str) -> Value {
    let resp = post_json(
        &format!("/api/c/{id}/ask"),
        Some(key),
        &json!({"who": "dana", "message": message}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.json()
}

#[test]
fn generated_files_and_replies_come_from_the_model() {
    let server = model();
    let key = new_key();
    let id = create(
        &key,
        &spec("from-model", "weekly numbers", "dana's hunches"),
    );
    let summary = read(&key, &id, "data/summary.md")["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        summary,
        "scripted file: Write the full content of the file `data/summary.md` (kind: summary)."
    );
    // Given content is kept as is.
    assert_eq!(read(&key, &id, "brief.md")["content"], "given");

    let reply = ask(&key, &id, "How clean is the data?");
    assert_eq!(reply["reply"], "scripted reply: How clean is the data?");
    assert_eq!(reply["revealed"], json!(["private/dana.md"]));
    let private = read(&key, &id, "private/dana.md")["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(private.starts_with("scripted file:"), "{private}");

    // The model got the collaborator's role, style and focus, and our key.
    let seen = server.requests.lock().unwrap().clone();
    let asked = seen
        .iter()
        .find(|(_, body)| body["messages"][1]["content"] == "How clean is the data?")
        .expect("the ask reached the model");
    assert_eq!(asked.0, format!("Bearer {MODEL_KEY}"));
    assert_eq!(asked.1["model"], "scripted-model");
    let system = asked.1["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.contains("data lead") && system.contains("warm") && system.contains("quality"),
        "{system}"
    );
    let receipts = get(&format!("/api/c/{id}/receipts"), Some(&key)).json();
    assert_eq!(receipts["receipts"][3]["payload"]["source"], "model");
}

#[test]
fn a_failing_model_falls_back_and_the_action_succeeds() {
    model();
    let key = new_key();
    let id = create(&key, &spec("failing", "[fail] numbers", "notes"));
    let summary = read(&key, &id, "data/summary.md")["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        summary.starts_with("# data/summary.md") && summary.contains("[fail] numbers"),
        "{summary}"
    );
    let reply = ask(&key, &id, "[fail] anything?");
    let text = reply["reply"].as_str().unwrap();
    assert!(
        text.contains("dana (data lead)") && text.contains("quality"),
        "{text}"
    );
    assert_eq!(reply["revealed"], json!(["private/dana.md"]));
}

#[test]
fn a_slow_model_times_out_and_the_fallback_answers() {
    model();
    let key = new_key();
    let id = create(&key, &spec("slow", "numbers", "notes"));
    let started = std::time::Instant::now();
    let reply = ask(&key, &id, "[slow] are you there?");
    let waited = started.elapsed();
    let text = reply["reply"].as_str().unwrap();
    assert!(text.contains("dana (data lead)"), "{text}");
    assert!(
        waited < std::time::Duration::from_millis(model_server::SLOW_MS),
        "the ask waited for the slow model ({waited:?})"
    );
    let receipts = get(&format!("/api/c/{id}/receipts"), Some(&key)).json();
    assert_eq!(receipts["receipts"][1]["payload"]["source"], "template");
}

#[test]
fn criteria_without_must_event_are_judged_without_moving_the_score() {
    model();
    let key = new_key();
    let id = create(&key, &spec("judged", "numbers", "notes"));
    ask(&key, &id, "hello");
    let first = get(&format!("/api/c/{id}/grade"), Some(&key));
    assert_eq!(first.status, 200, "{}", first.text);
    let g = first.json();
    assert_eq!(g["score"].as_f64(), Some(1.0));
    assert_eq!(g["max"].as_f64(), Some(1.0));
    assert_eq!(g["totalWeight"].as_f64(), Some(4.0));
    assert_eq!(g["judged"].as_u64(), Some(2));
    assert_eq!(g["ungraded"].as_u64(), Some(0));
    assert_eq!(g["detail"][1]["status"], "judged");
    assert_eq!(g["detail"][1]["verdict"], "pass");
    assert_eq!(g["detail"][2]["verdict"], "fail");
    let second = get(&format!("/api/c/{id}/grade"), Some(&key)).json();
    assert_eq!(second["score"], g["score"]);
}

#[test]
fn a_brief_is_drafted_by_the_model_and_materializes() {
    model();
    let key = new_key();
    let resp = post_json(
        "/api/brief",
        Some(&key),
        &json!({"brief": "Plan the launch"}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text);
    let body = resp.json();
    assert_eq!(body["source"], "model");
    assert_eq!(body["spec"]["profile"]["role"], "model-drafted engineer");
    let id = create(&key, &body["spec"]);
    assert_eq!(read(&key, &id, "PLAN.md")["content"], "scripted plan");
    let notes = read(&key, &id, "notes.md")["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(notes.starts_with("scripted file:"), "{notes}");

    // A failing model still gives a draft (the deterministic one).
    let fallback = post_json(
        "/api/brief",
        Some(&key),
        &json!({"brief": "[fail] Plan the launch"}),
    )
    .json();
    assert_eq!(fallback["source"], "template");
    assert!(cloudbox::computers::spec::parse(&fallback["spec"]).is_ok());
}
