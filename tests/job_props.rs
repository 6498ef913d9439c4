//! Property test of the job state machine of a workspace's DO: random
//! sequences of enqueue / drive / task end / cancel / eviction / time
//! passing (with the watchdog's alarm every `WATCHDOG_MS`) / the hold sweep
//! run the REAL statements — the DO's (`executes::queue`, `runner::job`) on
//! one SQLite database, the ledger's (`billing::ledger_sql`, with the real
//! migrations) on another, as D1 — in the order the DO glue runs them
//! (`src/executes/durable/{ending,watchdog,driver}.rs`), with evictions and
//! failed settles cutting an ending short at random points. After every
//! step:
//!
//! 1. every job ends exactly once: at most one recorded ending, and its
//!    status is the ending's and never changes;
//! 2. every job's hold is settled exactly once: at most one usage event per
//!    job (exactly one once its ending says settled), each hold resolved at
//!    most once;
//! 3. after each alarm, no job stays queued past the queue limit or
//!    running past its deadline + the watchdog's patience;
//! 4. a job's hold outlives the longest life the job can have: no open
//!    job's hold has expired, and the sweep never releases an open job's.
//!
//! `JOB_PROPS_STEPS` sets the number of steps (default 20 000).

use std::collections::BTreeMap;

use cloudbox::billing::ledger_sql::{self as sql, ReleaseKind, Usage};
use cloudbox::common::sql::{Arg, Stmt};
use cloudbox::executes::execution::{
    self, ExecStatus, MAX_QUEUED, MAX_QUEUE_WAIT_MS, STUCK_AFTER_MS, WATCHDOG_MS,
};
use cloudbox::executes::queue;
use cloudbox::runner::job::{self, Action, JobView, Patience};
use cloudbox::runner::lifecycle;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rusqlite::{params, types::Value, Connection};

const ACCOUNT: &str = "acct_000000000000000000000001";
const KEY: &str = "key_jobs";
const START_MS: i64 = 1_795_300_000_000;
const PATIENCE: Patience = Patience {
    queue_wait_ms: MAX_QUEUE_WAIT_MS,
    overrun_ms: STUCK_AFTER_MS,
};
/// Task timeouts the jobs draw from (the contract allows up to an hour).
const TIMEOUTS_MS: [u64; 4] = [60_000, 5 * 60_000, 20 * 60_000, 60 * 60_000];
const HOLD_MICROS: i64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The ending is carried out in full.
    None,
    /// The instance is evicted after the settle applied in D1, before the
    /// DO marked it.
    AfterSettle,
    /// Evicted before the body was written.
    BeforeBody,
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue { timeout: usize },
    Drive,
    TaskEnds { ok: bool, tokens: i64, cut: Cut },
    Cancel { job: usize, cut: Cut },
    Evict,
    FailNextSettle,
    Advance(i64),
    Sweep,
}

fn cut() -> impl Strategy<Value = Cut> {
    prop_oneof![6 => Just(Cut::None), 1 => Just(Cut::AfterSettle), 1 => Just(Cut::BeforeBody)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..TIMEOUTS_MS.len()).prop_map(|timeout| Op::Enqueue { timeout }),
        4 => Just(Op::Drive),
        3 => (any::<bool>(), 0i64..50_000, cut()).prop_map(|(ok, tokens, cut)| Op::TaskEnds { ok, tokens, cut }),
        1 => (0usize..64, cut()).prop_map(|(job, cut)| Op::Cancel { job, cut }),
        1 => Just(Op::Evict),
        1 => Just(Op::FailNextSettle),
        4 => prop_oneof![Just(1_000i64), Just(60_000), Just(10 * 60_000)].prop_map(Op::Advance),
        1 => Just(Op::Sweep),
    ]
}

fn value(arg: &Arg) -> Value {
    match arg {
        Arg::Int(n) => Value::Integer(*n),
        Arg::Text(s) => Value::Text(s.clone()),
        Arg::Null => Value::Null,
    }
}

/// Runs a plan in one transaction (a D1 batch; a DO's statements with no
/// await between); answers the last statement's first column, if any.
fn run(db: &Connection, plan: &[Stmt]) -> Option<Value> {
    db.execute_batch("BEGIN").unwrap();
    let mut last = None;
    for s in plan {
        let mut st = db.prepare_cached(s.sql).unwrap();
        let args: Vec<Value> = s.args.iter().map(value).collect();
        let mut rows = st.query(rusqlite::params_from_iter(args)).unwrap();
        last = rows
            .next()
            .unwrap()
            .map(|row| row.get::<_, Value>(0).unwrap());
    }
    db.execute_batch("COMMIT").unwrap();
    last
}

fn int(v: Option<Value>) -> i64 {
    match v {
        Some(Value::Integer(n)) => n,
        _ => 0,
    }
}

