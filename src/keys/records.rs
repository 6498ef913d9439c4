//! Key records as the admin routes show and change them (pure): the stored
//! row, its JSON view (never the secret nor its hash), and the validation
//! of `PATCH /admin/keys/:id`.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::error::FieldError;
use crate::billing::rules::{micros_to_usd, usd_to_micros};
use crate::common::time::rfc3339;
use crate::keys::api_key::{self, Permission};

/// The columns `KEY_COLUMNS` selects.
#[derive(Debug, Clone, Deserialize)]
pub struct KeyRow {
    pub id: String,
    pub account_id: String,
    pub key_prefix: String,
    pub name: String,
    pub description: Option<String>,
    pub metadata: Option<String>,
    pub key_type: String,
    pub permissions: String,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub daily_limit_micros: Option<i64>,
    pub monthly_limit_micros: Option<i64>,
    pub rate_limit_requests: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

pub const KEY_COLUMNS: &str = "id, account_id, key_prefix, name, description, metadata, key_type, \
     permissions, expires_at, revoked_at, daily_limit_micros, monthly_limit_micros, \
     rate_limit_requests, created_at, updated_at";

impl KeyRow {
    /// `active`, `revoked` or `expired` at `now_ms`.
    pub fn status(&self, now_ms: i64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|t| t <= now_ms) {
            "expired"
        } else {
            "active"
        }
    }

    /// The prefix the key was minted with (`cbx_` of `cbx_abc123…`).
    pub fn mint_prefix(&self) -> String {
        match self.key_prefix.rfind('_') {
            Some(i) => self.key_prefix[..=i].to_string(),
            None => api_key::DEFAULT_PREFIX.to_string(),
        }
    }

    pub fn view(&self, now_ms: i64) -> Value {
        let metadata = self
            .metadata
            .as_deref()
            .and_then(|m| serde_json::from_str::<Value>(m).ok());
        json!({
            "id": self.id,
            "keyPrefix": self.key_prefix,
            "accountId": self.account_id,
            "name": self.name,
            "description": self.description,
            "metadata": metadata,
            "keyType": self.key_type,
            "permissions": api_key::permissions_from_column(&self.permissions)
                .iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            "status": self.status(now_ms),
            "expiresAt": self.expires_at.map(rfc3339),
            "revokedAt": self.revoked_at.map(rfc3339),
            "dailyLimit": self.daily_limit_micros.map(micros_to_usd),
            "monthlyLimit": self.monthly_limit_micros.map(micros_to_usd),
            "rateLimit": self.rate_limit_requests,
            "createdAt": rfc3339(self.created_at),
            "updatedAt": rfc3339(self.updated_at),
        })
    }
}

/// A column value a patch sets (`None` = SQL NULL).
#[derive(Debug, Clone, PartialEq)]
pub enum Set {
    Text(Option<String>),
    Int(Option<i64>),
}

