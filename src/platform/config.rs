//! Every `[vars]` value and secret the Worker and its Durable Objects read,
//! parsed in one place. `Config::parse` is pure (it takes a lookup, so the
//! tests below check every default and bad value); `Config::from_env` feeds
//! it the Worker's environment. An unset, empty or malformed value takes
//! its default.

use crate::api::ratelimit::Limits;
use crate::billing::rules::{self, Pricing};
use crate::runner::events::SSE_HEARTBEAT_MS;
use crate::runner::lifecycle::DEFAULT_WORKSPACE_IDLE_SECONDS;
use crate::runs::live;

/// The largest blob one upload may carry, unless `MAX_BLOB_BYTES` says.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 100 * 1024 * 1024;

#[derive(Debug, Clone)]
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
    /// `SSE_HEARTBEAT_MS` (at least 100; tests shorten it), else 15 s.
    pub sse_heartbeat_ms: u64,
    /// `MAX_BLOB_BYTES`: the per-blob upload limit.
    pub max_blob_bytes: u64,
    pub billing: BillingVars,
    /// `RUN_USD_PER_MINUTE` in micro-dollars per minute (0: usage only).
    pub run_usd_per_minute: i64,
    /// `RATE_LIMIT_WINDOW_SECONDS`, `RATE_LIMIT_REQUESTS`, `RATE_LIMIT_RUNS`.
    pub rate_limits: Limits,
    /// `LIVE_TTL_MIN_SECONDS`: the floor of a live run's `ttlSeconds`
    /// (default 60; tests lower it to wait seconds).
    pub live_ttl_min_seconds: u64,
    /// `SNAPSHOT_RETENTION_SECONDS`: how long an expired run stays
    /// resumable (default 7 days).
    pub snapshot_retention_seconds: u64,
    pub agent: AgentVars,
    /// The model for computers' text; `None` without `OPENAI_BASE_URL`.
    pub model: Option<ModelConfig>,
    pub version: &'static str,
}

/// Billing settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BillingVars {
    /// `INPUT_USD_PER_1K`, `OUTPUT_USD_PER_1K`.
    pub pricing: Pricing,
    /// `DEFAULT_RUN_HOLD_USD`: an execute's hold without `maxCostUsd`.
    pub default_run_hold: i64,
    /// `LOW_BALANCE_USD`: under it, a low-balance alert.
    pub low_balance: i64,
}

/// How `/execute` runs its agent. The credential goes to the runner's
/// metering proxy only; the agent process never sees it.
#[derive(Clone, PartialEq, Eq)]
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

/// An OpenAI-compatible chat completions endpoint (`OPENAI_BASE_URL`,
/// `OPENAI_API_KEY`, `OPENAI_MODEL`, `MODEL_TIMEOUT_MS`).
#[derive(Clone, PartialEq, Eq)]
pub struct ModelConfig {
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub timeout_ms: u64,
}

