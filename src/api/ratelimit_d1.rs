//! The request's first D1 round trip, made once per request from
//! `dispatch::handle`: one batch increments the client address's buckets,
//! increments the presented key's own bucket when the key has a limit, and
//! reads the key's row. Authenticating then reuses that row (`auth::KeyLookup`),
//! so an authenticated route that needs nothing else from D1 costs exactly
//! one round trip, and a revoked key still fails at once (the row is read
//! fresh by every request; nothing is cached).

use serde::Deserialize;
use worker::{Env, Request};

use crate::api::auth::{self, KeyLookup, KeyRow};
use crate::api::error::ApiError;
use crate::api::ratelimit::{self, Count, RouteClass, Verdict};
use crate::billing::ledger_d1::bind;
use crate::common::sql::{Arg, Stmt};
use crate::platform::bindings;
use crate::platform::config::Config;

#[derive(Deserialize)]
struct Hits {
    hits: i64,
}

/// What the gate found: the rate-limit verdict (`None` for exempt routes)
/// and the presented key's row, when an API key was presented.
pub struct Gate {
    pub verdict: Option<Verdict>,
    pub key: Option<KeyLookup>,
}

/// Counts this request and looks up its key in one batch.
pub async fn check(
    req: &Request,
    env: &Env,
    cfg: &Config,
    class: RouteClass,
    now_ms: i64,
) -> Result<Gate, ApiError> {
    if class == RouteClass::Exempt {
        return Ok(Gate {
            verdict: None,
            key: None,
        });
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
    let ip_buckets = plan.len();
    let key_hash = auth::presented_key_hash(req, cfg);
    if let Some(hash) = &key_hash {
        plan.push(ratelimit::key_hit(hash, window_start));
        plan.push(Stmt {
            sql: auth::KEY_ROW,
            args: vec![Arg::Text(hash.clone())],
        });
    }

    let statements = plan
        .iter()
        .map(|s| bind(&db, s))
        .collect::<Result<Vec<_>, _>>()?;
    let results = db.batch(statements).await?;
    let mut counts = Vec::new();
    for (result, limit) in results.iter().take(ip_buckets).zip(&bucket_limits) {
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
    let key = match key_hash {
        None => None,
        Some(hash) => {
            let key_hits: Vec<Hits> = match results.get(ip_buckets) {
                Some(result) => result.results()?,
                None => Vec::new(),
            };
            let rows: Vec<KeyRow> = match results.get(ip_buckets + 1) {
                Some(result) => result.results()?,
                None => Vec::new(),
            };
            let row = rows.into_iter().next();
            // The key's own bucket was counted only if the key has a limit.
            if let (Some(limit), Some(hits)) = (
                row.as_ref().and_then(|r| r.rate_limit_requests),
                key_hits.first(),
            ) {
                counts.push(Count {
                    limit: limit as i64,
                    hits: hits.hits,
                });
            }
            Some(KeyLookup { hash, row })
        }
    };
    Ok(Gate {
        verdict: ratelimit::verdict(&counts, reset_secs),
        key,
    })
}
