//! The one HTTP client: the public API over blocking HTTP (rustls), with
//! the key in a header (never in a URL), error answers turned into
//! `Failure`s with their exit codes, and one retry of a short rate limit.

// ureq's error carries the whole answer: large, and ureq's own type.
#![allow(clippy::result_large_err)]

use std::io::Read;
use std::time::Duration;

use serde_json::Value;

use crate::exit::{self, Failure, Result};

/// How long an answer may take to start (`?wait=true` answers wait).
const READ_TIMEOUT: Duration = Duration::from_secs(600);
/// An event stream is dead when nothing (not even the 15 s heartbeat)
/// arrives for this long.
pub const STREAM_SILENCE: Duration = Duration::from_secs(45);

#[derive(Clone)]
pub struct Api {
    pub base: String,
    key: Option<String>,
    agent: ureq::Agent,
    stream_agent: ureq::Agent,
}

/// An answer the caller asked to see (a 2xx, or a status it accepts).
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub run_id: Option<String>,
}

impl Api {
    pub fn new(base: &str, key: Option<String>) -> Self {
        let build = |read: Duration| {
            ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(15))
                .timeout_read(read)
                .user_agent(concat!("cloudbox-cli/", env!("CARGO_PKG_VERSION")))
                .build()
        };
        Self {
            base: base.trim_end_matches('/').to_string(),
            key,
            agent: build(READ_TIMEOUT),
            stream_agent: build(STREAM_SILENCE),
        }
    }

    fn request(&self, agent: &ureq::Agent, method: &str, path: &str) -> Result<ureq::Request> {
        let mut req = agent.request(method, &format!("{}{path}", self.base));
        match &self.key {
            Some(key) => req = req.set("authorization", &format!("Bearer {key}")),
            None => {
                if needs_key(path) {
                    return Err(Failure::new(
                        exit::Exit::Auth,
                        "no_key",
                        "no API key: run `cloudbox login`, or pass --key / CLOUDBOX_API_KEY",
                    ));
                }
            }
        }
        Ok(req)
    }

    /// Sends a request built by `send` (called again for the one retry of
    /// a short rate limit); error answers become `Failure`s unless their
    /// status is in `accept`.
    fn exchange(
        &self,
        agent: &ureq::Agent,
        method: &str,
        path: &str,
        accept: &[u16],
        send: &dyn Fn(ureq::Request) -> std::result::Result<ureq::Response, ureq::Error>,
    ) -> Result<ureq::Response> {
        let mut retried = false;
        loop {
            let req = self.request(agent, method, path)?;
            match send(req) {
                Ok(resp) => return Ok(resp),
                Err(ureq::Error::Status(status, resp)) if accept.contains(&status) => {
                    return Ok(resp)
                }
                Err(ureq::Error::Status(status, resp)) => {
                    let retry_after = resp
                        .header("retry-after")
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    let failure = failure_of(status, resp);
                    match exit::retry_rate_limit(status, &failure.code, retry_after) {
                        Some(secs) if !retried => {
                            retried = true;
                            std::thread::sleep(Duration::from_secs(secs.max(1)));
                        }
                        _ => return Err(failure),
                    }
                }
                Err(ureq::Error::Transport(t)) => {
                    return Err(Failure::network(format!("{method} {path}: {t}")))
                }
            }
        }
    }

    /// A JSON request; the answer's body parsed.
    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        accept: &[u16],
    ) -> Result<Answer> {
        self.json_with(method, path, body, accept, &[])
    }

    pub fn json_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        accept: &[u16],
        headers: &[(&str, &str)],
    ) -> Result<Answer> {
        let resp = self.exchange(&self.agent, method, path, accept, &|mut req| {
            for (k, v) in headers {
                req = req.set(k, v);
            }
            match body {
                Some(b) => req.send_json(b),
                None => req.call(),
            }
        })?;
        answer(resp)
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        Ok(self.json("GET", path, None, &[])?.body)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        Ok(self.json("POST", path, Some(body), &[])?.body)
    }

    /// Uploads `len` bytes read from `reader` (streamed, never whole in memory).
    pub fn put_stream(
        &self,
        path: &str,
        len: u64,
        open: &dyn Fn() -> std::io::Result<Box<dyn Read>>,
    ) -> Result<u16> {
        let resp = self.exchange(&self.agent, "PUT", path, &[], &|req| {
            let reader = match open() {
                Ok(r) => r,
                Err(e) => return Err(ureq::Error::from(e)),
            };
            req.set("content-type", "application/octet-stream")
                .set("content-length", &len.to_string())
                .send(reader)
        })?;
        Ok(resp.status())
    }

    /// Sends a body held in memory (a pack); the answer's body parsed.
    pub fn post_bytes(&self, path: &str, content_type: &str, body: &[u8]) -> Result<Value> {
        let resp = self.exchange(&self.agent, "POST", path, &[], &|req| {
            req.set("content-type", content_type).send_bytes(body)
        })?;
        Ok(answer(resp)?.body)
    }

    /// A JSON request whose answer is read as a stream (a fetched pack).
    pub fn post_for_stream(&self, path: &str, body: &Value) -> Result<Box<dyn Read + Send + Sync>> {
        let resp = self.exchange(&self.agent, "POST", path, &[], &|req| req.send_json(body))?;
        Ok(resp.into_reader())
    }

    /// A download, as a reader of the body.
    pub fn get_stream(&self, path: &str) -> Result<Box<dyn Read + Send + Sync>> {
        let resp = self.exchange(&self.agent, "GET", path, &[], &|req| req.call())?;
        Ok(resp.into_reader())
    }

    /// Opens an event stream (`accept: text/event-stream`).
    pub fn stream(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<ureq::Response> {
        self.exchange(&self.stream_agent, method, path, &[], &|mut req| {
            req = req.set("accept", "text/event-stream");
            for (k, v) in headers {
                req = req.set(k, v);
            }
            match body {
                Some(b) => req.send_json(b),
                None => req.call(),
            }
        })
    }
}

