//! Rate limits over real HTTP against `wrangler dev`, with this binary's own
//! stack at RATE_LIMIT_REQUESTS=25. Each test uses its own client address
//! (`cf-connecting-ip`, which Cloudflare's edge sets in production), so the
//! tests' per-IP buckets do not share counts.

mod common;

use common::*;
use serde_json::json;

const VARS: &[(&str, &str)] = &[("RATE_LIMIT_REQUESTS", "25")];

fn from_ip(ip: &str, method: &str, path: &str, key: Option<&str>) -> Resp {
    stack_with_vars(VARS);
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("cf-connecting-ip", ip)];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    send(method, path, &headers, None)
}

#[test]
fn forty_parallel_requests_against_a_limit_of_25_pass_exactly_25() {
    stack_with_vars(VARS);
    let results: Vec<Resp> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..40)
            .map(|_| s.spawn(|| from_ip("203.0.113.40", "GET", "/billing/account", None)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let passed: Vec<&Resp> = results.iter().filter(|r| r.status != 429).collect();
    let limited: Vec<&Resp> = results.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        passed.len(),
        25,
        "statuses: {:?}",
        results.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(limited.len(), 15);
    // The ones that passed went on to auth (no key → 401) and were each
    // told a distinct remaining count: no increment was lost.
    let mut remaining: Vec<i64> = passed
        .iter()
        .map(|r| {
            assert_eq!(r.status, 401);
            assert_eq!(r.header("ratelimit-limit"), Some("25"));
            r.header("ratelimit-remaining").unwrap().parse().unwrap()
        })
        .collect();
    remaining.sort();
    assert_eq!(remaining, (0..25).collect::<Vec<i64>>());
    for r in limited {
        let body = r.json();
        assert_eq!(body["error"], "rate_limited");
        assert_eq!(r.header("ratelimit-remaining"), Some("0"));
        let retry: u64 = r
            .header("retry-after")
            .expect("retry-after")
            .parse()
            .unwrap();
        let reset: u64 = r.header("ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=900).contains(&retry), "{retry}");
        assert_eq!(retry, reset.max(1));
    }
}

#[test]
fn health_is_not_counted_and_other_addresses_are_not_affected() {
    for _ in 0..26 {
        assert_ne!(from_ip("203.0.113.41", "GET", "/nope", None).status, 0);
    }
    let limited = from_ip("203.0.113.41", "GET", "/nope", None);
    assert_eq!(limited.status, 429);
    let health = from_ip("203.0.113.41", "GET", "/health", None);
    assert_eq!(health.status, 200);
    assert!(health.header("ratelimit-limit").is_none());
    let other = from_ip("203.0.113.42", "GET", "/nope", None);
    assert_eq!(other.status, 404);
    assert_eq!(other.header("ratelimit-remaining"), Some("24"));
}

#[test]
fn a_key_with_its_own_limit_is_limited_by_it() {
    stack_with_vars(VARS);
    let minted = mint_key(json!({"name": "limited", "rateLimit": 3}));
    assert_eq!(minted["rateLimit"], 3);
    let key = minted["key"].as_str().unwrap();
    let statuses: Vec<u16> = (0..5)
        .map(|_| from_ip("203.0.113.43", "GET", "/billing/account", Some(key)).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // The key's limit follows the key, not the address.
    let elsewhere = from_ip("203.0.113.44", "GET", "/billing/account", Some(key));
    assert_eq!(elsewhere.status, 429);
    assert_eq!(elsewhere.header("ratelimit-limit"), Some("3"));
    // Lifting the key's limit takes effect on the next request.
    let id = minted["id"].as_str().unwrap();
    let auth = format!("Bearer {ADMIN_KEY}");
    let patched = send(
        "PATCH",
        &format!("/admin/keys/{id}"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("cf-connecting-ip", "203.0.113.45"),
        ],
        Some(json!({"rateLimit": null}).to_string().as_bytes()),
    );
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(
        from_ip("203.0.113.46", "GET", "/billing/account", Some(key)).status,
        200
    );
}
