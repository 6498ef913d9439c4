//! `GET /admin/runner/health`: the Worker → CloudboxRunner DO → runner round
//! trip, for operators checking that the container side is reachable.

use worker::{Request, Response};

use crate::api::dispatch::Ctx;
use crate::api::error::ApiError;
use crate::{api::auth, platform::http, runner::durable};

pub async fn runner_health(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    auth::require_admin(&req, ctx).await?;
    let body = durable::probe(ctx.env, "diagnostics", ctx.request_id).await?;
    http::json(200, &body)
}
