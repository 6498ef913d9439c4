//! Keys (admin) over real HTTP against `wrangler dev`: minting, listing,
//! reading, changing, revoking, rotating, usage, and who may call what.

mod common;

use common::*;
use serde_json::{json, Value};

fn admin(method: &str, path: &str, body: Option<Value>) -> Resp {
    stack();
    let auth = format!("Bearer {ADMIN_KEY}");
    let text = body.map(|b| b.to_string());
    let mut headers = vec![("authorization", auth.as_str())];
    if text.is_some() {
        headers.push(("content-type", "application/json"));
    }
    send(method, path, &headers, text.as_deref().map(str::as_bytes))
}

fn as_key(key: &str, method: &str, path: &str, body: Option<Value>) -> Resp {
    let auth = format!("Bearer {key}");
    let text = body.map(|b| b.to_string());
    send(
        method,
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        text.as_deref().map(str::as_bytes),
    )
}

fn status_of(key: &str) -> u16 {
    get("/billing/account", Some(key)).status
}

#[test]
fn a_minted_key_is_shown_once_and_never_retrievable() {
    let minted = mint_key(json!({"name": "once", "dailyLimit": 2.5, "rateLimit": 100}));
    let key = minted["key"].as_str().unwrap();
    let id = minted["id"].as_str().unwrap();
    assert_eq!(minted["dailyLimit"], 2.5);
    assert_eq!(status_of(key), 200);

    let one = admin("GET", &format!("/admin/keys/{id}"), None);
    assert_eq!(one.status, 200);
    let view = one.json();
    assert_eq!(view["id"], id);
    assert_eq!(view["status"], "active");
    assert_eq!(view["keyPrefix"], minted["keyPrefix"]);
    assert_eq!(view["dailyLimit"], 2.5);
    assert_eq!(view["rateLimit"], 100);
    assert!(view.get("key").is_none());
    assert!(!one.text.contains(key), "the secret leaked into GET");
    let random_part = &key[4..44];
    let list = admin("GET", "/admin/keys?limit=200", None);
    assert_eq!(list.status, 200);
    assert!(
        !list.text.contains(random_part),
        "the secret leaked into the list"
    );
    assert!(list.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["id"] == id));
}

#[test]
fn unknown_tampered_revoked_and_expired_keys_are_401() {
    assert_eq!(
        get("/billing/account", None).json()["error"],
        "unauthorized"
    );
    // Well-formed (valid checksum) but never minted.
    let entropy: Vec<u8> = (0..64u8).collect();
    let stranger = cloudbox::keys::api_key::build_key("cbx_", &entropy).unwrap();
    let resp = get("/billing/account", Some(&stranger));
    assert_eq!(
        (resp.status, resp.json()["error"].clone()),
        (401, json!("invalid_key"))
    );
    // A real key with one character changed fails the checksum.
    let minted = mint_key(json!({"name": "victim"}));
    let key = minted["key"].as_str().unwrap().to_string();
    let mut tampered = key.clone().into_bytes();
    tampered[8] = if tampered[8] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(get("/billing/account", Some(&tampered)).status, 401);
    // X-API-Key works like the bearer.
    let via_header = send("GET", "/billing/account", &[("x-api-key", &key)], None);
    assert_eq!(via_header.status, 200);

    // Revocation takes effect on the next request.
    let id = minted["id"].as_str().unwrap();
    assert_eq!(status_of(&key), 200);
    let revoked = admin("DELETE", &format!("/admin/keys/{id}"), None);
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    assert_eq!(revoked.json()["status"], "revoked");
    let after = get("/billing/account", Some(&key));
    assert_eq!(
        (after.status, after.json()["error"].clone()),
        (401, json!("invalid_key"))
    );

    // Expiry too: move it into the past and the key stops at once.
    let minted = mint_key(json!({"name": "expiring", "expiresIn": 30}));
    let key = minted["key"].as_str().unwrap();
    assert_eq!(status_of(key), 200);
    let id = minted["id"].as_str().unwrap();
    let patched = admin(
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"expiresAt": "2020-01-01T00:00:00Z"})),
    );
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(patched.json()["status"], "expired");
    assert_eq!(status_of(key), 401);
}

#[test]
fn admin_routes_refuse_a_normal_key_with_403() {
    let minted = mint_key(json!({"name": "normal"}));
    let key = minted["key"].as_str().unwrap();
    let id = minted["id"].as_str().unwrap();
    let calls: Vec<(&str, String, Option<Value>)> = vec![
        ("POST", "/admin/keys".into(), Some(json!({"name": "x"}))),
        ("GET", "/admin/keys".into(), None),
        ("GET", format!("/admin/keys/{id}"), None),
        (
            "PATCH",
            format!("/admin/keys/{id}"),
            Some(json!({"name": "y"})),
        ),
        ("DELETE", format!("/admin/keys/{id}"), None),
        ("POST", format!("/admin/keys/{id}/rotate"), None),
        ("GET", format!("/admin/keys/{id}/usage"), None),
        (
            "POST",
            format!("/billing/admin/{id}/credits"),
            Some(json!({"amount": 100})),
        ),
        (
            "POST",
            format!("/billing/admin/{id}/limits"),
            Some(json!({"dailyLimit": 1})),
        ),
    ];
    for (method, path, body) in calls {
        let resp = as_key(key, method, &path, body);
        assert_eq!(resp.status, 403, "{method} {path}: {}", resp.text);
        assert_eq!(resp.json()["error"], "forbidden");
    }
    // Nothing happened: the key still works, unchanged and unfunded.
    let account = get("/billing/account", Some(key));
    assert_eq!(account.status, 200);
    assert_eq!(account.json()["creditsBalance"], 0.0);
    assert_eq!(
        admin("GET", &format!("/admin/keys/{id}"), None).json()["name"],
        "normal"
    );
}

