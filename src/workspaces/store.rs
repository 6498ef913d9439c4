//! Workspace storage: blobs and manifests in R2 (immutable keys), the
//! current version, history and blob index in D1. The rules are in
//! `workspace.rs`; this is the thin layer that applies them to storage.
//!
//! The module API for other surfaces (`/execute` later):
//! - [`read_manifest`]: a workspace's current (or a given) manifest;
//! - [`missing_blobs`]: which of a set of blobs the account lacks;
//! - [`put_blob_bytes`] / [`put_blob_stream`]: store verified blobs;
//! - [`commit`]: a new version on top of `base_version`, or `version_conflict`;
//! - [`get_row`], [`set_session`], [`reset_session`].

use std::collections::HashMap;

use futures_util::StreamExt;
use serde::Deserialize;
use worker::{wasm_bindgen::JsValue, Bucket, ByteStream, D1Database, Env};

use crate::api::error::{ApiError, FieldError};
use crate::platform::bindings;
use crate::platform::config::Config;
use crate::wire::pack;
use crate::workspaces::blob_parts::{PartSplitter, PART_BYTES};
use crate::workspaces::manifest::{self, FileEntry, Manifest};

/// D1 allows at most 100 bound parameters per statement.
const HASHES_PER_QUERY: usize = 90;
fn num(n: u64) -> JsValue {
    JsValue::from_f64(n as f64)
}

/// A workspace as D1 keeps it.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkspaceRow {
    pub id: String,
    pub version: f64,
    pub manifest_key: String,
    pub files: f64,
    pub bytes: f64,
    pub session_id: Option<String>,
    pub created_at: f64,
    pub updated_at: f64,
}

const ROW_COLUMNS: &str =
    "id, version, manifest_key, files, bytes, session_id, created_at, updated_at";

pub async fn get_row(
    db: &D1Database,
    account: &str,
    id: &str,
) -> Result<Option<WorkspaceRow>, ApiError> {
    Ok(db
        .prepare(format!(
            "SELECT {ROW_COLUMNS} FROM workspaces WHERE account_id = ?1 AND id = ?2"
        ))
        .bind(&[account.into(), id.into()])?
        .first(None)
        .await?)
}

/// The account's workspaces ordered by id, starting after `after`.
pub async fn list_rows(
    db: &D1Database,
    account: &str,
    after: &str,
    limit: u32,
) -> Result<Vec<WorkspaceRow>, ApiError> {
    Ok(db
        .prepare(format!(
            "SELECT {ROW_COLUMNS} FROM workspaces WHERE account_id = ?1 AND id > ?2 \
             ORDER BY id LIMIT ?3"
        ))
        .bind(&[account.into(), after.into(), num(limit as u64)])?
        .all()
        .await?
        .results()?)
}

