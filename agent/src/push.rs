//! Pushing lines: a bounded buffer, one batcher task, idempotent batches retried until
//! the gateway acknowledges them (durably) or refuses them for good.
//!
//! ```text
//! send ──(a permit per line: at most buffer_lines unacknowledged)──> channel ──> batcher
//! batcher: up to max_lines / max_bytes, or what came within max_wait
//!   ──POST /v1/deployments/{id}/logs  Logstream-Source: <source>  Logstream-Batch: <n>
//!   acked ──> the batch's permits return (the producer may go on)
//!   retryable code / no answer ──> backoff (and Retry-After), the same batch id again
//!   final code ──> the pusher stops; finish() returns the refusal
//! ```

use std::sync::Arc;
use std::time::Duration;

use logstream_model::wire;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};

use crate::{ApiError, Client, Error, Result};

/// Which stream a line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line to push (an NDJSON record of `POST /v1/deployments/{id}/logs`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    /// Unix time in nanoseconds; default: when the gateway receives it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
    /// The step; default: the gateway's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub stream: Stream,
    /// trace, debug, info, warn, error, fatal; default: detected from the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    pub message: String,
}

impl Line {
    /// A line written to stdout.
    pub fn stdout(message: impl Into<String>) -> Line {
        Line {
            ts: None,
            step: None,
            stream: Stream::Stdout,
            level: None,
            message: message.into(),
        }
    }

    /// A line written to stderr.
    pub fn stderr(message: impl Into<String>) -> Line {
        Line {
            stream: Stream::Stderr,
            ..Line::stdout(message)
        }
    }

    /// With its step.
    pub fn step(mut self, step: impl Into<String>) -> Line {
        self.step = Some(step.into());
        self
    }

    /// With its time (Unix nanoseconds).
    pub fn ts(mut self, unix_nanos: i64) -> Line {
        self.ts = Some(unix_nanos);
        self
    }

    /// With its level.
    pub fn level(mut self, level: impl Into<String>) -> Line {
        self.level = Some(level.into());
        self
    }
}

/// Why a batch is sent again (see [`PushOptions::on_retry`]).
#[derive(Debug, Clone)]
pub enum RetryReason {
    /// The gateway refused with a retryable code (or a 401 while a new token can be got).
    Refused(ApiError),
    /// No connection.
    Unreachable(String),
    /// The connection broke before the acknowledgement was read (the batch may be
    /// stored: it is sent again with the same id and stored once).
    CutOff(String),
}

/// A batch about to be sent again.
#[derive(Debug, Clone)]
pub struct Retry {
    /// The batch id (`Logstream-Batch`).
    pub batch: u64,
    /// Failed attempts of this batch before this one (0 at the first retry).
    pub attempt: u32,
    pub reason: RetryReason,
    /// How long until it is sent again.
    pub wait: Duration,
}

/// Called before each retry (to log or count it).
pub type OnRetry = Arc<dyn Fn(&Retry) + Send + Sync>;

/// How a [`Pusher`] batches, buffers and retries.
#[derive(Clone)]
pub struct PushOptions {
    /// `Logstream-Source`: who sends; with the batch id it makes a batch idempotent.
    /// Reuse it (with [`first_batch`](Self::first_batch)) to resend after a restart.
    /// Default: `agent/<pid>/<random>`.
    pub source: Option<String>,
    /// The first batch id (then counted up by one per batch). Default: 1.
    pub first_batch: u64,
    /// Lines per batch at most. Default: 1,000.
    pub max_lines: usize,
    /// Message bytes per batch at most (a single longer line goes alone). Default: 1 MiB.
    pub max_bytes: usize,
    /// How long a batch waits for more lines once it has one. Default: 50 ms.
    pub max_wait: Duration,
    /// Lines sent but not yet acknowledged at most: `send` waits (and `try_send` fails
    /// with [`Error::Full`]) beyond it. Default: 10,000.
    pub buffer_lines: usize,
    /// Attempts per batch before giving up with the last error; `None`: retry until
    /// acknowledged or refused for good. Default: `None`.
    pub max_attempts: Option<u32>,
    /// First retry delay, doubled per attempt (`logstream_model::retry::backoff`).
    /// Default: 100 ms.
    pub backoff_base: Duration,
    /// The longest retry delay (a `Retry-After` may be longer). Default: 5 s.
    pub backoff_cap: Duration,
    /// Called before each retry. Default: none.
    pub on_retry: Option<OnRetry>,
}

