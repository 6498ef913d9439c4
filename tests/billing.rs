//! Billing over real HTTP against `wrangler dev`: accounts, credits and
//! corrections, transactions, limits, the budget rules, Idempotency-Key
//! (also under concurrency), usage, and ownership.

mod common;

use cloudbox::billing::ledger_sql::{self as sql};
use cloudbox::billing::rules::{self, BudgetRefusal, BudgetState};
use cloudbox::common::sql::{Arg, Stmt};
use cloudbox::keys::api_key::KeyType;
use common::*;
use serde_json::{json, Value};

fn admin_post(path: &str, body: &Value, idem: Option<&str>) -> Resp {
    stack();
    let auth = format!("Bearer {ADMIN_KEY}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(k) = idem {
        headers.push(("idempotency-key", k));
    }
    send("POST", path, &headers, Some(body.to_string().as_bytes()))
}

fn credit(key_id: &str, amount: f64, idem: Option<&str>) -> Resp {
    admin_post(
        &format!("/billing/admin/{key_id}/credits"),
        &json!({"amount": amount, "description": "top-up"}),
        idem,
    )
}

fn account(key: &str) -> Value {
    let resp = get("/billing/account", Some(key));
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.json()
}

fn transactions(key: &str, query: &str) -> Value {
    let resp = get(&format!("/billing/transactions{query}"), Some(key));
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.json()
}

fn micros(v: &Value) -> i64 {
    rules::usd_to_micros(v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))).unwrap()
}

/// The account as the budget rules see it, read over HTTP.
fn budget_state(a: &Value) -> BudgetState {
    let opt = |v: &Value| v.as_f64().map(|_| micros(v));
    BudgetState {
        balance: micros(&a["creditsBalance"]),
        held: micros(&a["heldCredits"]),
        total_spent: micros(&a["totalSpent"]),
        spent_today: micros(&a["spentToday"]),
        spent_month: micros(&a["spentThisMonth"]),
        daily_limit: opt(&a["dailyLimit"]),
        monthly_limit: opt(&a["monthlyLimit"]),
        ..Default::default()
    }
}

#[test]
fn every_key_has_an_account_from_its_creation() {
    let minted = mint_key(json!({"name": "fresh"}));
    let a = account(minted["key"].as_str().unwrap());
    assert_eq!(a["id"], minted["accountId"]);
    assert_eq!(a["apiKeyId"], minted["id"]);
    for field in [
        "creditsBalance",
        "heldCredits",
        "totalSpent",
        "spentToday",
        "spentThisMonth",
    ] {
        assert_eq!(a[field], 0.0, "{field}");
    }
    assert_eq!(a["dailyLimit"], Value::Null);
    assert!(a["createdAt"].as_str().unwrap().ends_with('Z'));
    // Balance 0 is under LOW_BALANCE_USD (1.00).
    assert_eq!(a["alerts"][0]["type"], "low_balance");
}

