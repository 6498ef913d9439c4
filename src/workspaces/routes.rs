//! Workspaces (API.md "Workspaces"): versioned trees of files, stored as
//! content-addressed blobs plus one manifest per version. Rules live in
//! `workspaces::manifest`, storage in `workspaces::store`.

use serde::Deserialize;
use serde_json::json;
use worker::{Headers, Request, Response};

use crate::api::auth::{self, Caller};
use crate::api::dispatch::Ctx;
use crate::api::error::{ApiError, FieldError};
use crate::keys::api_key::Permission;
use crate::platform::bindings;
use crate::platform::config::Config;
use crate::wire::pack;
use crate::workspaces::blob_parts::PART_BYTES;
use crate::workspaces::manifest::{self, CommitRequest, FileEntry};
use crate::workspaces::store::{self as store, WorkspaceRow};
use crate::{common::time, platform::http};

/// Attempts of a single-file write without `baseVersion` before giving up
/// with `version_conflict` (each re-reads the current version).
const FILE_WRITE_ATTEMPTS: usize = 5;
const LIST_DEFAULT: u32 = 100;
const LIST_MAX: u32 = 1000;

/// Authenticates with `permission` and returns the caller and the checked
/// workspace id of the path.
async fn open<'c>(
    req: &Request,
    ctx: &'c Ctx<'_>,
    permission: Permission,
) -> Result<(Caller, &'c str), ApiError> {
    let caller = auth::authenticate(req, ctx).await?;
    caller.require(permission)?;
    let id = ctx.param("id")?;
    manifest::validate_workspace_id(id)?;
    Ok((caller, id))
}

fn query_u64(req: &Request, name: &str) -> Result<Option<u64>, ApiError> {
    match http::query(req, name)? {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            ApiError::ValidationFailed(vec![FieldError::new(
                name,
                "must be a non-negative integer",
            )])
        }),
    }
}

fn view(row: &WorkspaceRow) -> serde_json::Value {
    json!({
        "id": row.id,
        "version": row.version as u64,
        "files": row.files as u64,
        "bytes": row.bytes as u64,
        "sessionId": row.session_id,
        "createdAt": time::rfc3339(row.created_at as i64),
        "updatedAt": time::rfc3339(row.updated_at as i64),
    })
}

/// `GET /workspaces?limit&cursor`: the account's workspaces by id.
pub async fn list(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let caller = auth::authenticate(&req, ctx).await?;
    caller.require(Permission::Read)?;
    let limit = query_u64(&req, "limit")?.unwrap_or(LIST_DEFAULT as u64);
    if !(1..=LIST_MAX as u64).contains(&limit) {
        return Err(ApiError::ValidationFailed(vec![FieldError::new(
            "limit",
            format!("must be 1–{LIST_MAX}"),
        )]));
    }
    let cursor = http::query(&req, "cursor")?.unwrap_or_default();
    let db = bindings::db(ctx.env)?;
    // One row more than the page says whether another page follows, so the
    // last page's `nextCursor` is null even when it is exactly full.
    let mut rows = store::list_rows(&db, &caller.account_id, &cursor, limit as u32 + 1).await?;
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let next = more.then(|| rows.last().map(|r| r.id.clone())).flatten();
    let items: Vec<_> = rows.iter().map(view).collect();
    http::json(200, &json!({ "workspaces": items, "nextCursor": next }))
}

/// `GET /workspaces/:id`.
pub async fn get(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let (caller, id) = open(&req, ctx, Permission::Read).await?;
    let row = store::get_row(&bindings::db(ctx.env)?, &caller.account_id, id)
        .await?
        .ok_or(ApiError::WorkspaceNotFound)?;
    http::json(200, &view(&row))
}

