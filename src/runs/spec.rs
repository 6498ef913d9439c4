//! Validation of `POST /api/runs` bodies (pure). Every rule of the contract
//! lives here; any violation is 400 `bad_run` naming the field, except an
//! unsafe `artifact` path, which is 400 `bad_path` like every other path of
//! the API.

use std::collections::BTreeMap;

/// The `Idempotency-Key` scope of `POST /api/runs`.
pub const IDEMPOTENCY_SCOPE: &str = "runs.create";

use serde_json::Value;

use crate::api::error::ApiError;
use crate::runner::call::ExecRequest;

pub const MAX_STEPS: usize = 32;
pub const MAX_COMMAND_CHARS: usize = 4000;
pub const MIN_TIMEOUT_MS: u64 = 1_000;
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 600_000;
pub const MAX_ENV: usize = 64;
pub const MAX_ENV_NAME: usize = 128;
pub const MAX_ENV_VALUE: usize = 32 * 1024;
pub const MAX_REF: usize = 255;

/// A valid run request, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// `https://github.com/<owner>/<repo>`, without `.git` or a trailing `/`.
    pub repo: String,
    pub git_ref: Option<String>,
    pub commands: Vec<String>,
    pub verify: Vec<String>,
    pub artifact: Option<String>,
    pub timeout_ms: u64,
    pub env: BTreeMap<String, String>,
    /// Anyone may read the run (`/api/runs/:id/public`, the page `/runs/:id`).
    pub public: bool,
    /// `live: true`: the TTL in seconds of the run's live period.
    pub live_ttl_seconds: Option<u64>,
}

impl RunSpec {
    /// How long the whole run may take before the DO calls it `timed_out`:
    /// every step (clone, commands, verify) at its limit, plus a minute for
    /// the artifact, the diff and the container.
    pub fn deadline_ms(&self) -> u64 {
        let steps = 1 + self.commands.len() + self.verify.len();
        self.timeout_ms.saturating_mul(steps as u64) + 60_000
    }
}

const FIELDS: &[&str] = &[
    "repo",
    "ref",
    "commands",
    "verify",
    "artifact",
    "timeoutMs",
    "env",
    "live",
    "ttlSeconds",
    "public",
];

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRun(msg.into())
}

/// `validate_with` at the contract's TTL floor.
pub fn validate(body: &Value) -> Result<RunSpec, ApiError> {
    validate_with(body, crate::runs::live::MIN_TTL_SECONDS)
}

/// Validates a run body; `min_ttl_seconds` is the floor of `ttlSeconds`
/// (`LIVE_TTL_MIN_SECONDS`).
pub fn validate_with(body: &Value, min_ttl_seconds: u64) -> Result<RunSpec, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| bad("the body must be a JSON object"))?;
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(bad(format!("unknown field {unknown:?}")));
    }
    let live = match obj.get("live") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("live must be a boolean")),
    };
    let ttl = match obj.get("ttlSeconds") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(s) => Some(s),
            None => return Err(bad("ttlSeconds must be an integer")),
        },
    };
    if ttl.is_some() && !live {
        return Err(bad("ttlSeconds needs live: true"));
    }
    let live_ttl_seconds = if live {
        Some(crate::runs::live::check_ttl(ttl, min_ttl_seconds).map_err(bad)?)
    } else {
        None
    };
    let public = match obj.get("public") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("public must be a boolean")),
    };
    let repo = match obj.get("repo") {
        Some(Value::String(s)) => normalize_repo(s).map_err(|why| bad(format!("repo: {why}")))?,
        Some(_) => return Err(bad("repo must be a string")),
        None => return Err(bad("repo is required")),
    };
    let git_ref = match obj.get("ref") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(check_ref(s).map_err(|why| bad(format!("ref: {why}")))?),
        Some(_) => return Err(bad("ref must be a string")),
    };
    let commands = string_list(obj.get("commands"), "commands")?;
    let verify = string_list(obj.get("verify"), "verify")?;
    if commands.is_empty() && verify.is_empty() {
        return Err(bad("give at least one command or verify step"));
    }
    let artifact = match obj.get("artifact") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            crate::common::paths::check_path("artifact", s)?;
            Some(s.clone())
        }
        Some(_) => return Err(bad("artifact must be a string")),
    };
    let timeout_ms = timeout_of(obj.get("timeoutMs"))?;
    let env = env_map(obj.get("env"))?;
    Ok(RunSpec {
        repo,
        git_ref,
        commands,
        verify,
        artifact,
        timeout_ms,
        env,
        public,
        live_ttl_seconds,
    })
}

