//! One deployment's log: append with group commit, recovery, paged reads, completion.
//!
//! ```text
//! append() ─┐                      leader (first waiter while no flush runs)
//! append() ─┼─> queue ──take all──> dedup by (source, batch) ─> assign seqs ─> encode
//! complete()┘                       blocks ─> pwrite + fdatasync (one per group) ─> index
//!                                   ─> publish to the listener in seq order ─> wake waiters
//! ```
//!
//! Readers never take the writer lock: they snapshot the segment list and the durable
//! seq, and read blocks with `pread` through the index.
//!
//! Locks, always taken in this order (any prefix may be skipped):
//! `maintenance` -> `remote_state` -> `writer` -> `swap` -> `view` -> `index_cache`.
//! `maintenance` serialises what replaces or deletes segment files (redaction,
//! retention, eviction, deletion, compaction); readers hold `swap` shared for a whole
//! read, and a redaction holds it exclusively only while it renames a rewritten segment
//! and its index into place and updates the view, so a read sees each segment wholly
//! before or wholly after.
//!
//! This file holds the state shared by the submodules (`DeploymentLog`, the writer
//! state, the readers' view of the segments), `open`, `stats`, `completion` and
//! `durable_seq`. The rest:
//! - `writer`: `append` and `complete` through the group-commit queue, block encoding,
//!   `pwrite` + `fdatasync`, segment rolls, sealing.
//! - `read`: paged reads through the (cached) block indexes.
//! - `retention`: deleting expired sealed segments.
//! - `segment`: segment and index files, block reads and scans, and the recovery `open`
//!   runs (rebuild a sealed segment's index, truncate the active segment's torn tail).
//! - `redact`: audited rewrites of stored lines (hotfix redaction) and closing a log
//!   that is being deleted.

mod offload;
mod read;
mod redact;
mod retention;
mod segment;
mod writer;

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use logstream_model::LogRecord;
use parking_lot::{Condvar, Mutex, RwLock};

pub use super::BatchId;
use super::format::{Hash, IndexEntry};
use super::meta::{self, Completion, Meta, MetaFile};
use super::remote::{Manifest, RemoteSegment, Tiering};
use super::{Catalog, DeploymentId, StoreConfig, StoreError, StoreHooks};

pub(crate) use offload::{delete_objects, fetch_manifest, local_ledger, local_manifest};
pub use redact::{HOTFIX_DETECTOR, RedactOutcome, RedactRequest};
use segment::{
    create_segment, last_block_hash, list_segments, load_producers, open_sealed, recover_active,
};
use writer::Queue;

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Seqs given to the lines (`first_seq..=last_seq`); for a duplicate batch or an empty
    /// one, `first_seq > last_seq` and `last_seq` is the seq the earlier copy ended at.
    pub first_seq: u64,
    pub last_seq: u64,
    /// The batch (same source, batch id not above the last stored one) was already stored.
    pub duplicate: bool,
    /// Timestamp of the last stored line (for its cursor).
    pub last_ts: i64,
}

impl AppendOutcome {
    pub fn accepted(&self) -> u64 {
        (self.last_seq + 1).saturating_sub(self.first_seq)
    }
}

/// A page of a read.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Matching lines in the order read (ascending forward, descending backward).
    pub records: Vec<LogRecord>,
    /// The last seq examined: continue after it (forward) or before it (backward).
    pub scanned_to: u64,
    /// Nothing more to read in this direction right now.
    pub exhausted: bool,
}

/// Which way a read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// Counts and state of one deployment's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStats {
    pub first_seq: u64,
    pub last_seq: u64,
    pub bytes: u64,
    pub segments: usize,
    pub created_at: i64,
    /// Store wallclock of the last append (the creation time while empty).
    pub updated_at: i64,
    pub first_ts: Option<i64>,
    pub last_ts: Option<i64>,
    pub completion: Option<Completion>,
    /// Step names in the order they first appeared (at most [`MAX_STEPS`]).
    pub steps: Vec<String>,
}

/// How many step names a log records for listings; later new names are not listed.
pub const MAX_STEPS: usize = 256;

impl LogStats {
    pub fn lines(&self) -> u64 {
        (self.last_seq + 1).saturating_sub(self.first_seq)
    }
}

/// One segment as readers see it.
#[derive(Clone)]
struct SegmentView {
    first_seq: u64,
    /// `first_seq - 1` while empty.
    last_seq: u64,
    bytes: u64,
    max_ts: i64,
    min_ts: i64,
    last_written_at: i64,
    /// In memory for the active segment; loaded on demand for sealed ones.
    index: Option<Arc<Vec<IndexEntry>>>,
    /// Set once the segment is uploaded to object storage and verified.
    remote: Option<Arc<RemoteSegment>>,
    /// The `.seg` file is on local disk (false once evicted: reads go to `remote`).
    local: bool,
}

