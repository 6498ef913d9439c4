//! Git for a run: the clone command, the environment of the runner's own
//! git processes (with the optional local GitHub mirror), and the diff.

use std::path::Path;
use std::time::Duration;

use cloudbox::wire::MAX_DIFF_BYTES;
use tokio::io::AsyncReadExt;

use crate::config::{GithubMirror, RunnerConfig};

/// Environment for the runner's git processes: a clean one, no prompts, no
/// system or global config, and — offline — `https://github.com/` rewritten
/// to `file://<mirror>/` through git's own `insteadOf`.
pub fn git_env(cfg: &RunnerConfig) -> Vec<(String, String)> {
    let mut env = cfg.base_env();
    env.push(("GIT_TERMINAL_PROMPT".into(), "0".into()));
    env.push(("GIT_CONFIG_NOSYSTEM".into(), "1".into()));
    env.push(("GIT_CONFIG_GLOBAL".into(), "/dev/null".into()));
    // Nor the runner's per-user files (`$HOME/.config/git/…`, which the
    // step user may not read: git would warn on every clone and diff).
    env.push(("XDG_CONFIG_HOME".into(), "/dev/null".into()));
    let mut config: Vec<(String, String)> = vec![
        ("core.hooksPath".into(), "/dev/null".into()),
        ("advice.detachedHead".into(), "false".into()),
    ];
    match &cfg.github_mirror {
        Some(GithubMirror::Dir(dir)) => {
            config.push((
                format!("url.file://{}/.insteadOf", dir.display()),
                "https://github.com/".into(),
            ));
            config.push(("protocol.file.allow".into(), "always".into()));
        }
        Some(GithubMirror::Url(base)) => {
            config.push((
                format!("url.{base}.insteadOf"),
                "https://github.com/".into(),
            ));
        }
        None => {}
    }
    env.push(("GIT_CONFIG_COUNT".into(), config.len().to_string()));
    for (i, (key, value)) in config.into_iter().enumerate() {
        env.push((format!("GIT_CONFIG_KEY_{i}"), key));
        env.push((format!("GIT_CONFIG_VALUE_{i}"), value));
    }
    env
}

/// `git clone --depth=1 [--branch REF] -- <repo>.git <dest>` (repo and ref
/// are validated by the Worker; `--` keeps the URL from being an option).
pub fn clone_args(repo: &str, git_ref: Option<&str>, dest: &Path) -> Vec<String> {
    let mut args = vec![
        "clone".to_string(),
        "--depth=1".into(),
        "--quiet".into(),
        "--no-tags".into(),
    ];
    if let Some(r) = git_ref {
        args.push(format!("--branch={r}"));
    }
    args.push("--".into());
    args.push(format!("{}.git", repo.trim_end_matches('/')));
    args.push(dest.display().to_string());
    args
}

/// The display form of the clone step in its receipt.
pub fn clone_cmd(repo: &str, git_ref: Option<&str>) -> String {
    match git_ref {
        Some(r) => format!("git clone --depth=1 --branch {r} {repo}"),
        None => format!("git clone --depth=1 {repo}"),
    }
}

pub struct Diff {
    pub text: String,
    pub bytes: u64,
    pub truncated: bool,
    pub exit_code: Option<i32>,
    pub error: String,
}

