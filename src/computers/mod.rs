//! Computers: the spec, text generation, the receipt log, grading, the
//! routes and the Computer DO (`durable`).

pub mod call;
pub mod generate;
pub mod grade;
pub mod receipts;
pub mod spec;

#[cfg(feature = "worker-runtime")]
pub(crate) mod durable;
#[cfg(feature = "worker-runtime")]
pub(crate) mod routes;
