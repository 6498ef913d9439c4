//! The Worker's entry points: `fetch` (every HTTP request) and `scheduled`.

use serde_json::json;
use worker::{event, Context, Date, Env, Request, Response, ScheduleContext, ScheduledEvent};

use crate::error::ApiError;
use crate::{http, ids, routes};

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let started_ms = Date::now().as_millis() as i64;
    let request_id = ids::new_id("req_").unwrap_or_else(|_| format!("req_{started_ms}"));
    let method = req.method().to_string();
    let (route, result) = routes::handle(req, &env, &request_id, started_ms).await;
    let resp = match result {
        Ok(resp) => resp,
        Err(err) => {
            if let ApiError::Internal(detail) = &err {
                worker::console_error!(
                    "{}",
                    json!({"requestId": request_id, "route": route, "internal": detail})
                );
            }
            http::error_response(&err, &request_id)
        }
    };
    let resp = http::with_request_id(resp, &request_id);
    // One structured line per request. The route is the pattern, never the
    // raw URL, so ids and query strings (where a key might be) stay out.
    worker::console_log!(
        "{}",
        json!({
            "requestId": request_id,
            "method": method,
            "route": route,
            "status": resp.status_code(),
            "durationMs": Date::now().as_millis() as i64 - started_ms,
        })
    );
    Ok(resp)
}

#[event(scheduled)]
async fn scheduled(_event: ScheduledEvent, _env: Env, _ctx: ScheduleContext) {
    // The billing sweep (releasing holds of crashed runs) hooks in here.
}