/// Validated changes: (column, value) pairs, columns from a fixed list.
pub type Patch = Vec<(&'static str, Set)>;

pub const MAX_RATE_LIMIT: i64 = 1_000_000;
const MAX_LIMIT_USD: f64 = 1e9;

/// A per-key request limit per window: a whole number 1–1 000 000 or null.
pub fn rate_limit(field: &str, v: &Value, errors: &mut Vec<FieldError>) -> Option<Option<i64>> {
    match v {
        Value::Null => Some(None),
        Value::Number(n) => match n.as_i64() {
            Some(n) if (1..=MAX_RATE_LIMIT).contains(&n) => Some(Some(n)),
            _ => {
                errors.push(FieldError::new(
                    field,
                    format!("a whole number of requests per window, 1–{MAX_RATE_LIMIT}, or null"),
                ));
                None
            }
        },
        _ => {
            errors.push(FieldError::new(field, "a number or null"));
            None
        }
    }
}

/// A USD spending limit: a number 0–1e9 or null (no limit), in micro-dollars.
pub fn spend_limit(field: &str, v: &Value, errors: &mut Vec<FieldError>) -> Option<Option<i64>> {
    match v {
        Value::Null => Some(None),
        Value::Number(n) => match n.as_f64() {
            Some(usd) if (0.0..=MAX_LIMIT_USD).contains(&usd) => Some(usd_to_micros(usd)),
            _ => {
                errors.push(FieldError::new(field, "a USD amount 0–1e9, or null"));
                None
            }
        },
        _ => {
            errors.push(FieldError::new(field, "a USD amount or null"));
            None
        }
    }
}

/// Validates a `PATCH /admin/keys/:id` body: name, description, metadata,
/// permissions, expiresAt (RFC 3339 or null), dailyLimit, monthlyLimit,
/// rateLimit. Unknown fields are refused, so a typo is never silently ignored.
pub fn validate_patch(body: &Value) -> Result<Patch, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut patch = Patch::new();
    let Some(map) = body.as_object() else {
        return Err(vec![FieldError::new("body", "must be a JSON object")]);
    };
    for (field, v) in map {
        match field.as_str() {
            "name" => match v.as_str().map(str::trim) {
                Some(n) if !n.is_empty() && n.chars().count() <= 200 => {
                    patch.push(("name", Set::Text(Some(n.to_string()))))
                }
                _ => errors.push(FieldError::new("name", "1–200 characters")),
            },
            "description" => match v {
                Value::Null => patch.push(("description", Set::Text(None))),
                Value::String(d) if d.chars().count() <= 2_000 => {
                    patch.push(("description", Set::Text((!d.is_empty()).then(|| d.clone()))))
                }
                _ => errors.push(FieldError::new(
                    "description",
                    "a string of at most 2000 characters, or null",
                )),
            },
            "metadata" => match v {
                Value::Null => patch.push(("metadata", Set::Text(None))),
                Value::Object(_) if v.to_string().len() <= 8_192 => {
                    patch.push(("metadata", Set::Text(Some(v.to_string()))))
                }
                _ => errors.push(FieldError::new(
                    "metadata",
                    "an object of at most 8 KiB of JSON, or null",
                )),
            },
            "permissions" => match permissions(v) {
                Some(p) => patch.push((
                    "permissions",
                    Set::Text(Some(api_key::permissions_to_column(&p))),
                )),
                None => errors.push(FieldError::new(
                    "permissions",
                    "an array of \"execute\", \"read\", \"write\"",
                )),
            },
            "expiresAt" => match v {
                Value::Null => patch.push(("expires_at", Set::Int(None))),
                Value::String(s) => match chrono::DateTime::parse_from_rfc3339(s) {
                    Ok(t) => patch.push(("expires_at", Set::Int(Some(t.timestamp_millis())))),
                    Err(_) => {
                        errors.push(FieldError::new("expiresAt", "an RFC 3339 time, or null"))
                    }
                },
                _ => errors.push(FieldError::new("expiresAt", "an RFC 3339 time, or null")),
            },
            "dailyLimit" => {
                if let Some(l) = spend_limit("dailyLimit", v, &mut errors) {
                    patch.push(("daily_limit_micros", Set::Int(l)));
                }
            }
            "monthlyLimit" => {
                if let Some(l) = spend_limit("monthlyLimit", v, &mut errors) {
                    patch.push(("monthly_limit_micros", Set::Int(l)));
                }
            }
            "rateLimit" => {
                if let Some(l) = rate_limit("rateLimit", v, &mut errors) {
                    patch.push(("rate_limit_requests", Set::Int(l)));
                }
            }
            other => errors.push(FieldError::new(other, "unknown field")),
        }
    }
    if errors.is_empty() {
        Ok(patch)
    } else {
        Err(errors)
    }
}

