//! Object storage for sealed segments: what the store needs of it ([`Remote`]), the
//! per-deployment manifest, and the store-wide bookkeeping of the offloader (which logs
//! have segments to upload, which local copies may be evicted, least recently read
//! first).
//!
//! ```text
//! <remote root>/tenants/<tenant>/<deployment>/manifest.json
//!     .../<first_seq:020>-<blake3 of the .seg, 16 hex>.seg   the segment, byte for byte
//!     .../<first_seq:020>-<same>.idx                         its index
//!     .../redactions-<blake3, 16 hex>.ndjson                 the audit ledger, if any
//! ```
//!
//! Object names carry their content hash, so two replicas (Kafka mode) or a retried
//! upload never write different bytes under one name. The manifest is the truth of what
//! is stored: an object it does not name is an orphan (an upload cut short, a segment
//! retention deleted) and the sweep deletes it once older than the grace period. Each
//! deployment directory keeps `remote.json`, the manifest as last written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::DeploymentId;
use crate::meta::Completion;

/// Why a request to object storage failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    #[error("not found")]
    NotFound,
    /// Unreachable, timed out, refused (credentials), throttled: worth retrying.
    #[error("{0}")]
    Unavailable(String),
}

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteObject {
    /// Relative to the store's root in object storage.
    pub key: String,
    pub size: u64,
    /// Unix ns.
    pub last_modified: i64,
}

/// Object storage as the store sees it: blocking calls (the store has no async runtime;
/// the gateway adapts the `object_store` crate). Keys are relative to the configured
/// bucket and prefix.
pub trait Remote: Send + Sync {
    fn put(&self, key: &str, data: &[u8]) -> Result<(), RemoteError>;
    fn get(&self, key: &str) -> Result<Vec<u8>, RemoteError>;
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, RemoteError>;
    /// Deleting a missing object succeeds.
    fn delete(&self, key: &str) -> Result<(), RemoteError>;
    fn list(&self, prefix: &str) -> Result<Vec<RemoteObject>, RemoteError>;
    /// Where the objects are, for messages (`s3://bucket/prefix`).
    fn describe(&self) -> String;
}

/// One uploaded segment, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSegment {
    pub first_seq: u64,
    pub last_seq: u64,
    /// Size of the `.seg` object.
    pub bytes: u64,
    pub blocks: u64,
    /// Hex BLAKE3 of the `.seg` and of the `.idx` object.
    pub seg_blake3: String,
    pub idx_bytes: u64,
    pub idx_blake3: String,
    pub min_ts: i64,
    pub max_ts: i64,
    /// Store wallclock of the segment's last block (retention counts from it).
    pub last_written_at: i64,
    /// Hex BLAKE3 of the last block (the next segment's first block chains to it) and
    /// its last line's timestamp.
    pub last_hash: String,
    pub last_ts: i64,
}

impl RemoteSegment {
    fn stem(&self) -> String {
        // A manifest is read from object storage: a short hash must not panic.
        let h = self.seg_blake3.get(..16).unwrap_or(&self.seg_blake3);
        format!("{:020}-{h}", self.first_seq)
    }

    /// The `.seg` object's key under the deployment's prefix.
    pub fn seg_name(&self) -> String {
        format!("{}.seg", self.stem())
    }

    pub fn idx_name(&self) -> String {
        format!("{}.idx", self.stem())
    }
}

/// `manifest.json` in object storage and `remote.json` beside the log: what of the
/// deployment is in object storage, and what a replica needs to adopt it (Kafka mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "version")]
pub enum ManifestFile {
    #[serde(rename = "1")]
    V1(Manifest),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub created_at: i64,
    pub completion: Option<Completion>,
    pub retained_from: u64,
    pub retained_prev_hash: String,
    pub steps: Vec<String>,
    /// Producer marks (source, last batch id, its last seq) up to the end of the last
    /// uploaded segment: a replica that adopts the log recognises replayed batches.
    pub producers: Vec<(String, u64, u64)>,
    /// In seq order, dense from `retained_from`.
    pub segments: Vec<RemoteSegment>,
    /// The audit ledger of the log's rewritten blocks (`redactions.ndjson`), so a
    /// replica that adopts the log can verify them. Absent without rewrites (and in
    /// manifests written before they existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<RemoteLedger>,
}

/// The ledger object a manifest names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLedger {
    pub bytes: u64,
    /// Hex BLAKE3 of the object.
    pub blake3: String,
}

impl RemoteLedger {
    /// The object's key under the deployment's prefix.
    pub fn name(&self) -> String {
        let h = self.blake3.get(..16).unwrap_or(&self.blake3);
        format!("redactions-{h}.ndjson")
    }
}

/// The prefix of a deployment's objects.
pub fn log_prefix(id: &DeploymentId) -> String {
    format!("tenants/{}/{}/", id.tenant, id.deployment)
}

pub const MANIFEST: &str = "manifest.json";

