//! Benchmark (not a test: `#[ignore]`d, run by `scripts/bench.sh cli`), on
//! one local stack, in one run:
//! - `cloudbox push` of a 500-file / 50 MB tree (first push, no-change
//!   re-push, one-file re-push) next to the library sync client of the
//!   existing sync bench and a naive client that uploads every file, each
//!   with its own account so none benefits from another's blobs;
//! - `cloudbox exec` of a trivial task on a 200-file workspace next to the
//!   same execute POSTed by the existing bench client, interleaved: the
//!   difference is what the CLI adds (its push check, the stream, the pull
//!   and its own start).

#[path = "../../tests/common/bench_tree.rs"]
mod bench_tree;
#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/common/responses_server.rs"]
#[allow(dead_code)]
mod responses_server;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cloudbox::workspaces::sync;
use common::*;
use responses_server::ModelServer;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_cloudbox");
const FILES: usize = 500;
const TOTAL_BYTES: usize = 50 * 1000 * 1000;

fn runs() -> usize {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1)
}

fn internal_key(name: &str) -> String {
    mint_key(json!({"name": name, "keyType": "internal"}))["key"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The CLI, as a user runs it: its own process, the key in the environment.
fn cli(key: &str, args: &[&str]) -> (Duration, Value) {
    let home = std::env::temp_dir();
    let start = Instant::now();
    let out = Command::new(BIN)
        .arg("--json")
        .args(args)
        .env("CLOUDBOX_URL", &current().base)
        .env("CLOUDBOX_API_KEY", key)
        .env("CLOUDBOX_CONFIG", home.join("cloudbox-bench-unused.toml"))
        .output()
        .expect("run cloudbox");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "cloudbox {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        took,
        serde_json::from_slice(&out.stdout).expect("one JSON document"),
    )
}

fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let out = f();
    (start.elapsed(), out)
}

