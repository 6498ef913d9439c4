//! Sync in: the runner says which blobs its cache lacks, and only those
//! are streamed to it from R2.

use worker::Env;

use super::ExecCtx;
use crate::api::error::ApiError;
use crate::workspaces::manifest::{FileEntry, Manifest};
use crate::workspaces::store;

/// The manifest of `version` (0: the empty one).
pub(super) async fn read_manifest_at(
    env: &Env,
    account: &str,
    workspace_id: &str,
    version: u64,
) -> Result<Manifest, ApiError> {
    if version == 0 {
        return Ok(Manifest::empty());
    }
    store::read_manifest(env, account, workspace_id, Some(version)).await
}

/// Streams to the runner only the blobs its cache lacks.
pub(super) async fn sync_in(
    ctx: &ExecCtx,
    account: &str,
    files: &[FileEntry],
    session: &[FileEntry],
) -> Result<(), String> {
    let all: Vec<FileEntry> = files.iter().chain(session).cloned().collect();
    let sized: Vec<(String, u64)> = all.iter().map(|f| (f.sha256.clone(), f.size)).collect();
    crate::runner::blobs::push_missing(&ctx.link, &ctx.env, account, &sized).await
}
