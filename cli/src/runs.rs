//! `run` and `runs …`: repo runs.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::args::{RunArgs, RunsCommand};
use crate::client::{work_failed, Api};
use crate::exit::{checked_id, Exit, Failure, Result};
use crate::output::{table, Out};
use crate::sse::Event;
use crate::stream::{self, Ending, Work};
use crate::Ctx;

/// A run id, checked before it goes into a URL.
fn run_id(id: &str) -> Result<&str> {
    checked_id("run id", id)
}

/// The request body of `POST /api/runs`.
pub fn run_body(args: &RunArgs) -> Result<Value> {
    let mut body = json!({ "repo": args.repo, "commands": args.commands, "verify": args.verify });
    if args.commands.is_empty() && args.verify.is_empty() {
        return Err(Failure::usage("give at least one --cmd or --verify"));
    }
    if let Some(r) = &args.git_ref {
        body["ref"] = json!(r);
    }
    if let Some(a) = &args.artifact {
        body["artifact"] = json!(a);
    }
    if !args.env.is_empty() {
        let mut env = Map::new();
        for pair in &args.env {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(Failure::usage(format!("--env {pair:?}: expected K=V")));
            };
            if k.is_empty() {
                return Err(Failure::usage(format!("--env {pair:?}: the name is empty")));
            }
            env.insert(k.to_string(), json!(v));
        }
        body["env"] = Value::Object(env);
    }
    if let Some(s) = args.step_timeout {
        body["timeoutMs"] = json!(s.saturating_mul(1000));
    }
    if args.live {
        body["live"] = json!(true);
    }
    if let Some(ttl) = args.ttl {
        body["ttlSeconds"] = json!(ttl);
    }
    if args.public {
        body["public"] = json!(true);
    }
    if let Some(usd) = args.max_cost {
        body["maxCostUsd"] = json!(usd);
    }
    Ok(body)
}

/// One line per receipt: seq, type, exit code, duration, command.
pub fn receipt_line(r: &Value) -> String {
    let exit = match (&r["exitCode"], &r["signal"]) {
        (Value::Number(n), _) => format!("exit {n}"),
        (_, Value::String(s)) => format!("signal {s}"),
        _ => "-".into(),
    };
    let ms = r["durationMs"].as_f64().unwrap_or(0.0);
    let mark = match r["exitCode"].as_i64() {
        Some(0) => "ok  ",
        Some(_) => "FAIL",
        None => "    ",
    };
    format!(
        "{mark} #{:<3} {:<8} {:<8} {:>7.1}s  {}",
        r["seq"],
        r["type"].as_str().unwrap_or("?"),
        exit,
        ms / 1000.0,
        r["cmd"].as_str().unwrap_or("")
    )
}

/// Prints a run's event as it comes: receipts on stdout, live output and
/// runner lines on stderr; NDJSON with `--json` when `ndjson`.
fn show_event(out: Out, ndjson: bool, event: &Event) {
    let data = event.json();
    if out.json {
        if ndjson {
            out.json_line(&json!({ "id": event.id, "event": event.event, "data": data }));
        }
        return;
    }
    match event.event.as_str() {
        "receipt" if !out.quiet => println!("{}", receipt_line(&data)),
        "output" => out.live(data["text"].as_str().unwrap_or("")),
        "runner" => {
            if let Some(e) = data["event"].as_str() {
                out.note(&format!("runner: {e}"));
            }
        }
        _ => {}
    }
}

fn verdict(body: &Value) -> String {
    let mut lines = Vec::new();
    if let Some(a) = body.get("artifact").filter(|a| !a.is_null()) {
        lines.push(format!(
            "artifact {}: {}",
            a["path"].as_str().unwrap_or(""),
            if a["found"].as_bool() == Some(true) {
                format!("{} bytes", a["bytes"])
            } else {
                a["error"].as_str().unwrap_or("not found").to_string()
            }
        ));
    }
    lines.push(format!(
        "{} {} ({})",
        body["runId"].as_str().unwrap_or(""),
        body["status"].as_str().unwrap_or("?"),
        if body["ok"].as_bool() == Some(true) {
            "every verify step passed"
        } else {
            "not ok"
        }
    ));
    lines.join("\n")
}

