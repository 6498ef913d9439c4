//! The metering proxy between the agent and the model service. The agent is
//! pointed at `http://127.0.0.1:<port>/v1`; the proxy forwards each call to the
//! upstream endpoint (adding the real credential, which the agent process never
//! sees), streams the answer back unchanged, and reads the usage of every
//! finished response as it passes. Once the metered usage reaches the task's
//! cap it refuses further calls and tells the task to stop the agent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use cloudbox::executes::agent_events::TokenUsage;
use cloudbox::executes::model_usage::UsageScanner;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

/// Decides, from the cumulative usage, whether the task has spent its cap.
pub type CapRule = Arc<dyn Fn(&TokenUsage) -> bool + Send + Sync>;

pub struct ProxyConfig {
    /// e.g. `https://api.openai.com/v1` (no trailing slash).
    pub upstream: String,
    pub api_key: Option<String>,
    pub over_cap: CapRule,
}

/// What the proxy reports to the task.
pub struct ProxyHandle {
    pub base_url: String,
    /// One message per metered model call: (this call, cumulative).
    pub usage: mpsc::UnboundedReceiver<(TokenUsage, TokenUsage)>,
    /// Becomes true when the cap is reached.
    pub capped: watch::Receiver<bool>,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl ProxyHandle {
    /// Everything metered so far.
    pub fn total(&self) -> TokenUsage {
        self.shared.total.lock().map(|t| *t).unwrap_or_default()
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Shared {
    cfg: ProxyConfig,
    client: reqwest::Client,
    total: Mutex<TokenUsage>,
    usage_tx: mpsc::UnboundedSender<(TokenUsage, TokenUsage)>,
    capped_tx: watch::Sender<bool>,
}

impl Shared {
    fn record(&self, call: TokenUsage) {
        let cumulative = match self.total.lock() {
            Ok(mut total) => {
                total.add(&call);
                *total
            }
            Err(_) => return,
        };
        let _ = self.usage_tx.send((call, cumulative));
        if (self.cfg.over_cap)(&cumulative) {
            let _ = self.capped_tx.send(true);
        }
    }
}

pub async fn start(cfg: ProxyConfig) -> std::io::Result<ProxyHandle> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let (usage_tx, usage) = mpsc::unbounded_channel();
    let (capped_tx, capped) = watch::channel(false);
    let shared = Arc::new(Shared {
        cfg,
        client: reqwest::Client::new(),
        total: Mutex::new(TokenUsage::default()),
        usage_tx,
        capped_tx,
    });
    let app = Router::new().fallback(forward).with_state(shared.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(ProxyHandle {
        base_url: format!("http://{addr}/v1"),
        usage,
        capped,
        shared,
        server,
    })
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"error": {"message": message, "type": "cloudbox_proxy"}});
    (status, axum::Json(body)).into_response()
}

async fn forward(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    if *shared.capped_tx.borrow() {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "the task's cost cap is reached",
        );
    }
    let path = req
        .uri()
        .path()
        .strip_prefix("/v1")
        .unwrap_or(req.uri().path())
        .to_string();
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let url = format!("{}{path}{query}", shared.cfg.upstream);
    let method = req.method().clone();
    let mut headers = HeaderMap::new();
    for (name, value) in req.headers() {
        // The agent's placeholder credential and hop-by-hop headers stay here.
        let skip = matches!(
            name.as_str(),
            "authorization" | "host" | "content-length" | "connection"
        );
        if !skip {
            headers.insert(name.clone(), value.clone());
        }
    }
    if let Some(key) = &shared.cfg.api_key {
        if let Ok(value) = HeaderValue::from_str(&format!("Bearer {key}")) {
            headers.insert("authorization", value);
        }
    }
    let body = match axum::body::to_bytes(req.into_body(), 32 * 1024 * 1024).await {
        Ok(body) => body,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "request too large"),
    };
    let upstream = shared
        .client
        .request(method, &url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let upstream = match upstream {
        Ok(resp) => resp,
        Err(err) => return error(StatusCode::BAD_GATEWAY, &format!("model service: {err}")),
    };
    let status = upstream.status();
    let mut out_headers = HeaderMap::new();
    for (name, value) in upstream.headers() {
        if !matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            out_headers.insert(name.clone(), value.clone());
        }
    }
    let mut scanner = UsageScanner::default();
    let metered = shared.clone();
    let stream = upstream.bytes_stream().map(move |chunk| {
        let chunk: Bytes = chunk.map_err(std::io::Error::other)?;
        for usage in scanner.feed(&chunk) {
            metered.record(usage);
        }
        Ok::<Bytes, std::io::Error>(chunk)
    });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    *resp.headers_mut() = out_headers;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;

    /// An upstream that answers every call with a stream costing 1000 + 100
    /// tokens, and echoes the credential it got into a header.
    async fn upstream() -> String {
        let app = Router::new().route(
            "/v1/responses",
            post(|headers: HeaderMap| async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_string();
                let body = "event: response.created\ndata: {\"type\":\"response.created\"}\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":1000,\"output_tokens\":100}}}\n\n";
                ([("content-type", "text/event-stream"), ("x-seen-auth", auth.as_str())], body.to_string())
                    .into_response()
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/v1")
    }

    #[tokio::test]
    async fn meters_each_call_swaps_the_credential_and_stops_at_the_cap() {
        let proxy = start(ProxyConfig {
            upstream: upstream().await,
            api_key: Some("real-secret".into()),
            // Cap: two calls' worth of input tokens.
            over_cap: Arc::new(|total: &TokenUsage| total.input_tokens >= 2000),
        })
        .await
        .unwrap();
        let mut proxy = proxy;
        let client = reqwest::Client::new();
        let url = format!("{}/responses", proxy.base_url);
        for call in 1..=2u64 {
            let resp = client
                .post(&url)
                .header("authorization", "Bearer placeholder")
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-seen-auth"], "Bearer real-secret");
            let text = resp.text().await.unwrap();
            assert!(text.contains("response.completed"));
            let (this_call, cumulative) = proxy.usage.recv().await.unwrap();
            assert_eq!(this_call.input_tokens, 1000);
            assert_eq!(cumulative.input_tokens, 1000 * call);
        }
        assert!(*proxy.capped.borrow());
        let refused = client.post(&url).body("{}").send().await.unwrap();
        assert_eq!(refused.status(), 429);
    }
}
