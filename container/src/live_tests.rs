//! Live runs over real HTTP: a real clone kept after its run, real bash
//! execs in it, files written and read through the routes, and a snapshot
//! restored into another run id that snapshots back to the same tree.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cloudbox::runs::tree::{self, EntryKind, TreeEntry};
use cloudbox::wire::receipts::{verify_chain, Receipt, ReceiptKind, GENESIS};
use cloudbox::wire::{
    RunEvent, RunResult, RunStatus, WireEvent, FILE_MODE_HEADER, MAX_LIVE_FILE_BYTES,
    RUNNER_SECRET_HEADER,
};
use reqwest::Method;
use serde_json::{json, Value};

use super::parse_mode;
use crate::config::RunnerConfig;
use crate::testing::{bare_repo, config, serve, spec};

struct Runner {
    dir: tempfile::TempDir,
    work: PathBuf,
    base: String,
    client: reqwest::Client,
}

struct Reply {
    status: u16,
    mode: Option<String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The runner error code of a refusal.
    fn code(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn events(&self) -> Vec<WireEvent> {
        String::from_utf8_lossy(&self.body)
            .lines()
            .map(|l| serde_json::from_str::<WireEvent>(l).unwrap())
            .filter(|e| e.seq != 0)
            .collect()
    }
}

async fn runner() -> Runner {
    let dir = tempfile::tempdir().unwrap();
    bare_repo(
        &dir.path().join("github"),
        "acme",
        "demo",
        &[("README.md", "hello\n"), ("src/lib.txt", "one\ntwo\n")],
    );
    let cfg = config(dir.path());
    let work = cfg.work_dir.clone();
    let addr = serve(cfg).await;
    Runner {
        dir,
        work,
        base: format!("http://{addr}"),
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
    }
}

impl Runner {
    async fn call(&self, method: Method, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        let response = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header(RUNNER_SECRET_HEADER, RunnerConfig::TEST_SECRET)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let mode = response
            .headers()
            .get(FILE_MODE_HEADER)
            .map(|v| v.to_str().unwrap().to_string());
        let body = response.bytes().await.unwrap().to_vec();
        Reply { status, mode, body }
    }

    /// Runs `commands` as a live run to its end; returns its result.
    async fn live_run(&self, id: &str, commands: &[&str]) -> RunResult {
        let mut start = spec(id, commands, &[]);
        start.live = true;
        let reply = self
            .call(Method::POST, "/runs", serde_json::to_vec(&start).unwrap())
            .await;
        assert_eq!(reply.status, 200);
        result_of(&reply.events())
    }

    async fn exec(&self, run: &str, exec_id: &str, command: &str, timeout_ms: u64) -> Reply {
        let body = json!({"execId": exec_id, "command": command, "timeoutMs": timeout_ms});
        self.call(Method::POST, &format!("/runs/{run}/exec"), body.to_string())
            .await
    }

    async fn get(&self, run: &str, path: &str) -> Reply {
        self.call(Method::GET, &format!("/runs/{run}/file?path={path}"), "")
            .await
    }

    async fn put(&self, run: &str, query: &str, bytes: impl Into<reqwest::Body>) -> Reply {
        self.call(Method::PUT, &format!("/runs/{run}/file?{query}"), bytes)
            .await
    }

    async fn snapshot(&self, run: &str) -> Vec<TreeEntry> {
        let reply = self
            .call(Method::POST, &format!("/runs/{run}/snapshot"), "")
            .await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        serde_json::from_value(reply.json()["entries"].clone()).unwrap()
    }

    async fn restore(&self, run: &str, entries: &[TreeEntry]) -> Reply {
        let body = json!({ "entries": entries });
        self.call(
            Method::POST,
            &format!("/runs/{run}/restore"),
            body.to_string(),
        )
        .await
    }

