//! `push`, `pull` and `exec`: a local folder and its workspace.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::args::ExecArgs;
use crate::exit::{Exit, Failure, Result};
use crate::output::usd;
use crate::stream::{self, Ending, Work};
use crate::sync::{self, PullReport, PushReport};
use crate::tree::OWN_DIR;
use crate::Ctx;

pub fn push(ctx: &Ctx, dir: &Path, ws: &str) -> Result<()> {
    check_workspace_id(ws)?;
    check_dir(dir)?;
    let report = sync::push(&ctx.api(), ws, dir, &ctx.out.progress())?;
    print_push(ctx, &report);
    Ok(())
}

fn print_push(ctx: &Ctx, r: &PushReport) {
    let value = serde_json::to_value(r).unwrap_or(Value::Null);
    ctx.out.result(&value, || {
        format!(
            "pushed {} files ({} bytes) to {} version {}: sent {} blobs ({} bytes){}",
            r.files,
            r.bytes,
            r.workspace_id,
            r.version,
            r.uploaded_blobs,
            r.uploaded_bytes,
            if r.committed {
                ""
            } else {
                ", nothing to commit"
            }
        )
    });
}

pub fn pull(ctx: &Ctx, ws: &str, dir: &Path, version: Option<u64>, delete: bool) -> Result<()> {
    check_workspace_id(ws)?;
    if dir.exists() && !dir.is_dir() {
        return Err(Failure::usage(format!("{}: not a folder", dir.display())));
    }
    let report = sync::pull(&ctx.api(), ws, dir, version, delete, &ctx.out.progress())?;
    print_pull(ctx, &report);
    Ok(())
}

fn pull_text(r: &PullReport) -> String {
    format!(
        "pulled {} version {}: {} written ({} bytes), {} deleted",
        r.workspace_id, r.version, r.written, r.bytes, r.deleted
    )
}

fn print_pull(ctx: &Ctx, r: &PullReport) {
    let value = serde_json::to_value(r).unwrap_or(Value::Null);
    ctx.out.result(&value, || pull_text(r));
}

fn check_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(Failure::usage(format!("{}: not a folder", dir.display())));
    }
    Ok(())
}

fn check_workspace_id(ws: &str) -> Result<()> {
    crate::exit::checked_id("workspace id", ws).map(|_| ())
}

/// The workspace id made for a folder: its name (only `[A-Za-z0-9_-]`),
/// `-`, and 8 hex characters of a hash of its absolute path.
pub fn derived_workspace_id(abs: &Path) -> String {
    let name: String = abs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(119)
        .collect();
    let name = if name.is_empty() {
        "workspace".into()
    } else {
        name
    };
    let digest = Sha256::digest(abs.as_os_str().as_encoded_bytes());
    format!("{name}-{}", &hex::encode(digest)[..8])
}

/// `--workspace`, else the id remembered in DIR, else a derived one
/// (remembered from now on).
fn workspace_for(dir: &Path, flag: Option<&str>) -> Result<String> {
    if let Some(ws) = flag {
        check_workspace_id(ws)?;
        return Ok(ws.to_string());
    }
    let own = dir.join(OWN_DIR);
    let file = own.join("workspace");
    if let Ok(text) = fs::read_to_string(&file) {
        let ws = text.trim().to_string();
        check_workspace_id(&ws).map_err(|f| f.context(&format!("{}", file.display())))?;
        return Ok(ws);
    }
    let ws = derived_workspace_id(dir);
    fs::create_dir_all(&own)
        .and_then(|_| fs::write(&file, format!("{ws}\n")))
        .map_err(|e| Failure::usage(format!("{}: {e}", file.display())))?;
    Ok(ws)
}

