//! `Idempotency-Key` on D1, for any surface (credits, /execute, /api/runs;
//! the last two hand the claim to their DO, which records the outcome when
//! the work ends, with `record_outcome`, and name the run they start with
//! `started`, so that an SSE retry attaches to it — see `once`):
//!
//! ```text
//! let claim = match idempotency_d1::begin(&req_parts…).await? {
//!     Begin::Replay(resp) => return Ok(resp),
//!     Begin::Proceed(claim) => claim,
//! };
//! let outcome: Result<(u16, serde_json::Value), ApiError> = do_the_work().await;
//! idempotency_d1::finish(&db, claim, outcome, request_id).await
//! ```
//! Without the header, `begin` answers `Begin::Proceed(None)`-like through
//! `header_key` returning `None`; callers then skip it entirely.

use serde::Deserialize;
use serde_json::Value;
use worker::{D1Database, Headers, Request, Response};

use crate::api::error::{ApiError, FieldError};
use crate::api::idempotency::{self, Decision, Form, Record, Slot};
use crate::billing::ledger_d1::first;
use crate::platform::http;

pub const HEADER: &str = "idempotency-key";

/// The request's `Idempotency-Key`, if any (400 when malformed).
pub fn header_key(req: &Request) -> Result<Option<String>, ApiError> {
    match req.headers().get(HEADER)? {
        None => Ok(None),
        Some(k) if idempotency::valid_key(k.trim()) => Ok(Some(k.trim().to_string())),
        Some(_) => Err(ApiError::ValidationFailed(vec![FieldError::new(
            "Idempotency-Key",
            "1–255 visible ASCII characters",
        )])),
    }
}

#[derive(Clone)]
pub struct Claim {
    slot: Slot,
    claimed_at: i64,
}

impl Claim {
    /// The key and the claim time: what another party (a Durable Object
    /// that outlives the request) needs to record the outcome itself with
    /// `Slot::finish`.
    pub fn key_and_time(&self) -> (String, i64) {
        (self.slot.key.clone(), self.claimed_at)
    }
}

pub enum Begin {
    Proceed(Claim),
    Replay(Response),
    /// (`Form::Events` only) follow the run the first request started.
    Attach {
        run_id: String,
        record: Record,
        slot: Slot,
    },
}

#[derive(Deserialize)]
struct Claimed {
    created_at: i64,
}

#[derive(Deserialize)]
struct Row {
    fingerprint: String,
    state: String,
    response_status: Option<i64>,
    response_body: Option<String>,
    created_at: i64,
    run_id: Option<String>,
}

/// Claims the key for this request, or answers with the first response
/// (replay), 422 `idempotency_key_reused` or 409 `in_flight`; in the
/// events form, `Begin::Attach` when the first request started a run.
pub async fn begin(
    db: &D1Database,
    slot: Slot,
    fingerprint: &str,
    form: Form,
    now_ms: i64,
    stale_after_ms: i64,
) -> Result<Begin, ApiError> {
    for _ in 0..3 {
        if let Some(c) = first::<Claimed>(db, &slot.claim(fingerprint, now_ms)).await? {
            return Ok(Begin::Proceed(Claim {
                slot,
                claimed_at: c.created_at,
            }));
        }
        let row = first::<Row>(db, &slot.read()).await?;
        let record = row.as_ref().map(|r| Record {
            fingerprint: r.fingerprint.clone(),
            done: r.state == "done",
            response_status: r.response_status.map(|s| s as u16),
            response_body: r.response_body.clone(),
            created_at_ms: r.created_at,
            run_id: r.run_id.clone(),
        });
        match idempotency::decide(record.as_ref(), fingerprint, form, now_ms, stale_after_ms) {
            Decision::Replay { status, body } => return Ok(Begin::Replay(replay(status, &body)?)),
            Decision::Attach { run_id } => {
                let record =
                    record.ok_or_else(|| ApiError::Internal("attach: no record".into()))?;
                return Ok(Begin::Attach {
                    run_id,
                    record,
                    slot,
                });
            }
            Decision::Reused => return Err(ApiError::IdempotencyKeyReused),
            Decision::InFlight => return Err(ApiError::InFlight),
            Decision::TakeOver => {
                let old = record.map(|r| r.created_at_ms).unwrap_or_default();
                if let Some(c) = first::<Claimed>(db, &slot.take_over(old, now_ms)).await? {
                    return Ok(Begin::Proceed(Claim {
                        slot,
                        claimed_at: c.created_at,
                    }));
                }
            }
            Decision::Retry => {}
        }
    }
    Err(ApiError::InFlight)
}

