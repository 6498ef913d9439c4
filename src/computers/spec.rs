//! `ComputerSpec` (pure): parsing with precise validation messages, the
//! content-derived computer id, and the `dependsOn` materialization order.
//!
//! Validation reads the JSON value by hand (not serde) so every message names
//! the failing field, e.g. `filesystem[3].dependsOn[0]: "x.md" is not a file
//! of the spec`. Path errors are 400 `bad_path`, everything else 400 `bad_spec`.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::api::error::ApiError;
use crate::common::canonical;
use crate::common::paths;

/// A spec body larger than this is 413 `spec_too_large`.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;
/// Files in a spec: `filesystem` plus every collaborator's `privateFiles`.
pub const MAX_FILES: usize = 200;
/// Longest id (collaborator, objective, rubric) or short text field.
pub const MAX_ID_CHARS: usize = 128;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ComputerSpec {
    pub name: Option<String>,
    pub run_id: Option<String>,
    /// `profile.role`; the rest of `profile` stays in the stored JSON.
    pub role: String,
    pub filesystem: Vec<FileSpec>,
    pub collaborators: Vec<Collaborator>,
    pub objectives: Vec<Objective>,
    pub rubric: Vec<Criterion>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileSpec {
    pub path: String,
    pub kind: String,
    pub state: Option<String>,
    pub description: Option<String>,
    pub content: Option<String>,
    pub depends_on: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Collaborator {
    pub id: String,
    pub role: String,
    pub style: Option<String>,
    pub focus: Option<String>,
    pub private_files: Vec<PrivateFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrivateFile {
    pub path: String,
    pub kind: String,
    pub content: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Objective {
    pub id: String,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Criterion {
    pub id: String,
    pub weight: f64,
    pub must: String,
    pub must_event: Option<MustEvent>,
}

/// What the receipt log must show for a criterion to pass (see `grade`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum MustEvent {
    Read {
        path: String,
    },
    Wrote {
        path: String,
    },
    ReadBefore {
        before: String,
        after: String,
    },
    Submitted {
        objective: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        decision: Option<String>,
    },
    Asked {
        who: String,
    },
    #[serde(rename_all = "camelCase")]
    AskedOnly {
        who: String,
        not_who: String,
    },
}

pub const MUST_EVENT_TYPES: &[&str] = &[
    "read",
    "wrote",
    "readBefore",
    "submitted",
    "asked",
    "askedOnly",
];

fn bad(field: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::BadSpec(format!("{field}: {why}"))
}

fn object<'a>(value: &'a Value, field: &str) -> Result<&'a Map<String, Value>, ApiError> {
    value
        .as_object()
        .ok_or_else(|| bad(field, "must be an object"))
}

fn array<'a>(map: &'a Map<String, Value>, key: &str, field: &str) -> Result<&'a [Value], ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Err(bad(field, "is required (an array)")),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(bad(field, "must be an array")),
    }
}

fn opt_array<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<&'a [Value], ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(bad(field, "must be an array")),
    }
}

fn string(map: &Map<String, Value>, key: &str, field: &str) -> Result<String, ApiError> {
    match map.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(bad(field, "is required (a string)")),
        Some(_) => Err(bad(field, "must be a string")),
    }
}

fn opt_string(
    map: &Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<String>, ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(field, "must be a string")),
    }
}

/// A non-empty id of at most `MAX_ID_CHARS` characters.
fn id(map: &Map<String, Value>, key: &str, field: &str) -> Result<String, ApiError> {
    let value = string(map, key, field)?;
    if value.trim().is_empty() {
        return Err(bad(field, "must not be empty"));
    }
    if value.chars().count() > MAX_ID_CHARS {
        return Err(bad(
            field,
            format!("must be at most {MAX_ID_CHARS} characters"),
        ));
    }
    Ok(value)
}

fn path(map: &Map<String, Value>, key: &str, field: &str) -> Result<String, ApiError> {
    let value = string(map, key, field)?;
    paths::check_path(field, &value)?;
    Ok(value)
}

