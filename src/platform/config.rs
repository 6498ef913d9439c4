//! Typed configuration read from `[vars]` and secrets, in one place.

use worker::Env;

/// A var or secret as a non-empty string (`--var` in dev, secrets in production).
pub fn env_string(env: &Env, name: &str) -> Option<String> {
    let value = env
        .secret(name)
        .map(|s| s.to_string())
        .or_else(|_| env.var(name).map(|v| v.to_string()))
        .ok()?;
    let trimmed = value.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

pub struct Config {
    /// Bearer for admin routes; `None` disables them (503 `admin_disabled`).
    pub admin_api_key: Option<String>,
    /// HMAC pepper for stored key hashes.
    pub key_pepper: Option<String>,
    /// Dev only: where the runner listens when there is no Container.
    pub runner_url: Option<String>,
    /// Dev only: the secret the native runner at `runner_url` requires
    /// (`RUNNER_SECRET`). A Container gets a fresh one at every start.
    pub runner_secret: Option<String>,
    /// Dev and tests only: what the runner in a Container clones
    /// `https://github.com/` from instead (`RUNNER_GITHUB_MIRROR`, a git
    /// smart-HTTP base URL on the host's bridge address).
    pub runner_github_mirror: Option<String>,
    /// A workspace's idle container is released after this long
    /// (`WORKSPACE_IDLE_SECONDS`, default 600).
    pub workspace_idle_seconds: u64,
    pub version: &'static str,
}

impl Config {
    pub fn from_env(env: &Env) -> Self {
        Self {
            admin_api_key: env_string(env, "ADMIN_API_KEY"),
            key_pepper: env_string(env, "KEY_PEPPER"),
            runner_url: env_string(env, "RUNNER_URL"),
            runner_secret: env_string(env, "RUNNER_SECRET"),
            runner_github_mirror: env_string(env, "RUNNER_GITHUB_MIRROR"),
            workspace_idle_seconds: env_string(env, "WORKSPACE_IDLE_SECONDS")
                .and_then(|v| v.parse().ok())
                .unwrap_or(crate::runner::lifecycle::DEFAULT_WORKSPACE_IDLE_SECONDS),
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// How `/execute` runs its agent. The credential goes to the runner's
/// metering proxy only; the agent process never sees it.
pub struct AgentVars {
    /// `AGENT_COMMAND`; `None` runs the Codex CLI.
    pub command: Option<String>,
    /// `AGENT_MODEL`.
    pub model: String,
    /// `AGENT_MODEL_BASE_URL`: the upstream Responses API.
    pub model_base_url: String,
    /// The `OPENAI_API_KEY` secret.
    pub model_api_key: Option<String>,
}

impl AgentVars {
    pub const DEFAULT_MODEL: &'static str = "gpt-5-codex";
    pub const DEFAULT_BASE_URL: &'static str = "https://api.openai.com/v1";

    pub fn from_env(env: &Env) -> Self {
        Self {
            command: env_string(env, "AGENT_COMMAND"),
            model: env_string(env, "AGENT_MODEL").unwrap_or_else(|| Self::DEFAULT_MODEL.into()),
            model_base_url: env_string(env, "AGENT_MODEL_BASE_URL")
                .unwrap_or_else(|| Self::DEFAULT_BASE_URL.into()),
            model_api_key: env_string(env, "OPENAI_API_KEY"),
        }
    }
}
