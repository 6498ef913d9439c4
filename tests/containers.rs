//! What only real containers show: two runs are two containers; a run's
//! container is gone when the run ends; a workspace keeps its container
//! between executes and loses it when idle; the start environment reaches
//! the runner; and a run's own steps cannot drive the runner, read its
//! environment or write its blob cache.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A custom agent (no model needed): it writes the task into the workspace.
const AGENT: &str = "echo \"$CLOUDBOX_TASK\" > task.txt";

fn stack() -> &'static Stack {
    stack_with_vars(&[("WORKSPACE_IDLE_SECONDS", "2"), ("AGENT_COMMAND", AGENT)])
}

fn key() -> String {
    stack();
    mint_key(json!({"name": "containers", "keyType": "internal"}))["key"]
        .as_str()
        .unwrap()
        .to_string()
}

fn run(key: &str, spec: &Value) -> Value {
    let resp = post_json("/api/runs", Some(key), spec);
    assert!(matches!(resp.status, 200 | 422), "{}", resp.text);
    resp.json()
}

#[test]
fn two_parallel_runs_are_two_containers_each_gone_when_its_run_ends() {
    let key = key();
    let repo = fixture_repo("iso", "parallel", &[("README.md", "hi\n")]);
    let spec = json!({
        "repo": repo,
        // Each run leaves a mark of its own in its container and finds
        // only that one: had they shared a container, each would see two.
        "commands": ["touch /tmp/mark-$$-$RANDOM; sleep 3; ls /tmp"],
        "verify": ["test $(ls /tmp | grep -c '^mark-') -eq 1"],
    });
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (key, spec) = (key.clone(), spec.clone());
            std::thread::spawn(move || run(&key, &spec))
        })
        .collect();
    let bodies: Vec<Value> = runs.into_iter().map(|r| r.join().unwrap()).collect();
    let ids: Vec<String> = bodies
        .iter()
        .map(|b| {
            assert_eq!(b["status"], "passed", "{b}");
            container_id_of(&b["runnerReceipts"]).expect("a containerId")
        })
        .collect();
    assert_ne!(ids[0], ids[1], "both runs in one container");
    assert_ne!(runner_instance(&bodies[0]), runner_instance(&bodies[1]));
    for (body, id) in bodies.iter().zip(&ids) {
        let lifecycle = runner_events(body);
        assert_eq!(
            lifecycle.first().map(String::as_str),
            Some("container.start")
        );
        assert_eq!(
            lifecycle.last().map(String::as_str),
            Some("container.release"),
            "{lifecycle:?}"
        );
        assert!(
            container_gone(id),
            "the finished run's container {id} is still running"
        );
        assert!(container_name(id).is_none(), "Docker still has {id}");
    }
}

