//! Token usage of model calls (pure), read from an OpenAI Responses-API SSE
//! stream as it passes through the runner's metering proxy. Each call ends
//! with a `response.completed` event whose `response.usage` holds its tokens,
//! so the proxy can meter every call as it finishes rather than per turn.

use crate::executes::agent_events::TokenUsage;
use serde_json::Value;

/// Incremental SSE reader: feed it bytes as they arrive, get the usage of
/// each completed response.
#[derive(Debug, Default)]
pub struct UsageScanner {
    pending: Vec<u8>,
}

impl UsageScanner {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<TokenUsage> {
        self.pending.extend_from_slice(bytes);
        let mut found = Vec::new();
        while let Some(newline) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=newline).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(data) = line.trim_end().strip_prefix("data:") {
                if let Some(usage) = completed_usage(data.trim()) {
                    found.push(usage);
                }
            }
        }
        found
    }
}

/// The usage in one SSE `data:` payload, if it is `response.completed`.
pub fn completed_usage(data: &str) -> Option<TokenUsage> {
    let v: Value = serde_json::from_str(data).ok()?;
    if v.get("type")?.as_str()? != "response.completed" {
        return None;
    }
    let usage = v.pointer("/response/usage")?;
    let n = |ptr: &str| usage.pointer(ptr).and_then(Value::as_u64).unwrap_or(0);
    Some(TokenUsage {
        input_tokens: n("/input_tokens"),
        cached_input_tokens: n("/input_tokens_details/cached_tokens"),
        output_tokens: n("/output_tokens"),
        reasoning_output_tokens: n("/output_tokens_details/reasoning_tokens"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r1\"}}\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r1\",\"usage\":{\"input_tokens\":6548,\"input_tokens_details\":{\"cached_tokens\":100},\"output_tokens\":108,\"output_tokens_details\":{\"reasoning_tokens\":7},\"total_tokens\":6656}}}\n\n";

    #[test]
    fn usage_is_found_whatever_the_chunking() {
        for chunk in [1, 7, 64, STREAM.len()] {
            let mut scanner = UsageScanner::default();
            let mut found = Vec::new();
            for piece in STREAM.as_bytes().chunks(chunk) {
                found.extend(scanner.feed(piece));
            }
            assert_eq!(found.len(), 1, "chunk {chunk}");
            assert_eq!(found[0].input_tokens, 6548);
            assert_eq!(found[0].output_tokens, 108);
            assert_eq!(found[0].cached_input_tokens, 100);
            assert_eq!(found[0].reasoning_output_tokens, 7);
        }
    }

    #[test]
    fn other_events_carry_no_usage() {
        assert_eq!(completed_usage(r#"{"type":"response.created"}"#), None);
        assert_eq!(completed_usage("[DONE]"), None);
    }
}
