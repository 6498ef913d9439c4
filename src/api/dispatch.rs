//! Request handling: resolve the route (`crate::api::route::ROUTES`), then call
//! its handler. Handlers live one file per API surface.

use crate::api::health;
use crate::billing::routes as billing;
use crate::computers::routes as computers;
use crate::executes::routes as execute;
use crate::keys::routes as admin_keys;
use crate::runner::routes as diagnostics;
use crate::runs::routes as runs;
use crate::workspaces::routes as workspaces;

use worker::{Env, Request, Response};

use crate::api::auth;
use crate::api::error::ApiError;
use crate::api::ratelimit;
use crate::api::ratelimit_d1;
use crate::api::route::{self, Params, Resolution, Route};
use crate::platform::config::Config;
use crate::platform::http;

/// Response headers `handle` adds besides the handler's (`ratelimit-*`).
pub type ExtraHeaders = Vec<(&'static str, String)>;

/// What every handler gets besides the request.
pub struct Ctx<'a> {
    pub env: &'a Env,
    pub cfg: Config,
    pub params: Params,
    pub now_ms: i64,
    pub request_id: &'a str,
    /// The presented key's row, read with the rate counters (see `auth`).
    pub key: Option<auth::KeyLookup>,
}

impl Ctx<'_> {
    /// A path parameter the route pattern guarantees.
    pub fn param(&self, name: &str) -> Result<&str, ApiError> {
        self.params
            .get(name)
            .ok_or_else(|| ApiError::Internal(format!("route has no param {name}")))
    }
}

/// Handles one request. Returns the route pattern (for the log line), the
/// handler's result and the `ratelimit-*` headers for the response.
/// `method` is the request's as sent (`http::method`), read once by the entry.
pub async fn handle(
    req: Request,
    method: &str,
    env: &Env,
    request_id: &str,
    now_ms: i64,
) -> (&'static str, Result<Response, ApiError>, ExtraHeaders) {
    let path = http::path(&req);
    let resolution = route::resolve(method, &path);
    let pattern = match &resolution {
        Resolution::Found(spec, _) => spec.pattern,
        Resolution::MethodNotAllowed(_) => "(method not allowed)",
        Resolution::NotFound => "(no route)",
    };
    let cfg = Config::from_env(env);
    // Every request passes here: count it before anything else is done.
    let class = ratelimit::classify(method, pattern);
    let gate = match ratelimit_d1::check(&req, env, &cfg, class, now_ms).await {
        Ok(gate) => gate,
        Err(err) => return (pattern, Err(err), Vec::new()),
    };
    let limit_headers = match &gate.verdict {
        Some(verdict) => {
            let headers = verdict.headers();
            if !verdict.allowed {
                let err = ApiError::RateLimited {
                    retry_after_secs: verdict.reset_secs.max(1) as u64,
                };
                return (pattern, Err(err), headers);
            }
            headers
        }
        None => Vec::new(),
    };
    let (spec, params) = match resolution {
        Resolution::Found(spec, params) => (spec, params),
        Resolution::MethodNotAllowed(allowed) => {
            return (
                pattern,
                Err(ApiError::MethodNotAllowed { allowed }),
                limit_headers,
            )
        }
        Resolution::NotFound => return (pattern, Err(ApiError::NotFound), limit_headers),
    };
    if let Err(err) = auth::reject_key_in_query(&req) {
        return (spec.pattern, Err(err), limit_headers);
    }
    let ctx = Ctx {
        env,
        cfg,
        params,
        now_ms,
        request_id,
        key: gate.key,
    };
    (
        spec.pattern,
        dispatch(spec.route, req, ctx).await,
        limit_headers,
    )
}

