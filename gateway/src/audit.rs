//! The audit log: every read, stream open/close, export, token rejection, retention
//! deletion and admin action, appended to a hash-chained log in the segment store's
//! format (`<data>/store/system/audit`, checked by `logstream-gateway store verify`).
//!
//! ```text
//! handlers ──Audit::record (never blocks)──> mpsc(bounded) ──> writer task
//!                                   full: counted in logstream_audit_dropped_total
//! writer task ──batch──> DeploymentLog::append (fsync, one per batch)
//! ```

use std::sync::Arc;

use logstream_model::{Level, LogRecord};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

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
}

/// The log id of the audit log.
pub fn audit_log_id() -> DeploymentId {
    DeploymentId::new("_system", "audit")
}

enum Msg {
    Event(AuditEvent),
    /// Answered once every event queued before it is durable.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Handle to the audit writer.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Msg>,
    metrics: Arc<Metrics>,
}

impl Audit {
    /// Opens the audit log and starts its writer task.
    pub fn start(store: &Store, metrics: Arc<Metrics>) -> Result<Audit, StoreError> {
        let log = store.log(&audit_log_id(), true)?.expect("created");
        let (tx, rx) = mpsc::channel::<Msg>(16_384);
        tokio::spawn(writer(log, rx, metrics.clone()));
        Ok(Audit { tx, metrics })
    }

    /// Records an event; never waits. A full queue (the disk cannot keep up) is counted.
    pub fn record(&self, event: AuditEvent) {
        if self.tx.try_send(Msg::Event(event)).is_err() {
            self.metrics.audit_dropped.inc();
        }
    }

    /// Waits until every event recorded before this call is durable.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn writer(log: Arc<DeploymentLog>, mut rx: mpsc::Receiver<Msg>, metrics: Arc<Metrics>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 4096).await > 0 {
        let mut flushes = Vec::new();
        let mut records = Vec::with_capacity(batch.len());
        for m in batch.drain(..) {
            match m {
                Msg::Flush(tx) => flushes.push(tx),
                Msg::Event(e) => {
                    let level = if e.result.starts_with("ok") {
                        Level::Info
                    } else {
                        Level::Warn
                    };
                    // The action is the event's own `action` field (in the message),
                    // not the line's step: the audit log has no steps.
                    records.push(LogRecord {
                        level,
                        message: serde_json::to_string(&e).expect("event serialises"),
                        ..LogRecord::default()
                    });
                }
            }
        }
        if !records.is_empty() {
            let n = records.len() as u64;
            let log = log.clone();
            match tokio::task::spawn_blocking(move || log.append(records, None)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    metrics.audit_dropped.inc_by(n);
                    tracing::error!(error = %e, lost = n, "audit log write failed");
                }
                Err(e) => tracing::error!(error = %e, "audit writer panicked"),
            }
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}
