//! Property test of the ledger: random sequences of credit / hold / settle /
//! release / expire / clock-advance run the REAL statements of
//! `cloudbox::ledger_sql` (the ones the Worker sends to D1) on SQLite with
//! the real migrations, each plan in one transaction like a D1 batch. A
//! small reference model predicts every outcome, and after every step the
//! database is checked against the invariants:
//!
//! 1. balance = credits + adjustments − settled usage (model, account row and ledger sums agree);
//! 2. held = the sum of open holds, and available = balance − held ≥ 0;
//! 3. every hold is resolved at most once (one hold entry; at most one usage
//!    and one release entry; a second settle/release/expire changes nothing);
//! 4. each key's daily and monthly spend (plus open holds) never exceeds its limits,
//!    and equals what its settled holds charged;
//! 5. every entry's balanceAfter is the balance after it; total spent = usage charged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use cloudbox::billing::ledger_sql::{self as sql, ReleaseKind, Usage};
use cloudbox::billing::rules::{self, BudgetState};
use cloudbox::common::sql::{Arg, Stmt};
use cloudbox::keys::api_key::KeyType;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rusqlite::{params, types::Value, Connection};

const ACCOUNT: &str = "acct_000000000000000000000001";
const KEYS: [&str; 2] = ["key_limited", "key_unlimited"];
const START_MS: i64 = 1_795_300_000_000; // 2026-11-21T21:46:40Z, near a day and month edge

#[derive(Debug, Clone)]
enum Op {
    Credit(i64),
    Hold {
        key: usize,
        amount: i64,
        life_ms: i64,
    },
    Settle {
        hold: usize,
        actual: i64,
    },
    Release {
        hold: usize,
    },
    Expire,
    Advance(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (-3_000_000i64..10_000_000).prop_map(Op::Credit),
        5 => (0usize..2, 1i64..3_000_000, 60_000i64..3 * 86_400_000)
            .prop_map(|(key, amount, life_ms)| Op::Hold { key, amount, life_ms }),
        4 => (0usize..64, 0i64..4_000_000).prop_map(|(hold, actual)| Op::Settle { hold, actual }),
        2 => (0usize..64).prop_map(|hold| Op::Release { hold }),
        1 => Just(Op::Expire),
        2 => (0i64..40 * 3_600_000).prop_map(Op::Advance),
    ]
}

fn limits() -> impl Strategy<Value = (Option<i64>, Option<i64>)> {
    (
        proptest::option::of(0i64..6_000_000),
        proptest::option::of(0i64..15_000_000),
    )
}

fn open_db(daily: Option<i64>, monthly: Option<i64>) -> Connection {
    let db = Connection::open_in_memory().unwrap();
    db.execute_batch(include_str!("../migrations/0001_accounts_and_keys.sql"))
        .unwrap();
    db.execute_batch(include_str!("../migrations/0002_billing.sql"))
        .unwrap();
    db.execute(
        "INSERT INTO accounts (id, created_at, updated_at) VALUES (?1, 0, 0)",
        params![ACCOUNT],
    )
    .unwrap();
    for (i, key) in KEYS.iter().enumerate() {
        let (d, m) = if i == 0 {
            (daily, monthly)
        } else {
            (None, None)
        };
        db.execute(
            "INSERT INTO api_keys (id, account_id, key_hash, key_prefix, name, key_type, permissions, \
             daily_limit_micros, monthly_limit_micros, created_at, updated_at) \
             VALUES (?1, ?2, ?3, 'cbx_', 'k', 'standard', 'execute', ?4, ?5, 0, 0)",
            params![key, ACCOUNT, format!("hash-{key}"), d, m],
        )
        .unwrap();
    }
    run(
        &db,
        &[Stmt {
            sql: sql::ENSURE_ACCOUNT,
            args: vec![ACCOUNT.into(), 0i64.into()],
        }],
    );
    db
}

fn value(arg: &Arg) -> Value {
    match arg {
        Arg::Int(n) => Value::Integer(*n),
        Arg::Text(s) => Value::Text(s.clone()),
        Arg::Null => Value::Null,
    }
}

