//! The route table: every (method, path) the Worker serves, in the order of
//! API.md. `api::dispatch` maps each `Route` to its handler, and a unit
//! test checks that every row is documented in the OpenAPI document (`api::openapi`).

/// One endpoint of the API. The handler for `Route::X` is found by searching
/// `Route::X` in `src/api/dispatch.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    ApiHealth,
    OpenApi,
    // Keys (admin)
    AdminCreateKey,
    AdminListKeys,
    AdminGetKey,
    AdminUpdateKey,
    AdminRevokeKey,
    AdminRotateKey,
    AdminKeyUsage,
    // Billing
    BillingAccount,
    BillingTransactions,
    BillingTransaction,
    BillingUsage,
    BillingAdminCredits,
    BillingAdminLimits,
    // Diagnostics (admin)
    AdminRunnerHealth,
    // Workspaces
    WorkspaceList,
    WorkspaceGet,
    WorkspaceDelete,
    WorkspaceManifest,
    WorkspaceBlobsMissing,
    WorkspaceBlobsPack,
    WorkspaceBlobsFetch,
    WorkspaceBlobPut,
    WorkspaceBlobGet,
    WorkspaceCommit,
    WorkspaceFileGet,
    WorkspaceFilePut,
    WorkspaceFileDelete,
    WorkspaceSessionReset,
    // Execute an agent task
    Execute,
    ExecuteGet,
    ExecuteEvents,
    ExecuteCancel,
    // Repo runs
    RunCreate,
    RunList,
    RunGet,
    RunPublic,
    RunSetPublic,
    RunPage,
    RunEvents,
    RunVerify,
    RunCancel,
    RunDelete,
    RunExec,
    RunRead,
    RunWrite,
    RunStop,
    RunResume,
    RunFork,
    // Computers (typed evaluation workspaces)
    Computers(ComputerRoute),
}

/// The Computers surface, handled in `src/computers/routes.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputerRoute {
    Create,
    Brief,
    Files,
    Read,
    Write,
    Ask,
    Submit,
    Receipts,
    Grade,
    Spec,
    Reset,
}

#[derive(Debug, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: &'static str,
    /// `/literal/:param/...`; a last segment `*name` takes the rest of the path.
    pub pattern: &'static str,
    pub route: Route,
}

const fn row(method: &'static str, pattern: &'static str, route: Route) -> RouteSpec {
    RouteSpec {
        method,
        pattern,
        route,
    }
}

