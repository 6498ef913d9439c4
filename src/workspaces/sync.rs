//! A workspace sync client (native only): hash a local tree, ask the server
//! which blobs it lacks, upload just those, commit the manifest; and the
//! reverse, pull a version into a directory. The HTTP client is supplied by
//! the caller (`Transport`), so this module needs no HTTP crate; the tests
//! and the bench plug in a blocking client.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use crate::wire::pack;
use crate::workspaces::manifest::{self, FileEntry, Manifest, MODE_EXECUTABLE, MODE_FILE};

/// One HTTP exchange with the Cloudbox API (auth added by the implementor).
pub trait Transport: Sync {
    /// Sends `method path` with an optional body; returns (status, body).
    fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), String>;
}

/// A file of the local tree with its manifest entry.
#[derive(Debug, Clone)]
pub struct LocalFile {
    pub entry: FileEntry,
    pub abs: PathBuf,
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    /// The workspace version after the push.
    pub version: u64,
    /// Blobs the server said it lacked.
    pub missing: usize,
    pub uploaded_blobs: usize,
    pub uploaded_bytes: u64,
    /// False when the tree equals the current version (nothing to commit).
    pub committed: bool,
}

/// Threads for hashing and transfers.
const PARALLEL: usize = 8;
/// Packs in flight at once (each up to 32 MiB in memory).
const PARALLEL_PACKS: usize = 4;

fn check(status: u16, body: &[u8], want: &[u16], what: &str) -> Result<(), String> {
    if want.contains(&status) {
        Ok(())
    } else {
        Err(format!(
            "{what}: HTTP {status}: {}",
            String::from_utf8_lossy(body)
        ))
    }
}

fn call_json(
    t: &dyn Transport,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    want: &[u16],
) -> Result<serde_json::Value, String> {
    let bytes = body.map(|b| b.to_string().into_bytes());
    let ct = body.map(|_| "application/json");
    let (status, resp) = t.send(method, path, ct, bytes.as_deref())?;
    check(status, &resp, want, &format!("{method} {path}"))?;
    serde_json::from_slice(&resp).map_err(|e| format!("{method} {path}: bad JSON: {e}"))
}

/// Runs `f` over `items` on up to `threads` threads; results in input order.
/// A panic in `f` is raised again here (native only: no threads in the Worker).
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.clamp(1, items.len().max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        mine.push((i, f(item)));
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    // Every index below items.len() was taken exactly once.
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry
            .file_name()
            .into_string()
            .map_err(|n| format!("file name {n:?} is not UTF-8"))?;
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let kind = entry.file_type().map_err(|e| e.to_string())?;
        if kind.is_dir() {
            walk(&entry.path(), &path, out)?;
        } else if kind.is_file() {
            out.push((path, entry.path()));
        } // symlinks and special files are not synced
    }
    Ok(())
}

/// Hashes every regular file under `root` (in parallel); entries sorted by path.
pub fn scan_tree(root: &Path) -> Result<Vec<LocalFile>, String> {
    let mut found = Vec::new();
    walk(root, "", &mut found)?;
    found.sort();
    let hashed = parallel_map(&found, PARALLEL, |(path, abs)| {
        let bytes = fs::read(abs).map_err(|e| format!("{}: {e}", abs.display()))?;
        let meta = fs::metadata(abs).map_err(|e| e.to_string())?;
        let mode = if meta.permissions().mode() & 0o111 != 0 {
            MODE_EXECUTABLE
        } else {
            MODE_FILE
        };
        Ok::<_, String>(LocalFile {
            entry: FileEntry {
                path: path.clone(),
                sha256: manifest::sha256_hex(&bytes),
                size: bytes.len() as u64,
                mode,
            },
            abs: abs.clone(),
        })
    });
    hashed.into_iter().collect()
}

/// The current manifest of a workspace (version 0 and no files if new).
pub fn fetch_manifest(t: &dyn Transport, ws: &str) -> Result<Manifest, String> {
    let value = call_json(
        t,
        "GET",
        &format!("/workspaces/{ws}/manifest"),
        None,
        &[200],
    )?;
    serde_json::from_value(value).map_err(|e| format!("manifest: {e}"))
}

/// Which of `hashes` the server lacks.
pub fn ask_missing(t: &dyn Transport, ws: &str, hashes: &[String]) -> Result<Vec<String>, String> {
    let body = json!({ "sha256": hashes });
    let value = call_json(
        t,
        "POST",
        &format!("/workspaces/{ws}/blobs/missing"),
        Some(&body),
        &[200],
    )?;
    serde_json::from_value(value["missing"].clone()).map_err(|e| format!("missing: {e}"))
}

/// The pack limit the server announces in `/health` (`None`: an older
/// server without the pack routes, or one that could not say).
pub fn pack_limit(t: &dyn Transport) -> Option<u64> {
    let health = call_json(t, "GET", "/health", None, &[200]).ok()?;
    health["limits"]["maxPackBytes"]
        .as_u64()
        .map(|limit| limit.min(pack::MAX_PACK_BYTES))
}

