//! Money: the rules (`rules`: pricing, periods, budgets, holds), the SQL
//! that moves it as plans (`ledger_sql`), their D1 glue, and the routes.

pub mod ledger_sql;
pub mod rules;

#[cfg(feature = "worker-runtime")]
pub mod ledger_d1;
#[cfg(feature = "worker-runtime")]
pub(crate) mod routes;
