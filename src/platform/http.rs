//! HTTP helpers for handlers: JSON in (with size limit), JSON out, and the
//! single place where an `ApiError` becomes a response.

use serde::{de::DeserializeOwned, Serialize};
use worker::{Headers, Request, Response};

use crate::api::error::{ApiError, FieldError};
use crate::api::target;

/// JSON request bodies above this answer 413 `body_too_large`.
pub const MAX_JSON_BYTES: u64 = 1024 * 1024;

impl From<worker::Error> for ApiError {
    fn from(err: worker::Error) -> Self {
        ApiError::Internal(err.to_string())
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(err: serde_json::Error) -> Self {
        ApiError::Internal(format!("json: {err}"))
    }
}

/// Whether the client asked for an SSE stream (`accept: text/event-stream`).
pub fn wants_sse(req: &Request) -> bool {
    req.headers()
        .get("accept")
        .ok()
        .flatten()
        .is_some_and(|a| a.to_ascii_lowercase().contains("text/event-stream"))
}

/// A body already read, as JSON: empty → 400 `bad_json` saying so,
/// malformed → 400 `bad_json`.
pub fn parse_json_value(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadJson("the body is empty".into()));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadJson(e.to_string()))
}

/// The request's method as the client sent it (workers-rs's `Method` turns
/// any method it has no variant for into `GET`).
pub fn method(req: &Request) -> String {
    req.inner().method()
}

/// The request's path, percent-encoded as routes match it.
pub fn path(req: &Request) -> String {
    target::split(&req.inner().url()).0.to_string()
}

/// The request's raw query string (without `?`).
pub fn raw_query(req: &Request) -> String {
    target::split(&req.inner().url()).1.to_string()
}

/// The first value of the query parameter `name`, percent-decoded.
pub fn query(req: &Request, name: &str) -> Result<Option<String>, ApiError> {
    Ok(target::value(&raw_query(req), name))
}

/// The last event an SSE client has: `Last-Event-ID` (what EventSource
/// sends on reconnect) wins over `?after=`; neither means from the start.
pub fn last_event_id(req: &Request) -> Result<u64, ApiError> {
    let after = match req.headers().get("last-event-id")? {
        Some(last) => Some(last),
        None => query(req, "after")?,
    };
    Ok(crate::runner::events::parse_last_event_id(after.as_deref()))
}

/// Reads the whole body, refusing more than `limit` bytes.
pub async fn read_body(req: &mut Request, limit: u64) -> Result<Vec<u8>, ApiError> {
    let declared = req
        .headers()
        .get("content-length")?
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::BodyTooLarge { limit_bytes: limit });
    }
    let bytes = req.bytes().await?;
    if bytes.len() as u64 > limit {
        return Err(ApiError::BodyTooLarge { limit_bytes: limit });
    }
    Ok(bytes)
}

/// Parses a JSON body: 413 when too large, 400 `bad_json` when not JSON,
/// 400 `validation_failed` when JSON of the wrong shape.
pub async fn read_json<T: DeserializeOwned>(req: &mut Request) -> Result<T, ApiError> {
    let bytes = read_body(req, MAX_JSON_BYTES).await?;
    parse_json(&bytes)
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadJson("the body is empty".into()));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::BadJson(e.to_string()))?;
    serde_json::from_value(value)
        .map_err(|e| ApiError::ValidationFailed(vec![FieldError::new("body", e.to_string())]))
}

pub fn json<T: Serialize>(status: u16, body: &T) -> Result<Response, ApiError> {
    Ok(json_bytes(status, serde_json::to_vec(body)?, &[]))
}

fn json_bytes(status: u16, bytes: Vec<u8>, extra: &[(&str, String)]) -> Response {
    let headers = Headers::new();
    // Setting a valid header on a fresh Headers object cannot fail.
    let _ = headers.set("content-type", "application/json");
    for (name, value) in extra {
        let _ = headers.set(name, value);
    }
    Response::builder()
        .with_status(status)
        .with_headers(headers)
        .fixed(bytes)
}

pub fn error_response(err: &ApiError, request_id: &str) -> Response {
    let body = err.body(request_id).to_string().into_bytes();
    json_bytes(err.status(), body, &err.headers())
}

/// Gives a response fresh, mutable headers (responses from `fetch` have
/// immutable ones) with `x-request-id` set.
pub fn with_request_id(resp: Response, request_id: &str) -> Response {
    let headers = Headers::new();
    for (name, value) in resp.headers().entries() {
        let _ = headers.append(&name, &value);
    }
    let _ = headers.set("x-request-id", request_id);
    resp.with_headers(headers)
}