/// Parses and validates a spec. The first problem found is the error.
/// Files an agent may write into one computer (rewrites of a path it
/// already wrote do not count), and their total size.
pub const MAX_AGENT_FILES: usize = 500;
pub const MAX_AGENT_BYTES: u64 = 32 * 1024 * 1024;

/// Whether a write fits: `files` and `bytes` are what the agent's writes
/// hold now, `replaced` the size of the same path's earlier write, if any.
/// `Err` says why not (413 `computer_full`).
pub fn check_agent_write(
    files: usize,
    bytes: u64,
    replaced: Option<u64>,
    new_bytes: u64,
) -> Result<(), String> {
    let files_after = files + usize::from(replaced.is_none());
    let bytes_after = bytes - replaced.unwrap_or(0).min(bytes) + new_bytes;
    if files_after > MAX_AGENT_FILES {
        return Err(format!(
            "this computer already holds {MAX_AGENT_FILES} files written by the agent; rewrite one of them instead"
        ));
    }
    if bytes_after > MAX_AGENT_BYTES {
        return Err(format!(
            "the agent's files in this computer would exceed {} MiB",
            MAX_AGENT_BYTES / (1024 * 1024)
        ));
    }
    Ok(())
}

pub fn parse(value: &Value) -> Result<ComputerSpec, ApiError> {
    let root = value
        .as_object()
        .ok_or_else(|| ApiError::BadSpec("body: the spec must be a JSON object".into()))?;
    let name = opt_string(root, "name", "name")?;
    let run_id = opt_string(root, "runId", "runId")?;
    let profile = match root.get("profile") {
        None | Some(Value::Null) => return Err(bad("profile", "is required (an object)")),
        Some(p) => object(p, "profile")?,
    };
    let role = string(profile, "role", "profile.role")?;

    // The four arrays must all be present before anything else is judged.
    let fs_items = array(root, "filesystem", "filesystem")?;
    let collab_items = array(root, "collaborators", "collaborators")?;
    let objective_items = array(root, "objectives", "objectives")?;
    let rubric_items = array(root, "rubric", "rubric")?;

    let private_count: usize = collab_items
        .iter()
        .filter_map(|c| c.get("privateFiles").and_then(Value::as_array))
        .map(Vec::len)
        .sum();
    if fs_items.len() + private_count > MAX_FILES {
        return Err(bad(
            "filesystem",
            format!(
                "at most {MAX_FILES} files (filesystem plus privateFiles), got {}",
                fs_items.len() + private_count
            ),
        ));
    }

    let mut all_paths: HashSet<String> = HashSet::new();
    let mut filesystem = Vec::with_capacity(fs_items.len());
    for (i, item) in fs_items.iter().enumerate() {
        let f = format!("filesystem[{i}]");
        let map = object(item, &f)?;
        let file_path = path(map, "path", &format!("{f}.path"))?;
        if !all_paths.insert(file_path.clone()) {
            return Err(bad(
                &format!("{f}.path"),
                format!("duplicate path {file_path:?}"),
            ));
        }
        let depends_on = opt_array(map, "dependsOn", &format!("{f}.dependsOn"))?
            .iter()
            .enumerate()
            .map(|(j, d)| {
                d.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(&format!("{f}.dependsOn[{j}]"), "must be a string"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        filesystem.push(FileSpec {
            path: file_path,
            kind: string(map, "kind", &format!("{f}.kind"))?,
            state: opt_string(map, "state", &format!("{f}.state"))?,
            description: opt_string(map, "description", &format!("{f}.description"))?,
            content: opt_string(map, "content", &format!("{f}.content"))?,
            depends_on,
        });
    }

    let mut collaborator_ids = HashSet::new();
    let mut collaborators = Vec::with_capacity(collab_items.len());
    for (i, item) in collab_items.iter().enumerate() {
        let f = format!("collaborators[{i}]");
        let map = object(item, &f)?;
        let cid = id(map, "id", &format!("{f}.id"))?;
        if !collaborator_ids.insert(cid.clone()) {
            return Err(bad(
                &format!("{f}.id"),
                format!("duplicate collaborator id {cid:?}"),
            ));
        }
        let mut private_files = Vec::new();
        for (j, pf) in opt_array(map, "privateFiles", &format!("{f}.privateFiles"))?
            .iter()
            .enumerate()
        {
            let pf_field = format!("{f}.privateFiles[{j}]");
            let pf_map = object(pf, &pf_field)?;
            let pf_path = path(pf_map, "path", &format!("{pf_field}.path"))?;
            if !all_paths.insert(pf_path.clone()) {
                return Err(bad(
                    &format!("{pf_field}.path"),
                    format!("duplicate path {pf_path:?}"),
                ));
            }
            private_files.push(PrivateFile {
                path: pf_path,
                kind: string(pf_map, "kind", &format!("{pf_field}.kind"))?,
                content: opt_string(pf_map, "content", &format!("{pf_field}.content"))?,
                description: opt_string(pf_map, "description", &format!("{pf_field}.description"))?,
            });
        }
        collaborators.push(Collaborator {
            id: cid,
            role: string(map, "role", &format!("{f}.role"))?,
            style: opt_string(map, "style", &format!("{f}.style"))?,
            focus: opt_string(map, "focus", &format!("{f}.focus"))?,
            private_files,
        });
    }

    let mut objective_ids = HashSet::new();
    let mut objectives = Vec::with_capacity(objective_items.len());
    for (i, item) in objective_items.iter().enumerate() {
        let f = format!("objectives[{i}]");
        let map = object(item, &f)?;
        let oid = id(map, "id", &format!("{f}.id"))?;
        if !objective_ids.insert(oid.clone()) {
            return Err(bad(
                &format!("{f}.id"),
                format!("duplicate objective id {oid:?}"),
            ));
        }
        objectives.push(Objective {
            id: oid,
            title: string(map, "title", &format!("{f}.title"))?,
        });
    }

    let refs = References {
        paths: &all_paths,
        collaborators: &collaborator_ids,
        objectives: &objective_ids,
    };
    let mut rubric_ids = HashSet::new();
    let mut rubric = Vec::with_capacity(rubric_items.len());
    for (i, item) in rubric_items.iter().enumerate() {
        let f = format!("rubric[{i}]");
        let map = object(item, &f)?;
        let rid = id(map, "id", &format!("{f}.id"))?;
        if !rubric_ids.insert(rid.clone()) {
            return Err(bad(
                &format!("{f}.id"),
                format!("duplicate rubric id {rid:?}"),
            ));
        }
        let weight = match map.get("weight") {
            None | Some(Value::Null) => 1.0,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(w) if w.is_finite() && w >= 0.0 => w,
                _ => return Err(bad(&format!("{f}.weight"), "must be a finite number >= 0")),
            },
            Some(_) => return Err(bad(&format!("{f}.weight"), "must be a number")),
        };
        let must_event = match map.get("mustEvent") {
            None | Some(Value::Null) => None,
            Some(ev) => Some(must_event(ev, &format!("{f}.mustEvent"), &refs)?),
        };
        rubric.push(Criterion {
            id: rid,
            weight,
            must: string(map, "must", &format!("{f}.must"))?,
            must_event,
        });
    }

    let spec = ComputerSpec {
        name,
        run_id,
        role,
        filesystem,
        collaborators,
        objectives,
        rubric,
    };
    materialization_order(&spec.filesystem)?;
    Ok(spec)
}

struct References<'a> {
    paths: &'a HashSet<String>,
    collaborators: &'a HashSet<String>,
    objectives: &'a HashSet<String>,
}

impl References<'_> {
    fn file(&self, map: &Map<String, Value>, key: &str, f: &str) -> Result<String, ApiError> {
        let field = format!("{f}.{key}");
        let p = path(map, key, &field)?;
        if !self.paths.contains(&p) {
            return Err(bad(&field, format!("{p:?} is not a file of the spec")));
        }
        Ok(p)
    }
    fn collaborator(
        &self,
        map: &Map<String, Value>,
        key: &str,
        f: &str,
    ) -> Result<String, ApiError> {
        let field = format!("{f}.{key}");
        let who = string(map, key, &field)?;
        if !self.collaborators.contains(&who) {
            return Err(bad(
                &field,
                format!("{who:?} is not a collaborator of the spec"),
            ));
        }
        Ok(who)
    }
}