/// `https://github.com/<owner>/<repo>` with an optional `.git` and trailing
/// `/`; scheme and host are case-insensitive. Returns the URL without them.
pub fn normalize_repo(url: &str) -> Result<String, String> {
    const PREFIX: &str = "https://github.com/";
    let head = url.get(..PREFIX.len()).unwrap_or("");
    if !head.eq_ignore_ascii_case(PREFIX) {
        return Err(
            "must be https://github.com/<owner>/<repo> (no other host, userinfo or port)".into(),
        );
    }
    let rest = &url[PREFIX.len()..];
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let rest = rest.strip_suffix(".git").unwrap_or(rest);
    let (owner, name) = rest
        .split_once('/')
        .ok_or("must name an owner and a repository")?;
    let owner_ok = (1..=39).contains(&owner.len())
        && !owner.starts_with('-')
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !owner_ok {
        return Err(format!("bad owner {owner:?}"));
    }
    let name_ok = (1..=100).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !name_ok {
        return Err(format!("bad repository name {name:?}"));
    }
    Ok(format!("{PREFIX}{owner}/{name}"))
}

/// A branch or tag name that is safe as a `git clone --branch` argument.
pub fn check_ref(r: &str) -> Result<String, String> {
    let ok = (1..=MAX_REF).contains(&r.len())
        && !r.starts_with('-')
        && !r.starts_with('/')
        && !r.ends_with('/')
        && !r.ends_with(".lock")
        && !r.contains("..")
        && !r.contains("//")
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-+".contains(&b));
    if ok {
        Ok(r.to_string())
    } else {
        Err(format!(
            "must be a branch or tag name of 1–{MAX_REF} characters [A-Za-z0-9._/+-]"
        ))
    }
}

fn string_list(value: Option<&Value>, field: &str) -> Result<Vec<String>, ApiError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(bad(format!("{field} must be an array of strings"))),
    };
    if items.len() > MAX_STEPS {
        return Err(bad(format!("{field}: at most {MAX_STEPS} steps")));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let s = item
                .as_str()
                .ok_or_else(|| bad(format!("{field}[{i}] must be a string")))?;
            if s.trim().is_empty() {
                return Err(bad(format!("{field}[{i}] is empty")));
            }
            if s.chars().count() > MAX_COMMAND_CHARS {
                return Err(bad(format!(
                    "{field}[{i}] is longer than {MAX_COMMAND_CHARS} characters"
                )));
            }
            if s.contains('\0') {
                return Err(bad(format!("{field}[{i}] contains NUL")));
            }
            Ok(s.to_string())
        })
        .collect()
}

fn env_map(value: Option<&Value>) -> Result<BTreeMap<String, String>, ApiError> {
    let obj = match value {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(obj)) => obj,
        Some(_) => return Err(bad("env must be an object of string values")),
    };
    if obj.len() > MAX_ENV {
        return Err(bad(format!("env: at most {MAX_ENV} variables")));
    }
    let mut env = BTreeMap::new();
    for (name, value) in obj {
        let name_ok = (1..=MAX_ENV_NAME).contains(&name.len())
            && !name.as_bytes()[0].is_ascii_digit()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err(bad(format!("env: bad variable name {name:?}")));
        }
        let value = value
            .as_str()
            .ok_or_else(|| bad(format!("env.{name} must be a string")))?;
        if value.len() > MAX_ENV_VALUE || value.contains('\0') {
            return Err(bad(format!(
                "env.{name}: at most {MAX_ENV_VALUE} bytes, no NUL"
            )));
        }
        env.insert(name.clone(), value.to_string());
    }
    Ok(env)
}

