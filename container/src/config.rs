//! The runner's settings, read once from its environment.

#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Where each run gets its fresh directory (`RUNNER_WORK_DIR`, default
    /// `$TMPDIR/cloudbox-runs`).
    pub work_dir: PathBuf,
    /// Offline/dev: a directory of bare repos; `https://github.com/o/r` is
    /// cloned from `<dir>/o/r.git` (`CLOUDBOX_GITHUB_MIRROR`).
    pub github_mirror: Option<PathBuf>,
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

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl RunnerConfig {
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Self {
            work_dir: var("RUNNER_WORK_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join("cloudbox-runs")),
            github_mirror: var("CLOUDBOX_GITHUB_MIRROR").map(PathBuf::from),
            path: var("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
            home: var("HOME").unwrap_or_else(|| "/tmp".into()),
            blob_dir: var("RUNNER_BLOB_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join("cloudbox-blobs")),
            codex_bin: var("CODEX_BIN").unwrap_or_else(|| "codex".into()),
        }
    }

    #[cfg(test)]
    pub fn for_tests(work_dir: &Path) -> Self {
        Self {
            work_dir: work_dir.to_path_buf(),
            github_mirror: None,
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
