//! Rate limits (pure rules + the counter SQL). Fixed windows of
//! `RATE_LIMIT_WINDOW_SECONDS`; every counted request increments its
//! buckets with one atomic upsert (`… DO UPDATE SET hits = hits + 1
//! RETURNING hits`), so concurrent requests never lose an increment and the
//! n-th request of a window passes exactly when n ≤ limit.
//!
//! Buckets: every request per client IP (`RATE_LIMIT_REQUESTS`); run-starting
//! requests (`POST /execute`, `POST /api/runs`) also per IP in their own
//! bucket (`RATE_LIMIT_RUNS`); and per key when the key has a `rateLimit`.

use crate::common::sql::{Arg, Stmt};

/// Which buckets a request counts against; a function of the route only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// Health and the API document: cheap, unauthenticated, polled by
    /// load balancers; never counted.
    Exempt,
    /// Counted in the per-IP request bucket.
    Request,
    /// Starts a run: counted in the request bucket and the runs bucket.
    Run,
}

/// Classifies by method and route pattern (or the raw path when no route
/// matched: unknown paths are counted like any request).
pub fn classify(method: &str, pattern: &str) -> RouteClass {
    let method = method.to_ascii_uppercase();
    match (method.as_str(), pattern) {
        ("GET" | "HEAD", "/health" | "/api/health" | "/openapi.json") => RouteClass::Exempt,
        ("POST", "/execute" | "/api/runs") => RouteClass::Run,
        _ => RouteClass::Request,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub window_secs: i64,
    pub requests: i64,
    pub runs: i64,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        window_secs: 900,
        requests: 100,
        runs: 30,
    };

    /// From the vars' text; a missing or bad value keeps the default.
    pub fn from_vars(window: Option<&str>, requests: Option<&str>, runs: Option<&str>) -> Self {
        let num = |v: Option<&str>, d: i64| {
            v.and_then(|s| s.trim().parse::<i64>().ok())
                .filter(|n| *n > 0)
                .unwrap_or(d)
        };
        Limits {
            window_secs: num(window, Self::DEFAULT.window_secs),
            requests: num(requests, Self::DEFAULT.requests),
            runs: num(runs, Self::DEFAULT.runs),
        }
    }
}

/// The window a moment falls in: (start in ms, seconds until it resets ≥ 1).
pub fn window(now_ms: i64, window_secs: i64) -> (i64, i64) {
    let len = window_secs.max(1) * 1000;
    let start = now_ms.div_euclid(len) * len;
    let reset_ms = start + len - now_ms;
    (start, (reset_ms + 999) / 1000)
}

/// The client's address: `cf-connecting-ip` (set by Cloudflare's edge),
/// else the first `x-forwarded-for` hop (proxies, `wrangler dev`), else a
/// shared `local` bucket.
pub fn client_ip(cf_connecting_ip: Option<&str>, forwarded_for: Option<&str>) -> String {
    let clean = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.len() <= 64).then(|| s.to_string())
    };
    cf_connecting_ip
        .and_then(clean)
        .or_else(|| {
            forwarded_for
                .and_then(|f| f.split(',').next())
                .and_then(clean)
        })
        .unwrap_or_else(|| "local".to_string())
}

/// One counted bucket after the increment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub limit: i64,
    pub hits: i64,
}

/// What the response says: the `ratelimit-*` headers, and whether to refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub limit: i64,
    pub remaining: i64,
    pub reset_secs: i64,
    pub allowed: bool,
}

impl Verdict {
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ratelimit-limit", self.limit.to_string()),
            ("ratelimit-remaining", self.remaining.to_string()),
            ("ratelimit-reset", self.reset_secs.to_string()),
        ]
    }
}

/// Combines the buckets: refused if any is over its limit; the headers
/// describe the tightest bucket (least remaining).
pub fn verdict(counts: &[Count], reset_secs: i64) -> Option<Verdict> {
    let tightest = counts.iter().min_by_key(|c| (c.limit - c.hits, c.limit))?;
    Some(Verdict {
        limit: tightest.limit,
        remaining: (tightest.limit - tightest.hits).max(0),
        reset_secs,
        allowed: counts.iter().all(|c| c.hits <= c.limit),
    })
}

pub fn ip_bucket(ip: &str, class: RouteClass) -> String {
    match class {
        RouteClass::Run => format!("ip:{ip}:runs"),
        _ => format!("ip:{ip}:requests"),
    }
}

pub fn key_bucket(key_id: &str) -> String {
    format!("key:{key_id}")
}

/// The atomic increment; answers one row `{hits}`.
pub const HIT: &str =
    "INSERT INTO rate_limit_counters (bucket, window_start, hits) VALUES (?1, ?2, 1) \
     ON CONFLICT (bucket, window_start) DO UPDATE SET hits = hits + 1 RETURNING hits";

pub const PURGE_OLD: &str = "DELETE FROM rate_limit_counters WHERE window_start < ?1";

pub fn hit(bucket: &str, window_start: i64) -> Stmt {
    Stmt {
        sql: HIT,
        args: vec![Arg::Text(bucket.into()), Arg::Int(window_start)],
    }
}

