//! `push` and `pull`: a folder and a workspace version made equal, moving
//! only what differs. The planning is the Worker's own (`manifest::diff`,
//! `unique_blobs`); this file does the I/O: files stream to and from the
//! server in parallel, and pull writes each file under a temporary name
//! and renames it, so an interrupted pull never leaves half a file.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cloudbox::common::paths::validate_path;
use cloudbox::wire::pack;
use cloudbox::workspaces::manifest::{
    self, FileEntry, Manifest, MAX_MISSING_QUERY, MODE_EXECUTABLE, MODE_FILE,
};
use cloudbox::workspaces::sync::parallel_map;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::client::Api;
use crate::exit::{Exit, Failure, Result};
use crate::output::Progress;
use crate::tree;

/// Files moved at once.
const PARALLEL: usize = 8;
/// Without `/health` limits: the API's default blob limit.
const DEFAULT_MAX_BLOB_BYTES: u64 = 100 * 1024 * 1024;

/// Packs in flight at once (each up to 32 MiB in memory).
const PARALLEL_PACKS: usize = 4;

/// What the server announces in `GET /health` (`limits`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_blob_bytes: u64,
    /// `None`: a server without the pack routes (one request per blob).
    pub max_pack_bytes: Option<u64>,
}

impl Limits {
    pub fn of(api: &Api) -> Result<Limits> {
        let health = api.get("/health")?;
        Ok(Limits {
            max_blob_bytes: health["limits"]["maxBlobBytes"]
                .as_u64()
                .unwrap_or(DEFAULT_MAX_BLOB_BYTES),
            max_pack_bytes: health["limits"]["maxPackBytes"]
                .as_u64()
                .map(|limit| limit.min(pack::MAX_PACK_BYTES)),
        })
    }