/// A value for a query string, percent-encoded (`/` kept).
pub fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Routes open without a key (API.md, "Conventions").
fn needs_key(path: &str) -> bool {
    !matches!(path, "/health" | "/api/health" | "/openapi.json")
}

fn answer(resp: ureq::Response) -> Result<Answer> {
    let status = resp.status();
    let run_id = resp.header("x-run-id").map(str::to_string);
    let text = resp
        .into_string()
        .map_err(|e| Failure::network(format!("reading the answer: {e}")))?;
    let body = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).map_err(|e| {
            Failure::new(
                exit::Exit::Server,
                "bad_answer",
                format!("the server answered {status} with something that is not JSON: {e}"),
            )
        })?
    };
    Ok(Answer {
        status,
        body,
        run_id,
    })
}

/// The `Failure` of an error answer (`{"error", "message"}`, or whatever
/// the server sent instead).
fn failure_of(status: u16, resp: ureq::Response) -> Failure {
    let text = resp.into_string().unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let code = body["error"].as_str().unwrap_or("http_error");
    let mut message = body["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status}"));
    if let Some(details) = body.get("details").filter(|d| !d.is_null()) {
        message = format!("{message} {details}");
    }
    Failure::from_answer(status, code, &message)
}

/// The failure a work's body stands for (`ok: false`), once the body has
/// been printed.
pub fn work_failed(body: &Value) -> Failure {
    let status = body["status"].as_str().unwrap_or("failed");
    Failure::new(
        exit::Exit::WorkFailed,
        "execution_failed",
        format!("the work ended {status}"),
    )
    .shown()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_escaped() {
        assert_eq!(super::query_escape("docs/a b&c.md"), "docs/a%20b%26c.md");
    }
}
