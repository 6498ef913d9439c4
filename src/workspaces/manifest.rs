//! Workspace rules (pure): ids, manifests (validation, normalization, size
//! limits), manifest diffing, single-file edits, and the R2 key layout.
//! The routes, the store, the sync client and `/execute` all use these.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use crate::api::error::{ApiError, FieldError};
use crate::common::paths;

/// Most files one manifest may list.
pub const MAX_FILES: usize = 20_000;
/// Largest manifest, as stored (canonical JSON).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest commit request body (a manifest plus `baseVersion`).
pub const MAX_COMMIT_BODY_BYTES: u64 = MAX_MANIFEST_BYTES as u64;
/// Most hashes one `blobs/missing` request may ask about.
pub const MAX_MISSING_QUERY: usize = MAX_FILES;
/// File modes a manifest may carry: a regular file, or an executable one.
pub const MODE_FILE: u32 = 0o644;
pub const MODE_EXECUTABLE: u32 = 0o755;
pub const MODES: [u32; 2] = [MODE_FILE, MODE_EXECUTABLE];

/// One file of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub sha256: String,
    pub size: u64,
    #[serde(default = "default_mode")]
    pub mode: u32,
}

fn default_mode() -> u32 {
    MODE_FILE
}

/// A version of a workspace: the whole tree, files sorted by path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub version: u64,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    pub fn empty() -> Self {
        Manifest {
            version: 0,
            files: Vec::new(),
        }
    }

    /// Total bytes of all files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub fn find(&self, path: &str) -> Option<&FileEntry> {
        self.files
            .binary_search_by(|f| f.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.files[i])
    }
}

/// Body of `POST /workspaces/:id/commits`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommitRequest {
    pub base_version: u64,
    pub files: Vec<FileEntry>,
}

/// `^[A-Za-z0-9_-]{1,128}$`.
pub fn validate_workspace_id(id: &str) -> Result<(), ApiError> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::ValidationFailed(vec![FieldError::new(
            "id",
            "workspace id must match ^[A-Za-z0-9_-]{1,128}$",
        )]))
    }
}

/// 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub fn validate_sha256(field: &str, s: &str) -> Result<(), ApiError> {
    if is_sha256_hex(s) {
        Ok(())
    } else {
        Err(ApiError::ValidationFailed(vec![FieldError::new(
            field,
            "must be a SHA-256 as 64 lowercase hex digits",
        )]))
    }
}

/// A path rule failure as the contract's 400 `bad_path`.
pub fn check_path(path: &str) -> Result<(), ApiError> {
    paths::validate_path(path).map_err(|why| ApiError::BadPath(format!("{path:?}: {why}")))
}

/// Hex SHA-256 of some bytes: the crate's one helper, re-exported here
/// because blob hashes are a workspace rule.
pub use crate::common::canonical::sha256_hex;

