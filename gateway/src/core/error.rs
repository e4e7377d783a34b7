//! The gateway's one error type. Domain code says what went wrong in its own words (a
//! kind, a stable snake_case `code`, a message that names the fix); each transport maps
//! it exactly once: HTTP to a status and the contract's JSON body (`http.rs`), gRPC to a
//! `Status` (`grpc.rs`), and a refused batch to `PushAck.error.code`, which carries the
//! same `code`. Which codes a client may retry is decided by the code alone
//! (`logstream_model::retry`), the same list for every transport.

use std::fmt;
use std::time::Duration;

use logstream_store::StoreError;

use crate::auth::AuthError;

/// What kind of failure; decides the HTTP status and the gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong (a parameter, a body, a header); fix it before retrying.
    Invalid,
    /// The body is larger than the gateway accepts.
    TooLarge,
    /// The body's media type or encoding is not accepted.
    Unsupported,
    /// The request asks for a representation the endpoint does not produce.
    NotAcceptable,
    /// No token, or a token that does not verify (or has expired).
    Unauthenticated,
    /// The token is valid but lacks a scope.
    Forbidden,
    /// No such deployment for this tenant (also what a token sees outside its reach).
    NotFound,
    /// The request conflicts with the deployment's state (it has completed).
    Conflict,
    /// A limit or quota is reached; retry after `retry_after`.
    TooMany,
    /// The gateway cannot serve it now (storage, shutdown); retry after `retry_after`.
    Unavailable,
    /// A bug or an unexpected failure; the detail is in the gateway's log.
    Internal,
}

/// An error answer: kind, stable code, and a message saying what was wrong and how to
/// fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub message: String,
    /// For `TooMany` and `Unavailable`: when to try again.
    pub retry_after: Option<Duration>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Error {
        Error {
            kind,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Invalid, code, message)
    }

    pub fn unauthenticated(code: &'static str, message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unauthenticated, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Forbidden, code, message)
    }

    /// The one answer for a deployment that does not exist or is outside the token's
    /// reach: a token learns nothing about deployments it may not see.
    pub fn deployment_not_found() -> Error {
        Error::new(
            ErrorKind::NotFound,
            "deployment_not_found",
            "no such deployment for this tenant; check the id (GET /v1/deployments lists them)",
        )
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Conflict, code, message)
    }

    pub fn too_many(
        code: &'static str,
        message: impl Into<String>,
        retry_after: Duration,
    ) -> Error {
        Error {
            retry_after: Some(retry_after),
            ..Error::new(ErrorKind::TooMany, code, message)
        }
    }

    pub fn unavailable(
        code: &'static str,
        message: impl Into<String>,
        retry_after: Duration,
    ) -> Error {
        Error {
            retry_after: Some(retry_after),
            ..Error::new(ErrorKind::Unavailable, code, message)
        }
    }

    /// The gateway is shutting down: reconnect (to another replica, or after restart).
    pub fn shutting_down(message: impl Into<String>) -> Error {
        Error::unavailable("shutting_down", message, Duration::from_secs(1))
    }

    /// Kafka mode: the deployment is served by another store replica now (a rebalance).
    pub fn deployment_deleted() -> Error {
        Error::new(
            ErrorKind::NotFound,
            "deployment_deleted",
            "the deployment was deleted by an admin (audited); its lines are gone",
        )
    }

    pub fn moved() -> Error {
        Error::unavailable(
            "moved",
            "the deployment moved to another store replica (a Kafka rebalance); reconnect with the last cursor",
            Duration::from_secs(1),
        )
    }

    /// Kafka mode: this store replica does not serve the deployment now.
    pub fn not_owner(why: &str) -> Error {
        Error::unavailable(
            "not_owner",
            format!(
                "{why}; retry in a moment (through an edge or any replica, which route to the owner)"
            ),
            Duration::from_secs(1),
        )
    }

    /// A viewer's token expired while it was following: reconnect with a fresh token.
    pub fn auth_expired() -> Error {
        Error::unauthenticated(
            "auth_expired",
            "the token expired; reconnect with a fresh token and the last cursor",
        )
    }

    /// An unexpected failure: `detail` is logged here, once; the client gets a generic
    /// message (no internals leak).
    pub fn internal(detail: impl fmt::Display) -> Error {
        tracing::error!(error = %detail, "internal error");
        Error::new(
            ErrorKind::Internal,
            "internal",
            "internal error; it was logged on the gateway",
        )
    }

    /// Whether a client may send the same request again (the contract's retry list).
    pub fn retryable(&self) -> bool {
        logstream_model::retry::is_retryable(self.code)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match &e {
            StoreError::NotFound => Error::deployment_not_found(),
            StoreError::Completed { .. } => Error::conflict(
                "deployment_completed",
                format!("{e}; start a new deployment id to push more lines"),
            ),
            StoreError::Io { .. } | StoreError::Poisoned(_) => {
                tracing::error!(error = %e, "store unavailable");
                let msg = if e.is_disk_full() {
                    "the gateway's disk is full; nothing was stored from this request, retry later"
                } else if e.is_out_of_descriptors() {
                    "the gateway is out of file descriptors (raise its RLIMIT_NOFILE or lower max_open_files); nothing was stored from this request, retry later"
                } else {
                    "storage is unavailable; nothing was stored from this request, retry later"
                };
                Error::unavailable("storage_unavailable", msg, Duration::from_secs(5))
            }
            StoreError::Unavailable(why) => {
                tracing::warn!(error = %e, "object storage unavailable");
                Error::unavailable(
                    "object_store_unavailable",
                    format!("{why}; these lines are safe in object storage, retry later"),
                    Duration::from_secs(5),
                )
            }
            StoreError::Corrupt { .. } | StoreError::Config(_) => Error::internal(&e),
        }
    }
}

impl From<AuthError> for Error {
    fn from(e: AuthError) -> Error {
        Error::unauthenticated("unauthorized", e.to_string())
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Error {
        Error::internal(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_keep_their_contract_codes() {
        assert_eq!(
            Error::from(StoreError::NotFound).code,
            "deployment_not_found"
        );
        let io = StoreError::Io {
            context: "append".into(),
            source: std::sync::Arc::new(std::io::Error::other("boom")),
        };
        let e = Error::from(io);
        assert_eq!(
            (e.kind, e.code),
            (ErrorKind::Unavailable, "storage_unavailable")
        );
        assert!(e.retryable());
        let e = Error::from(StoreError::Unavailable("s3://b did not answer".into()));
        assert_eq!(
            (e.kind, e.code),
            (ErrorKind::Unavailable, "object_store_unavailable")
        );
        assert!(e.retryable() && e.message.contains("s3://b did not answer"));
    }

    #[test]
    fn only_the_retry_list_is_retryable() {
        assert!(Error::too_many("quota_exceeded", "x", Duration::from_secs(1)).retryable());
        assert!(Error::shutting_down("x").retryable());
        assert!(Error::internal("x").retryable());
        assert!(!Error::conflict("deployment_completed", "x").retryable());
        assert!(!Error::deployment_not_found().retryable());
        assert!(!Error::invalid("invalid_deployment_id", "x").retryable());
        assert!(!Error::auth_expired().retryable());
    }
}
