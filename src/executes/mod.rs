//! `/execute`: an agent task on a workspace. Validation (`spec`), the rules
//! of one execute (`execution`), the agent's and the model's event formats,
//! the routes, and the workspace DO's side under `durable/`.

pub mod agent_events;
pub mod execution;
pub mod model_usage;
pub mod queue;
pub mod spec;

#[cfg(feature = "worker-runtime")]
pub(crate) mod durable;
#[cfg(feature = "worker-runtime")]
pub(crate) mod routes;
