//! Sync out and commit: the blobs the account lacks are pulled into R2,
//! then the new version is committed in one guarded step (replayed onto a
//! version someone committed meanwhile).

use super::ending::Saved;
use super::sync_in::read_manifest_at;
use super::ExecCtx;
use crate::api::error::{ApiError, FieldError};
use crate::common::time;
use crate::executes::execution::ExecStart;
use crate::platform::bindings;
use crate::wire::TaskResult;
use crate::workspaces::manifest::{self, FileEntry};
use crate::workspaces::store;

/// Sync out and commit: pulls the blobs the account lacks, stores the
/// session, commits the tree as the next version (replaying the agent's
/// changes onto a version committed meanwhile).
pub(super) async fn save(
    ctx: &ExecCtx,
    id: &str,
    start: &ExecStart,
    result: &TaskResult,
) -> Result<Saved, ApiError> {
    let account = start.account_id.as_str();
    let ws = start.workspace_id.as_str();
    let db = bindings::db(&ctx.env)?;
    let now = time::now_ms();
    let all: Vec<FileEntry> = result
        .files
        .iter()
        .chain(&result.session)
        .cloned()
        .collect();
    let wanted: Vec<(String, u64)> = all.iter().map(|f| (f.sha256.clone(), f.size)).collect();
    crate::runner::blobs::pull_missing(&ctx.link, &ctx.env, account, &wanted, now).await?;

    let session_id = result.thread_id.clone();
    if let Some(sid) = &session_id {
        let key = manifest::session_key(account, sid);
        bindings::bucket(&ctx.env)?
            .put(&key, serde_json::to_vec(&result.session)?)
            .execute()
            .await?;
    }

    let row = ctx.get(id)?;
    let base = read_manifest_at(
        &ctx.env,
        account,
        ws,
        row.base_version.unwrap_or(0.0) as u64,
    )
    .await?;
    let changes = manifest::diff(&base.files, &result.files);
    if changes.is_empty() && base.version > 0 {
        // Nothing to commit: the workspace keeps its version (someone may
        // have committed meanwhile), the session is stored.
        if let Some(sid) = &session_id {
            store::set_session(&db, account, ws, Some(sid), now).await?;
        }
        let current = store::get_row(&db, account, ws)
            .await?
            .map(|w| w.version as u64)
            .unwrap_or(base.version);
        return Ok(Saved {
            version: current,
            changed_files: Vec::new(),
            session_id,
        });
    }
    let mut current_version = base.version;
    let mut files = result.files.clone();
    for _ in 0..5 {
        match store::commit(
            &ctx.env,
            account,
            ws,
            current_version,
            files.clone(),
            session_id.as_deref(),
            now,
        )
        .await
        {
            Ok(manifest) => {
                return Ok(Saved {
                    version: manifest.version,
                    changed_files: changes.changed_files(),
                    session_id,
                })
            }
            Err(ApiError::VersionConflict { current }) => {
                if current == 0 && base.version > 0 {
                    return Err(ApiError::ValidationFailed(vec![FieldError::new(
                        "workspaceId",
                        "the workspace was deleted while the agent ran",
                    )]));
                }
                let latest = read_manifest_at(&ctx.env, account, ws, current).await?;
                current_version = latest.version;
                files = manifest::rebase(&base.files, &result.files, &latest.files);
                if latest.version > base.version && files == latest.files {
                    // Our commit already landed (a driver that stopped
                    // after committing is resumed): nothing more to do.
                    return Ok(Saved {
                        version: latest.version,
                        changed_files: changes.changed_files(),
                        session_id,
                    });
                }
            }
            Err(err) => return Err(err),
        }
    }
    Err(ApiError::Internal(
        "the workspace kept changing during the commit".into(),
    ))
}