fn timeout_of(value: Option<&Value>) -> Result<u64, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(DEFAULT_TIMEOUT_MS),
        Some(v) => match v.as_u64() {
            Some(ms) if (MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&ms) => Ok(ms),
            _ => Err(bad(format!(
                "timeoutMs must be an integer from {MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS}"
            ))),
        },
    }
}

fn object<'a>(
    body: &'a Value,
    fields: &[&str],
) -> Result<&'a serde_json::Map<String, Value>, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| bad("the body must be a JSON object"))?;
    if let Some(unknown) = obj.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(bad(format!("unknown field {unknown:?}")));
    }
    Ok(obj)
}

fn flag(obj: &serde_json::Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad(format!("{field} must be a boolean"))),
    }
}

/// `POST /api/runs/:id/exec {command, timeoutMs?, env?}` (the rules of a
/// run's commands, timeouts and env).
pub fn validate_exec(body: &Value) -> Result<ExecRequest, ApiError> {
    let obj = object(body, &["command", "timeoutMs", "env"])?;
    let command = match obj.get("command") {
        Some(Value::String(c))
            if !c.trim().is_empty() && c.chars().count() <= MAX_COMMAND_CHARS =>
        {
            c.clone()
        }
        Some(Value::String(_)) => {
            return Err(bad(format!("command: 1 to {MAX_COMMAND_CHARS} characters")))
        }
        Some(_) => return Err(bad("command must be a string")),
        None => return Err(bad("command is required")),
    };
    Ok(ExecRequest {
        command,
        timeout_ms: timeout_of(obj.get("timeoutMs"))?,
        env: env_map(obj.get("env"))?,
    })
}

/// `POST /api/runs/:id/write`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRequest {
    pub path: String,
    /// The bytes, base64 (`content` is encoded here).
    pub content_base64: String,
    /// Permission bits (`0`–`0o777`); the file's own, or 644, without.
    pub mode: Option<u32>,
}

/// `{path, content | contentBase64, mode?}`: exactly one of the contents;
/// `mode` an integer up to 511 (`0o777`) or an octal string (`"755"`).
pub fn validate_write(body: &Value) -> Result<WriteRequest, ApiError> {
    use base64::Engine;
    let obj = object(body, &["path", "content", "contentBase64", "mode"])?;
    let path = match obj.get("path") {
        Some(Value::String(p)) => {
            crate::common::paths::check_path("path", p)?;
            p.clone()
        }
        Some(_) => return Err(bad("path must be a string")),
        None => return Err(bad("path is required")),
    };
    let engine = base64::engine::general_purpose::STANDARD;
    let content_base64 = match (obj.get("content"), obj.get("contentBase64")) {
        (Some(Value::String(text)), None) => engine.encode(text.as_bytes()),
        (None, Some(Value::String(b64))) => {
            engine
                .decode(b64)
                .map_err(|_| bad("contentBase64 is not standard base64"))?;
            b64.clone()
        }
        (Some(_), Some(_)) => return Err(bad("give content or contentBase64, not both")),
        (None, None) => return Err(bad("content or contentBase64 is required")),
        _ => return Err(bad("content and contentBase64 must be strings")),
    };
    let mode = match obj.get("mode") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(m) if m <= 0o777 => Some(m as u32),
            _ => return Err(bad("mode must be 0 to 511 (0o777)")),
        },
        Some(Value::String(text)) => match u32::from_str_radix(text, 8) {
            Ok(m) if m <= 0o777 && !text.is_empty() && text.len() <= 4 => Some(m),
            _ => return Err(bad("mode must be octal digits up to 777")),
        },
        Some(_) => return Err(bad("mode must be a number or an octal string")),
    };
    Ok(WriteRequest {
        path,
        content_base64,
        mode,
    })
}

