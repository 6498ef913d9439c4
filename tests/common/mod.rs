//! The integration-test stack: the real runner binary and the built wasm
//! Worker under `wrangler dev` (local D1, R2, Durable Objects), started once
//! per test binary on free ports with a fresh state directory, and torn down
//! when the test binary exits — also when a test fails or the binary is killed.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";

pub struct Stack {
    pub base: String,
    pub vars: Vec<(String, String)>,
    pub runner_url: String,
    pub state_dir: PathBuf,
    /// The current runner's process group (it changes on `restart_runner`).
    runner_pid: AtomicU32,
    /// How many runners this stack has started (names their fresh dirs).
    runner_starts: AtomicU32,
    /// The stack's temp dir (logs, runner dirs), removed at exit.
    dir: PathBuf,
    /// The stack's runner clones `https://github.com/<o>/<r>` from the bare
    /// repo `<github_dir>/<o>/<r>.git` (see `fixture_repo`).
    pub github_dir: PathBuf,
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

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Tears `pgid` (and `dir`, if given) down once this test process is gone,
/// however it ends: normal exit, failed test, panic or SIGKILL. Exit hooks
/// are not enough (the harness may exit in ways that skip them), so a small
/// watchdog outside the group waits for this process and then cleans up.
fn watch_and_clean(pgid: Option<u32>, dir: Option<&Path>) {
    let me = std::process::id();
    // The group, and every process it started in groups of its own (the
    // runner's agents), listed before the group goes.
    let kill = pgid
        .map(|g| {
            format!(
                "tree() {{ echo $1; for c in $(ps -o pid= --ppid $1 2>/dev/null); do tree $c; done; }}; \
                 pids=$(tree {g}); kill -TERM -{g} 2>/dev/null; sleep 0.5; \
                 kill -KILL -{g} $pids 2>/dev/null;"
            )
        })
        .unwrap_or_default();
    let remove = dir
        .map(|d| format!("sleep 1; rm -rf '{}';", d.display()))
        .unwrap_or_default();
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while kill -0 {me} 2>/dev/null; do sleep 0.2; done; {kill} {remove}"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
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
    watch_and_clean(Some(pid), None);
    // Reap it when it exits, so a killed child leaves no zombie.
    std::thread::spawn(move || child.wait());
    pid
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(4000);
    text[start..].to_string()
}

/// Kills a process group now (e.g. to simulate a runner crash).
pub fn kill_group(pgid: u32) {
    unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
}

/// Starts the runner binary on a free port; returns (pid, url).
pub fn start_runner(dir: &Path, extra_env: &[(&str, &str)]) -> (u32, String) {
    let port = free_port();
    let pid = start_runner_on(dir, port, extra_env);
    (pid, format!("http://127.0.0.1:{port}"))
}

/// Starts the runner binary on `port` (waiting for a killed predecessor to
/// free it) and waits for its health; returns its pid (= process group).
pub fn start_runner_on(dir: &Path, port: u16, extra_env: &[(&str, &str)]) -> u32 {
    build_runner();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpListener::bind(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} is still taken");
        std::thread::sleep(Duration::from_millis(100));
    }
    let bin = target_dir().join("debug").join("cloudbox-runner");
    let mut cmd = Command::new(&bin);
    cmd.env("RUNNER_LISTEN", format!("127.0.0.1:{port}"));
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let log = dir.join(format!("runner-{port}-{}.log", unique_suffix()));
    let pid = spawn_logged(&mut cmd, &log);
    let url = format!("http://127.0.0.1:{port}");
    wait_for(&format!("{url}/health"), &log, Duration::from_secs(20));
    pid
}

fn unique_suffix() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Builds the runner binary once per test binary (a no-op when fresh), so a
/// test never talks to a stale runner.
fn build_runner() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        run_ok(
            Command::new(env!("CARGO"))
                .args(["build", "--quiet", "-p", "cloudbox-runner"])
                .current_dir(repo_root()),
            "building the runner",
        )
    });
}

