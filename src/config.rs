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
    pub version: &'static str,
}

impl Config {
    pub fn from_env(env: &Env) -> Self {
        Self {
            admin_api_key: env_string(env, "ADMIN_API_KEY"),
            key_pepper: env_string(env, "KEY_PEPPER"),
            runner_url: env_string(env, "RUNNER_URL"),
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}