    fn repo(&self, run: &str) -> PathBuf {
        self.work.join(run).join("repo")
    }
}

fn result_of(events: &[WireEvent]) -> RunResult {
    match &events.last().unwrap().event {
        RunEvent::Result(r) => r.clone(),
        other => panic!("last event is not a result: {other:?}"),
    }
}

fn receipts(events: &[WireEvent]) -> Vec<Receipt> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            RunEvent::Receipt(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn a_live_run_keeps_its_checkout_and_execs_run_in_it() {
    let r = runner().await;
    let result = r.live_run("run_live", &["echo made > made.txt"]).await;
    assert!(result.ok, "{result:?}");
    assert!(r.repo("run_live").join("made.txt").is_file());

    let command = "cat made.txt; echo \"$HOME\"; echo oops >&2";
    let reply = r.exec("run_live", "ex_ok", command, 10_000).await;
    assert_eq!(reply.status, 200);
    let events = reply.events();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    let chunks: Vec<(u64, String)> = events
        .iter()
        .filter_map(|e| match &e.event {
            RunEvent::Output(c) => Some((c.step, c.text.clone())),
            _ => None,
        })
        .collect();
    assert!(chunks
        .iter()
        .any(|(step, text)| *step == 0 && text.contains("made")));
    assert!(chunks.iter().all(|(step, _)| *step == 0), "{chunks:?}");
    let sealed = receipts(&events);
    assert_eq!(sealed.len(), 1, "{sealed:#?}");
    let receipt = &sealed[0];
    assert_eq!(receipt.kind, ReceiptKind::Exec);
    assert_eq!(receipt.cmd, command);
    assert_eq!(receipt.exit_code, Some(0));
    assert_eq!(receipt.stderr, "oops\n");
    let mut lines = receipt.stdout.lines();
    assert_eq!(lines.next(), Some("made"));
    assert!(lines.next().unwrap().ends_with("run_live/home"));
    assert_eq!((receipt.seq, receipt.prev_hash.as_str()), (1, GENESIS));
    assert!(verify_chain(&sealed).valid);
    let result = result_of(&events);
    assert!(result.ok);
    assert_eq!(result.status, RunStatus::Passed);
    assert!(result.artifact.is_none() && result.diff.is_none());

    let failed = r
        .exec("run_live", "ex_fail", "exit 1", 10_000)
        .await
        .events();
    assert_eq!(receipts(&failed)[0].exit_code, Some(1));
    let result = result_of(&failed);
    assert!(!result.ok);
    assert_eq!(result.status, RunStatus::Failed);

    let slow = r
        .exec("run_live", "ex_slow", "sleep 20", 300)
        .await
        .events();
    let receipt = &receipts(&slow)[0];
    assert!(receipt.timed_out && receipt.exit_code.is_none());
    let result = result_of(&slow);
    assert!(!result.ok);
    assert_eq!(result.status, RunStatus::TimedOut);

    // The exec's job is resumed by its own id, once started.
    let again = r.call(Method::GET, "/runs/ex_ok/events?after=1", "").await;
    assert_eq!(again.events().first().map(|e| e.seq), Some(2));
    let taken = r.exec("run_live", "ex_ok", "true", 1000).await;
    assert_eq!((taken.status, taken.code().as_str()), (409, "run_exists"));
    let bad = r.exec("run_live", "../x", "true", 1000).await;
    assert_eq!((bad.status, bad.code().as_str()), (400, "bad_run"));
}

#[tokio::test]
async fn an_exec_is_cancelled_by_its_id() {
    let r = runner().await;
    assert!(r.live_run("run_cancel", &[]).await.ok);
    let body = json!({"execId": "ex_cancel", "command": "sleep 30", "timeoutMs": 60_000});
    let started = std::time::Instant::now();
    let response = r
        .client
        .post(format!("{}/runs/run_cancel/exec", r.base))
        .header(RUNNER_SECRET_HEADER, RunnerConfig::TEST_SECRET)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cancel = r.call(Method::POST, "/runs/ex_cancel/cancel", "").await;
    assert_eq!(cancel.status, 200);
    let text = response.text().await.unwrap();
    assert!(started.elapsed().as_secs() < 20);
    let events: Vec<WireEvent> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &WireEvent| e.seq != 0)
        .collect();
    assert_eq!(receipts(&events).len(), 1);
    assert_eq!(result_of(&events).status, RunStatus::Cancelled);
}

#[tokio::test]
async fn files_are_written_and_read_back_with_their_mode() {
    let r = runner().await;
    assert!(
        r.live_run("run_files", &["ln -s README.md link.md"])
            .await
            .ok
    );
    let bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let wrote = r.put("run_files", "path=a.bin", bytes.clone()).await;
    assert_eq!(wrote.status, 200);
    assert_eq!(wrote.json(), json!({"path": "a.bin", "written": 3000}));
    let read = r.get("run_files", "a.bin").await;
    assert_eq!((read.status, read.mode.as_deref()), (200, Some("644")));
    assert_eq!(read.body, bytes);

    // Parents are created; a mode is kept by a later write without one.
    let wrote = r
        .put("run_files", "path=deep/er/run.sh&mode=755", "#!/bin/sh\n")
        .await;
    assert_eq!(wrote.status, 200);
    assert_eq!(mode_of(&r.repo("run_files").join("deep/er")), 0o755);
    let wrote = r.put("run_files", "path=deep/er/run.sh", "echo hi\n").await;
    assert_eq!(wrote.status, 200);
    let read = r.get("run_files", "deep/er/run.sh").await;
    assert_eq!(
        (read.mode.as_deref(), &read.body[..]),
        (Some("755"), &b"echo hi\n"[..])
    );
    let wrote = r
        .put("run_files", "path=README.md&mode=0600", "new\n")
        .await;
    assert_eq!(wrote.status, 200);
    assert_eq!(
        r.get("run_files", "README.md").await.mode.as_deref(),
        Some("600")
    );

    // A symlink inside the tree is read and written through.
    let read = r.get("run_files", "link.md").await;
    assert_eq!((read.status, &read.body[..]), (200, &b"new\n"[..]));
    assert_eq!(
        r.put("run_files", "path=link.md", "via link\n")
            .await
            .status,
        200
    );
    let repo = r.repo("run_files");
    assert!(std::fs::symlink_metadata(repo.join("link.md"))
        .unwrap()
        .is_symlink());
    assert_eq!(
        std::fs::read_to_string(repo.join("README.md")).unwrap(),
        "via link\n"
    );
    assert_eq!(mode_of(&repo.join("README.md")), 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(&repo)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".cloudbox-write"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    for bad in ["1777", "89", "12", "07777", "abc", "-644"] {
        let reply = r.put("run_files", &format!("path=x&mode={bad}"), "x").await;
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (400, "bad_mode"),
            "{bad}"
        );
    }
    let missing = r.get("run_files", "nope.txt").await;
    assert_eq!(
        (missing.status, missing.code().as_str()),
        (404, "file_not_found")
    );
    let dir = r.get("run_files", "deep").await;
    assert_eq!((dir.status, dir.code().as_str()), (400, "bad_path"));
    let onto_dir = r.put("run_files", "path=deep", "x").await;
    assert_eq!(
        (onto_dir.status, onto_dir.code().as_str()),
        (400, "bad_path")
    );

    let big = vec![b'x'; MAX_LIVE_FILE_BYTES as usize + 1];
    let reply = r.put("run_files", "path=big.bin", big).await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (413, "file_too_large")
    );
    assert!(!repo.join("big.bin").exists());
    std::fs::File::create(repo.join("sparse.bin"))
        .unwrap()
        .set_len(MAX_LIVE_FILE_BYTES + 1)
        .unwrap();
    let reply = r.get("run_files", "sparse.bin").await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (413, "file_too_large")
    );
}

