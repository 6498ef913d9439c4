//! Cloudbox: a Cloudflare Worker (Rust → wasm) where AI coding agents run
//! repos, execute tasks on persistent workspaces and get evaluated.
//!
//! Pure modules (no JS needed, tested natively) come first; the workers-rs
//! glue behind the `worker-runtime` feature is a thin layer over them. The
//! runner in `container/` depends on this crate without that feature to
//! share the wire types.

pub mod agent_events;
pub mod billing;
pub mod blob_parts;
pub mod canonical;
pub mod computer_receipts;
pub mod error;
pub mod execute_spec;
pub mod execution;
pub mod generate;
pub mod grade;
pub mod idempotency;
pub mod ids;
pub mod key_records;
pub mod keys;
pub mod ledger_sql;
pub mod model_usage;
pub mod openapi;
pub mod paging;
pub mod paths;
pub mod ratelimit;
pub mod receipts;
pub mod route;
pub mod run_billing;
pub mod run_events;
pub mod run_spec;
pub mod runner_link;
pub mod spec;
pub mod time;
pub mod wire;
pub mod workspace;

/// The workspace sync client (hash a tree, send what is missing, commit);
/// native only, used by the tests and the bench.
#[cfg(not(target_arch = "wasm32"))]
pub mod sync;

#[cfg(feature = "worker-runtime")]
mod auth;
#[cfg(feature = "worker-runtime")]
mod computer_do;
#[cfg(feature = "worker-runtime")]
mod config;
#[cfg(feature = "worker-runtime")]
mod entry;
#[cfg(feature = "worker-runtime")]
mod http;
#[cfg(feature = "worker-runtime")]
pub mod idempotency_d1;
#[cfg(feature = "worker-runtime")]
pub mod ledger_d1;
#[cfg(feature = "worker-runtime")]
mod model;
#[cfg(feature = "worker-runtime")]
mod ratelimit_d1;
#[cfg(feature = "worker-runtime")]
mod routes;
#[cfg(feature = "worker-runtime")]
mod run_billing_d1;
#[cfg(feature = "worker-runtime")]
mod runner_do;
#[cfg(feature = "worker-runtime")]
mod workspace_store;
