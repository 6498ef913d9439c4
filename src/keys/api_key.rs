//! API key format and hashing (pure).
//!
//! A key is `<prefix><40 random base62><6 base62 CRC32 of what precedes>`,
//! e.g. `cbx_…`. The checksum lets a secret scanner, and our own auth, reject
//! a look-alike without a database lookup. Only a hash of the key is stored:
//! SHA-256, or HMAC-SHA-256 with the `KEY_PEPPER` secret when it is set.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const DEFAULT_PREFIX: &str = "cbx_";
pub const RANDOM_LEN: usize = 40;
pub const CHECKSUM_LEN: usize = 6;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFormatError {
    BadPrefix,
    BadLength,
    BadCharacter,
    BadChecksum,
}

/// A prefix is 1–16 of `[a-z0-9_]` and ends in `_`.
pub fn validate_prefix(prefix: &str) -> Result<(), KeyFormatError> {
    let ok = (1..=16).contains(&prefix.len())
        && prefix.ends_with('_')
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(KeyFormatError::BadPrefix)
    }
}

/// Builds a key from a prefix and random bytes (at least `RANDOM_LEN` bytes;
/// bytes ≥ 248 are skipped so every base62 digit is equally likely).
/// Returns `None` if the entropy runs out before 40 digits, so callers retry.
pub fn build_key(prefix: &str, entropy: &[u8]) -> Option<String> {
    let mut key = String::with_capacity(prefix.len() + RANDOM_LEN + CHECKSUM_LEN);
    key.push_str(prefix);
    let digits = entropy
        .iter()
        .filter(|b| **b < 248)
        .take(RANDOM_LEN)
        .map(|b| BASE62[(*b % 62) as usize] as char);
    key.extend(digits);
    if key.len() != prefix.len() + RANDOM_LEN {
        return None;
    }
    let checksum = checksum(&key);
    key.push_str(&checksum);
    Some(key)
}

/// CRC32 of `body` as exactly 6 base62 digits (62^6 > 2^32).
pub fn checksum(body: &str) -> String {
    let mut n = crc32fast::hash(body.as_bytes()) as u64;
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks the shape and checksum of a presented key; returns its prefix.
pub fn parse(key: &str) -> Result<&str, KeyFormatError> {
    let split = key.rfind('_').ok_or(KeyFormatError::BadPrefix)? + 1;
    let (prefix, rest) = key.split_at(split);
    validate_prefix(prefix)?;
    if rest.len() != RANDOM_LEN + CHECKSUM_LEN {
        return Err(KeyFormatError::BadLength);
    }
    if !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(KeyFormatError::BadCharacter);
    }
    let (body, given) = key.split_at(key.len() - CHECKSUM_LEN);
    if checksum(body) != given {
        return Err(KeyFormatError::BadChecksum);
    }
    Ok(prefix)
}

/// What we show of a key after creation: its prefix and 6 characters.
pub fn display_prefix(key: &str) -> String {
    let split = key.rfind('_').map(|i| i + 1).unwrap_or(0);
    let end = (split + 6).min(key.len());
    format!("{}…", &key[..end])
}

/// The stored form of a key: hex SHA-256, or hex HMAC-SHA-256 with a pepper.
pub fn hash_key(key: &str, pepper: Option<&[u8]>) -> String {
    match pepper {
        Some(pepper) if !pepper.is_empty() => {
            // HMAC accepts keys of any length, so this cannot fail.
            match Hmac::<Sha256>::new_from_slice(pepper) {
                Ok(mut mac) => {
                    mac.update(key.as_bytes());
                    hex::encode(mac.finalize().into_bytes())
                }
                Err(_) => hex::encode(Sha256::digest(key.as_bytes())),
            }
        }
        _ => hex::encode(Sha256::digest(key.as_bytes())),
    }
}