/// Uploads the blobs of `files` whose hash is in `which` (each once):
/// in packs when `pack_limit` is given (a few in flight), the rest one
/// request each. Returns (blobs, bytes) sent.
fn upload(
    t: &dyn Transport,
    ws: &str,
    files: &[LocalFile],
    which: &std::collections::HashSet<String>,
    pack_limit: Option<u64>,
) -> Result<(usize, u64), String> {
    let mut seen = std::collections::HashSet::new();
    let todo: Vec<&LocalFile> = files
        .iter()
        .filter(|f| which.contains(&f.entry.sha256) && seen.insert(f.entry.sha256.clone()))
        .collect();
    let by_hash: std::collections::HashMap<&str, &LocalFile> =
        todo.iter().map(|f| (f.entry.sha256.as_str(), *f)).collect();
    let sized: Vec<pack::BlobSize> = todo
        .iter()
        .map(|f| (f.entry.sha256.clone(), f.entry.size))
        .collect();
    let (packs, alone) = match pack_limit {
        Some(limit) => pack::plan(&sized, pack::spread(&sized, limit, PARALLEL_PACKS)),
        None => (Vec::new(), sized),
    };
    let packed = parallel_map(&packs, PARALLEL_PACKS, |blobs| {
        let mut body = Vec::with_capacity(pack::packed_bytes(blobs) as usize);
        for (sha, size) in blobs {
            let file = by_hash
                .get(sha.as_str())
                .ok_or_else(|| format!("no file has blob {sha}"))?;
            let bytes = fs::read(&file.abs).map_err(|e| e.to_string())?;
            let header = pack::record_header(sha, *size)
                .filter(|_| bytes.len() as u64 == *size)
                .ok_or_else(|| format!("{}: changed while it was sent", file.entry.path))?;
            body.extend_from_slice(&header);
            body.extend_from_slice(&bytes);
        }
        let path = format!("/workspaces/{ws}/blobs/pack");
        let (status, answer) = t.send("POST", &path, Some(pack::CONTENT_TYPE), Some(&body))?;
        check(status, &answer, &[200], &format!("POST {path}"))?;
        Ok::<u64, String>(blobs.iter().map(|(_, size)| size).sum())
    });
    let single = parallel_map(&alone, PARALLEL, |(sha, _)| {
        let file = by_hash
            .get(sha.as_str())
            .ok_or_else(|| format!("no file has blob {sha}"))?;
        let bytes = fs::read(&file.abs).map_err(|e| e.to_string())?;
        let path = format!("/workspaces/{ws}/blobs/{sha}");
        let (status, body) =
            t.send("PUT", &path, Some("application/octet-stream"), Some(&bytes))?;
        check(status, &body, &[200, 201], &format!("PUT {path}"))?;
        Ok::<u64, String>(bytes.len() as u64)
    });
    let mut bytes = 0;
    for r in packed.into_iter().chain(single) {
        bytes += r?;
    }
    Ok((todo.len(), bytes))
}

/// Commits `files` on top of `base`; returns the new version.
pub fn commit(t: &dyn Transport, ws: &str, base: u64, files: &[FileEntry]) -> Result<u64, String> {
    let body = json!({ "baseVersion": base, "files": files });
    let value = call_json(
        t,
        "POST",
        &format!("/workspaces/{ws}/commits"),
        Some(&body),
        &[201],
    )?;
    value["version"]
        .as_u64()
        .ok_or_else(|| format!("commit answered {value}"))
}

/// Incremental push: hash, ask missing, upload missing, commit (skipped
/// when the tree equals the current version).
pub fn push(t: &dyn Transport, ws: &str, root: &Path) -> Result<PushReport, String> {
    let files = scan_tree(root)?;
    let current = fetch_manifest(t, ws)?;
    let entries: Vec<FileEntry> = files.iter().map(|f| f.entry.clone()).collect();
    let hashes = manifest::unique_blobs(&entries);
    let missing = ask_missing(t, ws, &hashes)?;
    let which = missing.iter().cloned().collect();
    let limit = if missing.is_empty() {
        None
    } else {
        pack_limit(t)
    };
    let (uploaded_blobs, uploaded_bytes) = upload(t, ws, &files, &which, limit)?;
    let (version, committed) = if entries == current.files {
        (current.version, false)
    } else {
        (commit(t, ws, current.version, &entries)?, true)
    };
    Ok(PushReport {
        version,
        missing: missing.len(),
        uploaded_blobs,
        uploaded_bytes,
        committed,
    })
}

