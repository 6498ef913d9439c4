//! A live run after its steps (`runs::live` has the rules): its container
//! kept for `exec`, `read` and `write` until its expiry; `stop` and the
//! expiry save a snapshot (a tree of the account's blobs in R2) and release
//! the container; `resume` restores the snapshot into a fresh container;
//! a fork starts a new run from one. Each live period is metered like a
//! run: held when it opens, settled once when it ends.
//!
//! Operations that change the container or the state take the instance's
//! `op_lock`, one at a time; an exec runs alone (a second one is 409
//! `in_flight`) and is cancelled by a stop or the expiry.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use worker::{Method, Response, State};

use super::store::RunRow;
use super::RunCtx;
use crate::api::error::ApiError;
use crate::common::{ids, time};
use crate::platform::{bindings, http};
use crate::runner::call::{ExecRequest, ForkSource, LiveTerms, Respond, SnapshotRef, StartFork};
use crate::runner::follow::{self, Followed, Stop};
use crate::runner::link::{self, send, send_body};
use crate::runner::live::wait_until;
use crate::runner::storage;
use crate::runs::billing::RunBilling;
use crate::runs::life::WATCHDOG_MS;
use crate::runs::live::{self, Action, View};
use crate::runs::rows;
use crate::runs::tree::{self, TreeEntry};
use crate::wire::receipts::{Chain, ReceiptKind, Step};
use crate::wire::{
    FileWritten, LiveExec, Restore, Restored, RunEvent, RunStatus, Snapshot, WireEvent,
    FILE_MODE_HEADER, MAX_LIVE_FILE_BYTES,
};

/// The `run_live` row.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct LiveRow {
    pub ttl_seconds: f64,
    pub expires_ms: Option<f64>,
    pub since_ms: f64,
    pub period: f64,
    pub period_start_ms: f64,
    pub period_billing: Option<String>,
    pub parent: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct SnapshotRow {
    id: String,
    taken_ms: f64,
    files: f64,
    bytes: f64,
    tree_key: String,
}

impl SnapshotRow {
    fn to_ref(&self) -> SnapshotRef {
        SnapshotRef {
            id: self.id.clone(),
            taken_ms: self.taken_ms as i64,
            files: self.files as u64,
            bytes: self.bytes as u64,
            tree_key: self.tree_key.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct ExecRow {
    runner_seq: f64,
    done: f64,
    receipt_seq: Option<f64>,
    error: Option<String>,
}

/// The tree object of a snapshot in R2.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TreeObject {
    id: String,
    run_id: String,
    taken_ms: i64,
    entries: Vec<TreeEntry>,
}

/// Where a fork came from (`run_live.parent`).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Parent {
    run_id: String,
    snapshot_id: String,
}

fn snapshot_key(account: &str, run_id: &str, snapshot_id: &str) -> String {
    format!("snapshots/{account}/{run_id}/{snapshot_id}.json")
}

impl RunCtx {
    pub(super) fn live_row(&self) -> Result<Option<LiveRow>, ApiError> {
        storage::first(&self.sql, &rows::live())
    }

    fn latest_snapshot(&self) -> Result<Option<SnapshotRow>, ApiError> {
        storage::first(&self.sql, &rows::snapshot_latest())
    }

    /// `Ok` when `action` may run on the run now (`runs::live::guard`).
    fn guard(&self, row: &RunRow, action: Action) -> Result<(), ApiError> {
        let retention = self.config().snapshot_retention_seconds;
        let live_row = self.live_row()?;
        let view = View {
            status: row.status(),
            live: live_row.is_some(),
            has_snapshot: self.latest_snapshot()?.is_some(),
            retained_until_ms: live_row
                .as_ref()
                .map(|l| live::retained_until(l.since_ms as i64, retention)),
        };
        live::guard(action, &view, time::now_ms())
    }

    /// The `live` and `snapshot` fields of a live run's body.
    pub(super) fn live_fields(&self, row: &RunRow, body: &mut Value) -> Result<(), ApiError> {
        let Some(l) = self.live_row()? else {
            return Ok(());
        };
        let status = row.status();
        if !status.is_terminal() {
            return Ok(());
        }
        let retention = self.config().snapshot_retention_seconds;
        let parent: Option<Parent> = match &l.parent {
            Some(text) => Some(serde_json::from_str(text)?),
            None => None,
        };
        body["live"] = json!({
            "state": status,
            "expiresAt": l.expires_ms.map(|ms| time::rfc3339(ms as i64)),
            "ttlSeconds": l.ttl_seconds as u64,
            "retainedUntil": (status == RunStatus::Expired)
                .then(|| time::rfc3339(live::retained_until(l.since_ms as i64, retention))),
            "forkedFrom": parent.map(|p| json!({"runId": p.run_id, "snapshotId": p.snapshot_id})),
        });
        if let Some(s) = self.latest_snapshot()? {
            body["snapshot"] = json!({
                "id": s.id,
                "files": s.files as u64,
                "bytes": s.bytes as u64,
                "takenAt": time::rfc3339(s.taken_ms as i64),
            });
        }
        Ok(())
    }

