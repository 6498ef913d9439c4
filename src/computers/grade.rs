//! The grader (pure): a computer's rubric against what its receipt log
//! shows. Only recorded actions count, and the same log always gives the
//! same score.
//!
//! The log folds into a `Summary`, one receipt at a time: each path's first
//! read, the paths written, who was asked, and the decisions submitted per
//! objective. Grading looks only at the summary, one lookup per criterion.
//! The Computer DO keeps the summary in its storage as it appends
//! (`grade_sql`), so a grade costs the same at 10 receipts as at 100 000;
//! `grade` rebuilds it from a whole log by the same rule.
//!
//! Matchers (API.md): `read{path}`, `wrote{path}`, `readBefore{before, after}`
//! (before read and, if after was ever read, before's first read strictly
//! precedes after's first read), `submitted{objective, decision?}` (decision
//! compared only when given), `asked{who}`, `askedOnly{who, notWho}`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::computers::receipts::Receipt;
use crate::computers::spec::{Criterion, MustEvent};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Status {
    Passed,
    Failed,
    /// No `mustEvent`, and no model judged it.
    Ungraded,
    /// No `mustEvent`; the configured model gave a verdict (advisory: it is
    /// not added to `score` or `max`, so the score stays deterministic).
    Judged,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CriterionResult {
    pub id: String,
    pub weight: f64,
    pub must: String,
    pub status: Status,
    /// `pass` or `fail`, for judged criteria.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Grade {
    pub score: f64,
    pub max: f64,
    pub total_weight: f64,
    /// Counts of criteria by status.
    pub passed: usize,
    pub failed: usize,
    pub ungraded: usize,
    pub judged: usize,
    pub detail: Vec<CriterionResult>,
}

/// What one receipt tells the matchers. Receipts that tell them nothing
/// (grades, unknown kinds, a field missing or not a string) have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact<'a> {
    /// A read, at the receipt's `seq`.
    Read {
        path: &'a str,
        seq: u64,
    },
    Wrote {
        path: &'a str,
    },
    Asked {
        who: &'a str,
    },
    Submitted {
        objective: &'a str,
        decision: Option<&'a str>,
    },
}

fn text<'a>(receipt: &'a Receipt, field: &str) -> Option<&'a str> {
    receipt.payload.get(field).and_then(Value::as_str)
}

impl<'a> Fact<'a> {
    pub fn of(receipt: &'a Receipt) -> Option<Self> {
        match receipt.kind.as_str() {
            "read" => text(receipt, "path").map(|path| Fact::Read {
                path,
                seq: receipt.seq,
            }),
            "write" => text(receipt, "path").map(|path| Fact::Wrote { path }),
            "ask" => text(receipt, "who").map(|who| Fact::Asked { who }),
            "submit" => text(receipt, "objective").map(|objective| Fact::Submitted {
                objective,
                decision: text(receipt, "decision"),
            }),
            _ => None,
        }
    }
}

/// Everything any matcher can ask of a log. B-trees, not hash maps: the
/// keys are chosen by the agent, and the order is deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Each path read, with the `seq` of its first read.
    first_read: BTreeMap<String, u64>,
    written: BTreeSet<String>,
    asked: BTreeSet<String>,
    /// Each objective submitted, with the decisions it was submitted with.
    submitted: BTreeMap<String, BTreeSet<String>>,
}

impl Summary {
    /// The summary of a whole log (in `seq` order).
    pub fn from_log(receipts: &[Receipt]) -> Self {
        let mut summary = Summary::default();
        for receipt in receipts {
            summary.record(receipt);
        }
        summary
    }

    /// Adds the receipt that follows the ones already recorded.
    pub fn record(&mut self, receipt: &Receipt) {
        if let Some(fact) = Fact::of(receipt) {
            self.apply(fact);
        }
    }

