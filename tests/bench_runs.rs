//! Benchmark (not a test: `#[ignore]`d, run by `scripts/bench.sh runs`):
//! the wall time of a repo run of a fixture repo with 3 trivial commands
//! through the whole stack (Worker under wrangler dev → CloudboxRunner DO →
//! runner → git + bash), next to the same clone + commands done by a plain
//! shell script on the same machine, interleaved. Prints both medians and
//! the overhead per run.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const COMMANDS: [&str; 3] = ["echo one", "echo two > two.txt", "cat README.md"];

#[test]
#[ignore = "benchmark: run with scripts/bench.sh"]
fn bench_runs() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .max(1);
    let stack = stack();
    let key = mint_key(json!({"name": "bench"}))["key"]
        .as_str()
        .unwrap()
        .to_string();
    let repo = fixture_repo(
        "bench",
        "trivial",
        &[("README.md", "bench\n"), ("src/a.txt", "a\n")],
    );
    let bare = stack.github_dir.join("bench/trivial.git");
    let script = format!(
        "set -e; d=$(mktemp -d); git clone -q --depth=1 file://{} \"$d/repo\"; cd \"$d/repo\"; {}; cd /; rm -rf \"$d\"",
        bare.display(),
        COMMANDS
            .iter()
            .map(|c| format!("bash -lc '{c}' >/dev/null"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let body = json!({"repo": repo, "commands": COMMANDS});

    let through_stack = || {
        let t = Instant::now();
        let resp = post_json("/api/runs", Some(&key), &body);
        let took = t.elapsed();
        assert_eq!(resp.status, 200, "{}", resp.text);
        took
    };
    let plain_shell = || {
        let t = Instant::now();
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        let took = t.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        took
    };

    // Warm up both paths (DO classes, caches, page cache).
    for _ in 0..3 {
        through_stack();
        plain_shell();
    }
    let (mut stack_times, mut shell_times) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        stack_times.push(through_stack());
        shell_times.push(plain_shell());
    }
    let (s, b) = (median(stack_times.clone()), median(shell_times.clone()));
    let min = |v: &Vec<Duration>| ms(*v.iter().min().unwrap());
    println!();
    println!(
        "repo run, 3 trivial commands, {runs} runs each (interleaved), {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "  whole stack (POST /api/runs → DO → runner): median {:8.1} ms  (min {:.1})",
        ms(s),
        min(&stack_times)
    );
    println!(
        "  plain shell script (git clone + bash -lc):  median {:8.1} ms  (min {:.1})",
        ms(b),
        min(&shell_times)
    );
    println!(
        "  overhead per run (median difference):       {:8.1} ms  (target <= 150 ms)",
        ms(s) - ms(b)
    );
    println!(
        "  ratio stack / shell:                         {:8.2}x",
        ms(s) / ms(b)
    );
}
