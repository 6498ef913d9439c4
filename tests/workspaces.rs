//! Workspaces over real HTTP against `wrangler dev` (local D1 and R2):
//! incremental sync, version conflicts, blob verification and streaming,
//! path rules, single-file edits, ownership.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use cloudbox::wire::pack;
use cloudbox::workspaces::manifest::sha256_hex;
use cloudbox::workspaces::sync::{self, Transport};
use common::*;
use serde_json::{json, Value};

/// The per-blob limit of this test binary's stack (20 MiB), so the 413 is
/// cheap to reach while a 12 MiB blob still fits.
const MAX_BLOB: u64 = 20 * 1024 * 1024;

fn ws_stack() -> &'static Stack {
    stack_with_vars(&[("MAX_BLOB_BYTES", "20971520")])
}

/// A key of a fresh account.
fn account_key() -> String {
    ws_stack();
    mint_key(json!({"name": "workspaces test"}))["key"]
        .as_str()
        .unwrap()
        .to_string()
}

struct Api {
    auth: String,
    /// The same key as a sync-client transport.
    sync: SyncClient,
}

impl Api {
    fn new(key: &str) -> Self {
        Api {
            auth: format!("Bearer {key}"),
            sync: SyncClient::new(key),
        }
    }
    fn req(&self, method: &str, path: &str, body: Option<&[u8]>) -> Resp {
        send(method, path, &[("authorization", &self.auth)], body)
    }
    fn json(&self, method: &str, path: &str, body: &Value) -> Resp {
        let headers = [
            ("authorization", self.auth.as_str()),
            ("content-type", "application/json"),
        ];
        send(method, path, &headers, Some(body.to_string().as_bytes()))
    }
    fn put_blob(&self, ws: &str, bytes: &[u8]) -> Resp {
        let path = format!("/workspaces/{ws}/blobs/{}", sha256_hex(bytes));
        self.req("PUT", &path, Some(bytes))
    }
    fn commit(&self, ws: &str, base: u64, files: Value) -> Resp {
        let body = json!({"baseVersion": base, "files": files});
        self.json("POST", &format!("/workspaces/{ws}/commits"), &body)
    }
    fn manifest(&self, ws: &str) -> Value {
        let resp = self.req("GET", &format!("/workspaces/{ws}/manifest"), None);
        assert_eq!(resp.status, 200, "{}", resp.text);
        resp.json()
    }
}

fn entry(path: &str, bytes: &[u8]) -> Value {
    json!({"path": path, "sha256": sha256_hex(bytes), "size": bytes.len(), "mode": 420})
}

/// 300 files in nested directories: varied sizes (one empty), some
/// executable, a few with identical content.
fn make_tree(root: &Path) {
    for i in 0..300 {
        let dir = root.join(format!("d{}/s{}", i % 7, i % 3));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("file-{i}.txt"));
        let content: Vec<u8> = match i {
            0 => Vec::new(),
            1 | 2 => b"same content".to_vec(),
            _ => (0..(i * 37 % 5000))
                .map(|j| ((i * 31 + j * 7) % 256) as u8)
                .collect(),
        };
        fs::write(&path, content).unwrap();
        if i % 10 == 0 {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

/// Every file of `a` is in `b` with the same bytes and executable bit, and nothing else.
fn assert_same_tree(a: &Path, b: &Path) {
    let left = sync::scan_tree(a).unwrap();
    let right = sync::scan_tree(b).unwrap();
    assert_eq!(left.len(), right.len());
    for (l, r) in left.iter().zip(&right) {
        assert_eq!(l.entry, r.entry);
        assert_eq!(fs::read(&l.abs).unwrap(), fs::read(&r.abs).unwrap());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&l.abs), mode(&r.abs), "{}", l.entry.path);
    }
}

