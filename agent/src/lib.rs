//! `logstream-agent`: the client of a logstream gateway for CI agents and tools.
//!
//! ```text
//!  producer ──Pusher::send──> bounded buffer ──> batcher ──POST /v1/deployments/{id}/logs──> gateway
//!  (waits while the buffer      (buffer_lines    (max_lines / max_wait;   Logstream-Source + -Batch:
//!   holds buffer_lines            unacked)        one batch in flight)      a retried batch is stored once;
//!   unacknowledged lines)                                                    RETRYABLE_CODES retried with
//!                                                                            backoff and Retry-After)
//!  Client::complete ──POST .../complete (retried while retryable)
//!  Client::follow ──GET .../stream (SSE or WebSocket) ──> Event::Line .. Event::End
//!                   dropped: reconnect after the last line's cursor (no gap, no duplicate);
//!                   401 / auth_expired: the refresh callback gives a new token
//!  Client::export ──GET .../export?format=ndjson ──> each line with its cursor; resumed after
//!                   the last one when the download breaks
//! ```
//!
//! The contract (HTTP API, error codes, which codes may be retried, cursors) is the
//! gateway's `ARCHITECTURE.md`, "External interface". Retries are decided by the error
//! code alone ([`logstream_model::retry::RETRYABLE_CODES`]) with the backoff of
//! [`logstream_model::retry::backoff`].
//!
//! # Push a step's output and complete the deployment
//!
//! ```no_run
//! use logstream_agent::{Client, Line, PushOptions};
//!
//! # async fn demo() -> Result<(), logstream_agent::Error> {
//! let client = Client::new("https://logstream.example.com")?.with_token("TOKEN");
//! let pusher = client.push("build-42", PushOptions::default());
//! for i in 0..3 {
//!     // Waits while the buffer is full: a slow gateway slows the producer.
//!     pusher.send(Line::stdout(format!("line {i}")).step("build")).await?;
//! }
//! let summary = pusher.finish().await?; // every line acknowledged (durable)
//! assert_eq!(summary.lines, 3);
//! client.complete("build-42", "succeeded", Some(0)).await?;
//! # Ok(()) }
//! ```
//!
//! # Follow a deployment until it completes
//!
//! ```no_run
//! use std::sync::Arc;
//! use logstream_agent::{Client, Event, FollowOptions};
//!
//! # async fn demo() -> Result<(), logstream_agent::Error> {
//! let client = Client::new("http://127.0.0.1:8080")?
//!     .with_token("SHORT-LIVED")
//!     // Asked after a 401 or an `auth_expired` event: a new token, or None.
//!     .with_refresh(Arc::new(|| std::env::var("NEW_TOKEN").ok()));
//! let mut follow = client.follow("build-42", FollowOptions::default());
//! while let Some(event) = follow.next().await? {
//!     match event {
//!         Event::Line(line) => println!("{} {}", line.seq, line.message),
//!         Event::End(end) => println!("{} ({})", end.status, end.exit_code),
//!         Event::Waiting | Event::Reconnecting { .. } => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Download an export
//!
//! ```no_run
//! use logstream_agent::{Client, ExportEvent, ExportOptions};
//!
//! # async fn demo() -> Result<(), logstream_agent::Error> {
//! let client = Client::new("http://127.0.0.1:8080")?.with_token("TOKEN");
//! let mut export = client.export("build-42", ExportOptions::default());
//! while let Some(event) = export.next().await? {
//!     if let ExportEvent::Line { line, .. } = event {
//!         println!("{}", line.message); // `line.cursor` resumes after it
//!     }
//! }
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod error;
mod export;
mod follow;
mod push;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logstream_model::wire;
use serde::de::DeserializeOwned;

pub use error::{ApiError, Error, MAX_RETRY_AFTER, retry_after};
pub use export::{Export, ExportEvent, ExportOptions};
pub use follow::{Event, Follow, FollowOptions, Transport};
pub use push::{Line, PushOptions, PushSummary, Pusher, Retry, RetryReason, Stream};

