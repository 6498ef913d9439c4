//! Benchmark (not a test: `#[ignore]`d, run by `scripts/bench.sh runs`):
//! a repo run of a fixture repo with 3 trivial commands through the whole
//! stack (Worker under wrangler dev → CloudboxRunner DO → a fresh container
//! → runner → git + bash → release), next to the same clone + commands done
//! by a plain shell script inside a container of the same image, as the
//! same user with the same clean environment, timed inside (so neither
//! `docker exec` nor a container boot is counted), interleaved. Prints the
//! container boot (start → ready, from the run's runner receipts), both
//! medians, and the overhead per run without the boot.

mod common;

use std::time::Instant;

use common::*;
use serde_json::{json, Value};

const COMMANDS: [&str; 3] = ["echo one", "echo two > two.txt", "cat README.md"];

/// ms between the run's `container.start` and `ready` runner receipts.
fn boot_ms(body: &Value) -> f64 {
    let at = |event: &str| {
        body["runnerReceipts"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["event"] == event))
            .and_then(|r| r["ms"].as_f64())
            .unwrap_or_else(|| panic!("no {event}: {body}"))
    };
    at("ready") - at("container.start")
}

fn median_f(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

#[test]
#[ignore = "benchmark: run with scripts/bench.sh"]
fn bench_runs() {
    let runs: usize = measured_runs(10);
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
    // The baseline: the runner's own steps, by hand, in the same image —
    // clone from the same git server, each command with `bash -lc` in a
    // fresh HOME, as the steps' user, from an empty environment.
    let baseline = runner_container(&[]);
    let script = format!(
        "t0=$(date +%s%N); d=$(mktemp -d); mkdir \"$d/home\"; \
         env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=\"$d/home\" LANG=C.UTF-8 TERM=dumb GIT_TERMINAL_PROMPT=0 \
         git clone -q --depth=1 {}bench/trivial.git \"$d/repo\" && cd \"$d/repo\" && {} && cd / && rm -rf \"$d\" && \
         echo $(( ($(date +%s%N) - t0) / 1000 ))",
        stack.github_url,
        COMMANDS
            .iter()
            .map(|c| format!(
                "env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=\"$d/home\" LANG=C.UTF-8 TERM=dumb bash -lc '{c}' >/dev/null"
            ))
            .collect::<Vec<_>>()
            .join(" && ")
    );
    let body = json!({"repo": repo, "commands": COMMANDS});

    let through_stack = || {
        let t = Instant::now();
        let resp = post_json("/api/runs", Some(&key), &body);
        let took = t.elapsed();
        assert_eq!(resp.status, 200, "{}", resp.text);
        (ms(took), boot_ms(&resp.json()))
    };
    let plain_shell = || {
        let (ok, out) = docker(&["exec", "-u", "agent", &baseline.name, "bash", "-c", &script]);
        assert!(ok, "the baseline script failed: {out}");
        out.trim().parse::<f64>().expect("microseconds") / 1000.0
    };

    // Warm up both paths (DO classes, caches, page cache).
    for _ in 0..3 {
        through_stack();
        plain_shell();
    }
    let (mut stack_ms, mut boots, mut shell_ms) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (wall, boot) = through_stack();
        stack_ms.push(wall);
        boots.push(boot);
        shell_ms.push(plain_shell());
    }
    let without_boot: Vec<f64> = stack_ms.iter().zip(&boots).map(|(w, b)| w - b).collect();
    let (s, b, boot, nb) = (
        median_f(stack_ms.clone()),
        median_f(shell_ms.clone()),
        median_f(boots.clone()),
        median_f(without_boot),
    );
    let min = |v: &Vec<f64>| v.iter().cloned().fold(f64::INFINITY, f64::min);
    println!();
    println!(
        "repo run, 3 trivial commands, {runs} runs each (interleaved), {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "  container start → ready (runner receipts):      median {boot:8.1} ms  (min {:.1}; goal <= 1000 ms)",
        min(&boots)
    );
    println!(
        "  whole stack (POST /api/runs, new container):    median {s:8.1} ms  (min {:.1})",
        min(&stack_ms)
    );
    println!("  whole stack without the container's boot:       median {nb:8.1} ms");
    println!(
        "  plain script in the same image (timed inside):  median {b:8.1} ms  (min {:.1})",
        min(&shell_ms)
    );
    println!(
        "  overhead per run without the boot:              {:8.1} ms  (goal <= 150 ms)",
        nb - b
    );
    println!(
        "  ratio stack without boot / script:              {:8.2}x",
        nb / b
    );
}