#[test]
fn a_300_file_tree_round_trips_and_resyncs_incrementally() {
    let api = Api::new(&account_key());
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());

    api.sync.take_requests();
    let first = sync::push(&api.sync, "tree", src.path()).unwrap();
    // manifest, missing, health, one pack, commit.
    assert_eq!(
        api.sync.take_requests(),
        5,
        "a first push moves its blobs in one pack"
    );
    assert_eq!(first.version, 1);
    assert!(first.committed);
    assert_eq!(first.missing, 299, "two files share content");
    assert_eq!(first.uploaded_blobs, 299);

    let info = api.req("GET", "/workspaces/tree", None);
    assert_eq!(info.status, 200, "{}", info.text);
    let info = info.json();
    let local = sync::scan_tree(src.path()).unwrap();
    assert_eq!(info["version"], 1);
    assert_eq!(info["files"], 300);
    assert_eq!(
        info["bytes"],
        local.iter().map(|f| f.entry.size).sum::<u64>()
    );
    assert!(info["sessionId"].is_null());

    let dest = tempfile::tempdir().unwrap();
    let pulled = sync::pull(&api.sync, "tree", dest.path(), None).unwrap();
    // manifest, health, one fetched pack.
    assert_eq!(
        api.sync.take_requests(),
        3,
        "a pull fetches its blobs in one pack"
    );
    assert_eq!(pulled.version, 1);
    assert_same_tree(src.path(), dest.path());

    // Unchanged: the server lacks nothing, nothing is uploaded or committed.
    let hashes: Vec<String> = local.iter().map(|f| f.entry.sha256.clone()).collect();
    assert!(sync::ask_missing(&api.sync, "tree", &hashes)
        .unwrap()
        .is_empty());
    let again = sync::push(&api.sync, "tree", src.path()).unwrap();
    assert_eq!((again.missing, again.uploaded_blobs), (0, 0));
    assert!(!again.committed);
    assert_eq!(again.version, 1);

    // One changed file: exactly one blob moves, one new version.
    let changed = src.path().join("d3/s1/file-10.txt");
    fs::write(&changed, b"a brand new line\n").unwrap();
    let one = sync::push(&api.sync, "tree", src.path()).unwrap();
    assert_eq!((one.missing, one.uploaded_blobs), (1, 1));
    assert_eq!(one.uploaded_bytes, 17);
    assert_eq!(one.version, 2);
    let dest2 = tempfile::tempdir().unwrap();
    sync::pull(&api.sync, "tree", dest2.path(), None).unwrap();
    assert_same_tree(src.path(), dest2.path());

    // The old version is still there, unchanged.
    let v1 = api
        .req("GET", "/workspaces/tree/manifest?version=1", None)
        .json();
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["files"], serde_json::to_value(&pulled.files).unwrap());
    let none = api.req("GET", "/workspaces/tree/manifest?version=9", None);
    assert_eq!(none.status, 404);
    assert_eq!(none.json()["error"], "version_not_found");
}

#[test]
fn a_stale_base_version_is_409_and_loses_nothing() {
    let api = Api::new(&account_key());
    let (a, b) = (b"version one".as_slice(), b"version two".as_slice());
    assert_eq!(api.put_blob("race", a).status, 201);
    assert_eq!(api.put_blob("race", b).status, 201);
    let c1 = api.commit("race", 0, json!([entry("f.txt", a)]));
    assert_eq!(c1.status, 201, "{}", c1.text);
    assert_eq!(c1.json()["version"], 1);
    let c2 = api.commit("race", 1, json!([entry("f.txt", b)]));
    assert_eq!(c2.json()["version"], 2);

    for stale in [0, 1, 5] {
        let late = api.commit("race", stale, json!([entry("g.txt", a)]));
        assert_eq!(late.status, 409, "{}", late.text);
        let body = late.json();
        assert_eq!(body["error"], "version_conflict");
        assert_eq!(body["details"]["currentVersion"], 2);
    }
    let current = api.manifest("race");
    assert_eq!(current["version"], 2);
    assert_eq!(current["files"], json!([entry("f.txt", b)]));
    assert_eq!(
        api.req("GET", "/workspaces/race", None).json()["version"],
        2
    );
}