impl View {
    /// The last append's store wallclock (the creation time while empty).
    fn updated_at(&self) -> i64 {
        self.segments
            .iter()
            .map(|s| s.last_written_at)
            .fold(self.meta.created_at, i64::max)
    }
}

struct View {
    segments: Vec<SegmentView>,
    durable_seq: u64,
    meta: Meta,
    /// `steps.json`: step names in order of appearance, written ahead of the lines.
    steps: Vec<String>,
}

struct Writer {
    seg: File,
    idx: File,
    seg_first_seq: u64,
    seg_len: u64,
    seg_blocks: u32,
    seg_created_at: i64,
    last_hash: Hash,
    next_seq: u64,
    last_ts: i64,
    max_ts_cum: i64,
    producers: HashMap<String, (u64, u64)>,
    /// Set when a failed write could not be rolled back: appends fail until reopen.
    poisoned: Option<String>,
}

/// A deployment's append-only, hash-chained log.
pub struct DeploymentLog {
    pub id: DeploymentId,
    dir: PathBuf,
    cfg: Arc<StoreConfig>,
    hooks: Arc<StoreHooks>,
    queue: Mutex<Queue>,
    cond: Condvar,
    writer: Mutex<Option<Writer>>,
    view: RwLock<View>,
    /// Recently used sealed-segment indexes (first_seq, entries), most recent last.
    index_cache: Mutex<Vec<(u64, Arc<Vec<IndexEntry>>)>>,
    /// The tenant's catalog, told of every commit and the completion (system logs have
    /// none).
    pub(crate) catalog: Option<Arc<Catalog>>,
    /// Object storage (tenant logs of a store with `[object_store]`).
    pub(crate) tiering: Option<Arc<Tiering>>,
    /// `remote.json`: the manifest as last written to object storage. Also serialises
    /// offload passes of this log (and a redaction's rewrites of uploaded segments).
    remote_state: Mutex<Option<Manifest>>,
    /// Serialises the operations that replace or delete segment files: redaction,
    /// retention, eviction, deletion, compaction (see the lock order above).
    maintenance: Mutex<()>,
    /// Held shared by a read, exclusively while a rewritten segment is swapped in.
    swap: RwLock<()>,
    /// Set once `Store::delete` closed the log: appends and redactions answer NotFound.
    deleted: AtomicBool,
}

