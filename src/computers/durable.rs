//! The Computer Durable Object: one per computer. Its SQLite storage holds
//! the spec, the materialized files, the agent's writes, which collaborators
//! have revealed their private files, the hash-chained receipt log, and
//! the grading summary of that log (`grade_sql`), kept up to date by each
//! append so that a grade does not read the log. The
//! Worker (`computers::routes`) authenticates and validates, then sends it
//! one `ComputerCall` (`computers::call`) carrying the caller's account; every
//! call but `create` answers 404 `computer_not_found` to any other account.
//!
//! Rules live in pure modules (`spec`, `grade`, `grade_sql`, `receipts`,
//! `generate`); this file only stores and sequences. Writes of one action are
//! plain synchronous `sql.exec` calls with no `await` between them, so the
//! runtime commits them together and no other request interleaves.

use std::cell::RefCell;
use std::rc::Rc;

use serde::Deserialize;
use serde_json::{json, Value};
use worker::{
    durable_object, DurableObject, Env, Method, Request, Response, SqlStorage, SqlStorageValue,
    State,
};

use crate::api::error::ApiError;
use crate::common::{canonical, time};
use crate::computers::call::{self, ComputerCall};
use crate::computers::generate::{self, FileToWrite};
use crate::computers::grade::{self, Fact, Summary, Wanted};
use crate::computers::grade_sql::{self, FactRow};
use crate::computers::receipts::{self, Receipt};
use crate::computers::spec::{self, ComputerSpec, Criterion};
use crate::platform::config::{Config, ModelConfig};
use crate::platform::model;
use crate::platform::{bindings, http};
use crate::runner::storage;