#[tokio::test]
async fn paths_that_leave_the_checkout_are_refused() {
    let r = runner().await;
    let outside = r.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "top secret").unwrap();
    let links = format!(
        "ln -s /etc/passwd passwd; ln -s {0} out; ln -s {0}/secret.txt secret; ln -s ../../.. up; ln -s nowhere dangling",
        outside.display()
    );
    assert!(r.live_run("run_escape", &[&links]).await.ok);

    for path in ["../x", "%2Fetc%2Fpasswd", "a//b", "./a", ""] {
        let read = r.get("run_escape", path).await;
        assert_eq!(
            (read.status, read.code().as_str()),
            (400, "bad_path"),
            "GET {path}"
        );
        let wrote = r.put("run_escape", &format!("path={path}"), "x").await;
        assert_eq!(
            (wrote.status, wrote.code().as_str()),
            (400, "bad_path"),
            "PUT {path}"
        );
    }
    for path in [
        "passwd",
        "secret",
        "out/secret.txt",
        "up/outside/secret.txt",
    ] {
        let read = r.get("run_escape", path).await;
        assert_eq!(
            (read.status, read.code().as_str()),
            (400, "bad_path"),
            "GET {path}"
        );
        assert!(
            read.json()["message"]
                .as_str()
                .unwrap()
                .contains("outside the checkout"),
            "{path}"
        );
    }
    for path in [
        "secret",
        "out/new.txt",
        "out/deeper/new.txt",
        "up/x",
        "dangling/x",
    ] {
        let wrote = r.put("run_escape", &format!("path={path}"), "pwned").await;
        assert_eq!(
            (wrote.status, wrote.code().as_str()),
            (400, "bad_path"),
            "PUT {path}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt")).unwrap(),
        "top secret"
    );
    let mut names: Vec<String> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["secret.txt"]);
    assert!(!r.dir.path().join("x").exists());

    // A checkout a step replaced with a symlink is no checkout at all.
    std::fs::create_dir_all(r.work.join("run_swapped")).unwrap();
    std::os::unix::fs::symlink(&outside, r.repo("run_swapped")).unwrap();
    let read = r.get("run_swapped", "secret.txt").await;
    assert_eq!((read.status, read.code().as_str()), (404, "not_live"));
}