/// Counters and state of the offloader, for metrics and status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Bytes of segments on local disk (active, not yet uploaded, and cached copies).
    pub local_bytes: u64,
    /// Bytes of segments held only in object storage.
    pub remote_only_bytes: u64,
    /// Logs with sealed segments not yet uploaded (or a manifest to rewrite).
    pub pending_logs: u64,
    /// Local copies exceed the budget and nothing more can be evicted (uploads are
    /// behind or failing): reported, never fixed by dropping data.
    pub budget_exceeded: bool,
    /// The last upload pass failed.
    pub failing: bool,
    pub uploaded_segments: u64,
    pub uploaded_bytes: u64,
    pub evicted_segments: u64,
    pub remote_reads: u64,
    pub remote_read_bytes: u64,
    pub swept_objects: u64,
    pub deleted_objects: u64,
}

/// The store's side of object storage: the client and the offloader's bookkeeping.
pub struct Tiering {
    pub(crate) remote: Arc<dyn Remote>,
    /// Adopt a log from object storage when it is created here and the manifest exists
    /// (Kafka mode: a replica taking a partition over).
    pub(crate) adopt: bool,
    pending: Mutex<BTreeSet<DeploymentId>>,
    /// Uploaded segments with a local copy (evictable): first seq -> last read (ns).
    cached: Mutex<HashMap<DeploymentId, BTreeMap<u64, i64>>>,
    /// One upload pass or sweep at a time.
    pub(crate) pass: Mutex<()>,
    /// Keys being uploaded right now (the sweep leaves them alone).
    pub(crate) in_flight: Mutex<BTreeSet<String>>,
    pub(crate) remote_only_bytes: AtomicU64,
    pub(crate) scanned: AtomicBool,
    pub(crate) budget_exceeded: AtomicBool,
    pub(crate) failing: AtomicBool,
    pub(crate) uploaded_segments: AtomicU64,
    pub(crate) uploaded_bytes: AtomicU64,
    pub(crate) evicted_segments: AtomicU64,
    pub(crate) remote_reads: AtomicU64,
    pub(crate) remote_read_bytes: AtomicU64,
    pub(crate) swept_objects: AtomicU64,
    pub(crate) deleted_objects: AtomicU64,
}

impl Tiering {
    pub fn new(remote: Arc<dyn Remote>, adopt: bool) -> Tiering {
        Tiering {
            remote,
            adopt,
            pending: Mutex::default(),
            cached: Mutex::default(),
            pass: Mutex::default(),
            in_flight: Mutex::default(),
            remote_only_bytes: AtomicU64::new(0),
            scanned: AtomicBool::new(false),
            budget_exceeded: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            uploaded_segments: AtomicU64::new(0),
            uploaded_bytes: AtomicU64::new(0),
            evicted_segments: AtomicU64::new(0),
            remote_reads: AtomicU64::new(0),
            remote_read_bytes: AtomicU64::new(0),
            swept_objects: AtomicU64::new(0),
            deleted_objects: AtomicU64::new(0),
        }
    }

    /// A log has a newly sealed segment (or a manifest to rewrite).
    pub(crate) fn mark_pending(&self, id: &DeploymentId) {
        self.pending.lock().insert(id.clone());
    }

    pub(crate) fn take_pending(&self) -> Vec<DeploymentId> {
        std::mem::take(&mut *self.pending.lock())
            .into_iter()
            .collect()
    }

    pub(crate) fn pending_len(&self) -> usize {
        self.pending.lock().len()
    }

    /// An uploaded segment whose local copy exists.
    pub(crate) fn add_cached(&self, id: &DeploymentId, first_seq: u64, read_at: i64) {
        self.cached
            .lock()
            .entry(id.clone())
            .or_default()
            .insert(first_seq, read_at);
    }

    pub(crate) fn remove_cached(&self, id: &DeploymentId, first_seq: u64) -> bool {
        let mut cached = self.cached.lock();
        let Some(segs) = cached.get_mut(id) else {
            return false;
        };
        let removed = segs.remove(&first_seq).is_some();
        if segs.is_empty() {
            cached.remove(id);
        }
        removed
    }

    /// Forgets every cached segment of a log (deleted).
    pub(crate) fn forget_log(&self, id: &DeploymentId) {
        self.cached.lock().remove(id);
    }

    /// A read of a local segment: it moves to the back of the eviction order.
    pub(crate) fn touch(&self, id: &DeploymentId, first_seq: u64, now: i64) {
        if let Some(c) = self
            .cached
            .lock()
            .get_mut(id)
            .and_then(|s| s.get_mut(&first_seq))
        {
            *c = now;
        }
    }

    /// Cached segments (log, first seq), least recently read first.
    pub(crate) fn eviction_order(&self) -> Vec<(DeploymentId, u64)> {
        let cached = self.cached.lock();
        let mut all: Vec<(i64, DeploymentId, u64)> = cached
            .iter()
            .flat_map(|(id, segs)| {
                segs.iter()
                    .map(move |(first, read_at)| (*read_at, id.clone(), *first))
            })
            .collect();
        all.sort_unstable();
        all.into_iter().map(|(_, id, f)| (id, f)).collect()
    }

    pub(crate) fn count_remote_read(&self, bytes: usize) {
        self.remote_reads.fetch_add(1, Ordering::Relaxed);
        self.remote_read_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn describe(&self) -> String {
        self.remote.describe()
    }
}
