//! Validation of `POST /execute` bodies (pure). Every problem is collected
//! into one 400 `validation_failed` with a `{field, message}` per field, so a
//! client fixes its request in one round trip.

use serde_json::{Map, Value};

use crate::api::error::{ApiError, FieldError};
use crate::billing::rules;

pub const MAX_TASK_CHARS: usize = 100_000;
pub const MIN_TIMEOUT_MS: u64 = 1_000;
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 600_000;
/// A cost cap above this is surely a typo (USD).
pub const MAX_COST_USD: f64 = 10_000.0;
pub const MAX_SESSION_ID_CHARS: usize = 128;

const FIELDS: &[&str] = &[
    "task",
    "workspaceId",
    "sessionId",
    "timeoutMs",
    "maxCostUsd",
];

/// A valid execute request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecuteSpec {
    pub task: String,
    pub workspace_id: String,
    pub session_id: Option<String>,
    pub timeout_ms: u64,
    /// The caller's cost cap in micro-dollars.
    pub max_cost_micros: Option<i64>,
}

/// Session ids are the agent's thread ids (UUIDs for the Codex CLI).
pub fn is_session_id(s: &str) -> bool {
    (1..=MAX_SESSION_ID_CHARS).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn validate(body: &Value) -> Result<ExecuteSpec, ApiError> {
    let empty = Map::new();
    let (obj, mut errors) = match body.as_object() {
        Some(obj) => (obj, Vec::new()),
        None => (
            &empty,
            vec![FieldError::new("body", "must be a JSON object")],
        ),
    };
    let mut bad = |field: &str, message: &str| errors.push(FieldError::new(field, message));
    for unknown in obj.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
        bad(unknown, "unknown field");
    }
    let task = match obj.get("task") {
        Some(Value::String(s)) if s.trim().is_empty() => {
            bad("task", "must not be empty");
            None
        }
        Some(Value::String(s)) if s.chars().count() > MAX_TASK_CHARS => {
            bad("task", "must be at most 100000 characters");
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            bad("task", "must be a string");
            None
        }
        None if body.is_object() => {
            bad("task", "is required");
            None
        }
        None => None,
    };
    let workspace_id = match obj.get("workspaceId") {
        Some(Value::String(s)) if crate::workspaces::manifest::validate_workspace_id(s).is_ok() => {
            Some(s.clone())
        }
        Some(_) => {
            bad("workspaceId", "must match ^[A-Za-z0-9_-]{1,128}$");
            None
        }
        None if body.is_object() => {
            bad("workspaceId", "is required");
            None
        }
        None => None,
    };
    let session_id = match obj.get("sessionId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if is_session_id(s) => Some(s.clone()),
        Some(_) => {
            bad("sessionId", "must be 1-128 characters of [A-Za-z0-9_-]");
            None
        }
    };
    let timeout_ms = match obj.get("timeoutMs") {
        None | Some(Value::Null) => DEFAULT_TIMEOUT_MS,
        Some(v) => match v.as_u64() {
            Some(ms) if (MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&ms) => ms,
            _ => {
                bad(
                    "timeoutMs",
                    "must be an integer from 1000 to 3600000 (milliseconds)",
                );
                DEFAULT_TIMEOUT_MS
            }
        },
    };
    let max_cost_micros = match obj.get("maxCostUsd") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(usd) if usd > 0.0 && usd <= MAX_COST_USD => {
                match rules::usd_to_micros(usd).filter(|&m| m > 0) {
                    Some(micros) => Some(micros),
                    None => {
                        bad("maxCostUsd", "must be at least 0.000001");
                        None
                    }
                }
            }
            _ => {
                bad("maxCostUsd", "must be a number above 0 and at most 10000");
                None
            }
        },
    };
    match (task, workspace_id) {
        (Some(task), Some(workspace_id)) if errors.is_empty() => Ok(ExecuteSpec {
            task,
            workspace_id,
            session_id,
            timeout_ms,
            max_cost_micros,
        }),
        _ => Err(ApiError::ValidationFailed(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(body: Value) -> Vec<String> {
        match validate(&body) {
            Err(ApiError::ValidationFailed(list)) => list.into_iter().map(|f| f.field).collect(),
            other => panic!("expected validation_failed, got {other:?}"),
        }
    }

    #[test]
    fn a_minimal_body_gets_the_defaults() {
        let spec = validate(&json!({"task": "fix it", "workspaceId": "ws-1"})).unwrap();
        assert_eq!(
            spec,
            ExecuteSpec {
                task: "fix it".into(),
                workspace_id: "ws-1".into(),
                session_id: None,
                timeout_ms: DEFAULT_TIMEOUT_MS,
                max_cost_micros: None,
            }
        );
    }

    #[test]
    fn every_field_is_read() {
        let spec = validate(&json!({
            "task": "t", "workspaceId": "w", "sessionId": "0199a-b_c",
            "timeoutMs": 1000, "maxCostUsd": 0.25
        }))
        .unwrap();
        assert_eq!(spec.session_id.as_deref(), Some("0199a-b_c"));
        assert_eq!(spec.timeout_ms, 1000);
        assert_eq!(spec.max_cost_micros, Some(250_000));
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(fields(json!({})), ["task", "workspaceId"]);
        assert_eq!(fields(json!([])), ["body"]);
        assert_eq!(fields(json!({"task": "", "workspaceId": "w"})), ["task"]);
        assert_eq!(fields(json!({"task": 3, "workspaceId": "w"})), ["task"]);
        let long = "x".repeat(MAX_TASK_CHARS + 1);
        assert_eq!(fields(json!({"task": long, "workspaceId": "w"})), ["task"]);
        for ws in ["", "a/b", "..", "with space", &"w".repeat(129)] {
            assert_eq!(
                fields(json!({"task": "t", "workspaceId": ws})),
                ["workspaceId"]
            );
        }
        for sid in [json!(""), json!("a/b"), json!(7)] {
            assert_eq!(
                fields(json!({"task": "t", "workspaceId": "w", "sessionId": sid})),
                ["sessionId"]
            );
        }
        for t in [json!(999), json!(3_600_001), json!(1.5), json!("1000")] {
            assert_eq!(
                fields(json!({"task": "t", "workspaceId": "w", "timeoutMs": t})),
                ["timeoutMs"]
            );
        }
        for c in [json!(0), json!(-1), json!(10_001), json!("1"), json!(1e-9)] {
            assert_eq!(
                fields(json!({"task": "t", "workspaceId": "w", "maxCostUsd": c})),
                ["maxCostUsd"]
            );
        }
        assert_eq!(
            fields(json!({"task": "t", "workspaceId": "w", "model": "x"})),
            ["model"]
        );
    }

    #[test]
    fn a_task_of_exactly_the_limit_passes() {
        let task = "é".repeat(MAX_TASK_CHARS);
        assert!(validate(&json!({"task": task, "workspaceId": "w"})).is_ok());
    }
}