/// The naive baseline: upload every file, one request each, then commit.
pub fn push_naive(t: &dyn Transport, ws: &str, root: &Path) -> Result<PushReport, String> {
    let files = scan_tree(root)?;
    let current = fetch_manifest(t, ws)?;
    let entries: Vec<FileEntry> = files.iter().map(|f| f.entry.clone()).collect();
    let all = entries.iter().map(|e| e.sha256.clone()).collect();
    let (uploaded_blobs, uploaded_bytes) = upload(t, ws, &files, &all, None)?;
    let version = commit(t, ws, current.version, &entries)?;
    Ok(PushReport {
        version,
        missing: uploaded_blobs,
        uploaded_blobs,
        uploaded_bytes,
        committed: true,
    })
}

/// Writes version `version` (default: current) of `ws` under `dest`,
/// verifying every blob's hash and setting modes. Returns its manifest.
pub fn pull(
    t: &dyn Transport,
    ws: &str,
    dest: &Path,
    version: Option<u64>,
) -> Result<Manifest, String> {
    let path = match version {
        Some(v) => format!("/workspaces/{ws}/manifest?version={v}"),
        None => format!("/workspaces/{ws}/manifest"),
    };
    let value = call_json(t, "GET", &path, None, &[200])?;
    let manifest: Manifest = serde_json::from_value(value).map_err(|e| e.to_string())?;
    for f in &manifest.files {
        crate::common::paths::validate_path(&f.path)?;
    }
    let write = |sha: &str, bytes: &[u8]| -> Result<(), String> {
        for f in manifest.files.iter().filter(|f| f.sha256 == sha) {
            let target = dest.join(&f.path);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            fs::write(&target, bytes).map_err(|e| e.to_string())?;
            fs::set_permissions(&target, fs::Permissions::from_mode(f.mode))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    let mut seen = std::collections::HashSet::new();
    let sized: Vec<pack::BlobSize> = manifest
        .files
        .iter()
        .filter(|f| seen.insert(f.sha256.clone()))
        .map(|f| (f.sha256.clone(), f.size))
        .collect();
    let (packs, alone) = match pack_limit(t) {
        Some(limit) => pack::plan(&sized, pack::spread(&sized, limit, PARALLEL_PACKS)),
        None => (Vec::new(), sized),
    };
    let packed = parallel_map(&packs, PARALLEL_PACKS, |blobs| {
        let hashes: Vec<&str> = blobs.iter().map(|(sha, _)| sha.as_str()).collect();
        let body = json!({ "sha256": hashes }).to_string();
        let url = format!("/workspaces/{ws}/blobs/fetch");
        let (status, answer) = t.send(
            "POST",
            &url,
            Some("application/json"),
            Some(body.as_bytes()),
        )?;
        check(status, &answer, &[200], &format!("POST {url}"))?;
        // The unpacker checks every record against its hash.
        let mut unpacker = pack::Unpacker::default();
        let records = unpacker.push(&answer).map_err(|e| e.to_string())?;
        unpacker.finish().map_err(|e| e.to_string())?;
        if records.len() != blobs.len() {
            return Err(format!(
                "POST {url}: {} of {} blobs",
                records.len(),
                blobs.len()
            ));
        }
        for (sha, bytes) in &records {
            write(sha, bytes)?;
        }
        Ok(())
    });
    let single = parallel_map(&alone, PARALLEL, |(sha, _)| {
        let url = format!("/workspaces/{ws}/blobs/{sha}");
        let (status, bytes) = t.send("GET", &url, None, None)?;
        check(status, &bytes, &[200], &format!("GET {url}"))?;
        if manifest::sha256_hex(&bytes) != *sha {
            return Err(format!("{sha}: downloaded bytes do not match"));
        }
        write(sha, &bytes)
    });
    packed
        .into_iter()
        .chain(single)
        .collect::<Result<(), String>>()?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_hashes_sorts_and_reads_modes() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("b/c")).unwrap();
        fs::write(dir.path().join("b/c/x.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(
            dir.path().join("b/c/x.sh"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        fs::write(dir.path().join("a.txt"), b"").unwrap();
        let files = scan_tree(dir.path()).unwrap();
        let entries: Vec<_> = files.iter().map(|f| &f.entry).collect();
        assert_eq!(entries[0].path, "a.txt");
        assert_eq!(entries[0].sha256, manifest::sha256_hex(b""));
        assert_eq!(entries[0].mode, MODE_FILE);
        assert_eq!(entries[1].path, "b/c/x.sh");
        assert_eq!(entries[1].mode, MODE_EXECUTABLE);
        assert_eq!(entries[1].size, 10);
    }

    #[test]
    fn parallel_map_keeps_order() {
        let items: Vec<u32> = (0..100).collect();
        assert_eq!(
            parallel_map(&items, 7, |x| x * 2),
            (0..100).map(|x| x * 2).collect::<Vec<_>>()
        );
        assert!(parallel_map(&Vec::<u32>::new(), 4, |x| *x).is_empty());
    }
}
