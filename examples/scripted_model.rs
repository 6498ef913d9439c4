//! The scripted Responses-API model server of the tests, standalone, so
//! `/execute` can be tried on the local stack without a model key:
//! `make dev CLOUDBOX_SCRIPTED_MODEL=1` starts it and points the agent at it.
//! It prints its base URL on the first line, then serves until killed.
//! Tasks it understands: `write <path> <text>`, `loop`, `fail`, `slow`;
//! anything else is echoed.

#[path = "../tests/common/responses_server.rs"]
#[allow(dead_code)]
mod responses_server;

fn main() {
    let server = responses_server::ModelServer::start();
    println!("{}", server.base_url);
    loop {
        std::thread::park();
    }
}