/// `DELETE /workspaces/:id`.
pub async fn delete(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let (caller, id) = open(&req, ctx, Permission::Write).await?;
    if !store::delete_workspace(&bindings::db(ctx.env)?, &caller.account_id, id).await? {
        return Err(ApiError::WorkspaceNotFound);
    }
    http::json(200, &json!({ "id": id, "deleted": true }))
}

/// `GET /workspaces/:id/manifest[?version=N]`. A never-used id answers the
/// empty manifest at version 0 (what a first sync starts from).
pub async fn manifest(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let (caller, id) = open(&req, ctx, Permission::Read).await?;
    let version = query_u64(&req, "version")?;
    let manifest = store::read_manifest(ctx.env, &caller.account_id, id, version).await?;
    http::json(200, &manifest)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MissingRequest {
    sha256: Vec<String>,
}

/// `POST /workspaces/:id/blobs/missing` `{sha256:[…]}` → `{missing:[…]}`.
pub async fn blobs_missing(mut req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let (caller, _) = open(&req, ctx, Permission::Write).await?;
    // As large as a commit: up to MAX_MISSING_QUERY hashes.
    let bytes = http::read_body(&mut req, manifest::MAX_COMMIT_BODY_BYTES).await?;
    let body: MissingRequest = http::parse_json(&bytes)?;
    let hashes = manifest::normalize_blob_query(body.sha256)?;
    let db = bindings::db(ctx.env)?;
    let missing = store::missing_blobs(&db, &caller.account_id, &hashes).await?;
    http::json(200, &json!({ "missing": missing }))
}

/// `POST /workspaces/:id/blobs/pack` (a pack body, `wire::pack`) → 200
/// `{stored, existing}`: every record hashed on the way in and written to
/// R2 as it arrives; one request against the rate limits however many
/// records it carries.
pub async fn blobs_pack(mut req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let (caller, _) = open(&req, ctx, Permission::Write).await?;
    let declared = req
        .headers()
        .get("content-length")?
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > pack::MAX_PACK_BYTES) {
        return Err(ApiError::BodyTooLarge {
            limit_bytes: pack::MAX_PACK_BYTES,
        });
    }
    let body = req.stream()?;
    let max_blob = ctx.cfg.max_blob_bytes;
    let stored = store::put_pack(ctx.env, &caller.account_id, body, max_blob, ctx.now_ms).await?;
    http::json(
        200,
        &json!({ "stored": stored.stored, "existing": stored.existing }),
    )
}

/// `POST /workspaces/:id/blobs/fetch` `{sha256:[…]}` → a pack of those
/// blobs (each once, in the order first asked), streamed from R2 a few
/// reads ahead. Refused before any byte is sent: 404 `blob_not_found`
/// listing unknown blobs, 413 when they would not fit in one pack.
pub async fn blobs_fetch(mut req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let (caller, _) = open(&req, ctx, Permission::Read).await?;
    let bytes = http::read_body(&mut req, manifest::MAX_COMMIT_BODY_BYTES).await?;
    let body: MissingRequest = http::parse_json(&bytes)?;
    let hashes = manifest::normalize_blob_query(body.sha256)?;
    let db = bindings::db(ctx.env)?;
    let sizes = store::blob_sizes(&db, &caller.account_id, &hashes).await?;
    let unknown: Vec<String> = hashes
        .iter()
        .filter(|h| !sizes.contains_key(*h))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::UnknownBlobs(unknown));
    }
    let blobs: Vec<pack::BlobSize> = hashes
        .into_iter()
        .map(|h| {
            let size = sizes.get(&h).copied().unwrap_or_default();
            (h, size)
        })
        .collect();
    let total = pack::packed_bytes(&blobs);
    if total > pack::MAX_PACK_BYTES {
        return Err(ApiError::PackTooLarge {
            asked_bytes: total,
            limit_bytes: pack::MAX_PACK_BYTES,
        });
    }
    let stream = store::pack_stream(ctx.env.clone(), caller.account_id.clone(), blobs);
    let headers = Headers::new();
    headers.set("content-type", pack::CONTENT_TYPE)?;
    headers.set("content-length", &total.to_string())?;
    Ok(Response::from_stream(stream)?
        .with_status(200)
        .with_headers(headers))
}

