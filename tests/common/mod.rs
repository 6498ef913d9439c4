//! The integration-test stack: the built wasm Worker under `wrangler dev`
//! (local D1, R2, Durable Objects) with real Containers on a Docker engine —
//! one per repo run and per workspace, built from `container/Dockerfile` —
//! started once per test binary on free ports with a fresh state directory,
//! and torn down when the test binary exits (also when a test fails or the
//! binary is killed). GitHub is a git smart-HTTP server on the host's bridge
//! address (`git_http.rs`), which the containers reach.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod git_http;

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";

/// Docker names a DO's container `workerd-<session>-cloudbox-CloudboxRunner-<DO id>`
/// (its networking sidecar: the same, then `-proxy`).
const CONTAINER_INFIX: &str = "-cloudbox-CloudboxRunner-";

pub struct Stack {
    pub base: String,
    pub vars: Vec<(String, String)>,
    pub state_dir: PathBuf,
    /// The stack's temp dir (logs), removed at exit.
    dir: PathBuf,
    /// `https://github.com/<o>/<r>` is cloned from the bare repo
    /// `<github_dir>/<o>/<r>.git` (see `fixture_repo`), served over smart HTTP.
    pub github_dir: PathBuf,
    pub github_url: String,
}

static STACK: OnceLock<Stack> = OnceLock::new();

/// Vars every test stack gets unless a test binary overrides them: the
/// per-IP rate limits are lifted because every test client is 127.0.0.1.
const DEFAULT_VARS: &[(&str, &str)] = &[
    ("RATE_LIMIT_REQUESTS", "1000000"),
    ("RATE_LIMIT_RUNS", "1000000"),
];

/// The stack of this test binary: the one already started (with whatever
/// vars its binary asked for), else a new one with the default vars.
pub fn stack() -> &'static Stack {
    match STACK.get() {
        Some(stack) => stack,
        None => stack_with_vars(&[]),
    }
}

/// The stack of this test binary, started with `vars` (`wrangler dev --var`)
/// on top of the defaults. All tests of one binary must ask for the same vars.
pub fn stack_with_vars(vars: &[(&str, &str)]) -> &'static Stack {
    let wanted: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let stack = STACK.get_or_init(|| start_stack(&wanted));
    assert_eq!(
        stack.vars, wanted,
        "tests of one binary asked for different stack vars"
    );
    stack
}

/// The stack already started by this binary (whatever its vars), else the
/// default one.
pub fn current() -> &'static Stack {
    STACK.get().unwrap_or_else(stack)
}