    fn config(&self) -> crate::platform::config::Config {
        crate::platform::config::Config::from_env(&self.env)
    }

    /// The live row of a run that just finished its steps (in the plan that
    /// writes its terminal status): period 1 began with the run.
    pub(super) fn go_live_plan(
        &self,
        row: &RunRow,
        ended_ms: i64,
    ) -> Result<Vec<crate::common::sql::Stmt>, ApiError> {
        let Some(terms) = self.terms(row)? else {
            return Ok(Vec::new());
        };
        let billing = self.run_billing()?;
        let expires = live::expires_at(ended_ms, terms.ttl_seconds, terms.paid_until_ms);
        Ok(rows::go_live(
            RunStatus::Live.as_str(),
            &rows::NewLive {
                ttl_seconds: terms.ttl_seconds,
                expires_ms: Some(expires),
                now_ms: ended_ms,
                period_start_ms: row.created_ms as i64,
                billing_json: billing.as_ref().map(|(_, b)| b.as_str()),
                paid_until_ms: terms.paid_until_ms,
                parent_json: None,
            },
        ))
    }

    /// A live run's terms, kept with its spec at its start.
    pub(super) fn terms(&self, row: &RunRow) -> Result<Option<LiveTerms>, ApiError> {
        #[derive(Deserialize)]
        struct Terms {
            live_terms: Option<String>,
        }
        let _ = row;
        let found: Option<Terms> = storage::first(&self.sql, &rows::live_terms())?;
        match found.and_then(|t| t.live_terms) {
            Some(text) => Ok(Some(serde_json::from_str(&text)?)),
            None => Ok(None),
        }
    }

    /// The key and the `RunBilling` JSON of the run's first period.
    fn run_billing(&self) -> Result<Option<(String, String)>, ApiError> {
        #[derive(Deserialize)]
        struct Row {
            key_id: String,
            billing: String,
        }
        Ok(storage::first::<Row>(&self.sql, &rows::billing_of())?.map(|r| (r.key_id, r.billing)))
    }

    /// Settles the open period (once: a settled one has no billing left).
    async fn settle_period(&self, row: &RunRow, ended_ms: i64) -> Result<(), ApiError> {
        let Some(l) = self.live_row()? else {
            return Ok(());
        };
        let Some(billing_json) = &l.period_billing else {
            return Ok(());
        };
        let billing: RunBilling = serde_json::from_str(billing_json)?;
        let key_id = self.run_billing()?.map(|(k, _)| k).unwrap_or_default();
        let period = l.period as i64;
        let container_ms = (ended_ms - l.period_start_ms as i64).max(0);
        let db = bindings::db(&self.env)?;
        crate::runs::billing_d1::settle(
            &db,
            &row.account_id,
            &key_id,
            &row.id,
            period,
            &billing,
            container_ms,
            time::now_ms(),
        )
        .await?;
        let total = if period <= 1 {
            container_ms
        } else {
            row.container_ms.unwrap_or(0.0) as i64 + container_ms
        };
        storage::exec_plan(
            &self.sql,
            &[rows::period_settled(period), rows::container_ms(total)],
        )?;
        Ok(())
    }

    async fn index_status(&self, run_id: &str, status: RunStatus, container_ms: Option<i64>) {
        let now = time::now_ms();
        let updated = async {
            bindings::db(&self.env)?
                .prepare(
                    "UPDATE runs SET status = ?1, updated_at = ?2, container_ms = COALESCE(?3, container_ms) WHERE id = ?4",
                )
                .bind(&[
                    status.as_str().into(),
                    (now as f64).into(),
                    container_ms.map_or(worker::wasm_bindgen::JsValue::NULL, |ms| (ms as f64).into()),
                    run_id.into(),
                ])?
                .run()
                .await?;
            Ok::<(), ApiError>(())
        }
        .await;
        if let Err(err) = updated {
            worker::console_error!("runs: D1 status of {run_id}: {err}");
        }
    }

    /// Appends a receipt the DO seals itself, continuing the chain.
    fn seal(&self, step: Step) -> Result<crate::wire::receipts::Receipt, ApiError> {
        let receipts = self.receipts()?;
        let receipt = Chain::after(receipts.last()).append(step);
        self.store_receipt(&receipt)?;
        Ok(receipt)
    }

    /// The run's body as a `result` event (SSE readers of an operation end there).
    fn announce(&self) -> Result<Value, ApiError> {
        let row = self.load()?.ok_or(ApiError::RunNotFound)?;
        let body = self.body(&row)?;
        self.append_event("result", &body.to_string())?;
        Ok(body)
    }

    // -----------------------------------------------------------------------
    // Snapshots.

