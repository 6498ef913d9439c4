//! One step's process: its own process group, a clean environment, a
//! timeout, cancellation, and output captured as it comes. When the step
//! ends — normally, by timeout or by cancel — the whole group is killed, so
//! nothing a step started outlives it and no pipe stays open.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use cloudbox::wire::{StreamName, LIVE_OUTPUT_CAP_BYTES, OUTPUT_TAIL_CHARS};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use crate::capture::{Tail, Utf8Chunker};
use crate::config::StepUser;

/// After the shell exits, how long to wait for a pipe held open by a process
/// that left the group (e.g. with `setsid`).
const DRAIN_GRACE: Duration = Duration::from_secs(2);

pub struct Spec<'a> {
    pub program: &'a str,
    pub args: Vec<String>,
    pub cwd: &'a Path,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    /// Run as this user (the runner's `RUNNER_STEP_USER`); `None`: as the runner.
    pub user: Option<StepUser>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Finished {
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
    pub timed_out: bool,
    pub cancelled: bool,
}

impl Finished {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0)
    }
}

pub fn kill_group(pgid: u32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    unsafe {
        libc::kill(-(pgid as i32), libc::SIGKILL);
    }
}

/// Kills every process of `user` (a step that left its process group, e.g.
/// with `setsid`, must not outlive its run, nor race the runner reading the
/// tree it leaves). The runner is another user, so it is never among them.
pub fn kill_user_processes(user: StepUser) {
    // kill(-1) as that user reaches every process it could signal itself,
    // those in pid namespaces it made included; repeated, for forks in flight.
    for _ in 0..3 {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "-1"])
            .uid(user.uid)
            .gid(user.gid)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    // Only this container's processes, even where /proc shows the host's.
    let own_ns = std::fs::read_link("/proc/self/ns/pid").ok();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok() != own_ns {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if status_uid(&status) == Some(user.uid) {
            // SAFETY: kill(2) on a pid; no memory is involved.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// The real uid in the text of /proc/<pid>/status (`Uid:\treal\teffective…`).
fn status_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
}

pub fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGQUIT => "SIGQUIT".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGPIPE => "SIGPIPE".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGBUS => "SIGBUS".into(),
        libc::SIGFPE => "SIGFPE".into(),
        other => format!("SIG{other}"),
    }
}

/// Where live output goes, with a cap per stream; the tail is kept anyway.
struct Live<F: FnMut(StreamName, String)> {
    emit: F,
    sent: [usize; 2],
    chunkers: [Utf8Chunker; 2],
}

impl<F: FnMut(StreamName, String)> Live<F> {
    fn push(&mut self, stream: StreamName, bytes: &[u8]) {
        let i = stream as usize;
        if self.sent[i] >= LIVE_OUTPUT_CAP_BYTES {
            return;
        }
        self.sent[i] += bytes.len();
        let text = self.chunkers[i].push(bytes);
        if !text.is_empty() {
            (self.emit)(stream, text);
        }
        if self.sent[i] >= LIVE_OUTPUT_CAP_BYTES {
            (self.emit)(
                stream,
                format!("\n[cloudbox: live output stops after {LIVE_OUTPUT_CAP_BYTES} bytes; the receipt keeps the last {OUTPUT_TAIL_CHARS} characters]\n"),
            );
        }
    }

