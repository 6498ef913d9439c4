//! The Computer Durable Object: one per evaluation computer (spec, files,
//! receipts, grading). Declared here so the class and its storage migration
//! exist from the first deploy; the Computers surface fills it in.

use worker::{durable_object, DurableObject, Env, Request, Response, State};

use crate::error::ApiError;
use crate::http;

#[durable_object]
pub struct Computer {
    _state: State,
}

impl DurableObject for Computer {
    fn new(state: State, _env: Env) -> Self {
        Self { _state: state }
    }

    async fn fetch(&self, _req: Request) -> worker::Result<Response> {
        Ok(http::error_response(&ApiError::NotFound, "computer-do"))
    }
}
