//! The scripted Responses-API model server of the tests, standalone, so
//! `/execute` can be tried on the local stack without a model key:
//! `make dev` starts it and points the agent at it when `.dev.vars` has no
//! `OPENAI_API_KEY` (or with `CLOUDBOX_SCRIPTED_MODEL=1`).
//! It listens on the address given as its argument (default 127.0.0.1; the
//! host's bridge address when the agent runs in a container), prints its
//! base URL on the first line, then serves until killed.
//! Tasks it understands: `write <path> <text>`, `loop`, `fail`, `slow`;
//! anything else is echoed.

#[path = "../tests/common/responses_server.rs"]
#[allow(dead_code)]
mod responses_server;

fn main() {
    let ip = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1".into());
    let server = responses_server::ModelServer::start_on(&ip);
    println!("{}", server.base_url);
    loop {
        std::thread::park();
    }
}