/// `POST /api/runs/:id/fork {live?, ttlSeconds?, public?}`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForkRequest {
    /// Default true; `false` creates the child `stopped`.
    pub live: bool,
    /// The child's TTL; the parent's without.
    pub ttl_seconds: Option<u64>,
    pub public: bool,
}

pub fn validate_fork(body: &Value, min_ttl_seconds: u64) -> Result<ForkRequest, ApiError> {
    let obj = object(body, &["live", "ttlSeconds", "public"])?;
    let ttl_seconds = match obj.get("ttlSeconds") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            crate::runs::live::check_ttl(
                Some(
                    v.as_u64()
                        .ok_or_else(|| bad("ttlSeconds must be an integer"))?,
                ),
                min_ttl_seconds,
            )
            .map_err(bad)?,
        ),
    };
    Ok(ForkRequest {
        live: flag(obj, "live")?.unwrap_or(true),
        ttl_seconds,
        public: flag(obj, "public")?.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(body: Value) -> &'static str {
        validate(&body).unwrap_err().code()
    }

    #[test]
    fn a_minimal_run_gets_the_defaults() {
        let spec =
            validate(&json!({"repo": "https://github.com/o/r", "commands": ["make"]})).unwrap();
        assert_eq!(spec.repo, "https://github.com/o/r");
        assert_eq!(spec.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert!(spec.verify.is_empty() && spec.env.is_empty() && spec.git_ref.is_none());
        assert_eq!(spec.deadline_ms(), 2 * DEFAULT_TIMEOUT_MS + 60_000);
    }

    #[test]
    fn github_urls_normalize() {
        for url in [
            "https://github.com/o/r",
            "https://github.com/o/r/",
            "https://github.com/o/r.git",
            "https://github.com/o/r.git/",
            "HTTPS://GitHub.com/o/r",
        ] {
            assert_eq!(
                normalize_repo(url).as_deref(),
                Ok("https://github.com/o/r"),
                "{url}"
            );
        }
        assert_eq!(
            normalize_repo("https://github.com/rust-lang/rust.vim").as_deref(),
            Ok("https://github.com/rust-lang/rust.vim")
        );
    }

    #[test]
    fn every_other_repo_is_bad_run() {
        for url in [
            "http://github.com/o/r",
            "https://gitlab.com/o/r",
            "https://github.com.evil.com/o/r",
            "git@github.com:o/r.git",
            "ssh://git@github.com/o/r",
            "https://user@github.com/o/r",
            "https://user:pw@github.com/o/r",
            "https://github.com:443/o/r",
            "https://140.82.112.3/o/r",
            "https://[::1]/o/r",
            "https://github.com/o",
            "https://github.com/o/r/tree/main",
            "https://github.com/o/r?x=1",
            "https://github.com/o/r#frag",
            "https://github.com/../r",
            "https://github.com/o/..",
            "https://github.com/-o/r",
            "https://github.com//r",
            "file:///etc/passwd",
            "",
        ] {
            assert_eq!(
                code(json!({"repo": url, "commands": ["x"]})),
                "bad_run",
                "{url}"
            );
        }
    }

    #[test]
    fn step_caps() {
        let repo = "https://github.com/o/r";
        let many: Vec<String> = (0..33).map(|i| format!("echo {i}")).collect();
        assert_eq!(code(json!({"repo": repo, "commands": many})), "bad_run");
        assert_eq!(code(json!({"repo": repo, "verify": many})), "bad_run");
        let ok32: Vec<String> = many[..32].to_vec();
        assert!(validate(&json!({"repo": repo, "commands": ok32, "verify": ok32})).is_ok());
        let long = "x".repeat(4001);
        assert_eq!(code(json!({"repo": repo, "commands": [long]})), "bad_run");
        assert!(validate(&json!({"repo": repo, "commands": ["é".repeat(4000)]})).is_ok());
        assert_eq!(code(json!({"repo": repo})), "bad_run");
        assert_eq!(
            code(json!({"repo": repo, "commands": [], "verify": []})),
            "bad_run"
        );
        assert_eq!(code(json!({"repo": repo, "commands": [" "]})), "bad_run");
        assert_eq!(code(json!({"repo": repo, "commands": [1]})), "bad_run");
        assert_eq!(code(json!({"repo": repo, "commands": "make"})), "bad_run");
    }

    #[test]
    fn artifact_paths_follow_the_path_rule() {
        let repo = "https://github.com/o/r";
        for bad_path in ["../x", "/etc/passwd", "a//b", "a/./b", "", "a/", "a\0b"] {
            assert_eq!(
                code(json!({"repo": repo, "commands": ["x"], "artifact": bad_path})),
                "bad_path",
                "{bad_path:?}"
            );
        }
        let long = "a".repeat(1025);
        assert_eq!(
            code(json!({"repo": repo, "commands": ["x"], "artifact": long})),
            "bad_path"
        );
        let spec =
            validate(&json!({"repo": repo, "commands": ["x"], "artifact": "out/report.txt"}))
                .unwrap();
        assert_eq!(spec.artifact.as_deref(), Some("out/report.txt"));
    }

    #[test]
    fn timeout_bounds() {
        let repo = "https://github.com/o/r";
        for bad_timeout in [
            json!(999),
            json!(3_600_001),
            json!(-1),
            json!(1.5),
            json!("1000"),
        ] {
            assert_eq!(
                code(json!({"repo": repo, "commands": ["x"], "timeoutMs": bad_timeout})),
                "bad_run"
            );
        }
        for ok in [1000, 3_600_000] {
            let spec =
                validate(&json!({"repo": repo, "commands": ["x"], "timeoutMs": ok})).unwrap();
            assert_eq!(spec.timeout_ms, ok);
        }
    }

    #[test]
    fn env_rules() {
        let repo = "https://github.com/o/r";
        let many: serde_json::Map<String, Value> =
            (0..65).map(|i| (format!("V{i}"), json!("x"))).collect();
        assert_eq!(
            code(json!({"repo": repo, "commands": ["x"], "env": many})),
            "bad_run"
        );
        for bad_env in [
            json!({"A": 1}),
            json!({"1A": "x"}),
            json!({"A-B": "x"}),
            json!(["A"]),
        ] {
            assert_eq!(
                code(json!({"repo": repo, "commands": ["x"], "env": bad_env})),
                "bad_run"
            );
        }
        let spec =
            validate(&json!({"repo": repo, "commands": ["x"], "env": {"GREETING": "hi"}})).unwrap();
        assert_eq!(spec.env.get("GREETING").map(String::as_str), Some("hi"));
    }

    #[test]
    fn refs_and_unknown_fields() {
        let repo = "https://github.com/o/r";
        assert!(validate(&json!({"repo": repo, "commands": ["x"], "ref": "release/v1.2"})).is_ok());
        for r in [
            "-x",
            "--upload-pack=evil",
            "a..b",
            "a b",
            "a/",
            "x.lock",
            "",
        ] {
            assert_eq!(
                code(json!({"repo": repo, "commands": ["x"], "ref": r})),
                "bad_run",
                "{r}"
            );
        }
        assert_eq!(code(json!({"repo": repo, "command": ["x"]})), "bad_run");
        let live = validate(&json!({"repo": repo, "commands": ["x"], "live": true})).unwrap();
        assert_eq!(live.live_ttl_seconds, Some(3_600));
        let short = json!({"repo": repo, "commands": ["x"], "live": true, "ttlSeconds": 5});
        assert_eq!(code(short.clone()), "bad_run");
        assert_eq!(validate_with(&short, 2).unwrap().live_ttl_seconds, Some(5));
        for bad_ttl in [
            json!(59),
            json!(2_592_001),
            json!("60"),
            json!(-1),
            json!(60.5),
        ] {
            let body =
                json!({"repo": repo, "commands": ["x"], "live": true, "ttlSeconds": bad_ttl});
            assert_eq!(code(body), "bad_run", "{bad_ttl}");
        }
        assert_eq!(
            code(json!({"repo": repo, "commands": ["x"], "ttlSeconds": 60})),
            "bad_run"
        );
        assert_eq!(
            code(json!({"repo": repo, "commands": ["x"], "live": "yes"})),
            "bad_run"
        );
        let not_live = validate(&json!({"repo": repo, "commands": ["x"], "live": false})).unwrap();
        assert_eq!(not_live.live_ttl_seconds, None);
        let public = validate(&json!({"repo": repo, "commands": ["x"], "public": true}));
        assert!(public.is_ok_and(|s| s.public));
        assert_eq!(
            code(json!({"repo": repo, "commands": ["x"], "public": "yes"})),
            "bad_run"
        );
        assert_eq!(code(json!(["not an object"])), "bad_run");
    }

    #[test]
    fn exec_bodies_follow_the_rules_of_a_runs_commands() {
        let ok = validate_exec(&json!({"command": "ls", "env": {"A": "b"}})).unwrap();
        assert_eq!(ok.command, "ls");
        assert_eq!(ok.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(ok.env.get("A").map(String::as_str), Some("b"));
        for bad_body in [
            json!({}),
            json!({"command": ""}),
            json!({"command": "   "}),
            json!({"command": 3}),
            json!({"command": "x".repeat(MAX_COMMAND_CHARS + 1)}),
            json!({"command": "ls", "timeoutMs": 10}),
            json!({"command": "ls", "env": {"1A": "x"}}),
            json!({"command": "ls", "extra": 1}),
            json!("ls"),
        ] {
            assert_eq!(
                validate_exec(&bad_body).unwrap_err().code(),
                "bad_run",
                "{bad_body}"
            );
        }
    }

    #[test]
    fn write_bodies_take_text_or_base64_and_a_mode() {
        let text = validate_write(&json!({"path": "a/b.txt", "content": "hi"})).unwrap();
        assert_eq!(text.content_base64, "aGk=");
        assert_eq!(text.mode, None);
        let b64 =
            validate_write(&json!({"path": "x", "contentBase64": "AAE=", "mode": "755"})).unwrap();
        assert_eq!(
            (b64.content_base64.as_str(), b64.mode),
            ("AAE=", Some(0o755))
        );
        assert_eq!(
            validate_write(&json!({"path": "x", "content": "", "mode": 420}))
                .unwrap()
                .mode,
            Some(0o644)
        );
        assert_eq!(
            validate_write(&json!({"path": "../x", "content": "a"}))
                .unwrap_err()
                .code(),
            "bad_path"
        );
        for bad_body in [
            json!({"path": "x"}),
            json!({"path": "x", "content": "a", "contentBase64": "YQ=="}),
            json!({"path": "x", "contentBase64": "not base64!"}),
            json!({"path": "x", "content": "a", "mode": 512}),
            json!({"path": "x", "content": "a", "mode": "8"}),
            json!({"path": "x", "content": "a", "mode": "4755"}),
            json!({"path": "x", "content": 5}),
            json!({"content": "a"}),
        ] {
            assert_eq!(
                validate_write(&bad_body).unwrap_err().code(),
                "bad_run",
                "{bad_body}"
            );
        }
    }

    #[test]
    fn fork_bodies_default_to_live_with_the_parents_ttl() {
        let d = validate_fork(&json!({}), 60).unwrap();
        assert_eq!(
            d,
            ForkRequest {
                live: true,
                ttl_seconds: None,
                public: false
            }
        );
        let s = validate_fork(
            &json!({"live": false, "ttlSeconds": 120, "public": true}),
            60,
        )
        .unwrap();
        assert_eq!(
            s,
            ForkRequest {
                live: false,
                ttl_seconds: Some(120),
                public: true
            }
        );
        for bad_body in [
            json!({"ttlSeconds": 5}),
            json!({"live": 1}),
            json!({"other": true}),
        ] {
            assert_eq!(
                validate_fork(&bad_body, 60).unwrap_err().code(),
                "bad_run",
                "{bad_body}"
            );
        }
    }
}
