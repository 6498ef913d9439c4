//! Benchmark (not a test: `#[ignore]`d, run by `scripts/bench.sh execute`):
//! the wall time of one `POST /execute` on a 200-file workspace through the
//! whole stack (Worker → workspace DO → sync in → runner → the real Codex
//! CLI → metering proxy → scripted model → sync out → commit → settle), next
//! to the same task POSTed straight to a runner alone in a container of the
//! same image, with every blob already in its cache (no Worker, DO, R2, D1
//! or commit), interleaved. The difference is what the service adds to an
//! agent task.

mod common;
#[path = "common/responses_server.rs"]
#[allow(dead_code)] // the bench uses only part of the scripted server
mod responses_server;

use std::io::Read;
use std::time::{Duration, Instant};

use cloudbox::wire::TaskStart;
use common::*;
use responses_server::ModelServer;
use serde_json::json;
use sha2::Digest;

#[test]
#[ignore = "benchmark: run with scripts/bench.sh execute"]
fn bench_execute() {
    let runs: usize = measured_runs(10);
    let model = ModelServer::start_on(&containers().bridge_ip);
    let _stack = stack_with_vars(&[
        ("AGENT_MODEL_BASE_URL", model.base_url.as_str()),
        ("AGENT_MODEL", "bench-model"),
        ("OPENAI_API_KEY", "upstream-secret"),
    ]);
    let key = mint_key(json!({"name": "bench", "keyType": "internal"}))["key"]
        .as_str()
        .unwrap()
        .to_string();

    // A 200-file workspace (about 2 MB).
    let tree = tempfile::tempdir().unwrap();
    for i in 0..200 {
        let dir = tree.path().join(format!("src/m{}", i % 10));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}.txt")), format!("{i}\n").repeat(2000)).unwrap();
    }
    let client = SyncClient::new(&key);
    cloudbox::workspaces::sync::push(&client, "bench", tree.path()).unwrap();
    // The runner alone gets the same blobs in its cache up front.
    let runner = runner_container(&[]);
    for entry in walk(tree.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        let sha = hex::encode(sha2::Sha256::digest(&bytes));
        let resp = runner
            .request("PUT", &format!("/blobs/{sha}"))
            .send_bytes(&bytes)
            .unwrap();
        assert!([200, 201].contains(&resp.status()));
    }

    let mut n = 0;
    let mut through_stack = || {
        n += 1;
        let t = Instant::now();
        let resp = post_json(
            "/execute",
            Some(&key),
            &json!({"task": format!("write out/{n}.txt run {n}"), "workspaceId": "bench"}),
        );
        let took = t.elapsed();
        assert_eq!(resp.status, 200, "{}", resp.text);
        took
    };
    let mut m = 0;
    let mut runner_only = || {
        m += 1;
        // The workspace as it is now; its blobs are in the runner's cache
        // since the executes above.
        // Only the files pushed up front (whose blobs it has), as a fresh
        // workspace each time.
        let mut manifest = cloudbox::workspaces::sync::fetch_manifest(&client, "bench").unwrap();
        manifest.files.retain(|f| f.path.starts_with("src/"));
        let start = TaskStart {
            task_id: format!("bench_direct_{m}_{}", std::process::id()),
            task: format!("write direct/{m}.txt run {m}"),
            files: manifest.files,
            session: vec![],
            resume_thread: None,
            agent_command: None,
            model: "bench-model".into(),
            model_base_url: model.base_url.clone(),
            model_api_key: Some("upstream-secret".into()),
            input_micros_per_1k: 15_000,
            output_micros_per_1k: 45_000,
            max_cost_micros: None,
            timeout_ms: 120_000,
        };
        let t = Instant::now();
        let resp = runner
            .request("POST", "/tasks")
            .send_json(serde_json::to_value(&start).unwrap())
            .unwrap();
        let mut body = String::new();
        resp.into_reader().read_to_string(&mut body).unwrap();
        let took = t.elapsed();
        assert!(body.contains("\"type\":\"task\""), "{body}");
        took
    };

    // Warm up both paths (DO, caches, the CLI's first start).
    for _ in 0..2 {
        through_stack();
        runner_only();
    }
    let (mut stack_times, mut direct_times) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        stack_times.push(through_stack());
        direct_times.push(runner_only());
    }
    let (s, d) = (median(stack_times.clone()), median(direct_times.clone()));
    let min = |v: &Vec<Duration>| ms(*v.iter().min().unwrap());
    println!();
    println!(
        "execute, 200-file workspace, real Codex CLI + scripted model, {runs} runs each (interleaved), {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "  whole stack (POST /execute → DO → runner → commit): median {:8.1} ms  (min {:.1})",
        ms(s),
        min(&stack_times)
    );
    println!(
        "  runner alone (POST /tasks, blobs cached):           median {:8.1} ms  (min {:.1})",
        ms(d),
        min(&direct_times)
    );
    println!(
        "  overhead per execute (median difference):            {:8.1} ms",
        ms(s) - ms(d)
    );
    println!(
        "  ratio stack / runner alone:                           {:8.2}x",
        ms(s) / ms(d)
    );
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}