/// The workspace root: this module also serves the CLI's tests (`cli/tests`).
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|dir| dir.join("wrangler.toml").is_file())
        .map(Path::to_path_buf)
        .unwrap_or(here)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cleanup` (a shell snippet) once this test process is gone, however
/// it ends: normal exit, failed test, panic or SIGKILL. Exit hooks are not
/// enough (the harness may exit in ways that skip them), so a small watchdog
/// outside the group waits for this process.
fn on_exit(cleanup: String) {
    let me = std::process::id();
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while kill -0 {me} 2>/dev/null; do sleep 0.2; done; {cleanup}"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
}

/// Tears `pgid` (and everything it started, in groups of their own) down
/// at exit: SIGTERM first, so wrangler removes its containers, then SIGKILL.
fn kill_group_at_exit(pgid: u32) {
    on_exit(format!(
        "tree() {{ echo $1; for c in $(ps -o pid= --ppid $1 2>/dev/null); do tree $c; done; }}; \
         pids=$(tree {pgid}); kill -TERM -{pgid} 2>/dev/null; \
         for i in $(seq 50); do kill -0 -{pgid} 2>/dev/null || break; sleep 0.2; done; \
         kill -KILL -{pgid} $pids 2>/dev/null;"
    ));
}

/// Spawns `cmd` in its own process group, logging to `log`, cleaned up at exit.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> u32 {
    let file = std::fs::File::create(log).expect("log file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id();
    kill_group_at_exit(pid);
    // Reap it when it exits, so a killed child leaves no zombie.
    std::thread::spawn(move || child.wait());
    pid
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(4000);
    text[start..].to_string()
}

/// Kills a process group now.
pub fn kill_group(pgid: u32) {
    unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
}

/// Waits until `url` answers 200; says why not if `limit` passes or the
/// log shows that the server could not bind its port.
fn wait_up(url: &str, log: &Path, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(2))
        .build();
    while Instant::now() < deadline {
        if let Ok(resp) = agent.get(url).call() {
            if resp.status() == 200 {
                return Ok(());
            }
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("Address already in use") {
            return Err(format!("{url}: address in use; log:\n{}", log_tail(log)));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "{url} not up after {limit:?}; log:\n{}",
        log_tail(log)
    ))
}

// ---------------------------------------------------------------------------
// Containers: the engine, the images, the bridge.

/// The Docker engine the stack's containers run on, and what wrangler dev
/// needs to build and run them (scripts/container-engine.sh and
/// scripts/container-images.sh, the same as `make dev`).
pub struct Containers {
    pub docker_host: String,
    /// `CLOUDBOX_BASE_IMAGE`, `MINIFLARE_CONTAINER_EGRESS_IMAGE`,
    /// `WRANGLER_DOCKER_BIN`.
    pub wrangler_env: Vec<(String, String)>,
    /// The host's address on the Docker bridge: servers the containers
    /// reach (the git server, the scripted model) listen here.
    pub bridge_ip: String,
}

pub fn containers() -> &'static Containers {
    static CONTAINERS: OnceLock<Containers> = OnceLock::new();
    CONTAINERS.get_or_init(|| {
        let root = repo_root();
        // This binary uses the engine until it exits; the last user of a
        // dockerd the scripts started stops it.
        let me = std::process::id().to_string();
        let engine = run_ok(
            Command::new("bash")
                .arg(root.join("scripts/container-engine.sh"))
                .args(["start", "--for", &me])
                .current_dir(&root),
            "starting the Docker engine (scripts/container-engine.sh start)",
        );
        on_exit(format!(
            "bash '{}' release {me}",
            root.join("scripts/container-engine.sh").display()
        ));
        let docker_host = key_values(&engine)
            .into_iter()
            .find(|(k, _)| k == "DOCKER_HOST")
            .map(|(_, v)| v)
            .expect("container-engine.sh printed DOCKER_HOST");
        // scripts/test.sh builds them once for the whole suite.
        let image_vars = [
            "CLOUDBOX_BASE_IMAGE",
            "CLOUDBOX_RUNNER_IMAGE",
            "MINIFLARE_CONTAINER_EGRESS_IMAGE",
            "WRANGLER_DOCKER_BIN",
        ];
        let ready = std::env::var("CLOUDBOX_IMAGES_READY").is_ok_and(|v| v == "1")
            && image_vars.iter().all(|v| std::env::var_os(v).is_some());
        let images = if ready {
            image_vars
                .iter()
                .map(|v| format!("{v}={}\n", std::env::var(v).unwrap_or_default()))
                .collect()
        } else {
            run_ok(
                Command::new("bash")
                    .arg(root.join("scripts/container-images.sh"))
                    .arg("local")
                    .env("DOCKER_HOST", &docker_host)
                    .current_dir(&root),
                "building the container images (scripts/container-images.sh local)",
            )
        };
        let bridge_ip = run_ok(
            Command::new("docker")
                .args(["network", "inspect", "bridge", "--format"])
                .arg("{{(index .IPAM.Config 0).Gateway}}")
                .env("DOCKER_HOST", &docker_host),
            "reading the bridge's gateway",
        )
        .trim()
        .to_string();
        Containers {
            docker_host,
            wrangler_env: key_values(&images),
            bridge_ip,
        }
    })
}

fn key_values(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Runs the docker CLI against the stack's engine; (success, stdout).
pub fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", &containers().docker_host)
        .output()
        .expect("docker CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Docker's name for the container a runnerReceipt's `containerId` names,
/// if Docker has it (running or not).
pub fn container_name(container_id: &str) -> Option<String> {
    let filter = format!("name={CONTAINER_INFIX}{container_id}");
    let (_, out) = docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]);
    out.lines()
        .find(|n| n.ends_with(&format!("{CONTAINER_INFIX}{container_id}")))
        .map(str::to_string)
}

/// Whether that container is running (Docker not having it is "no"; a
/// Docker that does not answer fails the test rather than passing it).
pub fn container_running(container_id: &str) -> bool {
    let (ok, _) = docker(&["version", "--format", "{{.Server.Version}}"]);
    assert!(ok, "the Docker engine does not answer");
    let Some(name) = container_name(container_id) else {
        return false;
    };
    let (ok, out) = docker(&["inspect", "--format", "{{.State.Running}}", &name]);
    ok && out.trim() == "true"
}

/// Kills that container now (SIGKILL), as a crash would.
pub fn kill_container(container_id: &str) {
    let name = container_name(container_id).expect("the container exists");
    let (ok, out) = docker(&["kill", &name]);
    assert!(ok, "docker kill {name}: {out}");
}

/// The running containers of this engine's DOs (their `containerId`s).
pub fn running_container_ids() -> Vec<String> {
    let (_, out) = docker(&["ps", "--format", "{{.Names}}"]);
    out.lines()
        .filter_map(|n| n.split_once(CONTAINER_INFIX).map(|(_, id)| id))
        .filter(|id| !id.ends_with("-proxy"))
        .map(str::to_string)
        .collect()
}

/// A runner alone in a container of the runner image (`docker run`, its
/// port published on loopback), for tests and benchmarks of the runner's own
/// contract. Removed when the test binary exits.
pub struct RunnerContainer {
    pub url: String,
    pub name: String,
    pub secret: String,
}

impl RunnerContainer {
    /// A request to this runner, with its secret.
    pub fn request(&self, method: &str, path: &str) -> ureq::Request {
        agent()
            .request(method, &format!("{}{path}", self.url))
            .set(cloudbox::wire::RUNNER_SECRET_HEADER, &self.secret)
    }
}

pub fn runner_container(env: &[(&str, &str)]) -> RunnerContainer {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let c = containers();
    let image = c
        .wrangler_env
        .iter()
        .find(|(k, _)| k == "CLOUDBOX_RUNNER_IMAGE")
        .map(|(_, v)| v.clone())
        .expect("container-images.sh printed CLOUDBOX_RUNNER_IMAGE");
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("cloudbox-test-runner-{}-{n}", std::process::id());
    let secret = format!("test-secret-{}-{n}", std::process::id());
    let mut args: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        name.clone(),
        "-p".into(),
        "127.0.0.1::8080".into(),
        "-e".into(),
        format!("RUNNER_SECRET={secret}"),
    ];
    for (k, v) in env {
        args.push("-e".into());
        args.push(format!("{k}={v}"));
    }
    args.push(image);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = docker(&args);
    assert!(ok, "docker run the runner: {out}");
    on_exit(format!(
        "DOCKER_HOST='{}' docker rm -f {name} >/dev/null 2>&1",
        c.docker_host
    ));
    let (ok, port) = docker(&["port", &name, "8080/tcp"]);
    assert!(ok, "docker port {name}: {port}");
    let addr = port.lines().next().unwrap_or_default().trim().to_string();
    let runner = RunnerContainer {
        url: format!("http://{addr}"),
        name,
        secret,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(resp) = runner.request("GET", "/health").call() {
            if resp.status() == 200 {
                return runner;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the runner container never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `script` with bash in that container (as root); (success, stdout).
pub fn in_container(container_id: &str, script: &str) -> (bool, String) {
    let name = container_name(container_id).expect("the container exists");
    docker(&["exec", &name, "bash", "-c", script])
}

/// The content of `path` in that container once a step has written it
/// whole (a line ending in a newline).
pub fn wait_in_container(container_id: &str, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out) = in_container(container_id, &format!("cat {path}"));
        if ok && out.ends_with('\n') {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never written in {container_id}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether Docker has no running container for that id (within 10 s).
pub fn container_gone(container_id: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !container_running(container_id) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The container of a started run, from its `runnerReceipts` (polled until
/// the run's DO has recorded its start).
pub fn run_container_id(run_id: &str, key: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = get(&format!("/api/runs/{run_id}"), Some(key));
        if body.status == 200 {
            if let Some(id) = container_id_of(&body.json()["runnerReceipts"]) {
                return id;
            }
        }
        assert!(
            Instant::now() < deadline,
            "run {run_id} never got a container"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `event` names of a run's or an execute's `runnerReceipts`, in order.
pub fn runner_events(body: &Value) -> Vec<String> {
    body["runnerReceipts"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| r["event"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The runner process that did a body's work (the `instanceId` of its
/// `ready` receipt: new with every container).
pub fn runner_instance(body: &Value) -> String {
    body["runnerReceipts"]
        .as_array()
        .and_then(|rs| rs.iter().find_map(|r| r["instanceId"].as_str()))
        .unwrap_or_else(|| panic!("no instanceId: {body}"))
        .to_string()
}

/// The `containerId` of the first `ready` / `container.start` among runner
/// receipts.
pub fn container_id_of(runner_receipts: &Value) -> Option<String> {
    runner_receipts
        .as_array()?
        .iter()
        .find_map(|r| r["containerId"].as_str().map(str::to_string))
}

fn start_stack(vars: &[(String, String)]) -> Stack {
    let root = repo_root();
    let containers = containers();
    run_ok(
        Command::new("bash")
            .arg(root.join("scripts/build-worker.sh"))
            .current_dir(&root),
        "building the worker",
    );
    let dir = tempfile::Builder::new()
        .prefix("cloudbox-test-")
        .tempdir()
        .expect("temp dir")
        .keep();
    // CLOUDBOX_KEEP_TEST_DIR=1 keeps the logs (wrangler.log).
    if std::env::var_os("CLOUDBOX_KEEP_TEST_DIR").is_some() {
        eprintln!("test stack dir (kept): {}", dir.display());
    } else {
        on_exit(format!("sleep 2; rm -rf '{}'", dir.display()));
    }
    let state_dir = dir.join("state");

    let github_dir = dir.join("github");
    std::fs::create_dir_all(&github_dir).expect("github mirror dir");
    let github = git_http::start(&github_dir, &containers.bridge_ip);

    let wrangler = root.join("scripts/wrangler");
    run_ok(
        Command::new(&wrangler)
            .args(["d1", "migrations", "apply", "DB", "--local", "--persist-to"])
            .arg(&state_dir)
            .env("CI", "true")
            .current_dir(&root),
        "applying D1 migrations",
    );

    let log = dir.join("wrangler.log");
    // A port picked free can be taken before wrangler binds it (by a
    // container's published port, say): then it starts again on others.
    let mut attempt = 0;
    let base = loop {
        attempt += 1;
        let port = free_port();
        let inspector = free_port();
        let mut cmd = Command::new(&wrangler);
        cmd.args([
            "dev",
            "--local",
            "--ip",
            "127.0.0.1",
            "--show-interactive-dev-session=false",
            // GET /__scheduled runs the cron handler (the billing sweep) on demand.
            "--test-scheduled",
        ])
        .args([
            "--port",
            &port.to_string(),
            "--inspector-port",
            &inspector.to_string(),
        ])
        .arg("--persist-to")
        .arg(&state_dir)
        .args([
            "--var",
            &format!("RUNNER_GITHUB_MIRROR:{}", github.base_url),
        ])
        .args(["--var", &format!("ADMIN_API_KEY:{ADMIN_KEY}")])
        .env("CLOUDBOX_SKIP_BUILD", "1")
        .env("CI", "true")
        .env("DOCKER_HOST", &containers.docker_host)
        .envs(containers.wrangler_env.iter().map(|(k, v)| (k, v)))
        .current_dir(&root);
        let overridden = |name: &str| vars.iter().any(|(k, _)| k == name);
        for (name, value) in DEFAULT_VARS.iter().filter(|(k, _)| !overridden(k)) {
            cmd.args(["--var", &format!("{name}:{value}")]);
        }
        for (name, value) in vars {
            cmd.args(["--var", &format!("{name}:{value}")]);
        }
        let pid = spawn_logged(&mut cmd, &log);
        let base = format!("http://127.0.0.1:{port}");
        // wrangler builds the runner image before it serves (cached layers).
        match wait_up(&format!("{base}/health"), &log, Duration::from_secs(300)) {
            Ok(()) => break base,
            Err(why) if attempt < 3 => {
                eprintln!("wrangler dev did not start ({why}); trying other ports");
                kill_group(pid);
            }
            Err(why) => panic!("{why}"),
        }
    };
    Stack {
        base,
        vars: vars.to_vec(),
        state_dir,
        dir,
        github_dir,
        github_url: github.base_url,
    }
}

impl Stack {
    /// (containerId, task id) of every `exe_…` task directory on the
    /// running containers of this engine (a task's directory lives while
    /// the task runs).
    pub fn container_tasks(&self) -> Vec<(String, String)> {
        running_container_ids()
            .into_iter()
            .flat_map(|id| {
                let (_, out) = in_container(&id, "ls /var/lib/cloudbox/work");
                out.lines()
                    .filter(|n| n.starts_with("exe_"))
                    .map(|task| (id.clone(), task.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Creates the bare repo `<github_dir>/<owner>/<name>.git` with one commit
/// of `files` (path, content), so a run of `https://github.com/<owner>/<name>`
/// clones it. Returns that URL.
pub fn fixture_repo(owner: &str, name: &str, files: &[(&str, &str)]) -> String {
    let work = tempfile::tempdir().expect("temp dir");
    let git = |args: &[&str]| {
        run_ok(
            Command::new("git")
                .args([
                    "-c",
                    "user.name=fixture",
                    "-c",
                    "user.email=fixture@example.com",
                ])
                .args(["-c", "init.defaultBranch=main"])
                .args(args)
                .current_dir(work.path()),
            &format!("git {args:?}"),
        )
    };
    git(&["init", "-q", "."]);
    for (path, content) in files {
        let full = work.path().join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, content).expect("write fixture file");
    }
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "fixture"]);
    let dest = current().github_dir.join(owner).join(format!("{name}.git"));
    std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
    let _ = std::fs::remove_dir_all(&dest);
    git(&[
        "clone",
        "-q",
        "--bare",
        ".",
        dest.to_str().expect("utf-8 path"),
    ]);
    format!("https://github.com/{owner}/{name}")
}

