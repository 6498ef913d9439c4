//! Keys (admin): mint, list, read, change, revoke, rotate, usage.
//! Every route needs the `ADMIN_API_KEY` bearer (503 when unset, 403 for a
//! normal key). The plain key appears only in the mint and rotate answers.

use serde::Deserialize;
use serde_json::{json, Value};
use worker::{wasm_bindgen::JsValue, D1Database, Request, Response};

use crate::api::dispatch::Ctx;
use crate::api::error::{ApiError, FieldError};
use crate::billing::ledger_sql::ENSURE_ACCOUNT;
use crate::billing::rules::micros_to_usd;
use crate::keys::api_key::{self, NewKeyRequest};
use crate::keys::records::{self, KeyRow, Set, KEY_COLUMNS};
use crate::platform::bindings;
use crate::{api::auth, common::ids, common::paging, common::time, platform::http};

/// Shown with every newly minted key.
const SHOWN_ONCE: &str = "Store this key now: it is shown only once and cannot be retrieved.";

fn nullable_i64(v: Option<i64>) -> JsValue {
    v.map(|n| JsValue::from_f64(n as f64))
        .unwrap_or(JsValue::NULL)
}

fn nullable_str(v: &Option<String>) -> JsValue {
    v.as_deref().map(JsValue::from_str).unwrap_or(JsValue::NULL)
}

fn num(n: i64) -> JsValue {
    JsValue::from_f64(n as f64)
}

/// A fresh key with `prefix`, its hash and display prefix.
fn new_secret(prefix: &str, ctx: &Ctx<'_>) -> Result<(String, String, String), ApiError> {
    let key = loop {
        if let Some(key) = api_key::build_key(prefix, &ids::random_bytes::<64>()?) {
            break key;
        }
    };
    let hash = api_key::hash_key(&key, ctx.cfg.key_pepper.as_deref().map(str::as_bytes));
    let shown = api_key::display_prefix(&key);
    Ok((key, hash, shown))
}

pub async fn create(mut req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    auth::require_admin(&req, ctx).await?;
    let body: NewKeyRequest = http::read_json(&mut req).await?;
    let new = api_key::validate_new_key(body, ctx.now_ms).map_err(ApiError::ValidationFailed)?;
    let db = bindings::db(ctx.env)?;

    let mut statements = Vec::new();
    let account_id = match &new.account_id {
        Some(existing) => {
            let found: Option<String> = db
                .prepare("SELECT id FROM accounts WHERE id = ?1")
                .bind(&[existing.as_str().into()])?
                .first(Some("id"))
                .await?;
            if found.is_none() {
                return Err(ApiError::ValidationFailed(vec![FieldError::new(
                    "accountId",
                    "no such account",
                )]));
            }
            existing.clone()
        }
        None => {
            let id = ids::new_id("acct_")?;
            statements.push(
                db.prepare("INSERT INTO accounts (id, created_at, updated_at) VALUES (?1, ?2, ?2)")
                    .bind(&[id.as_str().into(), num(ctx.now_ms)])?,
            );
            id
        }
    };
    // Every key's account has a billing account (balance 0) from the start.
    statements.push(
        db.prepare(ENSURE_ACCOUNT)
            .bind(&[account_id.as_str().into(), num(ctx.now_ms)])?,
    );

    let (key, hash, key_prefix) = new_secret(&new.prefix, ctx)?;
    let key_id = ids::new_id("key_")?;
    let permissions = api_key::permissions_to_column(&new.permissions);
    statements.push(
        db.prepare(
            "INSERT INTO api_keys (id, account_id, key_hash, key_prefix, name, description, metadata, \
             key_type, permissions, expires_at, daily_limit_micros, monthly_limit_micros, \
             rate_limit_requests, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14)",
        )
        .bind(&[
            key_id.as_str().into(),
            account_id.as_str().into(),
            hash.as_str().into(),
            key_prefix.as_str().into(),
            new.name.as_str().into(),
            nullable_str(&new.description),
            nullable_str(&new.metadata),
            new.key_type.as_str().into(),
            permissions.as_str().into(),
            nullable_i64(new.expires_at_ms),
            nullable_i64(new.daily_limit_micros),
            nullable_i64(new.monthly_limit_micros),
            nullable_i64(new.rate_limit_requests),
            num(ctx.now_ms),
        ])?,
    );
    db.batch(statements).await?;

    http::json(
        201,
        &json!({
            "id": key_id,
            "key": key,
            "keyPrefix": key_prefix,
            "accountId": account_id,
            "name": new.name,
            "keyType": new.key_type,
            "permissions": new.permissions,
            "expiresAt": new.expires_at_ms.map(time::rfc3339),
            "dailyLimit": new.daily_limit_micros.map(micros_to_usd),
            "monthlyLimit": new.monthly_limit_micros.map(micros_to_usd),
            "rateLimit": new.rate_limit_requests,
            "createdAt": time::rfc3339(ctx.now_ms),
            "warning": SHOWN_ONCE,
        }),
    )
}