/// Checks every entry and returns the files sorted by path. Errors: a bad
/// path → `bad_path`; duplicate paths, a path that is both a file and a
/// directory, a bad hash, size or mode, too many files → `validation_failed`.
pub fn normalize_files(
    mut files: Vec<FileEntry>,
    max_blob_bytes: u64,
) -> Result<Vec<FileEntry>, ApiError> {
    if files.len() > MAX_FILES {
        return Err(invalid("files", format!("at most {MAX_FILES} files")));
    }
    let mut problems = Vec::new();
    for (i, f) in files.iter().enumerate() {
        check_path(&f.path)?;
        if !is_sha256_hex(&f.sha256) {
            problems.push(FieldError::new(
                format!("files[{i}].sha256"),
                "must be 64 lowercase hex digits",
            ));
        }
        if f.size > max_blob_bytes {
            problems.push(FieldError::new(
                format!("files[{i}].size"),
                format!("larger than the blob limit of {max_blob_bytes} bytes"),
            ));
        }
        if !MODES.contains(&f.mode) {
            problems.push(FieldError::new(
                format!("files[{i}].mode"),
                "must be 420 (0o644) or 493 (0o755)",
            ));
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::ValidationFailed(problems));
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some(pair) = files.windows(2).find(|w| w[0].path == w[1].path) {
        return Err(invalid(
            "files",
            format!("path {:?} is listed twice", pair[0].path),
        ));
    }
    let all: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    for f in &files {
        let parents = f.path.match_indices('/').map(|(i, _)| &f.path[..i]);
        if let Some(dir) = parents.into_iter().find(|dir| all.contains(dir)) {
            return Err(invalid(
                "files",
                format!("{dir:?} is a file, so {:?} cannot be under it", f.path),
            ));
        }
    }
    Ok(files)
}

fn invalid(field: &str, message: String) -> ApiError {
    ApiError::ValidationFailed(vec![FieldError::new(field, message)])
}

/// The stored form of a manifest (canonical JSON), refusing one over
/// `MAX_MANIFEST_BYTES` (413 `body_too_large`).
pub fn manifest_bytes(manifest: &Manifest) -> Result<Vec<u8>, ApiError> {
    let bytes = serde_json::to_vec(manifest)
        .map_err(|e| ApiError::Internal(format!("manifest json: {e}")))?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(ApiError::BodyTooLarge {
            limit_bytes: MAX_MANIFEST_BYTES as u64,
        });
    }
    Ok(bytes)
}