    fn flush(&mut self) {
        for (i, stream) in [StreamName::Stdout, StreamName::Stderr]
            .into_iter()
            .enumerate()
        {
            let text = self.chunkers[i].flush();
            if !text.is_empty() && self.sent[i] < LIVE_OUTPUT_CAP_BYTES {
                (self.emit)(stream, text);
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kill {
    Timeout,
    Cancel,
}

/// Runs one process to its end. Never fails: a process that cannot start
/// is reported as exit code 127 with the reason on stderr.
pub async fn run(
    spec: Spec<'_>,
    cancel: &mut watch::Receiver<bool>,
    on_output: impl FnMut(StreamName, String),
) -> Finished {
    if *cancel.borrow() {
        return Finished {
            cancelled: true,
            stderr: "cancelled before it started".into(),
            ..Finished::default()
        };
    }
    let mut cmd = tokio::process::Command::new(spec.program);
    cmd.args(&spec.args)
        .current_dir(spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(user) = spec.user {
        // std drops the supplementary groups too when the runner is root.
        cmd.uid(user.uid).gid(user.gid);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(err) => {
            return Finished {
                exit_code: Some(127),
                stderr: format!("cannot start {}: {err}", spec.program),
                ..Finished::default()
            }
        }
    };
    let pgid = child.id().unwrap_or(0);
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        kill_group(pgid);
        return Finished {
            exit_code: Some(127),
            stderr: "cannot capture output".into(),
            ..Finished::default()
        };
    };

    let mut tails = [Tail::new(OUTPUT_TAIL_CHARS), Tail::new(OUTPUT_TAIL_CHARS)];
    let mut live = Live {
        emit: on_output,
        sent: [0, 0],
        chunkers: [Utf8Chunker::default(), Utf8Chunker::default()],
    };
    let deadline = Instant::now() + spec.timeout;
    let mut drain_deadline = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let (mut out_open, mut err_open) = (true, true);
    let mut cancel_open = true;
    let mut status = None;
    let mut killed: Option<Kill> = None;
    let mut obuf = vec![0u8; 16 * 1024];
    let mut ebuf = vec![0u8; 16 * 1024];

    loop {
        if status.is_some() && !out_open && !err_open {
            break;
        }
        tokio::select! {
            r = out.read(&mut obuf), if out_open => match r {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => {
                    tails[0].push(&obuf[..n]);
                    live.push(StreamName::Stdout, &obuf[..n]);
                }
            },
            r = err.read(&mut ebuf), if err_open => match r {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => {
                    tails[1].push(&ebuf[..n]);
                    live.push(StreamName::Stderr, &ebuf[..n]);
                }
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s);
                // Background processes of the step end with it.
                kill_group(pgid);
                drain_deadline = Instant::now() + DRAIN_GRACE;
            },
            _ = sleep_until(deadline), if killed.is_none() && status.is_none() => {
                killed = Some(Kill::Timeout);
                kill_group(pgid);
            },
            changed = cancel.changed(), if cancel_open && killed.is_none() && status.is_none() => {
                match changed {
                    Ok(()) if *cancel.borrow() => {
                        killed = Some(Kill::Cancel);
                        kill_group(pgid);
                    }
                    Ok(()) => {}
                    Err(_) => cancel_open = false,
                }
            },
            _ = sleep_until(drain_deadline), if status.is_some() => break,
        }
    }
    live.flush();

    let [out_tail, err_tail] = tails;
    let (stdout, out_cut) = out_tail.finish();
    let (mut stderr, err_cut) = err_tail.finish();
    let (exit_code, signal) = match status {
        Some(Ok(st)) => (st.code(), st.signal().map(signal_name)),
        Some(Err(e)) => {
            stderr.push_str(&format!("\n[cloudbox: wait failed: {e}]"));
            (None, None)
        }
        None => (None, None),
    };
    if killed == Some(Kill::Timeout) {
        stderr.push_str(&format!(
            "\n[cloudbox: step timed out after {} ms; its process group was killed]",
            spec.timeout.as_millis()
        ));
    }
    Finished {
        exit_code,
        signal,
        stdout,
        stderr,
        truncated: out_cut || err_cut,
        timed_out: killed == Some(Kill::Timeout),
        cancelled: killed == Some(Kill::Cancel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bash(script: &str, timeout_ms: u64) -> Spec<'static> {
        Spec {
            program: "bash",
            args: vec!["-c".into(), script.into()],
            cwd: Path::new("/"),
            env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
            timeout: Duration::from_millis(timeout_ms),
            user: None,
        }
    }

    fn no_cancel() -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        rx
    }

    #[test]
    fn the_uid_is_read_from_proc_status() {
        let status = "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(status_uid(status), Some(1000));
        assert_eq!(status_uid("Name:\tx\n"), None);
    }

    #[tokio::test]
    async fn captures_exit_code_and_both_streams() {
        let mut chunks = Vec::new();
        let f = run(
            bash("echo out; echo err >&2; exit 3", 10_000),
            &mut no_cancel(),
            |s, t| chunks.push((s, t)),
        )
        .await;
        assert_eq!(f.exit_code, Some(3));
        assert_eq!(f.stdout, "out\n");
        assert_eq!(f.stderr, "err\n");
        assert!(!f.timed_out && !f.cancelled && !f.truncated);
        assert!(chunks.contains(&(StreamName::Stdout, "out\n".into())));
    }

    #[tokio::test]
    async fn the_environment_is_clean() {
        std::env::set_var("CLOUDBOX_SECRET_FOR_TEST", "leak");
        let f = run(
            bash("echo \"[$CLOUDBOX_SECRET_FOR_TEST]\"", 10_000),
            &mut no_cancel(),
            |_, _| {},
        )
        .await;
        assert_eq!(f.stdout, "[]\n");
    }

    #[tokio::test]
    async fn a_missing_program_is_exit_127() {
        let spec = Spec {
            program: "/no/such/program",
            ..bash("", 1000)
        };
        let f = run(spec, &mut no_cancel(), |_, _| {}).await;
        assert_eq!(f.exit_code, Some(127));
        assert!(f.stderr.contains("cannot start"));
    }

    #[tokio::test]
    async fn background_processes_do_not_outlive_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; echo started", pidfile.display());
        let f = run(bash(&script, 10_000), &mut no_cancel(), |_, _| {}).await;
        assert_eq!(f.exit_code, Some(0));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            crate::testing::gone(pid).await,
            "background sleep {pid} survived"
        );
    }
}
