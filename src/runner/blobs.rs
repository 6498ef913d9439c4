//! Moving an account's blobs between R2 and the runner's cache, for every
//! job that needs it (an execute's workspace, a live run's snapshot): only
//! what the other side lacks is sent.

use worker::wasm_bindgen::JsValue;
use worker::{Env, Method, Response};

use crate::api::error::ApiError;
use crate::platform::bindings;
use crate::platform::config::Config;
use crate::runner::link::{send, send_body, Link};
use crate::wire::{pack, BlobList, RunnerError};
use crate::workspaces::store;
use futures_util::{StreamExt, TryStreamExt};

/// A runner's refusal as one line (its message, or the start of its body).
pub(crate) async fn refusal(mut resp: Response) -> String {
    let status = resp.status_code();
    let text = resp.text().await.unwrap_or_default();
    match RunnerError::parse(&text) {
        Some(err) if err.missing.is_empty() => format!("{status} {}", err.message),
        Some(err) => format!("{status} {} ({} blobs)", err.message, err.missing.len()),
        None => format!("{status} {}", text.chars().take(500).collect::<String>()),
    }
}

/// Each hash once, with its size.
fn distinct(wanted: &[(String, u64)]) -> Vec<(String, u64)> {
    let mut seen = std::collections::HashSet::new();
    wanted
        .iter()
        .filter(|(sha, _)| seen.insert(sha.clone()))
        .cloned()
        .collect()
}

/// The R2 object of a blob as a request body.
async fn blob_body(env: &Env, account: &str, sha: &str) -> Result<JsValue, String> {
    let object = store::get_blob(env, account, sha)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("blob {sha} is missing from storage"))?;
    let body = object
        .body()
        .ok_or_else(|| format!("blob {sha} has no body"))?
        .response_body()
        .map_err(|e| e.to_string())?;
    Ok(match body {
        worker::ResponseBody::Stream(stream) => stream.into(),
        worker::ResponseBody::Body(bytes) => {
            worker::js_sys::Uint8Array::from(bytes.as_slice()).into()
        }
        worker::ResponseBody::Empty => worker::js_sys::Uint8Array::new_with_length(0).into(),
    })
}

/// Sends to the runner the blobs of `wanted` (hash, size) its cache lacks:
/// in packs (`POST /blobs/unpack`), the large ones alone.
pub(crate) async fn push_missing(
    link: &Link,
    env: &Env,
    account: &str,
    wanted: &[(String, u64)],
) -> Result<(), String> {
    let wanted = distinct(wanted);
    if wanted.is_empty() {
        return Ok(());
    }
    let hashes = wanted.iter().map(|(sha, _)| sha.clone()).collect();
    let list = serde_json::to_string(&BlobList { sha256: hashes }).map_err(|e| e.to_string())?;
    let mut resp = send(link, Method::Post, "/blobs/missing", Some(list), 30_000).await?;
    if resp.status_code() != 200 {
        return Err(format!("/blobs/missing answered {}", resp.status_code()));
    }
    let missing: BlobList = resp.json().await.map_err(|e| e.to_string())?;
    let missing: std::collections::HashSet<String> = missing.sha256.into_iter().collect();
    let sized: Vec<(String, u64)> = wanted
        .into_iter()
        .filter(|(sha, _)| missing.contains(sha))
        .collect();
    let (packs, alone) = pack::plan(&sized, pack::MAX_PACK_BYTES);
    for blobs in packs {
        // The same records `…/blobs/fetch` streams: a few R2 reads ahead.
        let records: Vec<Vec<u8>> = store::pack_stream(env.clone(), account.to_string(), blobs)
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        let total: usize = records.iter().map(Vec::len).sum();
        let body = worker::js_sys::Uint8Array::new_with_length(total as u32);
        let mut at = 0u32;
        for record in &records {
            let end = at + record.len() as u32;
            body.subarray(at, end).copy_from(record);
            at = end;
        }
        let resp = send_body(
            link,
            Method::Post,
            "/blobs/unpack",
            Some((body.into(), pack::CONTENT_TYPE)),
            120_000,
        )
        .await?;
        if resp.status_code() != 200 {
            return Err(format!("POST /blobs/unpack: {}", refusal(resp).await));
        }
    }
    for (sha, _) in alone {
        let body = blob_body(env, account, &sha).await?;
        let resp = send_body(
            link,
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

/// Pulls from the runner's cache into R2 the blobs of `wanted` (hash,
/// size) the account has never stored — in packs (`POST /blobs/pack`), the
/// large ones alone; returns how many it moved.
pub(crate) async fn pull_missing(
    link: &Link,
    env: &Env,
    account: &str,
    wanted: &[(String, u64)],
    now_ms: i64,
) -> Result<usize, ApiError> {
    let wanted = distinct(wanted);
    let db = bindings::db(env)?;
    let limit = Config::from_env(env).max_blob_bytes;
    let hashes: Vec<String> = wanted.iter().map(|(sha, _)| sha.clone()).collect();
    let missing: std::collections::HashSet<String> = store::missing_blobs(&db, account, &hashes)
        .await?
        .into_iter()
        .collect();
    let sized: Vec<(String, u64)> = wanted
        .into_iter()
        .filter(|(sha, _)| missing.contains(sha))
        .collect();
    let (packs, alone) = pack::plan(&sized, pack::MAX_PACK_BYTES);
    let unavailable = |what: String| ApiError::RunnerUnavailable(what);
    for blobs in packs {
        let list = BlobList {
            sha256: blobs.iter().map(|(sha, _)| sha.clone()).collect(),
        };
        let mut resp = send(
            link,
            Method::Post,
            "/blobs/pack",
            Some(serde_json::to_string(&list)?),
            120_000,
        )
        .await
        .map_err(|e| unavailable(format!("POST /blobs/pack: {e}")))?;
        if resp.status_code() != 200 {
            return Err(unavailable(format!(
                "POST /blobs/pack: {}",
                refusal(resp).await
            )));
        }
        let mut stream = resp.stream()?;
        let mut unpacker = pack::Unpacker::default();
        let mut arrived = 0usize;
        let mut ready: Vec<(String, Vec<u8>)> = Vec::new();
        let mut ready_bytes = 0usize;
        while let Some(chunk) = stream.next().await {
            let records = unpacker
                .push(&chunk?)
                .map_err(|e| unavailable(e.to_string()))?;
            for (sha, bytes) in records {
                ready_bytes += bytes.len();
                ready.push((sha, bytes));
            }
            // Stored as they come, a few MiB at a time.
            if ready_bytes >= pack::MAX_PACKED_BLOB_BYTES as usize {
                arrived += ready.len();
                store::put_checked_blobs(env, account, std::mem::take(&mut ready), now_ms).await?;
                ready_bytes = 0;
            }
        }
        unpacker.finish().map_err(|e| unavailable(e.to_string()))?;
        arrived += ready.len();
        store::put_checked_blobs(env, account, ready, now_ms).await?;
        if arrived != blobs.len() {
            return Err(unavailable(format!(
                "POST /blobs/pack: {arrived} of {} blobs arrived",
                blobs.len()
            )));
        }
    }
    for (sha, _) in &alone {
        let path = format!("/blobs/{sha}");
        let mut resp = send(link, Method::Get, &path, None, 30_000)
            .await
            .map_err(|e| unavailable(format!("GET {path}: {e}")))?;
        if resp.status_code() != 200 {
            return Err(unavailable(format!(
                "GET {path} answered {}",
                resp.status_code()
            )));
        }
        store::put_blob_stream(env, account, sha, resp.stream()?, limit, now_ms).await?;
    }
    Ok(sized.len())
}