fn open_d1() -> Connection {
    let db = Connection::open_in_memory().unwrap();
    for migration in [
        include_str!("../migrations/0001_accounts_and_keys.sql"),
        include_str!("../migrations/0002_billing.sql"),
        include_str!("../migrations/0005_run_usage.sql"),
    ] {
        db.execute_batch(migration).unwrap();
    }
    db.execute(
        "INSERT INTO accounts (id, created_at, updated_at) VALUES (?1, 0, 0)",
        params![ACCOUNT],
    )
    .unwrap();
    db.execute(
        "INSERT INTO api_keys (id, account_id, key_hash, key_prefix, name, key_type, permissions, \
         created_at, updated_at) VALUES (?1, ?2, 'hash', 'cbx_', 'k', 'standard', 'execute', 0, 0)",
        params![KEY, ACCOUNT],
    )
    .unwrap();
    run(
        &db,
        &[Stmt {
            sql: sql::ENSURE_ACCOUNT,
            args: vec![ACCOUNT.into(), 0i64.into()],
        }],
    );
    let credit = sql::credit_plan(&sql::Credit {
        entry_id: "txn_credit",
        account_id: ACCOUNT,
        key_id: None,
        amount: 1_000_000_000_000,
        description: "top-up",
        now_ms: 0,
    });
    assert_eq!(int(run(&db, &credit)), 1);
    db
}

fn open_do() -> Connection {
    let db = Connection::open_in_memory().unwrap();
    for stmt in queue::SCHEMA
        .iter()
        .chain(job::SCHEMA)
        .chain(lifecycle::SCHEMA)
    {
        db.execute_batch(stmt).unwrap();
    }
    db
}

/// The scheduled sweep (`ledger_d1::sweep`): every hold expired at `now`
/// is released; answers the ones it released.
fn sweep_expired(d1: &Connection, now: i64) -> Vec<String> {
    let mut st = d1.prepare_cached(sql::EXPIRED_HOLDS).unwrap();
    let expired: Vec<String> = st
        .query_map(params![now, 200], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    drop(st);
    expired
        .into_iter()
        .filter(|hold_id| {
            let entry = format!("txn_expire_{hold_id}");
            let plan = sql::release_plan(hold_id, &entry, ReleaseKind::Expire, "expired", now);
            int(run(d1, &plan)) == 1
        })
        .collect()
}

/// One execute as the DO's row shows it.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    status: String,
    created_ms: i64,
    started_ms: Option<i64>,
    dispatched: bool,
    body: bool,
}