// ---------------------------------------------------------------------------
// HTTP

/// A response, whatever its status.
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.status, self.text))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(120))
            .build()
    })
}

/// Sends a request to the Worker. `headers` are (name, value) pairs.
pub fn send(method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    let url = format!("{}{}", current().base, path);
    let mut req = agent().request(method, &url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(bytes) => req.send_bytes(bytes),
        None => req.call(),
    };
    let resp = match result {
        Ok(resp) => resp,
        Err(ureq::Error::Status(_, resp)) => resp,
        Err(err) => panic!("{method} {path}: {err}"),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .filter_map(|name| resp.header(&name).map(|v| (name.clone(), v.to_string())))
        .collect();
    let mut text = String::new();
    let _ = resp.into_reader().read_to_string(&mut text);
    Resp {
        status,
        headers,
        text,
    }
}

pub fn get(path: &str, key: Option<&str>) -> Resp {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    send("GET", path, &headers, None)
}

pub fn post_json(path: &str, key: Option<&str>, body: &Value) -> Resp {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    send("POST", path, &headers, Some(body.to_string().as_bytes()))
}

/// Mints a key with the admin key; returns the 201 body.
pub fn mint_key(body: Value) -> Value {
    let resp = post_json("/admin/keys", Some(ADMIN_KEY), &body);
    assert_eq!(resp.status, 201, "{}", resp.text);
    resp.json()
}

/// The workspace sync client's transport over real HTTP to this binary's
/// stack, authenticated with one key (used by the workspace tests and the
/// sync bench).
pub struct SyncClient {
    pub auth: String,
    pub agent: ureq::Agent,
    /// Requests sent so far (what a sync costs against the rate limits).
    pub requests: std::sync::atomic::AtomicUsize,
}

impl SyncClient {
    pub fn new(key: &str) -> Self {
        Self::with_agent(key, agent().clone())
    }

    pub fn with_agent(key: &str, agent: ureq::Agent) -> Self {
        SyncClient {
            auth: format!("Bearer {key}"),
            agent,
            requests: Default::default(),
        }
    }

    /// Requests sent since the last call.
    pub fn take_requests(&self) -> usize {
        self.requests.swap(0, std::sync::atomic::Ordering::Relaxed)
    }
}

impl cloudbox::workspaces::sync::Transport for SyncClient {
    fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), String> {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = format!("{}{}", current().base, path);
        let mut req = self
            .agent
            .request(method, &url)
            .set("authorization", &self.auth);
        if let Some(ct) = content_type {
            req = req.set("content-type", ct);
        }
        let result = match body {
            Some(bytes) => req.send_bytes(bytes),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(e.to_string()),
        };
        let status = resp.status();
        let mut out = Vec::new();
        resp.into_reader()
            .read_to_end(&mut out)
            .map_err(|e| e.to_string())?;
        Ok((status, out))
    }
}

