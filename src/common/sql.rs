//! SQL as data (pure): a statement with its bound arguments. Plans — lists
//! of statements — are written once in the pure modules and run unchanged
//! by the glue (a D1 batch, a Durable Object's SQLite) and by the property
//! tests on SQLite (`tests/ledger_props.rs`, `tests/job_props.rs`).

/// One bound argument (D1 numbers are doubles: micro-dollars stay < 2^53).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Int(i64),
    Text(String),
    Null,
}

impl From<i64> for Arg {
    fn from(n: i64) -> Self {
        Arg::Int(n)
    }
}
impl From<&str> for Arg {
    fn from(s: &str) -> Self {
        Arg::Text(s.to_string())
    }
}
impl From<&String> for Arg {
    fn from(s: &String) -> Self {
        Arg::Text(s.clone())
    }
}
impl From<String> for Arg {
    fn from(s: String) -> Self {
        Arg::Text(s)
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        v.map_or(Arg::Null, Arg::Int)
    }
}

impl From<Option<&str>> for Arg {
    fn from(s: Option<&str>) -> Self {
        s.map(Arg::from).unwrap_or(Arg::Null)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stmt {
    pub sql: &'static str,
    pub args: Vec<Arg>,
}

pub fn stmt(sql: &'static str, args: Vec<Arg>) -> Stmt {
    Stmt { sql, args }
}