    /// Saves the checkout: the runner lists it (adding its files to its
    /// cache), the blobs the account lacks go to R2, the tree object after
    /// them. With `receipt`, a `snapshot` receipt records it.
    async fn take_snapshot(&self, row: &RunRow, receipt: bool) -> Result<SnapshotRef, ApiError> {
        let started = time::now_ms();
        let mut resp = send(
            &self.link,
            Method::Post,
            &format!("/runs/{}/snapshot", row.id),
            None,
            300_000,
        )
        .await
        .map_err(|e| ApiError::RunnerUnavailable(format!("snapshot: {e}")))?;
        if resp.status_code() != 200 {
            let why = crate::runner::blobs::refusal(resp).await;
            return Err(ApiError::RunnerUnavailable(format!("snapshot: {why}")));
        }
        let snapshot: Snapshot = resp.json().await?;
        tree::validate(&snapshot.entries)
            .map_err(|why| ApiError::Internal(format!("the runner's snapshot: {why}")))?;
        let blobs = tree::blob_sizes(&snapshot.entries);
        let moved = crate::runner::blobs::pull_missing(
            &self.link,
            &self.env,
            &row.account_id,
            &blobs,
            started,
        )
        .await?;
        let id = ids::new_id("snap_")?;
        let key = snapshot_key(&row.account_id, &row.id, &id);
        let totals = tree::totals(&snapshot.entries);
        let object = TreeObject {
            id: id.clone(),
            run_id: row.id.clone(),
            taken_ms: started,
            entries: snapshot.entries,
        };
        bindings::bucket(&self.env)?
            .put(&key, serde_json::to_vec(&object)?)
            .execute()
            .await?;
        storage::exec(
            &self.sql,
            &rows::snapshot_add(&id, started, totals.files, totals.bytes, &key),
        )?;
        if receipt {
            self.seal(Step::done(
                ReceiptKind::Snapshot,
                format!("snapshot {id}"),
                format!(
                    "{} files, {} bytes; {moved} of {} blobs uploaded",
                    totals.files,
                    totals.bytes,
                    blobs.len()
                ),
                started,
                time::now_ms(),
            ))?;
        }
        Ok(SnapshotRef {
            id,
            taken_ms: started,
            files: totals.files,
            bytes: totals.bytes,
            tree_key: key,
        })
    }

    /// A fresh container with `snapshot` written out as the checkout, and
    /// a `restore` receipt.
    async fn restore(&self, row: &RunRow, snapshot: &SnapshotRef) -> Result<(), ApiError> {
        let started = time::now_ms();
        let object = bindings::bucket(&self.env)?
            .get(&snapshot.tree_key)
            .execute()
            .await?
            .ok_or_else(|| {
                ApiError::Internal(format!("snapshot {} is missing from storage", snapshot.id))
            })?;
        let bytes = object
            .body()
            .ok_or_else(|| ApiError::Internal("snapshot without a body".into()))?
            .bytes()
            .await?;
        let tree_object: TreeObject = serde_json::from_slice(&bytes)?;
        // A container that went away under the first try (the runtime may
        // still be tearing down the one a stop released) is replaced once:
        // a restore writes the whole checkout, so doing it again is safe.
        let restored = match self.restore_into_container(row, &tree_object).await {
            Err(ApiError::RunnerUnavailable(why)) => {
                worker::console_log!("runs: restore of {} retried: {why}", row.id);
                self.release_container(row, "the restore lost its container")
                    .await?;
                self.restore_into_container(row, &tree_object).await?
            }
            other => other?,
        };
        self.seal(Step::done(
            ReceiptKind::Restore,
            format!("restore {}", snapshot.id),
            format!("{} files, {} bytes", restored.files, restored.bytes),
            started,
            time::now_ms(),
        ))?;
        Ok(())
    }

    /// A ready container, the tree's blobs in its cache, the checkout
    /// written out.
    async fn restore_into_container(
        &self,
        row: &RunRow,
        tree_object: &TreeObject,
    ) -> Result<Restored, ApiError> {
        let mut ready = Vec::new();
        let readied = link::ensure_ready(&self.sql, &self.link, &row.id, &mut ready).await;
        for receipt in &ready {
            self.append_event("runner", &serde_json::to_string(receipt)?)?;
        }
        readied.map_err(ApiError::RunnerUnavailable)?;
        crate::runner::blobs::push_missing(
            &self.link,
            &self.env,
            &row.account_id,
            &tree::blob_sizes(&tree_object.entries),
        )
        .await
        .map_err(ApiError::RunnerUnavailable)?;
        let body = serde_json::to_string(&Restore {
            entries: tree_object.entries.clone(),
        })?;
        let mut resp = send(
            &self.link,
            Method::Post,
            &format!("/runs/{}/restore", row.id),
            Some(body),
            300_000,
        )
        .await
        .map_err(ApiError::RunnerUnavailable)?;
        if resp.status_code() != 200 {
            let why = crate::runner::blobs::refusal(resp).await;
            return Err(ApiError::RunnerUnavailable(format!("restore: {why}")));
        }
        Ok(resp.json().await?)
    }

    /// Releases the container and records it.
    pub(super) async fn release_container(
        &self,
        row: &RunRow,
        reason: &str,
    ) -> Result<(), ApiError> {
        let mut released = Vec::new();
        link::release(&self.sql, &self.link, &row.id, reason, &mut released).await;
        for receipt in released {
            self.append_event("runner", &serde_json::to_string(&receipt)?)?;
        }
        Ok(())
    }

    // -----------------------------------------------------------------------
    // Leaving the live state: stop, expiry, a lost container.