fn s(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn flip_first_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{cores} cores, load average {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

#[test]
#[ignore = "benchmark: run with scripts/bench.sh cli"]
fn bench_cli() {
    let model = ModelServer::start_on(&containers().bridge_ip);
    stack_with_vars(&[
        ("AGENT_MODEL_BASE_URL", model.base_url.as_str()),
        ("AGENT_MODEL", "bench-model"),
        ("OPENAI_API_KEY", "upstream-secret"),
    ]);
    let n = runs();
    push_bench(n);
    exec_bench(n);
}

fn push_bench(n: usize) {
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path();
    let total = bench_tree::make_tree(root, FILES, TOTAL_BYTES);
    let dir = root.to_str().unwrap();
    let cli_key = internal_key("bench cli");
    let lib = SyncClient::new(&internal_key("bench sync client"));
    let naive = SyncClient::new(&internal_key("bench naive"));

    // 1. First push.
    let (cli_first, report) = cli(&cli_key, &["push", dir, "--workspace", "bench"]);
    assert_eq!(report["uploadedBlobs"], FILES);
    let (lib_first, r) = timed(|| sync::push(&lib, "bench", root).unwrap());
    assert_eq!(r.uploaded_blobs, FILES);
    let (naive_first, _) = timed(|| sync::push_naive(&naive, "bench", root).unwrap());

    // 2. No change, interleaved.
    let (mut cli_same, mut lib_same, mut naive_same) = (vec![], vec![], vec![]);
    for _ in 0..n {
        let (t, report) = cli(&cli_key, &["push", dir, "--workspace", "bench"]);
        assert_eq!(
            (
                report["uploadedBlobs"].as_u64(),
                report["committed"].as_bool()
            ),
            (Some(0), Some(false))
        );
        cli_same.push(t);
        let (t, r) = timed(|| sync::push(&lib, "bench", root).unwrap());
        assert_eq!(r.uploaded_blobs, 0);
        lib_same.push(t);
    }
    naive_same.push(timed(|| sync::push_naive(&naive, "bench", root).unwrap()).0);

    // 3. One changed file (another each run): every client sends it.
    let (mut cli_one, mut lib_one, mut naive_one) = (vec![], vec![], vec![]);
    for i in 0..n {
        flip_first_byte(&root.join(format!("pkg{:02}/src/file{i:03}.bin", i % 20)));
        let (t, report) = cli(&cli_key, &["push", dir, "--workspace", "bench"]);
        assert_eq!(report["uploadedBlobs"], 1);
        cli_one.push(t);
        let (t, r) = timed(|| sync::push(&lib, "bench", root).unwrap());
        assert_eq!(r.uploaded_blobs, 1);
        lib_one.push(t);
    }
    naive_one.push(timed(|| sync::push_naive(&naive, "bench", root).unwrap()).0);

    let (cs, ls, co, lo) = (
        median(cli_same.clone()),
        median(lib_same),
        median(cli_one.clone()),
        median(lib_one),
    );
    println!();
    println!(
        "cloudbox push: {FILES} files, {:.1} MB, local stack; {}; dev profile, 8 parallel transfers each",
        total as f64 / 1e6,
        machine()
    );
    println!(
        "{:<26} {:>12} {:>14} {:>14} {:>10} {:>10}",
        "scenario", "cloudbox", "sync client", "naive", "vs sync", "vs naive"
    );
    let line = |name: &str, c: Duration, l: Duration, v: Duration| {
        println!(
            "{name:<26} {:>12} {:>14} {:>14} {:>9.2}x {:>9.2}x",
            s(c),
            s(l),
            s(v),
            c.as_secs_f64() / l.as_secs_f64(),
            c.as_secs_f64() / v.as_secs_f64()
        );
    };
    line("first push", cli_first, lib_first, naive_first);
    line(&format!("no change (median of {n})"), cs, ls, naive_same[0]);
    line(&format!("one file (median of {n})"), co, lo, naive_one[0]);
    println!(
        "goals: no change {} (≤ 0.3 s); one file / no change {:.2}x (≤ 2x)",
        s(cs),
        co.as_secs_f64() / cs.as_secs_f64()
    );
    println!(
        "all cloudbox no-change runs: {:?}",
        cli_same.iter().map(|d| s(*d)).collect::<Vec<_>>()
    );
    println!(
        "all cloudbox one-file runs: {:?}",
        cli_one.iter().map(|d| s(*d)).collect::<Vec<_>>()
    );
}

fn exec_bench(n: usize) {
    let key = internal_key("bench exec");
    // Two 200-file workspaces (about 2 MB each): one for each client, so
    // neither waits for the other's execute.
    let make = |root: &Path| {
        for i in 0..200 {
            let dir = root.join(format!("src/m{}", i % 10));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("f{i}.txt")), format!("{i}\n").repeat(2000)).unwrap();
        }
    };
    let cli_tree = tempfile::tempdir().unwrap();
    make(cli_tree.path());
    let base_tree = tempfile::tempdir().unwrap();
    make(base_tree.path());
    let client = SyncClient::new(&key);
    sync::push(&client, "bench-exec-base", base_tree.path()).unwrap();
    let dir = cli_tree.path().to_str().unwrap().to_string();

    let mut k = 0;
    let mut through_cli = || {
        k += 1;
        let task = format!("write out/{k}.txt run {k}");
        let (t, body) = cli(
            &key,
            &[
                "exec",
                &task,
                "--dir",
                &dir,
                "--workspace",
                "bench-exec-cli",
            ],
        );
        assert_eq!(body["ok"], true, "{body}");
        assert!(cli_tree.path().join(format!("out/{k}.txt")).exists());
        t
    };
    let mut m = 0;
    let mut by_bench_client = || {
        m += 1;
        let task = format!("write out/{m}.txt run {m}");
        let t = Instant::now();
        let resp = post_json(
            "/execute",
            Some(&key),
            &json!({"task": task, "workspaceId": "bench-exec-base"}),
        );
        let took = t.elapsed();
        assert_eq!(resp.status, 200, "{}", resp.text);
        took
    };
    // Warm up both (DOs, containers, the agent's first start).
    for _ in 0..2 {
        through_cli();
        by_bench_client();
    }
    let (mut cli_times, mut base_times) = (vec![], vec![]);
    for _ in 0..n {
        cli_times.push(through_cli());
        base_times.push(by_bench_client());
    }
    let (c, b) = (median(cli_times.clone()), median(base_times.clone()));
    println!();
    println!(
        "cloudbox exec: trivial task, 200-file workspace, real Codex CLI + scripted model, {n} runs each (interleaved); {}",
        machine()
    );
    println!(
        "  cloudbox exec (push check, SSE execute, pull):  median {:8.1} ms",
        ms(c)
    );
    println!(
        "  POST /execute by the bench client (JSON):       median {:8.1} ms",
        ms(b)
    );
    println!(
        "  the CLI adds (median difference):               {:8.1} ms  (goal ≤ 100 ms); ratio {:.2}x",
        ms(c) - ms(b),
        ms(c) / ms(b)
    );
    println!(
        "  all cloudbox: {:?}",
        cli_times
            .iter()
            .map(|d| format!("{:.0}", ms(*d)))
            .collect::<Vec<_>>()
    );
    println!(
        "  all baseline: {:?}",
        base_times
            .iter()
            .map(|d| format!("{:.0}", ms(*d)))
            .collect::<Vec<_>>()
    );
}
