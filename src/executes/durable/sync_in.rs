//! Sync in: the runner says which blobs its cache lacks, and only those
//! are streamed to it from R2.

use worker::wasm_bindgen::JsValue;
use worker::{Env, Method};

use super::driver::refusal;
use super::ExecCtx;
use crate::api::error::ApiError;
use crate::runner::link::{send, send_body};
use crate::wire::BlobList;
use crate::workspaces::manifest::{self, FileEntry, Manifest};
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
    let wanted = manifest::unique_blobs(&all);
    if wanted.is_empty() {
        return Ok(());
    }
    let list = serde_json::to_string(&BlobList { sha256: wanted }).map_err(|e| e.to_string())?;
    let mut resp = send(
        &ctx.link,
        Method::Post,
        "/blobs/missing",
        Some(list),
        30_000,
    )
    .await?;
    if resp.status_code() != 200 {
        return Err(format!("/blobs/missing answered {}", resp.status_code()));
    }
    let missing: BlobList = resp.json().await.map_err(|e| e.to_string())?;
    for sha in &missing.sha256 {
        let object = store::get_blob(&ctx.env, account, sha)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("blob {sha} is missing from storage"))?;
        let body = object
            .body()
            .ok_or_else(|| format!("blob {sha} has no body"))?
            .response_body()
            .map_err(|e| e.to_string())?;
        let body: JsValue = match body {
            worker::ResponseBody::Stream(stream) => stream.into(),
            worker::ResponseBody::Body(bytes) => {
                worker::js_sys::Uint8Array::from(bytes.as_slice()).into()
            }
            worker::ResponseBody::Empty => worker::js_sys::Uint8Array::new_with_length(0).into(),
        };
        let resp = send_body(
            &ctx.link,
            Method::Put,
            &format!("/blobs/{sha}"),
            Some((body, "application/octet-stream")),
            120_000,
        )
        .await?;
        if ![200, 201].contains(&resp.status_code()) {
            return Err(format!("PUT /blobs/{sha}: {}", refusal(resp).await));
        }
    }
    Ok(())
}
