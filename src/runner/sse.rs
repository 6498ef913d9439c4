//! One SSE stream for both event logs a CloudboxRunner keeps (a repo run's
//! and a workspace execute's): stored events after `after`, then live ones
//! as they are stored, heartbeat comments while idle, until `result`.

use std::rc::Rc;

use serde::Deserialize;
use worker::{Env, Headers, Response};

use crate::api::error::ApiError;
use crate::platform::config::Config;
use crate::runner::events::{sse_frame, SSE_HEARTBEAT, SSE_PREAMBLE};
use crate::runner::live::{changed_or_timeout, Live};

/// One stored event.
#[derive(Deserialize)]
pub struct EventRow {
    pub seq: f64,
    pub kind: String,
    pub data: String,
}

/// Where a stream reads from.
pub trait EventLog: 'static {
    /// Up to a page of events with `seq > after`, in order.
    fn events_after(&self, after: u64) -> Vec<EventRow>;
    /// True once no more events will come (or the log is gone).
    fn finished(&self) -> bool;
    fn live(&self) -> &Rc<Live>;
}

struct State<L> {
    log: L,
    after: u64,
    started: bool,
    done: bool,
    heartbeat_ms: u64,
}

/// The log's events after `after` as an SSE response, live until `result`.
pub fn response<L: EventLog>(log: L, env: &Env, after: u64) -> Result<Response, ApiError> {
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
            let since = st.log.live().version();
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
            if st.log.finished() {
                return None;
            }
            let live = st.log.live().clone();
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