/// `{type, ...}` with every reference checked. `wrote.path` only has to be a
/// valid path: the agent creates that file, so the spec need not list it.
fn must_event(value: &Value, f: &str, refs: &References) -> Result<MustEvent, ApiError> {
    let map = object(value, f)?;
    let kind = string(map, "type", &format!("{f}.type"))?;
    Ok(match kind.as_str() {
        "read" => MustEvent::Read {
            path: refs.file(map, "path", f)?,
        },
        "wrote" => MustEvent::Wrote {
            path: path(map, "path", &format!("{f}.path"))?,
        },
        "readBefore" => MustEvent::ReadBefore {
            before: refs.file(map, "before", f)?,
            after: refs.file(map, "after", f)?,
        },
        "submitted" => {
            let field = format!("{f}.objective");
            let objective = string(map, "objective", &field)?;
            if !refs.objectives.contains(&objective) {
                return Err(bad(
                    &field,
                    format!("{objective:?} is not an objective of the spec"),
                ));
            }
            MustEvent::Submitted {
                objective,
                decision: opt_string(map, "decision", &format!("{f}.decision"))?,
            }
        }
        "asked" => MustEvent::Asked {
            who: refs.collaborator(map, "who", f)?,
        },
        "askedOnly" => MustEvent::AskedOnly {
            who: refs.collaborator(map, "who", f)?,
            not_who: refs.collaborator(map, "notWho", f)?,
        },
        other => {
            return Err(bad(
                &format!("{f}.type"),
                format!(
                    "unknown type {other:?} (known: {})",
                    MUST_EVENT_TYPES.join(", ")
                ),
            ))
        }
    })
}

