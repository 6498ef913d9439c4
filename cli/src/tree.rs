//! The local folder as a workspace sees it: which files (`.gitignore`,
//! `.cloudboxignore`; never `.git/` or the CLI's own `.cloudbox/`), their
//! manifest entries (hashed as a stream, never whole in memory), and the
//! refusals (a path the API would refuse, a symlink out of the folder, a
//! file over the blob limit), each naming the file.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cloudbox::common::paths::validate_path;
use cloudbox::workspaces::manifest::{FileEntry, MODE_EXECUTABLE, MODE_FILE};
use sha2::{Digest, Sha256};

use crate::exit::{Exit, Failure, Result};

/// The CLI's own folder in DIR: never sent, never deleted.
pub const OWN_DIR: &str = ".cloudbox";
pub const IGNORE_FILE: &str = ".cloudboxignore";

/// Whether a workspace path is outside what the CLI syncs: `.git/` at any
/// depth, the CLI's own `.cloudbox/` at the top, pull's temporary files.
/// Push never sends them; pull never writes them, whatever a version holds.
pub fn excluded(path: &str) -> bool {
    let own = path.split_once('/').is_some_and(|(top, _)| top == OWN_DIR);
    own || path.split('/').any(|p| p == ".git" || is_pull_temp(p))
}

/// Whether a name is one of pull's temporary files
/// (`.NAME.cloudbox-XXXXXXXX.tmp`, left only by a killed pull): never
/// sent, never taken for a file of the folder.
pub fn is_pull_temp(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
        return false;
    };
    match rest.rsplit_once(".cloudbox-") {
        Some((_, tag)) => tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_hexdigit()),
        None => false,
    }
}

/// The name pull writes a file under before renaming it into place.
pub fn pull_temp_name(name: &str, tag: &str) -> String {
    format!(".{name}.cloudbox-{tag}.tmp")
}

/// A file of the folder: its path in the workspace and where to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: String,
    /// The file to read (a symlink's target inside the folder).
    pub abs: PathBuf,
}

