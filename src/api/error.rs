//! The one error type of the API. Every failure a handler can return is a
//! variant here, and this file alone decides its HTTP status, its
//! `snake_case` code and the `{"error","message","details"}` body.

use serde::Serialize;
use serde_json::{json, Value};

use crate::wire::pack::PackError;

/// `retry-after` (seconds) of a 503 `runner_unavailable`.
pub const RUNNER_RETRY_AFTER_SECS: u64 = 5;

/// One field-level problem in a request body (`details` of `validation_failed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    // --- request shape ---
    BadJson(String),
    BodyTooLarge {
        limit_bytes: u64,
    },
    ValidationFailed(Vec<FieldError>),
    BadPath(String),
    NotFound,
    MethodNotAllowed {
        allowed: Vec<&'static str>,
    },

    // --- auth ---
    Unauthorized,
    InvalidKey,
    Forbidden(String),
    KeyInQuery,
    AdminDisabled,
    KeyNotFound,
    /// Rotating a key that is already revoked.
    KeyRevoked,

    // --- limits and money ---
    RateLimited {
        retry_after_secs: u64,
    },
    InsufficientCredits {
        current_balance: f64,
        total_spent: f64,
    },
    SpendingLimitExceeded(String),
    TransactionNotFound,
    IdempotencyKeyReused,
    InFlight,

    // --- workspaces ---
    WorkspaceNotFound,
    HashMismatch {
        expected: String,
        actual: String,
    },
    MissingBlobs(Vec<String>),
    VersionConflict {
        current: u64,
    },
    WorkspaceBusy,
    BlobTooLarge {
        limit_bytes: u64,
    },
    VersionNotFound,
    BlobNotFound,
    /// Blobs asked for by `…/blobs/fetch` that the account never stored.
    UnknownBlobs(Vec<String>),
    /// A refused pack upload (cut short, or a record that does not match its hash).
    Pack(crate::wire::pack::PackError),
    /// A `…/blobs/fetch` whose blobs would not fit in one pack.
    PackTooLarge {
        asked_bytes: u64,
        limit_bytes: u64,
    },

    // --- runs ---
    BadRun(String),
    RunNotFound,
    RunNotLive,
    RunExpired,
    RunNotRunning,

    // --- computers ---
    BadSpec(String),
    SpecTooLarge,
    ContentTooLarge,
    ComputerFull(String),
    FileNotFound,
    CollaboratorNotFound,
    ObjectiveNotFound,
    ComputerNotFound,

    // --- platform ---
    RunnerUnavailable(String),
    /// Unexpected failure. The text is logged with the request id, never sent.
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        use ApiError::*;
        match self {
            BadJson(_)
            | ValidationFailed(_)
            | BadPath(_)
            | KeyInQuery
            | HashMismatch { .. }
            | MissingBlobs(_)
            | Pack(_)
            | BadRun(_)
            | BadSpec(_) => 400,
            Unauthorized | InvalidKey => 401,
            InsufficientCredits { .. } => 402,
            Forbidden(_) => 403,
            NotFound | KeyNotFound | TransactionNotFound | WorkspaceNotFound | RunNotFound
            | FileNotFound | CollaboratorNotFound | ObjectiveNotFound | ComputerNotFound
            | VersionNotFound | BlobNotFound | UnknownBlobs(_) => 404,
            MethodNotAllowed { .. } => 405,
            InFlight
            | KeyRevoked
            | VersionConflict { .. }
            | WorkspaceBusy
            | RunNotLive
            | RunNotRunning => 409,
            RunExpired => 410,
            BodyTooLarge { .. }
            | BlobTooLarge { .. }
            | PackTooLarge { .. }
            | SpecTooLarge
            | ContentTooLarge
            | ComputerFull(_) => 413,
            IdempotencyKeyReused => 422,
            RateLimited { .. } | SpendingLimitExceeded(_) => 429,
            Internal(_) => 500,
            AdminDisabled | RunnerUnavailable(_) => 503,
        }
    }

    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            BadJson(_) => "bad_json",
            BodyTooLarge { .. } | BlobTooLarge { .. } | PackTooLarge { .. } => "body_too_large",
            ValidationFailed(_) => "validation_failed",
            BadPath(_) => "bad_path",
            NotFound => "not_found",
            MethodNotAllowed { .. } => "method_not_allowed",
            Unauthorized => "unauthorized",
            InvalidKey => "invalid_key",
            Forbidden(_) => "forbidden",
            KeyInQuery => "key_in_query",
            AdminDisabled => "admin_disabled",
            KeyNotFound => "key_not_found",
            KeyRevoked => "key_revoked",
            TransactionNotFound => "transaction_not_found",
            RateLimited { .. } => "rate_limited",
            InsufficientCredits { .. } => "insufficient_credits",
            SpendingLimitExceeded(_) => "spending_limit_exceeded",
            IdempotencyKeyReused => "idempotency_key_reused",
            InFlight => "in_flight",
            WorkspaceNotFound => "workspace_not_found",
            HashMismatch { .. } => "hash_mismatch",
            MissingBlobs(_) => "missing_blobs",
            VersionConflict { .. } => "version_conflict",
            WorkspaceBusy => "workspace_busy",
            VersionNotFound => "version_not_found",
            BlobNotFound | UnknownBlobs(_) => "blob_not_found",
            Pack(PackError::BadPack { .. } | PackError::RecordTooLarge { .. }) => "bad_pack",
            Pack(PackError::HashMismatch { .. }) => "hash_mismatch",
            BadRun(_) => "bad_run",
            RunNotFound => "run_not_found",
            RunNotLive => "run_not_live",
            RunExpired => "run_expired",
            RunNotRunning => "run_not_running",
            BadSpec(_) => "bad_spec",
            SpecTooLarge => "spec_too_large",
            ContentTooLarge => "content_too_large",
            ComputerFull(_) => "computer_full",
            FileNotFound => "file_not_found",
            CollaboratorNotFound => "collaborator_not_found",
            ObjectiveNotFound => "objective_not_found",
            ComputerNotFound => "computer_not_found",
            RunnerUnavailable(_) => "runner_unavailable",
            Internal(_) => "internal",
        }
    }

    pub fn message(&self) -> String {
        use ApiError::*;
        match self {
            BadJson(why) => format!("request body is not valid JSON: {why}"),
            BodyTooLarge { limit_bytes } | BlobTooLarge { limit_bytes } => {
                format!("request body is larger than {limit_bytes} bytes")
            }
            ValidationFailed(errors) => match errors.as_slice() {
                [one] => format!("{}: {}", one.field, one.message),
                _ => format!("{} fields are invalid", errors.len()),
            },
            BadPath(why) => format!("bad path: {why}"),
            NotFound => "no such route".into(),
            MethodNotAllowed { allowed } => {
                format!(
                    "method not allowed; this path accepts {}",
                    allowed.join(", ")
                )
            }
            Unauthorized => {
                "an API key is required (Authorization: Bearer <key> or X-API-Key)".into()
            }
            InvalidKey => "the API key is unknown, revoked or expired".into(),
            Forbidden(why) => why.clone(),
            KeyInQuery => {
                "API keys are not accepted in the query string; send Authorization: Bearer <key>"
                    .into()
            }
            AdminDisabled => "admin routes are disabled: ADMIN_API_KEY is not set".into(),
            KeyNotFound => "no such API key".into(),
            KeyRevoked => "the API key is revoked".into(),
            TransactionNotFound => "no such transaction".into(),
            RateLimited { retry_after_secs } => {
                format!("rate limit exceeded; retry after {retry_after_secs} s")
            }
            InsufficientCredits { .. } => "insufficient credits: add credits to continue".into(),
            SpendingLimitExceeded(why) => why.clone(),
            IdempotencyKeyReused => {
                "this Idempotency-Key was already used with a different request body".into()
            }
            InFlight => "a request with this Idempotency-Key is still in flight".into(),
            WorkspaceNotFound => "no such workspace".into(),
            HashMismatch { expected, actual } => {
                format!("body hashes to {actual}, not {expected}")
            }
            MissingBlobs(blobs) => format!("{} blobs were never uploaded", blobs.len()),
            VersionConflict { current } => {
                format!("baseVersion is stale: the workspace is at version {current}")
            }
            WorkspaceBusy => "another execute is running on this workspace".into(),
            VersionNotFound => "no such version of this workspace".into(),
            BlobNotFound => "no such blob in this account".into(),
            UnknownBlobs(blobs) => format!("{} blobs are not stored in this account", blobs.len()),
            Pack(err) => err.to_string(),
            PackTooLarge {
                asked_bytes,
                limit_bytes,
            } => format!(
                "the blobs asked for take {asked_bytes} bytes as a pack, over the {limit_bytes} \
                 one pack may hold; split the request by the manifest's sizes"
            ),
            BadRun(why) => why.clone(),
            RunNotFound => "no such run".into(),
            RunNotLive => "the run is not live".into(),
            RunExpired => "the live run has expired".into(),
            RunNotRunning => "the run is not running".into(),
            BadSpec(why) => why.clone(),
            SpecTooLarge => "spec is larger than 256 KiB".into(),
            ContentTooLarge => "content is larger than 256 KiB".into(),
            ComputerFull(why) => why.clone(),
            FileNotFound => "no such file".into(),
            CollaboratorNotFound => "no such collaborator".into(),
            ObjectiveNotFound => "no such objective".into(),
            ComputerNotFound => "no such computer".into(),
            RunnerUnavailable(why) => format!("the runner is unavailable: {why}"),
            Internal(_) => "internal error".into(),
        }
    }

    pub fn details(&self) -> Option<Value> {
        use ApiError::*;
        match self {
            ValidationFailed(errors) => Some(json!(errors)),
            InsufficientCredits {
                current_balance,
                total_spent,
            } => Some(json!({"currentBalance": current_balance, "totalSpent": total_spent})),
            MissingBlobs(blobs) | UnknownBlobs(blobs) => Some(json!({ "missing": blobs })),
            Pack(PackError::BadPack { record, .. } | PackError::RecordTooLarge { record, .. }) => {
                Some(json!({ "record": record }))
            }
            Pack(PackError::HashMismatch {
                record, expected, ..
            }) => Some(json!({ "record": record, "sha256": expected })),
            VersionConflict { current } => Some(json!({ "currentVersion": current })),
            MethodNotAllowed { allowed } => Some(json!({ "allowed": allowed })),
            _ => None,
        }
    }

    /// Extra response headers this error needs (e.g. `retry-after`).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            ApiError::RateLimited { retry_after_secs } => {
                vec![("retry-after", retry_after_secs.to_string())]
            }
            ApiError::MethodNotAllowed { allowed } => vec![("allow", allowed.join(", "))],
            // No container could be had now (capacity, a failed start): a
            // retry in a few seconds usually gets one.
            ApiError::RunnerUnavailable(_) => {
                vec![("retry-after", RUNNER_RETRY_AFTER_SECS.to_string())]
            }
            _ => vec![],
        }
    }

    /// The JSON body. `request_id` is included so a 500 can be found in the logs.
    pub fn body(&self, request_id: &str) -> Value {
        let mut body = json!({
            "error": self.code(),
            "message": self.message(),
            "requestId": request_id,
        });
        if let Some(details) = self.details() {
            body["details"] = details;
        }
        body
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Internal(detail) => write!(f, "internal: {detail}"),
            other => write!(f, "{}: {}", other.code(), other.message()),
        }
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_their_detail() {
        let err = ApiError::Internal("D1 said: secret table name".into());
        let body = err.body("req-1");
        assert_eq!(err.status(), 500);
        assert_eq!(body["error"], "internal");
        assert!(!body.to_string().contains("secret table name"));
        assert_eq!(body["requestId"], "req-1");
    }

    #[test]
    fn validation_errors_carry_field_details() {
        let err = ApiError::ValidationFailed(vec![FieldError::new("task", "must not be empty")]);
        let body = err.body("r");
        assert_eq!(err.status(), 400);
        assert_eq!(body["error"], "validation_failed");
        assert_eq!(body["details"][0]["field"], "task");
        assert_eq!(body["message"], "task: must not be empty");
    }

    #[test]
    fn runner_unavailable_says_when_to_retry() {
        let err = ApiError::RunnerUnavailable("pool full".into());
        assert_eq!(err.status(), 503);
        assert_eq!(err.code(), "runner_unavailable");
        assert_eq!(err.headers(), vec![("retry-after", "5".to_string())]);
    }

    #[test]
    fn rate_limit_sets_retry_after() {
        let err = ApiError::RateLimited {
            retry_after_secs: 42,
        };
        assert_eq!(err.status(), 429);
        assert_eq!(err.headers(), vec![("retry-after", "42".to_string())]);
    }

    #[test]
    fn insufficient_credits_details_match_the_contract() {
        let err = ApiError::InsufficientCredits {
            current_balance: 0.0,
            total_spent: 1.5,
        };
        assert_eq!(err.status(), 402);
        assert_eq!(err.body("r")["details"]["totalSpent"], 1.5);
    }
}
