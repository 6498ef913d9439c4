//! The SSE stream of a job's event log (`runner::job`, a repo run's or an
//! execute's): stored events after `after`, then live ones as they are
//! stored, heartbeat comments while idle, until `result`.

use std::rc::Rc;

use serde::Deserialize;
use worker::{Env, Headers, Response, SqlStorage};

use crate::api::error::ApiError;
use crate::platform::config::Config;
use crate::runner::events::{sse_frame, SSE_HEARTBEAT, SSE_PREAMBLE};
use crate::runner::job;
use crate::runner::live::{changed_or_timeout, Live};
use crate::runner::storage;

/// One stored event.
#[derive(Deserialize)]
struct EventRow {
    seq: f64,
    kind: String,
    data: String,
}

/// Where a stream reads from: one job's events.
pub struct JobLog {
    pub sql: SqlStorage,
    pub live: Rc<Live>,
    pub job_id: String,
    /// True once no more events will come (or the job is gone).
    pub finished: Box<dyn Fn() -> bool>,
}

impl JobLog {
    fn events_after(&self, after: u64) -> Vec<EventRow> {
        storage::rows(&self.sql, &job::events_after(&self.job_id, after)).unwrap_or_default()
    }
}

struct State {
    log: JobLog,
    after: u64,
    started: bool,
    done: bool,
    heartbeat_ms: u64,
}

/// The log's events after `after` as an SSE response, live until `result`.
pub fn response(log: JobLog, env: &Env, after: u64) -> Result<Response, ApiError> {
    let state = State {
        log,
        after,
        started: false,
        done: false,
        heartbeat_ms: Config::from_env(env).sse_heartbeat_ms,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if !st.started {
            st.started = true;
            return Some((
                Ok::<Vec<u8>, worker::Error>(SSE_PREAMBLE.as_bytes().to_vec()),
                st,
            ));
        }
        loop {
            if st.done {
                return None;
            }
            let since = st.log.live.version();
            let rows = st.log.events_after(st.after);
            if !rows.is_empty() {
                let mut out = String::new();
                for row in &rows {
                    out.push_str(&sse_frame(&row.kind, row.seq as u64, &row.data));
                    st.after = row.seq as u64;
                    if row.kind == "result" {
                        st.done = true;
                    }
                }
                return Some((Ok(out.into_bytes()), st));
            }
            if (st.log.finished)() {
                return None;
            }
            let live = st.log.live.clone();
            if !changed_or_timeout(&live, since, st.heartbeat_ms).await {
                return Some((Ok(SSE_HEARTBEAT.as_bytes().to_vec()), st));
            }
        }
    });
    let headers = Headers::new();
    let _ = headers.set("content-type", "text/event-stream");
    let _ = headers.set("cache-control", "no-cache");
    Ok(Response::from_stream(stream)?.with_headers(headers))
}
