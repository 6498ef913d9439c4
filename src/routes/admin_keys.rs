//! Keys (admin): `POST /admin/keys`.

use serde_json::json;
use worker::{wasm_bindgen::JsValue, Request, Response};

use super::Ctx;
use crate::error::{ApiError, FieldError};
use crate::keys::{self, NewKeyRequest};
use crate::{auth, http, ids, time};

/// Shown with every newly minted key.
const SHOWN_ONCE: &str = "Store this key now: it is shown only once and cannot be retrieved.";

fn nullable_i64(v: Option<i64>) -> JsValue {
    v.map(|n| JsValue::from_f64(n as f64))
        .unwrap_or(JsValue::NULL)
}

fn nullable_str(v: &Option<String>) -> JsValue {
    v.as_deref().map(JsValue::from_str).unwrap_or(JsValue::NULL)
}

pub async fn create(mut req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    auth::require_admin(&req, ctx.env, &ctx.cfg, ctx.now_ms).await?;
    let body: NewKeyRequest = http::read_json(&mut req).await?;
    let new = keys::validate_new_key(body, ctx.now_ms).map_err(ApiError::ValidationFailed)?;
    let db = ctx.env.d1("DB")?;

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
                    .bind(&[id.as_str().into(), JsValue::from_f64(ctx.now_ms as f64)])?,
            );
            id
        }
    };

    let key = loop {
        if let Some(key) = keys::build_key(&new.prefix, &ids::random_bytes::<64>()?) {
            break key;
        }
    };
    let key_id = ids::new_id("key_")?;
    let key_prefix = keys::display_prefix(&key);
    let hash = keys::hash_key(&key, ctx.cfg.key_pepper.as_deref().map(str::as_bytes));
    let permissions = keys::permissions_to_column(&new.permissions);
    statements.push(
        db.prepare(
            "INSERT INTO api_keys (id, account_id, key_hash, key_prefix, name, description, metadata, \
             key_type, permissions, expires_at, daily_limit_micros, monthly_limit_micros, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13)",
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
            JsValue::from_f64(ctx.now_ms as f64),
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
            "createdAt": time::rfc3339(ctx.now_ms),
            "warning": SHOWN_ONCE,
        }),
    )
}
