//! The Worker's glue to the platform, shared by every domain.

pub mod bindings;
pub mod config;
pub mod http;
pub mod model;
