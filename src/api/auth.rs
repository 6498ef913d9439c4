//! Who is calling: the admin bearer, or an API key looked up by its hash in
//! D1 (in the request's first batch, see `ratelimit_d1`).

use serde::Deserialize;
use worker::Request;

use crate::api::dispatch::Ctx;
use crate::api::error::ApiError;
use crate::api::target;
use crate::keys::api_key::{self, KeyType, Permission};
use crate::platform::config::Config;
use crate::platform::{bindings, http};

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
    let query = http::raw_query(req);
    let found = target::pairs(&query).any(|(name, _)| {
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

/// The hash of the presented credential when it is a well-formed API key
/// (not the admin key): what `ratelimit_d1::check` looks up with the
/// request's rate counters.
pub fn presented_key_hash(req: &Request, cfg: &Config) -> Option<String> {
    let presented = presented_key(req).ok().flatten()?;
    let is_admin = cfg
        .admin_api_key
        .as_deref()
        .is_some_and(|admin| api_key::secrets_equal(&presented, admin));
    if is_admin || api_key::parse(&presented).is_err() {
        return None;
    }
    Some(hash_of(cfg, &presented))
}

fn hash_of(cfg: &Config, presented: &str) -> String {
    api_key::hash_key(presented, cfg.key_pepper.as_deref().map(str::as_bytes))
}

/// Admin routes: 503 when `ADMIN_API_KEY` is unset, 401 without a valid
/// credential, 403 for a valid API key that is not the admin key.
pub async fn require_admin(req: &Request, ctx: &Ctx<'_>) -> Result<(), ApiError> {
    let admin = ctx
        .cfg
        .admin_api_key
        .as_deref()
        .ok_or(ApiError::AdminDisabled)?;
    let presented = presented_key(req)?.ok_or(ApiError::Unauthorized)?;
    if api_key::secrets_equal(&presented, admin) {
        return Ok(());
    }
    match lookup_key(ctx, &presented).await {
        Ok(_) => Err(ApiError::Forbidden("this route needs the admin key".into())),
        Err(err) => Err(err),
    }
}

/// Any route that needs an API key.
pub async fn authenticate(req: &Request, ctx: &Ctx<'_>) -> Result<Caller, ApiError> {
    let presented = presented_key(req)?.ok_or(ApiError::Unauthorized)?;
    lookup_key(ctx, &presented).await
}

/// An API key's row as authentication and the key's rate limit need it.
pub const KEY_ROW: &str =
    "SELECT id, account_id, key_type, permissions, expires_at, revoked_at, rate_limit_requests \
     FROM api_keys WHERE key_hash = ?1";

#[derive(Debug, Clone, Deserialize)]
pub struct KeyRow {
    id: String,
    account_id: String,
    key_type: String,
    permissions: String,
    expires_at: Option<f64>,
    revoked_at: Option<f64>,
    pub rate_limit_requests: Option<f64>,
}

/// The row of the key with hash `hash` (or none), read by this request.
#[derive(Debug, Clone)]
pub struct KeyLookup {
    pub hash: String,
    pub row: Option<KeyRow>,
}

async fn lookup_key(ctx: &Ctx<'_>, presented: &str) -> Result<Caller, ApiError> {
    // The checksum rejects look-alikes before any database work.
    api_key::parse(presented).map_err(|_| ApiError::InvalidKey)?;
    let hash = hash_of(&ctx.cfg, presented);
    let row = match &ctx.key {
        Some(lookup) if lookup.hash == hash => lookup.row.clone(),
        // Routes exempt from rate limits made no batch: read the row now.
        _ => {
            bindings::db(ctx.env)?
                .prepare(KEY_ROW)
                .bind(&[hash.into()])?
                .first::<KeyRow>(None)
                .await?
        }
    };
    caller_of(row, ctx.now_ms)
}

/// The caller a key row stands for, if the key is neither revoked nor expired.
fn caller_of(row: Option<KeyRow>, now_ms: i64) -> Result<Caller, ApiError> {
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