pub fn run(ctx: &Ctx, args: RunArgs) -> Result<()> {
    let body = run_body(&args)?;
    let deadline = args
        .timeout
        .and_then(|s| Instant::now().checked_add(Duration::from_secs(s)));
    let api = ctx.api();
    let key = stream::idempotency_key();
    if args.detach {
        let resp = api.stream(
            "POST",
            "/api/runs",
            Some(&body),
            &[("idempotency-key", key)],
        )?;
        let id = resp.header("x-run-id").map(str::to_string).ok_or_else(|| {
            Failure::new(
                Exit::Server,
                "bad_answer",
                "the server did not name the run (x-run-id)",
            )
        })?;
        ctx.out.result(&json!({ "runId": id }), || id.clone());
        return Ok(());
    }
    let opener = api.clone();
    let open = Box::new(move |last: Option<u64>| {
        let mut headers = vec![("idempotency-key", key.clone())];
        if let Some(id) = last {
            headers.push(("last-event-id", id.to_string()));
        }
        opener.stream("POST", "/api/runs", Some(&body), &headers)
    });
    let out = ctx.out;
    let (ending, _) = follow_run(&api, ctx.out, open, deadline, None, &mut |e| {
        show_event(out, false, e)
    })?;
    let body = match ending {
        Ending::Result(body) => body,
        Ending::Stopped { exit, body, .. } => {
            let what = if exit == Exit::TimedOut {
                "timed out (--timeout)"
            } else {
                "interrupted"
            };
            let failure = Failure::new(exit, "cancelled", format!("{what}: the run was cancelled"));
            return Err(match &body {
                Some(b) => {
                    ctx.out.result(b, || verdict(b));
                    failure.shown()
                }
                None => failure,
            });
        }
    };
    if let Some(path) = &args.out {
        let content = body["artifact"]["content"].as_str().ok_or_else(|| {
            Failure::new(
                Exit::WorkFailed,
                "artifact_missing",
                "the run brought back no artifact",
            )
        })?;
        std::fs::write(path, content)
            .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
    }
    ctx.out.result(&body, || verdict(&body));
    if body["ok"].as_bool() == Some(true) {
        Ok(())
    } else {
        Err(work_failed(&body))
    }
}

