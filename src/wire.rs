//! Types that cross the wire between the CloudboxRunner Durable Object and
//! the runner server in the container. Both sides use these definitions.

use serde::{Deserialize, Serialize};

/// The port the runner listens on inside the container (`EXPOSE 8080`).
pub const RUNNER_PORT: u16 = 8080;

/// `GET /health` of the runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerHealth {
    pub ok: bool,
    pub name: String,
    pub version: String,
}