    /// Ends the live period as `state`: with `snapshot`, the checkout is
    /// saved first (a failure leaves the run live, nothing lost); then the
    /// container goes, the period is settled and the state written.
    async fn leave_live(
        &self,
        state: RunStatus,
        snapshot: bool,
        reason: &str,
    ) -> Result<Option<SnapshotRef>, ApiError> {
        let row = self.load()?.ok_or(ApiError::RunNotFound)?;
        if row.status() != RunStatus::Live {
            return Ok(None);
        }
        self.cancel_open_exec(&row).await;
        let saved = if snapshot {
            Some(self.take_snapshot(&row, true).await?)
        } else {
            None
        };
        self.release_container(&row, reason).await?;
        let ended = time::now_ms();
        storage::exec_plan(&self.sql, &rows::leave_live(state.as_str(), ended))?;
        if let Err(err) = self.settle_period(&row, ended).await {
            // The watchdog settles it later (the hold expires at the latest).
            worker::console_error!("runs: settle of {}'s live period: {err}", row.id);
        }
        let row = self.load()?.ok_or(ApiError::RunNotFound)?;
        self.index_status(&row.id, state, row.container_ms.map(|ms| ms as i64))
            .await;
        self.announce()?;
        Ok(saved)
    }

    /// A live run being deleted: its container goes and its period is
    /// settled (no snapshot: the run is gone).
    pub(super) async fn end_for_delete(&self, row: &RunRow) -> Result<(), ApiError> {
        let _alone = self.live.op_lock().await;
        self.leave_live(RunStatus::Stopped, false, "the run was deleted")
            .await?;
        let _ = row;
        Ok(())
    }

    /// `POST /api/runs/:id/stop`.
    pub(super) async fn stop(&self, row: &RunRow) -> Result<Response, ApiError> {
        self.guard(row, Action::Stop)?;
        let _alone = self.live.op_lock().await;
        let row = self.load()?.ok_or(ApiError::RunNotFound)?;
        self.guard(&row, Action::Stop)?;
        self.leave_live(RunStatus::Stopped, true, "the run was stopped")
            .await?;
        let row = self.load()?.ok_or(ApiError::RunNotFound)?;
        http::json(200, &self.body(&row)?)
    }

    /// The alarm of a run past its steps: expiry, a lost container, a
    /// period left unsettled. Re-arms while the run is live.
    pub(super) async fn live_watchdog(&self, state: &State) {
        let Ok(Some(row)) = self.load() else {
            return;
        };
        let now = time::now_ms();
        if row.status() == RunStatus::Live {
            let expires = self
                .live_row()
                .ok()
                .flatten()
                .and_then(|l| l.expires_ms)
                .map_or(now, |ms| ms as i64);
            if !self.live.live_op.get() {
                if now >= expires {
                    let _alone = self.live.op_lock().await;
                    if let Err(err) = self
                        .leave_live(RunStatus::Expired, true, "the run expired")
                        .await
                    {
                        worker::console_error!("runs: expiry of {}: {err}", row.id);
                        // No snapshot could be taken: the container is gone.
                        if self.link.container_gone() {
                            let _ = self
                                .leave_live(
                                    RunStatus::ContainerLost,
                                    false,
                                    "the container was lost",
                                )
                                .await;
                        }
                    }
                } else if self.link.container_gone() {
                    let _alone = self.live.op_lock().await;
                    if let Err(err) = self
                        .leave_live(RunStatus::ContainerLost, false, "the container was lost")
                        .await
                    {
                        worker::console_error!("runs: loss of {}: {err}", row.id);
                    }
                }
            }
            if self
                .load()
                .ok()
                .flatten()
                .is_some_and(|r| r.status() == RunStatus::Live)
            {
                let next = (expires - time::now_ms()).clamp(100, WATCHDOG_MS);
                let _ = state.storage().set_alarm(next).await;
            }
            return;
        }
        // Stopped, expired or lost: a period whose settle failed is retried.
        if self
            .live_row()
            .ok()
            .flatten()
            .is_some_and(|l| l.period_billing.is_some())
        {
            if let Err(err) = self.settle_period(&row, now).await {
                worker::console_error!("runs: settle of {}: {err}", row.id);
                let _ = state.storage().set_alarm(WATCHDOG_MS).await;
            }
        }
        if self.link.container_running() {
            let _ = self.release_container(&row, "the run is not live").await;
        }
    }

    // -----------------------------------------------------------------------
    // Resume and fork.

    /// `POST /api/runs/:id/resume`: the Worker took the period's hold.
    pub(super) async fn resume(
        &self,
        state: &State,
        row: &RunRow,
        terms: LiveTerms,
        billing: Option<RunBilling>,
    ) -> Result<Response, ApiError> {
        self.guard(row, Action::Resume)?;
        let _alone = self.live.op_lock().await;
        let row = self.load()?.ok_or(ApiError::RunNotFound)?;
        self.guard(&row, Action::Resume)?;
        let snapshot = self
            .latest_snapshot()?
            .ok_or(ApiError::RunNotRunning)?
            .to_ref();
        if let Err(err) = self.restore(&row, &snapshot).await {
            let _ = self.release_container(&row, "the resume failed").await;
            return Err(err);
        }
        self.open_period(&row, terms, billing.as_ref()).await?;
        state.storage().set_alarm(WATCHDOG_MS).await?;
        self.announce()?;
        let row = self.load()?.ok_or(ApiError::RunNotFound)?;
        http::json(200, &self.body(&row)?)
    }

