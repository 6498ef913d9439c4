//! Random identifiers (request ids, key ids, account ids). Uses the platform
//! CSPRNG: `crypto.getRandomValues` in the Worker, the OS natively.

use crate::api::error::ApiError;

pub fn random_bytes<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut buf = [0u8; N];
    getrandom::getrandom(&mut buf).map_err(|e| ApiError::Internal(format!("random: {e}")))?;
    Ok(buf)
}

/// `prefix` + 24 hex chars (96 random bits), e.g. `key_3f2a…`.
pub fn new_id(prefix: &str) -> Result<String, ApiError> {
    Ok(format!("{prefix}{}", hex::encode(random_bytes::<12>()?)))
}

/// Whether `id` looks like one `new_id(prefix)` made: the prefix and 24
/// lowercase hex characters.
pub fn has_shape(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == 24
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_have_prefix_and_are_distinct() {
        let a = super::new_id("key_").unwrap();
        let b = super::new_id("key_").unwrap();
        assert!(a.starts_with("key_") && a.len() == 28);
        assert_ne!(a, b);
        assert!(super::has_shape(&a, "key_"));
        assert!(!super::has_shape(&a, "run_"));
        assert!(!super::has_shape("key_0123", "key_"));
        assert!(!super::has_shape("key_ABCDEF0123456789abcdef01", "key_"));
    }
}
