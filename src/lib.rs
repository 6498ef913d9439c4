//! Cloudbox: a Cloudflare Worker (Rust → wasm) where AI coding agents run
//! repos, execute tasks on persistent workspaces and get evaluated.
//!
//! One folder per domain, pure rules first and the workers-rs glue after
//! (the glue is behind the `worker-runtime` feature, so the runner in
//! `container/` and the CLI share the pure modules without it). The README's
//! "Layout" table says what each folder owns.

/// The request pipeline: route table, dispatch, auth, rate limits,
/// idempotency, the one error type, the OpenAPI document.
pub mod api;
/// Prepaid credits, holds, spending limits and the ledger.
pub mod billing;
/// Shared pure helpers: ids, time, paths, paging, canonical JSON.
pub mod common;
/// Typed workspaces ("computers") and their grading.
pub mod computers;
/// `/execute`: agent tasks on a workspace, queued and driven by its DO.
pub mod executes;
/// API keys: format, hashing, records, the admin routes.
pub mod keys;
/// The Worker's glue to the platform: config, bindings, HTTP, model client.
#[cfg(feature = "worker-runtime")]
mod platform;
/// The CloudboxRunner DO shell, its container link, and the job machinery
/// (NDJSON follower, event log, SSE, watchdog) that runs and executes share.
pub mod runner;
/// Repo runs: validation, metering, routes and the run's DO side.
pub mod runs;
/// The DO ↔ runner contract (both sides use these types) and run receipts.
pub mod wire;
/// Versioned workspaces in R2: manifests, storage, sync.
pub mod workspaces;
