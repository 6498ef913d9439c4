//! The grading summary in a Computer DO's SQLite (pure): tables that hold a
//! `grade::Summary` as rows, one per fact, and every statement the DO runs
//! on them, as plans (`common::sql`). The tests below run the same
//! statements on SQLite.
//!
//! Each append records its receipt's fact with one `INSERT OR IGNORE` on a
//! primary key (a known fact changes nothing, as in `Summary::apply`), and
//! a grade loads only the rows its rubric names, in one statement of
//! primary-key lookups: neither grows with the log. A computer created
//! before these tables has receipts and no summary; its meta lacks
//! `VERSION_KEY`, and its first grade rebuilds the summary from the log.

use serde::Deserialize;
use serde_json::Value;

use crate::common::sql::{stmt, Arg, Stmt};
use crate::computers::grade::{Fact, Summary, Wanted};

/// `meta` key whose value says which summary the tables hold.
pub const VERSION_KEY: &str = "summaryVersion";
/// Bump it when what the tables hold changes: every computer then rebuilds
/// its summary from its log once.
pub const VERSION: &str = "1";

pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS grade_reads (path TEXT PRIMARY KEY, first_seq INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS grade_writes (path TEXT PRIMARY KEY)",
    "CREATE TABLE IF NOT EXISTS grade_asks (who TEXT PRIMARY KEY)",
    // A submission without a decision is (objective, 0, ''): a decision may
    // itself be '', and NULLs in a key never equal each other, so every
    // repeat would add a row.
    "CREATE TABLE IF NOT EXISTS grade_submits (objective TEXT NOT NULL, decided INTEGER NOT NULL, \
     decision TEXT NOT NULL, PRIMARY KEY (objective, decided, decision))",
];

const CLEAR: [&str; 4] = [
    "DELETE FROM grade_reads",
    "DELETE FROM grade_writes",
    "DELETE FROM grade_asks",
    "DELETE FROM grade_submits",
];

pub const RECORD_READ: &str = "INSERT OR IGNORE INTO grade_reads (path, first_seq) VALUES (?1, ?2)";
pub const RECORD_WRITE: &str = "INSERT OR IGNORE INTO grade_writes (path) VALUES (?1)";
pub const RECORD_ASK: &str = "INSERT OR IGNORE INTO grade_asks (who) VALUES (?1)";
pub const RECORD_SUBMIT: &str =
    "INSERT OR IGNORE INTO grade_submits (objective, decided, decision) VALUES (?1, ?2, ?3)";

pub const SET_VERSION: &str =
    "INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v";

/// The rows a rubric names, as facts: each `?n` is a JSON array of keys
/// (one bound argument however long the rubric), and each key is one
/// primary-key lookup. `?5` holds `[objective, decision]` pairs.
pub const LOOKUP: &str = "\
    SELECT 'read' AS fact, r.path AS a, NULL AS b, r.first_seq AS seq \
      FROM json_each(?1) j JOIN grade_reads r ON r.path = j.value \
    UNION ALL SELECT 'wrote', w.path, NULL, NULL \
      FROM json_each(?2) j JOIN grade_writes w ON w.path = j.value \
    UNION ALL SELECT 'asked', k.who, NULL, NULL \
      FROM json_each(?3) j JOIN grade_asks k ON k.who = j.value \
    UNION ALL SELECT 'submitted', j.value, NULL, NULL \
      FROM json_each(?4) j \
      WHERE EXISTS (SELECT 1 FROM grade_submits s WHERE s.objective = j.value) \
    UNION ALL SELECT 'submitted', s.objective, s.decision, NULL \
      FROM json_each(?5) j JOIN grade_submits s \
        ON s.objective = json_extract(j.value, '$[0]') AND s.decided = 1 \
       AND s.decision = json_extract(j.value, '$[1]')";

/// One row of `LOOKUP`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FactRow {
    pub fact: String,
    pub a: String,
    pub b: Option<String>,
    /// A DO's SQLite answers numbers as doubles; a `seq` stays below 2^53.
    pub seq: Option<f64>,
}

/// The statement that records one fact (on each append).
pub fn record(fact: Fact<'_>) -> Stmt {
    match fact {
        Fact::Read { path, seq } => stmt(RECORD_READ, vec![path.into(), Arg::Int(seq as i64)]),
        Fact::Wrote { path } => stmt(RECORD_WRITE, vec![path.into()]),
        Fact::Asked { who } => stmt(RECORD_ASK, vec![who.into()]),
        Fact::Submitted {
            objective,
            decision,
        } => stmt(
            RECORD_SUBMIT,
            vec![
                objective.into(),
                Arg::Int(i64::from(decision.is_some())),
                decision.unwrap_or("").into(),
            ],
        ),
    }
}

/// Whether the tables hold the summary of the whole log, given the meta value.
pub fn is_current(version: Option<&str>) -> bool {
    version == Some(VERSION)
}

