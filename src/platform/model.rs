//! The optional model endpoint (glue): an OpenAI-compatible chat completions
//! API at `OPENAI_BASE_URL` (e.g. `https://api.openai.com/v1`), keyed by the
//! `OPENAI_API_KEY` secret, model `OPENAI_MODEL`, each call bounded by
//! `MODEL_TIMEOUT_MS`. Every caller has a deterministic fallback, so a
//! missing, failing or slow model never fails an action.

use std::time::Duration;

use futures_util::future::{select, Either};
use worker::{AbortController, Delay, Fetch, Headers, Method, Request, RequestInit};

use crate::computers::generate::{self, Prompt};
use crate::platform::config::ModelConfig;

/// Default bound on one model call.
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
