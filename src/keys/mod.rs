//! API keys: their format and hashing (`api_key`), the records the admin
//! routes show and change (`records`), and those routes.

pub mod api_key;
pub mod records;

#[cfg(feature = "worker-runtime")]
pub(crate) mod routes;
