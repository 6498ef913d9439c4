//! The grader (pure): replays a computer's receipt log against its rubric.
//! Only recorded actions count, and the same log always gives the same
//! score. One pass indexes the log; each criterion is then a lookup, so a
//! large log costs one scan, not one scan per criterion.
//!
//! Matchers (API.md): `read{path}`, `wrote{path}`, `readBefore{before, after}`
//! (before read and, if after was ever read, before's first read strictly
//! precedes after's first read), `submitted{objective, decision?}` (decision
//! compared only when given), `asked{who}`, `askedOnly{who, notWho}`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::Serialize;

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

/// FNV-1a: the index keys are short strings taken from the rubric (at most
/// two per criterion), so a simple fast hash beats SipHash here, and no
/// agent-chosen key is ever stored (lookups only), so there is nothing to flood.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type Map<'r, V> = HashMap<&'r str, V, BuildHasherDefault<Fnv>>;

/// Submissions of one objective the rubric asks about.
#[derive(Default)]
struct Submissions<'r> {
    any: bool,
    /// The decisions the rubric wants, and whether each was submitted.
    decisions: Vec<(&'r str, bool)>,
}

/// What the matchers need from the log: only the paths, collaborators and
/// objectives the rubric names, filled in one pass over the receipts.
#[derive(Default)]
struct Index<'r> {
    /// Position of each wanted path's first `read`.
    first_read: Map<'r, Option<usize>>,
    written: Map<'r, bool>,
    asked: Map<'r, bool>,
    submitted: Map<'r, Submissions<'r>>,
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
                    if let Some(slot) = field("path").and_then(|p| self.first_read.get_mut(p)) {
                        slot.get_or_insert(pos);
                    }
                }
                "write" => {
                    if let Some(seen) = field("path").and_then(|p| self.written.get_mut(p)) {
                        *seen = true;
                    }
                }
                "ask" => {
                    if let Some(seen) = field("who").and_then(|w| self.asked.get_mut(w)) {
                        *seen = true;
                    }
                }
                "submit" => {
                    if let Some(subs) = field("objective").and_then(|o| self.submitted.get_mut(o)) {
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

    fn flag(map: &Map<'r, bool>, key: &str) -> bool {
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
                    Some(wanted) => subs.decisions.iter().any(|(d, seen)| *seen && d == wanted),
                },
            },
            MustEvent::Asked { who } => Self::flag(&self.asked, who),
            MustEvent::AskedOnly { who, not_who } => {
                Self::flag(&self.asked, who) && !Self::flag(&self.asked, not_who)
            }
        }
    }
}

/// Grades `receipts` against `rubric`, in rubric order.
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
}
