//! The gateway's public HTTP API, as the MCP server calls it: with the caller's own
//! token, so authentication, tenancy, redaction, quotas and audit are the API's, the
//! same as for every other door.

use std::sync::Arc;

use http::HeaderValue;
use logstream_model::wire::ErrorBody;
use rmcp::ErrorData as McpError;
use rmcp::model::ErrorCode;
use serde::de::DeserializeOwned;
use serde_json::json;

/// JSON-RPC error code of an answer refused by a limit (the HTTP API's 429).
pub const TOO_MANY: ErrorCode = ErrorCode(-32029);
/// The token was refused (HTTP 401). (Not -32001: SDKs use it for request timeouts.)
pub const UNAUTHENTICATED: ErrorCode = ErrorCode(-32041);
/// The token lacks a scope (HTTP 403).
pub const FORBIDDEN: ErrorCode = ErrorCode(-32043);

/// Where a token comes from outside an HTTP request (stdio: the CLI's token).
pub trait TokenSource: Send + Sync {
    /// The current token (a token file is re-read each time), if any.
    fn token(&self) -> Result<Option<String>, String>;
    /// Gets the token again after a 401; true when it may have changed.
    fn refresh(&self) -> bool {
        false
    }
}

/// The caller's credentials for one API request.
#[derive(Clone)]
pub enum Credentials {
    /// The `Authorization` value of the MCP request, forwarded as is.
    Header(HeaderValue),
    /// A token source (stdio).
    Source(Arc<dyn TokenSource>),
}

/// An error answer of the API: status, its JSON `code` and `message`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn transport(e: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: 503,
            code: "unavailable".into(),
            message: format!("the gateway could not be reached ({e}); retry shortly"),
            retry_after: None,
        }
    }

    /// The MCP error of this answer: the API's message (it names the problem and the
    /// fix), a JSON-RPC code by kind, and `{status, code, retry_after_secs}` as data.
    pub fn into_mcp(self, deployment: Option<&str>) -> McpError {
        let data = Some(json!({
            "status": self.status,
            "code": self.code,
            "retry_after_secs": self.retry_after,
        }));
        match self.status {
            404 => {
                let message = match deployment {
                    Some(d) => format!(
                        "deployment {d:?} not found (or not visible to this token): check the id with the list_deployments tool"
                    ),
                    None => self.message,
                };
                McpError::resource_not_found(message, data)
            }
            400 | 406 | 409 | 413 | 415 => McpError::invalid_params(self.message, data),
            401 => McpError::new(
                UNAUTHENTICATED,
                format!("{} (get a new token and reconnect)", self.message),
                data,
            ),
            403 => McpError::new(FORBIDDEN, self.message, data),
            429 => McpError::new(TOO_MANY, self.message, data),
            _ => McpError::internal_error(self.message, data),
        }
    }
}

/// The HTTP API at one base URL.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: reqwest::Url,
}

impl Api {
    /// `base` is `http(s)://host:port` (a path prefix is kept).
    pub fn new(base: &str) -> anyhow::Result<Api> {
        let mut base =
            reqwest::Url::parse(base).map_err(|e| anyhow::anyhow!("gateway URL {base:?}: {e}"))?;
        if base.cannot_be_a_base() {
            anyhow::bail!("gateway URL {base}: not an http(s) base URL");
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .user_agent(concat!("logstream-mcp/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Api { http, base })
    }

    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut u = self.base.clone();
        if let Ok(mut s) = u.path_segments_mut() {
            s.pop_if_empty().extend(segments);
        }
        u
    }

    /// GETs `segments` (each percent-encoded) with `query` and parses the JSON answer.
    pub async fn get<T: DeserializeOwned>(
        &self,
        creds: &Credentials,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<T, ApiError> {
        let mut refreshed = false;
        loop {
            let mut req = self.http.get(self.url(segments)).query(query);
            match creds {
                Credentials::Header(v) => req = req.header(http::header::AUTHORIZATION, v),
                Credentials::Source(s) => {
                    let token = s.token().map_err(|e| ApiError {
                        status: 401,
                        code: "unauthenticated".into(),
                        message: e,
                        retry_after: None,
                    })?;
                    if let Some(t) = token {
                        req = req.bearer_auth(t);
                    }
                }
            }
            let resp = req.send().await.map_err(ApiError::transport)?;
            let status = resp.status().as_u16();
            if status == 401
                && !refreshed
                && let Credentials::Source(s) = creds
                && s.refresh()
            {
                refreshed = true;
                continue;
            }
            if (200..300).contains(&status) {
                return resp.json::<T>().await.map_err(|e| ApiError {
                    status: 502,
                    code: "unexpected_answer".into(),
                    message: format!("the gateway's answer could not be read ({e}); retry, and report it if it persists"),
                    retry_after: None,
                });
            }
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            let body = resp.bytes().await.unwrap_or_default();
            let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(b) => (b.error.code, b.error.message),
                Err(_) => (
                    "unexpected_answer".to_owned(),
                    format!(
                        "the gateway answered {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    ),
                ),
            };
            return Err(ApiError {
                status,
                code,
                message,
                retry_after,
            });
        }
    }
}
