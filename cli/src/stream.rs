//! Following remote work (an execute, a run) to its end: the event stream
//! read on a thread of its own (`sse::follow`), while this thread watches
//! for Ctrl-C and the `--timeout` deadline and then cancels the work.

use std::sync::mpsc::{self, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::exit::{Exit, Failure, Result};
use crate::sse::{self, Event, Msg};

/// Where Ctrl-C goes while a command follows work; without one, it exits.
static INTERRUPTS: Mutex<Option<Sender<Msg>>> = Mutex::new(None);

pub fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        let sent = INTERRUPTS
            .lock()
            .ok()
            .and_then(|slot| slot.as_ref().map(|tx| tx.send(Msg::Interrupt).is_ok()));
        if sent != Some(true) {
            std::process::exit(Exit::Interrupted.code());
        }
    });
}

/// How the work ended, as far as this client saw it.
pub enum Ending {
    /// The `result` event's body.
    Result(Value),
    /// Ctrl-C or the deadline: cancelled (`exit`), with the body the work
    /// ended with, if it came.
    Stopped {
        exit: Exit,
        run_id: Option<String>,
        body: Option<Value>,
    },
}

/// Cancels the work with the given id.
pub type Cancel<'a> = dyn Fn(&str) -> Result<()> + 'a;

/// What the caller does around the stream.
pub struct Work<'a> {
    /// Opens (or re-opens after the given event id) the stream.
    pub open: Box<dyn Fn(Option<u64>) -> Result<ureq::Response> + Send + 'static>,
    /// Cancels the work with this id; `None` for a watcher (Ctrl-C then
    /// stops watching at once and the work goes on).
    pub cancel: Option<&'a Cancel<'a>>,
    pub deadline: Option<Instant>,
    /// Stop after this long without an event (`runs events` without --follow).
    pub idle: Option<Duration>,
    /// Where reconnects are told.
    pub out: crate::output::Out,
}

/// How long a cancelled work's final body is waited for.
const AFTER_CANCEL: Duration = Duration::from_secs(60);

/// Follows the work, handing every event to `on_event`, until it ends.
pub fn follow(
    work: Work<'_>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(Ending, Option<String>)> {
    let (tx, rx) = mpsc::channel();
    if let Ok(mut slot) = INTERRUPTS.lock() {
        *slot = Some(tx.clone());
    }
    let open = work.open;
    std::thread::spawn(move || sse::follow(&*open, &tx));
    let mut run_id: Option<String> = None;
    let mut stopping: Option<(Exit, Instant)> = None;
    let ending = loop {
        let wait = match (stopping, work.deadline) {
            (Some((_, until)), _) => until.saturating_duration_since(Instant::now()),
            (None, Some(deadline)) => deadline.saturating_duration_since(Instant::now()),
            (None, None) => Duration::from_secs(3600),
        };
        let wait = match work.idle {
            Some(idle) => wait.min(idle),
            None => wait,
        };
        let stop_now = |exit: Exit, run_id: &Option<String>| -> Option<(Exit, Instant)> {
            let Some(cancel) = work.cancel else {
                return Some((exit, Instant::now()));
            };
            if let Some(id) = run_id {
                // Best effort: the work may have ended already.
                let _ = cancel(id);
            }
            Some((exit, Instant::now() + AFTER_CANCEL))
        };
        match rx.recv_timeout(wait) {
            Ok(Msg::Opened(id)) => {
                if id.is_some() {
                    run_id = id;
                }
                // Stopped before the work was named: cancel it now.
                if let (Some(_), Some(id), Some(cancel)) = (stopping, &run_id, work.cancel) {
                    let _ = cancel(id);
                }
            }
            Ok(Msg::Event(event)) => on_event(&event),
            Ok(Msg::Reconnecting(last)) => work.out.note(&match last {
                Some(id) => format!("connection lost; resuming after event {id}"),
                None => "connection lost; reconnecting".to_string(),
            }),
            Ok(Msg::Done(Ok(body))) => match stopping {
                Some((exit, _)) => {
                    break Ending::Stopped {
                        exit,
                        run_id: run_id.clone(),
                        body: Some(body),
                    }
                }
                None => break Ending::Result(body),
            },
            Ok(Msg::Done(Err(f))) => match stopping {
                Some((exit, _)) => {
                    break Ending::Stopped {
                        exit,
                        run_id: run_id.clone(),
                        body: None,
                    }
                }
                None => {
                    clear_interrupts();
                    return Err(f);
                }
            },
            Ok(Msg::Interrupt) if stopping.is_none() => {
                stopping = stop_now(Exit::Interrupted, &run_id);
            }
            // A second Ctrl-C: stop waiting.
            Ok(Msg::Interrupt) => {
                break Ending::Stopped {
                    exit: Exit::Interrupted,
                    run_id: run_id.clone(),
                    body: None,
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some((exit, until)) = stopping {
                    if Instant::now() >= until {
                        break Ending::Stopped {
                            exit,
                            run_id: run_id.clone(),
                            body: None,
                        };
                    }
                } else if work.deadline.is_some_and(|d| Instant::now() >= d) {
                    stopping = stop_now(Exit::TimedOut, &run_id);
                } else if work.idle.is_some() {
                    break Ending::Result(Value::Null);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                clear_interrupts();
                return Err(Failure::network("the event stream ended without a result"));
            }
        }
    };
    clear_interrupts();
    Ok((ending, run_id))
}

fn clear_interrupts() {
    if let Ok(mut slot) = INTERRUPTS.lock() {
        *slot = None;
    }
}

/// A fresh `Idempotency-Key` for a starting request.
pub fn idempotency_key() -> String {
    format!("cli-{}", crate::sync::random_hex(16))
}