/// The stored first answer, marked as a replay.
fn replay(status: u16, body: &str) -> Result<Response, ApiError> {
    let value: Value = serde_json::from_str(body)?;
    let mut resp = http::json(status, &value)?;
    resp.headers_mut().set("idempotent-replayed", "true")?;
    Ok(resp)
}

/// Names the run `claim` starts, before it is handed to its Durable
/// Object: from then on an SSE retry attaches to it.
/// A claim taken over meanwhile (its request was thought dead) starts
/// nothing: 409 `in_flight`.
pub async fn started(db: &D1Database, claim: &Claim, run_id: &str) -> Result<(), ApiError> {
    let stmt = claim.slot.started(run_id, claim.claimed_at);
    match first::<Named>(db, &stmt).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::InFlight),
    }
}

#[derive(Deserialize)]
struct Named {
    #[allow(dead_code)] // only its presence matters
    run_id: Option<String>,
}

/// Stores the outcome for replay (or frees the key when the outcome is
/// about the moment rather than the request), then returns it.
pub async fn finish(
    db: &D1Database,
    claim: Claim,
    outcome: Result<(u16, Value), ApiError>,
    request_id: &str,
) -> Result<Response, ApiError> {
    let (status, body) = match &outcome {
        Ok((status, body)) => (*status, body.clone()),
        Err(err) => (err.status(), err.body(request_id)),
    };
    record_outcome(db, &claim.slot, claim.claimed_at, status, &body.to_string()).await?;
    let (status, body) = outcome?;
    http::json(status, &body)
}

/// Records the outcome of a key claimed by a request from the Durable
/// Object that did the work, once the work is over: the DO outlives the
/// request, so a client that hung up finds the outcome on its retry. The
/// request's own `finish` may write the same outcome too.
pub async fn record_outcome(
    db: &D1Database,
    slot: &Slot,
    claimed_at: i64,
    status: u16,
    body: &str,
) -> Result<(), ApiError> {
    let stmt = if idempotency::should_store(status) {
        slot.finish(status, body, claimed_at)
    } else {
        slot.abandon(claimed_at)
    };
    crate::billing::ledger_d1::bind(db, &stmt)?.run().await?;
    Ok(())
}