pub const ROUTES: &[RouteSpec] = &[
    row("GET", "/health", Route::Health),
    row("GET", "/api/health", Route::ApiHealth),
    row("GET", "/openapi.json", Route::OpenApi),
    row("POST", "/admin/keys", Route::AdminCreateKey),
    row("GET", "/admin/keys", Route::AdminListKeys),
    row("GET", "/admin/keys/:id", Route::AdminGetKey),
    row("PATCH", "/admin/keys/:id", Route::AdminUpdateKey),
    row("DELETE", "/admin/keys/:id", Route::AdminRevokeKey),
    row("POST", "/admin/keys/:id/rotate", Route::AdminRotateKey),
    row("GET", "/admin/keys/:id/usage", Route::AdminKeyUsage),
    row("GET", "/billing/account", Route::BillingAccount),
    row("GET", "/billing/transactions", Route::BillingTransactions),
    row(
        "GET",
        "/billing/transactions/:id",
        Route::BillingTransaction,
    ),
    row("GET", "/billing/usage", Route::BillingUsage),
    row(
        "POST",
        "/billing/admin/:apiKeyId/credits",
        Route::BillingAdminCredits,
    ),
    row(
        "POST",
        "/billing/admin/:apiKeyId/limits",
        Route::BillingAdminLimits,
    ),
    row("GET", "/admin/runner/health", Route::AdminRunnerHealth),
    row("GET", "/workspaces", Route::WorkspaceList),
    row("GET", "/workspaces/:id", Route::WorkspaceGet),
    row("DELETE", "/workspaces/:id", Route::WorkspaceDelete),
    row("GET", "/workspaces/:id/manifest", Route::WorkspaceManifest),
    row(
        "POST",
        "/workspaces/:id/blobs/missing",
        Route::WorkspaceBlobsMissing,
    ),
    row(
        "POST",
        "/workspaces/:id/blobs/pack",
        Route::WorkspaceBlobsPack,
    ),
    row(
        "POST",
        "/workspaces/:id/blobs/fetch",
        Route::WorkspaceBlobsFetch,
    ),
    row(
        "PUT",
        "/workspaces/:id/blobs/:sha256",
        Route::WorkspaceBlobPut,
    ),
    row(
        "GET",
        "/workspaces/:id/blobs/:sha256",
        Route::WorkspaceBlobGet,
    ),
    row("POST", "/workspaces/:id/commits", Route::WorkspaceCommit),
    row(
        "GET",
        "/workspaces/:id/files/*path",
        Route::WorkspaceFileGet,
    ),
    row(
        "PUT",
        "/workspaces/:id/files/*path",
        Route::WorkspaceFilePut,
    ),
    row(
        "DELETE",
        "/workspaces/:id/files/*path",
        Route::WorkspaceFileDelete,
    ),
    row(
        "POST",
        "/workspaces/:id/session/reset",
        Route::WorkspaceSessionReset,
    ),
    row("POST", "/execute", Route::Execute),
    row("GET", "/execute/:runId", Route::ExecuteGet),
    row("GET", "/execute/:runId/events", Route::ExecuteEvents),
    row("POST", "/execute/:runId/cancel", Route::ExecuteCancel),
    row("POST", "/api/runs", Route::RunCreate),
    row("GET", "/api/runs", Route::RunList),
    row("GET", "/api/runs/:id", Route::RunGet),
    row("GET", "/api/runs/:id/events", Route::RunEvents),
    row("GET", "/api/runs/:id/verify", Route::RunVerify),
    row("POST", "/api/runs/:id/cancel", Route::RunCancel),
    row("DELETE", "/api/runs/:id", Route::RunDelete),
    row("POST", "/api/runs/:id/exec", Route::RunExec),
    row("GET", "/api/runs/:id/read", Route::RunRead),
    row("POST", "/api/runs/:id/write", Route::RunWrite),
    row("POST", "/api/runs/:id/stop", Route::RunStop),
    row("POST", "/api/runs/:id/resume", Route::RunResume),
    row("POST", "/api/runs/:id/fork", Route::RunFork),
    row("GET", "/api/runs/:id/public", Route::RunPublic),
    row("POST", "/api/runs/:id/public", Route::RunSetPublic),
    row("GET", "/runs/:id", Route::RunPage),
    row(
        "POST",
        "/api/computers",
        Route::Computers(ComputerRoute::Create),
    ),
    row("POST", "/api/brief", Route::Computers(ComputerRoute::Brief)),
    row(
        "GET",
        "/api/c/:id/files",
        Route::Computers(ComputerRoute::Files),
    ),
    row(
        "GET",
        "/api/c/:id/read",
        Route::Computers(ComputerRoute::Read),
    ),
    row(
        "POST",
        "/api/c/:id/write",
        Route::Computers(ComputerRoute::Write),
    ),
    row(
        "POST",
        "/api/c/:id/ask",
        Route::Computers(ComputerRoute::Ask),
    ),
    row(
        "POST",
        "/api/c/:id/submit",
        Route::Computers(ComputerRoute::Submit),
    ),
    row(
        "GET",
        "/api/c/:id/receipts",
        Route::Computers(ComputerRoute::Receipts),
    ),
    row(
        "GET",
        "/api/c/:id/grade",
        Route::Computers(ComputerRoute::Grade),
    ),
    row(
        "GET",
        "/api/c/:id/spec",
        Route::Computers(ComputerRoute::Spec),
    ),
    row(
        "POST",
        "/api/c/:id/reset",
        Route::Computers(ComputerRoute::Reset),
    ),
];

