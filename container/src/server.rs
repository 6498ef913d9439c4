//! Routes of the runner's HTTP contract with the CloudboxRunner DO.

use axum::{routing::get, Json, Router};
use cloudbox::wire::RunnerHealth;

pub fn router() -> Router {
    Router::new().route("/health", get(health))
}

async fn health() -> Json<RunnerHealth> {
    Json(RunnerHealth {
        ok: true,
        name: "cloudbox-runner".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_reports_ok_over_real_http() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router()).await });
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let body = response.split("\r\n\r\n").nth(1).unwrap();
        let health: RunnerHealth = serde_json::from_str(body).unwrap();
        assert!(health.ok);
        assert_eq!(health.name, "cloudbox-runner");
    }
}