/// Indices of `files` in `dependsOn` order: every file after the files it
/// depends on, otherwise in spec order. Unknown names and cycles are errors.
pub fn materialization_order(files: &[FileSpec]) -> Result<Vec<usize>, ApiError> {
    let index: HashMap<&str, usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.path.as_str(), i))
        .collect();
    let mut deps: Vec<BTreeSet<usize>> = Vec::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        let mut set = BTreeSet::new();
        for (j, dep) in file.depends_on.iter().enumerate() {
            match index.get(dep.as_str()) {
                Some(&d) => {
                    set.insert(d);
                }
                None => {
                    return Err(bad(
                        &format!("filesystem[{i}].dependsOn[{j}]"),
                        format!("{dep:?} is not a file of the spec's filesystem"),
                    ))
                }
            }
        }
        deps.push(set);
    }
    let mut done = vec![false; files.len()];
    let mut order = Vec::with_capacity(files.len());
    while order.len() < files.len() {
        let ready = (0..files.len()).find(|&i| !done[i] && deps[i].iter().all(|&d| done[d]));
        match ready {
            Some(i) => {
                done[i] = true;
                order.push(i);
            }
            None => return Err(cycle_error(files, &deps, &done)),
        }
    }
    Ok(order)
}

/// Walks unfinished dependencies from the first stuck file until a file
/// repeats, and names that cycle.
fn cycle_error(files: &[FileSpec], deps: &[BTreeSet<usize>], done: &[bool]) -> ApiError {
    let Some(start) = (0..files.len()).find(|&i| !done[i]) else {
        return ApiError::BadSpec("filesystem: dependsOn has a cycle".into());
    };
    let mut walk = vec![start];
    let mut current = start;
    loop {
        let Some(&next) = deps[current].iter().find(|&&d| !done[d]) else {
            return ApiError::BadSpec("filesystem: dependsOn has a cycle".into());
        };
        if let Some(pos) = walk.iter().position(|&w| w == next) {
            let mut names: Vec<&str> = walk[pos..]
                .iter()
                .map(|&w| files[w].path.as_str())
                .collect();
            names.push(files[next].path.as_str());
            return bad(
                &format!("filesystem[{}].dependsOn", walk[pos]),
                format!("cycle {}", names.join(" -> ")),
            );
        }
        walk.push(next);
        current = next;
    }
}

