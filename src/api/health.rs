//! `GET /health`, `GET /api/health`, `GET /openapi.json`.
//!
//! Health announces the limits clients split their uploads by. Clients take
//! the presence of `maxPackBytes` to mean the server takes packs
//! (`…/blobs/pack`, `…/blobs/fetch`); an older server without it gets
//! one request per blob.

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
            "limits": {
                "maxBlobBytes": ctx.cfg.max_blob_bytes,
                "maxPackBytes": crate::wire::pack::MAX_PACK_BYTES,
                "maxJsonBytes": http::MAX_JSON_BYTES,
            },
        }),
    )
}

pub fn openapi() -> Result<Response, ApiError> {
    http::json(200, &crate::api::openapi::document())
}