/// Distinct blob hashes a file list needs, sorted.
pub fn unique_blobs(files: &[FileEntry]) -> Vec<String> {
    files
        .iter()
        .map(|f| f.sha256.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Validates a `blobs/missing` query and returns it de-duplicated, in the
/// order first given.
pub fn normalize_blob_query(hashes: Vec<String>) -> Result<Vec<String>, ApiError> {
    if hashes.len() > MAX_MISSING_QUERY {
        return Err(invalid(
            "sha256",
            format!("at most {MAX_MISSING_QUERY} hashes per request"),
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, h) in hashes.into_iter().enumerate() {
        validate_sha256(&format!("sha256[{i}]"), &h)?;
        if seen.insert(h.clone()) {
            out.push(h);
        }
    }
    Ok(out)
}

/// What changed from one version to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestDiff {
    pub added: Vec<String>,
    /// Content or mode changed.
    pub modified: Vec<String>,
    pub deleted: Vec<String>,
    /// Blobs `new` references that `old` did not (what a sync must move).
    pub new_blobs: Vec<String>,
}

impl ManifestDiff {
    /// Every path that differs, sorted: the `changedFiles` of `/execute`.
    pub fn changed_files(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .added
            .iter()
            .chain(&self.modified)
            .chain(&self.deleted)
            .cloned()
            .collect();
        all.sort();
        all
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.deleted.is_empty()
    }
}

pub fn diff(old: &[FileEntry], new: &[FileEntry]) -> ManifestDiff {
    let before: BTreeMap<&str, &FileEntry> = old.iter().map(|f| (f.path.as_str(), f)).collect();
    let after: BTreeMap<&str, &FileEntry> = new.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut out = ManifestDiff::default();
    for (path, f) in &after {
        match before.get(path) {
            None => out.added.push(path.to_string()),
            Some(b) if b.sha256 != f.sha256 || b.mode != f.mode => {
                out.modified.push(path.to_string())
            }
            Some(_) => {}
        }
    }
    out.deleted = before
        .keys()
        .filter(|p| !after.contains_key(*p))
        .map(|p| p.to_string())
        .collect();
    let old_blobs: HashSet<&str> = old.iter().map(|f| f.sha256.as_str()).collect();
    out.new_blobs = new
        .iter()
        .map(|f| f.sha256.as_str())
        .filter(|h| !old_blobs.contains(h))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(str::to_string)
        .collect();
    out
}

/// The files after writing one (added or replaced).
pub fn with_file(files: &[FileEntry], entry: FileEntry) -> Vec<FileEntry> {
    let mut out: Vec<FileEntry> = files
        .iter()
        .filter(|f| f.path != entry.path)
        .cloned()
        .collect();
    out.push(entry);
    out
}

/// The files after deleting one; `None` if it is not there.
pub fn without_file(files: &[FileEntry], path: &str) -> Option<Vec<FileEntry>> {
    let out: Vec<FileEntry> = files.iter().filter(|f| f.path != path).cloned().collect();
    (out.len() < files.len()).then_some(out)
}

/// Applies what changed from `base` to `ours` on top of `current`: an
/// agent's edits replayed onto a version someone committed while it ran,
/// so neither side's write is lost. Where both touched a path, ours wins.
pub fn rebase(base: &[FileEntry], ours: &[FileEntry], current: &[FileEntry]) -> Vec<FileEntry> {
    let changes = diff(base, ours);
    let ours_by_path: BTreeMap<&str, &FileEntry> =
        ours.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut out: BTreeMap<String, FileEntry> = current
        .iter()
        .map(|f| (f.path.clone(), f.clone()))
        .collect();
    for path in &changes.deleted {
        out.remove(path);
    }
    for path in changes.added.iter().chain(&changes.modified) {
        if let Some(f) = ours_by_path.get(path.as_str()) {
            // A file and a directory cannot share a path: ours replaces
            // their files under it, and their file where our directory goes.
            let dir = format!("{path}/");
            out.retain(|p, _| !p.starts_with(&dir) && !path.starts_with(&format!("{p}/")));
            out.insert(path.clone(), (*f).clone());
        }
    }
    out.into_values().collect()
}

/// A mode given as octal text (`644`, `0644`, `0o755`) on a file PUT.
pub fn parse_mode(text: &str) -> Result<u32, ApiError> {
    let digits = text.trim_start_matches("0o").trim_start_matches('0');
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if MODES.contains(&mode) => Ok(mode),
        _ => Err(invalid("mode", "must be 644 or 755 (octal)".into())),
    }
}

// --- R2 key layout (objects are immutable; "current" lives in D1) ---

pub fn blob_key(account: &str, sha256: &str) -> String {
    format!("blobs/{account}/{sha256}")
}

/// `manifests/<account>/<workspace>/<version>-<sha256 of the manifest>.json`.
/// The digest keeps every key immutable: two commits racing for the same
/// version write different keys, and only the one D1 accepts is ever read.
pub fn manifest_key(account: &str, workspace: &str, version: u64, digest: &str) -> String {
    format!("manifests/{account}/{workspace}/{version}-{digest}.json")
}

/// `sessions/<account>/<session id>.json`: the agent session's files (a
/// list of `FileEntry` under `CODEX_HOME`), rewritten after each task of
/// that session. One workspace's DO runs its tasks one at a time, and a
/// session id names one thread, so writers never race.
pub fn session_key(account: &str, session_id: &str) -> String {
    format!("sessions/{account}/{session_id}.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, fill: char) -> FileEntry {
        FileEntry {
            path: path.into(),
            sha256: fill.to_string().repeat(64),
            size: 3,
            mode: MODE_FILE,
        }
    }

    #[test]
    fn rebase_replays_our_changes_onto_the_current_version() {
        let base = vec![entry("a", 'a'), entry("b", 'b'), entry("c", 'c')];
        // We changed a, deleted b, added d.
        let ours = vec![entry("a", '1'), entry("c", 'c'), entry("d", 'd')];
        // Meanwhile someone changed c and added e.
        let current = vec![
            entry("a", 'a'),
            entry("b", 'b'),
            entry("c", '2'),
            entry("e", 'e'),
        ];
        let merged = rebase(&base, &ours, &current);
        assert_eq!(
            merged,
            vec![
                entry("a", '1'),
                entry("c", '2'),
                entry("d", 'd'),
                entry("e", 'e')
            ]
        );
        // With nothing committed in between, the result is ours.
        assert_eq!(rebase(&base, &ours, &base), ours);
        // Where both changed a path, ours wins.
        let theirs = vec![entry("a", '9'), entry("b", 'b'), entry("c", 'c')];
        assert_eq!(rebase(&base, &ours, &theirs)[0], entry("a", '1'));
    }

    #[test]
    fn rebase_never_leaves_a_file_where_a_directory_is() {
        let base = vec![entry("a", 'a')];
        // We added `x`; they added `x/y`.
        let ours = vec![entry("a", 'a'), entry("x", 'x')];
        let theirs = vec![entry("a", 'a'), entry("x/y", 'y')];
        assert_eq!(
            rebase(&base, &ours, &theirs),
            vec![entry("a", 'a'), entry("x", 'x')]
        );
        // We added `d/f`; they added the file `d`.
        let ours = vec![entry("a", 'a'), entry("d/f", 'f')];
        let theirs = vec![entry("a", 'a'), entry("d", 'd')];
        assert_eq!(
            rebase(&base, &ours, &theirs),
            vec![entry("a", 'a'), entry("d/f", 'f')]
        );
    }

    #[test]
    fn session_keys_are_per_account() {
        assert_eq!(session_key("acct_1", "th-1"), "sessions/acct_1/th-1.json");
    }

    fn code(err: ApiError) -> &'static str {
        err.code()
    }

    #[test]
    fn workspace_ids() {
        for ok in ["a", "ws-1_A", &"x".repeat(128)] {
            assert!(validate_workspace_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", "a.b", &"x".repeat(129)] {
            assert!(validate_workspace_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sha256_hex_is_64_lowercase_hex() {
        assert!(is_sha256_hex(&"a".repeat(64)));
        assert!(!is_sha256_hex(&"A".repeat(64)));
        assert!(!is_sha256_hex(&"a".repeat(63)));
        assert!(!is_sha256_hex(&"g".repeat(64)));
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn normalize_sorts_and_accepts_good_files() {
        let files = normalize_files(vec![entry("b", 'b'), entry("a/c", 'a')], 100).unwrap();
        let paths: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["a/c", "b"]);
        assert!(normalize_files(vec![], 100).unwrap().is_empty());
    }

    #[test]
    fn normalize_refuses_bad_entries() {
        assert_eq!(
            code(normalize_files(vec![entry("../x", 'a')], 100).unwrap_err()),
            "bad_path"
        );
        assert_eq!(
            code(normalize_files(vec![entry("/abs", 'a')], 100).unwrap_err()),
            "bad_path"
        );
        let dup = vec![entry("a", 'a'), entry("a", 'b')];
        assert_eq!(
            code(normalize_files(dup, 100).unwrap_err()),
            "validation_failed"
        );
        let file_and_dir = vec![entry("a", 'a'), entry("a-x", 'a'), entry("a/b", 'b')];
        assert_eq!(
            code(normalize_files(file_and_dir, 100).unwrap_err()),
            "validation_failed"
        );
        let mut bad_hash = entry("a", 'a');
        bad_hash.sha256 = "XYZ".into();
        assert_eq!(
            code(normalize_files(vec![bad_hash], 100).unwrap_err()),
            "validation_failed"
        );
        let mut bad_mode = entry("a", 'a');
        bad_mode.mode = 0o777;
        assert_eq!(
            code(normalize_files(vec![bad_mode], 100).unwrap_err()),
            "validation_failed"
        );
        let mut too_big = entry("a", 'a');
        too_big.size = 101;
        assert_eq!(
            code(normalize_files(vec![too_big], 100).unwrap_err()),
            "validation_failed"
        );
        let many: Vec<_> = (0..=MAX_FILES)
            .map(|i| entry(&format!("f{i}"), 'a'))
            .collect();
        assert_eq!(
            code(normalize_files(many, 100).unwrap_err()),
            "validation_failed"
        );
    }

    #[test]
    fn commit_request_shape() {
        let body = r#"{"baseVersion":2,"files":[{"path":"a","sha256":"x","size":1}]}"#;
        let req: CommitRequest = serde_json::from_str(body).unwrap();
        assert_eq!(req.base_version, 2);
        assert_eq!(req.files[0].mode, MODE_FILE, "mode defaults to 0o644");
        let unknown = r#"{"baseVersion":2,"files":[],"extra":1}"#;
        assert!(serde_json::from_str::<CommitRequest>(unknown).is_err());
        let negative = r#"{"baseVersion":-1,"files":[]}"#;
        assert!(serde_json::from_str::<CommitRequest>(negative).is_err());
    }

    #[test]
    fn manifest_size_is_capped() {
        let small = Manifest {
            version: 1,
            files: vec![entry("a", 'a')],
        };
        assert!(manifest_bytes(&small).is_ok());
        let big = Manifest {
            version: 1,
            files: (0..MAX_FILES)
                .map(|i| entry(&format!("{i}/{}", "p".repeat(300)), 'a'))
                .collect(),
        };
        assert_eq!(manifest_bytes(&big).unwrap_err().code(), "body_too_large");
    }

    #[test]
    fn blob_queries_are_validated_and_deduplicated() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        assert_eq!(
            normalize_blob_query(vec![b.clone(), a.clone(), b.clone()]).unwrap(),
            vec![b, a]
        );
        assert!(normalize_blob_query(vec!["nope".into()]).is_err());
    }

    #[test]
    fn diff_reports_changes_and_new_blobs() {
        let old = vec![entry("keep", 'a'), entry("edit", 'b'), entry("gone", 'c')];
        let mut chmod = entry("keep", 'a');
        chmod.mode = MODE_EXECUTABLE;
        let new = vec![
            chmod,
            entry("edit", 'd'),
            entry("new", 'a'),
            entry("new2", 'e'),
        ];
        let d = diff(&old, &new);
        assert_eq!(d.added, ["new", "new2"]);
        assert_eq!(d.modified, ["edit", "keep"]);
        assert_eq!(d.deleted, ["gone"]);
        assert_eq!(d.new_blobs, ["d".repeat(64), "e".repeat(64)]);
        assert_eq!(d.changed_files(), ["edit", "gone", "keep", "new", "new2"]);
        assert!(diff(&old, &old).is_empty());
        assert!(diff(&old, &old).new_blobs.is_empty());
    }

    #[test]
    fn single_file_edits() {
        let files = vec![entry("a", 'a'), entry("b", 'b')];
        let written = with_file(&files, entry("a", 'c'));
        assert_eq!(written.len(), 2);
        assert!(written
            .iter()
            .any(|f| f.path == "a" && f.sha256.starts_with('c')));
        assert_eq!(without_file(&files, "b").unwrap().len(), 1);
        assert!(without_file(&files, "zzz").is_none());
    }

    #[test]
    fn modes_parse_from_octal_text() {
        assert_eq!(parse_mode("644").unwrap(), 0o644);
        assert_eq!(parse_mode("0755").unwrap(), 0o755);
        assert_eq!(parse_mode("0o755").unwrap(), 0o755);
        assert!(parse_mode("777").is_err());
        assert!(parse_mode("abc").is_err());
        assert!(parse_mode("").is_err());
    }

    #[test]
    fn manifest_lookup_and_keys() {
        let m = Manifest {
            version: 3,
            files: normalize_files(vec![entry("b", 'b'), entry("a", 'a')], 10).unwrap(),
        };
        assert_eq!(m.find("b").unwrap().sha256, "b".repeat(64));
        assert!(m.find("c").is_none());
        assert_eq!(m.bytes(), 6);
        assert_eq!(blob_key("acct_1", "ab"), "blobs/acct_1/ab");
        assert_eq!(
            manifest_key("acct_1", "ws", 3, "ff"),
            "manifests/acct_1/ws/3-ff.json"
        );
    }
}
