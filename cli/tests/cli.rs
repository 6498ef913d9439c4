//! The built `cloudbox` binary, run as a user would, against the real
//! stack (the built wasm Worker under `wrangler dev` with real Containers,
//! the real Codex CLI and the scripted model): push and pull, exec, runs,
//! exit codes, and where the key goes.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/common/responses_server.rs"]
#[allow(dead_code)]
mod responses_server;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use responses_server::ModelServer;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_cloudbox");

/// The stack with the scripted model behind every agent.
fn model() -> &'static ModelServer {
    static MODEL: OnceLock<ModelServer> = OnceLock::new();
    let model = MODEL.get_or_init(|| ModelServer::start_on(&containers().bridge_ip));
    stack_with_vars(&[
        ("AGENT_MODEL_BASE_URL", model.base_url.as_str()),
        ("AGENT_MODEL", "test-model"),
        ("OPENAI_API_KEY", "upstream-secret"),
    ]);
    model
}

struct Key {
    key: String,
    id: String,
}

fn key_with(body: Value) -> Key {
    model();
    let minted = mint_key(body);
    Key {
        key: minted["key"].as_str().unwrap().to_string(),
        id: minted["id"].as_str().unwrap().to_string(),
    }
}

fn funded_key(usd: f64) -> Key {
    let key = key_with(json!({"name": "cli", "keyType": "standard"}));
    let resp = post_json(
        &format!("/billing/admin/{}/credits", key.id),
        Some(ADMIN_KEY),
        &json!({"amount": usd, "description": "top-up"}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text);
    key
}

fn internal_key() -> Key {
    key_with(json!({"name": "cli", "keyType": "internal"}))
}

/// One run of the binary.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}):\n{}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

/// The user's environment: a config of their own, the stack's URL.
struct User {
    home: tempfile::TempDir,
    url: String,
    key: Option<String>,
}

impl User {
    fn new(key: Option<&Key>) -> User {
        User {
            home: tempfile::tempdir().unwrap(),
            url: current().base.clone(),
            key: key.map(|k| k.key.clone()),
        }
    }

    fn at(url: &str) -> User {
        User {
            home: tempfile::tempdir().unwrap(),
            url: url.to_string(),
            key: Some("cbx_unused".into()),
        }
    }

    fn config(&self) -> PathBuf {
        self.home.path().join("config/cloudbox/config.toml")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .env("CLOUDBOX_URL", &self.url)
            .stdin(Stdio::null());
        if let Some(key) = &self.key {
            cmd.env("CLOUDBOX_API_KEY", key);
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Ran {
        self.run_with(self.command(args))
    }

    fn run_with(&self, mut cmd: Command) -> Ran {
        let out = cmd.output().expect("run the cloudbox binary");
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `cloudbox login` with `input` on its stdin, as a pasted key.
    fn login_with_stdin(&self, input: &[u8]) -> std::process::Output {
        let mut login = self.command(&["login"]);
        login
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = login.spawn().unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> Ran {
        let ran = self.run(args);
        assert_eq!(
            ran.code, 0,
            "cloudbox {args:?}:\n{}\n{}",
            ran.stdout, ran.stderr
        );
        ran
    }
}

fn write(root: &Path, path: &str, content: &[u8], mode: u32) {
    let full = root.join(path);
    fs::create_dir_all(full.parent().unwrap()).unwrap();
    fs::write(&full, content).unwrap();
    fs::set_permissions(&full, fs::Permissions::from_mode(mode)).unwrap();
}

/// Every regular file under `root` (not `.cloudbox/`) → (bytes, mode).
fn snapshot(root: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (Vec<u8>, u32)>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == ".cloudbox" {
                continue;
            }
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                walk(root, &path, out);
            } else if meta.is_file() {
                out.insert(
                    rel,
                    (fs::read(&path).unwrap(), meta.permissions().mode() & 0o777),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

// ---------------------------------------------------------------------------
// A TCP proxy that cuts a connection, as a flaky network would.

struct CuttingProxy {
    url: String,
    /// Connections cut so far.
    cuts: Arc<AtomicUsize>,
}

/// Forwards to `upstream`; the first `cut` answers that carry `marker` (an
/// event, so the client has seen some) have their connection closed there.
fn cutting_proxy(upstream: &str, cut: usize, marker: &'static str) -> CuttingProxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = upstream.trim_start_matches("http://").to_string();
    let cuts = Arc::new(AtomicUsize::new(0));
    let cuts_made = cuts.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let upstream = upstream.clone();
            let cuts_made = cuts_made.clone();
            std::thread::spawn(move || {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    return;
                };
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                });
                let (mut s_read, mut c_write) = (server, client);
                let mut seen = Vec::new();
                let mut buf = [0u8; 8192];
                while let Ok(got) = s_read.read(&mut buf) {
                    if got == 0 || c_write.write_all(&buf[..got]).is_err() {
                        break;
                    }
                    seen.extend_from_slice(&buf[..got]);
                    if String::from_utf8_lossy(&seen).contains(marker) {
                        let take = |n: usize| (n < cut).then_some(n + 1);
                        if cuts_made
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, take)
                            .is_ok()
                        {
                            break;
                        }
                        seen.clear();
                    }
                }
                let _ = c_write.shutdown(std::net::Shutdown::Both);
                let _ = s_read.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    CuttingProxy { url, cuts }
}

// ---------------------------------------------------------------------------
// Usage errors: exit 2, and not one request.

#[test]
fn usage_errors_exit_2_without_any_request() {
    // A server that counts connections and closes each at once (so a
    // request made by mistake fails the test quickly instead of hanging).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    let user = User::at(&url);
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret", b"s", 0o644);
    let folder = dir.path().join("proj");
    write(&folder, "a.txt", b"a", 0o644);
    std::os::unix::fs::symlink(outside.path().join("secret"), folder.join("link")).unwrap();
    let f = folder.to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["push", f],                       // no --workspace
        vec!["push", f, "--workspace", "a/b"], // a bad id
        vec!["push", f, "--workspace", "ws"],  // a symlink out of the folder
        vec!["run", "https://github.com/o/r"], // no step
        vec![
            "run",
            "https://github.com/o/r",
            "--cmd",
            "x",
            "--env",
            "NOEQUALS",
        ],
        vec!["runs", "get"],
        vec!["frobnicate"],
        vec!["--url", "ftp://x", "account"],
        vec!["exec", "task", "--session", "s", "--new-session"],
    ];
    for args in cases {
        let ran = user.run(&args);
        assert_eq!(ran.code, 2, "{args:?}: {}\n{}", ran.stdout, ran.stderr);
    }
    let ran = user.run(&["--json", "push", f, "--workspace", "ws"]);
    assert_eq!(ran.code, 2);
    let err = ran.json();
    assert_eq!(err["error"], "bad_path", "{err}");
    assert!(
        err["message"].as_str().unwrap().starts_with("link: "),
        "{err}"
    );
    // Completions and help need no server either.
    let bash = user.ok(&["completions", "bash"]).stdout;
    assert!(bash.contains("cloudbox") && bash.contains("push"), "{bash}");
    let help = user.ok(&["help", "exec"]).stdout;
    assert!(help.contains("Idempotency-Key"), "{help}");
    assert!(user.ok(&["--version"]).stdout.starts_with("cloudbox "));
    assert_eq!(
        requests.load(Ordering::SeqCst),
        0,
        "a usage error made a request"
    );
}

// ---------------------------------------------------------------------------
// push and pull

#[test]
fn push_then_pull_is_byte_identical_and_moves_only_what_differs() {
    let key = internal_key();
    let user = User::new(Some(&key));
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    write(s, "README.md", b"# hello\n", 0o644);
    write(s, "bin/run.sh", b"#!/bin/sh\necho run\n", 0o755);
    write(
        s,
        "src/deep/nested/data.bin",
        &(0..=255u8).cycle().take(300_000).collect::<Vec<_>>(),
        0o644,
    );
    write(s, "empty.txt", b"", 0o644);
    write(s, ".gitignore", b"*.log\nbuild/\n", 0o644);
    write(s, ".cloudboxignore", b"secret.env\n", 0o644);
    write(s, "debug.log", b"ignored", 0o644);
    write(s, "build/out.o", b"ignored", 0o644);
    write(s, "secret.env", b"TOKEN=1", 0o644);
    write(s, ".git/HEAD", b"ref: refs/heads/main\n", 0o644);
    write(s, ".cloudbox/workspace", b"other\n", 0o644);
    let sp = s.to_str().unwrap();

    let first = user
        .ok(&["--json", "push", sp, "--workspace", "tree"])
        .json();
    assert_eq!(first["workspaceId"], "tree");
    assert_eq!(first["version"], 1);
    assert_eq!(first["files"], 6, "{first}");
    assert_eq!(first["uploadedBlobs"], 6);
    let sent: u64 = [
        "README.md",
        "bin/run.sh",
        "src/deep/nested/data.bin",
        ".gitignore",
        ".cloudboxignore",
    ]
    .iter()
    .map(|p| fs::metadata(s.join(p)).unwrap().len())
    .sum();
    assert_eq!(first["uploadedBytes"], sent);
    assert_eq!(first["bytes"], sent);

    // Pull into an empty folder: the same files, bytes and modes; nothing ignored.
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().join("copy");
    let dp = d.to_str().unwrap();
    let pulled = user.ok(&["--json", "pull", "tree", dp]).json();
    assert_eq!(
        pulled,
        json!({"workspaceId": "tree", "version": 1, "written": 6, "deleted": 0, "bytes": sent})
    );
    let mut want = snapshot(s);
    for ignored in ["debug.log", "build/out.o", "secret.env", ".git/HEAD"] {
        assert!(want.remove(ignored).is_some());
    }
    assert_eq!(snapshot(&d), want);
    assert_eq!(snapshot(&d)["bin/run.sh"].1, 0o755);

    // A second push sends nothing and commits nothing.
    let again = user
        .ok(&["--json", "push", sp, "--workspace", "tree"])
        .json();
    assert_eq!(
        (
            again["uploadedBlobs"].clone(),
            again["uploadedBytes"].clone()
        ),
        (json!(0), json!(0))
    );
    assert_eq!(again["version"], 1);
    // Pull of an unchanged folder writes nothing.
    let same = user.ok(&["--json", "pull", "tree", dp]).json();
    assert_eq!(
        (same["written"].clone(), same["deleted"].clone()),
        (json!(0), json!(0))
    );

    // One changed file sends one blob.
    write(s, "README.md", b"# hello, again\n", 0o644);
    let one = user
        .ok(&["--json", "push", sp, "--workspace", "tree"])
        .json();
    assert_eq!(one["uploadedBlobs"], 1);
    assert_eq!(one["uploadedBytes"], 15);
    assert_eq!(one["version"], 2);

    // --delete removes what the version lacks and nothing else.
    write(&d, "local-only.txt", b"mine", 0o644);
    write(&d, "notes.log", b"ignored here too", 0o644);
    write(&d, ".git/config", b"[core]", 0o644);
    let kept = user.ok(&["--json", "pull", "tree", dp]).json();
    assert_eq!(
        (kept["written"].clone(), kept["deleted"].clone()),
        (json!(1), json!(0))
    );
    assert!(d.join("local-only.txt").exists());
    let deleted = user.ok(&["--json", "pull", "tree", dp, "--delete"]).json();
    assert_eq!(
        (deleted["written"].clone(), deleted["deleted"].clone()),
        (json!(0), json!(1))
    );
    assert!(!d.join("local-only.txt").exists());
    assert!(d.join("notes.log").exists() && d.join(".git/config").exists());
    assert_eq!(fs::read(d.join("README.md")).unwrap(), b"# hello, again\n");

    // Pull never writes under .git/ or .cloudbox/, whatever a version holds.
    let hook = b"#!/bin/sh\necho pwned\n";
    let sha = cloudbox::workspaces::manifest::sha256_hex(hook);
    let auth = format!("Bearer {}", key.key);
    let put = send(
        "PUT",
        &format!("/workspaces/tree/blobs/{sha}"),
        &[("authorization", &auth)],
        Some(hook),
    );
    assert!([200, 201].contains(&put.status), "{}", put.text);
    let mut files = get("/workspaces/tree/manifest", Some(&key.key)).json()["files"].clone();
    for path in [".git/hooks/pre-commit", ".cloudbox/workspace", "ok/hook.sh"] {
        files
            .as_array_mut()
            .unwrap()
            .push(json!({"path": path, "sha256": sha, "size": hook.len(), "mode": 0o755}));
    }
    let commit = post_json(
        "/workspaces/tree/commits",
        Some(&key.key),
        &json!({"baseVersion": 2, "files": files}),
    );
    assert_eq!(commit.status, 201, "{}", commit.text);
    let hostile = user.ok(&["--json", "pull", "tree", dp]).json();
    assert_eq!(hostile["written"], 1, "{hostile}");
    assert!(d.join("ok/hook.sh").exists());
    assert!(!d.join(".git/hooks/pre-commit").exists() && !d.join(".cloudbox").exists());

    // An older version on request.
    let old = user
        .ok(&["--json", "pull", "tree", dp, "--version", "1"])
        .json();
    assert_eq!(old["written"], 1);
    assert_eq!(fs::read(d.join("README.md")).unwrap(), b"# hello\n");
    // Human output names what moved.
    let text = user.ok(&["push", sp, "--workspace", "tree"]).stdout;
    assert!(text.contains("pushed 6 files"), "{text}");
}

#[test]
fn an_interrupted_pull_leaves_no_half_written_file() {
    let key = internal_key();
    let user = User::new(Some(&key));
    let src = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..48 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write(src.path(), "big.bin", &big, 0o644);
    write(src.path(), "small.txt", b"small", 0o644);
    user.ok(&["push", src.path().to_str().unwrap(), "--workspace", "big"]);

    let dest = tempfile::tempdir().unwrap();
    let d = dest.path();
    let mut child = user
        .command(&["pull", "big", d.to_str().unwrap()])
        .spawn()
        .unwrap();
    // Killed as soon as a download is under way (its temporary file exists).
    let deadline = Instant::now() + Duration::from_secs(60);
    let temp_seen = loop {
        let temp = fs::read_dir(d)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains(".cloudbox-"));
        if temp || Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break temp;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(temp_seen, "the pull never started a download");
    for name in ["big.bin", "small.txt"] {
        if let Ok(bytes) = fs::read(d.join(name)) {
            let want: &[u8] = if name == "big.bin" { &big } else { b"small" };
            assert!(
                bytes == want,
                "{name} is half-written ({} bytes)",
                bytes.len()
            );
        }
    }
    // The next pull finishes the job; the killed pull's temporary file is
    // never taken for a file of the folder.
    user.ok(&["pull", "big", d.to_str().unwrap()]);
    assert_eq!(fs::read(d.join("big.bin")).unwrap(), big);
    let pushed = user
        .ok(&["--json", "push", d.to_str().unwrap(), "--workspace", "big"])
        .json();
    assert_eq!(
        (pushed["files"].clone(), pushed["uploadedBlobs"].clone()),
        (json!(2), json!(0))
    );
}

// ---------------------------------------------------------------------------
// exec

fn balance(key: &Key) -> f64 {
    let resp = get("/billing/account", Some(&key.key));
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.json()["creditsBalance"].as_f64().unwrap()
}

#[test]
fn exec_pushes_runs_the_agent_pulls_and_charges_what_it_prints() {
    let key = funded_key(5.0);
    let user = User::new(Some(&key));
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("my project");
    write(&folder, "notes.txt", b"before\n", 0o644);
    let fp = folder.to_str().unwrap();

    let before = balance(&key);
    let ran = user.run(&[
        "--json",
        "exec",
        "write hello.txt hi from the agent",
        "--dir",
        fp,
    ]);
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    let body = ran.json();
    assert_eq!(body["ok"], true, "{body}");
    // The agent's file is in the local folder, and ours is untouched.
    assert_eq!(
        fs::read_to_string(folder.join("hello.txt")).unwrap().trim(),
        "hi from the agent"
    );
    assert_eq!(
        fs::read_to_string(folder.join("notes.txt")).unwrap(),
        "before\n"
    );
    // The workspace id was made from the folder and remembered.
    let ws = fs::read_to_string(folder.join(".cloudbox/workspace")).unwrap();
    assert!(ws.trim().starts_with("myproject-"), "{ws}");
    assert_eq!(body["workspaceId"], ws.trim());
    // The cost it reports is what the account lost.
    let cost = body["usage"]["totalCost"].as_f64().unwrap();
    assert!(cost > 0.0);
    assert!(
        ((before - balance(&key)) - cost).abs() < 1e-9,
        "{before} → {}, cost {cost}",
        balance(&key)
    );

    // A second exec resumes the session; the human output prints the cost.
    let before = balance(&key);
    let ran = user.run(&["exec", "write second.txt again", "--dir", fp]);
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert!(folder.join("second.txt").exists());
    let spent = before - balance(&key);
    assert!(
        ran.stdout.contains(&format!("cost ${spent:.6}")),
        "{}",
        ran.stdout
    );
    let ws_body = get(&format!("/workspaces/{}", ws.trim()), Some(&key.key)).json();
    assert_eq!(
        ws_body["sessionId"], body["sessionId"],
        "the session was not resumed"
    );

    // An execute that is not ok exits 1 and pulls nothing.
    write(&folder, "notes.txt", b"changed locally\n", 0o644);
    let failed = user.run(&["--json", "exec", "fail", "--dir", fp]);
    assert_eq!(failed.code, 1, "{}\n{}", failed.stdout, failed.stderr);
    assert_eq!(failed.json()["ok"], false);
    assert_eq!(
        fs::read_to_string(folder.join("notes.txt")).unwrap(),
        "changed locally\n"
    );
}

#[test]
fn an_exec_whose_connection_drops_reattaches_and_runs_once() {
    let key = funded_key(5.0);
    let proxy = cutting_proxy(&current().base, 1, "event: ");
    let mut user = User::new(Some(&key));
    user.url = proxy.url.clone();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "seed.txt", b"seed", 0o644);
    let before = balance(&key);
    let ran = user.run(&[
        "--json",
        "exec",
        "nap",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert_eq!(
        proxy.cuts.load(Ordering::SeqCst),
        1,
        "the connection was never cut"
    );
    let body = ran.json();
    assert_eq!(body["ok"], true, "{body}");
    // One execute: its usage charged once, one new version on top of the push.
    let cost = body["usage"]["totalCost"].as_f64().unwrap();
    assert!(((before - balance(&key)) - cost).abs() < 1e-9);
    let ws = body["workspaceId"].as_str().unwrap();
    let usage = get("/billing/usage", Some(&key.key)).json();
    assert_eq!(usage["totals"]["executions"], 1, "{usage}");
    let info = get(&format!("/workspaces/{ws}"), Some(&key.key)).json();
    assert_eq!(info["version"], body["version"]);
}

// ---------------------------------------------------------------------------
// runs

fn runs_of(key: &Key) -> Vec<Value> {
    let resp = get("/api/runs?limit=100", Some(&key.key));
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.json()["runs"].as_array().unwrap().clone()
}

#[test]
fn run_exits_0_on_a_passing_verify_and_1_on_a_failing_one() {
    model();
    let repo = fixture_repo("cli", "passing", &[("README.md", "fixture\n")]);
    let key = internal_key();
    let user = User::new(Some(&key));
    let out = tempfile::tempdir().unwrap();
    let artifact = out.path().join("artifact.txt");
    let ran = user.run(&[
        "run",
        &repo,
        "--cmd",
        "echo made > out.txt",
        "--verify",
        "grep -q made out.txt",
        "--artifact",
        "out.txt",
        "--out",
        artifact.to_str().unwrap(),
    ]);
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains(" clone ")),
        "{}",
        ran.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" command ") && l.ends_with("echo made > out.txt")),
        "{}",
        ran.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ok") && l.contains(" verify ")),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("passed"), "{}", ran.stdout);
    assert_eq!(fs::read_to_string(&artifact).unwrap(), "made\n");

    let ran = user.run(&["--json", "run", &repo, "--verify", "test -f absent.txt"]);
    assert_eq!(ran.code, 1, "{}\n{}", ran.stdout, ran.stderr);
    let body = ran.json();
    assert_eq!(body["ok"], false);
    assert_eq!(body["status"], "failed");
    let id = body["runId"].as_str().unwrap();
    // The run routes, by id.
    let got = user.ok(&["--json", "runs", "get", id]).json();
    assert_eq!(got["runId"], id);
    let verified = user.ok(&["--json", "runs", "verify", id]).json();
    assert_eq!(verified["valid"], true);
    let listed = user.ok(&["--json", "runs", "list"]).json();
    assert_eq!(listed["runs"].as_array().unwrap().len(), 2);
    // open: a private run has no page; a public one's URL answers without a key.
    assert_eq!(user.run(&["runs", "open", id]).code, 4);
    let public = user
        .ok(&["--json", "run", &repo, "--verify", "true", "--public"])
        .json();
    let public_id = public["runId"].as_str().unwrap();
    let url = user
        .ok(&["runs", "open", public_id])
        .stdout
        .trim()
        .to_string();
    assert_eq!(url, format!("{}/runs/{public_id}", current().base));
    let page = get(&format!("/runs/{public_id}"), None);
    assert_eq!(page.status, 200);
    assert!(page.text.contains(public_id));
}

#[test]
fn a_live_run_from_the_command_line_execs_writes_reads_stops_resumes_and_forks() {
    model();
    let repo = fixture_repo("cli", "live", &[("README.md", "fixture\n")]);
    let key = internal_key();
    let user = User::new(Some(&key));
    let body = user
        .ok(&[
            "--json",
            "run",
            &repo,
            "--cmd",
            "echo made > out.txt",
            "--live",
            "--ttl",
            "600",
        ])
        .json();
    assert_eq!(body["status"], "live", "{body}");
    let id = body["runId"].as_str().unwrap().to_string();

    let exec = user.run(&["runs", "exec", &id, "cat out.txt; echo oops >&2"]);
    assert_eq!(
        (exec.code, exec.stdout.as_str()),
        (0, "made\n"),
        "{}",
        exec.stderr
    );
    assert_eq!(exec.stderr, "oops\n");
    let failing = user.run(&["runs", "exec", &id, "exit 3"]);
    assert_eq!(failing.code, 1, "{}", failing.stderr);
    assert!(failing.stderr.contains("exit 3"), "{}", failing.stderr);

    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("blob.bin");
    fs::write(&local, [0u8, 1, 2, 255, 10]).unwrap();
    user.ok(&[
        "runs",
        "write",
        &id,
        "data/blob.bin",
        local.to_str().unwrap(),
        "--mode",
        "755",
    ]);
    let back = dir.path().join("back.bin");
    user.ok(&[
        "runs",
        "read",
        &id,
        "data/blob.bin",
        "--out",
        back.to_str().unwrap(),
    ]);
    assert_eq!(fs::read(&back).unwrap(), vec![0u8, 1, 2, 255, 10]);
    let text = user.ok(&["runs", "read", &id, "out.txt"]);
    assert_eq!(text.stdout, "made\n");
    assert_eq!(user.run(&["runs", "read", &id, "missing.txt"]).code, 4);
    assert_eq!(user.run(&["runs", "read", &id, "../etc/passwd"]).code, 2);

    let stopped = user.ok(&["--json", "runs", "stop", &id]).json();
    assert_eq!(stopped["status"], "stopped");
    // Not live any more: exec is a conflict (exit 5).
    assert_eq!(user.run(&["runs", "exec", &id, "true"]).code, 5);
    let fork = user.ok(&["--json", "runs", "fork", &id]).json();
    assert_eq!(fork["status"], "stopped", "{fork}");
    let fork_id = fork["runId"].as_str().unwrap().to_string();
    let resumed = user.ok(&["--json", "runs", "resume", &fork_id]).json();
    assert_eq!(resumed["status"], "live");
    let seen = user.ok(&[
        "runs",
        "exec",
        &fork_id,
        "cat out.txt; stat -c %a data/blob.bin",
    ]);
    assert_eq!(seen.stdout, "made\n755\n");
    user.ok(&["runs", "stop", &fork_id]);
    let verified = user.ok(&["--json", "runs", "verify", &fork_id]).json();
    assert_eq!(verified["valid"], true);
}

#[test]
fn a_run_whose_connection_drops_reattaches_and_runs_once() {
    model();
    let repo = fixture_repo("cli", "steps", &[("README.md", "fixture\n")]);
    let key = internal_key();
    // The first connection is cut once the first receipt has gone through.
    let proxy = cutting_proxy(&current().base, 1, "event: receipt");
    let mut user = User::new(Some(&key));
    user.url = proxy.url.clone();
    let ran = user.run(&[
        "run",
        &repo,
        "--cmd",
        "sleep 1; echo one",
        "--cmd",
        "sleep 1; echo two",
        "--verify",
        "true",
    ]);
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        proxy.cuts.load(Ordering::SeqCst) >= 1,
        "the connection was never cut"
    );
    assert!(
        ran.stderr.contains("resuming after event"),
        "{}",
        ran.stderr
    );
    // Every receipt once, in order.
    let seqs: Vec<u64> = ran
        .stdout
        .lines()
        .filter_map(|l| l.split('#').nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    let want: Vec<u64> = (seqs[0]..seqs[0] + seqs.len() as u64).collect();
    assert_eq!(seqs, want, "{}", ran.stdout);
    assert!(seqs.len() >= 4, "{}", ran.stdout); // clone, two commands, verify
                                                // And one run, not two.
    assert_eq!(runs_of(&key).len(), 1);
}

#[test]
fn runs_events_follow_survives_a_dropped_connection() {
    model();
    let repo = fixture_repo("cli", "events", &[("README.md", "fixture\n")]);
    let key = internal_key();
    let user = User::new(Some(&key));
    let detached = user
        .ok(&[
            "--json",
            "run",
            &repo,
            "--cmd",
            "sleep 2; echo a",
            "--cmd",
            "sleep 1; echo b",
            "--verify",
            "true",
            "--detach",
        ])
        .json();
    let id = detached["runId"].as_str().unwrap().to_string();
    let proxy = cutting_proxy(&current().base, 2, "event: receipt");
    let mut via_proxy = User::new(Some(&key));
    via_proxy.url = proxy.url.clone();
    let mut child = via_proxy
        .command(&["--json", "runs", "events", &id, "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(child.wait().unwrap().success(), "{stdout}");
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<u64> = events.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "gaps or duplicates: {ids:?}"
    );
    assert_eq!(events.last().unwrap()["event"], "result");
    assert!(
        proxy.cuts.load(Ordering::SeqCst) >= 1,
        "the connection was never cut"
    );
    assert_eq!(runs_of(&key).len(), 1);
}

// ---------------------------------------------------------------------------
// Exit codes from real answers

#[test]
fn every_exit_code_from_a_real_answer() {
    let user = User::new(None);
    // 3: a key the service does not know; admin without the admin key.
    let mut bad = User::new(None);
    bad.key = Some("cbx_000000000000000000000000000000000000000000000000".into());
    assert_eq!(bad.run(&["account"]).code, 3);
    let ran = bad.run(&["--json", "account"]);
    assert_eq!(ran.json()["status"], 401);
    assert_eq!(user.run(&["admin", "keys", "list"]).code, 3);
    // 4: an unknown run.
    let key = internal_key();
    let known = User::new(Some(&key));
    let ran = known.run(&["--json", "runs", "get", "run_doesnotexist"]);
    assert_eq!(ran.code, 4, "{}", ran.stdout);
    assert_eq!(ran.json()["error"], "run_not_found");
    // 6: no credits (402 before any work).
    let broke = key_with(json!({"name": "broke", "keyType": "standard"}));
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.txt", b"a", 0o644);
    let ran = User::new(Some(&broke)).run(&[
        "--json",
        "exec",
        "write x y",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(ran.code, 6, "{}\n{}", ran.stdout, ran.stderr);
    assert_eq!(ran.json()["error"], "insufficient_credits");
    // 7: a key's own rate limit (its retry-after is long: no retry).
    let limited = key_with(json!({"name": "limited", "keyType": "internal", "rateLimit": 2}));
    let limited_user = User::new(Some(&limited));
    // Windows are fixed (900 s): start well inside one, so the 429's
    // retry-after is long and the CLI does not retry into the next.
    let into_window = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 900;
    if into_window > 840 {
        std::thread::sleep(Duration::from_secs(901 - into_window));
    }
    let codes: Vec<i32> = (0..3)
        .map(|_| limited_user.run(&["account"]).code)
        .collect();
    assert_eq!(codes, [0, 0, 7]);
    // 8: nothing listens there.
    let port = free_port();
    let ran = User::at(&format!("http://127.0.0.1:{port}")).run(&["--json", "account"]);
    assert_eq!(ran.code, 8);
    assert_eq!(ran.json()["error"], "network");
    // The admin commands, with the admin key.
    let mut admin = User::new(None);
    admin.url = current().base.clone();
    let mut cmd = admin.command(&[
        "--json",
        "admin",
        "keys",
        "create",
        "made-by-cli",
        "--credits",
        "2.5",
    ]);
    cmd.env("CLOUDBOX_ADMIN_KEY", ADMIN_KEY);
    let made = admin.run_with(cmd);
    assert_eq!(made.code, 0, "{}", made.stderr);
    let made = made.json();
    assert!(made["key"].as_str().unwrap().starts_with("cbx_"));
    assert_eq!(made["creditsBalance"], 2.5, "{made}");
    let mut with_credits = User::new(None);
    with_credits.key = made["key"].as_str().map(str::to_string);
    let account = with_credits.ok(&["--json", "account"]).json();
    assert_eq!(account["creditsBalance"], 2.5);
    let mut cmd = admin.command(&["admin", "keys", "revoke", made["id"].as_str().unwrap()]);
    cmd.env("CLOUDBOX_ADMIN_KEY", ADMIN_KEY);
    assert_eq!(admin.run_with(cmd).code, 0);
    let mut revoked = User::new(None);
    revoked.key = made["key"].as_str().map(str::to_string);
    assert_eq!(revoked.run(&["account"]).code, 3);
}

// ---------------------------------------------------------------------------
// login: where the key goes

#[test]
fn login_keeps_the_key_in_a_private_file_and_never_prints_it() {
    let key = funded_key(1.0);
    let mut user = User::new(None);
    // A bad key is refused and nothing is saved.
    let out = user.login_with_stdin(b"cbx_nope\n");
    assert_eq!(out.status.code(), Some(3));
    assert!(!user.config().exists());
    // The real key, from stdin.
    let out = user.login_with_stdin(format!("{}\n", key.key).as_bytes());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&user.config()), 0o600);
    assert_eq!(mode(user.config().parent().unwrap()), 0o700);
    assert!(fs::read_to_string(user.config())
        .unwrap()
        .contains(&key.key));
    // From now on no key on the command line or in the environment.
    user.key = None;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "f.txt", b"f", 0o644);
    let mut outputs = vec![out];
    for args in [
        vec!["account"],
        vec!["--json", "account"],
        vec![
            "push",
            dir.path().to_str().unwrap(),
            "--workspace",
            "login-ws",
        ],
        vec!["runs", "list"],
    ] {
        let out = user.command(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(out);
    }
    for out in &outputs {
        for stream in [&out.stdout, &out.stderr] {
            assert!(
                !String::from_utf8_lossy(stream).contains(&key.key),
                "the key was printed"
            );
        }
    }
    // logout forgets it.
    user.ok(&["logout"]);
    assert!(!fs::read_to_string(user.config())
        .unwrap()
        .contains(&key.key));
    assert_eq!(user.run(&["account"]).code, 3);
}

#[test]
fn ctrl_c_and_the_timeout_cancel_the_execute_and_say_what_was_charged() {
    let key = funded_key(5.0);
    let user = User::new(Some(&key));
    // Ctrl-C (SIGINT) while the agent waits on the model.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.txt", b"a", 0o644);
    let mut cmd = user.command(&[
        "--json",
        "exec",
        "slow",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(8));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the cancel took {:?}",
        started.elapsed()
    );
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: Value = serde_json::from_slice(&out.stdout).expect("the execute's body");
    assert_eq!(body["status"], "cancelled", "{body}");
    let id = body["runId"].as_str().unwrap();
    let stored = get(&format!("/execute/{id}"), Some(&key.key)).json();
    assert_eq!(stored["status"], "cancelled");

    // --timeout: the client's deadline, exit 124, the execute cancelled too.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.txt", b"a", 0o644);
    let ran = user.run(&[
        "exec",
        "slow",
        "--dir",
        dir.path().to_str().unwrap(),
        "--timeout",
        "6",
    ]);
    assert_eq!(ran.code, 124, "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stderr.contains("the execute was cancelled; charged $"),
        "{}",
        ran.stderr
    );
}

// ---------------------------------------------------------------------------
// computers

#[test]
fn a_computer_from_the_command_line_is_graded_from_its_receipts() {
    let key = internal_key();
    let user = User::new(Some(&key));
    let dir = tempfile::tempdir().unwrap();
    let spec = json!({
        "name": "cli triage",
        "profile": {"role": "on-call engineer"},
        "filesystem": [
            {"path": "README.md", "kind": "doc", "content": "Start with the incident."},
            {"path": "incident.md", "kind": "incident", "content": "Latency spiked."}
        ],
        "collaborators": [{"id": "alice", "role": "SRE",
            "privateFiles": [{"path": "private/notes.md", "kind": "notes", "content": "The index was dropped."}]}],
        "objectives": [{"id": "fix", "title": "Restore latency"}],
        "rubric": [
            {"id": "readme-first", "weight": 2, "must": "README first", "mustEvent": {"type": "readBefore", "before": "README.md", "after": "incident.md"}},
            {"id": "asked-alice", "must": "Ask the SRE", "mustEvent": {"type": "asked", "who": "alice"}},
            {"id": "report", "weight": 3, "must": "Write a report", "mustEvent": {"type": "wrote", "path": "REPORT.md"}},
            {"id": "decided", "must": "Restore the index", "mustEvent": {"type": "submitted", "objective": "fix", "decision": "restore-index"}}
        ]
    });
    let spec_file = dir.path().join("spec.json");
    fs::write(&spec_file, spec.to_string()).unwrap();
    let made = user
        .ok(&["--json", "computer", "create", spec_file.to_str().unwrap()])
        .json();
    let id = made["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("cb_"), "{made}");
    // The same spec is the same computer.
    let again = user.ok(&["computer", "create", spec_file.to_str().unwrap()]);
    assert_eq!(again.stdout.trim(), id);

    let files = user.ok(&["--json", "computer", "files", &id]).json();
    assert_eq!(files["files"].as_array().unwrap().len(), 2);
    assert_eq!(
        user.ok(&["computer", "read", &id, "README.md"])
            .stdout
            .trim(),
        "Start with the incident."
    );
    user.ok(&["computer", "read", &id, "incident.md"]);
    let asked = user
        .ok(&["--json", "computer", "ask", &id, "alice", "what changed?"])
        .json();
    assert_eq!(asked["revealed"], json!(["private/notes.md"]));
    let report = dir.path().join("report.md");
    fs::write(&report, "Restore the index.\n").unwrap();
    let wrote = user
        .ok(&[
            "--json",
            "computer",
            "write",
            &id,
            "REPORT.md",
            report.to_str().unwrap(),
        ])
        .json();
    assert_eq!(wrote["written"], 19);
    user.ok(&[
        "computer",
        "submit",
        &id,
        "fix",
        "--decision",
        "restore-index",
    ]);
    let ran = user.run(&["computer", "read", &id, "nope.md"]);
    assert_eq!(ran.code, 4, "{}", ran.stderr);

    // grade: a table, and the score from the receipts.
    let table = user.ok(&["computer", "grade", &id]).stdout;
    assert!(table.starts_with("criterion"), "{table}");
    assert!(
        table.contains("readme-first") && table.contains("passed"),
        "{table}"
    );
    let grade = user.ok(&["--json", "computer", "grade", &id]).json();
    assert_eq!(
        (grade["score"].as_f64(), grade["max"].as_f64()),
        (Some(7.0), Some(7.0)),
        "{grade}"
    );
    let receipts = user.ok(&["--json", "computer", "receipts", &id]).json();
    let kinds: Vec<&str> = receipts["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["init", "read", "read", "ask", "write", "submit", "grade", "grade"]
    );
}
