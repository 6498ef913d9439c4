//! Computers: `POST /api/computers`, `POST /api/brief`, and the actions
//! under `/api/c/:id/`. The Worker authenticates, checks permissions and
//! validates every body here; the `Computer` Durable Object (one per id)
//! stores, sequences and grades.
//!
//! Permissions: `read` for the GETs (files, read, receipts, grade, spec);
//! `write` for everything that creates or changes state (create, brief,
//! write, ask, submit, reset).

use serde::Deserialize;
use serde_json::{json, Value};
use worker::{Request, Response};

use crate::api::auth::{self, Caller};
use crate::api::dispatch::Ctx;
use crate::api::error::{ApiError, FieldError};
use crate::api::route::ComputerRoute;
use crate::computers::call::{self, ComputerCall};
use crate::keys::api_key::Permission;
use crate::platform::bindings;
use crate::platform::config::Config;
use crate::platform::model;
use crate::{common::paths, computers::generate, computers::spec, platform::http};

/// Largest `content` of one write.
pub const MAX_WRITE_BYTES: usize = 256 * 1024;
/// Longest ask message and submit notes, in characters.
const MAX_MESSAGE_CHARS: usize = 20_000;
/// Longest brief, in characters.
const MAX_BRIEF_CHARS: usize = 4_000;

pub async fn handle(
    op: ComputerRoute,
    mut req: Request,
    ctx: &Ctx<'_>,
) -> Result<Response, ApiError> {
    let caller = auth::authenticate(&req, ctx).await?;
    let permission = match op {
        ComputerRoute::Files
        | ComputerRoute::Read
        | ComputerRoute::Receipts
        | ComputerRoute::Grade
        | ComputerRoute::Spec => Permission::Read,
        _ => Permission::Write,
    };
    caller.require(permission)?;
    match op {
        ComputerRoute::Create => create(&mut req, ctx, &caller).await,
        ComputerRoute::Brief => brief(&mut req, ctx).await,
        action => {
            let id = ctx.param("id")?.to_string();
            if !spec::is_computer_id(&id) {
                return Err(ApiError::ComputerNotFound);
            }
            let call = action_call(action, &mut req).await?;
            to_computer(ctx, &id, &caller.account_id, &call).await
        }
    }
}

async fn create(req: &mut Request, ctx: &Ctx<'_>, caller: &Caller) -> Result<Response, ApiError> {
    let bytes = http::read_body(req, spec::MAX_SPEC_BYTES as u64)
        .await
        .map_err(|err| match err {
            ApiError::BodyTooLarge { .. } => ApiError::SpecTooLarge,
            other => other,
        })?;
    let value: Value = http::parse_json(&bytes)?;
    spec::parse(&value)?;
    let id = spec::computer_id(&caller.account_id, &value);
    let call = ComputerCall::Create(call::Create {
        id: id.clone(),
        spec: value,
    });
    to_computer(ctx, &id, &caller.account_id, &call).await
}

#[derive(Deserialize)]
struct BriefBody {
    brief: Option<Value>,
}

async fn brief(req: &mut Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let body: BriefBody = http::read_json(req).await?;
    let brief = match body.brief {
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        Some(Value::String(_)) => return Err(invalid("brief", "must not be empty")),
        Some(_) => return Err(invalid("brief", "must be a string")),
        None => return Err(invalid("brief", "is required")),
    };
    if brief.chars().count() > MAX_BRIEF_CHARS {
        return Err(invalid(
            "brief",
            &format!("must be at most {MAX_BRIEF_CHARS} characters"),
        ));
    }
    let cfg = Config::from_env(ctx.env).model;
    let drafted = model::try_chat(cfg.as_ref(), &generate::brief_prompt(&brief), "brief")
        .await
        .and_then(|text| generate::extract_json_object(&text))
        .filter(|draft| {
            spec::parse(draft).is_ok()
                && crate::common::canonical::to_string(draft).len() <= spec::MAX_SPEC_BYTES
        });
    let (draft, source) = match drafted {
        Some(draft) => (draft, "model"),
        None => (generate::draft_spec(&brief), "template"),
    };
    http::json(200, &json!({"spec": draft, "source": source}))
}

