//! The CloudboxRunner Durable Object and what every job on it shares: the
//! rules of its container's life (`lifecycle`), the stream formats
//! (`events`), the DO shell (`durable`), the container link (`link`), the
//! live signal, SSE, and the admin health route.

pub mod call;
pub mod events;
pub mod job;
pub mod lifecycle;

#[cfg(feature = "worker-runtime")]
pub(crate) mod blobs;
#[cfg(feature = "worker-runtime")]
pub(crate) mod durable;
#[cfg(feature = "worker-runtime")]
pub(crate) mod follow;
#[cfg(feature = "worker-runtime")]
pub(crate) mod link;
#[cfg(feature = "worker-runtime")]
pub(crate) mod live;
#[cfg(feature = "worker-runtime")]
pub(crate) mod routes;
#[cfg(feature = "worker-runtime")]
pub(crate) mod sse;
#[cfg(feature = "worker-runtime")]
pub(crate) mod storage;