    async fn open_period(
        &self,
        row: &RunRow,
        terms: LiveTerms,
        billing: Option<&RunBilling>,
    ) -> Result<(), ApiError> {
        let now = time::now_ms();
        let billing_json = match billing {
            Some(b) => Some(serde_json::to_string(b)?),
            None => None,
        };
        storage::exec_plan(
            &self.sql,
            &rows::period_open(&rows::NewPeriod {
                now_ms: now,
                billing_json: billing_json.as_deref(),
                paid_until_ms: terms.paid_until_ms,
                expires_ms: live::expires_at(now, terms.ttl_seconds, terms.paid_until_ms),
            }),
        )?;
        self.index_status(&row.id, RunStatus::Live, None).await;
        self.keep_container_up().await;
        Ok(())
    }

    /// The container outlives idle stretches of the DO until the expiry
    /// (and a minute past it, for the expiry's own snapshot).
    pub(super) async fn keep_container_up(&self) {
        let now = time::now_ms();
        if let Ok(Some(l)) = self.live_row() {
            if let Some(expires) = l.expires_ms {
                self.link.keep_up_for(expires as i64 - now + 60_000).await;
            }
        }
    }

    /// The parent of a fork: its latest snapshot, or one taken now (without
    /// a receipt: the parent's record is unchanged) if it is live.
    pub(super) async fn fork_source(&self, row: &RunRow) -> Result<Response, ApiError> {
        self.guard(row, Action::Fork)?;
        let _alone = self.live.op_lock().await;
        let row = self.load()?.ok_or(ApiError::RunNotFound)?;
        self.guard(&row, Action::Fork)?;
        let snapshot = if row.status() == RunStatus::Live {
            self.take_snapshot(&row, false).await?
        } else {
            self.latest_snapshot()?
                .ok_or(ApiError::RunNotLive)?
                .to_ref()
        };
        let l = self.live_row()?.ok_or(ApiError::RunNotLive)?;
        http::json(
            200,
            &ForkSource {
                snapshot,
                spec: row.spec()?,
                ttl_seconds: l.ttl_seconds as u64,
            },
        )
    }

    /// A fork's own start: its row, its first receipt (`fork`), the
    /// parent's snapshot as its own, then live at once or `stopped`.
    pub(super) async fn start_fork(
        &self,
        state: &State,
        fork: StartFork,
    ) -> Result<Response, ApiError> {
        if self.load()?.is_some() {
            return Err(ApiError::Internal("run id reused".into()));
        }
        let now = time::now_ms();
        let mut spec = fork.source.spec.clone();
        spec.run_id = fork.run_id.clone();
        spec.live = true;
        let db = bindings::db(&self.env)?;
        db.prepare(
            "INSERT INTO runs (id, account_id, key_id, repo, git_ref, status, created_at, updated_at, public, finished_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, 'stopped', ?6, ?6, ?7, ?6)",
        )
        .bind(&[
            fork.run_id.as_str().into(),
            fork.account_id.as_str().into(),
            fork.key_id.as_str().into(),
            spec.repo.as_str().into(),
            spec.git_ref.as_deref().map(Into::into).unwrap_or(worker::wasm_bindgen::JsValue::NULL),
            (now as f64).into(),
            (if fork.public { 1.0 } else { 0.0 }).into(),
        ])?
        .run()
        .await?;
        let spec_json = serde_json::to_string(&spec)?;
        let terms_json = serde_json::to_string(&fork.terms)?;
        let billing_json = match &fork.billing {
            Some(b) => Some(serde_json::to_string(b)?),
            None => None,
        };
        let parent_json = serde_json::to_string(&Parent {
            run_id: fork.parent_run_id.clone(),
            snapshot_id: fork.source.snapshot.id.clone(),
        })?;
        let snap = &fork.source.snapshot;
        let mut plan = rows::create(&rows::NewRun {
            run_id: &fork.run_id,
            account_id: &fork.account_id,
            spec_json: &spec_json,
            now_ms: now,
            deadline_ms: 0,
            claim: None,
            billing: billing_json.as_deref().map(|b| (fork.key_id.as_str(), b)),
            public: fork.public,
            live_terms: Some(&terms_json),
        });
        plan.extend(rows::go_live(
            RunStatus::Stopped.as_str(),
            &rows::NewLive {
                ttl_seconds: fork.terms.ttl_seconds,
                expires_ms: None,
                now_ms: now,
                period_start_ms: now,
                // A fork created stopped owes nothing: its first period
                // opens with its first resume.
                billing_json: None,
                paid_until_ms: None,
                parent_json: Some(&parent_json),
            },
        ));
        plan.push(rows::snapshot_add(
            &snap.id,
            snap.taken_ms,
            snap.files,
            snap.bytes,
            &snap.tree_key,
        ));
        plan.push(rows::finished_at(now));
        storage::exec_plan(&self.sql, &plan)?;
        self.seal(Step::done(
            ReceiptKind::Fork,
            format!("fork {}@{}", fork.parent_run_id, snap.id),
            json!({
                "parentRunId": fork.parent_run_id,
                "snapshotId": snap.id,
                "files": snap.files,
                "bytes": snap.bytes,
            })
            .to_string(),
            now,
            now,
        ))?;
        if fork.live {
            let row = self.load()?.ok_or(ApiError::RunNotFound)?;
            let _alone = self.live.op_lock().await;
            if let Err(err) = self.restore(&row, snap).await {
                let _ = self
                    .release_container(&row, "the fork could not start")
                    .await;
                // Nothing of the fork stays: its rows and its index row go.
                storage::exec_plan(&self.sql, &rows::delete(&row.id))?;
                let _ = db
                    .prepare("DELETE FROM runs WHERE id = ?1")
                    .bind(&[row.id.as_str().into()])?
                    .run()
                    .await;
                return Err(err);
            }
            self.open_period(&row, fork.terms, fork.billing.as_ref())
                .await?;
            state.storage().set_alarm(WATCHDOG_MS).await?;
        }
        self.announce()?;
        let row = self.load()?.ok_or(ApiError::RunNotFound)?;
        http::json(201, &self.body(&row)?)
    }