/// Gets a fresh token (a kubeconfig exec plugin run again, a vault read, ...): asked
/// after a 401 or an `auth_expired` event; `None` keeps the current one.
pub type Refresh = Arc<dyn Fn() -> Option<String> + Send + Sync>;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A gateway connection: base URL, where the token comes from, an HTTP client. Cheap to
/// clone (clones share the token and the connection pool).
#[derive(Clone)]
pub struct Client {
    /// `http(s)://host[:port][/prefix]`, without a trailing `/`.
    base: String,
    /// The bearer token (replaced by `refresh` after a 401 or `auth_expired`).
    token: Arc<Mutex<Option<String>>>,
    /// Asked for a new token after a 401 or `auth_expired`.
    refresh: Option<Refresh>,
    /// Read for every request when set (so a rotated file is picked up).
    token_file: Option<PathBuf>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the gateway at `server` (`http://` or `https://`), with no token.
    pub fn new(server: &str) -> Result<Client> {
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::InvalidServer(server.to_owned()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(Error::Connect)?;
        Ok(Client {
            base,
            token: Arc::new(Mutex::new(None)),
            refresh: None,
            token_file: None,
            http,
        })
    }

    /// Sends `token` as `Authorization: Bearer`.
    pub fn with_token(self, token: impl Into<String>) -> Client {
        *self.token.lock().expect("token lock") = Some(token.into());
        self
    }

    /// Reads the token from `path` for every request (a rotated file is picked up).
    pub fn with_token_file(mut self, path: impl Into<PathBuf>) -> Client {
        self.token_file = Some(path.into());
        self
    }

    /// Asks `refresh` for a new token after a 401 or an `auth_expired` event.
    pub fn with_refresh(mut self, refresh: Refresh) -> Client {
        self.refresh = Some(refresh);
        self
    }

    /// The gateway's base URL, without a trailing `/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The current token (a token file is re-read each time).
    pub fn token(&self) -> Result<Option<String>> {
        if let Some(f) = &self.token_file {
            let t = std::fs::read_to_string(f).map_err(|source| Error::TokenFile {
                path: f.clone(),
                source,
            })?;
            return Ok(Some(t.trim().to_owned()));
        }
        Ok(self.token.lock().expect("token lock").clone())
    }

    /// Whether a 401 may be cured by getting the token again (a token file, a refresh
    /// callback).
    pub fn refreshable(&self) -> bool {
        self.token_file.is_some() || self.refresh.is_some()
    }

    /// Gets the token again where a callback supplies it (a token file is re-read
    /// anyway); true when it may have changed.
    pub fn refresh_token(&self) -> bool {
        if let Some(r) = &self.refresh
            && let Some(t) = r()
        {
            *self.token.lock().expect("token lock") = Some(t);
        }
        self.refreshable()
    }

    /// A request to `path` (`/v1/...`) carrying the token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> Result<reqwest::RequestBuilder> {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = self.token()? {
            r = r.bearer_auth(t);
        }
        Ok(r)
    }

    /// GETs `path` with `query` and parses the JSON answer; an error answer is
    /// [`Error::Api`]. Not retried.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T> {
        let resp = self
            .request(reqwest::Method::GET, path)?
            .query(query)
            .send()
            .await
            .map_err(Error::Connect)?;
        json_answer(resp, &format!("GET {path}")).await
    }

    /// One deployment's status and counts.
    pub async fn deployment(&self, deployment: &str) -> Result<wire::Deployment> {
        self.get_json(&format!("/v1/deployments/{deployment}"), &[])
            .await
    }

    /// Registers `values` as secrets to mask in `deployment`'s later lines.
    pub async fn register_secrets(
        &self,
        deployment: &str,
        values: Vec<String>,
    ) -> Result<wire::SecretsReply> {
        let resp = self
            .request(
                reqwest::Method::POST,
                &format!("/v1/deployments/{deployment}/secrets"),
            )?
            .json(&wire::SecretsRequest { values })
            .send()
            .await
            .map_err(Error::Connect)?;
        json_answer(resp, "POST .../secrets").await
    }

    /// Completes `deployment` as `status` (`succeeded`, `failed`, `cancelled`) with
    /// `exit_code` (default 0 when succeeded, else 1); returns what was recorded.
    /// Retryable refusals and broken connections are retried (at most 20 times, with
    /// the contract's backoff, not sooner than `Retry-After`); a 401 once after a token
    /// refresh. A deployment already completed is refused with `deployment_completed`.
    pub async fn complete(
        &self,
        deployment: &str,
        status: &str,
        exit_code: Option<i32>,
    ) -> Result<wire::Completion> {
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            let sent = self
                .request(
                    reqwest::Method::POST,
                    &format!("/v1/deployments/{deployment}/complete"),
                )?
                .json(&wire::CompleteRequest {
                    status: status.to_owned(),
                    exit_code,
                })
                .send()
                .await;
            let (err, at_least) = match sent {
                Ok(r) if r.status().is_success() => {
                    let body = r.bytes().await.map_err(Error::Connect)?;
                    return serde_json::from_slice(&body).map_err(|e| {
                        Error::Protocol(format!(
                            "the gateway's answer to POST /v1/deployments/{deployment}/complete: {e}"
                        ))
                    });
                }
                Ok(r) => {
                    let e = ApiError::read(r).await;
                    if e.unauthorized() && !refreshed && self.refreshable() {
                        refreshed = true;
                        self.refresh_token();
                        continue;
                    }
                    if !e.retryable() {
                        return Err(e.into());
                    }
                    let at_least = e.retry_after;
                    (Error::Api(e), at_least)
                }
                Err(e) => (Error::Connect(e), None),
            };
            if attempt >= 20 {
                return Err(err);
            }
            tokio::time::sleep(
                logstream_model::retry::backoff(
                    attempt,
                    Duration::from_millis(200),
                    Duration::from_secs(2),
                    rand::random(),
                )
                .max(at_least.unwrap_or_default()),
            )
            .await;
            attempt += 1;
        }
    }

    /// The bookmark `name` of this token's subject on `deployment`: `None` when there is
    /// none (or the deployment has no line yet).
    pub async fn bookmark(&self, deployment: &str, name: &str) -> Result<Option<wire::Bookmark>> {
        match self
            .get_json(
                &format!("/v1/deployments/{deployment}/bookmarks/{name}"),
                &[],
            )
            .await
        {
            Ok(b) => Ok(Some(b)),
            Err(Error::Api(e))
                if e.code == "bookmark_not_found" || e.code == "deployment_not_found" =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Sets the bookmark `name` of this token's subject on `deployment` to `cursor` (a
    /// line's cursor). Not retried: a follower sets it again with its next line.
    pub async fn set_bookmark(
        &self,
        deployment: &str,
        name: &str,
        cursor: &str,
    ) -> Result<wire::Bookmark> {
        let resp = self
            .request(
                reqwest::Method::PUT,
                &format!("/v1/deployments/{deployment}/bookmarks/{name}"),
            )?
            .json(&wire::BookmarkRequest {
                cursor: cursor.to_owned(),
            })
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(Error::Connect)?;
        json_answer(resp, "PUT .../bookmarks").await
    }

    /// A signed link that downloads `deployment`'s export without a token until it
    /// expires (`POST /v1/deployments/{id}/export-links`; scope `logs:export`).
    pub async fn export_link(
        &self,
        deployment: &str,
        req: &wire::ExportLinkRequest,
    ) -> Result<wire::ExportLink> {
        let resp = self
            .request(
                reqwest::Method::POST,
                &format!("/v1/deployments/{deployment}/export-links"),
            )?
            .json(req)
            .send()
            .await
            .map_err(Error::Connect)?;
        json_answer(resp, "POST .../export-links").await
    }

    /// Starts pushing lines to `deployment` in batches (see [`Pusher`]). Needs a Tokio
    /// runtime (the batcher is a task).
    pub fn push(&self, deployment: &str, options: PushOptions) -> Pusher {
        Pusher::start(self.clone(), deployment.to_owned(), options)
    }

    /// Follows `deployment` live (see [`Follow`]).
    pub fn follow(&self, deployment: &str, options: FollowOptions) -> Follow {
        Follow::new(self.clone(), deployment.to_owned(), options)
    }

    /// Downloads `deployment`'s whole log as NDJSON lines (see [`Export`]).
    pub fn export(&self, deployment: &str, options: ExportOptions) -> Export {
        Export::new(self.clone(), deployment.to_owned(), options)
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token_file", &self.token_file)
            .field("refresh", &self.refresh.is_some())
            .finish_non_exhaustive()
    }
}

/// The JSON of a successful answer to `what`; an error answer is [`Error::Api`].
async fn json_answer<T: DeserializeOwned>(resp: reqwest::Response, what: &str) -> Result<T> {
    if !resp.status().is_success() {
        return Err(ApiError::read(resp).await.into());
    }
    let body = resp.bytes().await.map_err(Error::Connect)?;
    serde_json::from_slice(&body)
        .map_err(|e| Error::Protocol(format!("the gateway's answer to {what}: {e}")))
}
