//! Workspace sync benchmark (`make bench`): on one local stack (the built
//! Worker under `wrangler dev`, local D1 and R2), times the incremental sync
//! client against the naive approach (upload every file, then commit) for a
//! 500-file / 50 MB tree: the first push, a re-push with no change, and a
//! re-push with one changed file. Each side uses its own account so neither
//! benefits from the other's stored blobs.
//!
//! Run: `cargo run --example workspace_sync_bench` (scripts/bench.sh does).

#[path = "../tests/common/bench_tree.rs"]
mod bench_tree;
#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use cloudbox::workspaces::sync::{self, PushReport, Transport};
use common::SyncClient;
use serde_json::json;

const FILES: usize = 500;
const TOTAL_BYTES: usize = 50 * 1000 * 1000;
const NO_CHANGE_RUNS: usize = 5;
const ONE_CHANGE_RUNS: usize = 3;

/// The sync client's transport for the bench: the shared one, with a long
/// timeout and a pool for the parallel uploads.
fn client(key: &str) -> SyncClient {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(300))
        .max_idle_connections_per_host(16)
        .build();
    SyncClient::with_agent(key, agent)
}

/// 500 files in 20 directories, sizes 20–180 kB, 50 MB in total.
fn make_tree(root: &Path) -> u64 {
    bench_tree::make_tree(root, FILES, TOTAL_BYTES)
}