    // -----------------------------------------------------------------------
    // Exec, read, write.

    /// `POST /api/runs/:id/exec`: one command as a job of its own on the
    /// runner, its receipt sealed into the run's chain by the DO.
    pub(super) async fn exec(
        &self,
        row: &RunRow,
        request: ExecRequest,
        respond: Respond,
    ) -> Result<Response, ApiError> {
        self.guard(row, Action::Exec)?;
        if self.live.live_op.get() || self.live.exec_driving.get() {
            return Err(ApiError::InFlight);
        }
        // An exec left open by an instance that is gone (evicted mid-exec)
        // has no driver any more: it is closed, so it blocks nothing.
        #[derive(Deserialize)]
        struct Open {
            id: String,
        }
        if let Some(orphan) = storage::first::<Open>(&self.sql, &rows::exec_open())? {
            let why = "the run's Durable Object restarted during the exec";
            storage::exec(&self.sql, &rows::exec_done(&orphan.id, None, Some(why)))?;
        }
        let now = time::now_ms();
        let expires = self
            .live_row()?
            .and_then(|l| l.expires_ms)
            .map_or(now, |ms| ms as i64);
        // An exec ends before the run expires.
        let left = (expires - now - 2_000).max(0) as u64;
        if left < crate::runs::spec::MIN_TIMEOUT_MS {
            return Err(ApiError::RunNotLive);
        }
        let exec_id = ids::new_id(&format!("{}-x", row.id))?;
        let after = self.last_event_seq()?;
        storage::exec(&self.sql, &rows::exec_add(&exec_id))?;
        let start = LiveExec {
            exec_id: exec_id.clone(),
            command: request.command,
            timeout_ms: request.timeout_ms.min(left),
            env: request.env,
        };
        // Set before the driver starts, so no second exec slips in between.
        self.live.exec_driving.set(true);
        worker::wasm_bindgen_futures::spawn_local(drive_exec(self.clone(), row.id.clone(), start));
        match respond {
            Respond::Events => {
                let ctx = self.clone();
                let id = exec_id.clone();
                let log = crate::runner::sse::JobLog {
                    sql: self.sql.clone(),
                    live: self.live.clone(),
                    job_id: row.id.clone(),
                    finished: Box::new(move || {
                        storage::first::<ExecRow>(&ctx.sql, &rows::exec_of(&id))
                            .ok()
                            .flatten()
                            .is_none_or(|e| e.done != 0.0)
                    }),
                };
                crate::runner::sse::response(log, &self.env, after)
            }
            Respond::Result => {
                let done = wait_until(
                    &self.live,
                    None,
                    || storage::first::<ExecRow>(&self.sql, &rows::exec_of(&exec_id)),
                    |e| e.as_ref().is_none_or(|e| e.done != 0.0),
                )
                .await?
                .ok_or(ApiError::RunNotFound)?;
                let receipt = match done.receipt_seq {
                    Some(seq) => self.receipts()?.into_iter().find(|r| r.seq == seq as u64),
                    None => None,
                };
                match receipt {
                    Some(receipt) => http::json(200, &receipt),
                    None => Err(ApiError::RunnerUnavailable(
                        done.error
                            .unwrap_or_else(|| "the exec ended without a receipt".into()),
                    )),
                }
            }
        }
    }

    fn last_event_seq(&self) -> Result<u64, ApiError> {
        #[derive(Deserialize)]
        struct Row {
            seq: Option<f64>,
        }
        let row = self.load()?.ok_or(ApiError::RunNotFound)?;
        let found: Option<Row> =
            storage::first(&self.sql, &crate::runner::job::last_event_seq(&row.id))?;
        Ok(found.and_then(|r| r.seq).unwrap_or(0.0) as u64)
    }

