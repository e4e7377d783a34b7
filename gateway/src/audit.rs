//! The audit log: every read, stream open/close, export, admin action, completion,
//! retention deletion and (aggregated) rejection, appended to a hash-chained log in the
//! segment store's format (`<data>/store/system/audit`, checked by
//! `logstream-gateway store verify`).
//!
//! ```text
//! reads, stream opens ──Audit::require(Accepted)──> queue ──> writer: batch, append
//! exports, admin     ──Audit::require(Durable)───> queue      (one fsync per batch)
//!      waits ≤ audit_wait: to be queued (reads) or for its batch's fsync (the others);
//!      else the request is refused, `audit_unavailable` (503, retryable)
//! noise ──Audit::noise──> counts per (action, client, reason) ──every interval──> queue
//! ```
//!
//! Nothing is dropped: what is served is recorded first. Exports and admin actions wait
//! until their record is durable; reads wait until it is queued (the writer's next group
//! commit makes it durable: a crash inside that window is the only way to lose one). A batch that fails to write is retried,
//! with backoff, before the writer takes anything else: the queue fills and further
//! requests are refused, so a record once taken is never given up. Noise (rejected
//! tokens, refused requests) costs one record per (action, client, reason) per interval
//! with a `count`, so nobody can grow the audit log at will by sending bad requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use logstream_model::{Level, LogRecord};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::core::Error;
use crate::metrics::Metrics;
use crate::store::{DeploymentId, DeploymentLog, Store, StoreError};

/// One audited event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditEvent {
    /// What happened: `read`, `list`, `stream_open`, `stream_close`, `export`,
    /// `auth_rejected`, `retention_delete`, `complete`, `register_secrets`, ...
    pub action: String,
    /// Who (the token's subject; empty when no valid token).
    pub subject: String,
    /// The tenant acted on (empty for rejected tokens).
    pub tenant: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub deployment: String,
    /// `ok`, or why it was refused.
    pub result: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client: String,
    /// For aggregated noise: how many times it happened in the interval that ends at
    /// this record (absent: once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Who handed the record to this log when it was made elsewhere (an edge's
    /// subject); absent for the store's own records.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub via: String,
}

/// The log id of the audit log.
pub fn audit_log_id() -> DeploymentId {
    DeploymentId::new("_system", "audit")
}

/// Distinct (action, client, reason) keys counted per interval; beyond it, further
/// clients are counted under client `*` (memory stays bounded whatever the flood).
const MAX_NOISE_KEYS: usize = 10_000;

/// What a served request waits for before it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Queued for the writer (reads, listings, stream opens): durable with its batch.
    Accepted,
    /// Durable (exports, completions, secret registrations and other admin actions).
    Durable,
}

enum Msg {
    /// An event; `done` hears whether its batch became durable.
    Event(AuditEvent, Option<oneshot::Sender<bool>>),
    /// Answered once every event queued before it is durable.
    Flush(oneshot::Sender<()>),
}

/// Noise counted since the last aggregate record: (action, client, reason) -> (tenant,
/// count).
type NoiseCounts = HashMap<(String, String, String), (String, u64)>;

/// Writes one batch of records durably; `Err` says why not (the batch is retried).
pub type RemoteWrite = Arc<
    dyn Fn(Vec<AuditEvent>) -> futures::future::BoxFuture<'static, Result<(), String>>
        + Send
        + Sync,
>;

/// Where the writer puts the records.
pub enum Sink {
    /// The store's own audit log (roles `store` and `all`).
    Log(Arc<DeploymentLog>),
    /// Another process's audit log: an edge has no disk of its own and sends its
    /// records to its store (`POST /v1/audit/events`), durable once that answers.
    Remote(RemoteWrite),
}

impl Sink {
    async fn write(&self, events: &[AuditEvent]) -> Result<(), String> {
        match self {
            Sink::Log(log) => {
                let records = events
                    .iter()
                    .map(|e| LogRecord {
                        // The action is the event's own `action` field (in the message),
                        // not the line's step: the audit log has no steps.
                        level: if e.result.starts_with("ok") {
                            Level::Info
                        } else {
                            Level::Warn
                        },
                        message: serde_json::to_string(e).expect("event serialises"),
                        ..LogRecord::default()
                    })
                    .collect();
                let log = log.clone();
                match tokio::task::spawn_blocking(move || log.append(records, None)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(format!("the write panicked: {e}")),
                }
            }
            Sink::Remote(write) => write(events.to_vec()).await,
        }
    }
}

/// Handle to the audit writer.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Msg>,
    noise: Arc<Mutex<NoiseCounts>>,
    metrics: Arc<Metrics>,
    wait: Duration,
}

impl Audit {
    /// Opens the audit log and starts its writer task and the noise aggregator (one
    /// record per key every `interval`).
    pub fn start(
        store: &Store,
        metrics: Arc<Metrics>,
        wait: Duration,
        interval: Duration,
        queue: usize,
    ) -> Result<Audit, StoreError> {
        let log = store.log(&audit_log_id(), true)?.expect("created");
        Ok(Audit::start_with(
            Sink::Log(log),
            metrics,
            wait,
            interval,
            queue,
        ))
    }