/// `PUT /workspaces/:id/blobs/:sha256`: 201 stored, 200 already stored.
pub async fn blob_put(mut req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let (caller, _) = open(&req, ctx, Permission::Write).await?;
    let sha = ctx.param("sha256")?;
    manifest::validate_sha256("sha256", sha)?;
    let limit = Config::from_env(ctx.env).max_blob_bytes;
    let declared = req
        .headers()
        .get("content-length")?
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::BlobTooLarge { limit_bytes: limit });
    }
    let body = req.stream()?;
    let (created, size) =
        store::put_blob_stream(ctx.env, &caller.account_id, sha, body, limit, ctx.now_ms).await?;
    http::json(
        if created { 201 } else { 200 },
        &json!({ "sha256": sha, "size": size, "stored": created }),
    )
}

/// `GET /workspaces/:id/blobs/:sha256`: the bytes, streamed from R2.
pub async fn blob_get(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let (caller, _) = open(&req, ctx, Permission::Read).await?;
    let sha = ctx.param("sha256")?;
    manifest::validate_sha256("sha256", sha)?;
    stream_blob(ctx, &caller.account_id, sha, &[]).await
}

async fn stream_blob(
    ctx: &Ctx<'_>,
    account: &str,
    sha: &str,
    extra: &[(&str, String)],
) -> Result<Response, ApiError> {
    let object = store::get_blob(ctx.env, account, sha)
        .await?
        .ok_or(ApiError::BlobNotFound)?;
    let size = object.size();
    let body = object
        .body()
        .ok_or_else(|| ApiError::Internal(format!("blob {sha} has no body")))?
        .response_body()?;
    let headers = Headers::new();
    headers.set("content-type", "application/octet-stream")?;
    headers.set("content-length", &size.to_string())?;
    headers.set("x-content-sha256", sha)?;
    for (name, value) in extra {
        headers.set(name, value)?;
    }
    Ok(Response::builder()
        .with_status(200)
        .with_headers(headers)
        .body(body))
}

/// `POST /workspaces/:id/commits` `{baseVersion, files}` → 201 `{version}`.
pub async fn commit(mut req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let (caller, id) = open(&req, ctx, Permission::Write).await?;
    let bytes = http::read_body(&mut req, manifest::MAX_COMMIT_BODY_BYTES).await?;
    let body: CommitRequest = http::parse_json(&bytes)?;
    let manifest = store::commit(
        ctx.env,
        &caller.account_id,
        id,
        body.base_version,
        body.files,
        None,
        ctx.now_ms,
    )
    .await?;
    http::json(201, &json!({ "version": manifest.version }))
}

/// The `path` parameter, checked (400 `bad_path`).
fn file_path<'c>(ctx: &'c Ctx<'_>) -> Result<&'c str, ApiError> {
    let path = ctx.param("path")?;
    manifest::check_path(path)?;
    Ok(path)
}

/// `GET /workspaces/:id/files/*path[?version=N]`: one file's bytes.
pub async fn file_get(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let (caller, id) = open(&req, ctx, Permission::Read).await?;
    let path = file_path(ctx)?;
    let version = query_u64(&req, "version")?;
    let manifest = store::read_manifest(ctx.env, &caller.account_id, id, version).await?;
    if manifest.version == 0 {
        return Err(ApiError::WorkspaceNotFound);
    }
    let file = manifest.find(path).ok_or(ApiError::FileNotFound)?;
    let extra = [
        ("x-file-mode", format!("{:o}", file.mode)),
        ("x-workspace-version", manifest.version.to_string()),
    ];
    stream_blob(ctx, &caller.account_id, &file.sha256, &extra).await
}