/// Empties the summary (a reset empties the log with it) and marks it current.
pub fn clear() -> Vec<Stmt> {
    CLEAR
        .iter()
        .map(|sql| stmt(sql, vec![]))
        .chain([stmt(SET_VERSION, vec![VERSION_KEY.into(), VERSION.into()])])
        .collect()
}

/// Replaces the tables' content with `summary` (rebuilt from the whole
/// log) and marks it current: one row per fact, not one per receipt.
pub fn rebuild(summary: &Summary) -> Vec<Stmt> {
    let mut plan = clear();
    plan.extend(summary.facts().map(record));
    plan
}

fn keys<'a>(keys: impl Iterator<Item = &'a str>) -> Arg {
    Value::Array(keys.map(Value::from).collect())
        .to_string()
        .into()
}

/// The lookup of what `wanted` names; none when it names nothing (a rubric
/// of ungraded criteria only).
pub fn lookup(wanted: &Wanted) -> Option<Stmt> {
    if wanted.is_empty() {
        return None;
    }
    let pairs = Value::Array(
        wanted
            .decisions
            .iter()
            .map(|(o, d)| Value::Array(vec![Value::from(*o), Value::from(*d)]))
            .collect(),
    );
    Some(stmt(
        LOOKUP,
        vec![
            keys(wanted.reads.iter().copied()),
            keys(wanted.writes.iter().copied()),
            keys(wanted.asks.iter().copied()),
            keys(wanted.objectives.iter().copied()),
            pairs.to_string().into(),
        ],
    ))
}

