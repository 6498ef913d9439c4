//! The agent's event stream (pure): the Codex CLI's `codex exec --json`
//! JSONL on stdout, one JSON object per line.
//!
//! Lines we use: `thread.started` (the session id to resume), `item.completed`
//! with an `agent_message` (the answer) or a `command_execution`, `turn.completed`
//! (token usage summed over the turn), `turn.failed` / `error`. Anything else is
//! kept as `Other` so a newer CLI never breaks parsing.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Token counts as the Codex CLI reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenUsage {
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_output_tokens: u64,
}

impl TokenUsage {
    pub fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }

    pub fn add(&mut self, other: &TokenUsage) {
        self.input_tokens += other.input_tokens;
        self.cached_input_tokens += other.cached_input_tokens;
        self.output_tokens += other.output_tokens;
        self.reasoning_output_tokens += other.reasoning_output_tokens;
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    ThreadStarted {
        thread_id: String,
    },
    AgentMessage {
        text: String,
    },
    CommandExecuted {
        command: String,
        exit_code: Option<i64>,
    },
    TurnCompleted {
        usage: TokenUsage,
    },
    Failed {
        message: String,
    },
    Other,
}

fn u64_at(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Parses one stdout line. Lines that are not JSON objects are `None`
/// (the CLI may print a banner or a warning).
pub fn parse_line(line: &str) -> Option<AgentEvent> {
    let v: Value = serde_json::from_str(line.trim()).ok()?;
    let kind = v.get("type")?.as_str()?;
    let event = match kind {
        "thread.started" => AgentEvent::ThreadStarted {
            thread_id: v.get("thread_id")?.as_str()?.to_string(),
        },
        "item.completed" => {
            let item = v.get("item")?;
            match item.get("type").and_then(Value::as_str) {
                Some("agent_message") => AgentEvent::AgentMessage {
                    text: item
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                },
                Some("command_execution") => AgentEvent::CommandExecuted {
                    command: item
                        .get("command")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    exit_code: item.get("exit_code").and_then(Value::as_i64),
                },
                _ => AgentEvent::Other,
            }
        }
        "turn.completed" => {
            let usage = v.get("usage").cloned().unwrap_or(Value::Null);
            AgentEvent::TurnCompleted {
                usage: TokenUsage {
                    input_tokens: u64_at(&usage, "input_tokens"),
                    cached_input_tokens: u64_at(&usage, "cached_input_tokens"),
                    output_tokens: u64_at(&usage, "output_tokens"),
                    reasoning_output_tokens: u64_at(&usage, "reasoning_output_tokens"),
                },
            }
        }
        "turn.failed" => AgentEvent::Failed {
            message: v
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("turn failed")
                .to_string(),
        },
        "error" => AgentEvent::Failed {
            message: v
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_string(),
        },
        _ => AgentEvent::Other,
    };
    Some(event)
}

/// What a whole agent run amounted to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentSummary {
    pub thread_id: Option<String>,
    /// The last agent message: the task's `output`.
    pub output: String,
    pub usage: TokenUsage,
    pub commands: u32,
    pub failure: Option<String>,
}

impl AgentSummary {
    pub fn apply(&mut self, event: &AgentEvent) {
        match event {
            AgentEvent::ThreadStarted { thread_id } => self.thread_id = Some(thread_id.clone()),
            AgentEvent::AgentMessage { text } => self.output = text.clone(),
            AgentEvent::CommandExecuted { .. } => self.commands += 1,
            AgentEvent::TurnCompleted { usage } => self.usage.add(usage),
            AgentEvent::Failed { message } => self.failure = Some(message.clone()),
            AgentEvent::Other => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as `codex exec --json` 0.169.0 printed them against a local
    /// Responses endpoint.
    const TRANSCRIPT: &str = r#"{"type":"thread.started","thread_id":"01a20126-80ad-7a41-8686-8acb09f1af1b"}
{"type":"item.completed","item":{"id":"item_0","type":"error","message":"Model metadata for `test-model` not found."}}
{"type":"turn.started"}
{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"/bin/bash -lc 'echo hello > out.txt'","aggregated_output":"","exit_code":null,"status":"in_progress"}}
{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"/bin/bash -lc 'echo hello > out.txt'","aggregated_output":"","exit_code":0,"status":"completed"}}
{"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"done writing"}}
{"type":"turn.completed","usage":{"input_tokens":200,"cached_input_tokens":20,"cache_write_input_tokens":0,"output_tokens":40,"reasoning_output_tokens":10}}"#;

    #[test]
    fn a_real_transcript_summarizes() {
        let mut summary = AgentSummary::default();
        for line in TRANSCRIPT.lines() {
            if let Some(event) = parse_line(line) {
                summary.apply(&event);
            }
        }
        assert_eq!(
            summary.thread_id.as_deref(),
            Some("01a20126-80ad-7a41-8686-8acb09f1af1b")
        );
        assert_eq!(summary.output, "done writing");
        assert_eq!(summary.commands, 1);
        assert_eq!(
            summary.usage,
            TokenUsage {
                input_tokens: 200,
                cached_input_tokens: 20,
                output_tokens: 40,
                reasoning_output_tokens: 10
            }
        );
        assert_eq!(summary.usage.total(), 240);
        assert_eq!(summary.failure, None);
    }

    #[test]
    fn non_json_and_unknown_lines_are_harmless() {
        assert_eq!(parse_line("Reading additional input from stdin..."), None);
        assert_eq!(
            parse_line(r#"{"type":"something.new","x":1}"#),
            Some(AgentEvent::Other)
        );
        assert_eq!(parse_line(r#"{"no_type":true}"#), None);
    }

    #[test]
    fn failures_are_reported() {
        let e = parse_line(r#"{"type":"turn.failed","error":{"message":"stream disconnected"}}"#);
        assert_eq!(
            e,
            Some(AgentEvent::Failed {
                message: "stream disconnected".into()
            })
        );
    }

    #[test]
    fn usage_of_several_turns_adds_up() {
        let mut s = AgentSummary::default();
        for _ in 0..3 {
            s.apply(
                &parse_line(
                    r#"{"type":"turn.completed","usage":{"input_tokens":10,"output_tokens":2}}"#,
                )
                .unwrap(),
            );
        }
        assert_eq!(s.usage.input_tokens, 30);
        assert_eq!(s.usage.output_tokens, 6);
    }
}
