//! One live broadcast per deployment, fed by the store's commit listener.
//!
//! ```text
//! store commit (seq order, under the writer lock) ──> Hub::committed ──encode once──>
//!     broadcast::Sender<LiveEvent> (bounded) ──> each viewer's Receiver
//! ```
//!
//! Lines are encoded to JSON, and each commit group to its SSE and WebSocket framing,
//! once per commit and shared (`Arc`/`Bytes`) by every viewer. A
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
use crate::store::{
    CatalogEvent, CatalogListener, CommitListener, Completion, DeploymentId, LogStats,
};

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
    pub fn new(id: &DeploymentId, record: LogRecord) -> WireLine {
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

/// One commit group, with its SSE and WebSocket framing encoded once for every viewer
/// that takes the whole group (no filter, no gap).
#[derive(Debug)]
pub struct Frame {
    /// The lines, in seq order.
    pub lines: Arc<[Arc<WireLine>]>,
    /// `id: <cursor>\nevent: line\ndata: <json>\n\n` for every line.
    pub sse: Bytes,
    /// `{"type":"lines","lines":[...]}`.
    pub ws: Bytes,
}

impl Frame {
    pub fn new(lines: Arc<[Arc<WireLine>]>) -> Frame {
        let sse = Bytes::from(encode_sse(&lines));
        let ws = Bytes::from(encode_ws(&lines));
        Frame { lines, sse, ws }
    }
}

/// SSE events for `lines` (the id is the line's cursor, for Last-Event-ID resume).
pub fn encode_sse(lines: &[Arc<WireLine>]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(
        lines
            .iter()
            .map(|l| l.json.len() + l.cursor.len() + 32)
            .sum(),
    );
    for l in lines {
        buf.extend_from_slice(b"id: ");
        buf.extend_from_slice(l.cursor.as_bytes());
        buf.extend_from_slice(b"\nevent: line\ndata: ");
        buf.extend_from_slice(&l.json);
        buf.extend_from_slice(b"\n\n");
    }
    buf
}

/// One WebSocket text frame for `lines`.
pub fn encode_ws(lines: &[Arc<WireLine>]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(lines.iter().map(|l| l.json.len() + 1).sum::<usize>() + 32);
    buf.extend_from_slice(br#"{"type":"lines","lines":["#);
    for (i, l) in lines.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(&l.json);
    }
    buf.extend_from_slice(b"]}");
    buf
}

/// `: hb` (an SSE comment): the heartbeat every live SSE stream sends.
pub const SSE_HEARTBEAT: &[u8] = b": hb\n\n";
/// `wait=true` on a deployment with no line yet, in SSE.
pub const SSE_WAITING: &[u8] =
    b"event: waiting\ndata: {\"message\":\"the deployment has no line yet; waiting for it\"}\n\n";
/// The same in a WebSocket text message.
pub const WS_WAITING: &str =
    r#"{"type":"waiting","message":"the deployment has no line yet; waiting for it"}"#;
/// A live stream's token expired, in SSE.
pub const SSE_AUTH_EXPIRED: &[u8] = b"event: auth_expired\ndata: {\"message\":\"the token expired; reconnect with a fresh token and Last-Event-ID\"}\n\n";

/// A completion as the wire has it.
pub fn completion(c: &Completion) -> logstream_model::wire::Completion {
    logstream_model::wire::Completion {
        status: c.status.as_str().to_owned(),
        exit_code: c.exit_code,
        last_seq: c.last_seq,
    }
}

/// `event: end` with the completion, the last SSE event of a completed deployment.
pub fn end_sse(c: &Completion) -> Bytes {
    let data = serde_json::to_string(&completion(c)).expect("a completion serialises");
    Bytes::from(format!("event: end\ndata: {data}\n\n"))
}

/// `{"seqs":[[first,last],...]}`: lines masked by a hotfix since they were sent.
fn redacted_json(seqs: &[(u64, u64)]) -> String {
    serde_json::json!({
        "seqs": seqs.iter().map(|&(a, z)| [a, z]).collect::<Vec<_>>(),
        "message": "these lines were masked in the store (an audited hotfix); read them again from history",
    })
    .to_string()
}

/// `event: redacted`: lines already sent were masked in the store since.
pub fn redacted_sse(seqs: &[(u64, u64)]) -> Bytes {
    Bytes::from(format!(
        "event: redacted\ndata: {}\n\n",
        redacted_json(seqs)
    ))
}

/// `{"type":"redacted","seqs":[[first,last],...],"message"}`.
pub fn redacted_ws(seqs: &[(u64, u64)]) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&redacted_json(seqs)).expect("JSON");
    v["type"] = "redacted".into();
    v.to_string()
}

/// `event: deleted` with `{"code","message"}`: the deployment was deleted, the last SSE
/// event.
pub fn deleted_sse(code: &str, message: &str) -> Bytes {
    Bytes::from(format!(
        "event: deleted\ndata: {}\n\n",
        serde_json::json!({"code": code, "message": message})
    ))
}

