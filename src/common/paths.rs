//! The one path rule of the API (pure), shared by workspaces, runs and
//! computers: 1–1024 bytes of UTF-8, relative, `/`-separated, no empty, `.`
//! or `..` segment, no NUL, no leading `/`. Anything else is 400 `bad_path`.

use crate::api::error::ApiError;

/// Longest accepted path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// Why `path` is not a safe relative path, or `None` when it is.
pub fn path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("is empty");
    }
    if path.len() > MAX_PATH_BYTES {
        return Some("is longer than 1024 bytes");
    }
    if path.contains('\0') {
        return Some("contains a NUL byte");
    }
    if path.starts_with('/') {
        return Some("must be relative (no leading /)");
    }
    for segment in path.split('/') {
        match segment {
            "" => return Some("has an empty segment"),
            "." | ".." => return Some("has a . or .. segment"),
            _ => {}
        }
    }
    None
}

/// `Ok(())` for a safe relative path, else 400 `bad_path` naming `field`.
pub fn check_path(field: &str, path: &str) -> Result<(), ApiError> {
    match path_problem(path) {
        None => Ok(()),
        Some(why) => Err(ApiError::BadPath(format!("{field} {why}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_relative_paths_pass() {
        for ok in [
            "a",
            "README.md",
            "src/lib.rs",
            "a/b/c/d.txt",
            ".hidden",
            "a/..b/c..",
            "dir/ünïcødé.md",
            "with space/x",
        ] {
            assert_eq!(path_problem(ok), None, "{ok}");
        }
        assert_eq!(path_problem(&"a".repeat(1024)), None);
    }

    #[test]
    fn each_rule_is_enforced() {
        assert_eq!(path_problem(""), Some("is empty"));
        assert_eq!(
            path_problem(&"a".repeat(1025)),
            Some("is longer than 1024 bytes")
        );
        // 1024 bytes is counted in bytes, not characters.
        assert!(path_problem(&"é".repeat(513)).is_some());
        assert_eq!(path_problem("a\0b"), Some("contains a NUL byte"));
        assert_eq!(
            path_problem("/etc/passwd"),
            Some("must be relative (no leading /)")
        );
        assert_eq!(path_problem("a//b"), Some("has an empty segment"));
        assert_eq!(path_problem("a/"), Some("has an empty segment"));
        assert_eq!(path_problem("./a"), Some("has a . or .. segment"));
        assert_eq!(path_problem("a/../../b"), Some("has a . or .. segment"));
        assert_eq!(path_problem(".."), Some("has a . or .. segment"));
    }

    #[test]
    fn check_path_names_the_field() {
        let err = check_path("filesystem[2].path", "../x").unwrap_err();
        assert_eq!(err.code(), "bad_path");
        assert!(
            err.message().contains("filesystem[2].path"),
            "{}",
            err.message()
        );
    }
}

/// The rule as a `Result` with a readable message, for callers that wrap it
/// into their own error (workspace manifests, run artifacts, the runner).
pub fn validate_path(path: &str) -> Result<(), String> {
    match path_problem(path) {
        None => Ok(()),
        Some(why) => Err(format!("path {why}")),
    }
}

#[cfg(test)]
mod validate_tests {
    #[test]
    fn validate_path_wraps_the_same_rule() {
        assert_eq!(super::validate_path("a/b"), Ok(()));
        assert_eq!(
            super::validate_path("../x"),
            Err("path has a . or .. segment".to_string())
        );
    }
}