impl Default for PushOptions {
    fn default() -> PushOptions {
        PushOptions {
            source: None,
            first_batch: 1,
            max_lines: 1000,
            max_bytes: 1 << 20,
            max_wait: Duration::from_millis(50),
            buffer_lines: 10_000,
            max_attempts: None,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(5),
            on_retry: None,
        }
    }
}

/// What a finished [`Pusher`] sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushSummary {
    /// Lines acknowledged.
    pub lines: u64,
    /// Batches acknowledged.
    pub batches: u64,
    /// Batches the gateway had stored before (a resend after a lost acknowledgement).
    pub duplicates: u64,
    /// Retries made.
    pub retries: u64,
    /// The last acknowledgement's cursor (empty in Kafka mode until applied) and seq.
    pub cursor: Option<String>,
    pub last_seq: u64,
}

/// Pushes lines to one deployment: [`send`](Self::send) them, then
/// [`finish`](Self::finish) to wait until every one is acknowledged.
pub struct Pusher {
    tx: mpsc::UnboundedSender<Line>,
    /// One permit per line that may still be buffered; the batcher returns a batch's
    /// permits when it is acknowledged, and closes it when it stops.
    room: Arc<Semaphore>,
    task: tokio::task::JoinHandle<Result<PushSummary>>,
    source: String,
}

impl Pusher {
    pub(crate) fn start(client: Client, deployment: String, options: PushOptions) -> Pusher {
        let source = options
            .source
            .clone()
            .unwrap_or_else(|| format!("agent/{}/{}", std::process::id(), rand::random::<u32>()));
        let room = Arc::new(Semaphore::new(options.buffer_lines.max(1)));
        let (tx, rx) = mpsc::unbounded_channel();
        let batcher = Batcher {
            client,
            deployment,
            source: source.clone(),
            options,
            room: room.clone(),
        };
        let task = tokio::spawn(batcher.run(rx));
        Pusher {
            tx,
            room,
            task,
            source,
        }
    }

    /// Queues `line`, waiting while the buffer is full. [`Error::Closed`] when the
    /// pusher stopped (a final refusal: [`finish`](Self::finish) says which).
    pub async fn send(&self, line: Line) -> Result<()> {
        let permit = self.room.acquire().await.map_err(|_| Error::Closed)?;
        permit.forget();
        self.tx.send(line).map_err(|_| Error::Closed)
    }

    /// Queues `line` if there is room now; [`Error::Full`] when there is not.
    pub fn try_send(&self, line: Line) -> Result<()> {
        let permit = self.room.try_acquire().map_err(|e| match e {
            tokio::sync::TryAcquireError::NoPermits => Error::Full,
            tokio::sync::TryAcquireError::Closed => Error::Closed,
        })?;
        permit.forget();
        self.tx.send(line).map_err(|_| Error::Closed)
    }

    /// The `Logstream-Source` of this pusher's batches.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Sends what is buffered and waits for every acknowledgement; the first final
    /// refusal (or the last error once `max_attempts` ran out) otherwise.
    pub async fn finish(self) -> Result<PushSummary> {
        drop(self.tx);
        match self.task.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(Error::Closed),
        }
    }
}

struct Batcher {
    client: Client,
    deployment: String,
    source: String,
    options: PushOptions,
    room: Arc<Semaphore>,
}

impl Batcher {
    async fn run(self, rx: mpsc::UnboundedReceiver<Line>) -> Result<PushSummary> {
        let r = self.batches(rx).await;
        // Senders waiting for room learn that nothing more will be taken.
        self.room.close();
        r
    }