/// Benchmarks: one keep-alive connection, with its own agent (ureq keeps
/// one idle connection per host and agent, so clients that share an agent
/// reconnect); authenticated with `key` when given.
pub struct BenchClient {
    agent: ureq::Agent,
    auth: Option<String>,
}

impl BenchClient {
    pub fn new(key: Option<&str>) -> Self {
        BenchClient {
            agent: ureq::AgentBuilder::new()
                .timeout(std::time::Duration::from_secs(120))
                .build(),
            auth: key.map(|k| format!("Bearer {k}")),
        }
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
        let url = format!("{}{path}", current().base);
        let mut req = self.agent.request(method, &url);
        if let Some(auth) = &self.auth {
            req = req.set("authorization", auth);
        }
        let result = match body {
            Some(b) => req
                .set("content-type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let mut text = String::new();
        resp.into_reader().read_to_string(&mut text).expect("body");
        (status, text)
    }

    /// Calls and checks for 200; the time it took, body read.
    pub fn timed(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (std::time::Duration, String) {
        let t = std::time::Instant::now();
        let (status, text) = self.call(method, path, body);
        let took = t.elapsed();
        assert_eq!(status, 200, "{method} {path}: {text}");
        (took, text)
    }
}

/// Benchmarks: `BENCH_RUNS` (how many measured runs), else `default`; at
/// least 1.
pub fn measured_runs(default: usize) -> usize {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(1)
}

/// Benchmarks: the machine's 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Benchmarks: the median of `xs`.
pub fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// Benchmarks: `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