/// A step that leaves ~200 files of modes 644/755/444, an empty dir, a 0o700
/// and a 0o555 dir, symlinks to a file and a dir, a binary file and a change
/// to a tracked file, beside the clone's own `.git`.
const TREE_SCRIPT: &str = r#"set -e
for d in $(seq 1 10); do
  mkdir -p "gen/d$d"
  for f in $(seq 1 20); do printf 'file %s %s\n' "$d" "$f" > "gen/d$d/f$f.txt"; done
done
chmod 755 gen/d1/*.txt
chmod 444 gen/d2/*.txt
mkdir empty
mkdir -m 700 private && echo key > private/key
mkdir ro && echo ro > ro/file && chmod 555 ro
ln -s README.md readme-link
ln -s gen/d3 d3-link
printf '\000\377 binary' > bin.dat
echo changed >> README.md
"#;

#[tokio::test]
async fn a_restored_checkout_snapshots_exactly_as_the_original() {
    let r = runner().await;
    assert!(r.live_run("run_orig", &[TREE_SCRIPT]).await.ok);
    let entries = r.snapshot("run_orig").await;
    assert_eq!(tree::validate(&entries), Ok(()));
    let find = |path: &str| entries.iter().find(|e| e.path == path).cloned();
    assert!(tree::totals(&entries).files > 200);
    assert_eq!(find("empty"), Some(TreeEntry::dir("empty", 0o755)));
    assert_eq!(find("private"), Some(TreeEntry::dir("private", 0o700)));
    assert_eq!(find("ro"), Some(TreeEntry::dir("ro", 0o555)));
    assert_eq!(
        find("d3-link"),
        Some(TreeEntry::symlink("d3-link", "gen/d3"))
    );
    assert_eq!(find("gen/d1/f1.txt").map(|e| e.mode), Some(0o755));
    assert_eq!(find("gen/d2/f1.txt").map(|e| e.mode), Some(0o444));
    assert_eq!(find("gen/d3/f1.txt").map(|e| e.mode), Some(0o644));
    assert_eq!(find(".git").map(|e| e.kind), Some(EntryKind::Dir));
    assert!(find(".git/HEAD").is_some());
    assert!(!entries.iter().any(|e| e.path.starts_with("d3-link/")));
    // Every file's bytes are in the blob cache, for the DO to pull.
    let bin = find("bin.dat").unwrap();
    let blob = r
        .call(Method::GET, &format!("/blobs/{}", bin.sha256.unwrap()), "")
        .await;
    assert_eq!(blob.body, b"\x00\xff binary");

    let restored = r.restore("run_copy", &entries).await;
    assert_eq!(
        restored.status,
        200,
        "{}",
        String::from_utf8_lossy(&restored.body)
    );
    let totals = tree::totals(&entries);
    assert_eq!(
        restored.json(),
        json!({"files": totals.files, "bytes": totals.bytes})
    );
    assert_eq!(r.snapshot("run_copy").await, entries);
    assert!(r.work.join("run_copy/home").is_dir());
    assert!(!r.work.join(".restore").read_dir().unwrap().any(|_| true));

    // git sees the same work tree in both.
    let git = "git status --porcelain && git diff";
    let orig = r
        .exec("run_orig", "ex_git_orig", git, 10_000)
        .await
        .events();
    let copy = r
        .exec("run_copy", "ex_git_copy", git, 10_000)
        .await
        .events();
    let (orig, copy) = (&receipts(&orig)[0], &receipts(&copy)[0]);
    assert_eq!(copy.exit_code, Some(0), "{}", copy.stderr);
    assert!(orig.stdout.contains(" M README.md"), "{}", orig.stdout);
    assert!(orig.stdout.contains("+changed"), "{}", orig.stdout);
    assert_eq!(copy.stdout, orig.stdout);

    // Writable again, so the temp dir can go even without root.
    for run in ["run_orig", "run_copy"] {
        let ro = r.repo(run).join("ro");
        std::fs::set_permissions(ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[tokio::test]
async fn restore_refuses_bad_trees_names_missing_blobs_and_replaces_the_checkout() {
    let r = runner().await;
    let rr = &r;
    let blob = |content: &'static str| async move {
        let sha = cloudbox::common::canonical::sha256_hex(content.as_bytes());
        let put = rr
            .call(Method::PUT, &format!("/blobs/{sha}"), content)
            .await;
        assert!(put.status == 201 || put.status == 200);
        sha
    };
    let (one, two) = (blob("one\n").await, blob("two two\n").await);

    let unsorted = vec![
        TreeEntry::file("b", &one, 4, 0o644),
        TreeEntry::file("a", &one, 4, 0o644),
    ];
    let reply = r.restore("run_r", &unsorted).await;
    assert_eq!((reply.status, reply.code().as_str()), (400, "bad_tree"));
    let under_link = vec![
        TreeEntry::symlink("l", "/etc"),
        TreeEntry::file("l/passwd", &one, 4, 0o644),
    ];
    let reply = r.restore("run_r", &under_link).await;
    assert_eq!((reply.status, reply.code().as_str()), (400, "bad_tree"));
    let unknown = "ab".repeat(32);
    let reply = r
        .restore(
            "run_r",
            &[
                TreeEntry::file("a", &one, 4, 0o644),
                TreeEntry::file("b", &unknown, 1, 0o644),
            ],
        )
        .await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (409, "missing_blobs")
    );
    assert_eq!(reply.json()["missing"], json!([unknown]));
    let wrong_size = r
        .restore("run_r", &[TreeEntry::file("a", &one, 99, 0o644)])
        .await;
    assert_eq!(
        (wrong_size.status, wrong_size.code().as_str()),
        (400, "bad_tree")
    );
    let bad_id = r.restore("bad.id", &[]).await;
    assert_eq!((bad_id.status, bad_id.code().as_str()), (400, "bad_run"));
    // Nothing was left behind by the refusals.
    assert!(!r.repo("run_r").exists());
    assert!(!r.work.join(".restore").read_dir().unwrap().any(|_| true));

    let first = vec![
        TreeEntry::file("a", &one, 4, 0o644),
        TreeEntry::dir("d", 0o755),
        TreeEntry::file("d/x", &one, 4, 0o755),
    ];
    assert_eq!(r.restore("run_r", &first).await.status, 200);
    assert_eq!(r.snapshot("run_r").await, first);
    let second = vec![
        TreeEntry::file("b", &two, 8, 0o444),
        TreeEntry::symlink("link", "b"),
    ];
    let reply = r.restore("run_r", &second).await;
    assert_eq!(reply.json(), json!({"files": 1, "bytes": 8}));
    assert_eq!(r.snapshot("run_r").await, second);
    let read = r.get("run_r", "link").await;
    assert_eq!(
        (read.mode.as_deref(), &read.body[..]),
        (Some("444"), &b"two two\n"[..])
    );
}

#[tokio::test]
async fn routes_answer_not_live_without_a_kept_checkout() {
    let r = runner().await;
    // A run that is not live leaves nothing behind.
    let start = spec("run_plain", &["true"], &[]);
    let ran = r
        .call(Method::POST, "/runs", serde_json::to_vec(&start).unwrap())
        .await;
    assert!(result_of(&ran.events()).ok);
    assert!(!r.work.join("run_plain").exists());
    for run in ["run_plain", "never_started"] {
        let replies = [
            r.exec(run, "ex_x", "true", 1000).await,
            r.get(run, "a").await,
            r.put(run, "path=a", "x").await,
            r.call(Method::POST, &format!("/runs/{run}/snapshot"), "")
                .await,
        ];
        for reply in replies {
            assert_eq!(
                (reply.status, reply.code().as_str()),
                (404, "not_live"),
                "{run}"
            );
        }
    }
    let bad = r.get("bad.id", "a").await;
    assert_eq!((bad.status, bad.code().as_str()), (400, "bad_run"));
}

#[test]
fn modes_are_three_or_four_octal_digits_up_to_777() {
    assert_eq!(parse_mode("644").unwrap(), 0o644);
    assert_eq!(parse_mode("0755").unwrap(), 0o755);
    assert_eq!(parse_mode("777").unwrap(), 0o777);
    assert_eq!(parse_mode("000").unwrap(), 0);
    for bad in ["", "7", "64", "1000", "0x64", "888", "+644", "00644"] {
        assert_eq!(
            parse_mode(bad).unwrap_err().error,
            cloudbox::wire::RunnerErrorCode::BadMode,
            "{bad}"
        );
    }
}