#[test]
fn credits_and_corrections_move_the_balance_and_the_ledger() {
    let minted = mint_key(json!({"name": "ledger"}));
    let (id, key) = (
        minted["id"].as_str().unwrap(),
        minted["key"].as_str().unwrap(),
    );
    let first = credit(id, 10.0, None);
    assert_eq!(first.status, 200, "{}", first.text);
    let body = first.json();
    assert_eq!(body["success"], true);
    assert_eq!(body["transaction"]["type"], "credit");
    assert_eq!(body["transaction"]["amount"], 10.0);
    assert_eq!(body["transaction"]["balanceAfter"], 10.0);
    assert_eq!(body["account"]["creditsBalance"], 10.0);

    let fix = credit(id, -2.5, None);
    assert_eq!(fix.status, 200, "{}", fix.text);
    assert_eq!(fix.json()["transaction"]["type"], "adjustment");
    assert_eq!(fix.json()["transaction"]["balanceAfter"], 7.5);

    // A correction may never take the balance below zero; nothing changes.
    let too_much = credit(id, -7.500001, None);
    assert_eq!(too_much.status, 400, "{}", too_much.text);
    assert_eq!(too_much.json()["details"][0]["field"], "amount");
    for bad in [
        json!({"amount": 0}),
        json!({"amount": "5"}),
        json!({"description": "x"}),
    ] {
        let resp = admin_post(&format!("/billing/admin/{id}/credits"), &bad, None);
        assert_eq!(resp.status, 400, "{bad}");
        assert_eq!(resp.json()["error"], "validation_failed");
    }
    let unknown = credit("key_000000000000000000000000", 1.0, None);
    assert_eq!(
        (unknown.status, unknown.json()["error"].clone()),
        (404, json!("key_not_found"))
    );

    let a = account(key);
    assert_eq!(a["creditsBalance"], 7.5);
    assert!(a["alerts"].as_array().unwrap().is_empty(), "{a}");

    // Newest first, each with its balanceAfter; pages follow nextCursor.
    let all = transactions(key, "");
    let list = all["transactions"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(
        (list[0]["type"].clone(), list[1]["type"].clone()),
        (json!("adjustment"), json!("credit"))
    );
    assert_eq!(list[0]["amount"], -2.5);
    assert_eq!(all["nextCursor"], Value::Null);
    let page1 = transactions(key, "?limit=1");
    assert_eq!(page1["transactions"][0]["id"], list[0]["id"]);
    let cursor = page1["nextCursor"].as_str().unwrap();
    let page2 = transactions(key, &format!("?limit=1&cursor={cursor}"));
    assert_eq!(page2["transactions"][0]["id"], list[1]["id"]);
    assert_eq!(page2["nextCursor"], Value::Null);
}

#[test]
fn another_accounts_transactions_are_404_and_never_listed() {
    let a = mint_key(json!({"name": "owner"}));
    let b = mint_key(json!({"name": "other"}));
    let txn = credit(a["id"].as_str().unwrap(), 3.0, None).json()["transaction"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let own = get(&format!("/billing/transactions/{txn}"), a["key"].as_str());
    assert_eq!(own.status, 200);
    assert_eq!(own.json()["amount"], 3.0);
    let foreign = get(&format!("/billing/transactions/{txn}"), b["key"].as_str());
    let absent = get(
        "/billing/transactions/txn_000000000000000000000000",
        b["key"].as_str(),
    );
    assert_eq!((foreign.status, absent.status), (404, 404));
    assert_eq!(foreign.json()["error"], "transaction_not_found");
    assert_eq!(foreign.json()["message"], absent.json()["message"]);
    assert_eq!(
        transactions(b["key"].as_str().unwrap(), "")["transactions"],
        json!([])
    );
    let cursor = get(
        &format!("/billing/transactions?cursor={txn}"),
        b["key"].as_str(),
    );
    assert_eq!(cursor.status, 400);
    assert_eq!(account(b["key"].as_str().unwrap())["creditsBalance"], 0.0);
}

#[test]
fn limits_are_set_cleared_and_drive_the_budget_rules() {
    let minted = mint_key(json!({"name": "limits"}));
    let (id, key) = (
        minted["id"].as_str().unwrap(),
        minted["key"].as_str().unwrap(),
    );
    let path = format!("/billing/admin/{id}/limits");

    // No credits: the budget check refuses with 402 insufficient_credits.
    let a = account(key);
    let refusal = rules::check_budget(KeyType::Standard, &budget_state(&a)).unwrap_err();
    assert_eq!(
        refusal,
        BudgetRefusal::InsufficientCredits {
            balance: 0,
            total_spent: 0
        }
    );
    let err: cloudbox::api::error::ApiError = refusal.into();
    assert_eq!((err.status(), err.code()), (402, "insufficient_credits"));
    // An internal key is never budget-checked.
    assert!(rules::check_budget(KeyType::Internal, &budget_state(&a)).is_ok());

    credit(id, 5.0, None);
    assert!(rules::check_budget(KeyType::Standard, &budget_state(&account(key))).is_ok());

    // A daily limit of 0 is reached at once: 429 spending_limit_exceeded,
    // and the account lists the 100 % alert.
    let set = admin_post(&path, &json!({"dailyLimit": 0, "monthlyLimit": 100}), None);
    assert_eq!(set.status, 200, "{}", set.text);
    let a = set.json()["account"].clone();
    assert_eq!(
        (a["dailyLimit"].clone(), a["monthlyLimit"].clone()),
        (json!(0.0), json!(100.0))
    );
    let refusal = rules::check_budget(KeyType::Standard, &budget_state(&account(key))).unwrap_err();
    let err: cloudbox::api::error::ApiError = refusal.into();
    assert_eq!((err.status(), err.code()), (429, "spending_limit_exceeded"));
    let resp = get("/billing/account", Some(key));
    let alerts = resp.json()["alerts"].clone();
    assert_eq!(alerts[0]["type"], "daily_limit");
    assert_eq!(alerts[0]["threshold"], 100);
    assert_eq!(resp.header("x-budget-warning"), Some("daily_limit_100"));

    // null clears a limit; the other stays.
    let cleared = admin_post(&path, &json!({"dailyLimit": null}), None).json();
    assert_eq!(cleared["account"]["dailyLimit"], Value::Null);
    assert_eq!(cleared["account"]["monthlyLimit"], 100.0);
    assert!(rules::check_budget(KeyType::Standard, &budget_state(&account(key))).is_ok());
    for bad in [
        json!({}),
        json!({"dailyLimit": -1}),
        json!({"weeklyLimit": 1}),
    ] {
        assert_eq!(admin_post(&path, &bad, None).status, 400, "{bad}");
    }
}

#[test]
fn a_credit_retried_with_its_idempotency_key_is_applied_once() {
    let minted = mint_key(json!({"name": "idem"}));
    let (id, key) = (
        minted["id"].as_str().unwrap(),
        minted["key"].as_str().unwrap(),
    );
    let first = credit(id, 2.0, Some("topup-1"));
    assert_eq!(first.status, 200, "{}", first.text);
    assert!(first.header("idempotent-replayed").is_none());
    let retry = credit(id, 2.0, Some("topup-1"));
    assert_eq!(retry.status, 200);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        retry.json()["transaction"]["id"],
        first.json()["transaction"]["id"]
    );
    assert_eq!(account(key)["creditsBalance"], 2.0);

    let reused = credit(id, 3.0, Some("topup-1"));
    assert_eq!(
        (reused.status, reused.json()["error"].clone()),
        (422, json!("idempotency_key_reused"))
    );
    // Keys are scoped per account: another account may use the same key.
    let other = mint_key(json!({"name": "idem-other"}));
    let theirs = credit(other["id"].as_str().unwrap(), 3.0, Some("topup-1"));
    assert_eq!(theirs.status, 200);
    assert_eq!(
        account(other["key"].as_str().unwrap())["creditsBalance"],
        3.0
    );
    assert_eq!(account(key)["creditsBalance"], 2.0);
    assert_eq!(
        transactions(key, "")["transactions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let bad = credit(id, 1.0, Some("has space"));
    assert_eq!(bad.status, 400);
}

#[test]
fn forty_parallel_credits_with_twenty_idempotency_keys_apply_exactly_twenty() {
    let minted = mint_key(json!({"name": "burst"}));
    let (id, key) = (
        minted["id"].as_str().unwrap(),
        minted["key"].as_str().unwrap(),
    );
    let results: Vec<(usize, Resp)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..40)
            .map(|i| {
                s.spawn(move || {
                    let idem = format!("burst-{}", i % 20);
                    (i % 20, credit(id, 1.25, Some(&idem)))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Each attempt either did the work, replayed it, or saw it in flight.
    let mut txn_of_key: Vec<Option<String>> = vec![None; 20];
    for (k, resp) in &results {
        match resp.status {
            200 => {
                let txn = resp.json()["transaction"]["id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                if let Some(seen) = &txn_of_key[*k] {
                    assert_eq!(seen, &txn, "two credits for one idempotency key");
                }
                txn_of_key[*k] = Some(txn);
            }
            409 => assert_eq!(resp.json()["error"], "in_flight"),
            other => panic!("unexpected {other}: {}", resp.text),
        }
    }
    let done = results.iter().filter(|(_, r)| r.status == 200).count();
    eprintln!(
        "40 parallel credits, 20 keys: {done} answered 200 (work or replay), {} answered 409 in_flight",
        40 - done
    );
    // Retrying every key now replays; none of them credits again.
    for (k, seen) in txn_of_key.iter().enumerate() {
        let resp = credit(id, 1.25, Some(&format!("burst-{k}")));
        assert_eq!(resp.status, 200, "{}", resp.text);
        let txn = resp.json()["transaction"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        if let Some(seen) = seen {
            assert_eq!(seen, &txn);
        }
    }
    let a = account(key);
    assert_eq!(a["creditsBalance"], 25.0, "20 × 1.25");
    let list = transactions(key, "?limit=200");
    let entries = list["transactions"].as_array().unwrap();
    assert_eq!(entries.len(), 20);
    let sum: i64 = entries.iter().map(|e| micros(&e["amount"])).sum();
    assert_eq!(
        sum,
        micros(&a["creditsBalance"]),
        "ledger and balance agree"
    );
    let mut afters: Vec<i64> = entries.iter().map(|e| micros(&e["balanceAfter"])).collect();
    afters.sort();
    let expected: Vec<i64> = (1..=20).map(|n| n * 1_250_000).collect();
    assert_eq!(afters, expected, "each credit saw the one before it");
}

#[test]
fn usage_by_day_is_empty_for_a_new_account_and_validates_its_range() {
    let minted = mint_key(json!({"name": "usage"}));
    let key = minted["key"].as_str().unwrap();
    let resp = get("/billing/usage?from=2026-01-01&to=2026-01-31", Some(key));
    assert_eq!(resp.status, 200, "{}", resp.text);
    let u = resp.json();
    assert_eq!(
        (u["from"].clone(), u["to"].clone()),
        (json!("2026-01-01"), json!("2026-01-31"))
    );
    assert_eq!(u["totals"]["executions"], 0);
    assert_eq!(u["days"], json!([]));
    let default = get("/billing/usage", Some(key)).json();
    assert!(default["from"].as_str().unwrap() < default["to"].as_str().unwrap());
    for bad in [
        "?from=yesterday",
        "?from=2026-02-01&to=2026-01-01",
        "?from=2020-01-01&to=2026-01-01",
    ] {
        let resp = get(&format!("/billing/usage{bad}"), Some(key));
        assert_eq!(resp.status, 400, "{bad}");
    }
    assert_eq!(get("/billing/usage", None).status, 401);
}

/// A plan as SQL text with its arguments inlined, for `wrangler d1 execute`.
fn render(plan: &[Stmt]) -> String {
    plan.iter()
        .map(|s| {
            let mut text = s.sql.to_string();
            for (i, arg) in s.args.iter().enumerate().rev() {
                let literal = match arg {
                    Arg::Int(n) => n.to_string(),
                    Arg::Text(t) => format!("'{}'", t.replace('\'', "''")),
                    Arg::Null => "NULL".to_string(),
                };
                text = text.replace(&format!("?{}", i + 1), &literal);
            }
            text
        })
        .collect::<Vec<_>>()
        .join(";\n")
}

/// A run that crashed after taking its hold: the real hold plan, run on the
/// stack's local D1 with an expiry already past, is released by the sweep.
#[test]
fn the_scheduled_sweep_releases_the_hold_of_a_crashed_run() {
    let minted = mint_key(json!({"name": "crashed"}));
    let (id, key) = (
        minted["id"].as_str().unwrap(),
        minted["key"].as_str().unwrap(),
    );
    credit(id, 5.0, None);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let plan = sql::hold_plan(&sql::Hold {
        hold_id: "hold_crashed_run",
        entry_id: "txn_crashed_run_hold",
        key_id: id,
        amount: 2_000_000,
        run_id: Some("run_crashed"),
        description: "hold for run",
        now_ms: now - 10_000,
        expires_at_ms: now - 1_000,
    });
    let out = std::process::Command::new(repo_root().join("scripts/wrangler"))
        .args(["d1", "execute", "DB", "--local", "--persist-to"])
        .arg(&stack().state_dir)
        .args(["--command", &render(&plan)])
        .env("CI", "true")
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held = account(key);
    assert_eq!(
        (held["creditsBalance"].clone(), held["heldCredits"].clone()),
        (json!(5.0), json!(2.0))
    );
    assert_eq!(held["availableCredits"], 3.0);

    let swept = get("/__scheduled", None);
    assert_eq!(swept.status, 200, "{}", swept.text);
    let after = account(key);
    assert_eq!(
        (
            after["creditsBalance"].clone(),
            after["heldCredits"].clone()
        ),
        (json!(5.0), json!(0.0))
    );
    let list = transactions(key, "")["transactions"].clone();
    assert_eq!(list[0]["type"], "release");
    assert_eq!(list[0]["amount"], 2.0);
    assert_eq!(list[0]["holdId"], "hold_crashed_run");
    assert_eq!(list[0]["runId"], "run_crashed");
    assert_eq!(list[1]["type"], "hold");
    // A second sweep finds nothing more to release.
    assert_eq!(get("/__scheduled", None).status, 200);
    assert_eq!(
        transactions(key, "")["transactions"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}