impl DeploymentLog {
    /// Opens (and with `create`, creates) the log in `dir`, recovering a torn tail.
    pub(crate) fn open(
        id: DeploymentId,
        dir: PathBuf,
        cfg: Arc<StoreConfig>,
        hooks: Arc<StoreHooks>,
        create: bool,
        tiering: Option<Arc<Tiering>>,
    ) -> Result<Option<DeploymentLog>, StoreError> {
        let meta_path = dir.join("meta.json");
        if create
            && let Some(t) = tiering.as_ref().filter(|t| t.adopt)
            && !meta_path.exists()
        {
            offload::adopt(&id, &dir, t)?;
        }
        let meta = match meta::read_atomic::<MetaFile>(&meta_path)? {
            Some(MetaFile::V1(m)) => m,
            None if !create => return Ok(None),
            None => {
                fs::create_dir_all(&dir)
                    .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
                let m = Meta {
                    created_at: hooks.clock.now(),
                    completion: None,
                    retained_from: 1,
                    retained_prev_hash: String::new(),
                };
                meta::write_atomic(&meta_path, &MetaFile::V1(m.clone()))?;
                meta::sync_dir(dir.parent().expect("deployment dir has a parent"))?;
                m
            }
        };
        redact::remove_leftovers(&dir)?;
        // Logs written before steps were recorded have no file: their listing shows none.
        let steps = meta::read_atomic::<Vec<String>>(&dir.join("steps.json"))?.unwrap_or_default();
        let manifest = offload::local_manifest(&dir)?;
        let remote_segs: HashMap<u64, Arc<RemoteSegment>> = manifest
            .iter()
            .flat_map(|m| &m.segments)
            .filter(|s| s.first_seq >= meta.retained_from)
            .map(|s| (s.first_seq, Arc::new(s.clone())))
            .collect();
        let local_seqs = list_segments(&dir)?;
        let mut seg_seqs: Vec<u64> = local_seqs
            .iter()
            .copied()
            .chain(remote_segs.keys().copied())
            .collect();
        seg_seqs.sort_unstable();
        seg_seqs.dedup();
        // A running log's active segment is never uploaded: a log whose newest segment
        // is in object storage (adopted) starts a new one after it.
        let next = match seg_seqs.last() {
            None => Some(meta.retained_from),
            Some(last) => remote_segs.get(last).map(|s| s.last_seq + 1),
        };
        if let Some(next) = next
            && meta.completion.is_none()
        {
            create_segment(&dir, next)?;
            seg_seqs.push(next);
        }
        let is_local =
            |first: &u64| local_seqs.binary_search(first).is_ok() || next == Some(*first);
        let mut segments = Vec::with_capacity(seg_seqs.len());
        let mut writer = None;
        let anchor = if meta.retained_from > 1 {
            meta::unhex(&meta.retained_prev_hash).unwrap_or([0; 32])
        } else {
            [0; 32]
        };
        let mut last_hash = anchor;
        let mut max_ts_cum = i64::MIN;
        let mut last_ts = 0;
        for (i, &first) in seg_seqs.iter().enumerate() {
            let active = i + 1 == seg_seqs.len() && meta.completion.is_none();
            let remote = remote_segs.get(&first).cloned();
            let (mut view, w) = if active {
                let (view, w) = recover_active(&dir, first, &cfg, hooks.clock.now())?;
                (view, Some(w))
            } else if is_local(&first) {
                (open_sealed(&dir, first)?, None)
            } else {
                let r = remote.as_ref().expect("a segment is local or remote");
                (
                    offload::open_remote(&id, &dir, r, tiering.as_deref())?,
                    None,
                )
            };
            view.remote = remote;
            if let Some(idx) = view.index.as_ref().and_then(|i| i.last()) {
                max_ts_cum = max_ts_cum.max(idx.max_ts_cum);
            }
            max_ts_cum = max_ts_cum.max(view.max_ts);
            if view.last_seq >= view.first_seq {
                let (hash, ts) = match (&view.remote, view.local) {
                    (Some(r), false) => (
                        meta::unhex(&r.last_hash).ok_or_else(|| StoreError::Corrupt {
                            path: dir.join(offload::REMOTE_FILE),
                            reason: format!("bad last_hash of segment {}", r.first_seq),
                        })?,
                        r.last_ts,
                    ),
                    _ => last_block_hash(&dir, &view)?,
                };
                last_hash = hash;
                last_ts = ts;
            }
            writer = w;
            segments.push(view);
        }
        let durable_seq = segments
            .last()
            .map(|s| s.last_seq)
            .unwrap_or(meta.retained_from - 1);
        let writer = match writer {
            Some(mut w) => {
                w.last_hash = last_hash;
                w.next_seq = durable_seq + 1;
                w.last_ts = last_ts;
                w.max_ts_cum = max_ts_cum;
                w.producers = load_producers(&dir, w.seg_first_seq, &segments)?;
                Some(w)
            }
            None => None,
        };
        Ok(Some(DeploymentLog {
            id,
            dir,
            cfg,
            hooks,
            queue: Mutex::new(Queue::default()),
            cond: Condvar::new(),
            writer: Mutex::new(writer),
            view: RwLock::new(View {
                segments,
                durable_seq,
                meta,
                steps,
            }),
            index_cache: Mutex::new(Vec::new()),
            catalog: None,
            tiering,
            remote_state: Mutex::new(manifest),
            maintenance: Mutex::new(()),
            swap: RwLock::new(()),
            deleted: AtomicBool::new(false),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log's counts and state.
    pub fn stats(&self) -> LogStats {
        let view = self.view.read();
        let (first_ts, last_ts) = if view.durable_seq >= view.meta.retained_from {
            let min = view.segments.iter().map(|s| s.min_ts).min();
            let max = view.segments.iter().map(|s| s.max_ts).max();
            (
                min.filter(|t| *t != i64::MAX),
                max.filter(|t| *t != i64::MIN),
            )
        } else {
            (None, None)
        };
        LogStats {
            first_seq: view.meta.retained_from,
            last_seq: view.durable_seq,
            bytes: view.segments.iter().map(|s| s.bytes).sum(),
            segments: view.segments.len(),
            created_at: view.meta.created_at,
            updated_at: view.updated_at(),
            first_ts,
            last_ts,
            completion: view.meta.completion,
            steps: view.steps.clone(),
        }
    }

    /// Store wallclock of the last append (the creation time while nothing was
    /// appended), Unix ns: when a deployment nobody completes counts as idle from.
    pub fn last_write_at(&self) -> i64 {
        self.view.read().updated_at()
    }

    /// Tells the catalog the log's state now (after a commit or the completion); a
    /// failure is logged, never the writer's (its lines are durable in the log).
    fn catalog_update(&self) {
        if let Some(c) = &self.catalog
            && let Err(e) = c.update(&self.id.tenant, &self.id.deployment, self.stats())
        {
            tracing::warn!(log = %self.id, error = %e, "updating the catalog failed");
        }
    }

    pub fn completion(&self) -> Option<Completion> {
        self.view.read().meta.completion
    }

    /// Seq of the last durable line (0 when empty).
    pub fn durable_seq(&self) -> u64 {
        self.view.read().durable_seq
    }

    /// Whether `Store::delete` removed this log.
    fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Held while a log's segment files are replaced or deleted (see the lock order).
    pub(crate) fn maintenance(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.maintenance.lock()
    }
}
