//! Computers: the spec, text generation, the receipt log, grading (and its
//! summary's tables, `grade_sql`), the routes and the Computer DO (`durable`).

pub mod call;
pub mod generate;
pub mod grade;
pub mod grade_sql;
pub mod receipts;
pub mod spec;

#[cfg(feature = "worker-runtime")]
pub(crate) mod durable;
#[cfg(feature = "worker-runtime")]
pub(crate) mod routes;
