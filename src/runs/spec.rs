//! Validation of `POST /api/runs` bodies (pure). Every rule of the contract
//! lives here; any violation is 400 `bad_run` naming the field, except an
//! unsafe `artifact` path, which is 400 `bad_path` like every other path of
//! the API.

use std::collections::BTreeMap;

/// The `Idempotency-Key` scope of `POST /api/runs`.
pub const IDEMPOTENCY_SCOPE: &str = "runs.create";

use serde_json::Value;

use crate::api::error::ApiError;

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

pub fn validate(body: &Value) -> Result<RunSpec, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| bad("the body must be a JSON object"))?;
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(bad(format!("unknown field {unknown:?}")));
    }
    match obj.get("live") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => return Err(bad("live: live runs are not available yet")),
        Some(_) => return Err(bad("live must be a boolean")),
    }
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
    let timeout_ms = match obj.get("timeoutMs") {
        None | Some(Value::Null) => DEFAULT_TIMEOUT_MS,
        Some(v) => match v.as_u64() {
            Some(ms) if (MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&ms) => ms,
            _ => {
                return Err(bad(format!(
                    "timeoutMs must be an integer from {MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS}"
                )))
            }
        },
    };
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
        assert_eq!(
            code(json!({"repo": repo, "commands": ["x"], "live": true})),
            "bad_run"
        );
        assert!(validate(&json!({"repo": repo, "commands": ["x"], "live": false})).is_ok());
        let public = validate(&json!({"repo": repo, "commands": ["x"], "public": true}));
        assert!(public.is_ok_and(|s| s.public));
        assert_eq!(
            code(json!({"repo": repo, "commands": ["x"], "public": "yes"})),
            "bad_run"
        );
        assert_eq!(code(json!(["not an object"])), "bad_run");
    }
}
