//! Server-sent events: the parser (pure), and a follower that reads a
//! stream to its `result` event, reconnecting after the last event seen
//! (`Last-Event-ID`) when the connection drops, so nothing is missed or
//! seen twice.

use std::io::{BufRead, BufReader};
use std::sync::mpsc::Sender;
use std::time::Duration;

use serde_json::Value;

use crate::exit::{Exit, Failure, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: Option<u64>,
    pub event: String,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// Builds events from lines (`id:`, `event:`, `data:`; comments ignored).
#[derive(Default)]
pub struct Parser {
    id: Option<u64>,
    event: String,
    data: Vec<String>,
}

impl Parser {
    /// Feeds one line (without its newline); an empty line ends an event.
    pub fn line(&mut self, line: &str) -> Option<Event> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            if self.data.is_empty() && self.event.is_empty() {
                return None;
            }
            let event = Event {
                id: self.id.take(),
                event: match std::mem::take(&mut self.event) {
                    e if e.is_empty() => "message".to_string(),
                    e => e,
                },
                data: std::mem::take(&mut self.data).join("\n"),
            };
            return Some(event);
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "id" => self.id = value.trim().parse().ok(),
            "event" => self.event = value.to_string(),
            "data" => self.data.push(value.to_string()),
            _ => {}
        }
        None
    }
}

/// What a follower tells the command that runs it.
pub enum Msg {
    /// The stream is open; the run's id if the answer named it (`x-run-id`).
    Opened(Option<String>),
    Event(Event),
    /// The connection dropped; reconnecting after this event id.
    Reconnecting(Option<u64>),
    /// The stream ended: with the `result` event's body, or why not.
    Done(Result<Value>),
    /// Ctrl-C.
    Interrupt,
}

/// How many times a dropped stream is reopened before giving up.
const RECONNECTS: u32 = 8;

