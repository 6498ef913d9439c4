//! `admin …`: keys, credits, limits (with the admin key).

use serde_json::{json, Value};

use crate::args::{AdminCommand, KeyType, KeysCommand};
use crate::client::Api;
use crate::exit::{Failure, Result};
use crate::output::{table, usd};
use crate::Ctx;

/// A key id, checked before it goes into a URL.
fn checked_key_id(id: &str) -> Result<&str> {
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(Failure::usage(format!("{id:?} is not a key id")));
    }
    Ok(id)
}

fn key_path(id: &str, rest: &str) -> Result<String> {
    Ok(format!("/admin/keys/{}{rest}", checked_key_id(id)?))
}

/// A new key, shown once (its `warning` says so).
fn new_key_text(b: &Value) -> String {
    let credits = match b.get("creditsBalance") {
        Some(balance) => format!("credits   {}\n", usd(balance)),
        None => String::new(),
    };
    format!(
        "key       {}\nid        {}\naccount   {}\n{credits}{}",
        b["key"].as_str().unwrap_or(""),
        b["id"].as_str().unwrap_or(""),
        b["accountId"].as_str().unwrap_or(""),
        b["warning"]
            .as_str()
            .unwrap_or("Save the key now: it is not shown again.")
    )
}

fn key_text(k: &Value) -> String {
    format!(
        "{}  {}  {}  {}{}",
        k["id"].as_str().unwrap_or(""),
        k["name"].as_str().unwrap_or(""),
        k["keyType"].as_str().unwrap_or(""),
        k["keyPrefix"].as_str().unwrap_or(""),
        match k["revokedAt"].as_str() {
            Some(at) => format!("  revoked {at}"),
            None => String::new(),
        }
    )
}

/// `POST /billing/admin/:id/credits`, with an `Idempotency-Key` of its
/// own, so the client's retry of it never credits twice.
fn add_credits(api: &Api, key_id: &str, usd: f64, description: &str) -> Result<Value> {
    let idem = crate::stream::idempotency_key();
    let path = format!("/billing/admin/{}/credits", checked_key_id(key_id)?);
    let req = json!({ "amount": usd, "description": description });
    Ok(api
        .json_with(
            "POST",
            &path,
            Some(&req),
            &[],
            &[("idempotency-key", &idem)],
        )?
        .body)
}

pub fn admin(ctx: &Ctx, cmd: AdminCommand) -> Result<()> {
    let api = ctx.admin_api()?;
    let show = |body: &Value, text: &dyn Fn(&Value) -> String| ctx.out.result(body, || text(body));
    match cmd {
        AdminCommand::Keys(KeysCommand::Create {
            name,
            key_type,
            daily,
            monthly,
            account,
            permissions,
            prefix,
            expires_in,
            description,
            credits,
        }) => {
            let mut req = json!({ "name": name });
            if let Some(t) = key_type {
                req["keyType"] = json!(match t {
                    KeyType::Standard => "standard",
                    KeyType::Internal => "internal",
                });
            }
            let optional = [
                ("dailyLimit", daily.map(|v| json!(v))),
                ("monthlyLimit", monthly.map(|v| json!(v))),
                ("accountId", account.map(|v| json!(v))),
                ("prefix", prefix.map(|v| json!(v))),
                ("expiresIn", expires_in.map(|v| json!(v))),
                ("description", description.map(|v| json!(v))),
                (
                    "permissions",
                    (!permissions.is_empty()).then(|| json!(permissions)),
                ),
            ];
            for (field, value) in optional {
                if let Some(v) = value {
                    req[field] = v;
                }
            }
            let mut body = api.post("/admin/keys", &req)?;
            let credited = match (credits, body["id"].as_str()) {
                (Some(usd), Some(id)) => Some(add_credits(&api, id, usd, "credits at creation")),
                _ => None,
            };
            if let Some(Ok(answer)) = &credited {
                body["creditsBalance"] = answer["account"]["creditsBalance"].clone();
            }
            show(&body, &new_key_text);
            if let Some(Err(f)) = credited {
                return Err(f
                    .context("the key was made, but adding its credits failed")
                    .shown());
            }
        }
        AdminCommand::Keys(KeysCommand::List { limit, offset }) => {
            let mut query = Vec::new();
            if let Some(l) = limit {
                query.push(format!("limit={l}"));
            }
            if let Some(o) = offset {
                query.push(format!("offset={o}"));
            }
            let path = if query.is_empty() {
                "/admin/keys".into()
            } else {
                format!("/admin/keys?{}", query.join("&"))
            };
            let body = api.get(&path)?;
            show(&body, &|b| {
                let rows: Vec<Vec<String>> = b["keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|k| {
                        vec![
                            k["id"].as_str().unwrap_or("").into(),
                            k["name"].as_str().unwrap_or("").into(),
                            k["keyType"].as_str().unwrap_or("").into(),
                            k["accountId"].as_str().unwrap_or("").into(),
                            k["revokedAt"]
                                .as_str()
                                .map(|_| "revoked")
                                .unwrap_or("")
                                .into(),
                        ]
                    })
                    .collect();
                format!(
                    "{}\n{} of {}",
                    table(&["id", "name", "type", "account", ""], &rows),
                    rows.len(),
                    b["total"]
                )
            });
        }
        AdminCommand::Keys(KeysCommand::Get { id }) => {
            let body = api.get(&key_path(&id, "")?)?;
            show(&body, &key_text);
        }
        AdminCommand::Keys(KeysCommand::Revoke { id }) => {
            let answer = api.json("DELETE", &key_path(&id, "")?, None, &[])?;
            show(&answer.body, &|_| format!("revoked {id}"));
        }
        AdminCommand::Keys(KeysCommand::Rotate { id }) => {
            let body = api.post(&key_path(&id, "/rotate")?, &json!({}))?;
            show(&body, &new_key_text);
        }
        AdminCommand::Credits {
            key_id,
            amount,
            description,
        } => {
            let body = add_credits(&api, &key_id, amount, &description)?;
            show(&body, &|b| {
                format!("balance {}", usd(&b["account"]["creditsBalance"]))
            });
        }
        AdminCommand::Limits {
            key_id,
            daily,
            monthly,
        } => {
            if daily.is_none() && monthly.is_none() {
                return Err(Failure::usage("give --daily and/or --monthly"));
            }
            let mut req = json!({});
            if let Some(d) = daily {
                req["dailyLimit"] = json!(d);
            }
            if let Some(m) = monthly {
                req["monthlyLimit"] = json!(m);
            }
            let path = format!("/billing/admin/{}/limits", checked_key_id(&key_id)?);
            let body = api.post(&path, &req)?;
            show(&body, &|_| format!("limits of {key_id} set"));
        }
    }
    Ok(())
}