    /// A stop or the expiry cancels the exec under way and waits (10 s at
    /// most) for its end.
    async fn cancel_open_exec(&self, row: &RunRow) {
        #[derive(Deserialize)]
        struct Open {
            id: String,
        }
        let Ok(Some(open)) = storage::first::<Open>(&self.sql, &rows::exec_open()) else {
            return;
        };
        let _ = link::cancel_on_runner(&self.link, &format!("/runs/{}/cancel", open.id)).await;
        let _ = wait_until(
            &self.live,
            Some(10_000),
            || storage::first::<ExecRow>(&self.sql, &rows::exec_of(&open.id)),
            |e| e.as_ref().is_none_or(|e| e.done != 0.0),
        )
        .await;
        let _ = row;
    }

    /// `GET /api/runs/:id/read?path=`: UTF-8 as `content`, else `contentBase64`.
    pub(super) async fn read_file(&self, row: &RunRow, path: &str) -> Result<Response, ApiError> {
        self.guard(row, Action::Read)?;
        crate::common::paths::check_path("path", path)?;
        let route = format!(
            "/runs/{}/file?path={}",
            row.id,
            percent_encoding::utf8_percent_encode(path, percent_encoding::NON_ALPHANUMERIC)
        );
        let mut resp = send(&self.link, Method::Get, &route, None, 30_000)
            .await
            .map_err(ApiError::RunnerUnavailable)?;
        if resp.status_code() != 200 {
            return Err(file_refusal(resp).await);
        }
        let mode = resp
            .headers()
            .get(FILE_MODE_HEADER)
            .ok()
            .flatten()
            .and_then(|m| u32::from_str_radix(&m, 8).ok());
        let bytes = resp.bytes().await?;
        if bytes.len() as u64 > MAX_LIVE_FILE_BYTES {
            return Err(ApiError::ContentTooLarge);
        }
        let size = bytes.len();
        let mut body = json!({"path": path, "size": size, "mode": mode});
        match String::from_utf8(bytes) {
            Ok(text) => body["content"] = json!(text),
            Err(err) => {
                body["contentBase64"] =
                    json!(base64::engine::general_purpose::STANDARD.encode(err.into_bytes()))
            }
        }
        http::json(200, &body)
    }

