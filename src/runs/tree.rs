//! A run's checkout as a snapshot sees it (pure): every entry of the tree —
//! files with their exact mode, directories (empty ones included) and
//! symlinks with their target — so a restore gives back the same tree, the
//! `.git` folder with it. File bytes are blobs of the account, content-
//! addressed like workspace files, so a snapshot shares them with every
//! other snapshot and workspace of the account.
//!
//! The runner makes the list (`POST /runs/{id}/snapshot`) and restores it
//! (`POST /runs/{id}/restore`); the run's DO keeps it in R2. `validate` is
//! checked on both sides: a restore never writes through a symlink, outside
//! the checkout, or a mode with setuid bits.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::common::paths::path_problem;

/// Most entries one snapshot may hold.
pub const MAX_ENTRIES: usize = 50_000;
/// Most bytes of file content one snapshot may hold.
pub const MAX_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Longest symlink target kept.
pub const MAX_TARGET_BYTES: usize = 4096;
/// The permission bits a restore sets (no setuid, setgid or sticky bit).
pub const MODE_MASK: u32 = 0o777;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One entry of the tree, its path relative to the checkout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TreeEntry {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// Permission bits (`MODE_MASK`) of a file or directory; 0 for a symlink.
    #[serde(default)]
    pub mode: u32,
    /// A file's content hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A file's size in bytes.
    #[serde(default)]
    pub size: u64,
    /// A symlink's target, as `readlink` gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl TreeEntry {
    pub fn file(path: &str, sha256: &str, size: u64, mode: u32) -> Self {
        TreeEntry {
            path: path.to_string(),
            kind: EntryKind::File,
            mode: mode & MODE_MASK,
            sha256: Some(sha256.to_string()),
            size,
            target: None,
        }
    }

    pub fn dir(path: &str, mode: u32) -> Self {
        TreeEntry {
            path: path.to_string(),
            kind: EntryKind::Dir,
            mode: mode & MODE_MASK,
            sha256: None,
            size: 0,
            target: None,
        }
    }

    pub fn symlink(path: &str, target: &str) -> Self {
        TreeEntry {
            path: path.to_string(),
            kind: EntryKind::Symlink,
            mode: 0,
            sha256: None,
            size: 0,
            target: Some(target.to_string()),
        }
    }
}

/// Files and bytes of content in a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Totals {
    pub files: u64,
    pub bytes: u64,
}

pub fn totals(entries: &[TreeEntry]) -> Totals {
    entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .fold(Totals::default(), |t, e| Totals {
            files: t.files + 1,
            bytes: t.bytes + e.size,
        })
}

/// The distinct content hashes of a tree, sorted.
pub fn unique_blobs(entries: &[TreeEntry]) -> Vec<String> {
    let set: BTreeSet<&str> = entries.iter().filter_map(|e| e.sha256.as_deref()).collect();
    set.into_iter().map(str::to_string).collect()
}