fn follow_run(
    api: &Api,
    out: Out,
    open: Box<dyn Fn(Option<u64>) -> Result<ureq::Response> + Send + 'static>,
    deadline: Option<Instant>,
    idle: Option<Duration>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(Ending, Option<String>)> {
    let cancel = |id: &str| {
        api.post(&format!("/api/runs/{}/cancel", run_id(id)?), &json!({}))
            .map(|_| ())
    };
    let work = Work {
        open,
        cancel: Some(&cancel),
        deadline,
        idle,
        out,
    };
    stream::follow(work, on_event)
}

pub fn runs(ctx: &Ctx, cmd: RunsCommand) -> Result<()> {
    let api = ctx.api();
    match cmd {
        RunsCommand::List { limit, cursor } => {
            let mut query = Vec::new();
            if let Some(l) = limit {
                query.push(format!("limit={l}"));
            }
            if let Some(c) = cursor {
                query.push(format!("cursor={}", crate::client::query_escape(&c)));
            }
            let path = if query.is_empty() {
                "/api/runs".to_string()
            } else {
                format!("/api/runs?{}", query.join("&"))
            };
            let body = api.get(&path)?;
            ctx.out.result(&body, || {
                let rows: Vec<Vec<String>> = body["runs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        vec![
                            r["runId"]
                                .as_str()
                                .or(r["id"].as_str())
                                .unwrap_or("")
                                .into(),
                            r["status"].as_str().unwrap_or("").into(),
                            r["repo"].as_str().unwrap_or("").into(),
                            r["createdAt"].as_str().unwrap_or("").into(),
                        ]
                    })
                    .collect();
                table(&["run", "status", "repo", "created"], &rows)
            });
        }
        RunsCommand::Get { id } => {
            let body = api.get(&format!("/api/runs/{}", run_id(&id)?))?;
            ctx.out.result(&body, || {
                let mut lines: Vec<String> = body["receipts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(receipt_line)
                    .collect();
                lines.push(verdict(&body));
                lines.join("\n")
            });
        }
        RunsCommand::Events { id, follow } => {
            let id = run_id(&id)?;
            let opener = api.clone();
            let path = format!("/api/runs/{id}/events");
            // Checked first, so an unknown run exits 4 rather than streaming.
            api.get(&format!("/api/runs/{id}"))?;
            let open = Box::new(move |last: Option<u64>| {
                let headers: Vec<(&str, String)> = last
                    .map(|l| vec![("last-event-id", l.to_string())])
                    .unwrap_or_default();
                opener.stream("GET", &path, None, &headers)
            });
            let out = ctx.out;
            let work = Work {
                open,
                cancel: None,
                deadline: None,
                idle: (!follow).then_some(Duration::from_secs(2)),
                out,
            };
            let (ending, _) = stream::follow(work, &mut |e| show_event(out, true, e))?;
            if let Ending::Stopped { exit, .. } = ending {
                return Err(Failure::new(
                    exit,
                    "interrupted",
                    "stopped watching; the run goes on",
                ));
            }
        }
        RunsCommand::Verify { id } => {
            let body = api.get(&format!("/api/runs/{}/verify", run_id(&id)?))?;
            ctx.out.result(&body, || {
                format!(
                    "{} (head {})",
                    if body["valid"].as_bool() == Some(true) {
                        "the receipt chain is valid"
                    } else {
                        "the receipt chain is NOT valid"
                    },
                    body["head"].as_str().unwrap_or("-")
                )
            });
            if body["valid"].as_bool() != Some(true) {
                return Err(Failure::new(
                    Exit::WorkFailed,
                    "chain_invalid",
                    "the receipt chain does not verify",
                )
                .shown());
            }
        }
        RunsCommand::Cancel { id } => {
            let body = api.post(&format!("/api/runs/{}/cancel", run_id(&id)?), &json!({}))?;
            ctx.out.result(&body, || {
                format!("{} {}", id, body["status"].as_str().unwrap_or("cancelled"))
            });
        }
        RunsCommand::Open { id } => {
            let body = api.get(&format!("/api/runs/{}", run_id(&id)?))?;
            let Some(page) = body["publicUrl"].as_str() else {
                return Err(Failure::new(
                    Exit::NotFound,
                    "run_not_public",
                    format!("{id} is not public: its page does not exist"),
                ));
            };
            let url = format!("{}{page}", api.base);
            ctx.out
                .result(&json!({ "runId": id, "url": url }), || url.clone());
            if !ctx.out.json && std::io::stdout().is_terminal() {
                // Best effort: a desktop may have no opener.
                let _ = std::process::Command::new("xdg-open")
                    .arg(&url)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn();
            }
        }
        RunsCommand::Exec {
            id,
            command,
            timeout,
        } => {
            let mut body = json!({ "command": command });
            if let Some(s) = timeout {
                body["timeoutMs"] = json!(s.saturating_mul(1000));
            }
            let receipt = api.post(&format!("/api/runs/{}/exec", run_id(&id)?), &body)?;
            if ctx.out.json {
                ctx.out.result(&receipt, String::new);
            } else {
                print!("{}", receipt["stdout"].as_str().unwrap_or(""));
                eprint!("{}", receipt["stderr"].as_str().unwrap_or(""));
            }
            if receipt["exitCode"].as_i64() != Some(0) {
                return Err(Failure::new(
                    Exit::WorkFailed,
                    "exec_failed",
                    format!("the command ended with {}", exit_text(&receipt)),
                )
                .shown());
            }
        }
        RunsCommand::Read { id, path, out } => {
            let url = format!(
                "/api/runs/{}/read?path={}",
                run_id(&id)?,
                crate::client::query_escape(&path)
            );
            let body = api.get(&url)?;
            let bytes = file_bytes(&body)?;
            match out {
                Some(file) => {
                    std::fs::write(&file, &bytes)
                        .map_err(|e| Failure::usage(format!("{}: {e}", file.display())))?;
                    ctx.out.result(
                        &json!({ "path": path, "size": bytes.len(), "out": file }),
                        || format!("wrote {} bytes to {}", bytes.len(), file.display()),
                    );
                }
                None if ctx.out.json => ctx.out.result(&body, String::new),
                None => {
                    use std::io::Write;
                    std::io::stdout()
                        .write_all(&bytes)
                        .map_err(|e| Failure::usage(format!("stdout: {e}")))?;
                }
            }
        }
        RunsCommand::Write {
            id,
            path,
            file,
            mode,
        } => {
            let bytes = read_bytes(file.as_deref())?;
            let mut body = json!({ "path": path, "contentBase64": STANDARD.encode(&bytes) });
            if let Some(m) = mode {
                body["mode"] = json!(m);
            }
            let answer = api.post(&format!("/api/runs/{}/write", run_id(&id)?), &body)?;
            ctx.out.result(&answer, || {
                format!("wrote {} bytes to {path}", answer["written"])
            });
        }
        RunsCommand::Stop { id } => {
            let body = api.post(&format!("/api/runs/{}/stop", run_id(&id)?), &json!({}))?;
            ctx.out.result(&body, || {
                format!(
                    "{id} stopped; snapshot {} ({} files, {} bytes)",
                    body["snapshot"]["id"].as_str().unwrap_or("-"),
                    body["snapshot"]["files"],
                    body["snapshot"]["bytes"]
                )
            });
        }
        RunsCommand::Resume { id } => {
            let body = api.post(&format!("/api/runs/{}/resume", run_id(&id)?), &json!({}))?;
            ctx.out.result(&body, || {
                format!(
                    "{id} live until {}",
                    body["live"]["expiresAt"].as_str().unwrap_or("-")
                )
            });
        }
        RunsCommand::Fork {
            id,
            live,
            ttl,
            public,
        } => {
            let mut request = json!({ "live": live, "public": public });
            if let Some(t) = ttl {
                request["ttlSeconds"] = json!(t);
            }
            let body = api.post(&format!("/api/runs/{}/fork", run_id(&id)?), &request)?;
            ctx.out.result(&body, || {
                format!(
                    "{} {} (forked from {id})",
                    body["runId"].as_str().unwrap_or("-"),
                    body["status"].as_str().unwrap_or("-")
                )
            });
        }
        RunsCommand::Delete { id } => {
            let answer = api.json("DELETE", &format!("/api/runs/{}", run_id(&id)?), None, &[])?;
            let body = if answer.body.is_null() {
                json!({ "runId": id, "deleted": true })
            } else {
                answer.body
            };
            ctx.out.result(&body, || format!("deleted {id}"));
        }
    }
    Ok(())
}