/// `git diff` of the checkout against the clone, new untracked files
/// included (they are added intent-to-add first). Both run as the steps'
/// user (git refuses a checkout another user owns); the patch is read from
/// git's stdout, up to `MAX_DIFF_BYTES` and counted past it — never from a
/// file in the checkout's reach, which a step could have made a symlink.
pub async fn diff(cfg: &RunnerConfig, checkout: &Path, timeout: Duration) -> Diff {
    let env = git_env(cfg);
    let git = |args: Vec<String>| {
        let mut cmd = tokio::process::Command::new("git");
        cmd.args(args)
            .current_dir(checkout)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(user) = cfg.step_user {
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd
    };
    let add = git(vec![
        "add".into(),
        "--intent-to-add".into(),
        "--all".into(),
        "--".into(),
        ".".into(),
    ]);
    let diff = git(vec![
        "-c".into(),
        "core.quotePath=false".into(),
        "diff".into(),
        "--no-color".into(),
        "--no-ext-diff".into(),
        "--no-textconv".into(),
    ]);
    let run_both = async {
        let mut add = add;
        let added = add.output().await;
        let mut diff = diff;
        let diffed = read_diff(&mut diff).await;
        (added, diffed)
    };
    let (added, diffed) = match tokio::time::timeout(timeout, run_both).await {
        Ok(pair) => pair,
        Err(_) => {
            return Diff {
                text: String::new(),
                bytes: 0,
                truncated: false,
                exit_code: None,
                error: format!("git diff timed out after {} ms", timeout.as_millis()),
            }
        }
    };
    let mut error = String::new();
    if let Ok(o) = &added {
        error.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    match diffed {
        Ok((head, bytes, stderr, exit_code)) => {
            error.push_str(&stderr);
            Diff {
                text: String::from_utf8_lossy(&head).into_owned(),
                bytes,
                truncated: bytes > MAX_DIFF_BYTES,
                exit_code,
                error,
            }
        }
        Err(e) => Diff {
            text: String::new(),
            bytes: 0,
            truncated: false,
            exit_code: None,
            error: format!("{error}cannot run git diff: {e}"),
        },
    }
}

/// Runs `git diff`: (the first `MAX_DIFF_BYTES` of stdout, its whole
/// size, stderr, the exit code).
async fn read_diff(
    cmd: &mut tokio::process::Command,
) -> std::io::Result<(Vec<u8>, u64, String, Option<i32>)> {
    let mut child = cmd.spawn()?;
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(std::io::Error::other("no pipes"));
    };
    let stderr = async {
        let mut text = Vec::new();
        let _ = (&mut err).take(64 * 1024).read_to_end(&mut text).await;
        String::from_utf8_lossy(&text).into_owned()
    };
    let stdout = async {
        let mut head = Vec::new();
        let mut total = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = out.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            let room = (MAX_DIFF_BYTES as usize).saturating_sub(head.len());
            head.extend_from_slice(&buf[..n.min(room)]);
            total += n as u64;
        }
        Ok::<_, std::io::Error>((head, total))
    };
    let (read, stderr) = tokio::join!(stdout, stderr);
    let (head, total) = read?;
    let status = child.wait().await?;
    Ok((head, total, stderr, status.code()))
}

/// The first `limit` bytes of a file as text (lossy), its size, and whether
/// it was cut.
pub async fn read_head(path: &Path, limit: u64) -> std::io::Result<(String, u64, bool)> {
    let file = tokio::fs::File::open(path).await?;
    let size = file.metadata().await?.len();
    let mut buf = Vec::new();
    file.take(limit).read_to_end(&mut buf).await?;
    Ok((
        String::from_utf8_lossy(&buf).into_owned(),
        size,
        size > limit,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn clone_args_end_options_before_the_url() {
        let args = clone_args("https://github.com/o/r", Some("main"), Path::new("/w/repo"));
        assert_eq!(
            args,
            vec![
                "clone",
                "--depth=1",
                "--quiet",
                "--no-tags",
                "--branch=main",
                "--",
                "https://github.com/o/r.git",
                "/w/repo"
            ]
        );
    }

    #[test]
    fn the_mirror_is_an_insteadof_rule() {
        let cfg = RunnerConfig {
            github_mirror: Some(GithubMirror::Dir(PathBuf::from("/srv/gh"))),
            ..RunnerConfig::for_tests(Path::new("/tmp"))
        };
        let env = git_env(&cfg);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("GIT_CONFIG_COUNT"), Some("4"));
        assert_eq!(
            get("GIT_CONFIG_KEY_2"),
            Some("url.file:///srv/gh/.insteadOf")
        );
        assert_eq!(get("GIT_CONFIG_VALUE_2"), Some("https://github.com/"));
        let cfg = RunnerConfig {
            github_mirror: Some(GithubMirror::Url("http://172.17.0.1:9/".into())),
            ..RunnerConfig::for_tests(Path::new("/tmp"))
        };
        let env = git_env(&cfg);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("GIT_CONFIG_COUNT"), Some("3"));
        assert_eq!(
            get("GIT_CONFIG_KEY_2"),
            Some("url.http://172.17.0.1:9/.insteadOf")
        );
    }
}
