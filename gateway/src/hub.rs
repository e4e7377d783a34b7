//! One live broadcast per deployment, fed by the store's commit listener.
//!
//! ```text
//! store commit (seq order, under the writer lock) ──> Hub::committed ──encode once──>
//!     broadcast::Sender<LiveEvent> (bounded) ──> each viewer's Receiver
//! ```
//!
//! Lines are encoded to JSON once per commit and shared (`Arc`) by every viewer. A
//! viewer that falls more than the channel's capacity behind gets `Lagged` and catches up
//! from the store by seq (see `live`): the broadcast never blocks the writer and never
//! grows without bound.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use logstream_model::{Cursor, LogRecord};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::metrics::Metrics;
use crate::store::{CommitListener, Completion, LogId};

/// One stored line with its cursor and its JSON form, shared by all viewers.
#[derive(Debug)]
pub struct WireLine {
    pub record: LogRecord,
    pub cursor: String,
    /// `{"cursor","seq","ts","step","stream","level","message"[,"metadata","redaction"]}`
    pub json: Bytes,
}

#[derive(Serialize)]
struct LineJson<'a> {
    cursor: &'a str,
    seq: u64,
    ts: String,
    step: &'a str,
    stream: &'static str,
    level: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    metadata: &'a std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "logstream_model::RedactionState::is_empty")]
    redaction: &'a logstream_model::RedactionState,
}

impl WireLine {
    pub fn new(id: &LogId, record: LogRecord) -> WireLine {
        let cursor = Cursor::new(&id.tenant, &id.deployment, record.seq, record.ts).encode();
        let json = serde_json::to_vec(&LineJson {
            cursor: &cursor,
            seq: record.seq,
            ts: logstream_model::time::format_rfc3339(record.ts),
            step: &record.step,
            stream: record.stream.as_str(),
            level: record.level.as_str(),
            message: &record.message,
            metadata: &record.metadata,
            redaction: &record.redaction,
        })
        .expect("line serialises");
        WireLine {
            record,
            cursor,
            json: Bytes::from(json),
        }
    }

    pub fn seq(&self) -> u64 {
        self.record.seq
    }
}

/// What the broadcast carries.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// One commit group, in seq order.
    Lines(Arc<[Arc<WireLine>]>),
    End(Completion),
}

/// The live channels of all deployments with viewers.
pub struct Hub {
    channels: Mutex<HashMap<LogId, broadcast::Sender<LiveEvent>>>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Hub {
        Hub {
            channels: Mutex::new(HashMap::new()),
            capacity,
            metrics,
        }
    }

    /// Subscribes to `id`'s live lines (every commit after this call is delivered).
    pub fn subscribe(&self, id: &LogId) -> broadcast::Receiver<LiveEvent> {
        let mut map = self.channels.lock();
        map.entry(id.clone())
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe()
    }

    /// Number of subscribed viewers of `id`.
    pub fn viewers(&self, id: &LogId) -> usize {
        self.channels
            .lock()
            .get(id)
            .map_or(0, |tx| tx.receiver_count())
    }

    fn sender(&self, id: &LogId) -> Option<broadcast::Sender<LiveEvent>> {
        let mut map = self.channels.lock();
        let tx = map.get(id)?;
        if tx.receiver_count() == 0 {
            map.remove(id);
            return None;
        }
        Some(tx.clone())
    }
}

impl CommitListener for Hub {
    fn committed(&self, id: &LogId, records: &[LogRecord]) {
        let bytes: usize = records.iter().map(|r| r.message.len()).sum();
        self.metrics.ingest_lines.inc_by(records.len() as u64);
        self.metrics.ingest_bytes.inc_by(bytes as u64);
        let Some(tx) = self.sender(id) else { return };
        let lines: Arc<[Arc<WireLine>]> = records
            .iter()
            .map(|r| Arc::new(WireLine::new(id, r.clone())))
            .collect();
        let _ = tx.send(LiveEvent::Lines(lines));
    }

    fn completed(&self, id: &LogId, completion: &Completion) {
        if let Some(tx) = self.channels.lock().remove(id) {
            let _ = tx.send(LiveEvent::End(*completion));
        }
    }
}
