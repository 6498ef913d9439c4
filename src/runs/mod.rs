//! Repo runs: validation (`spec`), metering (`billing`, its D1 glue), the
//! routes, and the run's DO side under `durable/`.

pub mod billing;
pub mod life;
/// Live runs: the TTL, expiry, retention and the guard of each action.
pub mod live;
/// The public proof page of a run (server-rendered HTML).
pub mod proof_page;
pub mod rows;
pub mod spec;
/// A checkout as a snapshot holds it: files, directories, symlinks.
pub mod tree;

#[cfg(feature = "worker-runtime")]
pub(crate) mod billing_d1;
#[cfg(feature = "worker-runtime")]
pub(crate) mod durable;
#[cfg(feature = "worker-runtime")]
pub(crate) mod routes;