/// The files of `root` a push would send, sorted by path; symlinks to
/// files inside the folder count as those files, symlinks to folders are
/// not followed, broken symlinks are skipped (with `skipped` told).
pub fn list(root: &Path, skipped: &mut Vec<String>) -> Result<Vec<Found>> {
    let bad =
        |path: &str, why: String| Failure::new(Exit::Usage, "bad_path", format!("{path}: {why}"));
    let real_root =
        fs::canonicalize(root).map_err(|e| Failure::usage(format!("{}: {e}", root.display())))?;
    let walker = ignore::WalkBuilder::new(root)
        .hidden(false)
        .git_ignore(true)
        .git_global(false)
        .git_exclude(false)
        .require_git(false)
        .parents(false)
        .ignore(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .follow_links(false)
        .filter_entry(|e| {
            let name = e.file_name();
            !(name == ".git"
                || (e.depth() == 1 && name == OWN_DIR)
                || is_pull_temp(&name.to_string_lossy()))
        })
        .build();
    let mut found = Vec::new();
    for entry in walker {
        let entry = entry.map_err(|e| Failure::usage(format!("reading the folder: {e}")))?;
        if entry.depth() == 0 {
            continue;
        }
        let rel = entry.path().strip_prefix(root).map_err(|_| {
            Failure::usage(format!("{}: outside the folder", entry.path().display()))
        })?;
        let Some(path) = rel.to_str().map(str::to_string) else {
            return Err(bad(&rel.to_string_lossy(), "the name is not UTF-8".into()));
        };
        let Some(kind) = entry.file_type() else {
            continue;
        };
        let abs = if kind.is_file() {
            entry.path().to_path_buf()
        } else if kind.is_symlink() {
            let Ok(target) = fs::canonicalize(entry.path()) else {
                skipped.push(format!("{path}: broken symlink, skipped"));
                continue;
            };
            let Ok(inside) = target.strip_prefix(&real_root) else {
                return Err(bad(&path, "a symlink pointing outside the folder".into()));
            };
            if excluded(&inside.to_string_lossy()) {
                skipped.push(format!("{path}: symlink into .git/ or .cloudbox/, skipped"));
                continue;
            }
            if !target.is_file() {
                skipped.push(format!("{path}: symlink to a folder, not followed"));
                continue;
            }
            target
        } else {
            continue; // folders are walked; sockets and devices are not files
        };
        validate_path(&path).map_err(|why| bad(&path, why))?;
        found.push(Found { path, abs });
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// The SHA-256 (hex) and size of a file, read as a stream.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// The manifest mode of a file: executable if any execute bit is set.
pub fn mode_of(meta: &fs::Metadata) -> u32 {
    if meta.permissions().mode() & 0o111 != 0 {
        MODE_EXECUTABLE
    } else {
        MODE_FILE
    }
}

/// The manifest entry of one found file; a file over `max_bytes` is
/// refused before it is read.
pub fn entry(found: &Found, max_bytes: u64) -> Result<FileEntry> {
    let io = |e: std::io::Error| Failure::usage(format!("{}: {e}", found.path));
    let meta = fs::metadata(&found.abs).map_err(io)?;
    if meta.len() > max_bytes {
        return Err(Failure::new(
            Exit::Usage,
            "blob_too_large",
            format!(
                "{}: {} bytes, over the server's blob limit of {max_bytes}",
                found.path,
                meta.len()
            ),
        ));
    }
    let (sha256, size) = hash_file(&found.abs).map_err(io)?;
    Ok(FileEntry {
        path: found.path.clone(),
        sha256,
        size,
        mode: mode_of(&meta),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn paths(root: &Path) -> Result<Vec<String>> {
        Ok(list(root, &mut Vec::new())?
            .into_iter()
            .map(|f| f.path)
            .collect())
    }

    #[test]
    fn ignores_what_git_and_cloudboxignore_say_and_never_sends_git_or_own_dir() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for (p, c) in [
            ("a.txt", "a"),
            (".gitignore", "target/\n*.log\n"),
            (".cloudboxignore", "secret.env\n"),
            ("target/x", "x"),
            ("debug.log", "l"),
            ("secret.env", "s"),
            (".git/HEAD", "ref"),
            (".cloudbox/workspace", "w"),
            ("sub/.cloudbox/kept", "k"),
            ("sub/.hidden", "h"),
        ] {
            fs::create_dir_all(r.join(p).parent().unwrap()).unwrap();
            fs::write(r.join(p), c).unwrap();
        }
        assert_eq!(
            paths(r).unwrap(),
            [
                ".cloudboxignore",
                ".gitignore",
                "a.txt",
                "sub/.cloudbox/kept",
                "sub/.hidden"
            ]
        );
    }

    #[test]
    fn git_own_dir_and_temporaries_are_excluded() {
        for p in [
            ".git/HEAD",
            "sub/.git/config",
            ".cloudbox/workspace",
            "a/.x.cloudbox-0123abcd.tmp",
        ] {
            assert!(excluded(p), "{p}");
        }
        for p in [
            "a.txt",
            "sub/.cloudbox/kept",
            ".gitignore",
            ".cloudbox",
            "git/x",
        ] {
            assert!(!excluded(p), "{p}");
        }
    }

    #[test]
    fn pull_temporaries_are_recognised() {
        let name = pull_temp_name("a.txt", "0123abcd");
        assert!(is_pull_temp(&name));
        assert!(!is_pull_temp(".a.txt.cloudbox-xyz.tmp"));
        assert!(!is_pull_temp("a.tmp"));
        assert!(!is_pull_temp(".env"));
    }

    #[test]
    fn symlinks_inside_count_outside_refused() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("o"), "o").unwrap();
        let r = d.path().join("root");
        fs::create_dir_all(r.join("dir")).unwrap();
        fs::write(r.join("dir/real"), "r").unwrap();
        symlink("dir/real", r.join("link")).unwrap();
        symlink("dir", r.join("dirlink")).unwrap();
        symlink("nowhere", r.join("broken")).unwrap();
        let mut skipped = Vec::new();
        let found = list(&r, &mut skipped).unwrap();
        let names: Vec<_> = found.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["dir/real", "link"]);
        assert_eq!(skipped.len(), 2);
        symlink(outside.path().join("o"), r.join("out")).unwrap();
        let err = list(&r, &mut Vec::new()).unwrap_err();
        assert_eq!(err.exit, Exit::Usage);
        assert!(err.message.starts_with("out: "), "{}", err.message);
    }

    #[test]
    fn entries_hash_as_a_stream_and_keep_the_execute_bit() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("run.sh");
        fs::write(&p, b"#!/bin/sh\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
        let found = Found {
            path: "run.sh".into(),
            abs: p,
        };
        let e = entry(&found, 100).unwrap();
        assert_eq!(e.mode, MODE_EXECUTABLE);
        assert_eq!(e.size, 10);
        assert_eq!(
            e.sha256,
            cloudbox::workspaces::manifest::sha256_hex(b"#!/bin/sh\n")
        );
        let err = entry(&found, 9).unwrap_err();
        assert_eq!(err.code, "blob_too_large");
    }
}
