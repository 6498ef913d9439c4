//! Benchmark (not a test: `#[ignore]`d, run by `scripts/bench.sh computers`):
//! the computer surface, against one computer on the local stack (Worker
//! under wrangler dev → the Computer DO and its SQLite), over keep-alive
//! HTTP. It measures `GET read` one request at a time (median, p90, req/s)
//! and from 8 clients at once (req/s), receipt appends (`POST write` of a
//! small file, per second), and `GET grade` at 1 000 and at 10 000 receipts
//! (median of several, each checked for the full score).
//!
//! A grade reads the summary that each append keeps, not the log: grade
//! time at 10 000 / at 1 000 should be about 1, and a grade at 10 000
//! within 1.5x a read. `GET receipts` at 10 000 (the whole log, which the
//! grader once read) is shown beside it. `BENCH_RUNS` sets the number of
//! grades per point (default 15), each next to a read.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const READS: usize = 300;
const CLIENTS: usize = 8;
const READS_PER_CLIENT: usize = 50;
const APPENDS: usize = 300;
/// Clients that fill the log between the measured points.
const FILLERS: usize = 4;

fn spec() -> Value {
    json!({
        "name": format!("bench computers {}", std::process::id()),
        "profile": {"role": "on-call engineer"},
        "filesystem": [
            {"path": "README.md", "kind": "doc", "content": "Payments service. Start with the incident."},
            {"path": "incident/summary.md", "kind": "incident", "content": "Checkout latency spiked at 02:00."},
            {"path": "logs/api.log", "kind": "log", "content": "02:00 p99=4s\n"}
        ],
        "collaborators": [
            {"id": "alice", "role": "SRE",
             "privateFiles": [{"path": "private/alice-notes.md", "kind": "notes", "content": "The index on orders was dropped."}]},
            {"id": "bob", "role": "product manager"}
        ],
        "objectives": [{"id": "fix", "title": "Restore checkout latency"}],
        "rubric": [
            {"id": "readme-first", "weight": 2, "must": "README before the incident", "mustEvent": {"type": "readBefore", "before": "README.md", "after": "incident/summary.md"}},
            {"id": "asked-alice", "must": "Ask the SRE", "mustEvent": {"type": "asked", "who": "alice"}},
            {"id": "not-bob", "must": "Not the PM", "mustEvent": {"type": "askedOnly", "who": "alice", "notWho": "bob"}},
            {"id": "notes", "must": "Read alice's notes", "mustEvent": {"type": "read", "path": "private/alice-notes.md"}},
            {"id": "report", "weight": 3, "must": "Write a report", "mustEvent": {"type": "wrote", "path": "REPORT.md"}},
            {"id": "rollback", "weight": 2, "must": "Restore the index", "mustEvent": {"type": "submitted", "objective": "fix", "decision": "restore-index"}},
            {"id": "submitted", "must": "Submit", "mustEvent": {"type": "submitted", "objective": "fix"}},
            {"id": "tone", "weight": 0.5, "must": "The report is calm"}
        ]
    })
}

/// The i-th filler action: mostly reads and small writes, some asks of
/// alice and submissions, none that changes the score.
fn filler(i: usize) -> (&'static str, String, Option<Value>) {
    match i % 10 {
        0..=4 => (
            "GET",
            format!("read?path={}", ["README.md", "logs/api.log"][i % 2]),
            None,
        ),
        5..=7 => (
            "POST",
            "write".into(),
            Some(json!({"path": format!("out/{}.txt", i % 20), "content": "filler"})),
        ),
        8 => (
            "POST",
            "ask".into(),
            Some(json!({"who": "alice", "message": "anything new?"})),
        ),
        _ => (
            "POST",
            "submit".into(),
            Some(json!({"objective": "fix", "decision": "wait"})),
        ),
    }
}

