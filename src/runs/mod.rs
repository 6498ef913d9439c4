//! Repo runs: validation (`spec`), metering (`billing`, its D1 glue), the
//! routes, and the run's DO side under `durable/`.

pub mod billing;
pub mod life;
/// The public proof page of a run (server-rendered HTML).
pub mod proof_page;
pub mod rows;
pub mod spec;

#[cfg(feature = "worker-runtime")]
pub(crate) mod billing_d1;
#[cfg(feature = "worker-runtime")]
pub(crate) mod durable;
#[cfg(feature = "worker-runtime")]
pub(crate) mod routes;