    /// The blobs of `blobs` as packs and those that go one by one.
    fn plan(&self, blobs: Vec<pack::BlobSize>) -> (Vec<Vec<pack::BlobSize>>, Vec<pack::BlobSize>) {
        match self.max_pack_bytes {
            Some(limit) => pack::plan(&blobs, pack::spread(&blobs, limit, PARALLEL_PACKS)),
            None => (Vec::new(), blobs),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PushReport {
    pub workspace_id: String,
    pub version: u64,
    pub files: usize,
    pub bytes: u64,
    pub uploaded_blobs: usize,
    pub uploaded_bytes: u64,
    /// False when the folder already equals the workspace's version.
    pub committed: bool,
    /// The folder as pushed (what an exec's pull compares against).
    #[serde(skip)]
    pub entries: Vec<FileEntry>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PullReport {
    pub workspace_id: String,
    pub version: u64,
    pub written: usize,
    pub deleted: usize,
    pub bytes: u64,
}

fn ws_path(ws: &str, rest: &str) -> String {
    format!("/workspaces/{ws}{rest}")
}

/// The manifest of a version (the current one without `version`; an
/// unused workspace is version 0 with no files).
pub fn manifest_of(api: &Api, ws: &str, version: Option<u64>) -> Result<Manifest> {
    let path = match version {
        Some(v) => ws_path(ws, &format!("/manifest?version={v}")),
        None => ws_path(ws, "/manifest"),
    };
    let body = api.get(&path)?;
    serde_json::from_value(body)
        .map_err(|e| Failure::new(Exit::Server, "bad_answer", format!("manifest: {e}")))
}

/// Incremental upload: hash the folder, send only the blobs the server
/// lacks, commit on the current version (nothing when equal).
pub fn push(api: &Api, ws: &str, root: &Path, progress: &Progress) -> Result<PushReport> {
    // The folder is checked (paths, symlinks) before any request.
    let mut skipped = Vec::new();
    let found = tree::list(root, &mut skipped)?;
    for note in &skipped {
        progress.note(note);
    }
    // The limits and the current version are asked for while the files hash.
    let (limits, current, hashed) = std::thread::scope(|scope| {
        let limits = scope.spawn(|| Limits::of(api));
        let current = scope.spawn(|| manifest_of(api, ws, None));
        let bar = progress.bar("hashing", found.len() as u64, false);
        let hashed = parallel_map(&found, PARALLEL, |f| {
            let e = tree::entry(f, u64::MAX);
            bar.inc(1);
            e
        });
        bar.finish();
        (joined(limits.join()), joined(current.join()), hashed)
    });
    let entries = hashed.into_iter().collect::<Result<Vec<FileEntry>>>()?;
    let limits = limits?;
    if let Some(big) = entries.iter().find(|e| e.size > limits.max_blob_bytes) {
        return Err(Failure::new(
            Exit::Usage,
            "blob_too_large",
            format!(
                "{}: {} bytes, over the server's blob limit of {}",
                big.path, big.size, limits.max_blob_bytes
            ),
        ));
    }
    let current = current?;
    let mut missing = HashSet::new();
    for chunk in manifest::unique_blobs(&entries).chunks(MAX_MISSING_QUERY) {
        let body = api.post(&ws_path(ws, "/blobs/missing"), &json!({ "sha256": chunk }))?;
        let list: Vec<String> = serde_json::from_value(body["missing"].clone())
            .map_err(|e| Failure::new(Exit::Server, "bad_answer", format!("missing: {e}")))?;
        missing.extend(list);
    }
    // One upload per missing blob, from the first file that has it: in
    // packs, the large ones alone.
    let mut seen = HashSet::new();
    let todo: Vec<(&tree::Found, &FileEntry)> = found
        .iter()
        .zip(&entries)
        .filter(|(_, e)| missing.contains(&e.sha256) && seen.insert(e.sha256.clone()))
        .collect();
    let source: HashMap<&str, (&tree::Found, &FileEntry)> = todo
        .iter()
        .map(|(f, e)| (e.sha256.as_str(), (*f, *e)))
        .collect();
    let total: u64 = todo.iter().map(|(_, e)| e.size).sum();
    let bar = progress.bar("uploading", total, true);
    let (packs, alone) = limits.plan(
        todo.iter()
            .map(|(_, e)| (e.sha256.clone(), e.size))
            .collect(),
    );
    let packed = parallel_map(&packs, PARALLEL_PACKS, |blobs| {
        let body = pack_body(blobs, &source)?;
        // The bytes were checked against their hashes as the pack was made.
        api.post_bytes(&ws_path(ws, "/blobs/pack"), pack::CONTENT_TYPE, &body)
            .map_err(|err| err.context("uploading a pack"))?;
        let bytes = blobs.iter().map(|(_, size)| size).sum();
        bar.inc(bytes);
        Ok(bytes)
    });
    let sent = parallel_map(&alone, PARALLEL, |(sha, _)| {
        let (f, e) = source[sha.as_str()];
        let abs = f.abs.clone();
        let open = move || fs::File::open(&abs).map(|f| Box::new(f) as Box<dyn Read>);
        let path = ws_path(ws, &format!("/blobs/{}", e.sha256));
        let r = api.put_stream(&path, e.size, &open).map_err(|err| {
            if err.code == "hash_mismatch" {
                Failure::usage(format!(
                    "{}: the file changed while it was sent; push again",
                    f.path
                ))
            } else {
                err.context(&f.path)
            }
        });
        bar.inc(e.size);
        r.map(|_| e.size)
    });
    let uploaded_bytes = packed
        .into_iter()
        .chain(sent)
        .collect::<Result<Vec<u64>>>()?
        .iter()
        .sum();
    bar.finish();
    let (version, committed) = if entries == current.files {
        (current.version, false)
    } else {
        let body = json!({ "baseVersion": current.version, "files": entries });
        let answer = api.json("POST", &ws_path(ws, "/commits"), Some(&body), &[]);
        let answer = answer.map_err(|f| {
            if f.code == "version_conflict" {
                f.context("the workspace changed while pushing (pull it, then push again)")
            } else {
                f
            }
        })?;
        let version = answer.body["version"].as_u64().ok_or_else(|| {
            Failure::new(
                Exit::Server,
                "bad_answer",
                format!("commit answered {}", answer.body),
            )
        })?;
        (version, true)
    };
    Ok(PushReport {
        workspace_id: ws.to_string(),
        version,
        files: entries.len(),
        bytes: entries.iter().map(|e| e.size).sum(),
        uploaded_blobs: todo.len(),
        uploaded_bytes,
        committed,
        entries,
    })
}

/// A pack of `blobs` read from their files. A file whose bytes no longer
/// hash to what was hashed before is refused here, before it is sent.
fn pack_body(
    blobs: &[pack::BlobSize],
    source: &HashMap<&str, (&tree::Found, &FileEntry)>,
) -> Result<Vec<u8>> {
    let mut body = Vec::with_capacity(pack::packed_bytes(blobs) as usize);
    for (sha, size) in blobs {
        let (f, _) = source[sha.as_str()];
        let bytes = fs::read(&f.abs).map_err(|e| Failure::usage(format!("{}: {e}", f.path)))?;
        let header = pack::record_header(sha, *size)
            .filter(|_| hex::encode(Sha256::digest(&bytes)) == *sha)
            .ok_or_else(|| {
                Failure::usage(format!(
                    "{}: the file changed while it was sent; push again",
                    f.path
                ))
            })?;
        body.extend_from_slice(&header);
        body.extend_from_slice(&bytes);
    }
    Ok(body)
}

/// Brings a version into `dest`: writes only the files that differ,
/// removes files the version lacks only with `delete` (what push would
/// not send — ignored files, `.git/`, `.cloudbox/` — is never touched).
pub fn pull(
    api: &Api,
    ws: &str,
    dest: &Path,
    version: Option<u64>,
    delete: bool,
    progress: &Progress,
) -> Result<PullReport> {
    let remote = manifest_of(api, ws, version)?;
    for f in &remote.files {
        validate_path(&f.path).map_err(|why| {
            Failure::new(
                Exit::Server,
                "bad_answer",
                format!("manifest: {}: {why}", f.path),
            )
        })?;
    }
    fs::create_dir_all(dest).map_err(|e| Failure::usage(format!("{}: {e}", dest.display())))?;
    let remote = without_excluded(remote, progress);
    let local = local_entries(dest, &remote)?;
    let plan = manifest::diff(&local, &remote.files);
    let by_path: HashMap<&str, &FileEntry> =
        remote.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let writes: Vec<&FileEntry> = plan
        .added
        .iter()
        .chain(&plan.modified)
        .filter_map(|p| by_path.get(p.as_str()).copied())
        .collect();
    // Removals first, so a file the version turned into a folder makes room.
    let mut deleted = 0;
    if delete {
        for path in &plan.deleted {
            let target = dest.join(path);
            fs::remove_file(&target)
                .map_err(|e| Failure::usage(format!("removing {path}: {e}")))?;
            deleted += 1;
        }
    }
    let total = download(api, ws, dest, &writes, progress)?;
    Ok(PullReport {
        workspace_id: ws.to_string(),
        version: remote.version,
        written: writes.len(),
        deleted,
        bytes: total,
    })
}

/// The version without what pull never writes (`.git/`, `.cloudbox/`).
fn without_excluded(mut remote: Manifest, progress: &Progress) -> Manifest {
    let before = remote.files.len();
    remote.files.retain(|f| !tree::excluded(&f.path));
    if remote.files.len() < before {
        progress.note(&format!(
            "{} files under .git/ or .cloudbox/ in the version were not written",
            before - remote.files.len()
        ));
    }
    remote
}

/// A request thread's answer (a panic in it is a failure, not a crash).
fn joined<T>(r: std::thread::Result<Result<T>>) -> Result<T> {
    r.unwrap_or_else(|_| Err(Failure::network("a request thread failed")))
}

/// After an execute on a folder just pushed (`pushed`): brings in only the
/// paths the execute changed (`changed`), written or removed as the version
/// has them. The rest of the folder is the version the execute started
/// from. A changed path the user also changed locally meanwhile is kept as
/// the user left it, and said so (a plain `pull` takes the agent's).
pub fn pull_changes(
    api: &Api,
    ws: &str,
    dest: &Path,
    version: u64,
    changed: &[String],
    pushed: &[FileEntry],
    progress: &Progress,
) -> Result<PullReport> {
    let remote = without_excluded(manifest_of(api, ws, Some(version))?, progress);
    let base: HashMap<&str, &FileEntry> = pushed.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut writes = Vec::new();
    let mut removals = Vec::new();
    for path in changed {
        validate_path(path).map_err(|why| {
            Failure::new(
                Exit::Server,
                "bad_answer",
                format!("changed file {path}: {why}"),
            )
        })?;
        let now = local_hash(&dest.join(path));
        if now.as_deref() != base.get(path.as_str()).map(|f| f.sha256.as_str()) {
            progress.note(&format!(
                "{path}: changed here during the execute; kept (the agent's is in version {version})"
            ));
            continue;
        }
        match remote.find(path) {
            Some(entry) => writes.push(entry),
            None if tree::excluded(path) => {}
            None => removals.push(path),
        }
    }
    let total = download(api, ws, dest, &writes, progress)?;
    let mut deleted = 0;
    for path in removals {
        match fs::remove_file(dest.join(path)) {
            Ok(()) => deleted += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Failure::usage(format!("removing {path}: {e}"))),
        }
    }
    Ok(PullReport {
        workspace_id: ws.to_string(),
        version: remote.version,
        written: writes.len(),
        deleted,
        bytes: total,
    })
}

/// Writes `files` into `dest` from the workspace's blobs: each blob once,
/// in packs when the server takes them (a few in flight), the large ones
/// streamed alone, 8 at a time. Returns the bytes written.
fn download(
    api: &Api,
    ws: &str,
    dest: &Path,
    files: &[&FileEntry],
    progress: &Progress,
) -> Result<u64> {
    let total: u64 = files.iter().map(|f| f.size).sum();
    if files.is_empty() {
        return Ok(0);
    }
    let limits = Limits::of(api)?;
    let mut by_hash: HashMap<&str, Vec<&FileEntry>> = HashMap::new();
    let mut sized = Vec::new();
    for f in files {
        let same = by_hash.entry(f.sha256.as_str()).or_default();
        if same.is_empty() {
            sized.push((f.sha256.clone(), f.size));
        }
        same.push(f);
    }
    let bar = progress.bar("downloading", total, true);
    let (packs, alone) = limits.plan(sized);
    let packed = parallel_map(&packs, PARALLEL_PACKS, |blobs| {
        let hashes: Vec<&str> = blobs.iter().map(|(sha, _)| sha.as_str()).collect();
        let mut body =
            api.post_for_stream(&ws_path(ws, "/blobs/fetch"), &json!({ "sha256": hashes }))?;
        // The unpacker checks every record against its hash.
        let mut unpacker = pack::Unpacker::default();
        let mut buf = vec![0u8; 256 * 1024];
        let mut arrived = 0;
        loop {
            let n = body
                .read(&mut buf)
                .map_err(|e| Failure::network(format!("download cut short: {e}")))?;
            if n == 0 {
                break;
            }
            let records = unpacker
                .push(&buf[..n])
                .map_err(|e| Failure::network(format!("a fetched pack: {e}")))?;
            for (sha, bytes) in records {
                for f in by_hash.get(sha.as_str()).into_iter().flatten() {
                    place(dest, f, |file| {
                        file.write_all(&bytes)
                            .map_err(|e| Failure::usage(e.to_string()))
                    })
                    .map_err(|e| e.context(&f.path))?;
                    bar.inc(f.size);
                }
                arrived += 1;
            }
        }
        unpacker
            .finish()
            .map_err(|e| Failure::network(format!("a fetched pack: {e}")))?;
        if arrived != blobs.len() {
            return Err(Failure::network(format!(
                "a fetched pack held {arrived} of {} blobs",
                blobs.len()
            )));
        }
        Ok(())
    });
    let big: Vec<&FileEntry> = alone
        .iter()
        .flat_map(|(sha, _)| by_hash.get(sha.as_str()).into_iter().flatten().copied())
        .collect();
    let written = parallel_map(&big, PARALLEL, |f| {
        let r = write_one(api, ws, dest, f).map_err(|e| e.context(&f.path));
        bar.inc(f.size);
        r
    });
    packed
        .into_iter()
        .chain(written)
        .collect::<Result<Vec<()>>>()?;
    bar.finish();
    Ok(total)
}

/// The hash of a regular file (not through a symlink), if there is one.
fn local_hash(path: &Path) -> Option<String> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => tree::hash_file(path).ok().map(|(sha, _)| sha),
        _ => None,
    }
}

/// The local files as manifest entries, hashing only those that could
/// equal a file of `remote` (same path and size); the others get an empty
/// hash, which differs from every real one.
fn local_entries(dest: &Path, remote: &Manifest) -> Result<Vec<FileEntry>> {
    let mut found = tree::list(dest, &mut Vec::new())?;
    // Files of the version that are ignored here are still compared, so an
    // unchanged one is not written again.
    let listed: HashSet<&str> = found.iter().map(|f| f.path.as_str()).collect();
    let ignored: Vec<tree::Found> = remote
        .files
        .iter()
        .filter(|f| !listed.contains(f.path.as_str()))
        .map(|f| tree::Found {
            path: f.path.clone(),
            abs: dest.join(&f.path),
        })
        .filter(|f| fs::symlink_metadata(&f.abs).is_ok_and(|m| m.is_file()))
        .collect();
    found.extend(ignored);
    let entries = parallel_map(&found, PARALLEL, |f| {
        let io = |e: std::io::Error| Failure::usage(format!("{}: {e}", f.path));
        let meta = fs::metadata(&f.abs).map_err(io)?;
        let size = meta.len();
        let sha256 = match remote.find(&f.path) {
            Some(r) if r.size == size => tree::hash_file(&f.abs).map_err(io)?.0,
            _ => String::new(),
        };
        Ok(FileEntry {
            path: f.path.clone(),
            sha256,
            size,
            mode: tree::mode_of(&meta),
        })
    });
    entries.into_iter().collect()
}

/// Downloads one file, checking its hash as the bytes arrive.
fn write_one(api: &Api, ws: &str, dest: &Path, f: &FileEntry) -> Result<()> {
    let body = api.get_stream(&ws_path(ws, &format!("/blobs/{}", f.sha256)))?;
    place(dest, f, |file| {
        // No more than the manifest says (one byte over shows a mismatch).
        let mut body = body.take(f.size.saturating_add(1));
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = body
                .read(&mut buf)
                .map_err(|e| Failure::network(format!("download cut short: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .map_err(|e| Failure::usage(e.to_string()))?;
        }
        if hex::encode(hasher.finalize()) != f.sha256 {
            return Err(Failure::network(
                "the downloaded bytes do not match their hash",
            ));
        }
        Ok(())
    })
}

/// Writes one file under a temporary name beside its place (`fill` gives
/// the bytes), sets its mode, then renames it into place, so an
/// interrupted pull never leaves half a file.
fn place(dest: &Path, f: &FileEntry, fill: impl FnOnce(&mut fs::File) -> Result<()>) -> Result<()> {
    let target = dest.join(&f.path);
    let parent = make_parents(dest, &f.path)?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(tree::pull_temp_name(&name, &random_suffix()));
    let io = |e: std::io::Error| Failure::usage(e.to_string());
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io)?;
        fill(&mut file)?;
        // Only the two manifest modes, whatever the server says.
        let mode = if f.mode & 0o111 != 0 {
            MODE_EXECUTABLE
        } else {
            MODE_FILE
        };
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io)?;
        // The rename is what makes a file appear whole; no fsync per file
        // (a killed pull is covered, a power cut is the filesystem's).
        fs::rename(&tmp, &target).map_err(io)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates the folders above `path` in `dest`, refusing to go through a
/// symlink (a link in the folder must not make pull write outside it).
fn make_parents(dest: &Path, path: &str) -> Result<PathBuf> {
    let mut dir = dest.to_path_buf();
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(Failure::usage(format!(
                    "{}: is a symlink; pull does not write through it",
                    dir.display()
                )))
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(Failure::usage(format!(
                    "{}: is a file where the version has a folder",
                    dir.display()
                )))
            }
            Err(_) => fs::create_dir(&dir)
                .or_else(|e| if dir.is_dir() { Ok(()) } else { Err(e) })
                .map_err(|e| Failure::usage(format!("{}: {e}", dir.display())))?,
        }
    }
    Ok(dir)
}

/// 8 random hex characters (temporary names, idempotency keys).
pub fn random_suffix() -> String {
    random_hex(4)
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // A clock-based fallback is enough for a temporary name.
    if getrandom::getrandom(&mut buf).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        buf = nanos.to_le_bytes()[..bytes.min(16)].to_vec();
    }
    hex::encode(buf)
}
