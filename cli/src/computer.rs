//! `computer …`: typed evaluation workspaces.

use std::io::Read;
use std::path::Path;

use serde_json::{json, Value};

use crate::args::ComputerCommand;
use crate::exit::{Failure, Result};
use crate::output::table;
use crate::Ctx;

/// A file's text, or stdin's for `-` or no file.
fn read_input(file: Option<&Path>) -> Result<String> {
    match file {
        Some(p) if p != Path::new("-") => {
            std::fs::read_to_string(p).map_err(|e| Failure::usage(format!("{}: {e}", p.display())))
        }
        _ => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Failure::usage(format!("reading stdin: {e}")))?;
            Ok(text)
        }
    }
}

/// A computer id in a URL: `cb_` and hex, nothing that could change the path.
fn id_path(id: &str, action: &str) -> Result<String> {
    Ok(format!(
        "/api/c/{}/{action}",
        crate::exit::checked_id("computer id", id)?
    ))
}

pub fn computer(ctx: &Ctx, cmd: ComputerCommand) -> Result<()> {
    let api = ctx.api();
    let show = |body: &Value, text: &dyn Fn(&Value) -> String| {
        ctx.out.result(body, || text(body));
    };
    match cmd {
        ComputerCommand::Create { spec } => {
            let text = read_input(Some(&spec))?;
            let spec: Value = serde_json::from_str(&text)
                .map_err(|e| Failure::usage(format!("{}: not JSON: {e}", spec.display())))?;
            let body = api.json("POST", "/api/computers", Some(&spec), &[])?.body;
            show(&body, &|b| b["id"].as_str().unwrap_or("").to_string());
        }
        ComputerCommand::Brief { text, create } => {
            let draft = api.post("/api/brief", &json!({ "brief": text }))?;
            if create {
                let body = api
                    .json("POST", "/api/computers", Some(&draft["spec"]), &[])?
                    .body;
                show(&body, &|b| b["id"].as_str().unwrap_or("").to_string());
            } else {
                show(&draft, &|b| {
                    serde_json::to_string_pretty(&b["spec"]).unwrap_or_default()
                });
            }
        }
        ComputerCommand::Files { id } => {
            let body = api.get(&id_path(&id, "files")?)?;
            show(&body, &|b| {
                let rows: Vec<Vec<String>> = b["files"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|f| {
                        vec![
                            f["path"].as_str().unwrap_or("").into(),
                            f["kind"].as_str().unwrap_or("").into(),
                            f["state"].as_str().unwrap_or("").into(),
                        ]
                    })
                    .collect();
                table(&["path", "kind", "state"], &rows)
            });
        }
        ComputerCommand::Read { id, path } => {
            let url = format!(
                "{}?path={}",
                id_path(&id, "read")?,
                crate::client::query_escape(&path)
            );
            let body = api.get(&url)?;
            show(&body, &|b| b["content"].as_str().unwrap_or("").to_string());
        }
        ComputerCommand::Write { id, path, file } => {
            let content = read_input(file.as_deref())?;
            let body = api.post(
                &id_path(&id, "write")?,
                &json!({ "path": path, "content": content }),
            )?;
            show(&body, &|b| {
                format!("wrote {} bytes to {}", b["written"], path)
            });
        }
        ComputerCommand::Ask { id, who, message } => {
            let body = api.post(
                &id_path(&id, "ask")?,
                &json!({ "who": who, "message": message }),
            )?;
            show(&body, &|b| {
                let mut text = format!(
                    "{}: {}",
                    b["from"].as_str().unwrap_or(&who),
                    b["reply"].as_str().unwrap_or("")
                );
                let revealed: Vec<&str> = b["revealed"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if !revealed.is_empty() {
                    text.push_str(&format!("\n(revealed: {})", revealed.join(", ")));
                }
                text
            });
        }
        ComputerCommand::Submit {
            id,
            objective,
            decision,
            paths,
            notes,
        } => {
            let mut req = json!({ "objective": objective });
            if let Some(d) = decision {
                req["decision"] = json!(d);
            }
            if !paths.is_empty() {
                req["paths"] = json!(paths);
            }
            if let Some(n) = notes {
                req["notes"] = json!(n);
            }
            let body = api.post(&id_path(&id, "submit")?, &req)?;
            show(&body, &|b| {
                format!("submitted {}", b["objective"].as_str().unwrap_or(""))
            });
        }
        ComputerCommand::Grade { id } => {
            let body = api.get(&id_path(&id, "grade")?)?;
            show(&body, &grade_text);
        }
        ComputerCommand::Receipts { id } => {
            let body = api.get(&id_path(&id, "receipts")?)?;
            show(&body, &|b| {
                b["receipts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        format!(
                            "#{:<4} {:<8} {}",
                            r["seq"],
                            r["kind"].as_str().unwrap_or(""),
                            r["payload"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(())
}

fn grade_text(b: &Value) -> String {
    let rows: Vec<Vec<String>> = b["detail"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            vec![
                d["id"].as_str().unwrap_or("").into(),
                d["weight"].to_string(),
                d["status"].as_str().unwrap_or("").into(),
            ]
        })
        .collect();
    format!(
        "{}\nscore {} of {} (total weight {})",
        table(&["criterion", "weight", "status"], &rows),
        b["score"],
        b["max"],
        b["totalWeight"]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_in_queries_are_escaped_and_ids_checked() {
        assert!(id_path("cb_12ab", "read").is_ok());
        assert!(id_path("../admin", "read").is_err());
    }

    #[test]
    fn grade_is_a_table() {
        let text = grade_text(&json!({"score": 1, "max": 2, "totalWeight": 3,
            "detail": [{"id": "read-spec", "weight": 1, "status": "passed"}]}));
        assert!(
            text.starts_with("criterion  weight  status\nread-spec  1       passed"),
            "{text}"
        );
        assert!(text.ends_with("score 1 of 2 (total weight 3)"));
    }
}
