//! Without the `ADMIN_API_KEY` secret every admin route answers 503
//! `admin_disabled`, whatever credential is sent (never "open").

mod common;

use common::*;

#[test]
fn every_admin_route_is_503_when_the_admin_key_is_unset() {
    stack_with_vars(&[("ADMIN_API_KEY", "")]);
    let auth = format!("Bearer {ADMIN_KEY}");
    let id = "key_000000000000000000000000";
    let admin_routes = cloudbox::api::route::ROUTES
        .iter()
        .filter(|r| r.pattern.starts_with("/admin/") || r.pattern.starts_with("/billing/admin/"));
    let mut checked = 0;
    for route in admin_routes {
        let path = route.pattern.replace(":id", id).replace(":apiKeyId", id);
        for headers in [vec![], vec![("authorization", auth.as_str())]] {
            let resp = send(route.method, &path, &headers, Some(b"{}"));
            assert_eq!(resp.status, 503, "{} {path}: {}", route.method, resp.text);
            assert_eq!(resp.json()["error"], "admin_disabled");
        }
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} admin routes");
}
