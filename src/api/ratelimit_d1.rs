//! Rate limiting on D1, called once per request from `routes::handle`.
//! One batch increments the IP buckets and looks up the presented key's own
//! limit; a key with a limit costs one more atomic increment.

use serde::Deserialize;
use worker::{Env, Request};

use crate::api::auth;
use crate::api::error::ApiError;
use crate::api::ratelimit::{self, Count, RouteClass, Verdict};
use crate::billing::ledger_d1::bind;
use crate::common::sql::{Arg, Stmt};
use crate::keys::api_key;
use crate::platform::bindings;
use crate::platform::config::Config;

const KEY_LIMIT: &str =
    "SELECT id, rate_limit_requests FROM api_keys WHERE key_hash = ?1 AND rate_limit_requests IS NOT NULL";

#[derive(Deserialize)]
struct Hits {
    hits: i64,
}

#[derive(Deserialize)]
struct KeyLimit {
    id: String,
    rate_limit_requests: i64,
}

/// Counts this request; `None` for exempt routes.
pub async fn check(
    req: &Request,
    env: &Env,
    cfg: &Config,
    class: RouteClass,
    now_ms: i64,
) -> Result<Option<Verdict>, ApiError> {
    if class == RouteClass::Exempt {
        return Ok(None);
    }
    let limits = cfg.rate_limits;
    let (window_start, reset_secs) = ratelimit::window(now_ms, limits.window_secs);
    let headers = req.headers();
    let ip = ratelimit::client_ip(
        headers.get("cf-connecting-ip")?.as_deref(),
        headers.get("x-forwarded-for")?.as_deref(),
    );
    let db = bindings::db(env)?;

    let mut plan = vec![ratelimit::hit(
        &ratelimit::ip_bucket(&ip, RouteClass::Request),
        window_start,
    )];
    let mut bucket_limits = vec![limits.requests];
    if class == RouteClass::Run {
        plan.push(ratelimit::hit(
            &ratelimit::ip_bucket(&ip, RouteClass::Run),
            window_start,
        ));
        bucket_limits.push(limits.runs);
    }
    // A well-formed API key (not the admin key) may carry its own limit.
    let presented = auth::presented_key(req).ok().flatten();
    let is_admin = match (&presented, &cfg.admin_api_key) {
        (Some(p), Some(admin)) => api_key::secrets_equal(p, admin),
        _ => false,
    };
    let key_hash = presented
        .filter(|k| !is_admin && api_key::parse(k).is_ok())
        .map(|k| api_key::hash_key(&k, cfg.key_pepper.as_deref().map(str::as_bytes)));
    if let Some(hash) = &key_hash {
        plan.push(Stmt {
            sql: KEY_LIMIT,
            args: vec![Arg::Text(hash.clone())],
        });
    }

    let statements = plan
        .iter()
        .map(|s| bind(&db, s))
        .collect::<Result<Vec<_>, _>>()?;
    let results = db.batch(statements).await?;
    let mut counts = Vec::new();
    for (result, limit) in results.iter().zip(&bucket_limits) {
        let rows: Vec<Hits> = result.results()?;
        let hits = rows
            .first()
            .ok_or_else(|| ApiError::Internal("rate counter returned no row".into()))?
            .hits;
        counts.push(Count {
            limit: *limit,
            hits,
        });
    }
    if key_hash.is_some() {
        let rows: Vec<KeyLimit> = results
            .last()
            .map(|r| r.results())
            .transpose()?
            .unwrap_or_default();
        if let Some(key) = rows.first() {
            let hit = ratelimit::hit(&ratelimit::key_bucket(&key.id), window_start);
            let row: Option<Hits> = bind(&db, &hit)?.first(None).await?;
            counts.push(Count {
                limit: key.rate_limit_requests,
                hits: row.map(|r| r.hits).unwrap_or(i64::MAX),
            });
        }
    }
    Ok(ratelimit::verdict(&counts, reset_secs))
}