/// Runs a plan like a D1 batch: one transaction; returns the last
/// statement's first column of its first row (the plan's `applied`).
fn run(db: &Connection, plan: &[Stmt]) -> i64 {
    db.execute_batch("BEGIN").unwrap();
    let mut last = 0;
    for s in plan {
        let mut st = db.prepare(s.sql).unwrap();
        let args: Vec<Value> = s.args.iter().map(value).collect();
        let mut rows = st.query(rusqlite::params_from_iter(args)).unwrap();
        last = match rows.next().unwrap() {
            Some(row) => row.get::<_, Option<i64>>(0).unwrap().unwrap_or(0),
            None => 0,
        };
    }
    db.execute_batch("COMMIT").unwrap();
    last
}

fn budget(db: &Connection, key: &str, now: i64) -> BudgetState {
    let s = sql::budget_of_key(key, now);
    let mut st = db.prepare(s.sql).unwrap();
    let args: Vec<Value> = s.args.iter().map(value).collect();
    st.query_row(rusqlite::params_from_iter(args), |r| {
        Ok(BudgetState {
            daily_limit: r.get("daily_limit_micros")?,
            monthly_limit: r.get("monthly_limit_micros")?,
            balance: r.get("balance_micros")?,
            held: r.get("held_micros")?,
            total_spent: r.get("total_spent_micros")?,
            spent_today: r.get("spent_today")?,
            held_today: r.get("held_today")?,
            spent_month: r.get("spent_month")?,
            held_month: r.get("held_month")?,
        })
    })
    .unwrap()
}

#[derive(Debug, Clone)]
struct ModelHold {
    id: String,
    key: usize,
    amount: i64,
    day: String,
    month: String,
    expires_at: i64,
    open: bool,
}

#[derive(Default)]
struct Model {
    balance: i64,
    credits: i64,
    charged: i64,
    holds: Vec<ModelHold>,
    /// (key, period) → spent
    spent: BTreeMap<(usize, String), i64>,
}

impl Model {
    fn held(&self) -> i64 {
        self.holds.iter().filter(|h| h.open).map(|h| h.amount).sum()
    }
    fn committed(&self, key: usize, period: &str) -> i64 {
        let spent = self
            .spent
            .get(&(key, period.to_string()))
            .copied()
            .unwrap_or(0);
        let held: i64 = self
            .holds
            .iter()
            .filter(|h| h.open && h.key == key && (h.day == period || h.month == period))
            .map(|h| h.amount)
            .sum();
        spent + held
    }
}

static STEPS: AtomicU64 = AtomicU64::new(0);
/// How many holds, settlements, releases and expiries actually applied.
static APPLIED: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

fn count(i: usize, applied: bool) {
    if applied {
        APPLIED[i].fetch_add(1, Ordering::Relaxed);
    }
}
static CASES: AtomicU64 = AtomicU64::new(0);

fn q(db: &Connection, sql: &str) -> i64 {
    db.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
        .unwrap()
        .unwrap_or(0)
}