fn permissions(v: &Value) -> Option<Vec<Permission>> {
    let mut out = Vec::new();
    for p in v.as_array()? {
        let p = Permission::parse(p.as_str()?)?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out.sort();
    Some(out)
}

/// `POST /billing/admin/:apiKeyId/limits`: dailyLimit and/or monthlyLimit.
pub fn validate_limits(body: &Value) -> Result<Patch, Vec<FieldError>> {
    let Some(map) = body.as_object() else {
        return Err(vec![FieldError::new("body", "must be a JSON object")]);
    };
    let mut only = Map::new();
    let mut errors = Vec::new();
    for (k, v) in map {
        if k == "dailyLimit" || k == "monthlyLimit" {
            only.insert(k.clone(), v.clone());
        } else {
            errors.push(FieldError::new(k.as_str(), "unknown field"));
        }
    }
    if only.is_empty() && errors.is_empty() {
        errors.push(FieldError::new(
            "body",
            "give dailyLimit and/or monthlyLimit",
        ));
    }
    match validate_patch(&Value::Object(only)) {
        Ok(p) if errors.is_empty() => Ok(p),
        Ok(_) => Err(errors),
        Err(mut e) => {
            errors.append(&mut e);
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> KeyRow {
        KeyRow {
            id: "key_1".into(),
            account_id: "acct_1".into(),
            key_prefix: "team_x_AbC123…".into(),
            name: "n".into(),
            description: None,
            metadata: Some("{\"a\":1}".into()),
            key_type: "standard".into(),
            permissions: "execute,read".into(),
            expires_at: Some(2_000),
            revoked_at: None,
            daily_limit_micros: Some(2_500_000),
            monthly_limit_micros: None,
            rate_limit_requests: Some(25),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn the_view_shows_no_secret_and_converts_money() {
        let v = row().view(1_000);
        assert_eq!(v["status"], "active");
        assert_eq!(v["dailyLimit"], 2.5);
        assert_eq!(v["monthlyLimit"], Value::Null);
        assert_eq!(v["permissions"], json!(["execute", "read"]));
        assert_eq!(v["metadata"], json!({"a": 1}));
        assert!(v.get("key").is_none() && v.get("keyHash").is_none());
        assert_eq!(row().view(2_000)["status"], "expired");
        let mut r = row();
        r.revoked_at = Some(5);
        assert_eq!(r.view(0)["status"], "revoked");
        assert_eq!(r.mint_prefix(), "team_x_");
    }

    #[test]
    fn a_patch_sets_only_what_is_given() {
        let p = validate_patch(&json!({
            "name": " new ", "dailyLimit": null, "monthlyLimit": 10,
            "rateLimit": 25, "expiresAt": "2030-01-01T00:00:00Z", "permissions": ["read"]
        }))
        .unwrap();
        assert!(p.contains(&("name", Set::Text(Some("new".into())))));
        assert!(p.contains(&("daily_limit_micros", Set::Int(None))));
        assert!(p.contains(&("monthly_limit_micros", Set::Int(Some(10_000_000)))));
        assert!(p.contains(&("rate_limit_requests", Set::Int(Some(25)))));
        assert!(p.contains(&("expires_at", Set::Int(Some(1_893_456_000_000)))));
        assert!(p.contains(&("permissions", Set::Text(Some("read".into())))));
        assert!(validate_patch(&json!({})).unwrap().is_empty());
    }

    #[test]
    fn bad_patches_name_every_bad_field() {
        let errors = validate_patch(&json!({
            "name": "", "dailyLimit": -1, "rateLimit": 0.5, "expiresAt": "tomorrow",
            "permissions": ["root"], "key": "x"
        }))
        .unwrap_err();
        let mut fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "dailyLimit",
                "expiresAt",
                "key",
                "name",
                "permissions",
                "rateLimit"
            ]
        );
        assert!(validate_patch(&json!([1])).is_err());
    }

    #[test]
    fn limits_take_only_the_two_limits() {
        assert_eq!(
            validate_limits(&json!({"dailyLimit": 1.5})).unwrap(),
            vec![("daily_limit_micros", Set::Int(Some(1_500_000)))]
        );
        assert!(validate_limits(&json!({})).is_err());
        assert!(validate_limits(&json!({"name": "x"})).is_err());
        assert!(validate_limits(&json!({"monthlyLimit": "5"})).is_err());
    }
}
