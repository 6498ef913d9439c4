//! Event plumbing of repo runs (pure): SSE frames and `Last-Event-ID`, the
//! NDJSON line splitter for the runner's stream, and the run-list cursor.

/// The SSE kinds a run emits (API.md "Events").
pub const KINDS: &[&str] = &["receipt", "runner", "output", "usage", "result", "error"];

/// Heartbeat comment interval on SSE streams.
pub const SSE_HEARTBEAT_MS: u64 = 15_000;

/// One SSE frame: `event:`, `id:` (the event's sequence number in the run)
/// and `data:` (one line of JSON: serde_json never emits raw newlines).
pub fn sse_frame(kind: &str, id: u64, data: &str) -> String {
    let mut frame = format!("event: {kind}\nid: {id}\n");
    for line in data.split('\n') {
        frame.push_str("data: ");
        frame.push_str(line);
        frame.push('\n');
    }
    frame.push('\n');
    frame
}

pub const SSE_HEARTBEAT: &str = ": heartbeat\n\n";
/// Sent first: tells clients to reconnect after 2 s and flushes headers.
pub const SSE_PREAMBLE: &str = "retry: 2000\n\n";

/// `Last-Event-ID` (or `?after=`): the last event the client has. Anything
/// that is not a non-negative integer means "from the start".
pub fn parse_last_event_id(value: Option<&str>) -> u64 {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// Splits a byte stream into complete lines (without the `\n`), holding an
/// unfinished line until the rest arrives.
#[derive(Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            let text = text.trim();
            if !text.is_empty() {
                lines.push(text.to_string());
            }
        }
        lines
    }
}

/// Position in the run list (newest first): `<createdMs>.<runId>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    pub created_ms: i64,
    pub run_id: String,
}

impl ListCursor {
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_ms, self.run_id)
    }

    pub fn decode(text: &str) -> Option<Self> {
        let (ms, id) = text.split_once('.')?;
        let created_ms = ms.parse::<i64>().ok()?;
        let id_ok = !id.is_empty()
            && id.len() <= 100
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        id_ok.then(|| Self {
            created_ms,
            run_id: id.to_string(),
        })
    }
}

pub const DEFAULT_LIST_LIMIT: u32 = 20;
pub const MAX_LIST_LIMIT: u32 = 100;

/// `?limit=`: 1–100, default 20.
pub fn parse_limit(value: Option<&str>) -> Result<u32, String> {
    match value {
        None => Ok(DEFAULT_LIST_LIMIT),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => Ok(n),
            _ => Err(format!(
                "limit must be an integer from 1 to {MAX_LIST_LIMIT}"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_event_id_and_data() {
        assert_eq!(
            sse_frame("receipt", 7, r#"{"a":1}"#),
            "event: receipt\nid: 7\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(
            sse_frame("x", 1, "a\nb"),
            "event: x\nid: 1\ndata: a\ndata: b\n\n"
        );
    }

    #[test]
    fn last_event_id_parsing() {
        assert_eq!(parse_last_event_id(Some("12")), 12);
        assert_eq!(parse_last_event_id(Some(" 3 ")), 3);
        assert_eq!(parse_last_event_id(Some("-1")), 0);
        assert_eq!(parse_last_event_id(Some("abc")), 0);
        assert_eq!(parse_last_event_id(None), 0);
    }

    #[test]
    fn lines_split_across_chunks() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"{\"a\"").len(), 0);
        assert_eq!(
            s.push(b":1}\n{\"b\":2}\n\n{\"c\""),
            vec!["{\"a\":1}", "{\"b\":2}"]
        );
        assert_eq!(s.push(b":3}\n"), vec!["{\"c\":3}"]);
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = ListCursor {
            created_ms: 1_700_000_000_000,
            run_id: "run_abc".into(),
        };
        assert_eq!(ListCursor::decode(&c.encode()), Some(c));
        for bad in ["", "x.run", "12", "12.", "12.a b", "12.a'--"] {
            assert_eq!(ListCursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit(None), Ok(20));
        assert_eq!(parse_limit(Some("100")), Ok(100));
        assert!(parse_limit(Some("0")).is_err());
        assert!(parse_limit(Some("101")).is_err());
        assert!(parse_limit(Some("x")).is_err());
    }
}