/// How an exec ended, for its failure message.
fn exit_text(receipt: &Value) -> String {
    match (receipt["exitCode"].as_i64(), receipt["signal"].as_str()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => signal.to_string(),
        (None, None) => "no exit code".to_string(),
    }
}

/// The bytes of a `read` answer (`content` or `contentBase64`).
fn file_bytes(body: &Value) -> Result<Vec<u8>> {
    if let Some(text) = body["content"].as_str() {
        return Ok(text.as_bytes().to_vec());
    }
    let b64 = body["contentBase64"].as_str().unwrap_or("");
    STANDARD
        .decode(b64)
        .map_err(|e| Failure::new(Exit::Server, "bad_answer", format!("contentBase64: {e}")))
}

/// FILE's bytes, or stdin's ('-' or nothing).
fn read_bytes(file: Option<&std::path::Path>) -> Result<Vec<u8>> {
    match file {
        Some(p) if p != std::path::Path::new("-") => {
            std::fs::read(p).map_err(|e| Failure::usage(format!("{}: {e}", p.display())))
        }
        _ => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                .map_err(|e| Failure::usage(format!("reading stdin: {e}")))?;
            Ok(bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_answers_give_their_bytes_text_or_base64() {
        assert_eq!(
            file_bytes(&json!({"content": "hé"})).unwrap(),
            "hé".as_bytes()
        );
        assert_eq!(
            file_bytes(&json!({"contentBase64": "AAEC/w=="})).unwrap(),
            vec![0, 1, 2, 255]
        );
        assert!(file_bytes(&json!({"contentBase64": "!!"})).is_err());
        assert_eq!(exit_text(&json!({"exitCode": 3})), "exit 3");
        assert_eq!(
            exit_text(&json!({"exitCode": null, "signal": "SIGKILL"})),
            "SIGKILL"
        );
    }

    fn args() -> RunArgs {
        RunArgs {
            repo: "https://github.com/o/r".into(),
            git_ref: None,
            commands: vec!["make".into()],
            verify: vec![],
            artifact: None,
            out: None,
            env: vec![],
            step_timeout: None,
            timeout: None,
            live: false,
            ttl: None,
            public: false,
            max_cost: None,
            detach: false,
        }
    }

    #[test]
    fn bodies_carry_what_was_asked_and_nothing_else() {
        let mut a = args();
        assert_eq!(
            run_body(&a).unwrap(),
            json!({"repo": "https://github.com/o/r", "commands": ["make"], "verify": []})
        );
        a.env = vec!["A=1".into(), "B=x=y".into()];
        a.step_timeout = Some(5);
        let b = run_body(&a).unwrap();
        assert_eq!(b["env"], json!({"A": "1", "B": "x=y"}));
        assert_eq!(b["timeoutMs"], 5000);
        a.env = vec!["novalue".into()];
        assert_eq!(run_body(&a).unwrap_err().exit, Exit::Usage);
        let mut none = args();
        none.commands.clear();
        assert!(run_body(&none).is_err());
    }

    #[test]
    fn receipt_lines_show_exit_and_duration() {
        let line = receipt_line(
            &json!({"seq": 2, "type": "verify", "cmd": "test -f x", "exitCode": 1, "durationMs": 1500}),
        );
        assert!(line.starts_with("FAIL #2"), "{line}");
        assert!(
            line.contains("exit 1") && line.contains("1.5s") && line.ends_with("test -f x"),
            "{line}"
        );
    }
}
