//! A workspace tree on disk: written out from a manifest and the blob cache
//! before the agent runs, and read back into a manifest after it.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use cloudbox::workspaces::manifest::{FileEntry, MODE_EXECUTABLE, MODE_FILE};

use crate::blob_cache::BlobCache;
use crate::config::StepUser;

/// Writes every file of `files` under `dir` (copies, never links: the agent
/// may edit files in place and must not change the cache).
pub fn materialize(cache: &BlobCache, files: &[FileEntry], dir: &Path) -> io::Result<()> {
    for file in files {
        cloudbox::common::paths::validate_path(&file.path).map_err(io::Error::other)?;
        let src = cache
            .path(&file.sha256)
            .filter(|p| p.is_file())
            .ok_or_else(|| io::Error::other(format!("blob {} not in cache", file.sha256)))?;
        let dest = dir.join(&file.path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&src, &dest)?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(file.mode))?;
    }
    Ok(())
}

/// Makes `user` the owner of `dir` and of everything under it (symlinks
/// themselves, never their targets), so a step running as that user can
/// work in a tree the runner wrote.
pub fn give_to(dir: &Path, user: StepUser) -> io::Result<()> {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        std::os::unix::fs::lchown(&path, Some(user.uid), Some(user.gid))?;
        if std::fs::symlink_metadata(&path)?.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// Reads the tree under `dir` back into a manifest's file list (sorted),
/// adding every file's bytes to the cache. Symlinks and special files are
/// skipped: a workspace holds regular files only. Directories named in
/// `skip_dirs` (at any depth) are left out.
pub fn scan(cache: &BlobCache, dir: &Path, skip_dirs: &[&str]) -> io::Result<Vec<FileEntry>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                let name = entry.file_name();
                if !skip_dirs.iter().any(|s| name == *s) {
                    pending.push(path);
                }
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let Ok(relative) = path.strip_prefix(dir) else {
                continue;
            };
            let Some(relative) = relative.to_str() else {
                continue;
            };
            if cloudbox::common::paths::validate_path(relative).is_err() {
                continue;
            }
            let executable = entry.metadata()?.permissions().mode() & 0o111 != 0;
            let (sha256, size) = cache.insert_file(&path)?;
            files.push(FileEntry {
                path: relative.to_string(),
                sha256,
                size,
                mode: if executable {
                    MODE_EXECUTABLE
                } else {
                    MODE_FILE
                },
            });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_round_trips_through_the_cache_with_modes() {
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(cache_dir.path().to_path_buf()).unwrap();
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("a/b")).unwrap();
        std::fs::write(src.path().join("a/b/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(
            src.path().join("a/b/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(src.path().join("readme.md"), "hello").unwrap();
        std::fs::create_dir_all(src.path().join(".git")).unwrap();
        std::fs::write(src.path().join(".git/HEAD"), "ref").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("link")).unwrap();

        let files = scan(&cache, src.path(), &[".git"]).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["a/b/run.sh", "readme.md"]);
        assert_eq!(files[0].mode, MODE_EXECUTABLE);
        assert_eq!(files[1].mode, MODE_FILE);
        assert_eq!(files[1].size, 5);

        let out = tempfile::tempdir().unwrap();
        materialize(&cache, &files, out.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.path().join("readme.md")).unwrap(),
            "hello"
        );
        let mode = std::fs::metadata(out.path().join("a/b/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(scan(&cache, out.path(), &[]).unwrap(), files);
    }

    #[test]
    fn materialize_refuses_unsafe_paths_and_unknown_blobs() {
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(cache_dir.path().to_path_buf()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let evil = FileEntry {
            path: "../x".into(),
            sha256: "0".repeat(64),
            size: 0,
            mode: MODE_FILE,
        };
        assert!(materialize(&cache, &[evil], out.path()).is_err());
        let unknown = FileEntry {
            path: "x".into(),
            sha256: "0".repeat(64),
            size: 0,
            mode: MODE_FILE,
        };
        assert!(materialize(&cache, &[unknown], out.path()).is_err());
    }
}