#[test]
fn the_start_environment_reaches_the_runner_and_not_the_steps() {
    let key = key();
    let repo = fixture_repo("iso", "env", &[("README.md", "hi\n")]);
    let resp = open_run(
        &key,
        &json!({"repo": repo, "commands": ["env > /tmp/step-env; echo go > /tmp/started; sleep 30"]}),
    );
    let run_id = resp.header("x-run-id").unwrap().to_string();
    let container = run_container_id(&run_id, &key);
    wait_in_container(&container, "/tmp/started");
    // The runner's own environment (read as root from inside): the secret
    // and the GitHub stand-in the DO passed at start.
    let (ok, environ) = in_container(
        &container,
        "tr '\\0' '\\n' < /proc/$(pgrep -o -x cloudbox-runner)/environ",
    );
    assert!(ok, "cannot read the runner's environment");
    let var = |name: &str| {
        environ
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    assert_eq!(
        var("CLOUDBOX_GITHUB_MIRROR"),
        Some(current().github_url.clone())
    );
    let secret = var("RUNNER_SECRET").expect("RUNNER_SECRET in the runner's environment");
    assert_eq!(secret.len(), 64, "{secret}");
    // A step's environment has neither.
    let (_, step_env) = in_container(&container, "cat /tmp/step-env");
    assert!(!step_env.contains("RUNNER_SECRET"), "{step_env}");
    assert!(!step_env.contains(&secret), "{step_env}");
    assert!(!step_env.contains("CLOUDBOX_GITHUB_MIRROR"), "{step_env}");
    let cancelled = post_json(
        &format!("/api/runs/{run_id}/cancel"),
        Some(&key),
        &json!({}),
    );
    assert_eq!(cancelled.status, 200, "{}", cancelled.text);
}

#[test]
fn a_step_cannot_drive_the_runner_read_its_environment_or_write_its_cache() {
    let key = key();
    let repo = fixture_repo("iso", "hostile", &[("README.md", "hi\n")]);
    let runner_pid = "$(pgrep -o -x cloudbox-runner)";
    let body = run(
        &key,
        &json!({
            "repo": repo,
            "commands": [
                "id -u",
                "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/health",
                "curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' -d '{}' http://127.0.0.1:8080/runs",
                format!("cat /proc/{runner_pid}/environ"),
                format!("cat /proc/{runner_pid}/mem"),
                "touch /var/lib/cloudbox/blobs/planted",
                "ls /var/lib/cloudbox/blobs",
            ],
        }),
    );
    let receipts = body["receipts"].as_array().unwrap();
    let step = |i: usize| &receipts[i + 1]; // after the clone
    assert_eq!(
        step(0)["stdout"],
        "1000\n",
        "steps run as the agent user: {body}"
    );
    // The runner's port answers, but not without its secret.
    assert_eq!(step(1)["stdout"], "401", "{}", step(1));
    assert_eq!(step(2)["stdout"], "401", "{}", step(2));
    for i in [3, 4, 5, 6] {
        assert_ne!(step(i)["exitCode"], 0, "{}", step(i));
        let stderr = step(i)["stderr"].as_str().unwrap();
        assert!(stderr.contains("Permission denied"), "{}", step(i));
    }
    assert!(
        !body.to_string().contains("RUNNER_SECRET="),
        "the secret leaked: {body}"
    );
}

#[test]
fn a_workspace_keeps_its_container_between_executes_and_loses_it_when_idle() {
    let key = key();
    let execute = |task: &str| {
        let resp = post_json(
            "/execute",
            Some(&key),
            &json!({"task": task, "workspaceId": "idle-ws"}),
        );
        assert_eq!(resp.status, 200, "{}", resp.text);
        resp.json()
    };
    let first = execute("one");
    let second = execute("two");
    assert!(
        runner_events(&first).contains(&"container.start".to_string()),
        "{first}"
    );
    assert!(
        !runner_events(&second).contains(&"container.start".to_string()),
        "{second}"
    );
    let container = container_id_of(&first["runnerReceipts"]).unwrap();
    assert_eq!(
        container_id_of(&second["runnerReceipts"]),
        Some(container.clone())
    );
    assert_eq!(runner_instance(&first), runner_instance(&second));
    assert!(container_running(&container));

    // Idle past WORKSPACE_IDLE_SECONDS (2 s; the watchdog looks every 5 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    while container_running(&container) {
        assert!(
            Instant::now() < deadline,
            "the idle container was never released"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let third = execute("three");
    assert!(
        runner_events(&third).contains(&"container.start".to_string()),
        "{third}"
    );
    assert_ne!(runner_instance(&third), runner_instance(&second));
    let file = get("/workspaces/idle-ws/files/task.txt", Some(&key));
    assert_eq!(file.text, "three\n");
}

/// `POST /api/runs` as SSE: returns once the run has started.
fn open_run(key: &str, spec: &Value) -> ureq::Response {
    agent()
        .post(&format!("{}/api/runs", current().base))
        .set("authorization", &format!("Bearer {key}"))
        .set("accept", "text/event-stream")
        .send_json(spec.clone())
        .expect("POST /api/runs")
}