#[test]
fn parallel_commits_on_one_base_let_exactly_one_win() {
    let api = Api::new(&account_key());
    let blobs: Vec<Vec<u8>> = (0..6).map(|i| format!("writer {i}").into_bytes()).collect();
    for blob in &blobs {
        assert_eq!(api.put_blob("contended", blob).status, 201);
    }
    let statuses: Vec<(u16, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = blobs
            .iter()
            .enumerate()
            .map(|(i, blob)| {
                let api = &api;
                s.spawn(move || {
                    (
                        api.commit("contended", 0, json!([entry("f", blob)])).status,
                        i,
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<usize> = statuses
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, i)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|(s, _)| *s == 201 || *s == 409));
    let current = api.manifest("contended");
    assert_eq!(current["version"], 1);
    assert_eq!(current["files"], json!([entry("f", &blobs[winners[0]])]));
}

/// A pack of `blobs` (`wire::pack`), each named by its hash.
fn pack_of(blobs: &[&[u8]]) -> Vec<u8> {
    let hashes: Vec<String> = blobs.iter().map(|b| sha256_hex(b)).collect();
    pack::encode(hashes.iter().map(String::as_str).zip(blobs.iter().copied())).unwrap()
}

fn post_pack(api: &Api, body: &[u8]) -> (u16, Value) {
    let (status, answer) = api
        .sync
        .send(
            "POST",
            "/workspaces/p/blobs/pack",
            Some(pack::CONTENT_TYPE),
            Some(body),
        )
        .unwrap();
    (
        status,
        serde_json::from_slice(&answer).unwrap_or(Value::Null),
    )
}

fn fetch(api: &Api, hashes: &[String]) -> (u16, Vec<u8>) {
    let body = json!({ "sha256": hashes }).to_string();
    api.sync
        .send(
            "POST",
            "/workspaces/p/blobs/fetch",
            Some("application/json"),
            Some(body.as_bytes()),
        )
        .unwrap()
}

#[test]
fn packs_store_and_fetch_many_blobs_in_one_request_each() {
    let health = get("/health", None).json();
    assert_eq!(health["limits"]["maxPackBytes"], pack::MAX_PACK_BYTES);
    let api = Api::new(&account_key());
    let owned: Vec<Vec<u8>> = (0..40u32)
        .map(|i| format!("blob {i} ").repeat(i as usize * 50).into_bytes())
        .collect();
    let mut blobs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
    blobs.push(b"\x00\xffbinary");
    blobs.push(owned[3].as_slice()); // the same blob twice: stored once
    let unique: Vec<String> = {
        let mut seen = std::collections::HashSet::new();
        blobs
            .iter()
            .map(|b| sha256_hex(b))
            .filter(|h| seen.insert(h.clone()))
            .collect()
    };
    let (status, answer) = post_pack(&api, &pack_of(&blobs));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["stored"], json!(unique));
    assert_eq!(answer["existing"], json!([]));
    let (status, again) = post_pack(&api, &pack_of(&blobs));
    assert_eq!(status, 200);
    assert_eq!(
        (again["stored"].clone(), again["existing"].clone()),
        (json!([]), json!(unique))
    );
    assert!(sync::ask_missing(&api.sync, "p", &unique)
        .unwrap()
        .is_empty());
    // A single blob from the pack reads back like any other.
    let one = api.req("GET", &format!("/workspaces/p/blobs/{}", unique[5]), None);
    assert_eq!((one.status, one.text.as_bytes()), (200, blobs[5]));

    // Fetch: in the order asked, every record checked by the unpacker.
    let asked: Vec<String> = unique.iter().rev().cloned().collect();
    let (status, body) = fetch(&api, &asked);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let mut unpacker = pack::Unpacker::default();
    let records = unpacker.push(&body).unwrap();
    unpacker.finish().unwrap();
    let names: Vec<String> = records.iter().map(|(sha, _)| sha.clone()).collect();
    assert_eq!(names, asked);
    for (sha, bytes) in &records {
        assert_eq!(&sha256_hex(bytes), sha);
    }

    // Unknown blobs: 404 listing exactly them; nothing is sent.
    let unknown = sha256_hex(b"never uploaded");
    let (status, body) = fetch(&api, &[unique[0].clone(), unknown.clone()]);
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, err["error"].as_str()),
        (404, Some("blob_not_found"))
    );
    assert_eq!(err["details"]["missing"], json!([unknown]));
    // Another account has none of them.
    let other = Api::new(&account_key());
    let (status, body) = fetch(&other, &unique[..2]);
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 404);
    assert_eq!(err["details"]["missing"], json!(unique[..2]));

    // A record whose bytes lie: 400 naming it; it is not stored.
    let fresh: [&[u8]; 3] = [b"fresh one", b"fresh two", b"fresh three"];
    let mut lie = pack_of(&fresh);
    let at = lie.len() - 1;
    lie[at] ^= 1;
    let (status, err) = post_pack(&other, &lie);
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("hash_mismatch")),
        "{err}"
    );
    assert_eq!(err["details"]["record"], 2);
    let third = sha256_hex(fresh[2]);
    assert_eq!(
        sync::ask_missing(&other.sync, "p", std::slice::from_ref(&third)).unwrap(),
        vec![third]
    );
    // Cut short: 400 bad_pack naming the record it ends in.
    let whole = pack_of(&fresh);
    let (status, err) = post_pack(&other, &whole[..whole.len() - 3]);
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("bad_pack")),
        "{err}"
    );
    assert_eq!(err["details"]["record"], 2);
    // A record over the per-blob limit is refused from its header alone.
    let header = pack::record_header(&unique[0], MAX_BLOB + 1).unwrap();
    let (status, err) = post_pack(&other, &header);
    assert_eq!(
        (status, err["error"].as_str()),
        (413, Some("body_too_large")),
        "{err}"
    );
    // Not JSON and not a list of hashes: 400 before any storage work.
    let (status, _) = api
        .sync
        .send(
            "POST",
            "/workspaces/p/blobs/fetch",
            Some("application/json"),
            Some(b"{\"sha256\":[\"x\"]}"),
        )
        .unwrap();
    assert_eq!(status, 400);
}