fn check_invariants(db: &Connection, m: &Model, daily: Option<i64>, monthly: Option<i64>) {
    let (balance, held, spent): (i64, i64, i64) = db
        .query_row(
            "SELECT balance_micros, held_micros, total_spent_micros FROM billing_accounts",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    // 1. balance = credits − settled usage, three ways.
    assert_eq!(balance, m.credits - m.charged, "model balance");
    assert_eq!(balance, m.balance);
    let credits = q(
        db,
        "SELECT SUM(amount_micros) FROM ledger_entries WHERE type IN ('credit','adjustment')",
    );
    let usage = q(
        db,
        "SELECT -SUM(amount_micros) FROM ledger_entries WHERE type = 'usage'",
    );
    assert_eq!(balance, credits - usage, "ledger sums");
    assert_eq!(spent, usage, "total spent");
    assert_eq!(
        usage,
        q(
            db,
            "SELECT SUM(charged_micros) FROM holds WHERE status = 'settled'"
        )
    );
    // 2. held = open holds; available ≥ 0.
    assert_eq!(held, m.held());
    assert_eq!(
        held,
        q(
            db,
            "SELECT SUM(amount_micros) FROM holds WHERE status = 'held'"
        )
    );
    assert!(balance - held >= 0, "available {}", balance - held);
    // 3. each hold resolved at most once.
    let mut st = db
        .prepare(
            "SELECT h.id, h.status, \
               (SELECT COUNT(*) FROM ledger_entries e WHERE e.hold_id = h.id AND e.type = 'hold'), \
               (SELECT COUNT(*) FROM ledger_entries e WHERE e.hold_id = h.id AND e.type = 'usage'), \
               (SELECT COUNT(*) FROM ledger_entries e WHERE e.hold_id = h.id AND e.type = 'release') \
             FROM holds h",
        )
        .unwrap();
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (id, status, holds, usages, releases) = row.unwrap();
        assert_eq!(holds, 1, "{id}");
        assert!(
            usages <= 1 && releases <= 1,
            "{id}: {usages} usage, {releases} release"
        );
        match status.as_str() {
            "held" => assert_eq!(usages + releases, 0, "{id}"),
            "settled" => assert_eq!(usages, 1, "{id}"),
            _ => assert_eq!((usages, releases), (0, 1), "{id} {status}"),
        }
        let open = m.holds.iter().any(|h| h.id == id && h.open);
        assert_eq!(open, status == "held", "{id}");
    }
    // 4. spend per key and period: matches the model and stays within limits.
    let mut st = db
        .prepare("SELECT key_id, period, spent_micros, held_micros FROM key_spend")
        .unwrap();
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (key_id, period, spent, held) = row.unwrap();
        let key = KEYS.iter().position(|k| *k == key_id).unwrap();
        let model_spent = m.spent.get(&(key, period.clone())).copied().unwrap_or(0);
        assert_eq!(spent, model_spent, "{key_id} {period} spent");
        assert_eq!(spent + held, m.committed(key, &period), "{key_id} {period}");
        if key == 0 {
            let limit = if period.starts_with("d:") {
                daily
            } else {
                monthly
            };
            if let Some(limit) = limit {
                assert!(spent + held <= limit, "{period}: {spent}+{held} > {limit}");
            }
        }
    }
    // 5. balanceAfter walks the balance, entry by entry.
    let mut st = db
        .prepare(
            "SELECT type, amount_micros, balance_after_micros FROM ledger_entries ORDER BY seq",
        )
        .unwrap();
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .unwrap();
    let mut running = 0;
    for row in rows {
        let (kind, amount, after) = row.unwrap();
        if matches!(kind.as_str(), "credit" | "adjustment" | "usage") {
            running += amount;
        }
        assert_eq!(after, running, "{kind} {amount}");
    }
    assert_eq!(running, balance);
}