/// Each handler's future is boxed: inlined, all of them made one state
/// machine of 130 KB of wasm (and a request's future as large as the
/// largest handler's).
async fn dispatch(route: Route, req: Request, ctx: Ctx<'_>) -> Result<Response, ApiError> {
    match route {
        Route::Health | Route::ApiHealth => health::health(&ctx),
        Route::OpenApi => health::openapi(),
        Route::AdminCreateKey => Box::pin(admin_keys::create(req, &ctx)).await,
        Route::AdminListKeys => Box::pin(admin_keys::list(req, &ctx)).await,
        Route::AdminGetKey => Box::pin(admin_keys::get(req, &ctx)).await,
        Route::AdminUpdateKey => Box::pin(admin_keys::update(req, &ctx)).await,
        Route::AdminRevokeKey => Box::pin(admin_keys::revoke(req, &ctx)).await,
        Route::AdminRotateKey => Box::pin(admin_keys::rotate(req, &ctx)).await,
        Route::AdminKeyUsage => Box::pin(admin_keys::usage(req, &ctx)).await,
        Route::BillingAccount => Box::pin(billing::account(req, &ctx)).await,
        Route::BillingTransactions => Box::pin(billing::transactions(req, &ctx)).await,
        Route::BillingTransaction => Box::pin(billing::transaction(req, &ctx)).await,
        Route::BillingUsage => Box::pin(billing::usage(req, &ctx)).await,
        Route::BillingAdminCredits => Box::pin(billing::admin_credits(req, &ctx)).await,
        Route::BillingAdminLimits => Box::pin(billing::admin_limits(req, &ctx)).await,
        Route::AdminRunnerHealth => Box::pin(diagnostics::runner_health(req, &ctx)).await,
        Route::WorkspaceList => Box::pin(workspaces::list(req, &ctx)).await,
        Route::WorkspaceGet => Box::pin(workspaces::get(req, &ctx)).await,
        Route::WorkspaceDelete => Box::pin(workspaces::delete(req, &ctx)).await,
        Route::WorkspaceManifest => Box::pin(workspaces::manifest(req, &ctx)).await,
        Route::WorkspaceBlobsMissing => Box::pin(workspaces::blobs_missing(req, &ctx)).await,
        Route::WorkspaceBlobsPack => Box::pin(workspaces::blobs_pack(req, &ctx)).await,
        Route::WorkspaceBlobsFetch => Box::pin(workspaces::blobs_fetch(req, &ctx)).await,
        Route::WorkspaceBlobPut => Box::pin(workspaces::blob_put(req, &ctx)).await,
        Route::WorkspaceBlobGet => Box::pin(workspaces::blob_get(req, &ctx)).await,
        Route::WorkspaceCommit => Box::pin(workspaces::commit(req, &ctx)).await,
        Route::WorkspaceFileGet => Box::pin(workspaces::file_get(req, &ctx)).await,
        Route::WorkspaceFilePut => Box::pin(workspaces::file_put(req, &ctx)).await,
        Route::WorkspaceFileDelete => Box::pin(workspaces::file_delete(req, &ctx)).await,
        Route::WorkspaceSessionReset => Box::pin(workspaces::session_reset(req, &ctx)).await,
        Route::Execute => Box::pin(execute::create(req, &ctx)).await,
        Route::ExecuteGet => Box::pin(execute::get(req, &ctx)).await,
        Route::ExecuteEvents => Box::pin(execute::events(req, &ctx)).await,
        Route::ExecuteCancel => Box::pin(execute::cancel(req, &ctx)).await,
        Route::RunCreate => Box::pin(runs::create(req, &ctx)).await,
        Route::RunList => Box::pin(runs::list(req, &ctx)).await,
        Route::RunGet => Box::pin(runs::get(req, &ctx)).await,
        Route::RunPublic => Box::pin(runs::public(req, &ctx)).await,
        Route::RunSetPublic => Box::pin(runs::set_public(req, &ctx)).await,
        Route::RunPage => Box::pin(runs::page(req, &ctx)).await,
        Route::RunEvents => Box::pin(runs::events(req, &ctx)).await,
        Route::RunVerify => Box::pin(runs::verify(req, &ctx)).await,
        Route::RunCancel => Box::pin(runs::cancel(req, &ctx)).await,
        Route::RunDelete => Box::pin(runs::delete(req, &ctx)).await,
        Route::RunExec => Box::pin(runs::exec(req, &ctx)).await,
        Route::RunRead => Box::pin(runs::read(req, &ctx)).await,
        Route::RunWrite => Box::pin(runs::write(req, &ctx)).await,
        Route::RunStop => Box::pin(runs::stop(req, &ctx)).await,
        Route::RunResume => Box::pin(runs::resume(req, &ctx)).await,
        Route::RunFork => Box::pin(runs::fork(req, &ctx)).await,
        Route::Computers(op) => Box::pin(computers::handle(op, req, &ctx)).await,
    }
}