/// The summary the rows of `LOOKUP` describe.
pub fn summary_of(rows: &[FactRow]) -> Summary {
    let mut summary = Summary::default();
    for row in rows {
        let fact = match (row.fact.as_str(), row.seq) {
            ("read", Some(seq)) => Fact::Read {
                path: &row.a,
                seq: seq as u64,
            },
            ("wrote", _) => Fact::Wrote { path: &row.a },
            ("asked", _) => Fact::Asked { who: &row.a },
            ("submitted", _) => Fact::Submitted {
                objective: &row.a,
                decision: row.b.as_deref(),
            },
            _ => continue, // LOOKUP answers no other
        };
        summary.apply(fact);
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::computers::grade::{self, testing};
    use crate::computers::receipts::Receipt;
    use proptest::prelude::*;
    use rusqlite::{params_from_iter, types::Value as Sql, Connection};

    /// Every row of the tables as facts (the tests' view of the whole summary).
    const ALL_FACTS: &str = "\
        SELECT 'read' AS fact, path AS a, NULL AS b, first_seq AS seq FROM grade_reads \
        UNION ALL SELECT 'wrote', path, NULL, NULL FROM grade_writes \
        UNION ALL SELECT 'asked', who, NULL, NULL FROM grade_asks \
        UNION ALL SELECT 'submitted', objective, CASE decided WHEN 1 THEN decision END, NULL \
          FROM grade_submits";

    fn db() -> Connection {
        let db = Connection::open_in_memory().unwrap();
        db.execute(
            "CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
            [],
        )
        .unwrap();
        for sql in SCHEMA {
            db.execute(sql, []).unwrap();
        }
        db
    }

    fn args(s: &Stmt) -> Vec<Sql> {
        s.args
            .iter()
            .map(|a| match a {
                Arg::Int(n) => Sql::Integer(*n),
                Arg::Text(t) => Sql::Text(t.clone()),
                Arg::Null => Sql::Null,
            })
            .collect()
    }

    fn exec(db: &Connection, s: &Stmt) {
        db.execute(s.sql, params_from_iter(args(s))).unwrap();
    }

    fn fact_rows(db: &Connection, sql: &str, args: Vec<Sql>) -> Vec<FactRow> {
        let mut q = db.prepare(sql).unwrap();
        q.query_map(params_from_iter(args), |r| {
            Ok(FactRow {
                fact: r.get(0)?,
                a: r.get(1)?,
                b: r.get(2)?,
                seq: r.get::<_, Option<i64>>(3)?.map(|n| n as f64),
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    fn whole(db: &Connection) -> Summary {
        summary_of(&fact_rows(db, ALL_FACTS, vec![]))
    }

    /// What the DO's append does for the summary.
    fn append(db: &Connection, receipt: &Receipt) {
        if let Some(fact) = Fact::of(receipt) {
            exec(db, &record(fact));
        }
    }

    fn version(db: &Connection) -> Option<String> {
        db.query_row("SELECT v FROM meta WHERE k = ?1", [VERSION_KEY], |r| {
            r.get(0)
        })
        .ok()
    }

    fn looked_up(db: &Connection, wanted: &Wanted) -> Summary {
        match lookup(wanted) {
            None => Summary::default(),
            Some(s) => summary_of(&fact_rows(db, s.sql, args(&s))),
        }
    }

    proptest! {
        #[test]
        fn the_tables_hold_the_summary_of_the_log(
            events in testing::events(),
            rubric in testing::rubric(),
        ) {
            let log = testing::log(&events);
            let rebuilt = Summary::from_log(&log);
            let db = db();
            for receipt in &log {
                append(&db, receipt);
            }
            prop_assert_eq!(&whole(&db), &rebuilt);
            // One row per distinct fact, however often the log repeats it.
            let rows: i64 = db
                .query_row(&format!("SELECT COUNT(*) FROM ({ALL_FACTS})"), [], |r| r.get(0))
                .unwrap();
            prop_assert_eq!(rows as usize, distinct_facts(&log));

            // A grade loads only what the rubric names, and grades like the log.
            let wanted = Wanted::of(&rubric);
            let loaded = looked_up(&db, &wanted);
            prop_assert_eq!(&loaded, &testing::restricted(&rebuilt, &wanted));
            prop_assert_eq!(
                grade::grade_summary(&rubric, &loaded),
                grade::grade(&rubric, &log)
            );

            // A computer from before the summary: some rows of a stale
            // summary (or none), then the rebuild from its log.
            let old = db_with_prefix(&log, events.len() / 2);
            prop_assert!(!is_current(version(&old).as_deref()));
            for s in rebuild(&rebuilt) {
                exec(&old, &s);
            }
            prop_assert_eq!(&whole(&old), &rebuilt);
            prop_assert!(is_current(version(&old).as_deref()));
        }
    }

    fn distinct_facts(log: &[Receipt]) -> usize {
        let keys: std::collections::BTreeSet<(u8, &str, Option<&str>)> = log
            .iter()
            .filter_map(Fact::of)
            .map(|f| match f {
                Fact::Read { path, .. } => (0, path, None),
                Fact::Wrote { path } => (1, path, None),
                Fact::Asked { who } => (2, who, None),
                Fact::Submitted {
                    objective,
                    decision,
                } => (3, objective, decision),
            })
            .collect();
        keys.len()
    }

    fn db_with_prefix(log: &[Receipt], n: usize) -> Connection {
        let db = db();
        for receipt in &log[..n] {
            append(&db, receipt);
        }
        db
    }

    fn wanted_everything() -> Wanted<'static> {
        Wanted {
            reads: ["a", "b"].into(),
            writes: ["w"].into(),
            asks: ["x"].into(),
            objectives: ["o"].into(),
            decisions: [("o", ""), ("p", "approve")].into(),
        }
    }

    #[test]
    fn a_grade_looks_rows_up_by_key_and_scans_no_table() {
        let db = db();
        let s = lookup(&wanted_everything()).unwrap();
        let mut q = db
            .prepare(&format!("EXPLAIN QUERY PLAN {}", s.sql))
            .unwrap();
        let plan: Vec<String> = q
            .query_map(params_from_iter(args(&s)), |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for table in ["grade_reads", "grade_writes", "grade_asks", "grade_submits"] {
            assert!(
                plan.iter()
                    .any(|d| d.starts_with("SEARCH") && d.contains(&format!("{table}_1"))),
                "{table} is not searched by key: {plan:#?}"
            );
        }
        assert!(
            plan.iter()
                .filter(|d| d.starts_with("SCAN"))
                .all(|d| d.contains("VIRTUAL TABLE")),
            "only the key lists are scanned: {plan:#?}"
        );
    }

    #[test]
    fn no_decision_and_an_empty_decision_are_different_rows() {
        let db = db();
        for fact in [
            Fact::Submitted {
                objective: "o",
                decision: None,
            },
            Fact::Submitted {
                objective: "o",
                decision: None,
            },
            Fact::Submitted {
                objective: "p",
                decision: Some(""),
            },
        ] {
            exec(&db, &record(fact));
        }
        let rows: i64 = db
            .query_row("SELECT COUNT(*) FROM grade_submits", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2, "a repeated submission adds no row");
        let loaded = looked_up(&db, &wanted_everything());
        let mut expected = Summary::default();
        expected.apply(Fact::Submitted {
            objective: "o",
            decision: None,
        });
        assert_eq!(loaded, expected, "o was submitted, but not with ''");
        let only_p = Wanted {
            decisions: [("p", "")].into(),
            ..Wanted::default()
        };
        let mut p = Summary::default();
        p.apply(Fact::Submitted {
            objective: "p",
            decision: Some(""),
        });
        assert_eq!(looked_up(&db, &only_p), p);
    }

    #[test]
    fn clear_empties_the_summary_and_marks_it_current() {
        let db = db();
        let log = testing::log(&[
            ("read".into(), serde_json::json!({"path": "a"})),
            ("write".into(), serde_json::json!({"path": "w"})),
            ("ask".into(), serde_json::json!({"who": "x"})),
            ("submit".into(), serde_json::json!({"objective": "o"})),
        ]);
        log.iter().for_each(|r| append(&db, r));
        assert_eq!(whole(&db).facts().count(), 4);
        assert_eq!(version(&db), None);
        clear().iter().for_each(|s| exec(&db, s));
        assert_eq!(whole(&db), Summary::default());
        assert_eq!(version(&db).as_deref(), Some(VERSION));
        assert!(lookup(&Wanted::default()).is_none(), "nothing to look up");
    }
}