    /// `POST /api/runs/:id/write`.
    pub(super) async fn write_file(
        &self,
        row: &RunRow,
        path: &str,
        content_base64: &str,
        mode: Option<u32>,
    ) -> Result<Response, ApiError> {
        self.guard(row, Action::Write)?;
        crate::common::paths::check_path("path", path)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(content_base64)
            .map_err(|e| ApiError::Internal(format!("write: {e}")))?;
        let mut route = format!(
            "/runs/{}/file?path={}",
            row.id,
            percent_encoding::utf8_percent_encode(path, percent_encoding::NON_ALPHANUMERIC)
        );
        if let Some(mode) = mode {
            route.push_str(&format!("&mode={mode:o}"));
        }
        let body = worker::js_sys::Uint8Array::from(bytes.as_slice());
        let mut resp = send_body(
            &self.link,
            Method::Put,
            &route,
            Some((body.into(), "application/octet-stream")),
            30_000,
        )
        .await
        .map_err(ApiError::RunnerUnavailable)?;
        if resp.status_code() != 200 {
            return Err(file_refusal(resp).await);
        }
        let written: FileWritten = resp.json().await?;
        http::json(200, &json!({"path": path, "written": written.written}))
    }
}

/// A runner's refusal of a file route, as the API's error.
async fn file_refusal(mut resp: Response) -> ApiError {
    use crate::wire::{RunnerError, RunnerErrorCode};
    let status = resp.status_code();
    let text = resp.text().await.unwrap_or_default();
    match RunnerError::parse(&text) {
        Some(err) => match err.error {
            RunnerErrorCode::FileNotFound => ApiError::FileNotFound,
            RunnerErrorCode::FileTooLarge => ApiError::ContentTooLarge,
            RunnerErrorCode::BadPath => ApiError::BadPath(format!("path {}", err.message)),
            RunnerErrorCode::BadMode => {
                ApiError::ValidationFailed(vec![crate::api::error::FieldError::new(
                    "mode",
                    err.message,
                )])
            }
            RunnerErrorCode::NotLive | RunnerErrorCode::RunNotFound => {
                ApiError::RunnerUnavailable("the run's container has no checkout".into())
            }
            _ => ApiError::RunnerUnavailable(format!("{status} {}", err.message)),
        },
        None => ApiError::RunnerUnavailable(format!("the runner answered {status}")),
    }
}

/// Runs one exec to its end: dispatch, follow its events (its output into
/// the run's log, its receipt sealed into the run's chain), then mark it
/// done — with a receipt the DO seals itself when the runner could not.
async fn drive_exec(ctx: RunCtx, run_id: String, start: LiveExec) {
    let _driving = ExecDriving::new(&ctx);
    let exec_id = start.exec_id.clone();
    let started = time::now_ms();
    let deadline = started + start.timeout_ms as i64 + 30_000;
    let outcome = async {
        let body = serde_json::to_string(&start)?;
        let first = send(
            &ctx.link,
            Method::Post,
            &format!("/runs/{run_id}/exec"),
            Some(body),
            10_000,
        )
        .await
        .ok();
        let job = ExecJob {
            ctx: &ctx,
            exec_id: &exec_id,
            deadline_ms: deadline,
        };
        let followed = follow::follow(&ctx.link, &job, first).await?;
        Ok::<_, ApiError>(followed)
    }
    .await;
    let receipt_seq = storage::first::<ExecRow>(&ctx.sql, &rows::exec_of(&exec_id))
        .ok()
        .flatten()
        .and_then(|e| e.receipt_seq);
    let error = match outcome {
        Ok(Followed::Result(())) if receipt_seq.is_some() => None,
        Ok(Followed::Result(())) => Some("the exec ended without its receipt".to_string()),
        Ok(Followed::Stopped(Stop::Ended)) => Some("the run left the live state".to_string()),
        Ok(Followed::Stopped(Stop::Deadline)) => {
            let _ = link::cancel_on_runner(&ctx.link, &format!("/runs/{exec_id}/cancel")).await;
            Some("the exec passed its time limit".to_string())
        }
        Ok(Followed::Lost(why)) => Some(why),
        Err(err) => Some(err.to_string()),
    };
    let mut seq = receipt_seq.map(|s| s as u64);
    if let (Some(why), None) = (&error, seq) {
        // The chain still records the exec, and why it has no result.
        let sealed = ctx.seal(Step {
            kind: ReceiptKind::Exec,
            cmd: start.command.clone(),
            exit_code: None,
            signal: None,
            stdout: String::new(),
            stderr: format!("[cloudbox: {why}]"),
            truncated: false,
            timed_out: why.contains("time limit"),
            started_ms: started,
            duration_ms: (time::now_ms() - started).max(0) as u64,
        });
        seq = sealed.ok().map(|r| r.seq);
    }
    if let Err(err) = storage::exec(&ctx.sql, &rows::exec_done(&exec_id, seq, error.as_deref())) {
        worker::console_error!("runs: exec {exec_id}: {err}");
    }
    if let Err(err) = ctx.announce() {
        worker::console_error!("runs: exec {exec_id}: {err}");
    }
}

/// Marks this instance as driving an exec until it drops.
struct ExecDriving(std::rc::Rc<crate::runner::live::Live>);

impl ExecDriving {
    fn new(ctx: &RunCtx) -> Self {
        ctx.live.exec_driving.set(true);
        ExecDriving(ctx.live.clone())
    }
}

impl Drop for ExecDriving {
    fn drop(&mut self) {
        self.0.exec_driving.set(false);
    }
}

/// An exec as the follower sees it.
struct ExecJob<'a> {
    ctx: &'a RunCtx,
    exec_id: &'a str,
    deadline_ms: i64,
}

impl follow::Job for ExecJob<'_> {
    type Result = ();
    const NOUN: &'static str = "exec";

    fn events_path(&self, after: u64) -> String {
        format!("/runs/{}/events?after={after}", self.exec_id)
    }

    fn stored_seq(&self) -> Result<u64, ApiError> {
        Ok(
            storage::first::<ExecRow>(&self.ctx.sql, &rows::exec_of(self.exec_id))?
                .map_or(0, |e| e.runner_seq as u64),
        )
    }

    fn stop(&self) -> Result<Option<Stop>, ApiError> {
        let live = self
            .ctx
            .load()?
            .is_some_and(|r| r.status() == RunStatus::Live);
        Ok(if !live {
            Some(Stop::Ended)
        } else if time::now_ms() > self.deadline_ms {
            Some(Stop::Deadline)
        } else {
            None
        })
    }

    async fn store(&self, event: WireEvent) -> Result<Option<()>, ApiError> {
        let ctx = self.ctx;
        storage::exec(&ctx.sql, &rows::exec_seq(self.exec_id, event.seq))?;
        match event.event {
            RunEvent::Output(mut chunk) => {
                // Numbered as the receipt it precedes.
                chunk.step = ctx.receipts()?.last().map_or(1, |r| r.seq + 1);
                ctx.append_event("output", &serde_json::to_string(&chunk)?)?;
            }
            RunEvent::Receipt(receipt) => {
                let sealed = ctx.seal(Step {
                    kind: ReceiptKind::Exec,
                    cmd: receipt.cmd,
                    exit_code: receipt.exit_code,
                    signal: receipt.signal,
                    stdout: receipt.stdout,
                    stderr: receipt.stderr,
                    truncated: receipt.truncated,
                    timed_out: receipt.timed_out,
                    started_ms: receipt.ms,
                    duration_ms: receipt.duration_ms,
                })?;
                storage::exec(&ctx.sql, &rows::exec_receipt(self.exec_id, sealed.seq))?;
            }
            RunEvent::Result(_) => return Ok(Some(())),
            RunEvent::Heartbeat | RunEvent::Usage(_) | RunEvent::Task(_) => {}
        }
        Ok(None)
    }
}