/// The manifest of `version` (default: the current one). A never-used
/// workspace is the empty manifest at version 0.
pub async fn read_manifest(
    env: &Env,
    account: &str,
    id: &str,
    version: Option<u64>,
) -> Result<Manifest, ApiError> {
    let db = bindings::db(env)?;
    let key = match version {
        None => match get_row(&db, account, id).await? {
            Some(row) => row.manifest_key,
            None => return Ok(Manifest::empty()),
        },
        Some(0) => return Ok(Manifest::empty()),
        Some(v) => {
            let key: Option<String> = db
                .prepare(
                    "SELECT manifest_key FROM workspace_versions \
                     WHERE account_id = ?1 AND workspace_id = ?2 AND version = ?3",
                )
                .bind(&[account.into(), id.into(), num(v)])?
                .first(Some("manifest_key"))
                .await?;
            key.ok_or(ApiError::VersionNotFound)?
        }
    };
    let object = bindings::bucket(env)?
        .get(&key)
        .execute()
        .await?
        .ok_or_else(|| ApiError::Internal(format!("manifest object {key} is missing")))?;
    let bytes = object
        .body()
        .ok_or_else(|| ApiError::Internal(format!("manifest object {key} has no body")))?
        .bytes()
        .await?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// Sizes of the blobs of `hashes` the account has stored.
pub async fn blob_sizes(
    db: &D1Database,
    account: &str,
    hashes: &[String],
) -> Result<HashMap<String, u64>, ApiError> {
    #[derive(Deserialize)]
    struct BlobRow {
        sha256: String,
        size: f64,
    }
    let mut statements = Vec::new();
    for chunk in hashes.chunks(HASHES_PER_QUERY) {
        let marks: Vec<String> = (0..chunk.len()).map(|i| format!("?{}", i + 2)).collect();
        let mut args: Vec<JsValue> = vec![account.into()];
        args.extend(chunk.iter().map(|h| JsValue::from_str(h)));
        statements.push(
            db.prepare(format!(
                "SELECT sha256, size FROM blobs WHERE account_id = ?1 AND sha256 IN ({})",
                marks.join(", ")
            ))
            .bind(&args)?,
        );
    }
    let mut found = HashMap::new();
    if statements.is_empty() {
        return Ok(found);
    }
    for result in db.batch(statements).await? {
        for row in result.results::<BlobRow>()? {
            found.insert(row.sha256, row.size as u64);
        }
    }
    Ok(found)
}

/// The hashes of `hashes` the account has never stored, in the given order.
pub async fn missing_blobs(
    db: &D1Database,
    account: &str,
    hashes: &[String],
) -> Result<Vec<String>, ApiError> {
    let found = blob_sizes(db, account, hashes).await?;
    Ok(hashes
        .iter()
        .filter(|h| !found.contains_key(*h))
        .cloned()
        .collect())
}

/// Index rows one statement inserts: two parameters each (hash, size)
/// plus the two they share (account, time), within D1's 100.
const ROWS_PER_INSERT: usize = 49;

/// The statement that indexes `rows` blobs of an account at once and
/// answers the hashes that were new: `?1` account, `?2` time, then hash and
/// size per row.
fn index_insert_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|i| format!("(?1, ?{}, ?{}, ?2)", 3 + 2 * i, 4 + 2 * i))
        .collect();
    format!(
        "INSERT INTO blobs (account_id, sha256, size, created_at) VALUES {} \
         ON CONFLICT (account_id, sha256) DO NOTHING RETURNING sha256",
        values.join(", ")
    )
}

/// Indexes blobs now in R2, in one D1 round trip; returns the hashes the
/// account did not have indexed before.
async fn index_blobs(
    db: &D1Database,
    account: &str,
    rows: &[(String, u64)],
    now_ms: i64,
) -> Result<Vec<String>, ApiError> {
    #[derive(Deserialize)]
    struct New {
        sha256: String,
    }
    let mut statements = Vec::new();
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut args: Vec<JsValue> = vec![account.into(), num(now_ms as u64)];
        for (sha, size) in chunk {
            args.push(sha.as_str().into());
            args.push(num(*size));
        }
        statements.push(db.prepare(index_insert_sql(chunk.len())).bind(&args)?);
    }
    let mut new = Vec::new();
    if statements.is_empty() {
        return Ok(new);
    }
    for result in db.batch(statements).await? {
        new.extend(result.results::<New>()?.into_iter().map(|r| r.sha256));
    }
    Ok(new)
}

/// R2 puts in flight at once.
const PARALLEL_PUTS: usize = 8;

/// Writes blobs (already checked against their names) to R2, a few at a time.
async fn put_objects(
    bucket: &Bucket,
    account: &str,
    blobs: Vec<(String, Vec<u8>)>,
) -> Result<(), ApiError> {
    let mut blobs = blobs.into_iter();
    loop {
        let batch: Vec<(String, Vec<u8>)> = blobs.by_ref().take(PARALLEL_PUTS).collect();
        if batch.is_empty() {
            return Ok(());
        }
        let puts = batch.into_iter().map(|(sha, bytes)| {
            let put = bucket.put(manifest::blob_key(account, &sha), bytes);
            async move { put.execute().await }
        });
        futures_util::future::try_join_all(puts).await?;
    }
}

/// Stores blobs already checked against their names (a pack's): the
/// objects in R2, then their index rows in one batch. Returns the hashes
/// that were new to the account.
pub async fn put_checked_blobs(
    env: &Env,
    account: &str,
    blobs: Vec<(String, Vec<u8>)>,
    now_ms: i64,
) -> Result<Vec<String>, ApiError> {
    if blobs.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, u64)> = blobs
        .iter()
        .map(|(sha, bytes)| (sha.clone(), bytes.len() as u64))
        .collect();
    put_objects(&bindings::bucket(env)?, account, blobs).await?;
    index_blobs(&bindings::db(env)?, account, &rows, now_ms).await
}

