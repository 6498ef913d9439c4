//! A scripted OpenAI-compatible model server (the only stand-in for the
//! model service): `POST /v1/chat/completions` on 127.0.0.1, std::net only.
//! What it answers depends on the prompt, so parallel tests don't interfere:
//! - a user message containing `[fail]` → HTTP 500;
//! - containing `[slow]` → answers only after `SLOW_MS` (past the timeout);
//! - starting `Brief:` → a valid ComputerSpec in a ```json fence;
//! - starting `Criterion:` → `PASS: …` when it contains `pass-me`, else `FAIL: …`;
//! - starting `Write the full content` → `scripted file: <first line>`;
//! - anything else (a collaborator question) → `scripted reply: <message>`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// How long a `[slow]` answer takes; the test stack's timeout is shorter.
pub const SLOW_MS: u64 = 4_000;

pub struct ModelServer {
    pub base_url: String,
    /// Every request seen: (authorization header, body).
    pub requests: Arc<Mutex<Vec<(String, Value)>>>,
}

pub fn start() -> ModelServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind model server");
    let port = listener.local_addr().expect("addr").port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let _ = serve(stream, &seen);
            });
        }
    });
    ModelServer {
        base_url: format!("http://127.0.0.1:{port}/v1"),
        requests,
    }
}

fn serve(stream: TcpStream, seen: &Mutex<Vec<(String, Value)>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut length = 0usize;
    let mut authorization = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "authorization" => authorization = value.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    seen.lock().unwrap().push((authorization, body.clone()));

    let mut stream = stream;
    if !request_line.starts_with("POST /v1/chat/completions") {
        return respond(&mut stream, 404, &json!({"error": "not found"}));
    }
    let user = body["messages"][1]["content"]
        .as_str()
        .unwrap_or("")
        .to_string();
    if user.contains("[fail]") {
        return respond(
            &mut stream,
            500,
            &json!({"error": {"message": "scripted failure"}}),
        );
    }
    if user.contains("[slow]") {
        std::thread::sleep(Duration::from_millis(SLOW_MS));
    }
    let content = answer(&user);
    respond(
        &mut stream,
        200,
        &json!({
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        }),
    )
}

fn answer(user: &str) -> String {
    if user.starts_with("Brief:") {
        let spec = json!({
            "name": "model draft",
            "profile": {"role": "model-drafted engineer"},
            "filesystem": [
                {"path": "PLAN.md", "kind": "plan", "content": "scripted plan"},
                {"path": "notes.md", "kind": "notes", "description": "notes", "dependsOn": ["PLAN.md"]}
            ],
            "collaborators": [{"id": "mentor", "role": "mentor"}],
            "objectives": [{"id": "ship", "title": "Ship it"}],
            "rubric": [{"id": "read-plan", "must": "Read the plan", "mustEvent": {"type": "read", "path": "PLAN.md"}}]
        });
        return format!("Here is the spec:\n```json\n{spec}\n```");
    }
    if let Some(rest) = user.strip_prefix("Criterion:") {
        return if rest.contains("pass-me") {
            "PASS: the log shows it".to_string()
        } else {
            "FAIL: not in the log".to_string()
        };
    }
    if user.starts_with("Write the full content") {
        let first = user.lines().next().unwrap_or("");
        return format!("scripted file: {first}");
    }
    format!("scripted reply: {user}")
}

fn respond(stream: &mut TcpStream, status: u16, body: &Value) -> std::io::Result<()> {
    let text = body.to_string();
    let head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        if status == 200 { "OK" } else { "Error" },
        text.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(text.as_bytes())?;
    stream.flush()
}
