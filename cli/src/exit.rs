//! The one error type of the CLI and its exit codes (CLI.md, "Exit codes").
//! Every failure ends as a `Failure`: `main` prints it (text or `--json`)
//! and exits with its code.

use std::fmt;

/// What kind of failure, which decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The remote work failed (a verify step, an execute that is not ok).
    WorkFailed = 1,
    /// Bad flags, a bad file, input the API refuses (400, 413, 422).
    Usage = 2,
    /// 401, 403.
    Auth = 3,
    /// 404, 410.
    NotFound = 4,
    /// 409.
    Conflict = 5,
    /// 402, 429 `spending_limit_exceeded`.
    Money = 6,
    /// 429 `rate_limited`.
    RateLimited = 7,
    /// 5xx, unreachable, a broken answer.
    Server = 8,
    /// Ctrl-C: the work was cancelled (the shell's 128 + SIGINT).
    Interrupted = 130,
    /// `--timeout` passed: the work was cancelled.
    TimedOut = 124,
}

impl Exit {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// A failure with what the user needs to act on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub exit: Exit,
    /// The API's error code, or one of the CLI's own (`usage`, `network`, …).
    pub code: String,
    pub message: String,
    /// The HTTP status, when the failure is an answer.
    pub status: Option<u16>,
    /// The command already printed its result (the failed work's body):
    /// with `--json` nothing more goes to stdout.
    pub shown: bool,
}

pub type Result<T> = std::result::Result<T, Failure>;

impl Failure {
    pub fn new(exit: Exit, code: &str, message: impl Into<String>) -> Self {
        Self {
            exit,
            code: code.to_string(),
            message: message.into(),
            status: None,
            shown: false,
        }
    }

    /// A usage error: exit 2, before any request.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, "usage", message)
    }

    pub fn network(message: impl Into<String>) -> Self {
        Self::new(Exit::Server, "network", message)
    }

    /// An error answer of the API (`{"error", "message"}`).
    pub fn from_answer(status: u16, code: &str, message: &str) -> Self {
        Self {
            exit: exit_for(status, code),
            code: code.to_string(),
            message: message.to_string(),
            status: Some(status),
            shown: false,
        }
    }

    /// The `--json` form: `{"error", "message", "status"?}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({ "error": self.code, "message": self.message });
        if let Some(status) = self.status {
            v["status"] = status.into();
        }
        v
    }

    /// Marks the result as printed already.
    pub fn shown(mut self) -> Self {
        self.shown = true;
        self
    }

    /// Prefixes the message with what was being done.
    pub fn context(mut self, what: &str) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "{} ({status} {})", self.message, self.code),
            None => write!(f, "{}", self.message),
        }
    }
}

/// An id that goes into a URL path (workspace, run, computer, key):
/// 1–128 of `[A-Za-z0-9_-]`, refused (exit 2) before any request.
pub fn checked_id<'a>(what: &str, id: &'a str) -> Result<&'a str> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(id)
    } else {
        Err(Failure::usage(format!(
            "{what} {id:?}: 1–128 of A-Z a-z 0-9 _ -"
        )))
    }
}

/// The exit code of an error answer.
pub fn exit_for(status: u16, code: &str) -> Exit {
    match (status, code) {
        (401 | 403, _) => Exit::Auth,
        (404 | 410, _) => Exit::NotFound,
        (409, _) => Exit::Conflict,
        (402, _) | (429, "spending_limit_exceeded") => Exit::Money,
        (429, _) => Exit::RateLimited,
        // An execute or run that ran and failed answers 422 with its body.
        (422, "execution_failed") => Exit::WorkFailed,
        (500.., _) => Exit::Server,
        _ => Exit::Usage,
    }
}

/// Whether a 429 is worth one retry: `rate_limited` with a `retry-after`
/// of at most 30 s (else the user is told at once).
pub fn retry_rate_limit(status: u16, code: &str, retry_after: Option<u64>) -> Option<u64> {
    match (status, code, retry_after) {
        (429, "rate_limited", Some(secs)) if secs <= 30 => Some(secs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_of_the_contract_has_its_code() {
        assert_eq!(exit_for(401, "unauthorized").code(), 3);
        assert_eq!(exit_for(401, "invalid_key").code(), 3);
        assert_eq!(exit_for(403, "forbidden").code(), 3);
        assert_eq!(exit_for(404, "run_not_found").code(), 4);
        assert_eq!(exit_for(410, "run_expired").code(), 4);
        assert_eq!(exit_for(409, "version_conflict").code(), 5);
        assert_eq!(exit_for(402, "insufficient_credits").code(), 6);
        assert_eq!(exit_for(429, "spending_limit_exceeded").code(), 6);
        assert_eq!(exit_for(429, "rate_limited").code(), 7);
        assert_eq!(exit_for(500, "internal").code(), 8);
        assert_eq!(exit_for(503, "runner_unavailable").code(), 8);
        assert_eq!(exit_for(400, "bad_path").code(), 2);
        assert_eq!(exit_for(413, "body_too_large").code(), 2);
        assert_eq!(exit_for(422, "execution_failed").code(), 1);
        assert_eq!(exit_for(422, "idempotency_key_reused").code(), 2);
        assert_eq!(Exit::TimedOut.code(), 124);
    }

    #[test]
    fn only_short_rate_limits_are_retried() {
        assert_eq!(retry_rate_limit(429, "rate_limited", Some(3)), Some(3));
        assert_eq!(retry_rate_limit(429, "rate_limited", Some(30)), Some(30));
        assert_eq!(retry_rate_limit(429, "rate_limited", Some(31)), None);
        assert_eq!(retry_rate_limit(429, "rate_limited", None), None);
        assert_eq!(
            retry_rate_limit(429, "spending_limit_exceeded", Some(1)),
            None
        );
        assert_eq!(retry_rate_limit(503, "rate_limited", Some(1)), None);
    }

    #[test]
    fn json_form_has_status_only_for_answers() {
        let f = Failure::from_answer(404, "run_not_found", "no such run");
        assert_eq!(
            f.to_json(),
            serde_json::json!({"error": "run_not_found", "message": "no such run", "status": 404})
        );
        let u = Failure::usage("bad flag");
        assert_eq!(
            u.to_json(),
            serde_json::json!({"error": "usage", "message": "bad flag"})
        );
    }
}