    /// Adds a fact. One already known changes nothing, so the first read of
    /// a path keeps its `seq` — as `INSERT OR IGNORE` does in `grade_sql`.
    /// (Keys are copied only when new: most receipts repeat a known one.)
    pub fn apply(&mut self, fact: Fact<'_>) {
        fn add(set: &mut BTreeSet<String>, key: &str) {
            if !set.contains(key) {
                set.insert(key.to_string());
            }
        }
        match fact {
            Fact::Read { path, seq } => {
                if !self.first_read.contains_key(path) {
                    self.first_read.insert(path.to_string(), seq);
                }
            }
            Fact::Wrote { path } => add(&mut self.written, path),
            Fact::Asked { who } => add(&mut self.asked, who),
            Fact::Submitted {
                objective,
                decision,
            } => {
                let decisions = match self.submitted.get_mut(objective) {
                    Some(decisions) => decisions,
                    None => self.submitted.entry(objective.to_string()).or_default(),
                };
                if let Some(d) = decision {
                    add(decisions, d);
                }
            }
        }
    }

    /// Every fact of the summary, each once: applied to an empty summary,
    /// they give this one back.
    pub fn facts(&self) -> impl Iterator<Item = Fact<'_>> {
        let reads = self
            .first_read
            .iter()
            .map(|(path, seq)| Fact::Read { path, seq: *seq });
        let writes = self.written.iter().map(|path| Fact::Wrote { path });
        let asks = self.asked.iter().map(|who| Fact::Asked { who });
        let submits = self.submitted.iter().flat_map(|(objective, decisions)| {
            let plain = decisions.is_empty().then_some(Fact::Submitted {
                objective,
                decision: None,
            });
            plain
                .into_iter()
                .chain(decisions.iter().map(move |d| Fact::Submitted {
                    objective,
                    decision: Some(d),
                }))
        });
        reads.chain(writes).chain(asks).chain(submits)
    }

    fn first_read(&self, path: &str) -> Option<u64> {
        self.first_read.get(path).copied()
    }

    fn matches(&self, event: &MustEvent) -> bool {
        match event {
            MustEvent::Read { path } => self.first_read(path).is_some(),
            MustEvent::Wrote { path } => self.written.contains(path.as_str()),
            MustEvent::ReadBefore { before, after } => {
                match (self.first_read(before), self.first_read(after)) {
                    (Some(b), Some(a)) => b < a,
                    (Some(_), None) => true,
                    (None, _) => false,
                }
            }
            MustEvent::Submitted {
                objective,
                decision,
            } => match (self.submitted.get(objective.as_str()), decision) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(seen), Some(wanted)) => seen.contains(wanted.as_str()),
            },
            MustEvent::Asked { who } => self.asked.contains(who.as_str()),
            MustEvent::AskedOnly { who, not_who } => {
                self.asked.contains(who.as_str()) && !self.asked.contains(not_who.as_str())
            }
        }
    }
}

/// The summary entries a rubric's matchers look up. A summary that holds
/// only these (what `grade_sql::lookup` loads) grades like the whole one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted<'r> {
    pub reads: BTreeSet<&'r str>,
    pub writes: BTreeSet<&'r str>,
    pub asks: BTreeSet<&'r str>,
    /// Objectives asked about with no decision: was it submitted at all?
    pub objectives: BTreeSet<&'r str>,
    /// (objective, decision) pairs asked about.
    pub decisions: BTreeSet<(&'r str, &'r str)>,
}

impl<'r> Wanted<'r> {
    pub fn of(rubric: &'r [Criterion]) -> Self {
        let mut wanted = Wanted::default();
        for event in rubric.iter().filter_map(|c| c.must_event.as_ref()) {
            match event {
                MustEvent::Read { path } => {
                    wanted.reads.insert(path);
                }
                MustEvent::Wrote { path } => {
                    wanted.writes.insert(path);
                }
                MustEvent::ReadBefore { before, after } => {
                    wanted.reads.insert(before);
                    wanted.reads.insert(after);
                }
                MustEvent::Submitted {
                    objective,
                    decision: None,
                } => {
                    wanted.objectives.insert(objective);
                }
                MustEvent::Submitted {
                    objective,
                    decision: Some(decision),
                } => {
                    wanted.decisions.insert((objective, decision));
                }
                MustEvent::Asked { who } => {
                    wanted.asks.insert(who);
                }
                MustEvent::AskedOnly { who, not_who } => {
                    wanted.asks.insert(who);
                    wanted.asks.insert(not_who);
                }
            }
        }
        wanted
    }

