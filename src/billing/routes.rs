//! Billing: the caller's account, transactions and usage; admin credits and
//! limits. Money moves only through `ledger_sql` plans (one batch each).

use serde::Deserialize;
use serde_json::{json, Value};
use worker::{D1Database, Request, Response};

use crate::api::dispatch::Ctx;
use crate::api::error::{ApiError, FieldError};
use crate::api::idempotency::{self, Slot};
use crate::api::idempotency_d1::{self, Begin};
use crate::billing::ledger_d1::{self, run_plan, BudgetRow};
use crate::billing::ledger_sql::{self as sql};
use crate::billing::rules::{self, micros_to_usd};
use crate::common::sql::{Arg, Stmt};
use crate::keys::routes::{apply_patch, load_key};
use crate::platform::bindings;
use crate::platform::config::BillingVars;
use crate::platform::config::Config;
use crate::{api::auth, common::ids, common::paging, common::time, keys::records, platform::http};

/// A credit request older than this with no answer died; its key may be reused.
const CREDIT_STALE_MS: i64 = 60_000;
const MAX_CREDIT_USD: f64 = 1_000_000.0;
const MAX_DESCRIPTION: usize = 500;

/// `GET /billing/account` as seen through one key.
fn account_view(row: &BudgetRow, vars: &BillingVars) -> Value {
    let state = row.state();
    let alerts = rules::alerts(row.key_type(), &state, vars.low_balance);
    json!({
        "id": row.account_id,
        "apiKeyId": row.key_id,
        "keyType": row.key_type,
        "creditsBalance": micros_to_usd(row.balance_micros),
        "heldCredits": micros_to_usd(row.held_micros),
        "availableCredits": micros_to_usd(state.available()),
        "totalSpent": micros_to_usd(row.total_spent_micros),
        "dailyLimit": row.daily_limit_micros.map(micros_to_usd),
        "monthlyLimit": row.monthly_limit_micros.map(micros_to_usd),
        "spentToday": micros_to_usd(row.spent_today),
        "spentThisMonth": micros_to_usd(row.spent_month),
        "alerts": alerts,
        "createdAt": time::rfc3339(row.created_at),
        "updatedAt": time::rfc3339(row.updated_at),
    })
}

async fn account_of(db: &D1Database, key_id: &str, now_ms: i64) -> Result<BudgetRow, ApiError> {
    ledger_d1::budget_of_key(db, key_id, now_ms)
        .await?
        .ok_or(ApiError::KeyNotFound)
}

pub async fn account(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let caller = auth::authenticate(&req, ctx).await?;
    let db = bindings::db(ctx.env)?;
    let row = account_of(&db, &caller.key_id, ctx.now_ms).await?;
    let vars = Config::from_env(ctx.env).billing;
    let mut resp = http::json(200, &account_view(&row, &vars))?;
    let alerts = rules::alerts(row.key_type(), &row.state(), vars.low_balance);
    if let Some(warning) = rules::budget_warning(&alerts) {
        let _ = resp.headers_mut().set("x-budget-warning", &warning);
    }
    Ok(resp)
}

#[derive(Deserialize)]
struct Entry {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    amount_micros: i64,
    balance_after_micros: i64,
    description: Option<String>,
    run_id: Option<String>,
    hold_id: Option<String>,
    created_at: i64,
}

const ENTRY_COLUMNS: &str =
    "id, type, amount_micros, balance_after_micros, description, run_id, hold_id, created_at";

fn entry_view(e: &Entry) -> Value {
    let mut v = json!({
        "id": e.id,
        "type": e.kind,
        "amount": micros_to_usd(e.amount_micros),
        "balanceAfter": micros_to_usd(e.balance_after_micros),
        "description": e.description,
        "createdAt": time::rfc3339(e.created_at),
    });
    if let Some(run) = &e.run_id {
        v["runId"] = json!(run);
    }
    if let Some(hold) = &e.hold_id {
        v["holdId"] = json!(hold);
    }
    v
}

/// Newest first; `cursor` is the id of the last transaction of the previous
/// page (`nextCursor`). A cursor that is not one of the account's
/// transactions answers 400.
pub async fn transactions(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let caller = auth::authenticate(&req, ctx).await?;
    let limit = paging::limit(http::query(&req, "limit")?.as_deref())
        .map_err(|e| ApiError::ValidationFailed(vec![e]))?;
    let db = bindings::db(ctx.env)?;
    let before = match http::query(&req, "cursor")? {
        None => i64::MAX,
        Some(cursor) => {
            #[derive(Deserialize)]
            struct Seq {
                seq: i64,
            }
            let seq = ledger_d1::first::<Seq>(
                &db,
                &Stmt {
                    sql: "SELECT seq FROM ledger_entries WHERE id = ?1 AND account_id = ?2",
                    args: vec![Arg::Text(cursor), Arg::Text(caller.account_id.clone())],
                },
            )
            .await?;
            seq.ok_or_else(|| {
                ApiError::ValidationFailed(vec![FieldError::new(
                    "cursor",
                    "not a cursor of this account's transactions",
                )])
            })?
            .seq
        }
    };
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE account_id = ?1 AND seq < ?2 \
         ORDER BY seq DESC LIMIT ?3"
    );
    let mut rows: Vec<Entry> = db
        .prepare(sql)
        .bind(&[
            caller.account_id.as_str().into(),
            (before as f64).into(),
            ((limit + 1) as f64).into(),
        ])?
        .all()
        .await?
        .results()?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = more.then(|| rows.last().map(|e| e.id.clone())).flatten();
    let list: Vec<Value> = rows.iter().map(entry_view).collect();
    http::json(
        200,
        &json!({"transactions": list, "limit": limit, "nextCursor": next}),
    )
}

