//! Who is calling: the admin bearer, or an API key looked up by its hash in D1.

use serde::Deserialize;
use worker::{Env, Request};

use crate::api::error::ApiError;
use crate::keys::api_key::{self, KeyType, Permission};
use crate::platform::bindings;
use crate::platform::config::Config;

/// Query parameters that look like a credential; a key there is refused,
/// since URLs end up in logs and browser history.
const CREDENTIAL_QUERY_NAMES: &[&str] = &["key", "api_key", "apikey", "access_token", "token"];

/// An authenticated API key.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: String,
    pub account_id: String,
    pub key_type: KeyType,
    pub permissions: Vec<Permission>,
}

impl Caller {
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.permissions.contains(&permission) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this key lacks the {:?} permission",
                permission.as_str()
            )))
        }
    }
}

pub fn reject_key_in_query(req: &Request) -> Result<(), ApiError> {
    let url = req.url()?;
    let found = url.query_pairs().any(|(name, _)| {
        CREDENTIAL_QUERY_NAMES
            .iter()
            .any(|c| name.eq_ignore_ascii_case(c))
    });
    if found {
        Err(ApiError::KeyInQuery)
    } else {
        Ok(())
    }
}

/// `Authorization: Bearer <key>` (scheme case-insensitive) or `X-API-Key`.
pub fn presented_key(req: &Request) -> Result<Option<String>, ApiError> {
    if let Some(value) = req.headers().get("authorization")? {
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty() {
            return Ok(Some(rest.trim().to_string()));
        }
        return Err(ApiError::Unauthorized);
    }
    Ok(req
        .headers()
        .get("x-api-key")?
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty()))
}

/// Admin routes: 503 when `ADMIN_API_KEY` is unset, 401 without a valid
/// credential, 403 for a valid API key that is not the admin key.
pub async fn require_admin(
    req: &Request,
    env: &Env,
    cfg: &Config,
    now_ms: i64,
) -> Result<(), ApiError> {
    let admin = cfg
        .admin_api_key
        .as_deref()
        .ok_or(ApiError::AdminDisabled)?;
    let presented = presented_key(req)?.ok_or(ApiError::Unauthorized)?;
    if api_key::secrets_equal(&presented, admin) {
        return Ok(());
    }
    match lookup_key(env, cfg, &presented, now_ms).await {
        Ok(_) => Err(ApiError::Forbidden("this route needs the admin key".into())),
        Err(err) => Err(err),
    }
}

/// Any route that needs an API key.
pub async fn authenticate(
    req: &Request,
    env: &Env,
    cfg: &Config,
    now_ms: i64,
) -> Result<Caller, ApiError> {
    let presented = presented_key(req)?.ok_or(ApiError::Unauthorized)?;
    lookup_key(env, cfg, &presented, now_ms).await
}

#[derive(Deserialize)]
struct KeyRow {
    id: String,
    account_id: String,
    key_type: String,
    permissions: String,
    expires_at: Option<f64>,
    revoked_at: Option<f64>,
}

async fn lookup_key(
    env: &Env,
    cfg: &Config,
    presented: &str,
    now_ms: i64,
) -> Result<Caller, ApiError> {
    // The checksum rejects look-alikes before any database work.
    api_key::parse(presented).map_err(|_| ApiError::InvalidKey)?;
    let hash = api_key::hash_key(presented, cfg.key_pepper.as_deref().map(str::as_bytes));
    let row: Option<KeyRow> = bindings::db(env)?
        .prepare(
            "SELECT id, account_id, key_type, permissions, expires_at, revoked_at \
             FROM api_keys WHERE key_hash = ?1",
        )
        .bind(&[hash.into()])?
        .first(None)
        .await?;
    let row = row.ok_or(ApiError::InvalidKey)?;
    let expired = row.expires_at.is_some_and(|t| (t as i64) <= now_ms);
    if row.revoked_at.is_some() || expired {
        return Err(ApiError::InvalidKey);
    }
    Ok(Caller {
        key_id: row.id,
        account_id: row.account_id,
        key_type: KeyType::parse(&row.key_type).unwrap_or(KeyType::Standard),
        permissions: api_key::permissions_from_column(&row.permissions),
    })
}