/// `{"type":"end",...}`, the last WebSocket message of a completed deployment.
pub fn end_ws(c: &Completion) -> String {
    let mut end = serde_json::to_value(completion(c)).expect("a completion serialises");
    end["type"] = "end".into();
    end.to_string()
}

/// Inclusive seq ranges of lines (what a hotfix redaction masked).
pub type SeqRanges = Arc<[(u64, u64)]>;

/// What the broadcast carries.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// One commit group.
    Lines(Arc<Frame>),
    End(Completion),
    /// Kafka mode: the deployment's partition moved to another store replica; viewers
    /// reconnect (and find the new owner).
    Moved,
    /// Stored lines (inclusive seq ranges) were masked by an audited hotfix: viewers
    /// are told (`redacted`), edges drop what their windows hold of them.
    Redacted(SeqRanges),
    /// The deployment was deleted: viewers are closed (`deployment_deleted`).
    Deleted,
}

/// A change of a tenant's deployments (the change feed, `/v1/deployments/events`).
#[derive(Debug, Clone)]
pub struct DeploymentChange {
    pub deployment: String,
    pub event: CatalogEvent,
    pub stats: LogStats,
}

/// The live channels of all deployments with viewers, and of tenants' change feeds.
pub struct Hub {
    channels: Mutex<HashMap<DeploymentId, broadcast::Sender<LiveEvent>>>,
    feeds: Mutex<HashMap<String, broadcast::Sender<Arc<DeploymentChange>>>>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Hub {
        Hub {
            channels: Mutex::new(HashMap::new()),
            feeds: Mutex::new(HashMap::new()),
            capacity,
            metrics,
        }
    }

    /// Subscribes to `id`'s live lines (every commit after this call is delivered).
    pub fn subscribe(&self, id: &DeploymentId) -> broadcast::Receiver<LiveEvent> {
        let mut map = self.channels.lock();
        map.entry(id.clone())
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe()
    }

    /// Subscribes to `tenant`'s deployment changes (every change after this call).
    pub fn subscribe_changes(&self, tenant: &str) -> broadcast::Receiver<Arc<DeploymentChange>> {
        self.feeds
            .lock()
            .entry(tenant.to_owned())
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe()
    }

    /// Number of subscribed viewers of `id`.
    pub fn viewers(&self, id: &DeploymentId) -> usize {
        self.channels
            .lock()
            .get(id)
            .map_or(0, |tx| tx.receiver_count())
    }

    /// Ends the live channels of the deployments `moved` picks: their viewers are told
    /// to reconnect.
    pub fn moved(&self, moved: impl Fn(&DeploymentId) -> bool) {
        let mut map = self.channels.lock();
        let ids: Vec<DeploymentId> = map.keys().filter(|id| moved(id)).cloned().collect();
        for id in ids {
            if let Some(tx) = map.remove(&id) {
                let _ = tx.send(LiveEvent::Moved);
            }
        }
    }

    /// Tells `id`'s viewers that lines in `seqs` were masked in the store.
    pub fn redacted(&self, id: &DeploymentId, seqs: &[(u64, u64)]) {
        if let Some(tx) = self.sender(id) {
            let _ = tx.send(LiveEvent::Redacted(seqs.into()));
        }
    }

    /// Ends `id`'s live channel: its viewers are told it was deleted.
    pub fn deleted(&self, id: &DeploymentId) {
        if let Some(tx) = self.channels.lock().remove(id) {
            let _ = tx.send(LiveEvent::Deleted);
        }
    }

    fn sender(&self, id: &DeploymentId) -> Option<broadcast::Sender<LiveEvent>> {
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
    fn committed(&self, id: &DeploymentId, records: &[LogRecord]) {
        let bytes: usize = records.iter().map(|r| r.message.len()).sum();
        self.metrics.ingest_lines.inc_by(records.len() as u64);
        self.metrics.ingest_bytes.inc_by(bytes as u64);
        let Some(tx) = self.sender(id) else { return };
        let lines: Arc<[Arc<WireLine>]> = records
            .iter()
            .map(|r| Arc::new(WireLine::new(id, r.clone())))
            .collect();
        let _ = tx.send(LiveEvent::Lines(Arc::new(Frame::new(lines))));
    }

    fn completed(&self, id: &DeploymentId, completion: &Completion) {
        if let Some(tx) = self.channels.lock().remove(id) {
            let _ = tx.send(LiveEvent::End(*completion));
        }
    }
}

impl CatalogListener for Hub {
    fn changed(&self, tenant: &str, deployment: &str, event: &CatalogEvent, stats: &LogStats) {
        let mut feeds = self.feeds.lock();
        let Some(tx) = feeds.get(tenant) else { return };
        if tx.receiver_count() == 0 {
            feeds.remove(tenant);
            return;
        }
        let _ = tx.send(Arc::new(DeploymentChange {
            deployment: deployment.to_owned(),
            event: event.clone(),
            stats: stats.clone(),
        }));
    }
}