/// What a pack upload stored.
pub struct PackStored {
    /// New to the account.
    pub stored: Vec<String>,
    /// Already stored before (the bytes were checked all the same).
    pub existing: Vec<String>,
}

/// Stores every record of a pack body (`wire::pack`) as it streams in:
/// each record is hashed as its bytes arrive and written to R2 once whole
/// and checked, a few writes at a time, so no more than a few records are
/// held in memory; the index rows follow in one batch at the end. A
/// refused record (`bad_pack`, `hash_mismatch`, over `max_blob_bytes`)
/// fails the request, and nothing of it is stored; records before it may
/// be in R2 but are not indexed, so `blobs/missing` still lists them.
pub async fn put_pack(
    env: &Env,
    account: &str,
    mut body: ByteStream,
    max_blob_bytes: u64,
    now_ms: i64,
) -> Result<PackStored, ApiError> {
    let bucket = bindings::bucket(env)?;
    let mut unpacker = pack::Unpacker::new(max_blob_bytes.min(pack::MAX_PACK_BYTES));
    let mut received = 0u64;
    let mut ready: Vec<(String, Vec<u8>)> = Vec::new();
    let mut ready_bytes = 0usize;
    let mut rows: Vec<(String, u64)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        received += chunk.len() as u64;
        if received > pack::MAX_PACK_BYTES {
            return Err(ApiError::BodyTooLarge {
                limit_bytes: pack::MAX_PACK_BYTES,
            });
        }
        let records = unpacker.push(&chunk).map_err(|err| match err {
            pack::PackError::RecordTooLarge { limit, .. } => {
                ApiError::BlobTooLarge { limit_bytes: limit }
            }
            other => ApiError::Pack(other),
        })?;
        for (sha, bytes) in records {
            if !seen.insert(sha.clone()) {
                continue; // the same blob twice in one pack
            }
            rows.push((sha.clone(), bytes.len() as u64));
            ready_bytes += bytes.len();
            ready.push((sha, bytes));
        }
        if ready.len() >= PARALLEL_PUTS || ready_bytes >= pack::MAX_PACKED_BLOB_BYTES as usize {
            put_objects(&bucket, account, std::mem::take(&mut ready)).await?;
            ready_bytes = 0;
        }
    }
    unpacker.finish().map_err(ApiError::Pack)?;
    put_objects(&bucket, account, ready).await?;
    let new: std::collections::HashSet<String> =
        index_blobs(&bindings::db(env)?, account, &rows, now_ms)
            .await?
            .into_iter()
            .collect();
    let (stored, existing) = rows
        .into_iter()
        .map(|(sha, _)| sha)
        .partition(|sha| new.contains(sha));
    Ok(PackStored { stored, existing })
}

/// Stores bytes already in memory as a blob; returns its hash and whether
/// it was new. Used for small bodies (file PUTs).
pub async fn put_blob_bytes(
    env: &Env,
    account: &str,
    bytes: Vec<u8>,
    now_ms: i64,
) -> Result<(String, bool), ApiError> {
    let sha = manifest::sha256_hex(&bytes);
    let db = bindings::db(env)?;
    if !missing_blobs(&db, account, std::slice::from_ref(&sha))
        .await?
        .is_empty()
    {
        let size = bytes.len() as u64;
        bindings::bucket(env)?
            .put(manifest::blob_key(account, &sha), bytes)
            .execute()
            .await?;
        index_blobs(&db, account, &[(sha.clone(), size)], now_ms).await?;
        return Ok((sha, true));
    }
    Ok((sha, false))
}