fn timed(what: &str, f: impl FnOnce() -> Result<PushReport, String>) -> (Duration, PushReport) {
    let start = Instant::now();
    let report = f().unwrap_or_else(|e| panic!("{what}: {e}"));
    (start.elapsed(), report)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// Changes one file and pushes it by hand, timing each step.
fn breakdown(client: &SyncClient, root: &Path) -> String {
    let path = root.join("pkg19/src/file499.bin");
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let mut out = Vec::new();
    let mut lap = Instant::now();
    let mut step = |name: &str| {
        out.push(format!(
            "{name} {:.0} ms",
            lap.elapsed().as_secs_f64() * 1e3
        ));
        lap = Instant::now();
    };
    let files = sync::scan_tree(root).unwrap();
    step("hash");
    let current = sync::fetch_manifest(client, "bench").unwrap();
    step("manifest");
    let entries: Vec<_> = files.iter().map(|f| f.entry.clone()).collect();
    let hashes = cloudbox::workspaces::manifest::unique_blobs(&entries);
    let missing = sync::ask_missing(client, "bench", &hashes).unwrap();
    assert_eq!(missing.len(), 1);
    step("missing");
    let (status, _) = client
        .send(
            "PUT",
            &format!("/workspaces/bench/blobs/{}", missing[0]),
            Some("application/octet-stream"),
            Some(&bytes),
        )
        .unwrap();
    assert_eq!(status, 201);
    step("upload");
    sync::commit(client, "bench", current.version, &entries).unwrap();
    step("commit");
    out.join(", ")
}

fn main() {
    eprintln!("starting the local stack (wrangler dev; builds the Worker if needed)…");
    common::stack();
    let key = |name: &str| {
        common::mint_key(json!({"name": name}))["key"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let incremental = client(&key("bench incremental"));
    let naive = client(&key("bench naive"));

    let tree = tempfile::tempdir().unwrap();
    let total = make_tree(tree.path());
    let scan_start = Instant::now();
    sync::scan_tree(tree.path()).unwrap();
    let scan = scan_start.elapsed();

    // 1. First push.
    let (first_inc, r1) = timed("first push", || {
        sync::push(&incremental, "bench", tree.path())
    });
    let (first_naive, n1) = timed("naive first push", || {
        sync::push_naive(&naive, "bench", tree.path())
    });
    assert_eq!((r1.uploaded_blobs, n1.uploaded_blobs), (FILES, FILES));

    // 2. Re-push with no change.
    let mut no_change = Vec::new();
    for _ in 0..NO_CHANGE_RUNS {
        let (t, r) = timed("no-change push", || {
            sync::push(&incremental, "bench", tree.path())
        });
        assert_eq!((r.uploaded_blobs, r.committed), (0, false));
        no_change.push(t);
    }
    let (naive_same, n2) = timed("naive no-change push", || {
        sync::push_naive(&naive, "bench", tree.path())
    });
    assert_eq!(n2.uploaded_blobs, FILES);

    // 3. Re-push with one changed file (a different file each run).
    let mut one_change = Vec::new();
    let mut one_bytes = 0;
    for run in 0..ONE_CHANGE_RUNS {
        let path = tree
            .path()
            .join(format!("pkg{:02}/src/file{:03}.bin", run % 20, run));
        let mut bytes = fs::read(&path).unwrap();
        bytes[0] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        let (t, r) = timed("one-change push", || {
            sync::push(&incremental, "bench", tree.path())
        });
        assert_eq!((r.uploaded_blobs, r.committed), (1, true));
        one_bytes = r.uploaded_bytes;
        one_change.push(t);
    }
    // Where one incremental change spends its time, step by step.
    let steps = breakdown(&incremental, tree.path());
    let path = tree.path().join("pkg10/src/file010.bin");
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let (naive_one, n3) = timed("naive one-change push", || {
        sync::push_naive(&naive, "bench", tree.path())
    });
    assert_eq!(n3.uploaded_blobs, FILES);

    let same = median(no_change.clone());
    let one = median(one_change.clone());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mb = total as f64 / 1e6;
    println!();
    println!(
        "Workspace sync: {FILES} files, {mb:.1} MB, local stack (wrangler dev, local D1 + R2)"
    );
    println!(
        "machine: {cores} cores (shared), load average {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "client: 8 parallel requests; hashing the tree alone takes {}",
        secs(scan)
    );
    println!();
    println!(
        "{:<28} {:>12} {:>16} {:>9}",
        "scenario", "incremental", "naive (all files)", "speed-up"
    );
    let line = |name: &str, inc: Duration, nai: Duration| {
        println!(
            "{:<28} {:>12} {:>16} {:>8.1}x",
            name,
            secs(inc),
            secs(nai),
            nai.as_secs_f64() / inc.as_secs_f64()
        )
    };
    line("first push", first_inc, first_naive);
    line(
        &format!("no change (median of {NO_CHANGE_RUNS})"),
        same,
        naive_same,
    );
    line(
        &format!("one file changed (median {ONE_CHANGE_RUNS})"),
        one,
        naive_one,
    );
    println!();
    println!(
        "uploaded: first {} blobs / {:.1} MB; no change 0 blobs; one change 1 blob / {} B; naive {} blobs / {:.1} MB each time",
        r1.uploaded_blobs,
        r1.uploaded_bytes as f64 / 1e6,
        one_bytes,
        n2.uploaded_blobs,
        n2.uploaded_bytes as f64 / 1e6
    );
    println!(
        "all no-change runs: {:?}",
        no_change.iter().map(|d| secs(*d)).collect::<Vec<_>>()
    );
    println!(
        "all one-change runs: {:?}",
        one_change.iter().map(|d| secs(*d)).collect::<Vec<_>>()
    );
    println!("one-change push, step by step: {steps}");
    println!();
    let ratio = naive_same.as_secs_f64() / same.as_secs_f64();
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "target no-change < 0.5 s: {} ({})",
        verdict(same < Duration::from_millis(500)),
        secs(same)
    );
    println!(
        "target no-change >= 20x faster than naive: {} ({ratio:.1}x)",
        verdict(ratio >= 20.0)
    );
    println!(
        "target one change <= 2x no-change: {} ({:.2}x)",
        verdict(one.as_secs_f64() <= 2.0 * same.as_secs_f64()),
        one.as_secs_f64() / same.as_secs_f64()
    );
}