/// The key with this id, or 404 `key_not_found`.
pub async fn load_key(db: &D1Database, id: &str) -> Result<KeyRow, ApiError> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1");
    db.prepare(sql)
        .bind(&[id.into()])?
        .first::<KeyRow>(None)
        .await?
        .ok_or(ApiError::KeyNotFound)
}

pub async fn list(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    auth::require_admin(&req, ctx).await?;
    let limit = paging::limit(http::query(&req, "limit")?.as_deref());
    let offset = paging::offset(http::query(&req, "offset")?.as_deref());
    let (limit, offset) = match (limit, offset) {
        (Ok(l), Ok(o)) => (l, o),
        (l, o) => {
            let errors = [l.err(), o.err()].into_iter().flatten().collect();
            return Err(ApiError::ValidationFailed(errors));
        }
    };
    let db = bindings::db(ctx.env)?;
    let sql = format!(
        "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at DESC, id LIMIT ?1 OFFSET ?2"
    );
    let rows: Vec<KeyRow> = db
        .prepare(sql)
        .bind(&[num(limit), num(offset)])?
        .all()
        .await?
        .results()?;
    #[derive(Deserialize)]
    struct Total {
        total: i64,
    }
    let total = db
        .prepare("SELECT COUNT(*) AS total FROM api_keys")
        .first::<Total>(None)
        .await?
        .map(|t| t.total)
        .unwrap_or(0);
    let keys: Vec<Value> = rows.iter().map(|r| r.view(ctx.now_ms)).collect();
    http::json(
        200,
        &json!({"keys": keys, "total": total, "limit": limit, "offset": offset}),
    )
}

pub async fn get(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    auth::require_admin(&req, ctx).await?;
    let db = bindings::db(ctx.env)?;
    let row = load_key(&db, ctx.param("id")?).await?;
    http::json(200, &row.view(ctx.now_ms))
}

/// Applies validated column changes to one key (columns from a fixed list).
pub async fn apply_patch(
    db: &D1Database,
    id: &str,
    patch: &records::Patch,
    now_ms: i64,
) -> Result<(), ApiError> {
    let mut sets = Vec::new();
    let mut args = Vec::new();
    for (i, (column, value)) in patch.iter().enumerate() {
        sets.push(format!("{column} = ?{}", i + 1));
        args.push(match value {
            Set::Text(t) => nullable_str(t),
            Set::Int(n) => nullable_i64(*n),
        });
    }
    let n = args.len();
    sets.push(format!("updated_at = ?{}", n + 1));
    args.push(num(now_ms));
    args.push(id.into());
    let sql = format!(
        "UPDATE api_keys SET {} WHERE id = ?{}",
        sets.join(", "),
        n + 2
    );
    db.prepare(sql).bind(&args)?.run().await?;
    Ok(())
}

pub async fn update(mut req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    auth::require_admin(&req, ctx).await?;
    let body: Value = http::read_json(&mut req).await?;
    let patch = records::validate_patch(&body).map_err(ApiError::ValidationFailed)?;
    let db = bindings::db(ctx.env)?;
    let id = ctx.param("id")?;
    load_key(&db, id).await?;
    apply_patch(&db, id, &patch, ctx.now_ms).await?;
    http::json(200, &load_key(&db, id).await?.view(ctx.now_ms))
}

/// Revokes at once: the next request with the key answers 401. Revoking a
/// revoked key keeps its first revocation time.
pub async fn revoke(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    auth::require_admin(&req, ctx).await?;
    let db = bindings::db(ctx.env)?;
    let id = ctx.param("id")?;
    load_key(&db, id).await?;
    db.prepare(
        "UPDATE api_keys SET revoked_at = ?1, updated_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
    )
    .bind(&[num(ctx.now_ms), id.into()])?
    .run()
    .await?;
    let row = load_key(&db, id).await?;
    let mut view = row.view(ctx.now_ms);
    view["revoked"] = json!(true);
    http::json(200, &view)
}