/// Stores a request body as the blob `expected_sha`, hashing it on the way.
/// Up to `PART_BYTES` it is buffered and `put`; a larger body streams to R2
/// as a multipart upload in `PART_BYTES` parts, completed only when the hash
/// matches (else aborted: nothing is stored). Returns whether it was new,
/// and its size.
/// When the blob is already stored the body is still read and checked.
pub async fn put_blob_stream(
    env: &Env,
    account: &str,
    expected_sha: &str,
    mut body: ByteStream,
    limit: u64,
    now_ms: i64,
) -> Result<(bool, u64), ApiError> {
    let db = bindings::db(env)?;
    let already = missing_blobs(&db, account, &[expected_sha.to_string()])
        .await?
        .is_empty();
    let bucket = bindings::bucket(env)?;
    let key = manifest::blob_key(account, expected_sha);
    let mut upload = MultipartState::new(&bucket, &key, already);
    let outcome = async {
        let mut splitter = PartSplitter::new(PART_BYTES);
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            if splitter.total() + chunk.len() as u64 > limit {
                return Err(ApiError::BlobTooLarge { limit_bytes: limit });
            }
            for part in splitter.push(&chunk) {
                upload.part(part).await?;
            }
        }
        let size = splitter.total();
        let (last, actual) = splitter.finish();
        if actual != expected_sha {
            return Err(ApiError::HashMismatch {
                expected: expected_sha.to_string(),
                actual,
            });
        }
        Ok((last, size))
    }
    .await;
    let (last, size) = match outcome {
        Ok(done) => done,
        Err(err) => {
            upload.abort().await;
            return Err(err);
        }
    };
    if already {
        return Ok((false, size));
    }
    if let Err(err) = upload.finish(last).await {
        upload.abort().await;
        return Err(err);
    }
    index_blobs(&db, account, &[(expected_sha.to_string(), size)], now_ms).await?;
    Ok((true, size))
}

/// A blob upload that becomes an R2 multipart upload once a full part
/// exists; `skip` (blob already stored) only discards the bytes.
struct MultipartState<'a> {
    bucket: &'a Bucket,
    key: &'a str,
    skip: bool,
    upload: Option<worker::MultipartUpload>,
    parts: Vec<worker::UploadedPart>,
}

impl<'a> MultipartState<'a> {
    fn new(bucket: &'a Bucket, key: &'a str, skip: bool) -> Self {
        MultipartState {
            bucket,
            key,
            skip,
            upload: None,
            parts: Vec::new(),
        }
    }

    async fn part(&mut self, bytes: Vec<u8>) -> Result<(), ApiError> {
        if self.skip {
            return Ok(());
        }
        if self.upload.is_none() {
            self.upload = Some(
                self.bucket
                    .create_multipart_upload(self.key)
                    .execute()
                    .await?,
            );
        }
        if let Some(upload) = &self.upload {
            let number = self.parts.len() as u16 + 1;
            self.parts.push(upload.upload_part(number, bytes).await?);
        }
        Ok(())
    }

    /// Stores the rest: a plain `put` when no part was sent, else the last
    /// part and `complete`.
    async fn finish(&mut self, last: Vec<u8>) -> Result<(), ApiError> {
        match self.upload.take() {
            None => {
                self.bucket.put(self.key, last).execute().await?;
            }
            Some(upload) => {
                if !last.is_empty() {
                    let number = self.parts.len() as u16 + 1;
                    self.parts.push(upload.upload_part(number, last).await?);
                }
                let parts = std::mem::take(&mut self.parts);
                upload.complete(parts).await?;
            }
        }
        Ok(())
    }

    /// Best effort: an abandoned multipart upload expires in R2 anyway.
    async fn abort(&mut self) {
        if let Some(upload) = self.upload.take() {
            let _ = upload.abort().await;
        }
    }
}

/// R2 reads of a fetched pack in flight at once, ahead of the one being sent.
const PARALLEL_GETS: usize = 8;

/// The records of `blobs` as a pack body, read from R2 a few at a time and
/// sent in order. A blob that vanished from R2 (or changed size) since
/// its sizes were read ends the stream with an error: the client sees a
/// cut pack, never a wrong one.
pub fn pack_stream(
    env: Env,
    account: String,
    blobs: Vec<pack::BlobSize>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, worker::Error>> + 'static {
    futures_util::stream::iter(blobs)
        .map(move |(sha, size)| {
            let env = env.clone();
            let account = account.clone();
            async move {
                let object = get_blob(&env, &account, &sha)
                    .await
                    .map_err(|e| worker::Error::RustError(e.to_string()))?
                    .ok_or_else(|| worker::Error::RustError(format!("blob {sha} is gone")))?;
                let bytes = match object.body() {
                    Some(body) => body.bytes().await?,
                    None => Vec::new(),
                };
                let header = pack::record_header(&sha, size)
                    .filter(|_| bytes.len() as u64 == size)
                    .ok_or_else(|| worker::Error::RustError(format!("blob {sha} changed size")))?;
                let mut record = Vec::with_capacity(header.len() + bytes.len());
                record.extend_from_slice(&header);
                record.extend_from_slice(&bytes);
                Ok(record)
            }
        })
        .buffered(PARALLEL_GETS)
}