#[test]
fn listing_pages_with_limit_and_offset() {
    for i in 0..3 {
        mint_key(json!({"name": format!("page-{i}")}));
    }
    let first = admin("GET", "/admin/keys?limit=2&offset=0", None).json();
    let second = admin("GET", "/admin/keys?limit=2&offset=2", None).json();
    assert_eq!(first["keys"].as_array().unwrap().len(), 2);
    assert_eq!(
        (first["limit"].clone(), first["offset"].clone()),
        (json!(2), json!(0))
    );
    assert!(first["total"].as_i64().unwrap() >= 3);
    assert_ne!(first["keys"][0]["id"], second["keys"][0]["id"]);
    for bad in ["limit=0", "limit=201", "limit=x", "offset=-1"] {
        let resp = admin("GET", &format!("/admin/keys?{bad}"), None);
        assert_eq!(resp.status, 400, "{bad}");
        assert_eq!(resp.json()["error"], "validation_failed");
    }
}

#[test]
fn patch_changes_only_valid_known_fields() {
    let minted = mint_key(json!({"name": "before", "permissions": ["read"]}));
    let id = minted["id"].as_str().unwrap();
    let path = format!("/admin/keys/{id}");
    let resp = admin(
        "PATCH",
        &path,
        Some(
            json!({"name": "after", "permissions": ["execute", "read"], "monthlyLimit": 12.5, "description": "d"}),
        ),
    );
    assert_eq!(resp.status, 200, "{}", resp.text);
    let v = resp.json();
    assert_eq!(v["name"], "after");
    assert_eq!(v["permissions"], json!(["execute", "read"]));
    assert_eq!(v["monthlyLimit"], 12.5);
    assert_eq!(v["description"], "d");
    let bad = admin("PATCH", &path, Some(json!({"name": "x", "keyHash": "00"})));
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["details"][0]["field"], "keyHash");
    // A refused patch changes nothing.
    assert_eq!(admin("GET", &path, None).json()["name"], "after");
    assert_eq!(
        admin(
            "PATCH",
            "/admin/keys/key_000000000000000000000000",
            Some(json!({"name": "x"}))
        )
        .json()["error"],
        "key_not_found"
    );
}

#[test]
fn rotation_gives_a_new_key_and_revokes_the_old_one() {
    let minted = mint_key(json!({"name": "rotating", "prefix": "team_", "rateLimit": 50}));
    let old_key = minted["key"].as_str().unwrap();
    let old_id = minted["id"].as_str().unwrap();
    let resp = admin("POST", &format!("/admin/keys/{old_id}/rotate"), None);
    assert_eq!(resp.status, 201, "{}", resp.text);
    let rotated = resp.json();
    let new_key = rotated["key"].as_str().unwrap();
    assert!(new_key.starts_with("team_"));
    assert_eq!(cloudbox::keys::api_key::parse(new_key), Ok("team_"));
    assert_eq!(rotated["accountId"], minted["accountId"]);
    assert_eq!(rotated["rotatedFrom"], old_id);
    assert_eq!(rotated["rateLimit"], 50);
    assert_eq!(status_of(old_key), 401);
    assert_eq!(status_of(new_key), 200);
    let again = admin("POST", &format!("/admin/keys/{old_id}/rotate"), None);
    assert_eq!(
        (again.status, again.json()["error"].clone()),
        (409, json!("key_revoked"))
    );
}

#[test]
fn key_usage_has_totals_and_unknown_keys_are_404() {
    let minted = mint_key(json!({"name": "usage", "keyType": "internal"}));
    let id = minted["id"].as_str().unwrap();
    let resp = admin("GET", &format!("/admin/keys/{id}/usage"), None);
    assert_eq!(resp.status, 200, "{}", resp.text);
    let usage = resp.json();
    assert_eq!(usage["keyId"], id);
    assert_eq!(usage["keyType"], "internal");
    assert_eq!(usage["totals"]["executions"], 0);
    assert_eq!(usage["totals"]["cost"], 0.0);
    assert_eq!(usage["recent"], json!([]));
    for path in [
        "/admin/keys/key_000000000000000000000000",
        "/admin/keys/key_000000000000000000000000/usage",
    ] {
        let resp = admin("GET", path, None);
        assert_eq!(
            (resp.status, resp.json()["error"].clone()),
            (404, json!("key_not_found"))
        );
    }
    let resp = admin("DELETE", "/admin/keys/nope", None);
    assert_eq!(resp.status, 404);
}

#[test]
fn keys_of_one_account_share_credits_but_not_limits() {
    let first = mint_key(json!({"name": "team-a", "dailyLimit": 1}));
    let second = mint_key(json!({"name": "team-b", "accountId": first["accountId"]}));
    let credit = admin(
        "POST",
        &format!("/billing/admin/{}/credits", first["id"].as_str().unwrap()),
        Some(json!({"amount": 4})),
    );
    assert_eq!(credit.status, 200, "{}", credit.text);
    let a = get("/billing/account", first["key"].as_str()).json();
    let b = get("/billing/account", second["key"].as_str()).json();
    assert_eq!(a["id"], b["id"]);
    assert_eq!(
        (a["creditsBalance"].clone(), b["creditsBalance"].clone()),
        (json!(4.0), json!(4.0))
    );
    assert_eq!(
        (a["dailyLimit"].clone(), b["dailyLimit"].clone()),
        (json!(1.0), Value::Null)
    );
    assert_eq!(b["apiKeyId"], second["id"]);
}