/// Reads the stream `open` gives (called with the last event id seen, for
/// the reconnects) until its `result` event, sending every event once.
/// Ends with `Msg::Done`.
pub fn follow(open: &dyn Fn(Option<u64>) -> Result<ureq::Response>, tx: &Sender<Msg>) {
    let mut last: Option<u64> = None;
    let mut failures = 0;
    let done = loop {
        let resp = match open(last) {
            Ok(resp) => resp,
            // `in_flight`: the retry came before the server knew the run.
            Err(f)
                if (f.exit == Exit::Server || f.code == "in_flight") && failures < RECONNECTS =>
            {
                failures += 1;
                let _ = tx.send(Msg::Reconnecting(last));
                std::thread::sleep(backoff(failures));
                continue;
            }
            Err(f) => break Err(f),
        };
        let _ = tx.send(Msg::Opened(resp.header("x-run-id").map(str::to_string)));
        let mut parser = Parser::default();
        let mut reader = BufReader::new(resp.into_reader());
        let mut line = String::new();
        let mut ended: Option<Result<Value>> = None;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let Some(event) = parser.line(line.trim_end_matches('\n')) else {
                continue;
            };
            // A replayed event (at or before the last seen) is not sent again.
            if let (Some(id), Some(seen)) = (event.id, last) {
                if id <= seen {
                    continue;
                }
            }
            if event.id.is_some() {
                last = event.id;
                failures = 0;
            }
            match event.event.as_str() {
                "result" => {
                    ended = Some(Ok(event.json()));
                }
                "error" => {
                    let body = event.json();
                    ended = Some(Err(Failure::new(
                        Exit::Server,
                        body["error"].as_str().unwrap_or("stream_error"),
                        body["message"].as_str().unwrap_or(&event.data),
                    )));
                }
                _ => {}
            }
            let _ = tx.send(Msg::Event(event));
            if ended.is_some() {
                break;
            }
        }
        if let Some(ended) = ended {
            break ended;
        }
        failures += 1;
        if failures > RECONNECTS {
            break Err(Failure::network(
                "the event stream kept dropping; the work goes on on the server",
            ));
        }
        let _ = tx.send(Msg::Reconnecting(last));
        std::thread::sleep(backoff(failures));
    };
    let _ = tx.send(Msg::Done(done));
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(250 * 2u64.pow(failures.min(5)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<Event> {
        let mut p = Parser::default();
        text.lines().filter_map(|l| p.line(l)).collect()
    }

    #[test]
    fn events_with_ids_names_and_multiline_data() {
        let events = parse(
            ": heartbeat\n\nid: 1\nevent: receipt\ndata: {\"a\":1}\n\nid: 2\nevent: output\ndata: x\ndata: y\n\ndata: plain\n\n",
        );
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].id, Some(1));
        assert_eq!(events[0].event, "receipt");
        assert_eq!(events[0].json()["a"], 1);
        assert_eq!(events[1].data, "x\ny");
        assert_eq!(events[2].event, "message");
        assert_eq!(events[2].id, None);
    }

    #[test]
    fn follow_reopens_after_the_last_event_and_sends_each_event_once() {
        let calls = std::sync::Mutex::new(Vec::new());
        let open = |last: Option<u64>| -> Result<ureq::Response> {
            calls.lock().unwrap().push(last);
            let body = match last {
                // The first connection drops after two events.
                None => "id: 1\nevent: receipt\ndata: {}\n\nid: 2\nevent: output\ndata: {}\n\n",
                // The server may repeat what was seen; the follower drops it.
                Some(_) => "id: 2\nevent: output\ndata: {}\n\nid: 3\nevent: result\ndata: {\"ok\":true}\n\n",
            };
            Ok(format!("HTTP/1.1 200 OK\r\nx-run-id: run_1\r\n\r\n{body}")
                .parse()
                .unwrap())
        };
        let (tx, rx) = std::sync::mpsc::channel();
        follow(&open, &tx);
        let (mut ids, mut opened, mut reconnects, mut done) = (vec![], vec![], vec![], None);
        for msg in rx.try_iter() {
            match msg {
                Msg::Opened(id) => opened.push(id),
                Msg::Event(e) => ids.push(e.id),
                Msg::Reconnecting(last) => reconnects.push(last),
                Msg::Done(r) => done = Some(r),
                Msg::Interrupt => unreachable!(),
            }
        }
        assert_eq!(*calls.lock().unwrap(), [None, Some(2)]);
        assert_eq!(ids, [Some(1), Some(2), Some(3)]);
        assert_eq!(reconnects, [Some(2)]);
        assert_eq!(
            opened,
            [Some("run_1".to_string()), Some("run_1".to_string())]
        );
        assert_eq!(done.unwrap().unwrap(), serde_json::json!({"ok": true}));
    }

    #[test]
    fn follow_gives_up_on_a_refusal_but_retries_in_flight() {
        let calls = std::sync::Mutex::new(0);
        let open = |_: Option<u64>| -> Result<ureq::Response> {
            let mut n = calls.lock().unwrap();
            *n += 1;
            if *n == 1 {
                Err(Failure::from_answer(409, "in_flight", "wait"))
            } else {
                Err(Failure::from_answer(402, "insufficient_credits", "top up"))
            }
        };
        let (tx, rx) = std::sync::mpsc::channel();
        follow(&open, &tx);
        let done = rx.try_iter().find_map(|m| match m {
            Msg::Done(r) => Some(r),
            _ => None,
        });
        assert_eq!(done.unwrap().unwrap_err().code, "insufficient_credits");
        assert_eq!(*calls.lock().unwrap(), 2);
    }

    #[test]
    fn carriage_returns_and_bare_fields() {
        let events = parse("id: 7\r\nevent: result\r\ndata\r\n\r\n");
        assert_eq!(events[0].id, Some(7));
        assert_eq!(events[0].event, "result");
        assert_eq!(events[0].data, "");
    }
}