/// The blob's R2 object (with body), if stored.
pub async fn get_blob(
    env: &Env,
    account: &str,
    sha: &str,
) -> Result<Option<worker::Object>, ApiError> {
    Ok(bindings::bucket(env)?
        .get(manifest::blob_key(account, sha))
        .execute()
        .await?)
}

/// Commits `files` as the version after `base_version`: validates and
/// normalizes them, checks every blob is stored with the listed size
/// (400 `missing_blobs`), writes the manifest object, then moves the
/// version in D1 with a guarded statement (409 `version_conflict` if
/// `base_version` is not current — then nothing is visible). `session_id`,
/// when given, is stored with the version. Returns the new manifest.
pub async fn commit(
    env: &Env,
    account: &str,
    id: &str,
    base_version: u64,
    files: Vec<FileEntry>,
    session_id: Option<&str>,
    now_ms: i64,
) -> Result<Manifest, ApiError> {
    let files = manifest::normalize_files(files, Config::from_env(env).max_blob_bytes)?;
    let db = bindings::db(env)?;

    let needed = manifest::unique_blobs(&files);
    let sizes = blob_sizes(&db, account, &needed).await?;
    let missing: Vec<String> = needed
        .iter()
        .filter(|h| !sizes.contains_key(*h))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::MissingBlobs(missing));
    }
    let wrong_sizes: Vec<FieldError> = files
        .iter()
        .enumerate()
        .filter(|(_, f)| sizes.get(&f.sha256) != Some(&f.size))
        .map(|(i, f)| {
            FieldError::new(
                format!("files[{i}].size"),
                format!("{} is not the size of blob {}", f.size, f.sha256),
            )
        })
        .collect();
    if !wrong_sizes.is_empty() {
        return Err(ApiError::ValidationFailed(wrong_sizes));
    }

    let current = current_version(&db, account, id).await?;
    if current != base_version {
        return Err(ApiError::VersionConflict { current });
    }

    let manifest = Manifest {
        version: base_version + 1,
        files,
    };
    let bytes = manifest::manifest_bytes(&manifest)?;
    let digest = manifest::sha256_hex(&bytes);
    let key = manifest::manifest_key(account, id, manifest.version, &digest);
    bindings::bucket(env)?.put(&key, bytes).execute().await?;

    let count = manifest.files.len() as u64;
    let total = manifest.bytes();
    let now = num(now_ms as u64);
    let session = session_id.map(JsValue::from_str);
    let move_version = if base_version == 0 {
        db.prepare(
            "INSERT INTO workspaces (account_id, id, version, manifest_key, files, bytes, \
             session_id, created_at, updated_at) VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?7) \
             ON CONFLICT (account_id, id) DO NOTHING",
        )
        .bind(&[
            account.into(),
            id.into(),
            key.as_str().into(),
            num(count),
            num(total),
            session.clone().unwrap_or(JsValue::NULL),
            now.clone(),
        ])?
    } else {
        db.prepare(
            "UPDATE workspaces SET version = version + 1, manifest_key = ?3, files = ?4, \
             bytes = ?5, session_id = CASE WHEN ?6 THEN ?7 ELSE session_id END, updated_at = ?8 \
             WHERE account_id = ?1 AND id = ?2 AND version = ?9",
        )
        .bind(&[
            account.into(),
            id.into(),
            key.as_str().into(),
            num(count),
            num(total),
            JsValue::from_bool(session.is_some()),
            session.clone().unwrap_or(JsValue::NULL),
            now.clone(),
            num(base_version),
        ])?
    };
    // Runs in the same transaction; inserts only if the statement above won.
    let record_version = db
        .prepare(
            "INSERT INTO workspace_versions (account_id, workspace_id, version, manifest_key, \
             files, bytes, created_at) \
             SELECT account_id, id, version, manifest_key, files, bytes, ?5 FROM workspaces \
             WHERE account_id = ?1 AND id = ?2 AND version = ?3 AND manifest_key = ?4 \
             ON CONFLICT (account_id, workspace_id, version) DO NOTHING",
        )
        .bind(&[
            account.into(),
            id.into(),
            num(manifest.version),
            key.as_str().into(),
            now,
        ])?;
    let results = db.batch(vec![move_version, record_version]).await?;
    let changed = results
        .first()
        .and_then(|r| r.meta().ok().flatten())
        .and_then(|m| m.changes)
        .unwrap_or(0);
    if changed != 1 {
        // Another commit won the race; our manifest object is never referenced.
        let current = current_version(&db, account, id).await?;
        return Err(ApiError::VersionConflict { current });
    }
    Ok(manifest)
}