/// A new key with the same account, settings and this period's spend; the
/// old one revoked in the same batch. 409 `key_revoked` for a revoked key.
pub async fn rotate(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    auth::require_admin(&req, ctx).await?;
    let db = bindings::db(ctx.env)?;
    let old_id = ctx.param("id")?;
    let old = load_key(&db, old_id).await?;
    if old.revoked_at.is_some() {
        return Err(ApiError::KeyRevoked);
    }
    let (key, hash, key_prefix) = new_secret(&old.mint_prefix(), ctx)?;
    let new_id = ids::new_id("key_")?;
    let insert = db
        .prepare(
            "INSERT INTO api_keys (id, account_id, key_hash, key_prefix, name, description, metadata, \
             key_type, permissions, expires_at, daily_limit_micros, monthly_limit_micros, \
             rate_limit_requests, created_at, updated_at) \
             SELECT ?1, account_id, ?2, ?3, name, description, metadata, key_type, permissions, \
                    expires_at, daily_limit_micros, monthly_limit_micros, rate_limit_requests, ?4, ?4 \
             FROM api_keys WHERE id = ?5 AND revoked_at IS NULL",
        )
        .bind(&[
            new_id.as_str().into(),
            hash.as_str().into(),
            key_prefix.as_str().into(),
            num(ctx.now_ms),
            old_id.into(),
        ])?;
    // Spend so far carries over, so rotating never resets a spending limit.
    let spend = db
        .prepare(
            "INSERT INTO key_spend (key_id, period, spent_micros, held_micros) \
             SELECT ?1, period, spent_micros, 0 FROM key_spend \
             WHERE key_id = ?2 AND EXISTS (SELECT 1 FROM api_keys WHERE id = ?1)",
        )
        .bind(&[new_id.as_str().into(), old_id.into()])?;
    let revoke = db
        .prepare(
            "UPDATE api_keys SET revoked_at = ?1, updated_at = ?1 \
             WHERE id = ?2 AND revoked_at IS NULL AND EXISTS (SELECT 1 FROM api_keys WHERE id = ?3)",
        )
        .bind(&[num(ctx.now_ms), old_id.into(), new_id.as_str().into()])?;
    db.batch(vec![insert, spend, revoke]).await?;
    // The guard failed only if a concurrent revoke won.
    let new = load_key(&db, &new_id).await.map_err(|e| match e {
        ApiError::KeyNotFound => ApiError::KeyRevoked,
        other => other,
    })?;
    let mut body = new.view(ctx.now_ms);
    body["key"] = json!(key);
    body["rotatedFrom"] = json!(old_id);
    body["warning"] = json!(SHOWN_ONCE);
    http::json(201, &body)
}

#[derive(Deserialize)]
struct UsageTotals {
    executions: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_micros: i64,
    charged_micros: i64,
}

#[derive(Deserialize)]
struct UsageEvent {
    id: String,
    run_id: Option<String>,
    input_tokens: i64,
    output_tokens: i64,
    cost_micros: i64,
    charged_micros: i64,
    created_at: i64,
}

pub const RECENT_USAGE: i64 = 20;

/// Usage totals of one key, its spend this day and month, and its most
/// recent executions.
pub async fn usage(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    auth::require_admin(&req, ctx).await?;
    let db = bindings::db(ctx.env)?;
    let row = load_key(&db, ctx.param("id")?).await?;
    let totals = db
        .prepare(
            "SELECT COUNT(*) AS executions, COALESCE(SUM(input_tokens), 0) AS input_tokens, \
             COALESCE(SUM(output_tokens), 0) AS output_tokens, COALESCE(SUM(cost_micros), 0) AS cost_micros, \
             COALESCE(SUM(charged_micros), 0) AS charged_micros FROM usage_events WHERE key_id = ?1",
        )
        .bind(&[row.id.as_str().into()])?
        .first::<UsageTotals>(None)
        .await?
        .ok_or_else(|| ApiError::Internal("usage totals returned no row".into()))?;
    let recent: Vec<UsageEvent> = db
        .prepare(
            "SELECT id, run_id, input_tokens, output_tokens, cost_micros, charged_micros, created_at \
             FROM usage_events WHERE key_id = ?1 ORDER BY created_at DESC, id LIMIT ?2",
        )
        .bind(&[row.id.as_str().into(), num(RECENT_USAGE)])?
        .all()
        .await?
        .results()?;
    let budget = crate::billing::ledger_d1::budget_of_key(&db, &row.id, ctx.now_ms)
        .await?
        .ok_or(ApiError::KeyNotFound)?;
    let recent: Vec<Value> = recent
        .iter()
        .map(|e| {
            json!({
                "id": e.id,
                "runId": e.run_id,
                "inputTokens": e.input_tokens,
                "outputTokens": e.output_tokens,
                "totalTokens": e.input_tokens + e.output_tokens,
                "cost": micros_to_usd(e.cost_micros),
                "charged": micros_to_usd(e.charged_micros),
                "createdAt": time::rfc3339(e.created_at),
            })
        })
        .collect();
    http::json(
        200,
        &json!({
            "keyId": row.id,
            "accountId": row.account_id,
            "keyType": row.key_type,
            "totals": {
                "executions": totals.executions,
                "inputTokens": totals.input_tokens,
                "outputTokens": totals.output_tokens,
                "totalTokens": totals.input_tokens + totals.output_tokens,
                "cost": micros_to_usd(totals.cost_micros),
                "charged": micros_to_usd(totals.charged_micros),
            },
            "spentToday": micros_to_usd(budget.spent_today),
            "spentThisMonth": micros_to_usd(budget.spent_month),
            "recent": recent,
        }),
    )
}
