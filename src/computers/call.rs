//! The Worker → Computer DO contract (pure): every internal request is one
//! `ComputerCall`, POSTed as JSON to `CALL_URL`, with the caller's account
//! in `bindings::ACCOUNT_HEADER`. The Worker validates the input first; the
//! DO checks that the computer belongs to the account.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where the Worker sends calls (the host is never resolved: a DO stub).
pub const CALL_URL: &str = "https://computer.do/call";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Externally tagged (`{"write": {…}}`, `"files"`): an internally tagged
// enum is deserialized through serde's buffered `Content`, which costs the
// wasm bundle tens of KiB for this and `RunnerCall`.
#[serde(rename_all = "camelCase")]
pub enum ComputerCall {
    /// Materializes the spec (once: a second create answers 200).
    Create(Create),
    Files,
    Read(Read),
    Write(Write),
    Ask(Ask),
    Submit(Submit),
    Receipts,
    Grade,
    Spec,
    Reset,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Create {
    pub id: String,
    pub spec: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Read {
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub path: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ask {
    pub who: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submit {
    pub objective: String,
    pub decision: Option<String>,
    pub paths: Option<Vec<String>>,
    pub notes: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_tagged_by_name() {
        let call = ComputerCall::Write(Write {
            path: "a.txt".into(),
            content: "hi".into(),
        });
        let json = serde_json::to_value(&call).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"write": {"path": "a.txt", "content": "hi"}})
        );
        assert_eq!(serde_json::from_value::<ComputerCall>(json).unwrap(), call);
        let files = serde_json::to_value(ComputerCall::Files).unwrap();
        assert_eq!(files, serde_json::json!("files"));
        assert!(serde_json::from_str::<ComputerCall>(r#"{"format": {}}"#).is_err());
    }
}