/// Each distinct content hash of a tree with its size, sorted by hash.
pub fn blob_sizes(entries: &[TreeEntry]) -> Vec<(String, u64)> {
    let map: std::collections::BTreeMap<&str, u64> = entries
        .iter()
        .filter_map(|e| e.sha256.as_deref().map(|s| (s, e.size)))
        .collect();
    map.into_iter().map(|(s, n)| (s.to_string(), n)).collect()
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Why `entries` is not a tree a restore may write, or `Ok`. Entries are
/// sorted by path with no duplicate; each path follows the API's path rule;
/// a file has a hash and a mode, a directory a mode, a symlink a target; no
/// entry lies under a file or a symlink (a restore never writes through a
/// link); every parent of an entry is listed as a directory; limits hold.
pub fn validate(entries: &[TreeEntry]) -> Result<(), String> {
    if entries.len() > MAX_ENTRIES {
        return Err(format!("more than {MAX_ENTRIES} entries"));
    }
    let mut bytes = 0u64;
    let mut dirs: BTreeSet<&str> = BTreeSet::new();
    let mut previous: Option<&str> = None;
    for e in entries {
        let path = e.path.as_str();
        if let Some(why) = path_problem(path) {
            return Err(format!("{path:?} {why}"));
        }
        if previous.is_some_and(|p| p >= path) {
            return Err(format!("{path:?} is out of order or repeated"));
        }
        previous = Some(path);
        if let Some((parent, _)) = path.rsplit_once('/') {
            if !dirs.contains(parent) {
                return Err(format!(
                    "{path:?}: its directory {parent:?} is not a directory of the tree"
                ));
            }
        }
        if e.mode & !MODE_MASK != 0 {
            return Err(format!(
                "{path:?}: mode {:o} has bits beyond {MODE_MASK:o}",
                e.mode
            ));
        }
        match e.kind {
            EntryKind::File => {
                if !e.sha256.as_deref().is_some_and(is_sha256) || e.target.is_some() {
                    return Err(format!("{path:?}: a file has a sha256 and no target"));
                }
                bytes = bytes.saturating_add(e.size);
            }
            EntryKind::Dir => {
                if e.sha256.is_some() || e.target.is_some() || e.size != 0 {
                    return Err(format!("{path:?}: a directory has only a mode"));
                }
                dirs.insert(path);
            }
            EntryKind::Symlink => {
                let ok = e.target.as_deref().is_some_and(|t| {
                    !t.is_empty() && t.len() <= MAX_TARGET_BYTES && !t.contains('\0')
                });
                if !ok || e.sha256.is_some() || e.size != 0 || e.mode != 0 {
                    return Err(format!("{path:?}: a symlink has only a target (1–{MAX_TARGET_BYTES} bytes, no NUL)"));
                }
            }
        }
    }
    if bytes > MAX_BYTES {
        return Err(format!("more than {MAX_BYTES} bytes of files"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn tree() -> Vec<TreeEntry> {
        vec![
            TreeEntry::dir(".git", 0o755),
            TreeEntry::file(".git/HEAD", SHA, 21, 0o644),
            TreeEntry::dir("empty", 0o700),
            TreeEntry::symlink("link", "src/main.rs"),
            TreeEntry::file("run.sh", SHA, 10, 0o755),
            TreeEntry::dir("src", 0o755),
            TreeEntry::file("src/main.rs", SHA, 5, 0o444),
        ]
    }

    #[test]
    fn a_sorted_tree_with_dirs_files_and_symlinks_passes() {
        assert_eq!(validate(&tree()), Ok(()));
        assert_eq!(validate(&[]), Ok(()));
        assert_eq!(
            totals(&tree()),
            Totals {
                files: 3,
                bytes: 36
            }
        );
        assert_eq!(unique_blobs(&tree()), vec![SHA.to_string()]);
        assert_eq!(blob_sizes(&tree()).len(), 1);
    }

    #[test]
    fn entries_under_a_symlink_or_a_file_or_an_unlisted_dir_are_refused() {
        let mut under_link = tree();
        under_link.insert(4, TreeEntry::file("link/x", SHA, 1, 0o644));
        assert!(validate(&under_link)
            .unwrap_err()
            .contains("not a directory"));
        let mut under_file = tree();
        under_file.insert(5, TreeEntry::file("run.sh/x", SHA, 1, 0o644));
        assert!(validate(&under_file).is_err());
        let orphan = vec![TreeEntry::file("a/b", SHA, 1, 0o644)];
        assert!(validate(&orphan).is_err());
    }

    #[test]
    fn unsafe_paths_order_modes_and_shapes_are_refused() {
        for path in ["../x", "/etc/passwd", "a//b", "a/./b", ""] {
            let entries = vec![TreeEntry::file(path, SHA, 1, 0o644)];
            assert!(validate(&entries).is_err(), "{path}");
        }
        let unsorted = vec![
            TreeEntry::file("b", SHA, 1, 0o644),
            TreeEntry::file("a", SHA, 1, 0o644),
        ];
        assert!(validate(&unsorted).is_err());
        let twice = vec![
            TreeEntry::file("a", SHA, 1, 0o644),
            TreeEntry::file("a", SHA, 1, 0o644),
        ];
        assert!(validate(&twice).is_err());
        let mut setuid = TreeEntry::file("a", SHA, 1, 0o644);
        setuid.mode = 0o4755;
        assert!(validate(&[setuid]).is_err());
        let mut no_hash = TreeEntry::file("a", SHA, 1, 0o644);
        no_hash.sha256 = Some("xyz".into());
        assert!(validate(&[no_hash]).is_err());
        assert!(validate(&[TreeEntry::symlink("l", "")]).is_err());
        assert!(validate(&[TreeEntry::symlink("l", "a\0b")]).is_err());
    }

    #[test]
    fn entries_serialize_with_a_type_and_only_their_fields() {
        let text = serde_json::to_string(&TreeEntry::symlink("l", "t")).unwrap();
        assert_eq!(
            text,
            r#"{"path":"l","type":"symlink","mode":0,"size":0,"target":"t"}"#
        );
        let file: TreeEntry = serde_json::from_str(&format!(
            r#"{{"path":"a","type":"file","mode":420,"sha256":"{SHA}","size":3}}"#
        ))
        .unwrap();
        assert_eq!(file, TreeEntry::file("a", SHA, 3, 0o644));
        assert!(
            serde_json::from_str::<TreeEntry>(r#"{"path":"a","type":"file","extra":1}"#).is_err()
        );
    }
}
