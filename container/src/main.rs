//! The Cloudbox runner: the HTTP server the Container image runs. The
//! CloudboxRunner Durable Object talks to it over the container's port (or,
//! under `wrangler dev`, over loopback).
//!
//! Listens on `RUNNER_LISTEN` (default `0.0.0.0:8080`) and answers only calls
//! that carry `RUNNER_SECRET` (the DO's per-container secret). Runs get fresh
//! directories under `RUNNER_WORK_DIR`; steps and agents run as
//! `RUNNER_STEP_USER`; `CLOUDBOX_GITHUB_MIRROR=<dir or url>` serves
//! `https://github.com/<owner>/<repo>` from `<dir>/<owner>/<repo>.git` or
//! `<url>/<owner>/<repo>.git` (offline dev and tests).

mod agent;
mod blob_cache;
mod capture;
mod config;
mod git;
mod live;
mod model_proxy;
mod process;
mod run;
mod server;
mod task;
#[cfg(test)]
mod task_tests;
#[cfg(test)]
mod testing;
mod tree;

use std::net::SocketAddr;

#[tokio::main]
async fn main() {
    let listen = std::env::var("RUNNER_LISTEN")
        .unwrap_or_else(|_| format!("0.0.0.0:{}", cloudbox::wire::RUNNER_PORT));
    let addr: SocketAddr = match listen.parse() {
        Ok(addr) => addr,
        Err(err) => {
            eprintln!("cloudbox-runner: bad RUNNER_LISTEN {listen:?}: {err}");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("cloudbox-runner: cannot listen on {addr}: {err}");
            std::process::exit(1);
        }
    };
    eprintln!("cloudbox-runner: listening on {addr}");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let cfg = match config::RunnerConfig::from_env() {
        Ok(cfg) => cfg,
        Err(err) => {
            eprintln!("cloudbox-runner: {err}");
            std::process::exit(2);
        }
    };
    let app = match server::router(cfg) {
        Ok(app) => app,
        Err(err) => {
            eprintln!("cloudbox-runner: cannot open the blob cache: {err}");
            std::process::exit(1);
        }
    };
    if let Err(err) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        eprintln!("cloudbox-runner: server error: {err}");
        std::process::exit(1);
    }
}