async fn current_version(db: &D1Database, account: &str, id: &str) -> Result<u64, ApiError> {
    let version: Option<f64> = db
        .prepare("SELECT version FROM workspaces WHERE account_id = ?1 AND id = ?2")
        .bind(&[account.into(), id.into()])?
        .first(Some("version"))
        .await?;
    Ok(version.map(|v| v as u64).unwrap_or(0))
}

/// Removes the workspace and its history; returns whether it existed.
/// Manifest and blob objects stay in R2 for the garbage collector (blobs
/// are shared across versions and workspaces of the account).
pub async fn delete_workspace(db: &D1Database, account: &str, id: &str) -> Result<bool, ApiError> {
    let results = db
        .batch(vec![
            db.prepare("DELETE FROM workspaces WHERE account_id = ?1 AND id = ?2")
                .bind(&[account.into(), id.into()])?,
            db.prepare(
                "DELETE FROM workspace_versions WHERE account_id = ?1 AND workspace_id = ?2",
            )
            .bind(&[account.into(), id.into()])?,
        ])
        .await?;
    Ok(changes(results.first()) == 1)
}

fn changes(result: Option<&worker::D1Result>) -> usize {
    result
        .and_then(|r| r.meta().ok().flatten())
        .and_then(|m| m.changes)
        .unwrap_or(0)
}

/// Stores the agent session id of a workspace; returns whether it exists.
pub async fn set_session(
    db: &D1Database,
    account: &str,
    id: &str,
    session_id: Option<&str>,
    now_ms: i64,
) -> Result<bool, ApiError> {
    let result = db
        .prepare(
            "UPDATE workspaces SET session_id = ?3, updated_at = ?4 \
             WHERE account_id = ?1 AND id = ?2",
        )
        .bind(&[
            account.into(),
            id.into(),
            session_id.map(JsValue::from_str).unwrap_or(JsValue::NULL),
            num(now_ms as u64),
        ])?
        .run()
        .await?;
    Ok(changes(Some(&result)) == 1)
}

/// Forgets the agent session of a workspace; returns whether it exists.
pub async fn reset_session(
    db: &D1Database,
    account: &str,
    id: &str,
    now_ms: i64,
) -> Result<bool, ApiError> {
    set_session(db, account, id, None, now_ms).await
}

/// The files of a stored agent session (`manifest::session_key`), if the
/// account has that session.
pub async fn load_session(
    env: &Env,
    account: &str,
    session_id: &str,
) -> Result<Option<Vec<FileEntry>>, ApiError> {
    let key = manifest::session_key(account, session_id);
    let Some(object) = bindings::bucket(env)?.get(&key).execute().await? else {
        return Ok(None);
    };
    let bytes = object
        .body()
        .ok_or_else(|| ApiError::Internal(format!("session object {key} has no body")))?
        .bytes()
        .await?;
    Ok(Some(serde_json::from_slice(&bytes)?))
}

/// Whether the account has the agent session `session_id`.
pub async fn session_exists(env: &Env, account: &str, session_id: &str) -> Result<bool, ApiError> {
    let key = manifest::session_key(account, session_id);
    Ok(bindings::bucket(env)?.head(&key).await?.is_some())
}
