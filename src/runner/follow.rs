//! Following one job's NDJSON event stream on the runner, for every kind of
//! job (a repo run, an execute): each event is stored once, in order, as it
//! arrives; a broken connection is resumed after the last stored event; a
//! stream with no event and no heartbeat for `STALL_MS` counts as broken;
//! `MAX_LINK_FAILURES` breaks in a row (without a new event between them)
//! and the job is lost.

use std::time::Duration;

use futures_util::future::{select, Either};
use futures_util::StreamExt;
use worker::{Delay, Method, Response};

use crate::api::error::ApiError;
use crate::runner::events::LineSplitter;
use crate::runner::link::{send, Link};
use crate::wire::{RunnerError, RunnerErrorCode, WireEvent};

/// No event and no heartbeat for this long: the runner stopped answering.
pub const STALL_MS: u64 = 10_000;
/// Connection failures in a row before the job is lost.
pub const MAX_LINK_FAILURES: u32 = 4;

/// Why following stopped before the job's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The DO ended the job meanwhile (a cancel, the watchdog).
    Ended,
    /// The job passed its deadline.
    Deadline,
}

pub enum Followed<R> {
    /// The job's last event arrived (what `Job::store` made of it).
    Result(R),
    Stopped(Stop),
    /// The runner lost the job or stopped answering; says why.
    Lost(String),
}

/// What the follower needs of a job's storage.
pub(crate) trait Job {
    type Result;
    /// "run", "task": names the job in messages.
    const NOUN: &'static str;
    /// The runner's route for the job's events after `after`.
    fn events_path(&self, after: u64) -> String;
    /// The runner seq of the last event stored.
    fn stored_seq(&self) -> Result<u64, ApiError>;
    /// Whether to stop following now.
    fn stop(&self) -> Result<Option<Stop>, ApiError>;
    /// Stores one new event (its seq above the stored one) and its seq;
    /// `Some` when it is the job's result.
    async fn store(&self, event: WireEvent) -> Result<Option<Self::Result>, ApiError>;
}

/// Follows the job until its result, a stop, or its loss. `first` is the
/// answer of the call that started the job, if it streams its events.
pub(crate) async fn follow<J: Job>(
    link: &Link,
    job: &J,
    first: Option<Response>,
) -> Result<Followed<J::Result>, ApiError> {
    let mut next = first;
    let mut failures = 0u32;
    loop {
        if let Some(stop) = job.stop()? {
            return Ok(Followed::Stopped(stop));
        }
        let seen = job.stored_seq()?;
        let resp = match next.take() {
            Some(resp) => Ok(resp),
            None => send(link, Method::Get, &job.events_path(seen), None, 5_000).await,
        };
        let reason = match resp {
            Ok(resp) if resp.status_code() == 200 => match read(job, resp).await? {
                Read::Result(result) => return Ok(Followed::Result(result)),
                Read::Stopped(stop) => return Ok(Followed::Stopped(stop)),
                Read::Broken(reason) => reason,
            },
            Ok(mut resp) => {
                let status = resp.status_code();
                let refused = RunnerError::parse(&resp.text().await.unwrap_or_default());
                let lost = match &refused {
                    Some(err) => err.error == RunnerErrorCode::RunNotFound,
                    // A runner that cannot say why (an older one) answers a bare 404.
                    None => status == 404,
                };
                if lost {
                    return Ok(Followed::Lost(format!(
                        "the runner no longer has this {} (it restarted)",
                        J::NOUN
                    )));
                }
                match refused {
                    Some(err) => format!("runner answered {status}: {}", err.message),
                    None => format!("runner answered {status}"),
                }
            }
            Err(err) => err,
        };
        // Only breaks in a row count: a stream that delivered events was alive.
        if job.stored_seq()? > seen {
            failures = 0;
        }
        failures += 1;
        if failures >= MAX_LINK_FAILURES {
            return Ok(Followed::Lost(format!(
                "the runner stopped answering ({reason})"
            )));
        }
        Delay::from(Duration::from_millis(200 << failures)).await;
    }
}

enum Read<R> {
    Result(R),
    Stopped(Stop),
    Broken(String),
}

/// Reads one connection's events until the result, a stop, a break or a stall.
async fn read<J: Job>(job: &J, mut resp: Response) -> Result<Read<J::Result>, ApiError> {
    let mut stream = resp.stream()?;
    let mut lines = LineSplitter::default();
    loop {
        let stall = Delay::from(Duration::from_millis(STALL_MS));
        let chunk = match select(stream.next(), stall).await {
            Either::Left((Some(Ok(bytes)), _)) => bytes,
            Either::Left((Some(Err(err)), _)) => return Ok(Read::Broken(err.to_string())),
            Either::Left((None, _)) => {
                return Ok(Read::Broken("the stream ended before the result".into()))
            }
            Either::Right(_) => {
                return Ok(Read::Broken(format!(
                    "no event or heartbeat for {STALL_MS} ms"
                )))
            }
        };
        for line in lines.push(&chunk) {
            let event: WireEvent = match serde_json::from_str(&line) {
                Ok(event) => event,
                Err(err) => {
                    worker::console_error!("{}: bad runner line: {err}", J::NOUN);
                    continue;
                }
            };
            if event.seq == 0 {
                continue; // heartbeat
            }
            // Ended by the DO: nothing more is stored. Past its deadline,
            // the events already sent are still kept (the result may be
            // among them); the deadline is checked after the chunk.
            if job.stop()? == Some(Stop::Ended) {
                return Ok(Read::Stopped(Stop::Ended));
            }
            if event.seq <= job.stored_seq()? {
                continue; // stored before a reconnect
            }
            if let Some(result) = job.store(event).await? {
                return Ok(Read::Result(result));
            }
        }
        if let Some(stop) = job.stop()? {
            return Ok(Read::Stopped(stop));
        }
    }
}
