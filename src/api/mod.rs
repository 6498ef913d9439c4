//! The request pipeline: the route table (`route`), dispatch to each
//! domain's handlers (`dispatch`), auth, rate limits, idempotency, and the
//! one error type with its status and code (`error`).

pub mod error;
pub mod idempotency;
pub mod openapi;
pub mod ratelimit;
pub mod route;
pub mod target;

#[cfg(feature = "worker-runtime")]
pub(crate) mod auth;
#[cfg(feature = "worker-runtime")]
pub(crate) mod dispatch;
#[cfg(feature = "worker-runtime")]
mod entry;
#[cfg(feature = "worker-runtime")]
pub(crate) mod health;
#[cfg(feature = "worker-runtime")]
pub mod idempotency_d1;
#[cfg(feature = "worker-runtime")]
pub(crate) mod ratelimit_d1;