/// Criteria without a `mustEvent` judged by the model per grade, at most.
const MAX_JUDGED: usize = 8;
/// Receipts summarized for the judge: the most recent ones, so that its
/// prompt (and the query behind it) does not grow with the log.
const JUDGE_RECEIPTS: u32 = 200;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, ord INTEGER NOT NULL, \
     kind TEXT NOT NULL, state TEXT, description TEXT, depends_on TEXT, owner TEXT, \
     content TEXT NOT NULL, source TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS writes (path TEXT PRIMARY KEY, content TEXT NOT NULL, ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS reveals (who TEXT PRIMARY KEY, ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS receipts (seq INTEGER PRIMARY KEY, ms INTEGER NOT NULL, \
     ts TEXT NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL, hash TEXT NOT NULL, \
     prev_hash TEXT NOT NULL)",
];

#[durable_object]
pub struct Computer {
    env: Env,
    sql: SqlStorage,
    /// The owner, id and parsed spec, read from storage once per instance:
    /// they never change after `create`, and every call checks them.
    owned: RefCell<Option<Rc<Owned>>>,
    /// The last receipt's (hash, seq, ms), kept by `append` and cleared by
    /// `reset`, so that an append does not first read the log's head.
    head: RefCell<Option<(String, u64, i64)>>,
}

/// Who a computer belongs to, and what it is.
struct Owned {
    account: String,
    id: String,
    spec: ComputerSpec,
}

impl DurableObject for Computer {
    fn new(state: State, env: Env) -> Self {
        let sql = state.storage().sql();
        for statement in SCHEMA.iter().chain(grade_sql::SCHEMA) {
            if let Err(err) = sql.exec(statement, None) {
                worker::console_error!("computer_do schema: {err}");
            }
        }
        Self {
            env,
            sql,
            owned: RefCell::new(None),
            head: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let request_id = bindings::request_id_of(&req, "computer-do");
        let result = self.handle(&mut req).await;
        Ok(result.unwrap_or_else(|err| {
            if let ApiError::Internal(detail) = &err {
                worker::console_error!("computer_do [{request_id}]: {detail}");
            }
            http::error_response(&err, &request_id)
        }))
    }
}

// Rows as stored.
#[derive(Deserialize)]
struct FileRow {
    path: String,
    kind: String,
    state: Option<String>,
    description: Option<String>,
    depends_on: Option<String>,
    owner: Option<String>,
    content: String,
}

#[derive(Deserialize)]
struct WriteRow {
    path: String,
    content: String,
}

#[derive(Deserialize)]
struct ReceiptRow {
    seq: f64,
    ms: f64,
    ts: String,
    kind: String,
    payload: String,
    hash: String,
    prev_hash: String,
}

impl ReceiptRow {
    fn into_receipt(self) -> Result<Receipt, ApiError> {
        Ok(Receipt {
            seq: self.seq as u64,
            ts: self.ts,
            ms: self.ms as i64,
            kind: self.kind,
            payload: serde_json::from_str(&self.payload)?,
            hash: self.hash,
            prev_hash: self.prev_hash,
        })
    }
}

#[derive(Deserialize)]
struct MetaRow {
    v: String,
}

#[derive(Deserialize)]
struct CountRow {
    n: f64,
}

fn opt(value: &Option<String>) -> SqlStorageValue {
    match value {
        Some(s) => s.as_str().into(),
        None => SqlStorageValue::Null,
    }
}

impl Computer {
    async fn handle(&self, req: &mut Request) -> Result<Response, ApiError> {
        if req.method() != Method::Post || http::path(req) != "/call" {
            return Err(ApiError::NotFound);
        }
        let account = bindings::account_of(req)?;
        let call: ComputerCall = serde_json::from_slice(&req.bytes().await?)
            .map_err(|e| ApiError::Internal(format!("bad computer call: {e}")))?;
        if let ComputerCall::Create(body) = call {
            return self.create(&account, body).await;
        }
        let owned = self.owned(&account)?;
        let (id, spec) = (&owned.id, &owned.spec);
        match call {
            ComputerCall::Create(_) => Err(ApiError::Internal("create handled above".into())),
            ComputerCall::Files => self.files(),
            ComputerCall::Read(body) => self.read(body),
            ComputerCall::Write(body) => self.write(body),
            ComputerCall::Ask(body) => self.ask(spec, body).await,
            ComputerCall::Submit(body) => self.submit(spec, body),
            ComputerCall::Receipts => http::json(200, &json!({ "receipts": self.receipts()? })),
            ComputerCall::Grade => self.grade(spec).await,
            ComputerCall::Spec => self.spec_view(id),
            ComputerCall::Reset => self.reset(id),
        }
    }

    fn meta(&self, key: &str) -> Result<Option<String>, ApiError> {
        let rows: Vec<MetaRow> = self
            .sql
            .exec("SELECT v FROM meta WHERE k = ?", vec![key.into()])?
            .to_array()?;
        Ok(rows.into_iter().next().map(|r| r.v))
    }

    /// The computer's id and spec, if it exists and belongs to `account`;
    /// otherwise 404 as if it did not exist.
    fn owned(&self, account: &str) -> Result<Rc<Owned>, ApiError> {
        let cached = self.owned.borrow().clone();
        let owned = match cached {
            Some(owned) => owned,
            None => {
                let Some(owner) = self.meta("account")? else {
                    return Err(ApiError::ComputerNotFound);
                };
                let id = self.meta("id")?.unwrap_or_default();
                let text = self
                    .meta("spec")?
                    .ok_or_else(|| ApiError::Internal("computer without a spec".into()))?;
                let value: Value = serde_json::from_str(&text)?;
                let spec = spec::parse(&value)
                    .map_err(|e| ApiError::Internal(format!("stored spec: {e}")))?;
                let owned = Rc::new(Owned {
                    account: owner,
                    id,
                    spec,
                });
                *self.owned.borrow_mut() = Some(owned.clone());
                owned
            }
        };
        if owned.account != account {
            return Err(ApiError::ComputerNotFound);
        }
        Ok(owned)
    }

    fn created_response(id: &str, status: u16) -> Result<Response, ApiError> {
        http::json(
            status,
            &json!({ "id": id, "baseUrl": format!("/api/c/{id}") }),
        )
    }

    /// Materializes the spec once: 201 the first time, 200 after.
    async fn create(&self, account: &str, body: call::Create) -> Result<Response, ApiError> {
        if let Some(owner) = self.meta("account")? {
            return if owner == account {
                Self::created_response(&body.id, 200)
            } else {
                Err(ApiError::Internal(
                    "computer id collision across accounts".into(),
                ))
            };
        }
        let parsed = spec::parse(&body.spec)?;
        let mut model_cfg = Config::from_env(&self.env).model;
        let mut materialized: Vec<(String, String, &'static str)> = Vec::new();
        for index in spec::materialization_order(&parsed.filesystem)? {
            let file = &parsed.filesystem[index];
            let (content, source) = match &file.content {
                Some(content) => (content.clone(), "spec"),
                None => {
                    let deps = file
                        .depends_on
                        .iter()
                        .filter_map(|d| {
                            materialized
                                .iter()
                                .find(|(p, _, _)| p == d)
                                .map(|(p, c, _)| (p.as_str(), c.as_str()))
                        })
                        .collect();
                    let to_write = FileToWrite {
                        role: &parsed.role,
                        path: &file.path,
                        kind: &file.kind,
                        description: file.description.as_deref(),
                        deps,
                    };
                    generate_file(&mut model_cfg, &to_write).await
                }
            };
            materialized.push((file.path.clone(), content, source));
        }
        let mut private = Vec::new();
        for collaborator in &parsed.collaborators {
            for file in &collaborator.private_files {
                let (content, source) = match &file.content {
                    Some(content) => (content.clone(), "spec"),
                    None => {
                        let to_write = FileToWrite {
                            role: &collaborator.role,
                            path: &file.path,
                            kind: &file.kind,
                            description: file.description.as_deref(),
                            deps: vec![],
                        };
                        generate_file(&mut model_cfg, &to_write).await
                    }
                };
                private.push((collaborator.id.clone(), file, content, source));
            }
        }

        // A concurrent create of the same spec may have finished meanwhile.
        if self.meta("account")?.is_some() {
            return Self::created_response(&body.id, 200);
        }
        let now = time::now_ms();
        // What the log's first receipt says of the materialization.
        let mut sources = std::collections::BTreeMap::<&str, u64>::new();
        for source in materialized
            .iter()
            .map(|(_, _, s)| *s)
            .chain(private.iter().map(|(_, _, _, s)| *s))
        {
            *sources.entry(source).or_default() += 1;
        }
        let init = json!({
            "files": parsed.filesystem.len(),
            "privateFiles": private.len(),
            "sources": sources,
        });
        for (ord, file) in parsed.filesystem.iter().enumerate() {
            let (content, source) = materialized
                .iter()
                .find(|(p, _, _)| *p == file.path)
                .map(|(_, c, s)| (c.clone(), *s))
                .unwrap_or_default();
            let depends_on = (!file.depends_on.is_empty())
                .then(|| serde_json::to_string(&file.depends_on))
                .transpose()?;
            self.sql.exec(
                "INSERT INTO files (path, ord, kind, state, description, depends_on, owner, content, source) \
                 VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                vec![
                    file.path.as_str().into(),
                    (ord as i64).into(),
                    file.kind.as_str().into(),
                    opt(&file.state),
                    opt(&file.description),
                    opt(&depends_on),
                    content.into(),
                    source.into(),
                ],
            )?;
        }
        let base = parsed.filesystem.len();
        for (i, (owner, file, content, source)) in private.into_iter().enumerate() {
            self.sql.exec(
                "INSERT INTO files (path, ord, kind, state, description, depends_on, owner, content, source) \
                 VALUES (?, ?, ?, NULL, ?, NULL, ?, ?, ?)",
                vec![
                    file.path.as_str().into(),
                    ((base + i) as i64).into(),
                    file.kind.as_str().into(),
                    opt(&file.description),
                    owner.into(),
                    content.into(),
                    source.into(),
                ],
            )?;
        }
        for (k, v) in [
            ("id", body.id.clone()),
            ("spec", canonical::to_string(&body.spec)),
            ("createdMs", now.to_string()),
            ("account", account.to_string()),
            // A reset starts the new log with the same receipt.
            ("init", canonical::to_string(&init)),
            // The log is empty, and so is its summary: current from the start.
            (grade_sql::VERSION_KEY, grade_sql::VERSION.to_string()),
        ] {
            self.sql.exec(
                "INSERT INTO meta (k, v) VALUES (?, ?)",
                vec![k.into(), v.into()],
            )?;
        }
        self.append("init", init)?;
        Self::created_response(&body.id, 201)
    }

    fn revealed(&self) -> Result<Vec<String>, ApiError> {
        #[derive(Deserialize)]
        struct Who {
            who: String,
        }
        let rows: Vec<Who> = self.sql.exec("SELECT who FROM reveals", None)?.to_array()?;
        Ok(rows.into_iter().map(|r| r.who).collect())
    }

    /// Spec files the agent may see: all public ones, and private ones whose
    /// owner has been asked.
    fn visible_files(&self) -> Result<Vec<FileRow>, ApiError> {
        let revealed = self.revealed()?;
        let rows: Vec<FileRow> = self
            .sql
            .exec(
                "SELECT path, kind, state, description, depends_on, owner, content FROM files ORDER BY ord",
                None,
            )?
            .to_array()?;
        Ok(rows
            .into_iter()
            .filter(|f| f.owner.as_ref().is_none_or(|o| revealed.contains(o)))
            .collect())
    }

    fn writes(&self) -> Result<Vec<WriteRow>, ApiError> {
        Ok(self
            .sql
            .exec("SELECT path, content FROM writes", None)?
            .to_array()?)
    }

    fn files(&self) -> Result<Response, ApiError> {
        let writes = self.writes()?;
        let mut listed: Vec<Value> = Vec::new();
        for file in self.visible_files()? {
            if writes.iter().any(|w| w.path == file.path) {
                continue; // the agent's write replaces it
            }
            let mut entry = json!({"path": file.path, "kind": file.kind});
            if let Some(state) = file.state {
                entry["state"] = json!(state);
            }
            if let Some(description) = file.description {
                entry["description"] = json!(description);
            }
            if let Some(deps) = file.depends_on {
                entry["dependsOn"] = serde_json::from_str(&deps)?;
            }
            listed.push(entry);
        }
        for write in writes {
            listed.push(json!({"path": write.path, "kind": "agent-write"}));
        }
        listed.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
        http::json(200, &json!({ "files": listed }))
    }

    fn read(&self, body: call::Read) -> Result<Response, ApiError> {
        let found = match self.writes()?.into_iter().find(|w| w.path == body.path) {
            Some(write) => Some(("agent-write".to_string(), write.content)),
            None => self
                .visible_files()?
                .into_iter()
                .find(|f| f.path == body.path)
                .map(|f| (f.kind, f.content)),
        };
        let (kind, content) = found.ok_or(ApiError::FileNotFound)?;
        self.append("read", json!({ "path": body.path }))?;
        http::json(
            200,
            &json!({"path": body.path, "kind": kind, "content": content}),
        )
    }

    fn write(&self, body: call::Write) -> Result<Response, ApiError> {
        let bytes = body.content.len();
        #[derive(Deserialize)]
        struct Held {
            files: f64,
            bytes: f64,
            replaced: Option<f64>,
        }
        let held: Vec<Held> = self
            .sql
            .exec(
                "SELECT COUNT(*) AS files, COALESCE(SUM(LENGTH(CAST(content AS BLOB))), 0) AS bytes, \
                 (SELECT LENGTH(CAST(content AS BLOB)) FROM writes WHERE path = ?) AS replaced \
                 FROM writes",
                vec![body.path.as_str().into()],
            )?
            .to_array()?;
        if let Some(held) = held.first() {
            crate::computers::spec::check_agent_write(
                held.files as usize,
                held.bytes as u64,
                held.replaced.map(|b| b as u64),
                bytes as u64,
            )
            .map_err(ApiError::ComputerFull)?;
        }
        let sha256 = canonical::sha256_hex(body.content.as_bytes());
        self.sql.exec(
            "INSERT INTO writes (path, content, ms) VALUES (?, ?, ?) \
             ON CONFLICT(path) DO UPDATE SET content = excluded.content, ms = excluded.ms",
            vec![
                body.path.as_str().into(),
                body.content.into(),
                time::now_ms().into(),
            ],
        )?;
        self.append(
            "write",
            json!({"path": body.path, "bytes": bytes, "sha256": sha256}),
        )?;
        http::json(200, &json!({"path": body.path, "written": bytes}))
    }

    async fn ask(&self, spec: &ComputerSpec, body: call::Ask) -> Result<Response, ApiError> {
        let collaborator = spec
            .collaborators
            .iter()
            .find(|c| c.id == body.who)
            .ok_or(ApiError::CollaboratorNotFound)?;
        let first_ask = !self.revealed()?.contains(&collaborator.id);
        let to_reveal: Vec<FileRow> = if first_ask {
            let rows: Vec<FileRow> = self
                .sql
                .exec(
                    "SELECT path, kind, state, description, depends_on, owner, content FROM files \
                     WHERE owner = ? ORDER BY ord",
                    vec![collaborator.id.as_str().into()],
                )?
                .to_array()?;
            rows
        } else {
            Vec::new()
        };
        let revealed: Vec<String> = to_reveal.iter().map(|f| f.path.clone()).collect();
        let shared: Vec<(&str, &str)> = to_reveal
            .iter()
            .map(|f| (f.path.as_str(), f.content.as_str()))
            .collect();
        let cfg = Config::from_env(&self.env).model;
        let prompt = generate::reply_prompt(collaborator, &body.message, &shared);
        let (reply, source) = match model::try_chat(cfg.as_ref(), &prompt, "reply").await {
            Some(text) => (text, "model"),
            None => (
                generate::template_reply(collaborator, &body.message, &revealed),
                "template",
            ),
        };
        // Another ask may have revealed these files while the model answered.
        let revealed = if first_ask && !self.revealed()?.contains(&collaborator.id) {
            self.sql.exec(
                "INSERT INTO reveals (who, ms) VALUES (?, ?)",
                vec![collaborator.id.as_str().into(), time::now_ms().into()],
            )?;
            revealed
        } else {
            Vec::new()
        };
        self.append(
            "ask",
            json!({
                "who": collaborator.id,
                "message": body.message,
                "reply": reply,
                "revealed": revealed,
                "source": source,
            }),
        )?;
        let mut out = json!({
            "from": collaborator.id,
            "role": collaborator.role,
            "reply": reply,
            "revealed": revealed,
        });
        if let Some(style) = &collaborator.style {
            out["style"] = json!(style);
        }
        http::json(200, &out)
    }

    fn submit(&self, spec: &ComputerSpec, body: call::Submit) -> Result<Response, ApiError> {
        if !spec.objectives.iter().any(|o| o.id == body.objective) {
            return Err(ApiError::ObjectiveNotFound);
        }
        let mut payload = json!({ "objective": body.objective });
        if let Some(decision) = body.decision {
            payload["decision"] = json!(decision);
        }
        if let Some(paths) = body.paths {
            payload["paths"] = json!(paths);
        }
        if let Some(notes) = body.notes {
            payload["notes"] = json!(notes);
        }
        self.append("submit", payload)?;
        http::json(200, &json!({"objective": body.objective, "accepted": true}))
    }

    fn receipts(&self) -> Result<Vec<Receipt>, ApiError> {
        let rows: Vec<ReceiptRow> = self
            .sql
            .exec(
                "SELECT seq, ms, ts, kind, payload, hash, prev_hash FROM receipts ORDER BY seq",
                None,
            )?
            .to_array()?;
        rows.into_iter().map(ReceiptRow::into_receipt).collect()
    }

    /// The last `limit` receipts other than grades, in order.
    fn recent_receipts(&self, limit: u32) -> Result<Vec<Receipt>, ApiError> {
        let rows: Vec<ReceiptRow> = self
            .sql
            .exec(
                "SELECT seq, ms, ts, kind, payload, hash, prev_hash FROM receipts \
                 WHERE kind <> 'grade' ORDER BY seq DESC LIMIT ?",
                vec![i64::from(limit).into()],
            )?
            .to_array()?;
        rows.into_iter()
            .rev()
            .map(ReceiptRow::into_receipt)
            .collect()
    }

    /// Appends one receipt after the last one, and records what it tells
    /// the grader in the summary (synchronously: no other request can slip
    /// in between reading the head and writing either).
    fn append(&self, kind: &str, payload: Value) -> Result<Receipt, ApiError> {
        let cached = self.head.borrow().clone();
        let head = match cached {
            Some(head) => Some(head),
            None => {
                let rows: Vec<ReceiptRow> = self
                    .sql
                    .exec(
                        "SELECT seq, ms, ts, kind, payload, hash, prev_hash FROM receipts ORDER BY seq DESC LIMIT 1",
                        None,
                    )?
                    .to_array()?;
                rows.into_iter()
                    .next()
                    .map(|r| (r.hash, r.seq as u64, r.ms as i64))
            }
        };
        let prev = head
            .as_ref()
            .map(|(hash, seq, ms)| (hash.as_str(), *seq, *ms));
        let receipt = receipts::next_receipt(prev, time::now_ms(), kind, payload);
        self.sql.exec(
            "INSERT INTO receipts (seq, ms, ts, kind, payload, hash, prev_hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
            vec![
                (receipt.seq as i64).into(),
                receipt.ms.into(),
                receipt.ts.as_str().into(),
                receipt.kind.as_str().into(),
                canonical::to_string(&receipt.payload).into(),
                receipt.hash.as_str().into(),
                receipt.prev_hash.as_str().into(),
            ],
        )?;
        *self.head.borrow_mut() = Some((receipt.hash.clone(), receipt.seq, receipt.ms));
        if let Some(fact) = Fact::of(&receipt) {
            storage::exec(&self.sql, &grade_sql::record(fact))?;
        }
        Ok(receipt)
    }

    /// The part of the grading summary that `rubric` looks up: a handful
    /// of primary-key lookups, however long the log. A computer created
    /// before the summary existed rebuilds it from its log first, once.
    fn rubric_summary(&self, rubric: &[Criterion]) -> Result<Summary, ApiError> {
        let version = self.meta(grade_sql::VERSION_KEY)?;
        if !grade_sql::is_current(version.as_deref()) {
            let whole = Summary::from_log(&self.receipts()?);
            storage::exec_plan(&self.sql, &grade_sql::rebuild(&whole))?;
        }
        match grade_sql::lookup(&Wanted::of(rubric)) {
            None => Ok(Summary::default()),
            Some(lookup) => {
                let rows: Vec<FactRow> = storage::rows(&self.sql, &lookup)?;
                Ok(grade_sql::summary_of(&rows))
            }
        }
    }

    async fn grade(&self, spec: &ComputerSpec) -> Result<Response, ApiError> {
        let mut result = grade::grade_summary(&spec.rubric, &self.rubric_summary(&spec.rubric)?);
        if let Some(cfg) = Config::from_env(&self.env).model {
            let unjudged: Vec<&Criterion> = spec
                .rubric
                .iter()
                .filter(|c| c.must_event.is_none())
                .take(MAX_JUDGED)
                .collect();
            if !unjudged.is_empty() {
                let actions = summarize(&self.recent_receipts(JUDGE_RECEIPTS)?);
                for criterion in unjudged {
                    let prompt = generate::judge_prompt(&criterion.must, &actions);
                    let verdict = model::try_chat(Some(&cfg), &prompt, "judge")
                        .await
                        .and_then(|text| generate::parse_verdict(&text));
                    match verdict {
                        Some((pass, reason)) => result.apply_judgment(&criterion.id, pass, reason),
                        None => break, // the model is down: the rest stay ungraded
                    }
                }
            }
        }
        self.append(
            "grade",
            json!({
                "score": result.score,
                "max": result.max,
                "totalWeight": result.total_weight,
                "passed": result.passed,
                "failed": result.failed,
                "ungraded": result.ungraded,
                "judged": result.judged,
            }),
        )?;
        http::json(200, &result)
    }

    fn spec_view(&self, id: &str) -> Result<Response, ApiError> {
        let text = self.meta("spec")?.unwrap_or_else(|| "null".into());
        let created_ms: i64 = self
            .meta("createdMs")?
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        let spec: Value = serde_json::from_str(&text)?;
        http::json(
            200,
            &json!({"id": id, "createdAt": time::rfc3339(created_ms), "spec": spec}),
        )
    }

    fn reset(&self, id: &str) -> Result<Response, ApiError> {
        let cleared: Vec<CountRow> = self
            .sql
            .exec("SELECT COUNT(*) AS n FROM receipts", None)?
            .to_array()?;
        for table in ["receipts", "writes", "reveals"] {
            self.sql.exec(&format!("DELETE FROM {table}"), None)?;
        }
        storage::exec_plan(&self.sql, &grade_sql::clear())?;
        *self.head.borrow_mut() = None;
        if let Some(init) = self.meta("init")? {
            self.append("init", serde_json::from_str(&init)?)?;
        }
        let cleared = cleared.first().map(|r| r.n as u64).unwrap_or(0);
        http::json(
            200,
            &json!({"id": id, "reset": true, "clearedReceipts": cleared}),
        )
    }
}

/// A file's content from the model, else the template. After one model
/// failure the rest of this materialization uses templates, so a dead
/// endpoint costs one timeout, not one per file.
async fn generate_file(
    cfg: &mut Option<ModelConfig>,
    file: &FileToWrite<'_>,
) -> (String, &'static str) {
    let prompt = generate::file_prompt(file);
    match model::try_chat(cfg.as_ref(), &prompt, "file").await {
        Some(text) => (text, "model"),
        None => {
            *cfg = None;
            (generate::template_file(file), "template")
        }
    }
}

/// One line per receipt, for the judge.
fn summarize(receipts: &[Receipt]) -> String {
    receipts
        .iter()
        .map(|r| {
            let payload = canonical::to_string(&r.payload);
            let short: String = payload.chars().take(300).collect();
            format!("{} {} {}", r.seq, r.kind, short)
        })
        .collect::<Vec<_>>()
        .join("\n")
}
