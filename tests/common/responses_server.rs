//! A scripted OpenAI Responses-API server (for the Codex CLI): the only stand-in for the model
//! service. The real Codex CLI talks to it (`wire_api = "responses"`), so the
//! CLI's own tool loop, JSONL events and session files are exercised for real.
//!
//! What it answers depends on the task text (the last user message):
//! - `write <path> <text>`: one `exec_command` that writes the file, then a message;
//! - `loop`: `exec_command` forever (to outspend a hold);
//! - `fail`: HTTP 500;
//! - `slow`: waits 30 s before answering (for cancel tests);
//! - `nap`: waits `NAP` before answering `echo: <task>` (to overlap runs);
//! - `writefail <path> <text>`: writes the file like `write`, then HTTP 500;
//! - anything else: a message `echo: <task>`.
//!
//! Every response reports `USAGE_IN` input and `USAGE_OUT` output tokens.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

pub const USAGE_IN: u64 = 1000;
pub const USAGE_OUT: u64 = 100;
/// How long a `nap` task's model call takes.
pub const NAP: Duration = Duration::from_secs(5);

pub struct ModelServer {
    /// Base URL for a Codex `model_providers` entry, e.g. `http://127.0.0.1:PORT/v1`.
    pub base_url: String,
    /// Every request body received, in order.
    pub requests: Arc<Mutex<Vec<Value>>>,
    /// The `authorization` header of every request, in order.
    pub authorizations: Arc<Mutex<Vec<String>>>,
}

impl ModelServer {
    /// Listens on `ip` (a free port): the host's bridge address, for an
    /// agent in a container, or 127.0.0.1 for a native runner.
    pub fn start_on(ip: &str) -> ModelServer {
        let listener = TcpListener::bind((ip, 0)).expect("bind model server");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let authorizations = Arc::new(Mutex::new(Vec::new()));
        let (seen, auths) = (requests.clone(), authorizations.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (seen, auths) = (seen.clone(), auths.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &seen, &auths);
                });
            }
        });
        ModelServer {
            base_url: format!("http://{ip}:{port}/v1"),
            requests,
            authorizations,
        }
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// The requests whose task (last user message) is `task`, in order.
    pub fn requests_for(&self, task: &str) -> Vec<Value> {
        let all = self.requests.lock().map(|r| r.clone()).unwrap_or_default();
        all.into_iter()
            .filter(|r| conversation_state(r).0 == task.trim())
            .collect()
    }
}

fn serve(
    mut stream: TcpStream,
    seen: &Mutex<Vec<Value>>,
    auths: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut content_length = 0usize;
    let mut authorization = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap_or(0);
            }
            if name.eq_ignore_ascii_case("authorization") {
                authorization = value.trim().to_string();
            }
        }
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Ok(mut all) = auths.lock() {
        all.push(authorization);
    }
    if let Ok(mut all) = seen.lock() {
        all.push(request.clone());
    }
    let (task, outputs_since_task) = conversation_state(&request);
    let fails =
        task.starts_with("fail") || (task.starts_with("writefail") && outputs_since_task > 0);
    if fails {
        stream.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 26\r\n\r\n{\"error\":\"scripted fail\"}\n")?;
        return Ok(());
    }
    if task.starts_with("slow") {
        std::thread::sleep(Duration::from_secs(30));
    }
    if task.starts_with("nap") {
        std::thread::sleep(NAP);
    }
    let item = next_item(&task, outputs_since_task);
    stream.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n",
    )?;
    let id = format!("resp_{}", outputs_since_task);
    let events = [
        json!({"type": "response.created", "response": {"id": id}}),
        json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
        json!({"type": "response.completed", "response": {"id": id, "usage": {
            "input_tokens": USAGE_IN,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": USAGE_OUT,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": USAGE_IN + USAGE_OUT
        }}}),
    ];
    for event in events {
        let kind = event["type"].as_str().unwrap_or("");
        write!(stream, "event: {kind}\ndata: {event}\n\n")?;
        stream.flush()?;
    }
    Ok(())
}

/// The last user message's text, and how many tool outputs follow it.
fn conversation_state(request: &Value) -> (String, usize) {
    let items = request["input"].as_array().cloned().unwrap_or_default();
    let last_user = items
        .iter()
        .rposition(|i| i["role"] == "user" && i["type"] != "function_call_output");
    let task = last_user
        .and_then(|i| items[i]["content"].as_array().cloned())
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("")
        })
        .unwrap_or_default();
    let outputs = items
        .iter()
        .skip(last_user.map(|i| i + 1).unwrap_or(0))
        .filter(|i| i["type"] == "function_call_output")
        .count();
    (task.trim().to_string(), outputs)
}

fn exec_call(n: usize, cmd: &str) -> Value {
    json!({
        "type": "function_call",
        "id": format!("fc_{n}"),
        "call_id": format!("call_{n}"),
        "name": "exec_command",
        "arguments": json!({"cmd": cmd}).to_string(),
    })
}

fn message(text: &str) -> Value {
    json!({
        "type": "message",
        "role": "assistant",
        "id": "msg_1",
        "content": [{"type": "output_text", "text": text}],
    })
}

fn next_item(task: &str, step: usize) -> Value {
    let words: Vec<&str> = task.splitn(3, ' ').collect();
    match (words.as_slice(), step) {
        (["write" | "writefail", path, text], 0) => {
            let cmd =
                format!("mkdir -p \"$(dirname '{path}')\" && printf '%s' '{text}' > '{path}'");
            exec_call(step, &cmd)
        }
        (["write", path, _], _) => message(&format!("wrote {path}")),
        (["loop", ..], n) => exec_call(n, &format!("echo step {n} >> loop.log")),
        _ => message(&format!("echo: {task}")),
    }
}