#[test]
fn a_fetch_larger_than_one_pack_is_413_and_sends_nothing() {
    let api = Api::new(&account_key());
    let big: Vec<Vec<u8>> = (0..3)
        .map(|seed| big_blob(seed + 40, 12 * 1024 * 1024))
        .collect();
    let mut hashes = Vec::new();
    for blob in &big {
        let resp = api.put_blob("p", blob);
        assert_eq!(resp.status, 201, "{}", resp.text);
        hashes.push(sha256_hex(blob));
    }
    let (status, body) = fetch(&api, &hashes);
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, err["error"].as_str()),
        (413, Some("body_too_large")),
        "{err}"
    );
    // Two of them fit (24 MiB and two headers).
    let (status, body) = fetch(&api, &hashes[..2]);
    assert_eq!(status, 200);
    assert_eq!(body.len(), 2 * (12 * 1024 * 1024 + pack::HEADER_BYTES));
}

#[test]
fn a_corrupt_blob_is_400_and_never_stored() {
    let api = Api::new(&account_key());
    let claimed = sha256_hex(b"the real content");
    let resp = api.req(
        "PUT",
        &format!("/workspaces/w/blobs/{claimed}"),
        Some(b"tampered content"),
    );
    assert_eq!(resp.status, 400, "{}", resp.text);
    assert_eq!(resp.json()["error"], "hash_mismatch");
    let get = api.req("GET", &format!("/workspaces/w/blobs/{claimed}"), None);
    assert_eq!(get.status, 404);
    assert_eq!(get.json()["error"], "blob_not_found");
    let missing = sync::ask_missing(&api.sync, "w", std::slice::from_ref(&claimed)).unwrap();
    assert_eq!(missing, vec![claimed.clone()]);

    // A body that does match is then accepted: 201 once, 200 after.
    let good = api.req(
        "PUT",
        &format!("/workspaces/w/blobs/{claimed}"),
        Some(b"the real content"),
    );
    assert_eq!(good.status, 201, "{}", good.text);
    assert_eq!(good.json()["size"], 16);
    assert_eq!(api.put_blob("w", b"the real content").status, 200);
    // Already stored, but a wrong body is still refused.
    let again = api.req(
        "PUT",
        &format!("/workspaces/w/blobs/{claimed}"),
        Some(b"tampered content"),
    );
    assert_eq!(again.status, 400);
    let bad_sha = api.req("PUT", "/workspaces/w/blobs/NOTAHASH", Some(b"x"));
    assert_eq!(bad_sha.status, 400);
    assert_eq!(bad_sha.json()["error"], "validation_failed");
}

