//! Downloading a deployment's whole log: `GET /v1/deployments/{id}/export?format=ndjson`,
//! so every line comes with its cursor; a broken download is resumed after the last
//! line returned (`cursor=`), so nothing is missed or returned twice.
//!
//! The NDJSON can be rendered as text or CSV with `logstream_model::export`, the
//! gateway's own writers.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use logstream_model::wire;

use crate::{ApiError, Client, Error, Result};

/// Where to start and how hard to try.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Start after this line's cursor (a resumed export). Default: the first line.
    pub cursor: Option<String>,
    /// Downloads tried in all (the first and the resumptions) before the last error
    /// is returned. Default: 8.
    pub attempts: u32,
    /// First resumption delay, doubled per attempt. Default: 250 ms.
    pub backoff_base: Duration,
    /// The longest resumption delay (a `Retry-After` may be longer). Default: 8 s.
    pub backoff_cap: Duration,
}

impl Default for ExportOptions {
    fn default() -> ExportOptions {
        ExportOptions {
            cursor: None,
            attempts: 8,
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(8),
        }
    }
}

/// What an export yields.
#[derive(Debug)]
pub enum ExportEvent {
    /// A download request was answered (the first, or a resumption): lines follow.
    Started,
    /// The next line: the gateway's NDJSON bytes (no newline) and the line parsed.
    Line { raw: Vec<u8>, line: wire::Line },
    /// The download broke (`error`); the next call resumes after the last line, after
    /// `wait`.
    Resuming { error: Error, wait: Duration },
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// A download of one deployment's log: call [`next`](Self::next) until `None` (the end
/// of the log as it was when the last download started).
pub struct Export {
    client: Client,
    deployment: String,
    options: ExportOptions,
    /// The last line returned: where a resumption starts.
    cursor: Option<String>,
    /// Downloads started.
    attempt: u32,
    body: Option<Body>,
    /// Bytes received after the last complete line.
    pending: Vec<u8>,
    /// Complete lines received, not yet returned.
    lines: VecDeque<Vec<u8>>,
    delay: Option<Duration>,
    done: bool,
}

impl Export {
    pub(crate) fn new(client: Client, deployment: String, options: ExportOptions) -> Export {
        Export {
            client,
            deployment,
            cursor: options.cursor.clone(),
            options,
            attempt: 0,
            body: None,
            pending: Vec::new(),
            lines: VecDeque::new(),
            delay: None,
            done: false,
        }
    }

    /// The cursor of the last line returned (or the starting one).
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// The next event; `None` at the end of the log. A final refusal is
    /// `Err(Error::Api)` with a code that is not retryable; anything else is retried
    /// until `attempts` downloads were tried, then returned.
    pub async fn next(&mut self) -> Result<Option<ExportEvent>> {
        if self.done {
            return Ok(None);
        }
        match self.step().await {
            Ok(ev) => Ok(ev),
            Err(e) => {
                self.body = None;
                self.pending.clear();
                self.lines.clear();
                let final_refusal = matches!(&e, Error::Api(a) if !a.retryable());
                if final_refusal || self.attempt >= self.options.attempts.max(1) {
                    self.done = true;
                    return Err(e);
                }
                let wait = logstream_model::retry::backoff(
                    self.attempt,
                    self.options.backoff_base,
                    self.options.backoff_cap,
                    rand::random(),
                )
                .max(e.api().and_then(|a| a.retry_after).unwrap_or_default());
                self.delay = Some(wait);
                Ok(Some(ExportEvent::Resuming { error: e, wait }))
            }
        }
    }

    async fn step(&mut self) -> Result<Option<ExportEvent>> {
        loop {
            if let Some(raw) = self.lines.pop_front() {
                let line: wire::Line = serde_json::from_slice(&raw)
                    .map_err(|e| Error::Protocol(format!("a line from the gateway: {e}")))?;
                self.cursor = Some(line.cursor.clone());
                return Ok(Some(ExportEvent::Line { raw, line }));
            }
            let Some(body) = &mut self.body else {
                if let Some(d) = self.delay.take() {
                    tokio::time::sleep(d).await;
                }
                self.start().await?;
                return Ok(Some(ExportEvent::Started));
            };
            match body.next().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(Error::Connect)?;
                    self.pending.extend_from_slice(&chunk);
                    let mut start = 0;
                    while let Some(n) = memchr::memchr(b'\n', &self.pending[start..]) {
                        self.lines
                            .push_back(self.pending[start..start + n].to_vec());
                        start += n + 1;
                    }
                    self.pending.drain(..start);
                }
                None => {
                    if !self.pending.is_empty() {
                        return Err(Error::Protocol("download ended inside a line".into()));
                    }
                    self.done = true;
                    self.body = None;
                    return Ok(None);
                }
            }
        }
    }

    async fn start(&mut self) -> Result<()> {
        self.attempt += 1;
        let mut q = vec![("format", "ndjson".to_owned())];
        if let Some(c) = &self.cursor {
            q.push(("cursor", c.clone()));
        }
        let resp = self
            .client
            .request(
                reqwest::Method::GET,
                &format!("/v1/deployments/{}/export", self.deployment),
            )?
            .query(&q)
            .send()
            .await
            .map_err(Error::Connect)?;
        if !resp.status().is_success() {
            return Err(ApiError::read(resp).await.into());
        }
        self.body = Some(Box::pin(resp.bytes_stream()));
        Ok(())
    }
}