/// Constant-time equality of two secrets of any length (hash both first so
/// the comparison time does not depend on where they differ or their length).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    let ha = Sha256::digest(a.as_bytes());
    let hb = Sha256::digest(b.as_bytes());
    ha.ct_eq(&hb).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_key(prefix: &str) -> String {
        let entropy: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37)).collect();
        build_key(prefix, &entropy).unwrap()
    }

    #[test]
    fn a_built_key_parses_and_has_the_documented_shape() {
        let key = sample_key("cbx_");
        assert_eq!(key.len(), 4 + 40 + 6);
        assert_eq!(parse(&key), Ok("cbx_"));
    }

    #[test]
    fn one_changed_character_fails_the_checksum() {
        let key = sample_key("cbx_");
        let mut bytes = key.into_bytes();
        bytes[10] = if bytes[10] == b'a' { b'b' } else { b'a' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(parse(&tampered), Err(KeyFormatError::BadChecksum));
    }

    #[test]
    fn shapes_that_are_not_keys_are_rejected() {
        assert_eq!(parse("nounderscore"), Err(KeyFormatError::BadPrefix));
        assert_eq!(parse("cbx_short"), Err(KeyFormatError::BadLength));
        assert_eq!(
            parse("CBX_0000000000000000000000000000000000000000000000"),
            Err(KeyFormatError::BadPrefix)
        );
        let key = sample_key("cbx_");
        let with_dash = format!("cbx_-{}", &key[5..]);
        assert_eq!(parse(&with_dash), Err(KeyFormatError::BadCharacter));
    }

    #[test]
    fn prefix_rules() {
        assert!(validate_prefix("cbx_").is_ok());
        assert!(validate_prefix("team_2_").is_ok());
        assert!(validate_prefix("_").is_ok());
        assert!(validate_prefix("cbx").is_err());
        assert!(validate_prefix("Cbx_").is_err());
        assert!(validate_prefix("abcdefghijklmnop_").is_err()); // 17 chars
        assert!(validate_prefix("").is_err());
    }

    #[test]
    fn entropy_above_247_is_skipped_and_shortage_reported() {
        assert!(build_key("cbx_", &[255u8; 100]).is_none());
        assert!(build_key("cbx_", &[1u8; 39]).is_none());
    }

    #[test]
    fn hashing_with_and_without_pepper() {
        let plain = hash_key("k", None);
        assert_eq!(
            plain,
            "8254c329a92850f6d539dd376f4816ee2764517da5e0235514af433164480d7a"
        );
        assert_ne!(hash_key("k", Some(b"pepper")), plain);
        assert_eq!(hash_key("k", Some(b"")), plain);
    }

    #[test]
    fn display_prefix_shows_only_the_start() {
        let key = sample_key("cbx_");
        let shown = display_prefix(&key);
        assert!(shown.starts_with("cbx_") && shown.chars().count() == 11);
    }

    proptest! {
        #[test]
        fn every_generated_key_round_trips(entropy in proptest::collection::vec(0u8..248, 40..80)) {
            let key = build_key("cbx_", &entropy).unwrap();
            prop_assert_eq!(parse(&key), Ok("cbx_"));
        }
    }
}

// ---------------------------------------------------------------------------
// Key records: types, permissions and the validation of `POST /admin/keys`.

use crate::api::error::FieldError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// Billed and budget-checked.
    Standard,
    /// Never billed nor budget-checked; usage is still recorded.
    Internal,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Standard => "standard",
            KeyType::Internal => "internal",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "standard" => Some(KeyType::Standard),
            "internal" => Some(KeyType::Internal),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Execute,
    Read,
    Write,
}