async fn load_entry(db: &D1Database, id: &str, account_id: &str) -> Result<Entry, ApiError> {
    let sql =
        format!("SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE id = ?1 AND account_id = ?2");
    db.prepare(sql)
        .bind(&[id.into(), account_id.into()])?
        .first::<Entry>(None)
        .await?
        .ok_or(ApiError::TransactionNotFound)
}

/// One transaction of the caller's account; another account's id is 404.
pub async fn transaction(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let caller = auth::authenticate(&req, ctx).await?;
    let db = bindings::db(ctx.env)?;
    let entry = load_entry(&db, ctx.param("id")?, &caller.account_id).await?;
    http::json(200, &entry_view(&entry))
}

#[derive(Deserialize)]
struct DayUsage {
    day: String,
    executions: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_micros: i64,
    charged_micros: i64,
    container_ms: i64,
}

fn usage_json(n: &[i64; 6]) -> Value {
    let [executions, input, output, cost, charged, container_ms] = *n;
    json!({
        "executions": executions,
        "inputTokens": input,
        "outputTokens": output,
        "totalTokens": input + output,
        "cost": micros_to_usd(cost),
        "charged": micros_to_usd(charged),
        // Repo runs are metered by container time (RUN_USD_PER_MINUTE).
        "containerSeconds": container_ms as f64 / 1000.0,
    })
}

/// The account's usage by UTC day over `from..=to` (default: 30 days).
pub async fn usage(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let caller = auth::authenticate(&req, ctx).await?;
    let (from, to) = rules::usage_range(
        http::query(&req, "from")?.as_deref(),
        http::query(&req, "to")?.as_deref(),
        ctx.now_ms,
    )
    .map_err(ApiError::ValidationFailed)?;
    let db = bindings::db(ctx.env)?;
    let rows: Vec<DayUsage> = db
        .prepare(
            "SELECT day, COUNT(*) AS executions, SUM(input_tokens) AS input_tokens, \
             SUM(output_tokens) AS output_tokens, SUM(cost_micros) AS cost_micros, \
             SUM(charged_micros) AS charged_micros, SUM(container_ms) AS container_ms \
             FROM usage_events WHERE account_id = ?1 AND day >= ?2 AND day <= ?3 \
             GROUP BY day ORDER BY day",
        )
        .bind(&[
            caller.account_id.as_str().into(),
            from.as_str().into(),
            to.as_str().into(),
        ])?
        .all()
        .await?
        .results()?;
    let mut total = [0i64; 6];
    let days: Vec<Value> = rows
        .iter()
        .map(|d| {
            let n = [
                d.executions,
                d.input_tokens,
                d.output_tokens,
                d.cost_micros,
                d.charged_micros,
                d.container_ms,
            ];
            for (t, v) in total.iter_mut().zip(n) {
                *t += v;
            }
            let mut v = usage_json(&n);
            v["date"] = json!(d.day);
            v
        })
        .collect();
    http::json(
        200,
        &json!({
            "from": from,
            "to": to,
            "totals": usage_json(&total),
            "days": days,
        }),
    )
}

#[derive(Debug, PartialEq)]
struct CreditBody {
    amount_micros: i64,
    description: String,
}

/// `{amount, description?}`: a non-zero USD amount within ±1e6.
fn validate_credit(body: &Value) -> Result<CreditBody, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Some(map) = body.as_object() else {
        return Err(vec![FieldError::new("body", "must be a JSON object")]);
    };
    let amount = match map.get("amount").and_then(Value::as_f64) {
        Some(usd) if usd.abs() <= MAX_CREDIT_USD => match rules::usd_to_micros(usd) {
            Some(m) if m != 0 => Some(m),
            _ => None,
        },
        _ => None,
    };
    if amount.is_none() {
        errors.push(FieldError::new(
            "amount",
            "a non-zero USD amount within ±1000000 (negative: a correction)",
        ));
    }
    let description = match map.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) if d.chars().count() <= MAX_DESCRIPTION => Some(d.clone()),
        Some(_) => {
            errors.push(FieldError::new(
                "description",
                format!("a string of at most {MAX_DESCRIPTION} characters"),
            ));
            None
        }
    };
    for k in map.keys() {
        if k != "amount" && k != "description" {
            errors.push(FieldError::new(k.as_str(), "unknown field"));
        }
    }
    match amount {
        Some(amount_micros) if errors.is_empty() => Ok(CreditBody {
            amount_micros,
            description: description.unwrap_or_else(|| {
                if amount_micros > 0 {
                    "credit"
                } else {
                    "adjustment"
                }
                .to_string()
            }),
        }),
        _ => Err(errors),
    }
}

