//! The safe relative path rule of the contract (API.md, "Paths"): 1–1024
//! bytes of UTF-8, relative, `/`-separated, no empty, `.` or `..` segment,
//! no NUL, no leading `/`. Anything else is 400 `bad_path`. Self-contained
//! (pure, no crate imports) so every surface can share it.

/// Longest accepted path, in bytes of UTF-8.
pub const MAX_PATH_BYTES: usize = 1024;

/// `Ok(())` when `path` is a safe relative path, else why not (the message
/// of a 400 `bad_path`).
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("path is empty".into());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!("path is longer than {MAX_PATH_BYTES} bytes"));
    }
    if path.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    if path.starts_with('/') {
        return Err("path must be relative (no leading /)".into());
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err("path has an empty segment (// or a trailing /)".into()),
            "." | ".." => return Err(format!("path has a {segment:?} segment")),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        for ok in [
            "a",
            "a/b/c.txt",
            ".hidden",
            "a/..b/c..",
            "dir/.env",
            "ünïcødé/文件.rs",
            "with space/and-dash_.x",
            "...",
        ] {
            assert_eq!(validate_path(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_traversal_absolute_empty_and_nul() {
        for bad in [
            "",
            "/",
            "/etc/passwd",
            "..",
            "../x",
            "a/../../x",
            "a/..",
            ".",
            "./a",
            "a/./b",
            "a//b",
            "a/",
            "a\0b",
        ] {
            assert!(validate_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn length_is_counted_in_bytes() {
        assert_eq!(validate_path(&"a".repeat(MAX_PATH_BYTES)), Ok(()));
        assert!(validate_path(&"a".repeat(MAX_PATH_BYTES + 1)).is_err());
        // 512 two-byte characters are exactly 1024 bytes; one more is too long.
        assert_eq!(validate_path(&"é".repeat(512)), Ok(()));
        assert!(validate_path(&"é".repeat(513)).is_err());
    }

    #[test]
    fn backslashes_are_ordinary_characters() {
        // `/` is the only separator; a backslash is a name character.
        assert_eq!(validate_path("a\\b"), Ok(()));
    }
}