impl Permission {
    pub const ALL: [Permission; 3] = [Permission::Execute, Permission::Read, Permission::Write];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Execute => "execute",
            Permission::Read => "read",
            Permission::Write => "write",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Permission::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// Stored as a comma-separated list, e.g. `execute,read`.
pub fn permissions_to_column(perms: &[Permission]) -> String {
    perms
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn permissions_from_column(column: &str) -> Vec<Permission> {
    column.split(',').filter_map(Permission::parse).collect()
}

/// Body of `POST /admin/keys`, as sent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewKeyRequest {
    pub name: Option<String>,
    pub key_type: Option<String>,
    pub prefix: Option<String>,
    /// Days until expiry.
    pub expires_in: Option<f64>,
    pub permissions: Option<Vec<String>>,
    pub description: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub daily_limit: Option<f64>,
    pub monthly_limit: Option<f64>,
    /// Requests per rate-limit window for this key (none: only the IP limits).
    pub rate_limit: Option<f64>,
    pub account_id: Option<String>,
}

/// A validated key request, with money in micro-dollars.
#[derive(Debug, Clone, PartialEq)]
pub struct NewKey {
    pub name: String,
    pub key_type: KeyType,
    pub prefix: String,
    pub expires_at_ms: Option<i64>,
    pub permissions: Vec<Permission>,
    pub description: Option<String>,
    pub metadata: Option<String>,
    pub daily_limit_micros: Option<i64>,
    pub monthly_limit_micros: Option<i64>,
    pub rate_limit_requests: Option<i64>,
    pub account_id: Option<String>,
}

const MAX_NAME: usize = 200;
const MAX_DESCRIPTION: usize = 2_000;
const MAX_METADATA_BYTES: usize = 8_192;
const MAX_EXPIRY_DAYS: f64 = 3_650.0;

/// USD (a JSON number) → integer micro-dollars, rounded to the nearest.
pub fn usd_to_micros(usd: f64) -> i64 {
    (usd * 1_000_000.0).round() as i64
}

pub fn validate_new_key(req: NewKeyRequest, now_ms: i64) -> Result<NewKey, Vec<FieldError>> {
    let mut errors = Vec::new();
    let name = req.name.unwrap_or_default().trim().to_string();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        errors.push(FieldError::new(
            "name",
            format!("required, 1–{MAX_NAME} characters"),
        ));
    }
    let key_type = match req.key_type.as_deref() {
        None => KeyType::Standard,
        Some(t) => KeyType::parse(t).unwrap_or_else(|| {
            errors.push(FieldError::new(
                "keyType",
                "must be \"standard\" or \"internal\"",
            ));
            KeyType::Standard
        }),
    };
    let prefix = req.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_string());
    if validate_prefix(&prefix).is_err() {
        errors.push(FieldError::new("prefix", "1–16 of [a-z0-9_], ending in _"));
    }
    let expires_at_ms = match req.expires_in {
        None => None,
        Some(days) if days > 0.0 && days <= MAX_EXPIRY_DAYS => {
            Some(now_ms + (days * 86_400_000.0).round() as i64)
        }
        Some(_) => {
            errors.push(FieldError::new(
                "expiresIn",
                format!("days, above 0 and at most {MAX_EXPIRY_DAYS}"),
            ));
            None
        }
    };
    let permissions = match req.permissions {
        None => Permission::ALL.to_vec(),
        Some(list) => {
            let mut perms: Vec<Permission> = Vec::new();
            for p in &list {
                match Permission::parse(p) {
                    Some(p) if !perms.contains(&p) => perms.push(p),
                    Some(_) => {}
                    None => errors.push(FieldError::new(
                        "permissions",
                        format!("unknown permission {p:?}; use execute, read, write"),
                    )),
                }
            }
            perms.sort();
            perms
        }
    };
    let description = req.description.filter(|d| !d.is_empty());
    if description
        .as_ref()
        .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION)
    {
        errors.push(FieldError::new(
            "description",
            format!("at most {MAX_DESCRIPTION} characters"),
        ));
    }
    let metadata = match req.metadata {
        None | Some(serde_json::Value::Null) => None,
        Some(v @ serde_json::Value::Object(_)) => {
            let text = v.to_string();
            if text.len() > MAX_METADATA_BYTES {
                errors.push(FieldError::new(
                    "metadata",
                    format!("at most {MAX_METADATA_BYTES} bytes of JSON"),
                ));
            }
            Some(text)
        }
        Some(_) => {
            errors.push(FieldError::new("metadata", "must be an object"));
            None
        }
    };
    let mut limit = |field: &str, value: Option<f64>| match value {
        None => None,
        Some(usd) if (0.0..=1e9).contains(&usd) => Some(usd_to_micros(usd)),
        Some(_) => {
            errors.push(FieldError::new(field, "a USD amount between 0 and 1e9"));
            None
        }
    };
    let daily_limit_micros = limit("dailyLimit", req.daily_limit);
    let monthly_limit_micros = limit("monthlyLimit", req.monthly_limit);
    let rate_limit_requests = match req.rate_limit {
        None => None,
        Some(n) if n.fract() == 0.0 && (1.0..=1_000_000.0).contains(&n) => Some(n as i64),
        Some(_) => {
            errors.push(FieldError::new(
                "rateLimit",
                "a whole number of requests per window, 1–1000000",
            ));
            None
        }
    };
    let account_id = req.account_id.filter(|a| !a.is_empty());
    if account_id.as_ref().is_some_and(|a| !is_account_id(a)) {
        errors.push(FieldError::new("accountId", "not an account id"));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(NewKey {
        name,
        key_type,
        prefix,
        expires_at_ms,
        permissions,
        description,
        metadata,
        daily_limit_micros,
        monthly_limit_micros,
        rate_limit_requests,
        account_id,
    })
}

