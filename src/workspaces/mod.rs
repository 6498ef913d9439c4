//! Versioned workspaces: manifest rules (`manifest`), upload parts, storage
//! in R2 and D1 (`store`), the routes, and the native sync client.

pub mod blob_parts;
pub mod manifest;

/// The workspace sync client (hash a tree, send what is missing, commit);
/// native only, used by the tests and the bench.
#[cfg(not(target_arch = "wasm32"))]
pub mod sync;

#[cfg(feature = "worker-runtime")]
pub(crate) mod routes;
#[cfg(feature = "worker-runtime")]
pub(crate) mod store;