fn run_case(ops: &[Op], daily: Option<i64>, monthly: Option<i64>) {
    let db = open_db(daily, monthly);
    let mut m = Model::default();
    let mut now = START_MS;
    let mut n = 0u64;
    let mut fresh = |p: &str| {
        n += 1;
        format!("{p}{n}")
    };
    for op in ops {
        match op {
            Op::Credit(amount) => {
                let entry = fresh("txn_");
                let applied = run(
                    &db,
                    &sql::credit_plan(&sql::Credit {
                        entry_id: &entry,
                        account_id: ACCOUNT,
                        key_id: None,
                        amount: *amount,
                        description: "credit",
                        now_ms: now,
                    }),
                );
                let expect = *amount != 0 && m.balance + amount >= m.held();
                assert_eq!(applied == 1, expect, "credit {amount}");
                if expect {
                    m.balance += amount;
                    m.credits += amount;
                }
            }
            Op::Hold {
                key,
                amount,
                life_ms,
            } => {
                // The glue sizes a hold with the pure rule, then the guard
                // re-checks it in SQL. Ask for the raw amount half the time
                // (to exercise the guard) and the sized amount otherwise.
                let state = budget(&db, KEYS[*key], now);
                let sized = rules::hold_amount(Some(*amount), 1_000_000, &state);
                let ask = if amount % 2 == 0 { *amount } else { sized };
                let (day, month) = rules::periods(now);
                let (key_daily, key_monthly) = if *key == 0 {
                    (daily, monthly)
                } else {
                    (None, None)
                };
                let room =
                    |p: &str, l: Option<i64>| l.is_none_or(|l| m.committed(*key, p) + ask <= l);
                let expect = ask > 0
                    && m.balance - m.held() >= ask
                    && room(&day, key_daily)
                    && room(&month, key_monthly);
                // The pure budget check agrees with the SQL guard's view.
                let refused = rules::check_budget(KeyType::Standard, &state).is_err();
                if refused {
                    assert!(sized == 0, "refused budget yet sized {sized}");
                }
                let hold_id = fresh("hold_");
                let entry = fresh("txn_");
                let applied = run(
                    &db,
                    &sql::hold_plan(&sql::Hold {
                        hold_id: &hold_id,
                        entry_id: &entry,
                        key_id: KEYS[*key],
                        amount: ask,
                        run_id: Some("run_x"),
                        description: "hold",
                        now_ms: now,
                        expires_at_ms: now + life_ms,
                    }),
                );
                assert_eq!(
                    applied == 1,
                    expect,
                    "hold {ask} (asked {amount}) {state:?}"
                );
                count(0, expect);
                if expect {
                    m.holds.push(ModelHold {
                        id: hold_id,
                        key: *key,
                        amount: ask,
                        day,
                        month,
                        expires_at: now + life_ms,
                        open: true,
                    });
                }
            }
            Op::Settle { hold, actual } => {
                if m.holds.is_empty() {
                    continue;
                }
                let i = hold % m.holds.len();
                let h = m.holds[i].clone();
                let (u, r, v) = (fresh("txn_"), fresh("txn_"), fresh("use_"));
                let applied = run(
                    &db,
                    &sql::settle_plan(&sql::Settle {
                        hold_id: &h.id,
                        usage_entry_id: &u,
                        release_entry_id: &r,
                        usage_event_id: &v,
                        usage: Usage {
                            input_tokens: 10,
                            output_tokens: 5,
                            cost_micros: *actual,
                        },
                        description: "run",
                        now_ms: now,
                    }),
                );
                assert_eq!(
                    applied == 1,
                    h.open,
                    "settle of {} (open: {})",
                    h.id,
                    h.open
                );
                count(1, h.open);
                if h.open {
                    let charge = rules::settle_charge(h.amount, *actual);
                    m.balance -= charge;
                    m.charged += charge;
                    *m.spent.entry((h.key, h.day.clone())).or_default() += charge;
                    *m.spent.entry((h.key, h.month.clone())).or_default() += charge;
                    m.holds[i].open = false;
                }
            }
            Op::Release { hold } => {
                if m.holds.is_empty() {
                    continue;
                }
                let i = hold % m.holds.len();
                let entry = fresh("txn_");
                let applied = run(
                    &db,
                    &sql::release_plan(&m.holds[i].id, &entry, ReleaseKind::Release, "r", now),
                );
                assert_eq!(applied == 1, m.holds[i].open);
                count(2, m.holds[i].open);
                m.holds[i].open = false;
            }
            Op::Expire => {
                let ids: Vec<String> = {
                    let mut st = db.prepare(sql::EXPIRED_HOLDS).unwrap();
                    st.query_map(params![now, 1000], |r| r.get(0))
                        .unwrap()
                        .map(Result::unwrap)
                        .collect()
                };
                let expected: Vec<String> = m
                    .holds
                    .iter()
                    .filter(|h| h.open && h.expires_at <= now)
                    .map(|h| h.id.clone())
                    .collect();
                let mut sorted = ids.clone();
                sorted.sort();
                let mut want = expected.clone();
                want.sort();
                assert_eq!(sorted, want, "expired holds");
                // Sweep every open hold: only the expired ones may go.
                let all: Vec<String> = m.holds.iter().map(|h| h.id.clone()).collect();
                for id in all {
                    let entry = fresh("txn_");
                    let applied = run(
                        &db,
                        &sql::release_plan(&id, &entry, ReleaseKind::Expire, "x", now),
                    );
                    assert_eq!(applied == 1, expected.contains(&id), "expire {id}");
                    count(3, applied == 1);
                }
                for h in m.holds.iter_mut() {
                    if expected.contains(&h.id) {
                        h.open = false;
                    }
                }
            }
            Op::Advance(ms) => now += ms,
        }
        STEPS.fetch_add(1, Ordering::Relaxed);
        check_invariants(&db, &m, daily, monthly);
    }
}

#[test]
fn the_ledger_keeps_its_invariants_under_random_operations() {
    let cases = std::env::var("LEDGER_PROP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    let strategy = (limits(), proptest::collection::vec(op(), 1..120));
    runner
        .run(&strategy, |((daily, monthly), ops)| {
            CASES.fetch_add(1, Ordering::Relaxed);
            run_case(&ops, daily, monthly);
            Ok(())
        })
        .unwrap();
    let steps = STEPS.load(Ordering::Relaxed);
    let applied: Vec<u64> = APPLIED.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    eprintln!(
        "ledger property test: {} cases, {steps} random steps, invariants checked after each; \
         applied: {} holds, {} settlements, {} releases, {} expiries",
        CASES.load(Ordering::Relaxed),
        applied[0],
        applied[1],
        applied[2],
        applied[3]
    );
    assert!(steps > 1000);
    assert!(
        applied.iter().all(|n| *n > 50),
        "too few operations applied: {applied:?}"
    );
}
