//! The platform basics over real HTTP against `wrangler dev`.

mod common;

use common::*;
use serde_json::json;

#[test]
fn health_answers_the_contract_body_on_both_paths() {
    for path in ["/health", "/api/health"] {
        let resp = get(path, None);
        assert_eq!(resp.status, 200);
        let body = resp.json();
        assert_eq!(body["status"], "healthy");
        assert_eq!(body["ok"], true);
        assert_eq!(body["name"], "cloudbox");
        assert!(body["version"].as_str().is_some_and(|v| !v.is_empty()));
        assert!(body["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        // The limits clients split uploads by: MAX_BLOB_BYTES (wrangler.toml)
        // the JSON body limit, and the pack limit (clients read its presence
        // as "this server takes packs").
        let limits = body["limits"].as_object().expect("limits");
        assert_eq!(limits.get("maxBlobBytes"), Some(&json!(104_857_600)));
        assert_eq!(limits.get("maxJsonBytes"), Some(&json!(1_048_576)));
        assert_eq!(limits.get("maxPackBytes"), Some(&json!(33_554_432)));
    }
}

#[test]
fn every_response_carries_a_distinct_request_id() {
    let a = get("/health", None);
    let b = get("/nope", None);
    let ida = a.header("x-request-id").expect("x-request-id on 200");
    let idb = b.header("x-request-id").expect("x-request-id on 404");
    assert_ne!(ida, idb);
    assert_eq!(b.json()["requestId"], idb);
}

#[test]
fn unknown_route_is_a_json_404() {
    let resp = get("/definitely/not/a/route", None);
    assert_eq!(resp.status, 404);
    assert!(resp
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/json"));
    assert_eq!(resp.json()["error"], "not_found");
}

#[test]
fn wrong_method_is_a_json_405_with_allow() {
    let resp = send("DELETE", "/health", &[], None);
    assert_eq!(resp.status, 405);
    assert_eq!(resp.json()["error"], "method_not_allowed");
    assert_eq!(resp.header("allow"), Some("GET"));
}

#[test]
fn a_method_the_service_does_not_know_is_405_not_a_get() {
    // workers-rs maps methods it has no variant for to GET; the router
    // must see the method as sent.
    for method in ["QUERY", "PROPFIND"] {
        let resp = send(method, "/health", &[], None);
        assert_eq!(resp.status, 405, "{method}: {}", resp.text);
        assert_eq!(resp.json()["error"], "method_not_allowed");
        assert_eq!(resp.header("allow"), Some("GET"));
    }
    let resp = send("QUERY", "/no/such/route", &[], None);
    assert_eq!(resp.status, 404, "{}", resp.text);
}

#[test]
fn malformed_json_is_400_bad_json() {
    let auth = format!("Bearer {ADMIN_KEY}");
    for body in [&b"{\"name\":"[..], b"", b"not json"] {
        let resp = send(
            "POST",
            "/admin/keys",
            &[("authorization", &auth)],
            Some(body),
        );
        assert_eq!(resp.status, 400, "{}", resp.text);
        assert_eq!(resp.json()["error"], "bad_json");
    }
}

#[test]
fn bodies_over_one_mib_are_413() {
    let big = json!({"name": "x".repeat(1024 * 1024 + 10)});
    let resp = post_json("/admin/keys", Some(ADMIN_KEY), &big);
    assert_eq!(resp.status, 413);
    assert_eq!(resp.json()["error"], "body_too_large");
}

#[test]
fn the_worker_reaches_the_runner_through_the_durable_object() {
    let resp = get("/admin/runner/health", Some(ADMIN_KEY));
    assert_eq!(resp.status, 200, "{}", resp.text);
    let body = resp.json();
    assert_eq!(body["runner"]["name"], "cloudbox-runner");
    assert_eq!(body["runner"]["ok"], true);
    let receipts = body["runnerReceipts"].as_array().expect("runnerReceipts");
    let events: Vec<&str> = receipts
        .iter()
        .filter_map(|r| r["event"].as_str())
        .collect();
    // A real container: started, probed until ready, and not kept.
    assert_eq!(events.first(), Some(&"container.start"), "{events:?}");
    assert!(events.contains(&"ready_attempt"), "{events:?}");
    assert_eq!(
        &events[events.len() - 2..],
        ["ready", "container.release"],
        "{events:?}"
    );
    let container = container_id_of(&body["runnerReceipts"]).expect("containerId");
    assert!(container_gone(&container));
}

#[test]
fn admin_routes_need_the_admin_key() {
    assert_eq!(
        get("/admin/runner/health", None).json()["error"],
        "unauthorized"
    );
    let wrong = get("/admin/runner/health", Some("not-the-admin-key"));
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"], "invalid_key");
    let minted = mint_key(json!({"name": "normal"}));
    let normal = get("/admin/runner/health", minted["key"].as_str());
    assert_eq!(normal.status, 403);
    assert_eq!(normal.json()["error"], "forbidden");
}

#[test]
fn keys_in_the_query_string_are_refused() {
    let resp = get("/health?api_key=cbx_abc", None);
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"], "key_in_query");
}

#[test]
fn a_minted_key_has_the_documented_shape() {
    let body = mint_key(json!({"name": "shape", "permissions": ["read"]}));
    let key = body["key"].as_str().expect("key");
    assert!(key.starts_with("cbx_") && key.len() == 50, "{key}");
    assert_eq!(cloudbox::keys::api_key::parse(key), Ok("cbx_"));
    assert_eq!(body["permissions"], json!(["read"]));
    assert_eq!(body["keyType"], "standard");
    assert!(body["accountId"]
        .as_str()
        .is_some_and(|a| a.starts_with("acct_")));
    assert!(body["warning"].as_str().is_some());
}

#[test]
fn openapi_is_served_and_lists_the_routes() {
    let resp = get("/openapi.json", None);
    assert_eq!(resp.status, 200);
    let doc = resp.json();
    assert_eq!(doc["openapi"], "3.1.0");
    for route in cloudbox::api::route::ROUTES {
        let path = cloudbox::api::route::openapi_path(route.pattern);
        let method = route.method.to_lowercase();
        assert!(
            doc["paths"][&path][&method].is_object(),
            "{method} {path} missing"
        );
    }
}