/// The whole `Idempotency-Key` cycle around starting one run: a replay
/// answers the stored response; otherwise `work` runs (given the claim, to
/// name its run with `started` and hand to the run's DO) and its answer is
/// stored for replay. Every replayed or stored answer is a fresh JSON
/// response with `x-run-id` from its `runId`.
///
/// `follow` is the events form (`accept: text/event-stream`; `None`: JSON):
/// given a run id, that run's events after the request's `Last-Event-ID` —
/// the same function as the run's `GET …/events`. A retry whose first request
/// started a run answers that run's events (`idempotent-replayed: true`,
/// `x-run-id`). A stream `work` starts is answered as it is: the run's DO
/// records the outcome for the key when the run ends; a refusal before any
/// work is recorded (or frees the key) as in the JSON form.
#[allow(clippy::too_many_arguments)]
pub async fn once<W, WFut, F, FFut>(
    db: &D1Database,
    slot: Slot,
    fingerprint: &str,
    now_ms: i64,
    stale_after_ms: i64,
    request_id: &str,
    follow: Option<F>,
    work: W,
) -> Result<Response, ApiError>
where
    W: FnOnce(Claim) -> WFut,
    WFut: std::future::Future<Output = Result<Response, ApiError>>,
    F: FnOnce(String) -> FFut,
    FFut: std::future::Future<Output = Result<Response, ApiError>>,
{
    let form = match follow {
        Some(_) => Form::Events,
        None => Form::Json,
    };
    let claim = match begin(db, slot, fingerprint, form, now_ms, stale_after_ms).await? {
        Begin::Replay(resp) => return with_run_id_header(resp).await,
        Begin::Attach {
            run_id,
            record,
            slot,
        } => {
            let follow =
                follow.ok_or_else(|| ApiError::Internal("attach without events".into()))?;
            match attach(follow, run_id, &record, now_ms, stale_after_ms).await? {
                Attached::Answer(resp) => return Ok(resp),
                // The first request died before its run existed: this one runs it.
                Attached::TakeOver => {
                    let stmt = slot.take_over(record.created_at_ms, now_ms);
                    match first::<Claimed>(db, &stmt).await? {
                        Some(c) => Claim {
                            slot,
                            claimed_at: c.created_at,
                        },
                        None => return Err(ApiError::InFlight),
                    }
                }
            }
        }
        Begin::Proceed(claim) => claim,
    };
    let outcome = match work(claim.clone()).await {
        Ok(resp) if form == Form::Events && is_event_stream(&resp) => return Ok(resp),
        Ok(mut resp) => {
            let status = resp.status_code();
            resp.json::<Value>()
                .await
                .map(|body| (status, body))
                .map_err(ApiError::from)
        }
        Err(err) => Err(err),
    };
    let resp = finish(db, claim, outcome, request_id).await?;
    with_run_id_header(resp).await
}

/// The events of `run_id`, in a fresh response (a DO's headers are
/// immutable) marked as a replay. A run not found yet (its start is still
/// on its way to the DO) is 409 `in_flight`, or, once the key has its
/// answer (the start was refused, or the run deleted), that answer.
enum Attached {
    Answer(Response),
    TakeOver,
}

async fn attach<F, FFut>(
    follow: F,
    run_id: String,
    record: &Record,
    now_ms: i64,
    stale_after_ms: i64,
) -> Result<Attached, ApiError>
where
    F: FnOnce(String) -> FFut,
    FFut: std::future::Future<Output = Result<Response, ApiError>>,
{
    let mut resp = match follow(run_id.clone()).await {
        Ok(resp) if resp.status_code() != 404 => resp,
        Ok(_) | Err(ApiError::RunNotFound) => {
            return match idempotency::when_run_missing(record, now_ms, stale_after_ms) {
                Decision::Replay { status, body } => Ok(Attached::Answer(
                    with_run_id_header(replay(status, &body)?).await?,
                )),
                Decision::TakeOver => Ok(Attached::TakeOver),
                _ => Err(ApiError::InFlight),
            };
        }
        Err(err) => return Err(err),
    };
    let status = resp.status_code();
    let mut fresh = if is_event_stream(&resp) {
        let headers = Headers::new();
        headers.set("content-type", "text/event-stream")?;
        headers.set("cache-control", "no-cache")?;
        Response::from_stream(resp.stream()?)?.with_headers(headers)
    } else {
        http::json(status, &resp.json::<Value>().await?)?
    };
    fresh.headers_mut().set("x-run-id", &run_id)?;
    fresh.headers_mut().set("idempotent-replayed", "true")?;
    Ok(Attached::Answer(fresh))
}

/// A 200 SSE answer (a start's or a follow's), not a JSON one.
fn is_event_stream(resp: &Response) -> bool {
    let content_type = resp.headers().get("content-type").ok().flatten();
    resp.status_code() == 200 && content_type.is_some_and(|t| t.starts_with("text/event-stream"))
}

/// Sets `x-run-id` from the body's `runId`, if it has one.
async fn with_run_id_header(mut resp: Response) -> Result<Response, ApiError> {
    let body = resp.cloned()?.json::<Value>().await.unwrap_or(Value::Null);
    if let Some(id) = body["runId"].as_str() {
        resp.headers_mut().set("x-run-id", id)?;
    }
    Ok(resp)
}