/// The same increment for the bucket of the key whose hash is `?1`, made
/// only when that key has its own limit (else no row is written or
/// answered), so it can share the request's one batch with the key lookup.
/// The bucket name is `key_bucket(id)`.
pub const KEY_HIT: &str =
    "INSERT INTO rate_limit_counters (bucket, window_start, hits) \
     SELECT 'key:' || id, ?2, 1 FROM api_keys WHERE key_hash = ?1 AND rate_limit_requests IS NOT NULL \
     ON CONFLICT (bucket, window_start) DO UPDATE SET hits = hits + 1 RETURNING hits";

pub fn key_hit(key_hash: &str, window_start: i64) -> Stmt {
    Stmt {
        sql: KEY_HIT,
        args: vec![Arg::Text(key_hash.into()), Arg::Int(window_start)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_classified_by_pattern() {
        assert_eq!(classify("GET", "/health"), RouteClass::Exempt);
        assert_eq!(classify("GET", "/openapi.json"), RouteClass::Exempt);
        assert_eq!(classify("POST", "/execute"), RouteClass::Run);
        assert_eq!(classify("post", "/api/runs"), RouteClass::Run);
        assert_eq!(classify("GET", "/api/runs"), RouteClass::Request);
        assert_eq!(classify("POST", "/health"), RouteClass::Request);
        assert_eq!(classify("GET", "/billing/account"), RouteClass::Request);
        assert_eq!(classify("GET", "/no/such/route"), RouteClass::Request);
    }

    #[test]
    fn windows_are_aligned_and_reset_counts_up_seconds() {
        assert_eq!(window(0, 900), (0, 900));
        assert_eq!(window(899_001, 900), (0, 1));
        assert_eq!(window(900_000, 900), (900_000, 900));
        assert_eq!(window(1_500, 1), (1_000, 1));
    }

    #[test]
    fn vars_override_defaults_only_when_valid() {
        assert_eq!(Limits::from_vars(None, None, None), Limits::DEFAULT);
        let l = Limits::from_vars(Some("60"), Some(" 25 "), Some("-3"));
        assert_eq!((l.window_secs, l.requests, l.runs), (60, 25, 30));
    }

    #[test]
    fn the_nth_request_passes_exactly_when_n_is_at_most_the_limit() {
        let v = verdict(
            &[Count {
                limit: 25,
                hits: 25,
            }],
            10,
        )
        .unwrap();
        assert!(v.allowed);
        assert_eq!(v.remaining, 0);
        let v = verdict(
            &[Count {
                limit: 25,
                hits: 26,
            }],
            10,
        )
        .unwrap();
        assert!(!v.allowed);
        assert_eq!(v.remaining, 0);
        assert_eq!(verdict(&[], 10), None);
    }

    #[test]
    fn headers_describe_the_tightest_bucket() {
        let v = verdict(
            &[
                Count {
                    limit: 100,
                    hits: 10,
                },
                Count {
                    limit: 30,
                    hits: 29,
                },
            ],
            60,
        )
        .unwrap();
        assert_eq!((v.limit, v.remaining, v.allowed), (30, 1, true));
        assert_eq!(
            v.headers(),
            vec![
                ("ratelimit-limit", "30".to_string()),
                ("ratelimit-remaining", "1".to_string()),
                ("ratelimit-reset", "60".to_string()),
            ]
        );
    }

    /// The counters' SQL on SQLite with the migrations' schema.
    #[test]
    fn key_hits_count_only_keys_with_a_limit_and_never_lose_one() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            db.execute_batch(&std::fs::read_to_string(file).unwrap())
                .unwrap();
        }
        db.execute_batch(
            "INSERT INTO accounts (id, created_at, updated_at) VALUES ('acc', 0, 0); \
             INSERT INTO api_keys (id, account_id, key_hash, key_prefix, name, key_type, permissions, \
               rate_limit_requests, created_at, updated_at) \
             VALUES ('k1', 'acc', 'h1', 'cb', 'n', 'standard', 'read', 5, 0, 0), \
                    ('k2', 'acc', 'h2', 'cb', 'n', 'standard', 'read', NULL, 0, 0);",
        )
        .unwrap();
        let key_hit = |hash: &str, window: i64| -> Vec<i64> {
            let mut stmt = db.prepare(KEY_HIT).unwrap();
            stmt.query_map(rusqlite::params![hash, window], |r| r.get(0))
                .unwrap()
                .map(|r| r.unwrap())
                .collect()
        };
        assert_eq!(key_hit("h1", 0), vec![1]);
        assert_eq!(key_hit("h1", 0), vec![2]);
        assert_eq!(key_hit("h1", 1000), vec![1], "a new window starts at 1");
        assert!(key_hit("h2", 0).is_empty(), "no limit: nothing counted");
        assert!(key_hit("unknown", 0).is_empty());
        let bucket: String = db
            .query_row(
                "SELECT bucket FROM rate_limit_counters WHERE window_start = 1000",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(bucket, key_bucket("k1"));
        let mut stmt = db.prepare(HIT).unwrap();
        let hits: i64 = stmt
            .query_row(rusqlite::params![key_bucket("k1"), 0], |r| r.get(0))
            .unwrap();
        assert_eq!(hits, 3, "KEY_HIT and HIT count in the same bucket");
    }

    #[test]
    fn client_ip_prefers_cloudflare_then_forwarded() {
        assert_eq!(client_ip(Some("1.2.3.4"), Some("5.6.7.8")), "1.2.3.4");
        assert_eq!(client_ip(None, Some(" 5.6.7.8, 10.0.0.1")), "5.6.7.8");
        assert_eq!(client_ip(Some(" "), None), "local");
        assert_eq!(client_ip(None, None), "local");
    }
}
