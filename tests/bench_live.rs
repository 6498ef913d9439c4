//! Benchmark (not a test: `#[ignore]`d, run by `scripts/bench.sh live`):
//! `stop` + `resume` of a live run whose checkout is 500 files / 50 MB of
//! incompressible bytes, through the whole stack (Worker → the run's DO →
//! runner: snapshot, blobs in packs to R2, release; then a fresh container,
//! blobs back, restore), a second stop after a one-file change, and a fork.
//!
//! The baseline does the naive thing with the same tree in the same run:
//! `tar` the checkout in the container, the 50 MB tar up to R2 and back
//! through the Worker (a workspace blob PUT and GET), `tar -x` in the
//! container, plus the container's boot that a resume also pays (taken from
//! the resume's own runner receipts). Both move the whole tree once each
//! way; only ours skips what R2 already has on the second stop.

#[path = "common/bench_tree.rs"]
#[allow(dead_code)] // the tree generator is for the other benches
mod bench_tree;
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const FILES: usize = 500;
const FILE_BYTES: usize = 100_000;

fn post(key: &str, id: &str, op: &str, body: Value) -> Value {
    let resp = post_json(&format!("/api/runs/{id}/{op}"), Some(key), &body);
    assert!(
        matches!(resp.status, 200 | 201),
        "{op}: {} {}",
        resp.status,
        resp.text
    );
    resp.json()
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed())
}

/// The stdout of the run's last `snapshot` receipt ("N files, B bytes; U of M blobs uploaded").
fn last_snapshot(body: &Value) -> String {
    body["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|r| r["type"] == "snapshot")
        .map(|r| r["stdout"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn boot_ms(body: &Value) -> f64 {
    let receipts = body["runnerReceipts"].as_array().unwrap();
    let last = |event: &str| {
        receipts
            .iter()
            .rev()
            .find(|r| r["event"] == event)
            .and_then(|r| r["ms"].as_f64())
            .unwrap_or_else(|| panic!("no {event}"))
    };
    last("ready") - last("container.start")
}

fn exec_ms(key: &str, id: &str, command: &str) -> f64 {
    let receipt = post(
        key,
        id,
        "exec",
        json!({"command": command, "timeoutMs": 600000}),
    );
    assert_eq!(receipt["exitCode"], 0, "{command}: {receipt}");
    receipt["durationMs"].as_f64().unwrap()
}

#[test]
#[ignore = "benchmark: run with scripts/bench.sh"]
fn bench_live() {
    stack_with_vars(&[("LIVE_TTL_MIN_SECONDS", "1")]);
    let key = mint_key(json!({"name": "bench", "keyType": "internal"}))["key"]
        .as_str()
        .unwrap()
        .to_string();
    let repo = fixture_repo("bench", "live", &[("README.md", "bench\n")]);
    let make = format!(
        "for i in $(seq 1 {FILES}); do d=pkg$((i % 20)); mkdir -p $d; \
         head -c {FILE_BYTES} /dev/urandom > $d/file$i.bin; done"
    );
    let resp = post_json(
        "/api/runs",
        Some(&key),
        &json!({"repo": repo, "commands": [make], "live": true, "ttlSeconds": 3600, "timeoutMs": 600000}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text);
    let id = resp.json()["runId"].as_str().unwrap().to_string();

    // Ours: stop (snapshot + release), resume (fresh container + restore).
    let (stopped, stop_1) = timed(|| post(&key, &id, "stop", json!({})));
    let first = last_snapshot(&stopped);
    let (resumed, resume_1) = timed(|| post(&key, &id, "resume", json!({})));
    let boot = boot_ms(&resumed);
    // git refreshes its index once in a restored tree; then one file changes.
    exec_ms(
        &key,
        &id,
        "git status --porcelain >/dev/null; echo x >> pkg1/file1.bin",
    );
    let (stopped, stop_2) = timed(|| post(&key, &id, "stop", json!({})));
    let second = last_snapshot(&stopped);
    let (_, resume_2) = timed(|| post(&key, &id, "resume", json!({})));
    let (forked, fork) = timed(|| post(&key, &id, "fork", json!({"live": true})));
    let fork_id = forked["runId"].as_str().unwrap().to_string();

    // The naive baseline, same tree, same run.
    let tar_ms = exec_ms(
        &key,
        &id,
        "tar -cf /tmp/tree.tar --exclude=.git . && ls -l /tmp/tree.tar",
    );
    let tar_bytes = {
        let receipt = post(
            &key,
            &id,
            "exec",
            json!({"command": "stat -c %s /tmp/tree.tar"}),
        );
        receipt["stdout"]
            .as_str()
            .unwrap()
            .trim()
            .parse::<usize>()
            .unwrap()
    };
    let tar = bench_tree::noise(7, tar_bytes);
    let sha = cloudbox::common::canonical::sha256_hex(&tar);
    let auth = format!("Bearer {key}");
    let (put, up) = timed(|| {
        send(
            "PUT",
            &format!("/workspaces/bench-naive/blobs/{sha}"),
            &[
                ("authorization", &auth),
                ("content-type", "application/octet-stream"),
            ],
            Some(&tar),
        )
    });
    assert!(matches!(put.status, 200 | 201), "{}", put.text);
    let (got, down) = timed(|| {
        send(
            "GET",
            &format!("/workspaces/bench-naive/blobs/{sha}"),
            &[("authorization", &auth)],
            None,
        )
    });
    assert_eq!(got.status, 200);
    let untar_ms = exec_ms(
        &key,
        &id,
        "rm -rf /tmp/u && mkdir /tmp/u && tar -xf /tmp/tree.tar -C /tmp/u",
    );
    let naive_stop = tar_ms + ms(up);
    let naive_resume = boot + ms(down) + untar_ms;

    for run in [&id, &fork_id] {
        post(&key, run, "stop", json!({}));
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!();
    println!(
        "live runs: stop + resume of {FILES} files / {} MB (load {})",
        FILES * FILE_BYTES / 1_000_000,
        load.trim()
    );
    println!("  first stop:     {:8.0} ms   ({first})", ms(stop_1));
    println!(
        "  first resume:   {:8.0} ms   (container boot {boot:.0} ms)",
        ms(resume_1)
    );
    println!(
        "  second stop:    {:8.0} ms   after one file changed ({second})",
        ms(stop_2)
    );
    println!("  second resume:  {:8.0} ms", ms(resume_2));
    println!(
        "  fork (live):    {:8.0} ms   (from the latest snapshot, a new container)",
        ms(fork)
    );
    println!(
        "  naive stop:     {naive_stop:8.0} ms   (tar {tar_ms:.0} ms + {} MB up {:.0} ms)",
        tar_bytes / 1_000_000,
        ms(up)
    );
    println!("  naive resume:   {naive_resume:8.0} ms   (boot {boot:.0} + {} MB down {:.0} + untar {untar_ms:.0} ms)", tar_bytes / 1_000_000, ms(down));
    println!(
        "  ratios: first stop+resume {:.2}x naive; second stop {:.2}x naive stop; \
         bytes up on the second stop: one blob vs {} MB",
        (ms(stop_1) + ms(resume_1)) / (naive_stop + naive_resume),
        ms(stop_2) / naive_stop,
        tar_bytes / 1_000_000
    );
}
