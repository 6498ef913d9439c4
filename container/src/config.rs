//! The runner's settings, read once from its environment.

#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Where each run gets its fresh directory (`RUNNER_WORK_DIR`, default
    /// `$TMPDIR/cloudbox-runs`).
    pub work_dir: PathBuf,
    /// Offline/dev/tests: where `https://github.com/o/r` is cloned from
    /// instead (`CLOUDBOX_GITHUB_MIRROR`): a directory of bare repos
    /// (`<dir>/o/r.git`) or a git smart-HTTP base URL (`<url>/o/r.git`).
    pub github_mirror: Option<GithubMirror>,
    /// Every call must carry this in `x-cloudbox-runner-secret`
    /// (`RUNNER_SECRET`): the DO's per-container secret, so nothing else that
    /// reaches the port — an agent in the same container — can drive the runner.
    pub secret: String,
    /// Steps and agents run as this user (`RUNNER_STEP_USER`, a name from
    /// /etc/passwd or `uid:gid`), never as the runner's: they cannot read the
    /// runner's environment or memory nor write its blob cache. `None` (a
    /// native dev runner) runs them as the runner's own user.
    pub step_user: Option<StepUser>,
    /// `PATH` and `HOME` given to steps (the only inherited variables).
    pub path: String,
    pub home: String,
    /// The content-addressed cache of workspace blobs (`RUNNER_BLOB_DIR`,
    /// default `$TMPDIR/cloudbox-blobs`). It survives tasks, so a re-sync
    /// transfers only what changed.
    pub blob_dir: PathBuf,
    /// The Codex CLI (`CODEX_BIN`, default `codex` on PATH).
    pub codex_bin: String,
}

/// The user steps run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepUser {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GithubMirror {
    Dir(PathBuf),
    /// A base URL ending in `/`.
    Url(String),
}

impl GithubMirror {
    pub fn parse(value: &str) -> Self {
        if ["http://", "https://", "git://"]
            .iter()
            .any(|s| value.starts_with(s))
        {
            let mut url = value.to_string();
            if !url.ends_with('/') {
                url.push('/');
            }
            GithubMirror::Url(url)
        } else {
            GithubMirror::Dir(PathBuf::from(value))
        }
    }
}

/// `name` (looked up in `passwd`, the text of /etc/passwd) or `uid:gid`.
pub fn parse_step_user(value: &str, passwd: &str) -> Result<StepUser, String> {
    if let Some((uid, gid)) = value.split_once(':') {
        return match (uid.parse(), gid.parse()) {
            (Ok(uid), Ok(gid)) => Ok(StepUser { uid, gid }),
            _ => Err(format!("RUNNER_STEP_USER {value:?} is not uid:gid")),
        };
    }
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() >= 4 && fields[0] == value)
        .and_then(|fields| {
            Some(StepUser {
                uid: fields[2].parse().ok()?,
                gid: fields[3].parse().ok()?,
            })
        })
        .ok_or_else(|| format!("RUNNER_STEP_USER {value:?}: no such user"))
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl RunnerConfig {
    /// Reads the environment; an error says which variable is wrong.
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let secret = var("RUNNER_SECRET").ok_or("RUNNER_SECRET is not set")?;
        let step_user = match var("RUNNER_STEP_USER") {
            Some(value) => {
                let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
                Some(parse_step_user(&value, &passwd)?)
            }
            None => None,
        };
        Ok(Self {
            work_dir: var("RUNNER_WORK_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join("cloudbox-runs")),
            github_mirror: var("CLOUDBOX_GITHUB_MIRROR").map(|v| GithubMirror::parse(&v)),
            secret,
            step_user,
            path: var("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
            home: var("HOME").unwrap_or_else(|| "/tmp".into()),
            blob_dir: var("RUNNER_BLOB_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join("cloudbox-blobs")),
            codex_bin: var("CODEX_BIN").unwrap_or_else(|| "codex".into()),
        })
    }

    #[cfg(test)]
    pub const TEST_SECRET: &str = "test-runner-secret";

    #[cfg(test)]
    pub fn for_tests(work_dir: &Path) -> Self {
        Self {
            work_dir: work_dir.to_path_buf(),
            github_mirror: None,
            secret: Self::TEST_SECRET.into(),
            step_user: None,
            path: std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into()),
            home: std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()),
            blob_dir: work_dir.join("blobs"),
            codex_bin: "codex".into(),
        }
    }

    /// The clean environment every process of a run starts from.
    /// `base_env` with `HOME` set to `home` (an agent task's own).
    pub fn base_env_with_home(&self, home: &std::path::Path) -> Vec<(String, String)> {
        let mut env = self.base_env();
        for (name, value) in env.iter_mut() {
            if name == "HOME" {
                *value = home.display().to_string();
            }
        }
        env
    }

    pub fn base_env(&self) -> Vec<(String, String)> {
        vec![
            ("PATH".into(), self.path.clone()),
            ("HOME".into(), self.home.clone()),
            ("LANG".into(), "C.UTF-8".into()),
            ("TERM".into(), "dumb".into()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/bash\nagent:x:1000:1000::/home/agent:/bin/bash\n";

    #[test]
    fn the_step_user_is_a_name_or_uid_gid() {
        assert_eq!(
            parse_step_user("agent", PASSWD),
            Ok(StepUser {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(
            parse_step_user("1001:1002", PASSWD),
            Ok(StepUser {
                uid: 1001,
                gid: 1002
            })
        );
        assert!(parse_step_user("nobody-here", PASSWD)
            .unwrap_err()
            .contains("no such user"));
        assert!(parse_step_user("a:b", PASSWD).is_err());
    }

    #[test]
    fn the_mirror_is_a_url_or_a_directory() {
        assert_eq!(
            GithubMirror::parse("http://172.17.0.1:9000"),
            GithubMirror::Url("http://172.17.0.1:9000/".into())
        );
        assert_eq!(
            GithubMirror::parse("/srv/gh"),
            GithubMirror::Dir("/srv/gh".into())
        );
    }
}
