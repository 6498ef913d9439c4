//! The Worker's bindings (`wrangler.toml`) and the headers of its internal
//! calls, named once, and the one way the Worker calls a Durable Object.

use worker::{Bucket, D1Database, Env, Headers, Method, Request, RequestInit, Response};

use crate::api::error::ApiError;

/// The D1 database: accounts, keys, the ledger, the indexes.
pub const DB: &str = "DB";
/// The R2 bucket: workspace blobs, manifests and sessions.
pub const BUCKET: &str = "BUCKET";
/// The CloudboxRunner Durable Objects (a repo run's, a workspace's).
pub const RUNNER: &str = "RUNNER";
/// The Computer Durable Objects.
pub const COMPUTER: &str = "COMPUTER";

/// An internal call carries the caller's account here; the DO checks that
/// what it is asked about belongs to it.
pub const ACCOUNT_HEADER: &str = "x-cloudbox-account";
/// The request id, for the DO's log lines and error bodies.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

pub fn db(env: &Env) -> Result<D1Database, ApiError> {
    Ok(env.d1(DB)?)
}

pub fn bucket(env: &Env) -> Result<Bucket, ApiError> {
    Ok(env.bucket(BUCKET)?)
}

/// POSTs one typed call (its JSON) to the DO named `name` of `binding`,
/// on behalf of `account`; the DO's answer is the response.
pub async fn call_do(
    env: &Env,
    binding: &str,
    name: &str,
    url: &str,
    account: &str,
    request_id: &str,
    call_json: String,
) -> Result<Response, ApiError> {
    let stub = env
        .durable_object(binding)?
        .id_from_name(name)?
        .get_stub()?;
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    headers.set(ACCOUNT_HEADER, account)?;
    headers.set(REQUEST_ID_HEADER, request_id)?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(call_json.into()));
    let req = Request::new_with_init(url, &init)?;
    Ok(stub.fetch_with_request(req).await?)
}

/// The account an internal call is made for (the DO side).
pub fn account_of(req: &Request) -> Result<String, ApiError> {
    req.headers()
        .get(ACCOUNT_HEADER)?
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ApiError::Internal("internal call without an account".into()))
}

/// The request id an internal call carries, or `fallback`.
pub fn request_id_of(req: &Request, fallback: &str) -> String {
    req.headers()
        .get(REQUEST_ID_HEADER)
        .ok()
        .flatten()
        .unwrap_or_else(|| fallback.to_string())
}