/// Adds receipts with `FILLERS` clients until the log holds `until`.
fn fill(clients: &[BenchClient], id: &str, receipts: &AtomicUsize, until: usize) {
    let start = receipts.load(Ordering::SeqCst);
    let next = AtomicUsize::new(start);
    std::thread::scope(|s| {
        for client in clients.iter().take(FILLERS) {
            let next = &next;
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= until {
                    break;
                }
                let (method, action, body) = filler(i);
                client.timed(method, &format!("/api/c/{id}/{action}"), body.as_ref());
                receipts.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
}

fn sorted_ms(xs: &[Duration]) -> Vec<f64> {
    let mut v: Vec<f64> = xs.iter().map(|d| ms(*d)).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn median_ms(xs: &[Duration]) -> f64 {
    let v = sorted_ms(xs);
    v[v.len() / 2]
}

fn p90_ms(xs: &[Duration]) -> f64 {
    let v = sorted_ms(xs);
    v[((v.len() as f64 * 0.9).ceil() as usize).max(1) - 1]
}

fn per_second(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

/// `runs` reads and `runs` grades, interleaved so that both see the same
/// machine (a shared one drifts); each grade is checked for the full score.
fn reads_and_grades(
    client: &BenchClient,
    id: &str,
    receipts: &AtomicUsize,
    runs: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut reads, mut grades) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let read = format!("/api/c/{id}/read?path=README.md");
        reads.push(client.timed("GET", &read, None).0);
        let (took, text) = client.timed("GET", &format!("/api/c/{id}/grade"), None);
        grades.push(took);
        receipts.fetch_add(2, Ordering::SeqCst);
        let g: Value = serde_json::from_str(&text).expect("grade JSON");
        assert_eq!(g["score"], g["max"], "not the full score: {g}");
        assert_eq!(g["passed"], 7, "{g}");
    }
    (reads, grades)
}

#[test]
#[ignore = "benchmark: run with scripts/bench.sh"]
fn bench_computers() {
    let runs: usize = measured_runs(15);
    stack();
    let load_before = load_average();
    let key = mint_key(json!({"name": "bench"}))["key"]
        .as_str()
        .unwrap()
        .to_string();
    let clients: Vec<BenchClient> = (0..CLIENTS).map(|_| BenchClient::new(Some(&key))).collect();
    let one = &clients[0];
    let resp = post_json("/api/computers", Some(&key), &spec());
    assert_eq!(resp.status, 201, "{}", resp.text);
    let id = resp.json()["id"].as_str().unwrap().to_string();
    let at = |action: &str| format!("/api/c/{id}/{action}");
    let read_path = at("read?path=README.md");
    let receipts = AtomicUsize::new(1); // the log starts with its init receipt
    let count = |n: usize| {
        receipts.fetch_add(n, Ordering::SeqCst);
    };

    // What earns the full score, first; then every later grade checks it.
    for (method, action, body) in [
        ("GET", "read?path=README.md", None),
        ("GET", "read?path=incident/summary.md", None),
        (
            "POST",
            "ask",
            Some(json!({"who": "alice", "message": "db?"})),
        ),
        ("GET", "read?path=private/alice-notes.md", None),
        (
            "POST",
            "write",
            Some(json!({"path": "REPORT.md", "content": "restore the index"})),
        ),
        (
            "POST",
            "submit",
            Some(json!({"objective": "fix", "decision": "restore-index"})),
        ),
    ] {
        one.timed(method, &at(action), body.as_ref());
        count(1);
    }
    // Warm up every client's connection and the DO.
    for client in &clients {
        for _ in 0..3 {
            client.timed("GET", &read_path, None);
            count(1);
        }
    }

    // Appends: a small file rewritten, one client.
    let started = Instant::now();
    for i in 0..APPENDS {
        let body = json!({"path": format!("small/{}.txt", i % 10), "content": "x"});
        one.timed("POST", &at("write"), Some(&body));
    }
    let appends_per_s = per_second(APPENDS, started.elapsed());
    count(APPENDS);

    fill(&clients, &id, &receipts, 1_000);
    let at_1k = receipts.load(Ordering::SeqCst);
    let (reads_1k, grade_1k) = reads_and_grades(one, &id, &receipts, runs);

    // Reads, one at a time, then from CLIENTS clients at once.
    let started = Instant::now();
    let reads: Vec<Duration> = (0..READS)
        .map(|_| one.timed("GET", &read_path, None).0)
        .collect();
    let seq_per_s = per_second(READS, started.elapsed());
    count(READS);
    let started = Instant::now();
    std::thread::scope(|s| {
        for client in &clients {
            let path = &read_path;
            s.spawn(move || {
                for _ in 0..READS_PER_CLIENT {
                    client.timed("GET", path, None);
                }
            });
        }
    });
    let concurrent_per_s = per_second(CLIENTS * READS_PER_CLIENT, started.elapsed());
    count(CLIENTS * READS_PER_CLIENT);

    let fill_started = Instant::now();
    fill(&clients, &id, &receipts, 10_000);
    let fill_took = fill_started.elapsed();
    let at_10k = receipts.load(Ordering::SeqCst);
    let (reads_10k, grade_10k) = reads_and_grades(one, &id, &receipts, runs);
    let (log_took, log) = one.timed("GET", &at("receipts"), None);
    let log: Value = serde_json::from_str(&log).unwrap();
    let logged = log["receipts"].as_array().unwrap().len();
    assert_eq!(logged, receipts.load(Ordering::SeqCst), "receipts counted");

    let (g1, g10, r1, r10) = (
        median_ms(&grade_1k),
        median_ms(&grade_10k),
        median_ms(&reads_1k),
        median_ms(&reads_10k),
    );
    let min = |xs: &[Duration]| sorted_ms(xs)[0];
    println!();
    println!(
        "computers: one computer on the local stack, keep-alive HTTP, {} cores, load average {load_before} (before)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    );
    println!(
        "  GET read, sequential ({READS}):     median {:6.2} ms  p90 {:6.2} ms  {seq_per_s:6.1} req/s",
        median_ms(&reads),
        p90_ms(&reads)
    );
    println!(
        "  GET read, {CLIENTS} clients ({} in all):                         {concurrent_per_s:6.1} req/s",
        CLIENTS * READS_PER_CLIENT
    );
    println!(
        "  POST write (append), sequential ({APPENDS}):                     {appends_per_s:6.1} /s"
    );
    for (at, g, r, grades) in [(at_1k, g1, r1, &grade_1k), (at_10k, g10, r10, &grade_10k)] {
        println!(
            "  at {at:5} receipts: GET grade median {g:6.2} ms (min {:.2}), GET read median {r:6.2} ms, grade/read {:.2}x",
            min(grades),
            g / r
        );
    }
    println!(
        "  GET receipts at {logged} (the whole log, which grading no longer reads): {:.2} ms",
        ms(log_took)
    );
    println!(
        "  (filling {} receipts with {FILLERS} clients took {:.1} s)",
        at_10k - at_1k,
        fill_took.as_secs_f64()
    );
    println!(
        "  ratio grade@10k / grade@1k:  {:5.2}x  (goal ≈ 1, flat; minima {:.2}x; {:.2}x each relative to its reads)",
        g10 / g1,
        min(&grade_10k) / min(&grade_1k),
        (g10 / r10) / (g1 / r1)
    );
    println!(
        "  ratio grade@10k / read:      {:5.2}x  (goal <= 1.5; read interleaved at 10k)",
        g10 / r10
    );
    println!("  load average after: {}", load_average());
}