    async fn batches(&self, mut rx: mpsc::UnboundedReceiver<Line>) -> Result<PushSummary> {
        let o = &self.options;
        let mut summary = PushSummary::default();
        let mut batch_id = o.first_batch;
        let mut pending: Vec<Line> = Vec::new();
        let mut body = Vec::new();
        let mut open = true;
        while open {
            let (mut n, mut bytes) = (0usize, 0usize);
            body.clear();
            // A batch starts with the next line (however long the wait), then takes
            // what comes within max_wait.
            match rx.recv().await {
                Some(l) => pending.push(l),
                None => break,
            }
            let deadline = tokio::time::sleep(o.max_wait);
            tokio::pin!(deadline);
            loop {
                for l in pending.drain(..) {
                    bytes += l.message.len();
                    n += 1;
                    serde_json::to_writer(&mut body, &l).expect("a line serializes");
                    body.push(b'\n');
                }
                if n >= o.max_lines || bytes >= o.max_bytes {
                    break;
                }
                tokio::select! {
                    l = rx.recv() => match l {
                        Some(l) => pending.push(l),
                        None => { open = false; break; }
                    },
                    () = &mut deadline => break,
                }
            }
            let ack = self
                .send(
                    batch_id,
                    bytes::Bytes::from(std::mem::take(&mut body)),
                    &mut summary,
                )
                .await?;
            summary.lines += n as u64;
            summary.batches += 1;
            summary.duplicates += u64::from(ack.duplicate);
            summary.last_seq = summary.last_seq.max(ack.last_seq);
            summary.cursor = Some(ack.cursor);
            self.room.add_permits(n);
            batch_id += 1;
        }
        Ok(summary)
    }

    /// Sends one batch until it is acknowledged: retryable refusals and broken
    /// connections are retried with the same batch id.
    async fn send(
        &self,
        batch: u64,
        body: bytes::Bytes,
        summary: &mut PushSummary,
    ) -> Result<wire::IngestReply> {
        let o = &self.options;
        let path = format!("/v1/deployments/{}/logs", self.deployment);
        let mut attempt = 0u32;
        let mut unauthorized = 0u32;
        loop {
            let req = self
                .client
                .request(reqwest::Method::POST, &path)?
                .header("content-type", "application/x-ndjson")
                .header("logstream-source", &self.source)
                .header("logstream-batch", batch.to_string())
                .body(body.clone());
            let (reason, err, at_least) = match req.send().await {
                Ok(r) if r.status().is_success() => match r.bytes().await {
                    // The durable acknowledgement.
                    Ok(b) => {
                        return serde_json::from_slice::<wire::IngestReply>(&b).map_err(|e| {
                            Error::Protocol(format!(
                                "the answer to POST {path} is not an ingest reply ({e}); is the server a logstream gateway?"
                            ))
                        });
                    }
                    // Cut off while reading the answer: send the batch again (it is
                    // stored once).
                    Err(e) => (RetryReason::CutOff(e.to_string()), Error::Connect(e), None),
                },
                Ok(r) => {
                    let e = ApiError::read(r).await;
                    // A 401 is retried after getting the token again (a few times: a
                    // refresh that keeps giving refused tokens is final).
                    let refresh = e.unauthorized() && self.client.refreshable() && unauthorized < 5;
                    if refresh {
                        unauthorized += 1;
                        self.client.refresh_token();
                    } else if !e.retryable() {
                        return Err(e.into());
                    }
                    let at_least = e.retry_after;
                    (RetryReason::Refused(e.clone()), Error::Api(e), at_least)
                }
                Err(e) => (
                    RetryReason::Unreachable(e.to_string()),
                    Error::Connect(e),
                    None,
                ),
            };
            if o.max_attempts.is_some_and(|m| attempt + 1 >= m) {
                return Err(err);
            }
            let wait = logstream_model::retry::backoff(
                attempt,
                o.backoff_base,
                o.backoff_cap,
                rand::random(),
            )
            .max(at_least.unwrap_or_default());
            if let Some(f) = &o.on_retry {
                f(&Retry {
                    batch,
                    attempt,
                    reason,
                    wait,
                });
            }
            summary.retries += 1;
            attempt += 1;
            tokio::time::sleep(wait).await;
        }
    }
}
