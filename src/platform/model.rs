//! The optional model endpoint (glue): an OpenAI-compatible chat completions
//! API at `OPENAI_BASE_URL` (e.g. `https://api.openai.com/v1`), keyed by the
//! `OPENAI_API_KEY` secret, model `OPENAI_MODEL`, each call bounded by
//! `MODEL_TIMEOUT_MS`. Every caller has a deterministic fallback, so a
//! missing, failing or slow model never fails an action.

use std::time::Duration;

use futures_util::future::{select, Either};
use worker::{AbortController, Delay, Env, Fetch, Headers, Method, Request, RequestInit};

use crate::computers::generate::{self, Prompt};
use crate::platform::config::env_string;

/// Default bound on one model call.
const DEFAULT_TIMEOUT_MS: u64 = 20_000;
const DEFAULT_MODEL: &str = "gpt-4.1-mini";

#[derive(Clone)]
pub struct ModelConfig {
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub timeout_ms: u64,
}

/// Never prints the secret: a `{:?}` in a log line must not leak it.
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

impl ModelConfig {
    /// `None` when `OPENAI_BASE_URL` is unset or empty.
    pub fn from_env(env: &Env) -> Option<Self> {
        let base_url = env_string(env, "OPENAI_BASE_URL")?;
        Some(Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key: env_string(env, "OPENAI_API_KEY"),
            model: env_string(env, "OPENAI_MODEL").unwrap_or_else(|| DEFAULT_MODEL.to_string()),
            timeout_ms: env_string(env, "MODEL_TIMEOUT_MS")
                .and_then(|v| v.parse().ok())
                .filter(|&ms| ms > 0)
                .unwrap_or(DEFAULT_TIMEOUT_MS),
        })
    }
}

/// One chat completion; `Err` says why (logged by callers, never shown).
pub async fn chat(cfg: &ModelConfig, prompt: &Prompt) -> Result<String, String> {
    let body = generate::chat_request(&cfg.model, prompt).to_string();
    let headers = Headers::new();
    headers
        .set("content-type", "application/json")
        .map_err(|e| e.to_string())?;
    if let Some(key) = &cfg.api_key {
        headers
            .set("authorization", &format!("Bearer {key}"))
            .map_err(|e| e.to_string())?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(body.into()));
    let url = format!("{}/chat/completions", cfg.base_url);
    let req = Request::new_with_init(&url, &init).map_err(|e| e.to_string())?;
    let controller = AbortController::default();
    let signal = controller.signal();
    let call = async {
        let mut resp = Fetch::Request(req)
            .send_with_signal(&signal)
            .await
            .map_err(|e| e.to_string())?;
        if resp.status_code() != 200 {
            return Err(format!("model answered {}", resp.status_code()));
        }
        let value: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        generate::chat_content(&value).ok_or_else(|| "model answer has no content".to_string())
    };
    let timeout = Delay::from(Duration::from_millis(cfg.timeout_ms));
    let outcome = match select(Box::pin(call), timeout).await {
        Either::Left((result, _)) => result,
        Either::Right(_) => {
            controller.abort();
            Err(format!("no model answer within {} ms", cfg.timeout_ms))
        }
    };
    outcome
}

/// The model's answer, or `None` (logged) when there is no model or it failed.
pub async fn try_chat(cfg: Option<&ModelConfig>, prompt: &Prompt, what: &str) -> Option<String> {
    let cfg = cfg?;
    match chat(cfg, prompt).await {
        Ok(text) => Some(text),
        Err(why) => {
            worker::console_warn!("model ({what}) failed, using the fallback: {why}");
            None
        }
    }
}
