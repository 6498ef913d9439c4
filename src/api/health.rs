//! `GET /health`, `GET /api/health`, `GET /openapi.json`.

use serde_json::json;
use worker::Response;

use crate::api::dispatch::Ctx;
use crate::api::error::ApiError;
use crate::platform::http;

pub fn health(ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    http::json(
        200,
        &json!({
            "status": "healthy",
            "ok": true,
            "name": "cloudbox",
            "version": ctx.cfg.version,
            "timestamp": crate::common::time::rfc3339(ctx.now_ms),
        }),
    )
}

pub fn openapi() -> Result<Response, ApiError> {
    http::json(200, &crate::api::openapi::document())
}