/// Path parameters of a matched route, percent-decoded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Params(Vec<(&'static str, String)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Resolution {
    Found(&'static RouteSpec, Params),
    /// The path exists, but not with this method.
    MethodNotAllowed(Vec<&'static str>),
    NotFound,
}

/// Finds the route for a request. `path` is the URL path without the query.
pub fn resolve(method: &str, path: &str) -> Resolution {
    let mut allowed = Vec::new();
    for spec in ROUTES {
        if let Some(params) = match_pattern(spec.pattern, path) {
            if spec.method.eq_ignore_ascii_case(method) {
                return Resolution::Found(spec, params);
            }
            allowed.push(spec.method);
        }
    }
    if allowed.is_empty() {
        Resolution::NotFound
    } else {
        Resolution::MethodNotAllowed(allowed)
    }
}

fn match_pattern(pattern: &'static str, path: &str) -> Option<Params> {
    let mut params = Vec::new();
    let mut wanted = pattern.trim_start_matches('/').split('/');
    let mut given = path.trim_start_matches('/').split('/');
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return Some(Params(params)),
            (Some(w), Some(g)) if w.starts_with('*') => {
                let rest: Vec<&str> = std::iter::once(g).chain(given).collect();
                let joined = rest.join("/");
                if joined.is_empty() {
                    return None;
                }
                params.push((&w[1..], decode(&joined)?));
                return Some(Params(params));
            }
            (Some(w), Some(g)) if w.starts_with(':') => {
                if g.is_empty() {
                    return None;
                }
                params.push((&w[1..], decode(g)?));
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return None,
        }
    }
}

fn decode(raw: &str) -> Option<String> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// `/a/:id/*path` → `/a/{id}/{path}`, the OpenAPI spelling of a pattern.
pub fn openapi_path(pattern: &str) -> String {
    pattern
        .split('/')
        .map(
            |seg| match seg.strip_prefix(':').or_else(|| seg.strip_prefix('*')) {
                Some(name) => format!("{{{name}}}"),
                None => seg.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_routes_resolve() {
        match resolve("GET", "/health") {
            Resolution::Found(spec, params) => {
                assert_eq!(spec.route, Route::Health);
                assert_eq!(params, Params::default());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(resolve("GET", "/nope"), Resolution::NotFound);
        assert_eq!(resolve("GET", "/health/extra"), Resolution::NotFound);
    }

    #[test]
    fn wrong_method_is_distinguished_from_unknown_path() {
        assert_eq!(
            resolve("DELETE", "/health"),
            Resolution::MethodNotAllowed(vec!["GET"])
        );
    }

    #[test]
    fn params_and_wildcards_match_and_decode() {
        let params = match_pattern("/w/:id/files/*path", "/w/ws-1/files/a/b%20c.txt").unwrap();
        assert_eq!(params.get("id"), Some("ws-1"));
        assert_eq!(params.get("path"), Some("a/b c.txt"));
        assert!(match_pattern("/w/:id/files/*path", "/w/ws-1/files/").is_none());
        assert!(match_pattern("/w/:id", "/w/").is_none());
    }

    #[test]
    fn openapi_spelling() {
        assert_eq!(openapi_path("/w/:id/files/*path"), "/w/{id}/files/{path}");
    }

    #[test]
    fn every_route_is_documented_in_openapi_and_nothing_else_is() {
        let doc = crate::api::openapi::document();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths object");
        let mut documented = std::collections::BTreeSet::new();
        for (path, item) in paths {
            for method in item.as_object().expect("path item").keys() {
                if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    documented.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        let served: std::collections::BTreeSet<_> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), openapi_path(r.pattern)))
            .collect();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty(),
            "served but not in openapi.json: {undocumented:?}"
        );
        assert!(
            unserved.is_empty(),
            "in openapi.json but not served: {unserved:?}"
        );
    }
}