/// `PUT /workspaces/:id/files/*path[?mode=755&baseVersion=N]`: writes one
/// file (body ≤ 8 MiB; larger files go through blobs + commits) as a new
/// version. Without `baseVersion` it applies on whatever version is current.
pub async fn file_put(mut req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let (caller, id) = open(&req, ctx, Permission::Write).await?;
    let path = file_path(ctx)?.to_string();
    let mode = http::query(&req, "mode")?
        .map(|m| manifest::parse_mode(&m))
        .transpose()?;
    let base = query_u64(&req, "baseVersion")?;
    let limit = Config::from_env(ctx.env)
        .max_blob_bytes
        .min(PART_BYTES as u64);
    let bytes = http::read_body(&mut req, limit).await?;
    let size = bytes.len() as u64;
    let account = caller.account_id.as_str();
    let (sha, _) = store::put_blob_bytes(ctx.env, account, bytes, ctx.now_ms).await?;
    let manifest = edit_files(ctx, account, id, base, |current| {
        let files = &current.files;
        let mode = mode
            .or_else(|| files.iter().find(|f| f.path == path).map(|f| f.mode))
            .unwrap_or(manifest::MODE_FILE);
        let entry = FileEntry {
            path: path.clone(),
            sha256: sha.clone(),
            size,
            mode,
        };
        Ok(manifest::with_file(files, entry))
    })
    .await?;
    let written = manifest.find(&path).cloned();
    http::json(
        201,
        &json!({
            "version": manifest.version,
            "path": path,
            "sha256": sha,
            "size": size,
            "mode": written.map(|f| f.mode),
        }),
    )
}

/// `DELETE /workspaces/:id/files/*path[?baseVersion=N]`: a new version without it.
pub async fn file_delete(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let (caller, id) = open(&req, ctx, Permission::Write).await?;
    let path = file_path(ctx)?.to_string();
    let base = query_u64(&req, "baseVersion")?;
    let manifest = edit_files(ctx, &caller.account_id, id, base, |current| {
        if current.version == 0 {
            return Err(ApiError::WorkspaceNotFound);
        }
        manifest::without_file(&current.files, &path).ok_or(ApiError::FileNotFound)
    })
    .await?;
    http::json(
        200,
        &json!({ "version": manifest.version, "path": path, "deleted": true }),
    )
}

/// Read–modify–commit of the current file list. With `base` given, one try
/// on that version; without, retried on a conflict.
async fn edit_files(
    ctx: &Ctx<'_>,
    account: &str,
    id: &str,
    base: Option<u64>,
    edit: impl Fn(&manifest::Manifest) -> Result<Vec<FileEntry>, ApiError>,
) -> Result<manifest::Manifest, ApiError> {
    let attempts = if base.is_some() {
        1
    } else {
        FILE_WRITE_ATTEMPTS
    };
    let mut last = ApiError::Internal("no commit attempt".into());
    for _ in 0..attempts {
        let current = store::read_manifest(ctx.env, account, id, None).await?;
        if let Some(base) = base {
            if base != current.version {
                return Err(ApiError::VersionConflict {
                    current: current.version,
                });
            }
        }
        let files = edit(&current)?;
        match store::commit(
            ctx.env,
            account,
            id,
            current.version,
            files,
            None,
            ctx.now_ms,
        )
        .await
        {
            Err(err @ ApiError::VersionConflict { .. }) => last = err,
            other => return other,
        }
    }
    Err(last)
}

/// `POST /workspaces/:id/session/reset`: forgets the stored agent session.
pub async fn session_reset(req: Request, ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let (caller, id) = open(&req, ctx, Permission::Write).await?;
    let db = bindings::db(ctx.env)?;
    if !store::reset_session(&db, &caller.account_id, id, ctx.now_ms).await? {
        return Err(ApiError::WorkspaceNotFound);
    }
    http::json(200, &json!({ "id": id, "sessionId": null }))
}