/// Adds credits to the key's account (a negative amount is an adjustment
/// that may not take the balance below what is held, hence never below 0).
/// With `Idempotency-Key`, a retry replays the first answer.
pub async fn admin_credits(mut req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    auth::require_admin(&req, ctx).await?;
    let idem_key = idempotency_d1::header_key(&req)?;
    let bytes = http::read_body(&mut req, http::MAX_JSON_BYTES).await?;
    let body: Value = http::parse_json(&bytes)?;
    let db = bindings::db(ctx.env)?;
    let key = load_key(&db, ctx.param("apiKeyId")?).await?;

    let claim = match idem_key {
        None => None,
        Some(idem) => {
            let slot = Slot {
                account_id: key.account_id.clone(),
                scope: "billing.credits",
                key: idem,
            };
            let fp = idempotency::fingerprint("POST", &http::path(&req), &bytes);
            let form = idempotency::Form::Json;
            match idempotency_d1::begin(&db, slot, &fp, form, ctx.now_ms, CREDIT_STALE_MS).await? {
                Begin::Replay(resp) => return Ok(resp),
                Begin::Proceed(claim) => Some(claim),
                // Only the events form attaches; a credit starts no run.
                Begin::Attach { .. } => return Err(ApiError::Internal("credit: attach".into())),
            }
        }
    };
    let outcome = apply_credit(&db, ctx, &key, &body).await;
    match claim {
        Some(claim) => idempotency_d1::finish(&db, claim, outcome, ctx.request_id).await,
        None => {
            let (status, body) = outcome?;
            http::json(status, &body)
        }
    }
}

async fn apply_credit(
    db: &D1Database,
    ctx: &Ctx<'_>,
    key: &records::KeyRow,
    body: &Value,
) -> Result<(u16, Value), ApiError> {
    let credit = validate_credit(body).map_err(ApiError::ValidationFailed)?;
    let entry_id = ids::new_id("txn_")?;
    let applied = run_plan(
        db,
        &sql::credit_plan(&sql::Credit {
            entry_id: &entry_id,
            account_id: &key.account_id,
            key_id: Some(&key.id),
            amount: credit.amount_micros,
            description: &credit.description,
            now_ms: ctx.now_ms,
        }),
    )
    .await?;
    if !applied {
        return Err(ApiError::ValidationFailed(vec![FieldError::new(
            "amount",
            "this correction would take the balance below 0 (or below the credits held for runs)",
        )]));
    }
    let entry = load_entry(db, &entry_id, &key.account_id).await?;
    let row = account_of(db, &key.id, ctx.now_ms).await?;
    let vars = Config::from_env(ctx.env).billing;
    Ok((
        200,
        json!({
            "success": true,
            "account": account_view(&row, &vars),
            "transaction": entry_view(&entry),
        }),
    ))
}

/// Sets or clears (null) the key's daily and monthly spending limits.
pub async fn admin_limits(mut req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    auth::require_admin(&req, ctx).await?;
    let body: Value = http::read_json(&mut req).await?;
    let patch = records::validate_limits(&body).map_err(ApiError::ValidationFailed)?;
    let db = bindings::db(ctx.env)?;
    let key = load_key(&db, ctx.param("apiKeyId")?).await?;
    apply_patch(&db, &key.id, &patch, ctx.now_ms).await?;
    let row = account_of(&db, &key.id, ctx.now_ms).await?;
    let vars = Config::from_env(ctx.env).billing;
    http::json(
        200,
        &json!({"success": true, "account": account_view(&row, &vars)}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_are_non_zero_bounded_amounts() {
        assert_eq!(
            validate_credit(&json!({"amount": 10.5})).unwrap(),
            CreditBody {
                amount_micros: 10_500_000,
                description: "credit".into()
            }
        );
        assert_eq!(
            validate_credit(&json!({"amount": -1, "description": "refund fix"}))
                .unwrap()
                .description,
            "refund fix"
        );
        for bad in [
            json!({"amount": 0}),
            json!({"amount": 0.0000001}),
            json!({"amount": "5"}),
            json!({"amount": 2e6}),
            json!({}),
            json!({"amount": 1, "extra": true}),
            json!({"amount": 1, "description": 5}),
        ] {
            assert!(validate_credit(&bad).is_err(), "{bad}");
        }
    }
}
