//! Benchmark (not a test: `#[ignore]`d, run by `scripts/bench.sh routes`):
//! the latency of the hot routes on the local stack, one keep-alive
//! connection, against the stack's own floor measured in the same run:
//! `GET /health`, which passes the same Worker entry, router and response
//! path but reads no D1, R2 or Durable Object. Routes are called round-robin
//! (one of each, then again) so that all of them see the same machine.
//!
//! Beside each route: the D1 round trips it makes by design (the README's
//! table, which `ratelimit_d1` and the handlers implement; wrangler dev
//! cannot count them). `BENCH_RUNS` sets the rounds (default 200).

mod common;

use std::time::Duration;

use cloudbox::workspaces::sync;
use common::*;
use serde_json::{json, Value};

struct Route {
    name: &'static str,
    d1: &'static str,
    method: &'static str,
    path: String,
    body: Option<Value>,
    auth: bool,
}

#[test]
#[ignore = "benchmark: run with scripts/bench.sh"]
fn bench_routes() {
    let rounds: usize = measured_runs(200).max(5);
    stack();
    let load_before = load_average();
    let key = mint_key(json!({"name": "bench routes"}))["key"]
        .as_str()
        .unwrap()
        .to_string();

    // A workspace of three files, pushed with the sync client.
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in [
        ("a.txt", "alpha\n"),
        ("src/b.rs", "fn b() {}\n"),
        ("c.md", "# c\n"),
    ] {
        let file = dir.path().join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    }
    let ws = format!("bench-routes-{}", std::process::id());
    sync::push(&SyncClient::new(&key), &ws, dir.path()).expect("push");
    let manifest = get(&format!("/workspaces/{ws}/manifest"), Some(&key)).json();
    let sha = manifest["files"][0]["sha256"].as_str().unwrap().to_string();

    // A computer.
    let spec = json!({
        "name": format!("bench routes {}", std::process::id()),
        "profile": {"role": "engineer"},
        "filesystem": [{"path": "README.md", "kind": "doc", "content": "Start here."}],
        "collaborators": [],
        "objectives": [{"id": "fix", "title": "Fix it"}],
        "rubric": [{"id": "read", "must": "Read the README", "mustEvent": {"type": "read", "path": "README.md"}}]
    });
    let resp = post_json("/api/computers", Some(&key), &spec);
    assert_eq!(resp.status, 201, "{}", resp.text);
    let id = resp.json()["id"].as_str().unwrap().to_string();

    let route = |name, d1, method, path: String, body: Option<Value>| Route {
        name,
        d1,
        method,
        path,
        body,
        auth: true,
    };
    let routes = vec![
        Route {
            auth: false,
            ..route("GET /health (floor)", "0", "GET", "/health".into(), None)
        },
        route(
            "GET /billing/account",
            "2",
            "GET",
            "/billing/account".into(),
            None,
        ),
        route(
            "GET /workspaces/:id/manifest",
            "2",
            "GET",
            format!("/workspaces/{ws}/manifest"),
            None,
        ),
        route(
            "GET /workspaces/:id/blobs/:sha",
            "1",
            "GET",
            format!("/workspaces/{ws}/blobs/{sha}"),
            None,
        ),
        route(
            "POST /workspaces/:id/blobs/missing",
            "2",
            "POST",
            format!("/workspaces/{ws}/blobs/missing"),
            Some(json!({"sha256": [sha]})),
        ),
        route(
            "GET /api/c/:id/read",
            "1",
            "GET",
            format!("/api/c/{id}/read?path=README.md"),
            None,
        ),
        route(
            "POST /api/c/:id/submit",
            "1",
            "POST",
            format!("/api/c/{id}/submit"),
            Some(json!({"objective": "fix", "decision": "wait"})),
        ),
        route(
            "GET /api/c/:id/grade",
            "1",
            "GET",
            format!("/api/c/{id}/grade"),
            None,
        ),
    ];

    let (authed, anonymous) = (BenchClient::new(Some(&key)), BenchClient::new(None));
    let call = |r: &Route| {
        let client = if r.auth { &authed } else { &anonymous };
        client.timed(r.method, &r.path, r.body.as_ref()).0
    };
    for r in &routes {
        call(r); // warm: connection, isolate, DO
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); routes.len()];
    for _ in 0..rounds {
        for (r, t) in routes.iter().zip(times.iter_mut()) {
            t.push(call(r));
        }
    }
    let medians: Vec<f64> = times.into_iter().map(|t| ms(median(t))).collect();
    let floor = medians[0];

    println!();
    println!(
        "Per-route latency, local stack (wrangler dev, local D1/R2/DOs), one keep-alive client"
    );
    println!(
        "machine: 2 cores (shared), load average {load_before} before, {} after; {rounds} rounds, round-robin",
        load_average()
    );
    println!();
    println!(
        "{:<36} {:>4} {:>10} {:>10}",
        "route", "D1", "median", "× floor"
    );
    for (r, m) in routes.iter().zip(&medians) {
        println!(
            "{:<36} {:>4} {:>7.2} ms {:>9.2}x",
            r.name,
            r.d1,
            m,
            m / floor
        );
    }
}
