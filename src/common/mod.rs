//! Shared pure helpers.

pub mod canonical;
pub mod ids;
pub(crate) mod names;
pub mod paging;
pub mod paths;
pub mod sql;
pub mod time;