    /// What of `fact` the rubric looks at: the fact, or for a decision it
    /// does not ask about, that the objective was submitted (if it asks).
    pub fn keep<'a>(&self, fact: Fact<'a>) -> Option<Fact<'a>> {
        match fact {
            Fact::Read { path, .. } => self.reads.contains(path).then_some(fact),
            Fact::Wrote { path } => self.writes.contains(path).then_some(fact),
            Fact::Asked { who } => self.asks.contains(who).then_some(fact),
            Fact::Submitted {
                objective,
                decision,
            } => {
                let asked_about = |d: &&str| self.decisions.contains(&(objective, *d));
                if decision.filter(asked_about).is_some() {
                    Some(fact)
                } else {
                    self.objectives
                        .contains(objective)
                        .then_some(Fact::Submitted {
                            objective,
                            decision: None,
                        })
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.reads.is_empty()
            && self.writes.is_empty()
            && self.asks.is_empty()
            && self.objectives.is_empty()
            && self.decisions.is_empty()
    }
}

/// Grades a summary against `rubric`, in rubric order: one lookup per
/// criterion, whatever the length of the log behind the summary.
pub fn grade_summary(rubric: &[Criterion], summary: &Summary) -> Grade {
    let mut out = Grade {
        score: 0.0,
        max: 0.0,
        total_weight: 0.0,
        passed: 0,
        failed: 0,
        ungraded: 0,
        judged: 0,
        detail: Vec::with_capacity(rubric.len()),
    };
    for criterion in rubric {
        out.total_weight += criterion.weight;
        let status = match &criterion.must_event {
            None => Status::Ungraded,
            Some(event) => {
                out.max += criterion.weight;
                if summary.matches(event) {
                    out.score += criterion.weight;
                    Status::Passed
                } else {
                    Status::Failed
                }
            }
        };
        out.detail.push(CriterionResult {
            id: criterion.id.clone(),
            weight: criterion.weight,
            must: criterion.must.clone(),
            status,
            verdict: None,
            reason: None,
        });
    }
    out.score = round6(out.score);
    out.max = round6(out.max);
    out.total_weight = round6(out.total_weight);
    out.recount();
    out
}

/// Grades a whole log against `rubric`: the part of its summary that the
/// rubric looks up (what the DO loads from its tables), rebuilt from the
/// log, then graded. Only the rubric's keys are kept, so a long log with
/// many paths costs one cheap lookup per receipt.
pub fn grade(rubric: &[Criterion], receipts: &[Receipt]) -> Grade {
    let wanted = Wanted::of(rubric);
    let mut summary = Summary::default();
    for fact in receipts.iter().filter_map(Fact::of) {
        if let Some(kept) = wanted.keep(fact) {
            summary.apply(kept);
        }
    }
    grade_summary(rubric, &summary)
}

impl Grade {
    /// Records a model's verdict on an ungraded criterion (by id); it becomes
    /// `judged`. Verdicts on criteria with a `mustEvent` are ignored.
    pub fn apply_judgment(&mut self, id: &str, pass: bool, reason: String) {
        if let Some(item) = self
            .detail
            .iter_mut()
            .find(|d| d.id == id && d.status == Status::Ungraded)
        {
            item.status = Status::Judged;
            item.verdict = Some(if pass { "pass" } else { "fail" }.to_string());
            item.reason = Some(reason);
        }
        self.recount();
    }

    fn recount(&mut self) {
        let count = |s: Status| self.detail.iter().filter(|d| d.status == s).count();
        self.passed = count(Status::Passed);
        self.failed = count(Status::Failed);
        self.ungraded = count(Status::Ungraded);
        self.judged = count(Status::Judged);
    }
}

/// Sums of decimal weights are shown to 6 decimals (0.1 + 0.2 → 0.3).
fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Random logs and rubrics over a few paths, collaborators and objectives
/// (so they collide often), for the property tests here and in `grade_sql`.
#[cfg(test)]
pub(crate) mod testing {
    use proptest::prelude::*;
    use proptest::sample::select;
    use serde_json::json;

    use super::*;
    use crate::computers::receipts::next_receipt;

    static PATHS: [&str; 4] = ["a", "b", "c", "d/e.md"];
    static WHO: [&str; 3] = ["x", "y", "z"];
    static OBJECTIVES: [&str; 2] = ["o", "p"];
    static DECISIONS: [&str; 3] = ["approve", "reject", ""];
    static WEIGHTS: [f64; 5] = [0.0, 0.1, 0.2, 1.0, 2.5];

    /// A chained log of (kind, payload) events, one ms apart.
    pub fn log(events: &[(String, Value)]) -> Vec<Receipt> {
        let mut out: Vec<Receipt> = Vec::new();
        for (i, (kind, payload)) in events.iter().enumerate() {
            let prev = out.last().map(|r| (r.hash.as_str(), r.seq, r.ms));
            let next = next_receipt(prev, i as i64, kind, payload.clone());
            out.push(next);
        }
        out
    }

    fn event_of(kind: &str, payload: Value) -> (String, Value) {
        (kind.to_string(), payload)
    }

    /// Reads, writes, asks, submits (with and without a decision), grades,
    /// and receipts no matcher counts (unknown kinds, odd payloads).
    pub fn event() -> impl Strategy<Value = (String, Value)> {
        let odd = select(vec![
            event_of("read", json!({"path": 3})),
            event_of("read", json!({})),
            event_of("note", json!({"path": "a"})),
            event_of("submit", json!({"objective": "o", "decision": 7})),
            event_of("ask", json!({"who": null})),
        ]);
        prop_oneof![
            4 => select(&PATHS[..]).prop_map(|p| event_of("read", json!({"path": p}))),
            2 => select(&PATHS[..]).prop_map(|p| event_of("write", json!({"path": p, "bytes": 1}))),
            2 => select(&WHO[..]).prop_map(|w| event_of("ask", json!({"who": w, "message": "hi"}))),
            2 => (select(&OBJECTIVES[..]), proptest::option::of(select(&DECISIONS[..]))).prop_map(
                |(o, d)| match d {
                    Some(d) => event_of("submit", json!({"objective": o, "decision": d})),
                    None => event_of("submit", json!({"objective": o})),
                }
            ),
            1 => Just(event_of("grade", json!({"score": 1}))),
            1 => odd,
        ]
    }

    pub fn events() -> impl Strategy<Value = Vec<(String, Value)>> {
        proptest::collection::vec(event(), 0..40)
    }

    pub fn must_event() -> impl Strategy<Value = MustEvent> {
        let path = || select(&PATHS[..]).prop_map(String::from);
        let who = || select(&WHO[..]).prop_map(String::from);
        prop_oneof![
            path().prop_map(|path| MustEvent::Read { path }),
            path().prop_map(|path| MustEvent::Wrote { path }),
            (path(), path()).prop_map(|(before, after)| MustEvent::ReadBefore { before, after }),
            (
                select(&OBJECTIVES[..]).prop_map(String::from),
                proptest::option::of(select(&DECISIONS[..]).prop_map(String::from))
            )
                .prop_map(|(objective, decision)| MustEvent::Submitted {
                    objective,
                    decision
                }),
            who().prop_map(|who| MustEvent::Asked { who }),
            (who(), who()).prop_map(|(who, not_who)| MustEvent::AskedOnly { who, not_who }),
        ]
    }

    /// Up to 8 criteria, some without a `mustEvent`.
    pub fn rubric() -> impl Strategy<Value = Vec<Criterion>> {
        let criterion = (
            proptest::option::weighted(0.85, must_event()),
            select(&WEIGHTS[..]),
        );
        proptest::collection::vec(criterion, 0..8).prop_map(|items| {
            items
                .into_iter()
                .enumerate()
                .map(|(i, (must_event, weight))| Criterion {
                    id: format!("c{i}"),
                    weight,
                    must: format!("criterion {i}"),
                    must_event,
                })
                .collect()
        })
    }

    /// The part of `summary` that `wanted` names, as `grade_sql::lookup`
    /// loads it from the tables.
    pub fn restricted(summary: &Summary, wanted: &Wanted) -> Summary {
        let mut out = Summary::default();
        for fact in summary.facts().filter_map(|f| wanted.keep(f)) {
            out.apply(fact);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::computers::receipts::next_receipt;
    use serde_json::{json, Value};

    fn log(events: &[(&str, Value)]) -> Vec<Receipt> {
        let mut out: Vec<Receipt> = Vec::new();
        for (i, (kind, payload)) in events.iter().enumerate() {
            let prev = out.last().map(|r| (r.hash.as_str(), r.seq, r.ms));
            let next = next_receipt(prev, i as i64, kind, payload.clone());
            out.push(next);
        }
        out
    }

    fn read(p: &str) -> (&'static str, Value) {
        ("read", json!({"path": p}))
    }
    fn write(p: &str) -> (&'static str, Value) {
        ("write", json!({"path": p, "bytes": 1}))
    }
    fn ask(who: &str) -> (&'static str, Value) {
        ("ask", json!({"who": who, "message": "hi"}))
    }
    fn submit(objective: &str, decision: Option<&str>) -> (&'static str, Value) {
        match decision {
            Some(d) => ("submit", json!({"objective": objective, "decision": d})),
            None => ("submit", json!({"objective": objective})),
        }
    }

    fn crit(id: &str, weight: f64, event: Option<MustEvent>) -> Criterion {
        Criterion {
            id: id.into(),
            weight,
            must: format!("must {id}"),
            must_event: event,
        }
    }

    fn passes(event: MustEvent, events: &[(&str, Value)]) -> bool {
        let g = grade(&[crit("c", 1.0, Some(event))], &log(events));
        match g.detail[0].status {
            Status::Passed => true,
            Status::Failed => false,
            other => panic!("{other:?}"),
        }
    }

    fn read_before() -> MustEvent {
        MustEvent::ReadBefore {
            before: "A".into(),
            after: "B".into(),
        }
    }

    #[test]
    fn read_before_edge_cases() {
        assert!(passes(read_before(), &[read("A"), read("B")]), "A,B");
        assert!(!passes(read_before(), &[read("B"), read("A")]), "B,A");
        assert!(passes(read_before(), &[read("A")]), "A only");
        assert!(!passes(read_before(), &[read("B")]), "B only");
        assert!(
            !passes(read_before(), &[read("B"), read("A"), read("B")]),
            "B,A,B"
        );
        assert!(
            passes(read_before(), &[read("A"), read("B"), read("A")]),
            "A,B,A"
        );
        assert!(!passes(read_before(), &[]), "nothing");
        assert!(
            passes(read_before(), &[write("B"), read("A"), read("B")]),
            "a write is not a read"
        );
    }

    #[test]
    fn read_and_wrote() {
        let r = || MustEvent::Read { path: "a".into() };
        let w = || MustEvent::Wrote { path: "a".into() };
        assert!(passes(r(), &[read("a")]));
        assert!(!passes(r(), &[read("b"), write("a")]));
        assert!(passes(w(), &[write("a")]));
        assert!(!passes(w(), &[read("a"), write("ab")]));
    }

    #[test]
    fn submitted_with_and_without_decision() {
        let any = || MustEvent::Submitted {
            objective: "o".into(),
            decision: None,
        };
        let approve = || MustEvent::Submitted {
            objective: "o".into(),
            decision: Some("approve".into()),
        };
        assert!(passes(any(), &[submit("o", None)]));
        assert!(passes(any(), &[submit("o", Some("reject"))]));
        assert!(!passes(any(), &[submit("p", None)]));
        assert!(passes(approve(), &[submit("o", Some("approve"))]));
        assert!(!passes(approve(), &[submit("o", Some("reject"))]));
        assert!(!passes(approve(), &[submit("o", None)]));
        assert!(!passes(approve(), &[submit("p", Some("approve"))]));
        assert!(passes(
            approve(),
            &[submit("o", Some("reject")), submit("o", Some("approve"))]
        ));
    }

    #[test]
    fn asked_and_asked_only() {
        let asked = || MustEvent::Asked { who: "a".into() };
        let only = || MustEvent::AskedOnly {
            who: "a".into(),
            not_who: "b".into(),
        };
        assert!(passes(asked(), &[ask("a")]));
        assert!(!passes(asked(), &[ask("b")]));
        assert!(!passes(only(), &[ask("a"), ask("b")]), "both");
        assert!(!passes(only(), &[]), "neither");
        assert!(passes(only(), &[ask("a")]), "only who");
        assert!(!passes(only(), &[ask("b")]), "only notWho");
        assert!(
            passes(only(), &[ask("a"), ask("c")]),
            "someone else is fine"
        );
    }

    #[test]
    fn weights_max_and_total_weight() {
        let rubric = vec![
            crit("r", 2.0, Some(MustEvent::Read { path: "a".into() })),
            crit("w", 3.0, Some(MustEvent::Wrote { path: "a".into() })),
            crit("free", 5.0, None),
            crit("zero", 0.0, Some(MustEvent::Read { path: "a".into() })),
        ];
        let g = grade(&rubric, &log(&[read("a")]));
        assert_eq!(g.score, 2.0);
        assert_eq!(g.max, 5.0);
        assert_eq!(g.total_weight, 10.0);
        assert_eq!((g.passed, g.failed, g.ungraded, g.judged), (2, 1, 1, 0));
        let statuses: Vec<Status> = g.detail.iter().map(|d| d.status).collect();
        assert_eq!(
            statuses,
            vec![
                Status::Passed,
                Status::Failed,
                Status::Ungraded,
                Status::Passed
            ]
        );
        assert_eq!(
            g.detail.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            vec!["r", "w", "free", "zero"]
        );
        assert_eq!(g.detail[2].must, "must free");
    }

    #[test]
    fn decimal_weights_sum_cleanly() {
        let rubric = vec![
            crit("a", 0.1, Some(MustEvent::Read { path: "a".into() })),
            crit("b", 0.2, Some(MustEvent::Read { path: "a".into() })),
        ];
        assert_eq!(grade(&rubric, &log(&[read("a")])).score, 0.3);
    }

    #[test]
    fn ungraded_only_and_empty_rubric() {
        let g = grade(&[crit("x", 1.0, None)], &log(&[read("a")]));
        assert_eq!(
            (g.score, g.max, g.total_weight, g.ungraded),
            (0.0, 0.0, 1.0, 1)
        );
        let empty = grade(&[], &log(&[read("a")]));
        assert_eq!(
            (empty.score, empty.max, empty.total_weight),
            (0.0, 0.0, 0.0)
        );
        assert!(empty.detail.is_empty());
        assert_eq!((empty.passed, empty.failed, empty.ungraded), (0, 0, 0));
    }

    #[test]
    fn judgments_mark_ungraded_criteria_without_moving_the_score() {
        let rubric = vec![
            crit("r", 1.0, Some(MustEvent::Read { path: "a".into() })),
            crit("free", 2.0, None),
        ];
        let mut g = grade(&rubric, &log(&[]));
        g.apply_judgment("free", true, "looks fine".into());
        g.apply_judgment("r", true, "ignored: it has a mustEvent".into());
        assert_eq!(g.detail[1].status, Status::Judged);
        assert_eq!(g.detail[1].verdict.as_deref(), Some("pass"));
        assert_eq!(g.detail[0].status, Status::Failed);
        assert_eq!(
            (g.score, g.max, g.judged, g.ungraded, g.failed),
            (0.0, 1.0, 1, 0, 1)
        );
        let v = serde_json::to_value(&g).unwrap();
        assert_eq!(v["detail"][1]["status"], "judged");
        assert_eq!(v["totalWeight"], 3.0);
        assert!(v["detail"][0].get("verdict").is_none());
    }

    #[test]
    fn grading_is_deterministic_and_ignores_grade_receipts() {
        let rubric = vec![crit("r", 1.0, Some(MustEvent::Read { path: "a".into() }))];
        let events = [
            read("a"),
            ("grade", json!({"score": 1})),
            ("read", json!({"who": "no path"})),
        ];
        let a = grade(&rubric, &log(&events));
        let b = grade(&rubric, &log(&events));
        assert_eq!(a, b);
        assert_eq!(a.score, 1.0);
    }

    /// The grader as it was before the summary (one pass over the log,
    /// indexing only what the rubric names), kept as the reference.
    mod one_pass {
        use std::collections::HashMap;

        use super::*;

        #[derive(Default)]
        struct Submissions<'r> {
            any: bool,
            decisions: Vec<(&'r str, bool)>,
        }

        #[derive(Default)]
        struct Index<'r> {
            first_read: HashMap<&'r str, Option<usize>>,
            written: HashMap<&'r str, bool>,
            asked: HashMap<&'r str, bool>,
            submitted: HashMap<&'r str, Submissions<'r>>,
        }

        impl<'r> Index<'r> {
            fn for_rubric(rubric: &'r [Criterion]) -> Self {
                let mut index = Index::default();
                for event in rubric.iter().filter_map(|c| c.must_event.as_ref()) {
                    match event {
                        MustEvent::Read { path } => {
                            index.first_read.insert(path, None);
                        }
                        MustEvent::Wrote { path } => {
                            index.written.insert(path, false);
                        }
                        MustEvent::ReadBefore { before, after } => {
                            index.first_read.insert(before, None);
                            index.first_read.insert(after, None);
                        }
                        MustEvent::Submitted {
                            objective,
                            decision,
                        } => {
                            let entry = index.submitted.entry(objective).or_default();
                            if let Some(d) = decision {
                                entry.decisions.push((d, false));
                            }
                        }
                        MustEvent::Asked { who } => {
                            index.asked.insert(who, false);
                        }
                        MustEvent::AskedOnly { who, not_who } => {
                            index.asked.insert(who, false);
                            index.asked.insert(not_who, false);
                        }
                    }
                }
                index
            }

            fn record(&mut self, receipts: &[Receipt]) {
                for (pos, r) in receipts.iter().enumerate() {
                    let field = |name: &str| r.payload.get(name).and_then(|v| v.as_str());
                    match r.kind.as_str() {
                        "read" => {
                            if let Some(slot) =
                                field("path").and_then(|p| self.first_read.get_mut(p))
                            {
                                slot.get_or_insert(pos);
                            }
                        }
                        "write" => {
                            if let Some(seen) = field("path").and_then(|p| self.written.get_mut(p))
                            {
                                *seen = true;
                            }
                        }
                        "ask" => {
                            if let Some(seen) = field("who").and_then(|w| self.asked.get_mut(w)) {
                                *seen = true;
                            }
                        }
                        "submit" => {
                            if let Some(subs) =
                                field("objective").and_then(|o| self.submitted.get_mut(o))
                            {
                                subs.any = true;
                                if let Some(decision) = field("decision") {
                                    for (wanted, seen) in subs.decisions.iter_mut() {
                                        *seen |= *wanted == decision;
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }

            fn first_read(&self, path: &str) -> Option<usize> {
                self.first_read.get(path).copied().flatten()
            }

            fn flag(map: &HashMap<&'r str, bool>, key: &str) -> bool {
                map.get(key).copied().unwrap_or(false)
            }

            fn matches(&self, event: &MustEvent) -> bool {
                match event {
                    MustEvent::Read { path } => self.first_read(path).is_some(),
                    MustEvent::Wrote { path } => Self::flag(&self.written, path),
                    MustEvent::ReadBefore { before, after } => {
                        match (self.first_read(before), self.first_read(after)) {
                            (Some(b), Some(a)) => b < a,
                            (Some(_), None) => true,
                            (None, _) => false,
                        }
                    }
                    MustEvent::Submitted {
                        objective,
                        decision,
                    } => match self.submitted.get(objective.as_str()) {
                        None => false,
                        Some(subs) => match decision {
                            None => subs.any,
                            Some(wanted) => {
                                subs.decisions.iter().any(|(d, seen)| *seen && d == wanted)
                            }
                        },
                    },
                    MustEvent::Asked { who } => Self::flag(&self.asked, who),
                    MustEvent::AskedOnly { who, not_who } => {
                        Self::flag(&self.asked, who) && !Self::flag(&self.asked, not_who)
                    }
                }
            }
        }

        /// The old `grade`, whole.
        pub fn grade(rubric: &[Criterion], receipts: &[Receipt]) -> Grade {
            let mut index = Index::for_rubric(rubric);
            index.record(receipts);
            let mut out = Grade {
                score: 0.0,
                max: 0.0,
                total_weight: 0.0,
                passed: 0,
                failed: 0,
                ungraded: 0,
                judged: 0,
                detail: Vec::with_capacity(rubric.len()),
            };
            for criterion in rubric {
                out.total_weight += criterion.weight;
                let status = match &criterion.must_event {
                    None => Status::Ungraded,
                    Some(event) => {
                        out.max += criterion.weight;
                        if index.matches(event) {
                            out.score += criterion.weight;
                            Status::Passed
                        } else {
                            Status::Failed
                        }
                    }
                };
                out.detail.push(CriterionResult {
                    id: criterion.id.clone(),
                    weight: criterion.weight,
                    must: criterion.must.clone(),
                    status,
                    verdict: None,
                    reason: None,
                });
            }
            out.score = round6(out.score);
            out.max = round6(out.max);
            out.total_weight = round6(out.total_weight);
            out.recount();
            out
        }
    }

    proptest::proptest! {
        #[test]
        fn the_summary_grades_like_the_one_pass_grader(
            events in testing::events(),
            rubric in testing::rubric(),
        ) {
            let log = testing::log(&events);
            let whole = Summary::from_log(&log);
            // Recorded one append at a time, the summary is always the one
            // rebuilt from the log so far.
            let mut incremental = Summary::default();
            for (k, receipt) in log.iter().enumerate() {
                incremental.record(receipt);
                proptest::prop_assert_eq!(&incremental, &Summary::from_log(&log[..=k]));
            }
            let mut from_facts = Summary::default();
            for fact in whole.facts() {
                from_facts.apply(fact);
            }
            proptest::prop_assert_eq!(&from_facts, &whole);

            let graded = grade(&rubric, &log);
            proptest::prop_assert_eq!(&graded, &one_pass::grade(&rubric, &log));
            proptest::prop_assert_eq!(&grade_summary(&rubric, &incremental), &graded);
            // What the DO loads for this rubric grades like the whole summary.
            let part = testing::restricted(&whole, &Wanted::of(&rubric));
            proptest::prop_assert_eq!(&grade_summary(&rubric, &part), &graded);
        }
    }

    #[test]
    fn facts_come_from_matcher_receipts_only() {
        let receipts = log(&[
            read("a"),
            ("grade", json!({"score": 1})),
            ("read", json!({"path": 3})),
            ("note", json!({"path": "a"})),
            submit("o", Some("approve")),
            ("submit", json!({"objective": "o", "decision": 7})),
        ]);
        let facts: Vec<Option<Fact>> = receipts.iter().map(Fact::of).collect();
        assert_eq!(
            facts,
            vec![
                Some(Fact::Read { path: "a", seq: 1 }),
                None,
                None,
                None,
                Some(Fact::Submitted {
                    objective: "o",
                    decision: Some("approve")
                }),
                Some(Fact::Submitted {
                    objective: "o",
                    decision: None
                }),
            ]
        );
    }

    #[test]
    fn the_first_read_keeps_its_seq() {
        let s = Summary::from_log(&log(&[read("b"), read("a"), read("b")]));
        assert_eq!(s.first_read("b"), Some(1));
        assert_eq!(s.first_read("a"), Some(2));
        let mut later = s.clone();
        later.apply(Fact::Read { path: "a", seq: 9 });
        assert_eq!(later, s, "a known fact changes nothing");
    }

    #[test]
    fn facts_rebuild_the_summary() {
        let s = Summary::from_log(&log(&[
            read("a"),
            write("w"),
            ask("x"),
            submit("o", None),
            submit("p", Some("approve")),
            submit("p", Some("reject")),
        ]));
        let facts: Vec<Fact> = s.facts().collect();
        assert_eq!(facts.len(), 6, "{facts:?}");
        assert!(facts.contains(&Fact::Submitted {
            objective: "o",
            decision: None
        }));
        let mut back = Summary::default();
        facts.into_iter().for_each(|f| back.apply(f));
        assert_eq!(back, s);
    }

    #[test]
    fn wanted_names_what_the_rubric_looks_up() {
        let rubric = vec![
            crit("rb", 1.0, Some(read_before())),
            crit("w", 1.0, Some(MustEvent::Wrote { path: "W".into() })),
            crit(
                "only",
                1.0,
                Some(MustEvent::AskedOnly {
                    who: "x".into(),
                    not_who: "y".into(),
                }),
            ),
            crit(
                "any",
                1.0,
                Some(MustEvent::Submitted {
                    objective: "o".into(),
                    decision: None,
                }),
            ),
            crit(
                "approve",
                1.0,
                Some(MustEvent::Submitted {
                    objective: "p".into(),
                    decision: Some("approve".into()),
                }),
            ),
            crit("free", 1.0, None),
        ];
        let w = Wanted::of(&rubric);
        assert_eq!(w.reads.into_iter().collect::<Vec<_>>(), vec!["A", "B"]);
        assert_eq!(w.writes.into_iter().collect::<Vec<_>>(), vec!["W"]);
        assert_eq!(w.asks.into_iter().collect::<Vec<_>>(), vec!["x", "y"]);
        assert_eq!(w.objectives.into_iter().collect::<Vec<_>>(), vec!["o"]);
        assert_eq!(
            w.decisions.into_iter().collect::<Vec<_>>(),
            vec![("p", "approve")]
        );
        assert!(Wanted::of(&[crit("free", 1.0, None)]).is_empty());
    }
}