fn invalid(field: &str, message: &str) -> ApiError {
    ApiError::ValidationFailed(vec![FieldError::new(field, message)])
}

#[derive(Deserialize)]
struct WriteBody {
    path: Option<String>,
    content: Option<String>,
}

#[derive(Deserialize)]
struct AskBody {
    who: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct SubmitBody {
    objective: Option<String>,
    decision: Option<String>,
    paths: Option<Vec<String>>,
    notes: Option<String>,
}

fn required(value: Option<String>, field: &str) -> Result<String, ApiError> {
    value.ok_or_else(|| invalid(field, "is required (a string)"))
}

fn within(value: &str, field: &str) -> Result<(), ApiError> {
    if value.chars().count() > MAX_MESSAGE_CHARS {
        return Err(invalid(
            field,
            &format!("must be at most {MAX_MESSAGE_CHARS} characters"),
        ));
    }
    Ok(())
}

/// Validates an action's input; returns the call for the DO.
async fn action_call(op: ComputerRoute, req: &mut Request) -> Result<ComputerCall, ApiError> {
    Ok(match op {
        ComputerRoute::Files => ComputerCall::Files,
        ComputerRoute::Receipts => ComputerCall::Receipts,
        ComputerRoute::Grade => ComputerCall::Grade,
        ComputerRoute::Spec => ComputerCall::Spec,
        ComputerRoute::Reset => ComputerCall::Reset,
        ComputerRoute::Read => {
            let path = http::query(req, "path")?
                .ok_or_else(|| invalid("path", "the path query parameter is required"))?;
            paths::check_path("path", &path)?;
            ComputerCall::Read(call::Read { path })
        }
        ComputerRoute::Write => {
            // A body over 1 MiB necessarily holds content over the limit.
            let body: WriteBody = http::read_json(req).await.map_err(|err| match err {
                ApiError::BodyTooLarge { .. } => ApiError::ContentTooLarge,
                other => other,
            })?;
            let path = required(body.path, "path")?;
            paths::check_path("path", &path)?;
            let content = required(body.content, "content")?;
            if content.len() > MAX_WRITE_BYTES {
                return Err(ApiError::ContentTooLarge);
            }
            ComputerCall::Write(call::Write { path, content })
        }
        ComputerRoute::Ask => {
            let body: AskBody = http::read_json(req).await?;
            let who = required(body.who, "who")?;
            let message = required(body.message, "message")?;
            if message.trim().is_empty() {
                return Err(invalid("message", "must not be empty"));
            }
            within(&message, "message")?;
            ComputerCall::Ask(call::Ask { who, message })
        }
        ComputerRoute::Submit => {
            let body: SubmitBody = http::read_json(req).await?;
            let objective = required(body.objective, "objective")?;
            if let Some(paths) = &body.paths {
                for (i, p) in paths.iter().enumerate() {
                    paths::check_path(&format!("paths[{i}]"), p)?;
                }
            }
            if let Some(notes) = &body.notes {
                within(notes, "notes")?;
            }
            ComputerCall::Submit(call::Submit {
                objective,
                decision: body.decision,
                paths: body.paths,
                notes: body.notes,
            })
        }
        ComputerRoute::Create | ComputerRoute::Brief => {
            return Err(ApiError::Internal("not an action".into()))
        }
    })
}

/// One internal call to the computer's Durable Object; its answer is the response.
async fn to_computer(
    ctx: &Ctx<'_>,
    id: &str,
    account: &str,
    call: &ComputerCall,
) -> Result<Response, ApiError> {
    let json = serde_json::to_string(call)?;
    bindings::call_do(
        ctx.env,
        bindings::COMPUTER,
        id,
        call::CALL_URL,
        account,
        ctx.request_id,
        json,
    )
    .await
}
