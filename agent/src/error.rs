//! The crate's one error type, and [`ApiError`]: a gateway refusal with its contract code.

use std::time::Duration;

use logstream_model::wire;

/// What went wrong talking to a gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gateway (or something in front of it) refused the request. Final when
    /// [`ApiError::retryable`] is false; otherwise the retries this client makes were
    /// used up.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// No answer: the connection could not be made or broke.
    #[error("connecting to the gateway")]
    Connect(#[source] reqwest::Error),
    /// An answer that is not the gateway's (not the JSON the contract describes).
    #[error("{0}")]
    Protocol(String),
    /// The server URL is not `http://` or `https://`.
    #[error("server {0:?}: must start with http:// or https://")]
    InvalidServer(String),
    /// The token file could not be read.
    #[error("token file {path}")]
    TokenFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// [`crate::Pusher::try_send`]: the buffer holds `buffer_lines` unacknowledged lines.
    #[error("the push buffer is full (lines wait for the gateway's acknowledgement)")]
    Full,
    /// The pusher stopped (after a final refusal, which [`crate::Pusher::finish`] returns).
    #[error("the pusher stopped")]
    Closed,
}

impl Error {
    /// A stable label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Api(_) => "refused",
            Error::Connect(_) => "connect",
            Error::Protocol(_) => "protocol",
            Error::InvalidServer(_) => "invalid_server",
            Error::TokenFile { .. } => "token_file",
            Error::Full => "full",
            Error::Closed => "closed",
        }
    }

    /// The refusal, if the gateway refused.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Error::Api(e) => Some(e),
            _ => None,
        }
    }

    /// Whether trying again may pass: a retryable refusal or a broken connection.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Api(e) => e.retryable(),
            Error::Connect(_) => true,
            _ => false,
        }
    }
}

/// A refusal: the gateway's error body (`wire::ErrorBody`) with its status and
/// `Retry-After`, or what stands in for one when the answer came from something in front
/// of the gateway (a proxy's HTML page, the Kubernetes API server's own `Status`).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: reqwest::StatusCode,
    /// The contract's error code. A body that is not the gateway's counts as
    /// `unavailable` (retryable) on a 5xx or 429, and as final (no code) otherwise.
    pub code: String,
    pub message: String,
    /// `Retry-After`, at most [`MAX_RETRY_AFTER`].
    pub retry_after: Option<Duration>,
}

/// The longest `Retry-After` honoured (a bigger one is taken as this).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

impl ApiError {
    /// Reads an error answer's body.
    pub async fn read(resp: reqwest::Response) -> ApiError {
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let body = resp.bytes().await.unwrap_or_default();
        ApiError::parse(status, retry_after, &body)
    }

    /// An error answer from its parts.
    pub fn parse(
        status: reqwest::StatusCode,
        retry_after: Option<Duration>,
        body: &[u8],
    ) -> ApiError {
        match serde_json::from_slice::<wire::ErrorBody>(body) {
            Ok(wire::ErrorBody { error }) => ApiError {
                status,
                code: error.code,
                message: error.message,
                retry_after,
            },
            Err(_) => {
                let transient =
                    status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                ApiError {
                    status,
                    code: if transient { "unavailable" } else { "" }.to_owned(),
                    message: format!("HTTP {status}"),
                    retry_after,
                }
            }
        }
    }

    /// Whether the contract allows trying again (after a backoff, and `retry_after`):
    /// decided by the code alone (`logstream_model::retry::RETRYABLE_CODES`).
    pub fn retryable(&self) -> bool {
        logstream_model::retry::is_retryable(&self.code)
    }

    /// A 401: the token was refused (`unauthorized`, `auth_expired`).
    pub fn unauthorized(&self) -> bool {
        self.status == reqwest::StatusCode::UNAUTHORIZED
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {})", self.message, self.status.as_u16())
    }
}

impl std::error::Error for ApiError {}

/// `Retry-After` in seconds (the form the gateway sends), at most [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    fn body(code: &str) -> Vec<u8> {
        serde_json::to_vec(&wire::ErrorBody::new(code, &format!("{code} happened"))).unwrap()
    }

    #[test]
    fn refusals_are_retried_by_their_code_not_their_status() {
        for code in [
            "viewers_per_deployment",
            "viewers_per_tenant",
            "streams_per_token",
        ] {
            let e = ApiError::parse(StatusCode::TOO_MANY_REQUESTS, None, &body(code));
            assert!(!e.retryable(), "{code}");
            assert_eq!(e.to_string(), format!("{code} happened (HTTP 429)"));
        }
        let e = ApiError::parse(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(3)),
            &body("quota_exceeded"),
        );
        assert!(e.retryable());
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        for (status, code) in [
            (StatusCode::CONFLICT, "deployment_completed"),
            (StatusCode::UNAUTHORIZED, "auth_expired"),
            (StatusCode::SERVICE_UNAVAILABLE, "something_new"),
        ] {
            assert!(!ApiError::parse(status, None, &body(code)).retryable());
        }
    }

    #[test]
    fn an_answer_that_is_not_the_gateways_is_unavailable_when_5xx_or_429() {
        let html = b"<html><body>502 Bad Gateway</body></html>";
        for status in [
            StatusCode::BAD_GATEWAY,
            StatusCode::GATEWAY_TIMEOUT,
            StatusCode::TOO_MANY_REQUESTS,
        ] {
            let e = ApiError::parse(status, None, html);
            assert_eq!(e.code, "unavailable", "{status}");
            assert!(e.retryable());
        }
        let e = ApiError::parse(StatusCode::NOT_FOUND, None, html);
        assert!(!e.retryable());
        assert_eq!(e.to_string(), "HTTP 404 Not Found (HTTP 404)");
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(http::header::RETRY_AFTER, v.parse().unwrap());
            m
        };
        assert_eq!(retry_after(&h("5")), Some(Duration::from_secs(5)));
        assert_eq!(retry_after(&h("86400")), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after(&h("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after(&http::HeaderMap::new()), None);
    }
}
