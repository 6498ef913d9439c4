//! `login`, `logout`, `account`.

use std::io::{BufRead, IsTerminal};

use serde_json::{json, Value};

use crate::client::Api;
use crate::config;
use crate::exit::{Failure, Result};
use crate::output::usd;
use crate::Ctx;

/// The key to log in with: `--key` or `CLOUDBOX_API_KEY` (already in the
/// settings), else stdin — asked for without echo on a terminal.
fn key_to_check(ctx: &Ctx) -> Result<String> {
    if let Some(key) = &ctx.settings.key {
        if ctx.global.key.is_some() || std::env::var_os("CLOUDBOX_API_KEY").is_some() {
            return Ok(key.clone());
        }
    }
    let stdin = std::io::stdin();
    let key = if stdin.is_terminal() {
        if ctx.global.no_input {
            return Err(Failure::usage(
                "no key: pass it on stdin, in CLOUDBOX_API_KEY or with --key",
            ));
        }
        rpassword::prompt_password("API key: ")
            .map_err(|e| Failure::usage(format!("reading the key: {e}")))?
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::usage(format!("reading the key from stdin: {e}")))?;
        line
    };
    let key = key.trim().to_string();
    if key.is_empty() {
        return Err(Failure::usage("no key given"));
    }
    Ok(key)
}

pub fn login(ctx: &Ctx) -> Result<()> {
    let key = key_to_check(ctx)?;
    let api = Api::new(&ctx.settings.url, Some(key.clone()));
    let account = api.get("/billing/account")?;
    let mut file = ctx.config.clone();
    let profile = file.profiles.entry(ctx.profile.clone()).or_default();
    profile.url = Some(ctx.settings.url.clone());
    profile.key = Some(key);
    if file.default.is_none() {
        file.default = Some(ctx.profile.clone());
    }
    config::save(&ctx.config_path, &file)?;
    let account_id = account["id"].as_str().unwrap_or("").to_string();
    let value = json!({
        "profile": ctx.profile,
        "url": ctx.settings.url,
        "accountId": account_id,
        "config": ctx.config_path.display().to_string(),
    });
    ctx.out.result(&value, || {
        format!(
            "logged in to {} as account {account_id} (profile {}, saved in {})",
            ctx.settings.url,
            ctx.profile,
            ctx.config_path.display()
        )
    });
    Ok(())
}

pub fn logout(ctx: &Ctx) -> Result<()> {
    let mut file = ctx.config.clone();
    let had = file
        .profiles
        .get_mut(&ctx.profile)
        .and_then(|p| p.key.take())
        .is_some();
    if had {
        config::save(&ctx.config_path, &file)?;
    }
    let value = json!({ "profile": ctx.profile, "loggedOut": had });
    ctx.out.result(&value, || {
        if had {
            format!("forgot the key of profile {}", ctx.profile)
        } else {
            format!("profile {} had no key", ctx.profile)
        }
    });
    Ok(())
}

pub fn account(ctx: &Ctx) -> Result<()> {
    let a = ctx.api().get("/billing/account")?;
    ctx.out.result(&a, || account_text(&a));
    Ok(())
}

fn limit(v: &Value) -> String {
    if v.is_null() {
        "none".into()
    } else {
        usd(v)
    }
}

fn account_text(a: &Value) -> String {
    let mut lines = vec![
        format!("account   {}", a["id"].as_str().unwrap_or("")),
        format!("balance   {}", usd(&a["creditsBalance"])),
        format!("held      {}", usd(&a["heldCredits"])),
        format!(
            "spent     {} today, {} this month, {} in all",
            usd(&a["spentToday"]),
            usd(&a["spentThisMonth"]),
            usd(&a["totalSpent"])
        ),
        format!(
            "limits    daily {}, monthly {}",
            limit(&a["dailyLimit"]),
            limit(&a["monthlyLimit"])
        ),
    ];
    for alert in a["alerts"].as_array().into_iter().flatten() {
        let text = alert["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| alert.to_string());
        lines.push(format!("alert     {text}"));
    }
    lines.join("\n")
}