fn wait_for(url: &str, log: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(2))
        .build();
    while Instant::now() < deadline {
        if let Ok(resp) = agent.get(url).call() {
            if resp.status() == 200 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{url} not up after {limit:?}; log:\n{}", log_tail(log));
}

fn start_stack(vars: &[(String, String)]) -> Stack {
    let root = repo_root();
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
    // CLOUDBOX_KEEP_TEST_DIR=1 keeps the logs (wrangler.log, runner-*.log).
    if std::env::var_os("CLOUDBOX_KEEP_TEST_DIR").is_some() {
        eprintln!("test stack dir (kept): {}", dir.display());
    } else {
        watch_and_clean(None, Some(&dir));
    }
    let state_dir = dir.join("state");

    let github_dir = dir.join("github");
    std::fs::create_dir_all(&github_dir).expect("github mirror dir");
    let runner_port = free_port();
    let runner_url = format!("http://127.0.0.1:{runner_port}");
    let runner_pid = start_stack_runner(&dir, &github_dir, runner_port, 0);

    let wrangler = root.join("scripts/wrangler");
    run_ok(
        Command::new(&wrangler)
            .args(["d1", "migrations", "apply", "DB", "--local", "--persist-to"])
            .arg(&state_dir)
            .env("CI", "true")
            .current_dir(&root),
        "applying D1 migrations",
    );

    let port = free_port();
    let inspector = free_port();
    let log = dir.join("wrangler.log");
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
    .args(["--var", &format!("RUNNER_URL:{runner_url}")])
    .args(["--var", &format!("ADMIN_API_KEY:{ADMIN_KEY}")])
    .env("CLOUDBOX_SKIP_BUILD", "1")
    .env("CI", "true")
    .current_dir(&root);
    let overridden = |name: &str| vars.iter().any(|(k, _)| k == name);
    for (name, value) in DEFAULT_VARS.iter().filter(|(k, _)| !overridden(k)) {
        cmd.args(["--var", &format!("{name}:{value}")]);
    }
    for (name, value) in vars {
        cmd.args(["--var", &format!("{name}:{value}")]);
    }
    spawn_logged(&mut cmd, &log);
    let base = format!("http://127.0.0.1:{port}");
    wait_for(&format!("{base}/health"), &log, Duration::from_secs(90));
    Stack {
        base,
        vars: vars.to_vec(),
        runner_url,
        state_dir,
        runner_pid: AtomicU32::new(runner_pid),
        runner_starts: AtomicU32::new(1),
        dir,
        github_dir,
    }
}

/// Starts the stack's runner on `port` like a new container: fresh blob
/// cache and work dirs (`n` numbers them), the GitHub mirror, and the real
/// Codex CLI when scripts/setup.sh installed it.
fn start_stack_runner(dir: &Path, github_dir: &Path, port: u16, n: u32) -> u32 {
    let runner_dir = dir.join(format!("runner-{n}"));
    let (blobs, work) = (runner_dir.join("blobs"), runner_dir.join("work"));
    for d in [&blobs, &work] {
        std::fs::create_dir_all(d).expect("runner dir");
    }
    let mut env = vec![
        ("CLOUDBOX_GITHUB_MIRROR", github_dir.display().to_string()),
        ("RUNNER_BLOB_DIR", blobs.display().to_string()),
        ("RUNNER_WORK_DIR", work.display().to_string()),
    ];
    let codex = repo_root().join("node_modules/.bin/codex");
    if codex.exists() {
        env.push(("CODEX_BIN", codex.display().to_string()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    start_runner_on(dir, port, &env)
}

impl Stack {
    /// The current runner's pid (its own process group).
    pub fn runner_pid(&self) -> u32 {
        self.runner_pid.load(Ordering::SeqCst)
    }

    /// Kills the stack's runner and every process it started (the agent
    /// runs in groups of its own) with SIGKILL, as a crashed container.
    pub fn kill_runner(&self) {
        let pid = self.runner_pid();
        let groups = descendant_groups(pid);
        kill_group(pid);
        for group in groups {
            kill_group(group);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while unsafe { libc::kill(pid as i32, 0) } == 0 {
            assert!(Instant::now() < deadline, "runner {pid} survived SIGKILL");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The current runner's `RUNNER_WORK_DIR` (a directory per task or run,
    /// named by its id).
    pub fn runner_work_dir(&self) -> PathBuf {
        let n = self.runner_starts.load(Ordering::SeqCst) - 1;
        self.dir.join(format!("runner-{n}")).join("work")
    }

    /// Replaces the stack's runner by a new one on the same port (the
    /// Worker's `RUNNER_URL` is fixed) with fresh dirs, as a new container.
    pub fn restart_runner(&self) {
        self.kill_runner();
        let port: u16 = self
            .runner_url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("runner port");
        let n = self.runner_starts.fetch_add(1, Ordering::SeqCst);
        let pid = start_stack_runner(&self.dir, &self.github_dir, port, n);
        self.runner_pid.store(pid, Ordering::SeqCst);
    }
}

/// The process groups of `pid`'s descendants (from /proc), other than its own.
fn descendant_groups(pid: u32) -> Vec<u32> {
    // (pid, ppid, pgid) of every process we can read.
    let procs: Vec<(u32, u32, u32)> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|p| {
                    let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
                    // Fields after the `(comm)`: state ppid pgrp ...
                    let rest = &stat[stat.rfind(')')? + 2..];
                    let mut fields = rest.split(' ').skip(1);
                    let ppid = fields.next()?.parse().ok()?;
                    let pgid = fields.next()?.parse().ok()?;
                    Some((p, ppid, pgid))
                })
                .collect()
        })
        .unwrap_or_default();
    let own = unsafe { libc::getpgrp() } as u32;
    let mut family = vec![pid];
    let mut i = 0;
    while i < family.len() {
        let parent = family[i];
        family.extend(procs.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    let mut groups: Vec<u32> = procs
        .iter()
        .filter(|p| family.contains(&p.0) && p.2 != pid && p.2 != own && p.2 > 1)
        .map(|p| p.2)
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
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
}

impl SyncClient {
    pub fn new(key: &str) -> Self {
        Self::with_agent(key, agent().clone())
    }

    pub fn with_agent(key: &str, agent: ureq::Agent) -> Self {
        SyncClient {
            auth: format!("Bearer {key}"),
            agent,
        }
    }
}

impl cloudbox::sync::Transport for SyncClient {
    fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), String> {
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

/// Benchmarks: the median of `xs`.
pub fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// Benchmarks: `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