fn rows(db: &Connection, s: &Stmt) -> Vec<Row> {
    let mut st = db.prepare_cached(s.sql).unwrap();
    let args: Vec<Value> = s.args.iter().map(value).collect();
    st.query_map(rusqlite::params_from_iter(args), |r| {
        Ok(Row {
            id: r.get("id")?,
            status: r.get("status")?,
            created_ms: r.get("created_ms")?,
            started_ms: r.get("started_ms")?,
            dispatched: r.get::<_, i64>("dispatched")? != 0,
            body: r.get::<_, Option<String>>("body")?.is_some(),
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[derive(Debug, Clone)]
struct Ending {
    job_id: String,
    status: String,
    settled: bool,
    finished: bool,
}

fn endings(db: &Connection, s: &Stmt) -> Vec<Ending> {
    let mut st = db.prepare_cached(s.sql).unwrap();
    let args: Vec<Value> = s.args.iter().map(value).collect();
    st.query_map(rusqlite::params_from_iter(args), |r| {
        Ok(Ending {
            job_id: r.get("job_id")?,
            status: r.get("status")?,
            settled: r.get::<_, i64>("settled")? != 0,
            finished: r.get::<_, i64>("finished")? != 0,
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// What the test remembers of a job (the DO's row may be pruned).
#[derive(Debug, Clone)]
struct Known {
    timeout_ms: u64,
    hold_id: String,
    tokens: i64,
    /// The first terminal status seen.
    ended: Option<String>,
}

struct World {
    d1: Connection,
    dos: Connection,
    now: i64,
    jobs: BTreeMap<String, Known>,
    order: Vec<String>,
    /// The execute the driver works on (in memory: lost with an eviction).
    driving: Option<String>,
    fail_next_settle: bool,
    next_id: u64,
}

impl World {
    fn new() -> Self {
        World {
            d1: open_d1(),
            dos: open_do(),
            now: START_MS,
            jobs: BTreeMap::new(),
            order: Vec::new(),
            driving: None,
            fail_next_settle: false,
            next_id: 0,
        }
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{:024}", self.next_id)
    }

    fn row(&self, id: &str) -> Option<Row> {
        rows(&self.dos, &queue::load(id)).into_iter().next()
    }

    /// `begin` in the Worker and the DO: the hold (for the execute's
    /// longest life), then the queued row.
    fn enqueue(&mut self, timeout_ms: u64) {
        let open = int(run(&self.dos, &[queue::open_count()])) as usize;
        if open > MAX_QUEUED {
            return; // 409 workspace_busy: nothing is held
        }
        let id = self.fresh("exe_");
        let hold_id = self.fresh("hold_");
        let entry = self.fresh("txn_");
        let hold = sql::hold_plan(&sql::Hold {
            hold_id: &hold_id,
            entry_id: &entry,
            key_id: KEY,
            amount: HOLD_MICROS,
            run_id: Some(&id),
            description: "execute hold",
            now_ms: self.now,
            expires_at_ms: self.now + execution::hold_life_ms(timeout_ms),
        });
        assert_eq!(int(run(&self.d1, &hold)), 1, "the hold applies");
        run(&self.dos, &[queue::enqueue(&id, "{}", self.now)]);
        self.jobs.insert(
            id.clone(),
            Known {
                timeout_ms,
                hold_id,
                tokens: 0,
                ended: None,
            },
        );
        self.order.push(id);
    }

    /// The driver takes the next open execute (as `drive` and `run_one`).
    fn drive(&mut self) {
        if let Some(id) = &self.driving {
            let ended = self
                .row(id)
                .is_none_or(|r| ExecStatus::parse(&r.status).unwrap().is_terminal());
            if !ended {
                return;
            }
            self.driving = None; // it saw the end (a cancel) and moves on
        }
        let Some(row) = rows(&self.dos, &queue::next_open()).into_iter().next() else {
            return;
        };
        if row.status == "queued" {
            if self.now - row.created_ms > MAX_QUEUE_WAIT_MS {
                let id = row.id.clone();
                self.end(&id, ExecStatus::Failed, Cut::None);
                return;
            }
            run(&self.dos, &[queue::start(&row.id, self.now)]);
            run(&self.dos, &[queue::dispatched(&row.id)]);
        }
        self.driving = Some(row.id);
    }

    /// The running task's result arrived (`follow`, then `complete`).
    fn task_ends(&mut self, ok: bool, tokens: i64, cut: Cut) {
        let Some(id) = self.driving.clone() else {
            return;
        };
        if let Some(known) = self.jobs.get_mut(&id) {
            known.tokens = tokens;
        }
        run(&self.dos, &[queue::saving(&id, "{}")]);
        let status = if ok {
            ExecStatus::Succeeded
        } else {
            ExecStatus::Failed
        };
        self.end(&id, status, cut);
        self.driving = None;
    }

    /// `ExecCtx::end`: the ending and the status in one plan, then carried out.
    fn end(&mut self, id: &str, status: ExecStatus, cut: Cut) {
        let ending = format!("{{\"status\":\"{}\"}}", status.as_str());
        run(
            &self.dos,
            &queue::end(id, status.as_str(), &ending, self.now),
        );
        self.carry_out(id, cut);
    }

    /// `ExecCtx::carry_out_alone`: settle (then mark), body (then mark), prune.
    fn carry_out(&mut self, id: &str, cut: Cut) {
        let Some(recorded) = endings(&self.dos, &job::ending_of(id)).into_iter().next() else {
            return;
        };
        if !recorded.settled {
            if std::mem::take(&mut self.fail_next_settle) {
                // D1 failed: the watchdog retries.
            } else {
                self.settle(id);
                if cut == Cut::AfterSettle {
                    self.evict();
                    return;
                }
                run(&self.dos, &[job::mark_settled(id)]);
            }
        }
        if !recorded.finished {
            if cut == Cut::BeforeBody {
                self.evict();
                return;
            }
            let row = self.row(id).expect("an ended execute is kept until done");
            if !row.body {
                run(&self.dos, &[queue::write_body(id, "{}", "{}")]);
            }
            run(&self.dos, &[job::mark_finished(id)]);
            run(&self.dos, &queue::prune(queue::KEEP_FINISHED));
        }
    }

    /// `ledger_d1::finish_run`: the settle plan; if the hold is no longer
    /// open, the usage recorded uncharged. Both name the usage event after
    /// the job.
    fn settle(&mut self, id: &str) {
        let known = self.jobs[id].clone();
        let usage_entry = self.fresh("txn_");
        let release_entry = self.fresh("txn_");
        let plans = sql::finish_job_plans(&sql::FinishJob {
            hold_id: Some(&known.hold_id),
            job_id: id,
            account_id: ACCOUNT,
            key_id: KEY,
            usage_entry_id: &usage_entry,
            release_entry_id: &release_entry,
            usage: Usage {
                input_tokens: known.tokens,
                output_tokens: 0,
                cost_micros: known.tokens.min(HOLD_MICROS),
            },
            description: "run usage",
            now_ms: self.now,
        });
        let settled = match &plans.settle {
            Some(plan) => int(run(&self.d1, plan)) == 1,
            None => false,
        };
        if !settled {
            run(&self.d1, &plans.record);
        }
    }

    fn cancel(&mut self, pick: usize, cut: Cut) {
        let open = rows(&self.dos, &queue::open_jobs());
        if open.is_empty() {
            return;
        }
        let id = open[pick % open.len()].id.clone();
        // The driver learns of it at its next step; its task's result may
        // still arrive (and end it again: that changes nothing).
        self.end(&id, ExecStatus::Cancelled, cut);
    }

    fn evict(&mut self) {
        self.driving = None;
    }

    /// Time passes; the alarm fires every `WATCHDOG_MS` while there is
    /// something to watch (`executes::durable::watchdog`).
    ///
    /// Alarms at which the watchdog can have nothing to do are skipped (to
    /// keep the test quick): with no ending left undone and a driver at
    /// work, nothing happens before the first job passes its queue limit
    /// or its deadline + patience.
    fn advance(&mut self, ms: i64) {
        let until = self.now + ms;
        while self.now < until {
            if !self.watched() {
                // The alarm is not re-armed with nothing to watch.
                self.now = until;
                break;
            }
            let next = (self.now + WATCHDOG_MS).max(self.next_due());
            // On the alarm's grid: the first tick at or after `next`.
            let ticks = (next - self.now + WATCHDOG_MS - 1) / WATCHDOG_MS;
            self.now = (self.now + ticks * WATCHDOG_MS).min(until);
            self.watchdog();
            self.check_after_alarm();
        }
    }

    /// When the watchdog may next have something to do.
    fn next_due(&self) -> i64 {
        let undone = !endings(&self.dos, &queue::undone_endings()).is_empty();
        let open = rows(&self.dos, &queue::open_jobs());
        if undone || (self.driving.is_none() && !open.is_empty()) {
            return self.now;
        }
        open.iter()
            .map(|row| {
                if row.status == "queued" {
                    row.created_ms + MAX_QUEUE_WAIT_MS + 1
                } else {
                    let started = row.started_ms.unwrap_or(row.created_ms);
                    let timeout = self.jobs[&row.id].timeout_ms;
                    execution::deadline_ms(started, timeout) + STUCK_AFTER_MS + 1
                }
            })
            .min()
            .unwrap_or(i64::MAX)
    }

    /// Open executes or endings not carried out in full.
    fn watched(&self) -> bool {
        int(run(&self.dos, &[queue::open_count()])) > 0
            || !endings(&self.dos, &queue::undone_endings()).is_empty()
    }

    fn watchdog(&mut self) {
        for ending in endings(&self.dos, &queue::undone_endings()) {
            self.carry_out(&ending.job_id, Cut::None);
        }
        for row in rows(&self.dos, &queue::open_jobs()) {
            let known = self.jobs[&row.id].clone();
            let started = row.started_ms.unwrap_or(row.created_ms);
            let view = JobView {
                queued: row.status == "queued",
                created_ms: row.created_ms,
                deadline_ms: execution::deadline_ms(started, known.timeout_ms),
                ending: None,
            };
            match job::watchdog_action(&view, &PATIENCE, self.now) {
                Action::ExpireQueued => self.end(&row.id, ExecStatus::Failed, Cut::None),
                Action::TimeOut => {
                    // The driver is replaced.
                    self.driving = None;
                    self.end(&row.id, ExecStatus::TimedOut, Cut::None);
                }
                Action::Nothing | Action::CarryOutEnding => {}
            }
        }
        if self.driving.is_none() {
            if let Some(open) = rows(&self.dos, &queue::next_open()).into_iter().next() {
                if open.status == "running" && !open.dispatched {
                    run(&self.dos, &[queue::requeue(&open.id)]);
                }
                self.drive();
            }
        }
    }

    /// The scheduled sweep: expired holds are released.
    fn sweep(&mut self) {
        for hold_id in sweep_expired(&self.d1, self.now) {
            let (job_id, _) = self
                .jobs
                .iter()
                .find(|(_, k)| k.hold_id == hold_id)
                .expect("every hold is a job's");
            let open = self
                .row(job_id)
                .is_some_and(|r| !ExecStatus::parse(&r.status).unwrap().is_terminal());
            assert!(
                !open,
                "the sweep released the hold of {job_id}, still open at {}",
                self.now
            );
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Enqueue { timeout } => self.enqueue(TIMEOUTS_MS[*timeout]),
            Op::Drive => self.drive(),
            Op::TaskEnds { ok, tokens, cut } => self.task_ends(*ok, *tokens, *cut),
            Op::Cancel { job, cut } => self.cancel(*job, *cut),
            Op::Evict => self.evict(),
            Op::FailNextSettle => self.fail_next_settle = true,
            Op::Advance(ms) => self.advance(*ms),
            Op::Sweep => self.sweep(),
        }
    }

    /// Invariant 3, right after an alarm.
    fn check_after_alarm(&self) {
        for row in rows(&self.dos, &queue::open_jobs()) {
            let known = &self.jobs[&row.id];
            if row.status == "queued" {
                assert!(
                    self.now - row.created_ms <= MAX_QUEUE_WAIT_MS,
                    "{} stayed queued past the limit",
                    row.id
                );
            } else {
                let started = row.started_ms.unwrap_or(row.created_ms);
                let deadline = execution::deadline_ms(started, known.timeout_ms);
                assert!(
                    self.now <= deadline + STUCK_AFTER_MS,
                    "{} stayed {} past its deadline + grace",
                    row.id,
                    row.status
                );
            }
        }
    }

    /// Invariants 1, 2 and 4, after every step.
    fn check(&mut self) {
        let pairs = |db: &Connection, sql: &str| -> BTreeMap<String, (i64, i64)> {
            let mut st = db.prepare_cached(sql).unwrap();
            st.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let usage = pairs(
            &self.d1,
            "SELECT run_id, COUNT(*), 0 FROM usage_events GROUP BY run_id",
        );
        let resolutions = pairs(
            &self.d1,
            "SELECT hold_id, COUNT(*), COALESCE(SUM(type = 'usage'), 0) FROM ledger_entries \
             WHERE type <> 'hold' AND hold_id IS NOT NULL GROUP BY hold_id",
        );
        let expiry = pairs(&self.d1, "SELECT id, expires_at, 0 FROM holds");
        let all = Stmt {
            sql: "SELECT * FROM executions",
            args: Vec::new(),
        };
        let rows: BTreeMap<String, Row> = rows(&self.dos, &all)
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        let all = Stmt {
            sql: "SELECT * FROM job_endings",
            args: Vec::new(),
        };
        let mut by_job: BTreeMap<String, Vec<Ending>> = BTreeMap::new();
        for e in endings(&self.dos, &all) {
            by_job.entry(e.job_id.clone()).or_default().push(e);
        }
        for id in &self.order {
            let known = self.jobs.get_mut(id).unwrap();
            let ending = by_job.get(id).cloned().unwrap_or_default();
            // 1. one ending; the status is the ending's and never changes.
            assert!(ending.len() <= 1, "{id}: {} endings", ending.len());
            if let Some(row) = rows.get(id) {
                let terminal = ExecStatus::parse(&row.status).unwrap().is_terminal();
                assert_eq!(terminal, !ending.is_empty(), "{id}: {} without", row.status);
                if let Some(e) = ending.first() {
                    assert_eq!(row.status, e.status, "{id}");
                }
                if terminal {
                    let first = known.ended.get_or_insert_with(|| row.status.clone());
                    assert_eq!(*first, row.status, "{id} ended twice");
                } else {
                    // 4. an open job's hold has not expired.
                    let expires = expiry[&known.hold_id].0;
                    assert!(
                        self.now < expires,
                        "{id} is {} at {}, its hold expired at {expires}",
                        row.status,
                        self.now
                    );
                }
            }
            // 2. one usage event; exactly one once settled; a hold
            //    settled at most once and resolved at most twice (its
            //    usage and the release of the rest).
            let events = usage.get(id).map(|u| u.0).unwrap_or(0);
            assert!(events <= 1, "{id}: {events} usage events");
            if ending.first().is_some_and(|e| e.settled) {
                assert_eq!(events, 1, "{id} settled without usage");
            }
            let (resolved, settled) = resolutions.get(&known.hold_id).copied().unwrap_or((0, 0));
            assert!(settled <= 1, "{id}: hold settled {settled} times");
            assert!(resolved <= 2, "{id}: hold resolved {resolved} times");
        }
    }
}

fn steps() -> usize {
    std::env::var("JOB_PROPS_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

#[test]
fn jobs_end_once_settle_once_and_never_outlive_their_hold() {
    const OPS_PER_CASE: usize = 250;
    let cases = steps().div_ceil(OPS_PER_CASE) as u32;
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let total = std::sync::atomic::AtomicUsize::new(0);
    let ended = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&proptest::collection::vec(op(), OPS_PER_CASE), |ops| {
            let mut world = World::new();
            for op in &ops {
                world.apply(op);
                world.check();
            }
            // Long enough later, everything has ended and been carried out.
            world.advance(3 * 3_600_000);
            world.check();
            for (id, known) in &world.jobs {
                assert!(
                    known.ended.is_some() || world.row(id).is_none(),
                    "{id} never ended"
                );
            }
            let undone = endings(&world.dos, &queue::undone_endings());
            assert!(undone.is_empty(), "endings left undone: {undone:?}");
            total.fetch_add(ops.len(), std::sync::atomic::Ordering::Relaxed);
            ended.fetch_add(world.jobs.len(), std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    let total = total.into_inner();
    let jobs = ended.into_inner();
    eprintln!("job_props: {total} steps, {jobs} jobs, 0 invariant violations");
    assert!(total >= steps(), "ran {total} steps");
    assert!(jobs > 100, "only {jobs} jobs were made");
}

/// The bug this replaced: an execute whose instance was evicted after its
/// settle applied in D1 (before the DO marked it settled) settled again on
/// the watchdog's retry; the hold no longer open, the usage was recorded a
/// second time under a fresh random id. Named after the job, it is once.
#[test]
fn a_settle_repeated_after_an_eviction_records_the_usage_once() {
    for with_hold in [true, false] {
        let d1 = open_d1();
        let job_id = "exe_000000000000000000000001";
        if with_hold {
            let hold = sql::hold_plan(&sql::Hold {
                hold_id: "hold_1",
                entry_id: "txn_hold",
                key_id: KEY,
                amount: HOLD_MICROS,
                run_id: Some(job_id),
                description: "execute hold",
                now_ms: START_MS,
                expires_at_ms: START_MS + execution::hold_life_ms(60_000),
            });
            assert_eq!(int(run(&d1, &hold)), 1);
        }
        for attempt in 0..3 {
            let plans = sql::finish_job_plans(&sql::FinishJob {
                hold_id: with_hold.then_some("hold_1"),
                job_id,
                account_id: ACCOUNT,
                key_id: KEY,
                usage_entry_id: &format!("txn_usage_{attempt}"),
                release_entry_id: &format!("txn_release_{attempt}"),
                usage: Usage {
                    input_tokens: 100,
                    output_tokens: 10,
                    cost_micros: 2_000,
                },
                description: "run usage",
                now_ms: START_MS + attempt,
            });
            let settled = plans
                .settle
                .as_ref()
                .is_some_and(|plan| int(run(&d1, plan)) == 1);
            assert_eq!(settled, with_hold && attempt == 0, "attempt {attempt}");
            if !settled {
                run(&d1, &plans.record);
            }
        }
        let (events, charged): (i64, i64) = d1
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(charged_micros), 0) FROM usage_events WHERE run_id = ?1",
                params![job_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(events, 1, "with_hold {with_hold}: {events} usage events");
        assert_eq!(charged, if with_hold { 2_000 } else { 0 });
    }
}

// ---------------------------------------------------------------------------
// Repo runs: one DO (one SQLite database) per run, the run's statements
// (`runs::rows`), the same endings and events (`runner::job`), the run's
// watchdog (`runs::life`), and its settle (`runs::billing`), as
// `src/runs/durable/{ending,watchdog}.rs` run them.

mod runs {
    use super::*;
    use cloudbox::runs::billing::{period_event_id, record_run_plan, settle_run_plan, EntryIds};
    use cloudbox::runs::{life, rows};
    use cloudbox::wire::RunStatus;

    /// Run deadlines the runs draw from (`timeoutMs` × (1 + steps) + 60 s).
    const DEADLINES_MS: [i64; 3] = [61_000, 10 * 60_000, 2 * 3_600_000];

    #[derive(Debug, Clone)]
    pub enum RunOp {
        Start { deadline: usize },
        Dispatch { run: usize },
        Result { run: usize, ok: bool, cut: Cut },
        Cancel { run: usize, cut: Cut },
        Evict,
        FailNextSettle,
        Advance(i64),
        Sweep,
    }

    pub fn run_op() -> impl Strategy<Value = RunOp> {
        prop_oneof![
            3 => (0usize..DEADLINES_MS.len()).prop_map(|deadline| RunOp::Start { deadline }),
            3 => (0usize..64).prop_map(|run| RunOp::Dispatch { run }),
            3 => (0usize..64, any::<bool>(), cut()).prop_map(|(run, ok, cut)| RunOp::Result { run, ok, cut }),
            1 => (0usize..64, cut()).prop_map(|(run, cut)| RunOp::Cancel { run, cut }),
            1 => Just(RunOp::Evict),
            1 => Just(RunOp::FailNextSettle),
            4 => prop_oneof![Just(1_000i64), Just(60_000), Just(10 * 60_000)].prop_map(RunOp::Advance),
            1 => Just(RunOp::Sweep),
        ]
    }

    struct Run {
        id: String,
        db: Connection,
        hold_id: String,
        deadline_ms: i64,
        created_ms: i64,
        ended: Option<String>,
    }

    #[derive(Debug)]
    struct RunRow {
        status: String,
        dispatched: bool,
    }

    pub struct Runs {
        d1: Connection,
        now: i64,
        runs: Vec<Run>,
        fail_next_settle: bool,
        next_id: u64,
    }

    fn run_row(db: &Connection) -> Option<RunRow> {
        let load = rows::load();
        db.prepare_cached(load.sql)
            .unwrap()
            .query_row([], |r| {
                Ok(RunRow {
                    status: r.get("status")?,
                    dispatched: r.get::<_, i64>("dispatched")? != 0,
                })
            })
            .ok()
    }

    fn terminal(status: &str) -> bool {
        RunStatus::parse(status).unwrap().is_terminal()
    }

    impl Runs {
        pub fn new() -> Self {
            Runs {
                d1: open_d1(),
                now: START_MS,
                runs: Vec::new(),
                fail_next_settle: false,
                next_id: 0,
            }
        }

        fn fresh(&mut self, prefix: &str) -> String {
            self.next_id += 1;
            format!("{prefix}{:024}", self.next_id)
        }

        /// The Worker's hold (for the run's longest life), then the DO's rows.
        fn start(&mut self, deadline_ms: i64) {
            let id = self.fresh("run_");
            let hold_id = self.fresh("hold_");
            let entry = self.fresh("txn_");
            let hold = sql::hold_plan(&sql::Hold {
                hold_id: &hold_id,
                entry_id: &entry,
                key_id: KEY,
                amount: HOLD_MICROS,
                run_id: Some(&id),
                description: "run hold",
                now_ms: self.now,
                expires_at_ms: self.now + life::hold_life_ms(deadline_ms),
            });
            assert_eq!(int(run(&self.d1, &hold)), 1);
            let db = Connection::open_in_memory().unwrap();
            for stmt in rows::SCHEMA
                .iter()
                .chain(job::SCHEMA)
                .chain(lifecycle::SCHEMA)
            {
                db.execute_batch(stmt).unwrap();
            }
            let billing = format!("{{\"holdId\":\"{hold_id}\"}}");
            let created = rows::create(&rows::NewRun {
                run_id: &id,
                account_id: ACCOUNT,
                spec_json: "{}",
                now_ms: self.now,
                deadline_ms,
                claim: None,
                billing: Some((KEY, &billing)),
                public: false,
                live_terms: None,
            });
            run(&db, &created);
            self.runs.push(Run {
                id,
                db,
                hold_id,
                deadline_ms: self.now + deadline_ms,
                created_ms: self.now,
                ended: None,
            });
        }

        fn pick(&self, n: usize) -> Option<usize> {
            (!self.runs.is_empty()).then(|| n % self.runs.len())
        }

        fn dispatch(&mut self, n: usize) {
            let Some(i) = self.pick(n) else { return };
            let r = &self.runs[i];
            if run_row(&r.db).is_some_and(|row| !terminal(&row.status)) && self.now <= r.deadline_ms
            {
                run(&r.db, &[rows::dispatched()]);
            }
        }

        /// `finalize`: the ending (the first wins), then carried out.
        fn finalize(&mut self, i: usize, status: RunStatus, cut: Cut) {
            let r = &self.runs[i];
            let Some(row) = run_row(&r.db) else { return };
            if terminal(&row.status) {
                return;
            }
            let ending = format!("{{\"ok\":{},\"result\":null}}", status == RunStatus::Passed);
            run(
                &r.db,
                &[job::record_ending(
                    &r.id,
                    status.as_str(),
                    &ending,
                    self.now,
                )],
            );
            self.carry_out(i, cut);
        }

        fn result(&mut self, n: usize, ok: bool, cut: Cut) {
            let Some(i) = self.pick(n) else { return };
            if !run_row(&self.runs[i].db).is_some_and(|row| row.dispatched) {
                return;
            }
            let status = if ok {
                RunStatus::Passed
            } else {
                RunStatus::Failed
            };
            self.finalize(i, status, cut);
        }

        /// `carry_out_alone`: settle (then mark), then the terminal status
        /// (then mark).
        fn carry_out(&mut self, i: usize, cut: Cut) {
            let r = &self.runs[i];
            let Some(recorded) = endings(&r.db, &job::ending_of(&r.id)).into_iter().next() else {
                return;
            };
            if !recorded.settled {
                if std::mem::take(&mut self.fail_next_settle) {
                    // D1 failed: the watchdog retries.
                } else {
                    self.settle(i);
                    if cut == Cut::AfterSettle {
                        return;
                    }
                    run(&self.runs[i].db, &[job::mark_settled(&self.runs[i].id)]);
                }
            }
            if !recorded.finished {
                if cut == Cut::BeforeBody {
                    return;
                }
                let r = &self.runs[i];
                let finish = rows::finish(&rows::Finish {
                    status: &recorded.status,
                    ok: recorded.status == "passed",
                    ended_ms: self.now,
                    container_ms: self.now - r.created_ms,
                    artifact_json: None,
                    diff: None,
                });
                run(&r.db, &[finish, job::mark_finished(&r.id)]);
            }
        }

        /// `runs::billing_d1::settle`: the run's settle plan, else the
        /// usage recorded uncharged; both named after the run.
        fn settle(&mut self, i: usize) {
            let usage_entry = self.fresh("txn_");
            let release_entry = self.fresh("txn_");
            let r = &self.runs[i];
            let container_ms = (self.now - r.created_ms).max(0);
            let cost = (container_ms / 1_000).min(HOLD_MICROS);
            let ids = EntryIds {
                usage_entry_id: &usage_entry,
                release_entry_id: &release_entry,
            };
            let event_id = period_event_id(&r.id, 1);
            let plan = settle_run_plan(&r.hold_id, &event_id, &ids, container_ms, cost, self.now);
            if int(run(&self.d1, &plan)) != 1 {
                let record =
                    record_run_plan(ACCOUNT, KEY, &r.id, &event_id, container_ms, cost, self.now);
                run(&self.d1, &record);
            }
        }

        fn advance(&mut self, ms: i64) {
            let until = self.now + ms;
            while self.now < until {
                // With nothing due, time runs on to `until`.
                let next = (self.now + life::WATCHDOG_MS)
                    .max(self.next_due())
                    .min(until);
                let ticks = (next - self.now + life::WATCHDOG_MS - 1) / life::WATCHDOG_MS;
                self.now = (self.now + ticks * life::WATCHDOG_MS).min(until);
                for i in 0..self.runs.len() {
                    self.watchdog(i);
                }
                self.check_after_alarm();
            }
        }

        /// When a watchdog may next have something to do (see `World::advance`).
        fn next_due(&self) -> i64 {
            let mut due = i64::MAX;
            for r in &self.runs {
                let ending = endings(&r.db, &job::ending_of(&r.id)).into_iter().next();
                match (&ending, run_row(&r.db)) {
                    (Some(e), _) if !(e.settled && e.finished) => return self.now,
                    (None, Some(row)) if !terminal(&row.status) => due = due.min(r.deadline_ms + 1),
                    _ => {}
                }
            }
            due
        }

        /// `runs::durable::watchdog` for one run.
        fn watchdog(&mut self, i: usize) {
            let r = &self.runs[i];
            let Some(row) = run_row(&r.db) else { return };
            let ending = endings(&r.db, &job::ending_of(&r.id)).into_iter().next();
            let view = JobView {
                queued: false,
                created_ms: r.created_ms,
                deadline_ms: r.deadline_ms,
                ending: ending.as_ref().map(|e| (e.settled, e.finished)),
            };
            if terminal(&row.status) && ending.as_ref().is_none_or(|e| e.settled && e.finished) {
                return;
            }
            match job::watchdog_action(&view, &life::PATIENCE, self.now) {
                Action::CarryOutEnding => self.carry_out(i, Cut::None),
                Action::TimeOut | Action::ExpireQueued => {
                    self.finalize(i, RunStatus::TimedOut, Cut::None)
                }
                Action::Nothing => {}
            }
        }

        fn sweep(&mut self) {
            for hold_id in sweep_expired(&self.d1, self.now) {
                let r = self.runs.iter().find(|r| r.hold_id == hold_id).unwrap();
                let ended = !endings(&r.db, &job::ending_of(&r.id)).is_empty();
                assert!(ended, "the sweep released the hold of {}, still open", r.id);
            }
        }

        pub fn apply(&mut self, op: &RunOp) {
            match op {
                RunOp::Start { deadline } => self.start(DEADLINES_MS[*deadline]),
                RunOp::Dispatch { run } => self.dispatch(*run),
                RunOp::Result { run, ok, cut } => self.result(*run, *ok, *cut),
                RunOp::Cancel { run, cut } => {
                    if let Some(i) = self.pick(*run) {
                        self.finalize(i, RunStatus::Cancelled, *cut);
                    }
                }
                // In-memory state (a pump, an ending under way) is lost;
                // what is stored stays, and the watchdog carries on.
                RunOp::Evict => {}
                RunOp::FailNextSettle => self.fail_next_settle = true,
                RunOp::Advance(ms) => self.advance(*ms),
                RunOp::Sweep => self.sweep(),
            }
        }

        /// Invariant 3 for runs: none is open past its deadline without an
        /// ending after an alarm.
        fn check_after_alarm(&self) {
            for r in &self.runs {
                let open = run_row(&r.db).is_some_and(|row| !terminal(&row.status));
                let ended = !endings(&r.db, &job::ending_of(&r.id)).is_empty();
                assert!(
                    !open || ended || self.now <= r.deadline_ms,
                    "{} open past its deadline",
                    r.id
                );
            }
        }

        /// Invariants 1, 2 and 4 for runs.
        pub fn check(&mut self) {
            for r in &mut self.runs {
                let ending = endings(&r.db, &job::ending_of(&r.id));
                assert!(ending.len() <= 1, "{}: {} endings", r.id, ending.len());
                let row = run_row(&r.db).expect("the run's row");
                if terminal(&row.status) {
                    let e = ending.first().expect("an ended run has its ending");
                    assert_eq!(row.status, e.status, "{}", r.id);
                    let first = r.ended.get_or_insert_with(|| row.status.clone());
                    assert_eq!(*first, row.status, "{} ended twice", r.id);
                } else if ending.is_empty() {
                    let expires: i64 = self
                        .d1
                        .prepare_cached("SELECT expires_at FROM holds WHERE id = ?1")
                        .unwrap()
                        .query_row(params![r.hold_id], |q| q.get(0))
                        .unwrap();
                    assert!(self.now < expires, "{} open, its hold expired", r.id);
                }
                let events: i64 = self
                    .d1
                    .prepare_cached("SELECT COUNT(*) FROM usage_events WHERE run_id = ?1")
                    .unwrap()
                    .query_row(params![r.id], |q| q.get(0))
                    .unwrap();
                assert!(events <= 1, "{}: {events} usage events", r.id);
                if ending.first().is_some_and(|e| e.settled) {
                    assert_eq!(events, 1, "{} settled without usage", r.id);
                }
            }
        }

        /// Long after: every run ended and its ending carried out.
        pub fn drain(&mut self) -> usize {
            self.advance(4 * 3_600_000);
            self.check();
            for r in &self.runs {
                let row = run_row(&r.db).unwrap();
                assert!(terminal(&row.status), "{} never ended", r.id);
                let e = &endings(&r.db, &job::ending_of(&r.id))[0];
                assert!(e.settled && e.finished, "{} ending left undone", r.id);
            }
            self.runs.len()
        }
    }
}

#[test]
fn runs_end_once_settle_once_and_never_outlive_their_hold() {
    const OPS_PER_CASE: usize = 120;
    let cases = (steps() / 2).div_ceil(OPS_PER_CASE) as u32;
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let total = std::sync::atomic::AtomicUsize::new(0);
    let made = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(
            &proptest::collection::vec(runs::run_op(), OPS_PER_CASE),
            |ops| {
                let mut world = runs::Runs::new();
                for op in &ops {
                    world.apply(op);
                    world.check();
                }
                made.fetch_add(world.drain(), std::sync::atomic::Ordering::Relaxed);
                total.fetch_add(ops.len(), std::sync::atomic::Ordering::Relaxed);
                Ok(())
            },
        )
        .unwrap();
    let (total, made) = (total.into_inner(), made.into_inner());
    eprintln!("job_props (runs): {total} steps, {made} runs, 0 invariant violations");
    assert!(total >= steps() / 2, "ran {total} steps");
    assert!(made > 100, "only {made} runs were made");
}