/// Never prints a secret: a `{:?}` in a log line must not leak it.
impl std::fmt::Debug for AgentVars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentVars")
            .field("command", &self.command)
            .field("model", &self.model)
            .field("model_base_url", &self.model_base_url)
            .field(
                "model_api_key",
                &self.model_api_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl std::fmt::Debug for ModelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl AgentVars {
    pub const DEFAULT_MODEL: &'static str = "gpt-5-codex";
    pub const DEFAULT_BASE_URL: &'static str = "https://api.openai.com/v1";
}

impl ModelConfig {
    pub const DEFAULT_MODEL: &'static str = "gpt-4.1-mini";
    pub const DEFAULT_TIMEOUT_MS: u64 = 20_000;
}

impl Config {
    /// The configuration from `var`, which answers a var's or secret's
    /// value (trimmed; `None` when unset or empty).
    pub fn parse(var: impl Fn(&str) -> Option<String>) -> Self {
        let number = |name: &str| var(name).and_then(|v| v.parse::<u64>().ok());
        let usd = |name: &str, default: i64| {
            var(name)
                .and_then(|v| rules::parse_usd_var(&v))
                .unwrap_or(default)
        };
        Self {
            admin_api_key: var("ADMIN_API_KEY"),
            key_pepper: var("KEY_PEPPER"),
            runner_url: var("RUNNER_URL"),
            runner_secret: var("RUNNER_SECRET"),
            runner_github_mirror: var("RUNNER_GITHUB_MIRROR"),
            workspace_idle_seconds: number("WORKSPACE_IDLE_SECONDS")
                .unwrap_or(DEFAULT_WORKSPACE_IDLE_SECONDS),
            sse_heartbeat_ms: number("SSE_HEARTBEAT_MS")
                .filter(|&ms| ms >= 100)
                .unwrap_or(SSE_HEARTBEAT_MS),
            max_blob_bytes: number("MAX_BLOB_BYTES").unwrap_or(DEFAULT_MAX_BLOB_BYTES),
            billing: BillingVars {
                pricing: Pricing {
                    input_micros_per_1k: usd(
                        "INPUT_USD_PER_1K",
                        Pricing::DEFAULT.input_micros_per_1k,
                    ),
                    output_micros_per_1k: usd(
                        "OUTPUT_USD_PER_1K",
                        Pricing::DEFAULT.output_micros_per_1k,
                    ),
                },
                default_run_hold: usd("DEFAULT_RUN_HOLD_USD", 1_000_000),
                low_balance: usd("LOW_BALANCE_USD", 1_000_000),
            },
            run_usd_per_minute: usd("RUN_USD_PER_MINUTE", 0),
            rate_limits: Limits::from_vars(
                var("RATE_LIMIT_WINDOW_SECONDS").as_deref(),
                var("RATE_LIMIT_REQUESTS").as_deref(),
                var("RATE_LIMIT_RUNS").as_deref(),
            ),
            live_ttl_min_seconds: number("LIVE_TTL_MIN_SECONDS")
                .filter(|&s| (1..=live::MIN_TTL_SECONDS).contains(&s))
                .unwrap_or(live::MIN_TTL_SECONDS),
            snapshot_retention_seconds: number("SNAPSHOT_RETENTION_SECONDS")
                .unwrap_or(live::DEFAULT_SNAPSHOT_RETENTION_SECONDS),
            agent: AgentVars {
                command: var("AGENT_COMMAND"),
                model: var("AGENT_MODEL").unwrap_or_else(|| AgentVars::DEFAULT_MODEL.into()),
                model_base_url: var("AGENT_MODEL_BASE_URL")
                    .unwrap_or_else(|| AgentVars::DEFAULT_BASE_URL.into()),
                model_api_key: var("OPENAI_API_KEY"),
            },
            model: var("OPENAI_BASE_URL").map(|base_url| ModelConfig {
                base_url: base_url.trim_end_matches('/').to_string(),
                api_key: var("OPENAI_API_KEY"),
                model: var("OPENAI_MODEL").unwrap_or_else(|| ModelConfig::DEFAULT_MODEL.into()),
                timeout_ms: number("MODEL_TIMEOUT_MS")
                    .filter(|&ms| ms > 0)
                    .unwrap_or(ModelConfig::DEFAULT_TIMEOUT_MS),
            }),
            version: env!("CARGO_PKG_VERSION"),
        }
    }

    /// The Worker's configuration (a secret wins over a var of its name),
    /// read once per isolate: a deployment's vars and secrets are fixed
    /// (changing one deploys new isolates), and reading the ~40 of them
    /// through the JS boundary was work on every request.
    pub fn from_env(env: &worker::Env) -> Self {
        CACHED.with(|cached| {
            cached
                .get_or_init(|| Self::parse(|name| env_string(env, name)))
                .clone()
        })
    }
}

thread_local! {
    static CACHED: std::cell::OnceCell<Config> = const { std::cell::OnceCell::new() };
}

/// A var or secret as a non-empty, trimmed string.
fn env_string(env: &worker::Env, name: &str) -> Option<String> {
    let value = env
        .secret(name)
        .map(|s| s.to_string())
        .or_else(|_| env.var(name).map(|v| v.to_string()))
        .ok()?;
    let trimmed = value.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Config {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(|name| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim().to_string())
                .filter(|v| !v.is_empty())
        })
    }

    #[test]
    fn nothing_set_gives_every_default() {
        let c = with(&[]);
        assert_eq!(c.admin_api_key, None);
        assert_eq!(c.runner_url, None);
        assert_eq!(c.workspace_idle_seconds, DEFAULT_WORKSPACE_IDLE_SECONDS);
        assert_eq!(c.sse_heartbeat_ms, SSE_HEARTBEAT_MS);
        assert_eq!(c.max_blob_bytes, DEFAULT_MAX_BLOB_BYTES);
        assert_eq!(c.billing.pricing, Pricing::DEFAULT);
        assert_eq!(c.billing.default_run_hold, 1_000_000);
        assert_eq!(c.billing.low_balance, 1_000_000);
        assert_eq!(c.run_usd_per_minute, 0);
        assert_eq!(c.rate_limits, Limits::DEFAULT);
        assert_eq!(c.agent.command, None);
        assert_eq!(c.agent.model, AgentVars::DEFAULT_MODEL);
        assert_eq!(c.agent.model_base_url, AgentVars::DEFAULT_BASE_URL);
        assert!(c.model.is_none());
        assert_eq!(c.live_ttl_min_seconds, live::MIN_TTL_SECONDS);
        assert_eq!(
            c.snapshot_retention_seconds,
            live::DEFAULT_SNAPSHOT_RETENTION_SECONDS
        );
    }

    #[test]
    fn set_values_are_parsed() {
        let c = with(&[
            ("WORKSPACE_IDLE_SECONDS", "2"),
            ("SSE_HEARTBEAT_MS", "250"),
            ("MAX_BLOB_BYTES", "1024"),
            ("INPUT_USD_PER_1K", "0.5"),
            ("RUN_USD_PER_MINUTE", "0.6"),
            ("RATE_LIMIT_REQUESTS", "7"),
            ("AGENT_COMMAND", "my-agent"),
            ("OPENAI_BASE_URL", "http://model.test/v1/"),
            ("OPENAI_API_KEY", "sk-test"),
            ("MODEL_TIMEOUT_MS", "900"),
            ("LIVE_TTL_MIN_SECONDS", "2"),
            ("SNAPSHOT_RETENTION_SECONDS", "5"),
        ]);
        assert_eq!(c.live_ttl_min_seconds, 2);
        assert_eq!(c.snapshot_retention_seconds, 5);
        assert_eq!(c.workspace_idle_seconds, 2);
        assert_eq!(c.sse_heartbeat_ms, 250);
        assert_eq!(c.max_blob_bytes, 1024);
        assert_eq!(c.billing.pricing.input_micros_per_1k, 500_000);
        assert_eq!(c.run_usd_per_minute, 600_000);
        assert_eq!(c.rate_limits.requests, 7);
        assert_eq!(c.agent.command.as_deref(), Some("my-agent"));
        assert_eq!(c.agent.model_api_key.as_deref(), Some("sk-test"));
        let model = c.model.expect("a model");
        assert_eq!(model.base_url, "http://model.test/v1");
        assert_eq!(model.timeout_ms, 900);
    }

    #[test]
    fn bad_values_fall_back_to_their_defaults() {
        let c = with(&[
            ("WORKSPACE_IDLE_SECONDS", "soon"),
            ("SSE_HEARTBEAT_MS", "5"),
            ("MAX_BLOB_BYTES", "a lot"),
            ("INPUT_USD_PER_1K", "-1"),
            ("RUN_USD_PER_MINUTE", "lots"),
            ("RATE_LIMIT_WINDOW_SECONDS", "-3"),
            ("MODEL_TIMEOUT_MS", "0"),
            ("OPENAI_BASE_URL", "http://model.test"),
            ("ADMIN_API_KEY", "   "),
            ("LIVE_TTL_MIN_SECONDS", "600"),
        ]);
        // The floor can be lowered, never raised above the contract's.
        assert_eq!(c.live_ttl_min_seconds, live::MIN_TTL_SECONDS);
        assert_eq!(c.workspace_idle_seconds, DEFAULT_WORKSPACE_IDLE_SECONDS);
        assert_eq!(c.sse_heartbeat_ms, SSE_HEARTBEAT_MS);
        assert_eq!(c.max_blob_bytes, DEFAULT_MAX_BLOB_BYTES);
        assert_eq!(c.billing.pricing, Pricing::DEFAULT);
        assert_eq!(c.run_usd_per_minute, 0);
        assert_eq!(c.rate_limits.window_secs, Limits::DEFAULT.window_secs);
        assert_eq!(
            c.model.map(|m| m.timeout_ms),
            Some(ModelConfig::DEFAULT_TIMEOUT_MS)
        );
        assert_eq!(c.admin_api_key, None);
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let c = with(&[
            ("OPENAI_API_KEY", "sk-secret"),
            ("OPENAI_BASE_URL", "http://m"),
        ]);
        let shown = format!("{:?} {:?}", c.agent, c.model);
        assert!(!shown.contains("sk-secret"), "{shown}");
    }
}
