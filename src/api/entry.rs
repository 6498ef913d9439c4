//! The Worker's entry points: `fetch` (every HTTP request) and `scheduled`.

use serde_json::json;
use worker::{event, Context, Date, Env, Request, Response, ScheduleContext, ScheduledEvent};

use crate::api::error::ApiError;
use crate::platform::bindings;
use crate::{api::dispatch, common::ids, platform::http};

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let started_ms = Date::now().as_millis() as i64;
    let request_id = ids::new_id("req_").unwrap_or_else(|_| format!("req_{started_ms}"));
    let method = http::method(&req);
    let (route, result, extra_headers) =
        dispatch::handle(req, &method, &env, &request_id, started_ms).await;
    let mut internal = None;
    let resp = match result {
        Ok(resp) => resp,
        Err(err) => {
            if let ApiError::Internal(detail) = &err {
                internal = Some(detail.clone());
            }
            http::error_response(&err, &request_id)
        }
    };
    let mut resp = http::with_request_id(resp, &request_id);
    for (name, value) in &extra_headers {
        let _ = resp.headers_mut().set(name, value);
    }
    // The platform's invocation logs (`[observability]` in wrangler.toml)
    // record every request with its status and duration; a line of our own
    // for each would double them (and costs ~2 ms a request under `wrangler
    // dev`, whose logs cross the inspector). Server errors get one, with the
    // request id the client saw and the route pattern (never the raw URL).
    if resp.status_code() >= 500 {
        worker::console_error!(
            "{}",
            json!({
                "requestId": request_id,
                "method": method,
                "route": route,
                "status": resp.status_code(),
                "durationMs": Date::now().as_millis() as i64 - started_ms,
                "internal": internal,
            })
        );
    }
    Ok(resp)
}

#[event(scheduled)]
async fn scheduled(_event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    // Releases the holds of runs that outlived their maximum life (crashed
    // runs), and purges expired idempotency records and old rate windows.
    let now_ms = Date::now().as_millis() as i64;
    let window = crate::platform::config::Config::from_env(&env)
        .rate_limits
        .window_secs;
    let outcome = match bindings::db(&env) {
        Ok(db) => crate::billing::ledger_d1::sweep(&db, now_ms, window).await,
        Err(err) => Err(err),
    };
    match outcome {
        Ok(released) => {
            worker::console_log!("{}", json!({"sweep": "billing", "holdsReleased": released}))
        }
        Err(err) => {
            worker::console_error!("{}", json!({"sweep": "billing", "error": err.to_string()}))
        }
    }
}