    /// Starts the writer over `sink` and the noise aggregator (one record per key every
    /// `interval`).
    pub fn start_with(
        sink: Sink,
        metrics: Arc<Metrics>,
        wait: Duration,
        interval: Duration,
        queue: usize,
    ) -> Audit {
        let (tx, rx) = mpsc::channel::<Msg>(queue);
        tokio::spawn(writer(sink, rx, metrics.clone()));
        let audit = Audit {
            tx,
            noise: Arc::default(),
            metrics,
            wait,
        };
        let a = audit.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if a.tx.is_closed() {
                    return;
                }
                a.flush_noise().await;
            }
        });
        audit
    }

    /// Records `event` and waits for what `need` says: the caller serves its request
    /// only on `Ok`. A writer that cannot take it (a full queue behind a stalled or
    /// failing disk) or, for `Durable`, make it durable within the configured wait
    /// refuses the request with a retryable `audit_unavailable`.
    pub async fn require(&self, event: AuditEvent, need: Need) -> Result<(), Error> {
        let started = Instant::now();
        let (done, durable) = oneshot::channel();
        let done = (need == Need::Durable).then_some(done);
        let deadline = tokio::time::Instant::now() + self.wait;
        let queued = tokio::time::timeout_at(deadline, self.tx.send(Msg::Event(event, done)));
        let result = match (queued.await, need) {
            (Ok(Ok(())), Need::Accepted) => Ok(()),
            (Ok(Ok(())), Need::Durable) => match tokio::time::timeout_at(deadline, durable).await {
                Ok(Ok(true)) => Ok(()),
                _ => Err(()),
            },
            _ => Err(()),
        };
        self.metrics.audit_queue.set(self.depth());
        self.metrics
            .audit_wait
            .observe(started.elapsed().as_secs_f64());
        result.map_err(|()| {
            self.metrics.audit_refused.inc();
            Error::unavailable(
                "audit_unavailable",
                "the audit record of this request could not be written in time; the request \
                 was not served, retry it",
                Duration::from_secs(1),
            )
        })
    }

    /// Records an event nobody waits for (a stream closing, a retention pass): it is
    /// never dropped; when the queue is full it waits in a task of its own.
    pub fn record(&self, event: AuditEvent) {
        if let Err(mpsc::error::TrySendError::Full(msg)) = self.tx.try_send(Msg::Event(event, None))
        {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(msg).await;
            });
        }
        self.metrics.audit_queue.set(self.depth());
    }

    /// Counts a noisy event (a rejected token, a refused request): one record per
    /// (action, client, reason) per interval carries the count.
    pub fn noise(&self, action: &str, tenant: &str, client: &str, reason: &str) {
        let mut noise = self.noise.lock();
        let full = noise.len() >= MAX_NOISE_KEYS;
        let key = (action.to_owned(), client.to_owned(), reason.to_owned());
        let key = if full && !noise.contains_key(&key) {
            (action.to_owned(), "*".to_owned(), reason.to_owned())
        } else {
            key
        };
        let entry = noise.entry(key).or_insert_with(|| (tenant.to_owned(), 0));
        entry.1 += 1;
    }

    /// Writes the counted noise as aggregate records.
    async fn flush_noise(&self) {
        let counted = std::mem::take(&mut *self.noise.lock());
        for ((action, client, result), (tenant, n)) in counted {
            let event = AuditEvent {
                action,
                subject: String::new(),
                tenant,
                deployment: String::new(),
                result,
                client,
                count: Some(n),
                via: String::new(),
            };
            let _ = self.tx.send(Msg::Event(event, None)).await;
        }
    }

    /// Waits until every event recorded (and all noise counted) before this call is
    /// durable.
    pub async fn flush(&self) {
        self.flush_noise().await;
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    fn depth(&self) -> i64 {
        (self.tx.max_capacity() - self.tx.capacity()) as i64
    }
}

async fn writer(sink: Sink, mut rx: mpsc::Receiver<Msg>, metrics: Arc<Metrics>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 4096).await > 0 {
        metrics.audit_queue.set(rx.len() as i64);
        let mut flushes = Vec::new();
        let mut waiting = Vec::new();
        // (event, whether a request waits for its durability)
        let mut events: Vec<(AuditEvent, bool)> = Vec::with_capacity(batch.len());
        for m in batch.drain(..) {
            match m {
                Msg::Flush(tx) => flushes.push(tx),
                Msg::Event(e, done) => {
                    events.push((e, done.is_some()));
                    waiting.extend(done);
                }
            }
        }
        let mut backoff = Duration::from_millis(50);
        while !events.is_empty() {
            let n = events.len();
            let started = Instant::now();
            let plain: Vec<AuditEvent> = events.iter().map(|(e, _)| e.clone()).collect();
            let written = sink.write(&plain).await;
            metrics.audit_write.observe(started.elapsed().as_secs_f64());
            match written {
                Ok(()) => {
                    for w in waiting.drain(..) {
                        let _ = w.send(true);
                    }
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, records = n, "audit log write failed; retrying before taking more");
                }
            }
            metrics.audit_write_failures.inc();
            // Requests waiting for durability are refused now (they were not served), so
            // their records go; the others were served and are written, whatever it takes.
            for w in waiting.drain(..) {
                let _ = w.send(false);
            }
            events.retain(|(_, waited)| !waited);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}