/// The computer id: `cb_` + 32 hex of SHA-256 over the account and the
/// canonical spec, so one account's identical specs share one computer and
/// any changed byte of content (at any depth) gives another.
pub fn computer_id(account_id: &str, spec: &Value) -> String {
    let text = format!(
        "cloudbox.computer.v1\n{account_id}\n{}",
        canonical::to_string(spec)
    );
    format!("cb_{}", &canonical::sha256_hex(text.as_bytes())[..32])
}

/// Whether `id` has the shape `computer_id` produces (checked before any
/// Durable Object is touched).
pub fn is_computer_id(id: &str) -> bool {
    id.len() == 35
        && id.starts_with("cb_")
        && id[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "name": "triage",
            "profile": {"role": "support engineer", "seniority": "mid"},
            "filesystem": [
                {"path": "README.md", "kind": "doc", "content": "hello"},
                {"path": "logs/app.log", "kind": "log", "description": "errors", "dependsOn": ["README.md"]},
                {"path": "notes.md", "kind": "notes", "dependsOn": ["logs/app.log", "README.md"]}
            ],
            "collaborators": [
                {"id": "alice", "role": "SRE", "style": "terse", "focus": "latency",
                 "privateFiles": [{"path": "private/alice.md", "kind": "notes", "content": "secret"}]},
                {"id": "bob", "role": "PM"}
            ],
            "objectives": [{"id": "fix", "title": "Fix the outage"}],
            "rubric": [
                {"id": "r1", "must": "read the log", "mustEvent": {"type": "read", "path": "logs/app.log"}},
                {"id": "r2", "weight": 2, "must": "order", "mustEvent": {"type": "readBefore", "before": "README.md", "after": "private/alice.md"}},
                {"id": "r3", "must": "submit", "mustEvent": {"type": "submitted", "objective": "fix", "decision": "rollback"}},
                {"id": "r4", "must": "ask alice", "mustEvent": {"type": "asked", "who": "alice"}},
                {"id": "r5", "must": "not bob", "mustEvent": {"type": "askedOnly", "who": "alice", "notWho": "bob"}},
                {"id": "r6", "must": "write report", "mustEvent": {"type": "wrote", "path": "out/report.md"}},
                {"id": "r7", "weight": 0.5, "must": "be kind"}
            ]
        })
    }

    fn err_of(spec: &Value) -> (String, String) {
        let err = parse(spec).expect_err("should be invalid");
        (err.code().to_string(), err.message())
    }

    fn assert_bad(spec: Value, code: &str, needle: &str) {
        let (got_code, msg) = err_of(&spec);
        assert_eq!(got_code, code, "{msg}");
        assert!(msg.contains(needle), "{msg:?} should contain {needle:?}");
    }

    /// `spec` with the value at `pointer` set (an object key may be new).
    fn with(mut spec: Value, pointer: &str, value: Value) -> Value {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        match spec
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("{pointer}"))
        {
            Value::Object(map) => {
                map.insert(key.to_string(), value);
            }
            Value::Array(items) => items[key.parse::<usize>().unwrap()] = value,
            other => panic!("{pointer} in {other}"),
        }
        spec
    }

    fn without(mut spec: Value, key: &str) -> Value {
        spec.as_object_mut().unwrap().remove(key);
        spec
    }

    #[test]
    fn a_full_spec_parses() {
        let spec = parse(&base()).unwrap();
        assert_eq!(spec.role, "support engineer");
        assert_eq!(spec.filesystem.len(), 3);
        assert_eq!(
            spec.collaborators[0].private_files[0].path,
            "private/alice.md"
        );
        assert_eq!(spec.rubric[0].weight, 1.0);
        assert_eq!(spec.rubric[1].weight, 2.0);
        assert_eq!(spec.rubric[6].must_event, None);
        assert_eq!(
            spec.rubric[4].must_event,
            Some(MustEvent::AskedOnly {
                who: "alice".into(),
                not_who: "bob".into()
            })
        );
        assert_eq!(
            spec.rubric[2].must_event,
            Some(MustEvent::Submitted {
                objective: "fix".into(),
                decision: Some("rollback".into())
            })
        );
    }

    #[test]
    fn the_body_must_be_an_object() {
        for body in [json!([]), json!("x"), json!(1), Value::Null] {
            assert_bad(body, "bad_spec", "body");
        }
    }

    #[test]
    fn profile_role_must_be_a_string() {
        assert_bad(without(base(), "profile"), "bad_spec", "profile");
        assert_bad(
            with(base(), "/profile", json!("x")),
            "bad_spec",
            "profile: must be an object",
        );
        assert_bad(
            with(base(), "/profile", json!({})),
            "bad_spec",
            "profile.role",
        );
        assert_bad(
            with(base(), "/profile/role", json!(3)),
            "bad_spec",
            "profile.role: must be a string",
        );
    }

    #[test]
    fn the_four_arrays_are_required() {
        for key in ["filesystem", "collaborators", "objectives", "rubric"] {
            assert_bad(
                without(base(), key),
                "bad_spec",
                &format!("{key}: is required"),
            );
            assert_bad(
                with(base(), &format!("/{key}"), json!({})),
                "bad_spec",
                &format!("{key}: must be an array"),
            );
        }
        // Empty arrays are fine.
        let empty = json!({"profile": {"role": "r"}, "filesystem": [], "collaborators": [], "objectives": [], "rubric": []});
        assert!(parse(&empty).is_ok());
    }

    #[test]
    fn at_most_200_files_including_private_ones() {
        let files: Vec<Value> = (0..200)
            .map(|i| json!({"path": format!("f{i}"), "kind": "k"}))
            .collect();
        let spec = json!({"profile": {"role": "r"}, "filesystem": files, "collaborators": [], "objectives": [], "rubric": []});
        assert!(parse(&spec).is_ok());
        let mut over = spec.clone();
        over["filesystem"]
            .as_array_mut()
            .unwrap()
            .push(json!({"path": "one-more", "kind": "k"}));
        assert_bad(over, "bad_spec", "at most 200 files");
        let with_private = with(
            spec,
            "/collaborators",
            json!([{"id": "a", "role": "r", "privateFiles": [{"path": "p", "kind": "k"}]}]),
        );
        assert_bad(with_private, "bad_spec", "at most 200 files");
    }

    #[test]
    fn paths_are_unique_across_filesystem_and_private_files() {
        assert_bad(
            with(base(), "/filesystem/2/path", json!("README.md")),
            "bad_spec",
            "filesystem[2].path: duplicate path",
        );
        assert_bad(
            with(
                base(),
                "/collaborators/0/privateFiles/0/path",
                json!("notes.md"),
            ),
            "bad_spec",
            "collaborators[0].privateFiles[0].path: duplicate path",
        );
    }

    #[test]
    fn ids_are_unique() {
        assert_bad(
            with(base(), "/collaborators/1/id", json!("alice")),
            "bad_spec",
            "collaborators[1].id: duplicate",
        );
        let mut spec = base();
        spec["objectives"]
            .as_array_mut()
            .unwrap()
            .push(json!({"id": "fix", "title": "again"}));
        assert_bad(spec, "bad_spec", "objectives[1].id: duplicate");
        assert_bad(
            with(base(), "/rubric/3/id", json!("r1")),
            "bad_spec",
            "rubric[3].id: duplicate",
        );
        assert_bad(
            with(base(), "/objectives/0/id", json!("")),
            "bad_spec",
            "objectives[0].id: must not be empty",
        );
    }

    #[test]
    fn required_fields_of_items() {
        let mut spec = base();
        spec["filesystem"][0]
            .as_object_mut()
            .unwrap()
            .remove("kind");
        assert_bad(spec, "bad_spec", "filesystem[0].kind: is required");
        assert_bad(
            with(base(), "/collaborators/1/role", json!(null)),
            "bad_spec",
            "collaborators[1].role",
        );
        assert_bad(
            with(base(), "/objectives/0/title", json!(5)),
            "bad_spec",
            "objectives[0].title",
        );
        let mut spec = base();
        spec["rubric"][0].as_object_mut().unwrap().remove("must");
        assert_bad(spec, "bad_spec", "rubric[0].must");
        assert_bad(
            with(base(), "/filesystem/1", json!("x")),
            "bad_spec",
            "filesystem[1]: must be an object",
        );
        assert_bad(
            with(base(), "/filesystem/0/content", json!(1)),
            "bad_spec",
            "filesystem[0].content: must be a string",
        );
    }

    #[test]
    fn weights_are_non_negative_numbers() {
        assert_bad(
            with(base(), "/rubric/0/weight", json!(-1)),
            "bad_spec",
            "rubric[0].weight",
        );
        assert_bad(
            with(base(), "/rubric/0/weight", json!("2")),
            "bad_spec",
            "rubric[0].weight: must be a number",
        );
        assert_eq!(
            parse(&with(base(), "/rubric/0/weight", json!(0)))
                .unwrap()
                .rubric[0]
                .weight,
            0.0
        );
    }

    #[test]
    fn path_rules_answer_bad_path() {
        for bad_path in ["/abs", "a/../b", "a//b", "", "./x"] {
            assert_bad(
                with(base(), "/filesystem/0/path", json!(bad_path)),
                "bad_path",
                "filesystem[0].path",
            );
        }
        assert_bad(
            with(
                base(),
                "/collaborators/0/privateFiles/0/path",
                json!("../up"),
            ),
            "bad_path",
            "collaborators[0].privateFiles[0].path",
        );
        assert_bad(
            with(base(), "/rubric/5/mustEvent/path", json!("/etc/x")),
            "bad_path",
            "rubric[5].mustEvent.path",
        );
    }

    #[test]
    fn depends_on_must_name_files_of_the_spec() {
        assert_bad(
            with(
                base(),
                "/filesystem/2/dependsOn",
                json!(["README.md", "nope.md"]),
            ),
            "bad_spec",
            "filesystem[2].dependsOn[1]: \"nope.md\" is not a file",
        );
        // Private files are not dependencies: they are hidden.
        assert_bad(
            with(
                base(),
                "/filesystem/2/dependsOn",
                json!(["private/alice.md"]),
            ),
            "bad_spec",
            "filesystem[2].dependsOn[0]",
        );
        assert_bad(
            with(base(), "/filesystem/2/dependsOn", json!("README.md")),
            "bad_spec",
            "must be an array",
        );
        assert_bad(
            with(base(), "/filesystem/2/dependsOn", json!([1])),
            "bad_spec",
            "dependsOn[0]: must be a string",
        );
    }

    #[test]
    fn depends_on_cycles_are_named() {
        let cyc = with(base(), "/filesystem/0/dependsOn", json!(["notes.md"]));
        let (code, msg) = err_of(&cyc);
        assert_eq!(code, "bad_spec");
        assert!(msg.contains("cycle"), "{msg}");
        assert!(
            msg.contains("README.md") && msg.contains("notes.md"),
            "{msg}"
        );
        let selfdep = with(base(), "/filesystem/0/dependsOn", json!(["README.md"]));
        assert_bad(selfdep, "bad_spec", "cycle README.md -> README.md");
    }

    #[test]
    fn materialization_follows_depends_on() {
        let spec = json!({"profile": {"role": "r"}, "collaborators": [], "objectives": [], "rubric": [],
        "filesystem": [
            {"path": "c", "kind": "k", "dependsOn": ["b"]},
            {"path": "b", "kind": "k", "dependsOn": ["a"]},
            {"path": "a", "kind": "k"},
            {"path": "d", "kind": "k"}
        ]});
        let parsed = parse(&spec).unwrap();
        let order: Vec<&str> = materialization_order(&parsed.filesystem)
            .unwrap()
            .into_iter()
            .map(|i| parsed.filesystem[i].path.as_str())
            .collect();
        assert_eq!(order, vec!["a", "b", "c", "d"]);
    }

    #[test]
    fn must_event_types_and_references_are_checked() {
        assert_bad(
            with(base(), "/rubric/0/mustEvent/type", json!("typed")),
            "bad_spec",
            "rubric[0].mustEvent.type: unknown type",
        );
        assert_bad(
            with(base(), "/rubric/0/mustEvent", json!("read")),
            "bad_spec",
            "rubric[0].mustEvent: must be an object",
        );
        assert_bad(
            with(base(), "/rubric/0/mustEvent/path", json!("missing.md")),
            "bad_spec",
            "rubric[0].mustEvent.path: \"missing.md\" is not a file",
        );
        assert_bad(
            with(base(), "/rubric/1/mustEvent/after", json!("x.md")),
            "bad_spec",
            "rubric[1].mustEvent.after",
        );
        assert_bad(
            with(base(), "/rubric/1/mustEvent/before", json!("x.md")),
            "bad_spec",
            "rubric[1].mustEvent.before",
        );
        assert_bad(
            with(base(), "/rubric/2/mustEvent/objective", json!("nope")),
            "bad_spec",
            "rubric[2].mustEvent.objective",
        );
        assert_bad(
            with(base(), "/rubric/2/mustEvent/decision", json!(1)),
            "bad_spec",
            "rubric[2].mustEvent.decision",
        );
        assert_bad(
            with(base(), "/rubric/3/mustEvent/who", json!("carol")),
            "bad_spec",
            "rubric[3].mustEvent.who: \"carol\" is not a collaborator",
        );
        assert_bad(
            with(base(), "/rubric/4/mustEvent/notWho", json!("carol")),
            "bad_spec",
            "rubric[4].mustEvent.notWho",
        );
        // A wrote target need not exist in the spec (the agent creates it).
        assert!(parse(&with(
            base(),
            "/rubric/5/mustEvent/path",
            json!("new/file.txt")
        ))
        .is_ok());
        // A read of a private file is a valid reference.
        assert!(parse(&with(
            base(),
            "/rubric/0/mustEvent/path",
            json!("private/alice.md")
        ))
        .is_ok());
    }

    #[test]
    fn the_id_is_stable_across_key_order_and_changes_with_nested_content() {
        let a = base();
        let reordered: Value = serde_json::from_str(
            &serde_json::to_string(&a)
                .unwrap()
                .replace("\"name\":\"triage\",", ""),
        )
        .unwrap();
        // Same content, keys in another order.
        let mut b = Map::new();
        let obj = a.as_object().unwrap();
        let mut keys: Vec<&String> = obj.keys().collect();
        keys.reverse();
        for k in keys {
            b.insert(k.clone(), obj[k].clone());
        }
        let b = Value::Object(b);
        let text_b = r#"{"rubric":[],"objectives":[],"collaborators":[],"filesystem":[],"profile":{"x":1,"role":"r"}}"#;
        let text_a = r#"{"profile":{"role":"r","x":1},"filesystem":[],"collaborators":[],"objectives":[],"rubric":[]}"#;
        assert_eq!(
            computer_id("acct_1", &serde_json::from_str(text_a).unwrap()),
            computer_id("acct_1", &serde_json::from_str(text_b).unwrap())
        );
        assert_eq!(computer_id("acct_1", &a), computer_id("acct_1", &b));
        assert_ne!(computer_id("acct_1", &a), computer_id("acct_1", &reordered));
        assert_ne!(computer_id("acct_1", &a), computer_id("acct_2", &a));
        let nested = with(
            base(),
            "/collaborators/0/privateFiles/0/content",
            json!("secret!"),
        );
        assert_ne!(computer_id("acct_1", &a), computer_id("acct_1", &nested));
        let id = computer_id("acct_1", &a);
        assert!(is_computer_id(&id), "{id}");
        assert!(!is_computer_id("cb_XYZ"));
        assert!(!is_computer_id(&id.replace("cb_", "cx_")));
    }
    #[test]
    fn agent_writes_are_capped_in_count_and_bytes() {
        assert!(check_agent_write(0, 0, None, 10).is_ok());
        assert!(check_agent_write(MAX_AGENT_FILES - 1, 0, None, 10).is_ok());
        assert!(check_agent_write(MAX_AGENT_FILES, 0, None, 10).is_err());
        // A rewrite of a path already written does not add a file.
        assert!(check_agent_write(MAX_AGENT_FILES, 100, Some(50), 10).is_ok());
        assert!(check_agent_write(1, MAX_AGENT_BYTES - 10, None, 10).is_ok());
        assert!(check_agent_write(1, MAX_AGENT_BYTES - 10, None, 11).is_err());
        assert!(check_agent_write(1, MAX_AGENT_BYTES, Some(100), 100).is_ok());
    }
}