/// Account ids are `acct_` + 24 hex characters.
pub fn is_account_id(s: &str) -> bool {
    s.strip_prefix("acct_")
        .is_some_and(|hex| hex.len() == 24 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod request_tests {
    use super::*;

    #[test]
    fn defaults_are_a_standard_key_with_all_permissions() {
        let key = validate_new_key(
            NewKeyRequest {
                name: Some("ci".into()),
                ..Default::default()
            },
            0,
        )
        .unwrap();
        assert_eq!(key.key_type, KeyType::Standard);
        assert_eq!(key.prefix, "cbx_");
        assert_eq!(key.permissions, Permission::ALL.to_vec());
        assert_eq!(key.expires_at_ms, None);
    }

    #[test]
    fn every_bad_field_is_reported() {
        let errors = validate_new_key(
            NewKeyRequest {
                name: Some(" ".into()),
                key_type: Some("root".into()),
                prefix: Some("BAD".into()),
                expires_in: Some(-1.0),
                permissions: Some(vec!["admin".into()]),
                metadata: Some(serde_json::json!([1])),
                daily_limit: Some(-5.0),
                rate_limit: Some(2.5),
                account_id: Some("acct_nothex".into()),
                ..Default::default()
            },
            0,
        )
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "name",
                "keyType",
                "prefix",
                "expiresIn",
                "permissions",
                "metadata",
                "dailyLimit",
                "rateLimit",
                "accountId"
            ]
        );
    }

    #[test]
    fn expiry_and_limits_convert() {
        let key = validate_new_key(
            NewKeyRequest {
                name: Some("n".into()),
                expires_in: Some(1.5),
                daily_limit: Some(2.5),
                permissions: Some(vec!["read".into(), "read".into()]),
                ..Default::default()
            },
            1_000,
        )
        .unwrap();
        assert_eq!(key.expires_at_ms, Some(1_000 + 129_600_000));
        assert_eq!(key.daily_limit_micros, Some(2_500_000));
        assert_eq!(key.permissions, vec![Permission::Read]);
    }

    #[test]
    fn permission_column_round_trips() {
        let perms = vec![Permission::Execute, Permission::Write];
        assert_eq!(
            permissions_from_column(&permissions_to_column(&perms)),
            perms
        );
    }
}