/// Push, execute with live progress, pull: the whole agent loop.
pub fn exec(ctx: &Ctx, args: ExecArgs) -> Result<()> {
    if args.task.is_empty() {
        return Err(Failure::usage("the task is empty"));
    }
    let deadline = args
        .timeout
        .and_then(|s| Instant::now().checked_add(Duration::from_secs(s)));
    check_dir(&args.dir)?;
    let dir = fs::canonicalize(&args.dir)
        .map_err(|e| Failure::usage(format!("{}: {e}", args.dir.display())))?;
    let ws = workspace_for(&dir, args.workspace.as_deref())?;
    let api = ctx.api();
    let pushed = sync::push(&api, &ws, &dir, &ctx.out.progress())?;
    ctx.out.note(&format!(
        "pushed {} files to {ws} version {} ({} new blobs, {} bytes)",
        pushed.files, pushed.version, pushed.uploaded_blobs, pushed.uploaded_bytes
    ));
    if args.new_session {
        api.post(&format!("/workspaces/{ws}/session/reset"), &json!({}))?;
    }
    let mut body = json!({ "task": args.task, "workspaceId": ws });
    if let Some(sid) = &args.session {
        body["sessionId"] = json!(sid);
    }
    if let Some(usd) = args.max_cost {
        body["maxCostUsd"] = json!(usd);
    }
    let key = stream::idempotency_key();
    let opener = api.clone();
    let open = Box::new(move |last: Option<u64>| {
        let mut headers = vec![("idempotency-key", key.clone())];
        if let Some(id) = last {
            headers.push(("last-event-id", id.to_string()));
        }
        opener.stream("POST", "/execute", Some(&body), &headers)
    });
    let cancel = |id: &str| {
        api.post(&format!("/execute/{id}/cancel"), &json!({}))
            .map(|_| ())
    };
    let spinner = ctx.out.progress().spinner("the agent is working");
    let out = ctx.out;
    let mut on_event = |event: &crate::sse::Event| {
        let data = event.json();
        match event.event.as_str() {
            "usage" => spinner.set_message(format!(
                "the agent is working · {} tokens · {}",
                data["totalTokens"],
                usd(&data["totalCost"])
            )),
            "output" => spinner.suspend(|| out.live(data["text"].as_str().unwrap_or(""))),
            "receipt" => {
                if let Some(cmd) = data["cmd"].as_str() {
                    spinner.suspend(|| out.note(&format!("$ {cmd}")));
                }
            }
            _ => {}
        }
    };
    let work = Work {
        open,
        cancel: Some(&cancel),
        deadline,
        idle: None,
        out: ctx.out,
    };
    let (ending, run_id) = stream::follow(work, &mut on_event)?;
    spinner.finish_and_clear();
    let body = match ending {
        Ending::Result(body) => body,
        Ending::Stopped {
            exit,
            run_id: id,
            body,
        } => {
            let body = match (body, id.or(run_id)) {
                (Some(b), _) => Some(b),
                (None, Some(id)) => api.get(&format!("/execute/{id}?wait=true")).ok(),
                (None, None) => None,
            };
            let charged = body
                .as_ref()
                .map(|b| usd(&b["usage"]["totalCost"]))
                .unwrap_or_else(|| "unknown".into());
            let what = if exit == Exit::TimedOut {
                "timed out (--timeout)"
            } else {
                "interrupted"
            };
            let failure = Failure::new(
                exit,
                "cancelled",
                format!("{what}: the execute was cancelled; charged {charged}"),
            );
            return Err(match &body {
                // With --json the body is the one document (its status says cancelled).
                Some(b) if ctx.out.json => {
                    ctx.out.json_line(b);
                    failure.shown()
                }
                _ => failure,
            });
        }
    };
    let ok = body["ok"].as_bool() == Some(true);
    let pulled = if ok {
        Some(pull_result(ctx, &api, &ws, &dir, &pushed, &body)?)
    } else {
        None
    };
    ctx.out.result(&body, || exec_text(&body, pulled.as_ref()));
    if ok {
        Ok(())
    } else {
        Err(crate::client::work_failed(&body))
    }
}

/// Brings an ok execute's version into DIR: only its changed files when it
/// started from the version just pushed, else the whole version.
fn pull_result(
    ctx: &Ctx,
    api: &crate::client::Api,
    ws: &str,
    dir: &Path,
    pushed: &PushReport,
    body: &Value,
) -> Result<PullReport> {
    let version = body["version"].as_u64();
    let changed: Option<Vec<String>> = body["changedFiles"].as_array().map(|a| {
        a.iter()
            .filter_map(|p| p.as_str().map(str::to_string))
            .collect()
    });
    let progress = ctx.out.progress();
    match (version, changed) {
        // Our version, or one on top of it: nobody committed in between.
        (Some(v), Some(changed))
            if v == pushed.version + 1 || (v == pushed.version && changed.is_empty()) =>
        {
            sync::pull_changes(api, ws, dir, v, &changed, &pushed.entries, &progress)
        }
        _ => sync::pull(api, ws, dir, version, true, &progress),
    }
}

fn exec_text(body: &Value, pulled: Option<&PullReport>) -> String {
    let mut lines = Vec::new();
    if let Some(output) = body["output"].as_str().filter(|o| !o.is_empty()) {
        lines.push(output.to_string());
    }
    let changed = body["changedFiles"]
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0);
    lines.push(format!(
        "{} · {} · {changed} {} changed · {} tokens · cost {}",
        if body["ok"].as_bool() == Some(true) {
            "ok"
        } else {
            "failed"
        },
        body["status"].as_str().unwrap_or("?"),
        if changed == 1 { "file" } else { "files" },
        body["usage"]["totalTokens"],
        usd(&body["usage"]["totalCost"]),
    ));
    if let Some(balance) = body["billing"].get("balanceAfter") {
        lines.push(format!("balance {}", usd(balance)));
    }
    if let Some(p) = pulled {
        lines.push(pull_text(p));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_keep_safe_name_characters_and_hash_the_path() {
        let a = derived_workspace_id(Path::new("/home/me/my project.v2"));
        assert!(a.starts_with("myprojectv2-"), "{a}");
        assert_eq!(a.len(), "myprojectv2-".len() + 8);
        assert_ne!(a, derived_workspace_id(Path::new("/tmp/my project.v2")));
        assert!(derived_workspace_id(Path::new("/")).starts_with("workspace-"));
        let long = format!("/{}", "x".repeat(300));
        let id = derived_workspace_id(Path::new(&long));
        assert_eq!(id.len(), 128);
        assert!(check_workspace_id(&id).is_ok());
    }

    #[test]
    fn workspace_ids_checked_before_any_request() {
        assert!(check_workspace_id("ok_id-1").is_ok());
        assert!(check_workspace_id("").is_err());
        assert!(check_workspace_id("a/b").is_err());
        assert!(check_workspace_id(&"a".repeat(129)).is_err());
    }
}