fn big_blob(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn a_blob_over_the_streaming_threshold_round_trips() {
    let api = Api::new(&account_key());
    let big = big_blob(1, 12 * 1024 * 1024 + 12_345);
    let put = api.put_blob("big", &big);
    assert_eq!(put.status, 201, "{}", put.text);
    assert_eq!(put.json()["size"], big.len());
    assert_eq!(api.put_blob("big", &big).status, 200);
    let sha = sha256_hex(&big);
    let (status, bytes) = api
        .sync
        .send("GET", &format!("/workspaces/big/blobs/{sha}"), None, None)
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(bytes.len(), big.len());
    assert!(bytes == big, "downloaded bytes differ");

    // A large corrupt body: the multipart upload is aborted, nothing stored.
    let claimed = sha256_hex(&big_blob(2, 12 * 1024 * 1024));
    let other = big_blob(3, 12 * 1024 * 1024);
    let resp = api.req(
        "PUT",
        &format!("/workspaces/big/blobs/{claimed}"),
        Some(&other),
    );
    assert_eq!(resp.status, 400, "{}", resp.text);
    assert_eq!(resp.json()["error"], "hash_mismatch");
    let get = api.req("GET", &format!("/workspaces/big/blobs/{claimed}"), None);
    assert_eq!(get.status, 404);

    // Over MAX_BLOB_BYTES → 413, the limit /health announces.
    let health = common::get("/health", None).json();
    assert_eq!(health["limits"]["maxBlobBytes"], MAX_BLOB, "{health}");
    let too_big = vec![7u8; MAX_BLOB as usize + 1];
    let resp = api.put_blob("big", &too_big);
    assert_eq!(resp.status, 413, "{}", resp.text);
    assert_eq!(resp.json()["error"], "body_too_large");
}

#[test]
fn a_commit_naming_unuploaded_blobs_is_400_missing_blobs() {
    let api = Api::new(&account_key());
    assert_eq!(api.put_blob("m", b"have").status, 201);
    let resp = api.commit(
        "m",
        0,
        json!([entry("have.txt", b"have"), entry("lack.txt", b"never sent")]),
    );
    assert_eq!(resp.status, 400, "{}", resp.text);
    let body = resp.json();
    assert_eq!(body["error"], "missing_blobs");
    assert_eq!(
        body["details"]["missing"],
        json!([sha256_hex(b"never sent")])
    );
    assert_eq!(api.req("GET", "/workspaces/m", None).status, 404);
    assert_eq!(api.manifest("m"), json!({"version": 0, "files": []}));

    // A size that is not the blob's size is refused too.
    let mut wrong = entry("have.txt", b"have");
    wrong["size"] = json!(5);
    let resp = api.commit("m", 0, json!([wrong]));
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"], "validation_failed");
}

#[test]
fn traversal_absolute_and_malformed_paths_are_400_bad_path() {
    let api = Api::new(&account_key());
    assert_eq!(api.put_blob("p", b"x").status, 201);
    for bad in [
        "../x",
        "a/../../etc/passwd",
        "/etc/passwd",
        "a//b",
        "a/./b",
        "",
        "a/",
        "a\u{0}b",
        "..",
    ] {
        let resp = api.commit("p", 0, json!([entry(bad, b"x")]));
        assert_eq!(resp.status, 400, "{bad:?}: {}", resp.text);
        assert_eq!(resp.json()["error"], "bad_path", "{bad:?}");
    }
    let long = "a".repeat(1025);
    let resp = api.commit("p", 0, json!([entry(&long, b"x")]));
    assert_eq!(resp.json()["error"], "bad_path");
    // Through the files route (encoded so the URL parser keeps them).
    for bad in ["..%2Fx", "a/..%2F..%2Fx", "%2Fabs", "a%00b", "a/%2E%2E%2Fb"] {
        let resp = api.req("PUT", &format!("/workspaces/p/files/{bad}"), Some(b"x"));
        assert_eq!(resp.status, 400, "{bad}: {}", resp.text);
        assert_eq!(resp.json()["error"], "bad_path", "{bad}");
    }
    assert_eq!(
        api.req("GET", "/workspaces/p", None).status,
        404,
        "nothing was created"
    );
    // Bad workspace ids.
    let resp = api.req("GET", "/workspaces/bad.id", None);
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"], "validation_failed");
}

#[test]
fn single_file_writes_and_deletes_make_versions() {
    let api = Api::new(&account_key());
    let put = api.req(
        "PUT",
        "/workspaces/f/files/src/main.rs",
        Some(b"fn main() {}\n"),
    );
    assert_eq!(put.status, 201, "{}", put.text);
    let body = put.json();
    assert_eq!(body["version"], 1);
    assert_eq!(body["mode"], 420);
    assert_eq!(body["sha256"], sha256_hex(b"fn main() {}\n"));

    let get = api.req("GET", "/workspaces/f/files/src/main.rs", None);
    assert_eq!(get.status, 200);
    assert_eq!(get.text, "fn main() {}\n");
    assert_eq!(get.header("x-file-mode"), Some("644"));
    assert_eq!(get.header("x-workspace-version"), Some("1"));

    let put = api.req(
        "PUT",
        "/workspaces/f/files/run.sh?mode=755",
        Some(b"#!/bin/sh\n"),
    );
    assert_eq!(put.json()["version"], 2);
    let manifest = api.manifest("f");
    assert_eq!(manifest["files"][0]["path"], "run.sh");
    assert_eq!(manifest["files"][0]["mode"], 493);
    assert_eq!(manifest["files"][1]["path"], "src/main.rs");

    // Rewriting keeps the mode unless told otherwise.
    let put = api.req(
        "PUT",
        "/workspaces/f/files/run.sh",
        Some(b"#!/bin/sh\necho\n"),
    );
    assert_eq!(put.json()["mode"], 493);
    assert_eq!(put.json()["version"], 3);

    let stale = api.req("PUT", "/workspaces/f/files/x?baseVersion=1", Some(b"x"));
    assert_eq!(stale.status, 409);
    assert_eq!(stale.json()["error"], "version_conflict");

    let del = api.req("DELETE", "/workspaces/f/files/src/main.rs", None);
    assert_eq!(del.status, 200, "{}", del.text);
    assert_eq!(del.json()["version"], 4);
    let gone = api.req("GET", "/workspaces/f/files/src/main.rs", None);
    assert_eq!(gone.status, 404);
    assert_eq!(gone.json()["error"], "file_not_found");
    assert_eq!(
        api.req("DELETE", "/workspaces/f/files/src/main.rs", None)
            .status,
        404
    );
    // Older versions still read.
    let old = api.req("GET", "/workspaces/f/files/src/main.rs?version=3", None);
    assert_eq!(old.text, "fn main() {}\n");
    assert_eq!(
        api.req("GET", "/workspaces/nope/files/a", None).json()["error"],
        "workspace_not_found"
    );
    assert_eq!(api.req("GET", "/workspaces/f", None).json()["files"], 1);
}

#[test]
fn another_accounts_workspace_is_404_as_if_absent() {
    let owner = Api::new(&account_key());
    let other = Api::new(&account_key());
    let put = owner.req(
        "PUT",
        "/workspaces/mine/files/secret.txt",
        Some(b"top secret"),
    );
    assert_eq!(put.status, 201);
    let sha = sha256_hex(b"top secret");

    for path in ["/workspaces/mine", "/workspaces/mine/files/secret.txt"] {
        let resp = other.req("GET", path, None);
        assert_eq!(resp.status, 404, "{path}");
        assert_eq!(resp.json()["error"], "workspace_not_found");
    }
    assert_eq!(
        other
            .req("GET", &format!("/workspaces/mine/blobs/{sha}"), None)
            .status,
        404
    );
    assert_eq!(other.manifest("mine"), json!({"version": 0, "files": []}));
    assert_eq!(
        sync::ask_missing(&other.sync, "mine", std::slice::from_ref(&sha)).unwrap(),
        vec![sha.clone()]
    );
    assert_eq!(other.req("DELETE", "/workspaces/mine", None).status, 404);
    assert_eq!(
        other
            .req("DELETE", "/workspaces/mine/files/secret.txt", None)
            .status,
        404
    );
    assert_eq!(
        other
            .req("POST", "/workspaces/mine/session/reset", None)
            .status,
        404
    );
    let list = other.req("GET", "/workspaces", None).json();
    assert_eq!(list["workspaces"], json!([]));
    // The other account's commit on the same id is its own workspace.
    let resp = other.commit("mine", 0, json!([]));
    assert_eq!(resp.status, 201);
    assert_eq!(owner.manifest("mine")["files"][0]["path"], "secret.txt");
    assert_eq!(owner.manifest("mine")["version"], 1);
}

#[test]
fn deleting_a_workspace_removes_it_and_frees_the_id() {
    let api = Api::new(&account_key());
    assert_eq!(
        api.req("PUT", "/workspaces/gone/files/a", Some(b"a"))
            .status,
        201
    );
    assert_eq!(
        api.req("PUT", "/workspaces/gone/files/b", Some(b"b"))
            .status,
        201
    );
    let del = api.req("DELETE", "/workspaces/gone", None);
    assert_eq!(del.status, 200, "{}", del.text);
    assert_eq!(api.req("GET", "/workspaces/gone", None).status, 404);
    assert_eq!(api.req("DELETE", "/workspaces/gone", None).status, 404);
    assert_eq!(api.manifest("gone")["version"], 0);
    assert_eq!(
        api.req("GET", "/workspaces/gone/manifest?version=2", None)
            .status,
        404
    );
    // A stale commit on the deleted workspace conflicts; a fresh one starts at 1.
    assert_eq!(api.commit("gone", 2, json!([])).status, 409);
    let again = api.commit("gone", 0, json!([entry("a", b"a")]));
    assert_eq!(again.status, 201, "{}", again.text);
    assert_eq!(again.json()["version"], 1);
}

#[test]
fn listing_session_reset_and_permissions() {
    let key = account_key();
    let api = Api::new(&key);
    for id in ["c", "a", "b"] {
        assert_eq!(api.commit(id, 0, json!([])).status, 201);
    }
    let page = api.req("GET", "/workspaces?limit=2", None).json();
    let ids: Vec<&str> = page["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(page["nextCursor"], "b");
    let rest = api.req("GET", "/workspaces?limit=2&cursor=b", None).json();
    assert_eq!(rest["workspaces"][0]["id"], "c");
    assert!(rest["nextCursor"].is_null());
    let full = api.req("GET", "/workspaces?limit=3", None).json();
    assert_eq!(full["workspaces"].as_array().map(Vec::len), Some(3));
    assert!(
        full["nextCursor"].is_null(),
        "an exactly full last page: {full}"
    );
    assert_eq!(api.req("GET", "/workspaces?limit=0", None).status, 400);

    let reset = api.req("POST", "/workspaces/a/session/reset", None);
    assert_eq!(reset.status, 200, "{}", reset.text);
    assert!(reset.json()["sessionId"].is_null());
    assert_eq!(
        api.req("POST", "/workspaces/zzz/session/reset", None)
            .status,
        404
    );

    // No key → 401; a read-only key reads but cannot write.
    assert_eq!(get("/workspaces", None).status, 401);
    let account = mint_key(json!({"name": "probe"}));
    let reader = mint_key(json!({
        "name": "reader", "permissions": ["read"], "accountId": account["accountId"]
    }));
    let reader = Api::new(reader["key"].as_str().unwrap());
    let writer = Api::new(account["key"].as_str().unwrap());
    assert_eq!(
        writer
            .req("PUT", "/workspaces/t/files/a", Some(b"a"))
            .status,
        201
    );
    assert_eq!(reader.req("GET", "/workspaces/t/files/a", None).text, "a");
    let denied = reader.req("PUT", "/workspaces/t/files/a", Some(b"b"));
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["error"], "forbidden");
    assert_eq!(reader.put_blob("t", b"zz").status, 403);
}
