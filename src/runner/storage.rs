//! Runs `common::sql` statements on a Durable Object's SQLite storage. A
//! plan's statements run with no await between them, so no other request
//! of the instance sees it half applied.

use serde::de::DeserializeOwned;
use worker::{SqlStorage, SqlStorageValue};

use crate::api::error::ApiError;
use crate::common::sql::{Arg, Stmt};

fn value(arg: &Arg) -> SqlStorageValue {
    match arg {
        Arg::Int(n) => SqlStorageValue::Integer(*n),
        Arg::Text(s) => SqlStorageValue::String(s.clone()),
        Arg::Null => SqlStorageValue::Null,
    }
}

/// Runs one statement, ignoring any rows.
pub(crate) fn exec(sql: &SqlStorage, s: &Stmt) -> Result<(), ApiError> {
    sql.exec(s.sql, s.args.iter().map(value).collect::<Vec<_>>())?;
    Ok(())
}

/// Runs every statement of a plan, in order.
pub(crate) fn exec_plan(sql: &SqlStorage, plan: &[Stmt]) -> Result<(), ApiError> {
    plan.iter().try_for_each(|s| exec(sql, s))
}

/// The rows one statement answers.
pub(crate) fn rows<T: DeserializeOwned>(sql: &SqlStorage, s: &Stmt) -> Result<Vec<T>, ApiError> {
    Ok(sql
        .exec(s.sql, s.args.iter().map(value).collect::<Vec<_>>())?
        .to_array()?)
}

/// The first row one statement answers, if any.
pub(crate) fn first<T: DeserializeOwned>(
    sql: &SqlStorage,
    s: &Stmt,
) -> Result<Option<T>, ApiError> {
    Ok(rows(sql, s)?.into_iter().next())
}
