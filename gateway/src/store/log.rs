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

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use logstream_model::{Filter, LogRecord};
use parking_lot::{Condvar, Mutex, RwLock};

pub use super::BatchId;
use super::format::{self, BatchMark, BlockHeader, Hash, INDEX_ENTRY_LEN, IndexEntry};
use super::meta::{self, Completion, Meta, MetaFile, Outcome, ProducersFile};
use super::{LogId, StoreConfig, StoreError, StoreHooks};

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

enum Op {
    Append {
        records: Vec<LogRecord>,
        mark: Option<BatchId>,
    },
    Complete {
        status: Outcome,
        exit_code: i32,
    },
}

enum OpResult {
    Appended(AppendOutcome),
    Completed(Completion),
}

#[derive(Default)]
struct Slot(Mutex<Option<Result<OpResult, StoreError>>>);

#[derive(Default)]
struct Queue {
    pending: Vec<(Op, Arc<Slot>)>,
    flushing: bool,
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
    pub id: LogId,
    dir: PathBuf,
    cfg: Arc<StoreConfig>,
    hooks: Arc<StoreHooks>,
    queue: Mutex<Queue>,
    cond: Condvar,
    writer: Mutex<Option<Writer>>,
    view: RwLock<View>,
    /// Recently used sealed-segment indexes (first_seq, entries), most recent last.
    index_cache: Mutex<Vec<(u64, Arc<Vec<IndexEntry>>)>>,
}

const INDEX_CACHE: usize = 4;

impl DeploymentLog {
    /// Opens (and with `create`, creates) the log in `dir`, recovering a torn tail.
    pub(crate) fn open(
        id: LogId,
        dir: PathBuf,
        cfg: Arc<StoreConfig>,
        hooks: Arc<StoreHooks>,
        create: bool,
    ) -> Result<Option<DeploymentLog>, StoreError> {
        let meta_path = dir.join("meta.json");
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
        // Logs written before steps were recorded have no file: their listing shows none.
        let steps = meta::read_atomic::<Vec<String>>(&dir.join("steps.json"))?.unwrap_or_default();
        let mut seg_seqs = list_segments(&dir)?;
        if seg_seqs.is_empty() && meta.completion.is_none() {
            create_segment(&dir, meta.retained_from)?;
            seg_seqs.push(meta.retained_from);
        }
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
            let (view, w) = if active {
                let (view, w) = recover_active(&dir, first, &cfg, hooks.clock.now())?;
                (view, Some(w))
            } else {
                (open_sealed(&dir, first)?, None)
            };
            if let Some(idx) = view.index.as_ref().and_then(|i| i.last()) {
                max_ts_cum = max_ts_cum.max(idx.max_ts_cum);
            }
            max_ts_cum = max_ts_cum.max(view.max_ts);
            if view.last_seq >= view.first_seq {
                let (hash, ts) = last_block_hash(&dir, &view)?;
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
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `records` (their `seq` is ignored and assigned here; a `ts` of 0 becomes
    /// now) and returns once they are fsync'd. `mark` makes the append idempotent: a batch
    /// whose id is not above the last stored one of its source is not stored again.
    pub fn append(
        &self,
        records: Vec<LogRecord>,
        mark: Option<BatchId>,
    ) -> Result<AppendOutcome, StoreError> {
        match self.submit(Op::Append { records, mark })? {
            OpResult::Appended(o) => Ok(o),
            OpResult::Completed(_) => unreachable!("append answered with completion"),
        }
    }

    /// Seals the log: later appends fail with `Completed`. Idempotent for the same outcome.
    pub fn complete(&self, status: Outcome, exit_code: i32) -> Result<Completion, StoreError> {
        match self.submit(Op::Complete { status, exit_code })? {
            OpResult::Completed(c) => Ok(c),
            OpResult::Appended(_) => unreachable!("complete answered with append"),
        }
    }

    fn submit(&self, op: Op) -> Result<OpResult, StoreError> {
        let slot = Arc::new(Slot::default());
        let mut q = self.queue.lock();
        q.pending.push((op, slot.clone()));
        loop {
            if let Some(result) = slot.0.lock().take() {
                return result;
            }
            if q.flushing {
                self.cond.wait(&mut q);
                continue;
            }
            q.flushing = true;
            if !self.cfg.commit_window.is_zero() {
                // Bounded wait so concurrent producers share this fsync.
                drop(q);
                std::thread::sleep(self.cfg.commit_window);
                q = self.queue.lock();
            }
            let ops = std::mem::take(&mut q.pending);
            drop(q);
            self.flush(ops);
            q = self.queue.lock();
            q.flushing = false;
            self.cond.notify_all();
        }
    }

    /// Runs a group of operations in order: appends are written as blocks and fsync'd
    /// once; a completion seals the log after the appends queued before it.
    fn flush(&self, ops: Vec<(Op, Arc<Slot>)>) {
        let mut guard = self.writer.lock();
        let mut group: Vec<(Vec<LogRecord>, Option<BatchId>, Arc<Slot>)> = Vec::new();
        for (op, slot) in ops {
            match op {
                Op::Append { records, mark } => group.push((records, mark, slot)),
                Op::Complete { status, exit_code } => {
                    self.write_group(&mut guard, std::mem::take(&mut group));
                    let result = self.seal(&mut guard, status, exit_code);
                    *slot.0.lock() = Some(result.map(OpResult::Completed));
                }
            }
        }
        self.write_group(&mut guard, group);
    }

    fn write_group(
        &self,
        guard: &mut Option<Writer>,
        group: Vec<(Vec<LogRecord>, Option<BatchId>, Arc<Slot>)>,
    ) {
        if group.is_empty() {
            return;
        }
        let Some(w) = guard.as_mut() else {
            let completion = self.view.read().meta.completion;
            for (_, _, slot) in group {
                *slot.0.lock() = Some(Err(StoreError::Completed {
                    status: completion.map(|c| c.status),
                }));
            }
            return;
        };
        if let Some(why) = &w.poisoned {
            for (_, _, slot) in group {
                *slot.0.lock() = Some(Err(StoreError::Poisoned(why.clone())));
            }
            return;
        }
        let now = self.hooks.clock.now();
        let mut accepted: Vec<LogRecord> = Vec::new();
        let mut marks: Vec<(usize, BatchMark)> = Vec::new();
        let mut outcomes: Vec<(Arc<Slot>, AppendOutcome)> = Vec::new();
        let mut producers: HashMap<String, (u64, u64)> = HashMap::new();
        for (records, mark, slot) in group {
            if let Some(m) = &mark {
                let seen = producers
                    .get(&m.source)
                    .or_else(|| w.producers.get(&m.source))
                    .copied();
                if let Some((batch, last)) = seen
                    && m.batch_id <= batch
                {
                    let o = AppendOutcome {
                        first_seq: last + 1,
                        last_seq: last,
                        duplicate: true,
                        last_ts: w.last_ts,
                    };
                    outcomes.push((slot, o));
                    continue;
                }
            }
            let first = w.next_seq + accepted.len() as u64;
            if records.is_empty() {
                let last = first - 1;
                outcomes.push((
                    slot,
                    AppendOutcome {
                        first_seq: first,
                        last_seq: last,
                        duplicate: false,
                        last_ts: w.last_ts,
                    },
                ));
                continue;
            }
            for (i, mut r) in records.into_iter().enumerate() {
                r.seq = first + i as u64;
                if r.ts == 0 {
                    r.ts = now;
                }
                accepted.push(r);
            }
            let last = w.next_seq + accepted.len() as u64 - 1;
            if let Some(m) = mark {
                producers.insert(m.source.clone(), (m.batch_id, last));
                marks.push((
                    accepted.len() - 1,
                    BatchMark {
                        source: m.source,
                        batch_id: m.batch_id,
                        last_seq: last,
                    },
                ));
            }
            let last_ts = accepted.last().map(|r| r.ts).unwrap_or(w.last_ts);
            outcomes.push((
                slot,
                AppendOutcome {
                    first_seq: first,
                    last_seq: last,
                    duplicate: false,
                    last_ts,
                },
            ));
        }
        let result = if accepted.is_empty() {
            Ok(())
        } else {
            self.record_steps(&accepted)
                .and_then(|()| self.write_blocks(w, &accepted, &marks, now))
        };
        match result {
            Ok(()) => {
                w.producers.extend(producers);
                if !accepted.is_empty() {
                    self.hooks.listener.committed(&self.id, &accepted);
                }
                for (slot, o) in outcomes {
                    *slot.0.lock() = Some(Ok(OpResult::Appended(o)));
                }
            }
            Err(e) => {
                for (slot, o) in outcomes {
                    let r = if o.duplicate {
                        Ok(OpResult::Appended(o))
                    } else {
                        Err(e.clone())
                    };
                    *slot.0.lock() = Some(r);
                }
            }
        }
    }

    /// Adds step names not seen before to `steps.json`, ahead of the lines that carry
    /// them (a crash in between lists a step whose lines the producer will retry).
    fn record_steps(&self, records: &[LogRecord]) -> Result<(), StoreError> {
        // The common case, every step already known, is decided under the read lock
        // without copying anything.
        let mut steps = {
            let view = self.view.read();
            let unseen = |r: &LogRecord| !r.step.is_empty() && !view.steps.contains(&r.step);
            if view.steps.len() >= MAX_STEPS || !records.iter().any(unseen) {
                return Ok(());
            }
            view.steps.clone()
        };
        for r in records {
            if steps.len() < MAX_STEPS && !r.step.is_empty() && !steps.contains(&r.step) {
                steps.push(r.step.clone());
            }
        }
        meta::write_atomic(&self.dir.join("steps.json"), &steps)?;
        self.view.write().steps = steps;
        Ok(())
    }

    /// Encodes `records` into blocks, writes and fsyncs them, updates index and view.
    fn write_blocks(
        &self,
        w: &mut Writer,
        records: &[LogRecord],
        marks: &[(usize, BatchMark)],
        now: i64,
    ) -> Result<(), StoreError> {
        let age = now.saturating_sub(w.seg_created_at);
        if w.seg_blocks > 0
            && (w.seg_len >= self.cfg.segment_bytes
                || w.seg_blocks >= self.cfg.segment_blocks
                || age >= self.cfg.segment_age.as_nanos() as i64)
        {
            self.roll(w, now)?;
        }
        let mut bytes = Vec::new();
        let mut entries = Vec::new();
        let mut hash = w.last_hash;
        let mut cum = w.max_ts_cum;
        let mut start = 0;
        while start < records.len() {
            let mut end = start;
            let mut size = 0;
            while end < records.len()
                && (end == start
                    || (size + records[end].message.len() <= self.cfg.block_bytes
                        && end - start < self.cfg.block_records))
            {
                size += records[end].message.len() + 16;
                end += 1;
            }
            let block_marks: Vec<BatchMark> = marks
                .iter()
                .filter(|(i, _)| (start..end).contains(i))
                .map(|(_, m)| m.clone())
                .collect();
            let first_seq = records[start].seq;
            let b = format::encode_block(
                &records[start..end],
                first_seq,
                now,
                &hash,
                &block_marks,
                self.cfg.zstd_level,
            );
            let entry = IndexEntry::from_header(&b.header, w.seg_len + bytes.len() as u64, cum);
            cum = entry.max_ts_cum;
            hash = b.hash;
            entries.push(entry);
            bytes.extend_from_slice(&b.bytes);
            start = end;
        }
        let seg_path = self
            .dir
            .join(format::segment_file_name(w.seg_first_seq, "seg"));
        let write = self
            .hooks
            .faults
            .check("segment_write")
            .and_then(|()| w.seg.write_all_at(&bytes, w.seg_len))
            .and_then(|()| self.hooks.faults.check("segment_sync"))
            .and_then(|()| w.seg.sync_data());
        if let Err(e) = write {
            // Roll the file back so the next group starts at a block boundary.
            if let Err(e2) = w.seg.set_len(w.seg_len).and_then(|()| w.seg.sync_data()) {
                w.poisoned = Some(format!(
                    "rollback of a failed write to {} failed: {e2}",
                    seg_path.display()
                ));
            }
            return Err(StoreError::io(
                format!("appending to {}", seg_path.display()),
                e,
            ));
        }
        let mut idx_bytes = Vec::with_capacity(entries.len() * INDEX_ENTRY_LEN);
        for e in &entries {
            idx_bytes.extend_from_slice(&e.encode());
        }
        let idx_off = u64::from(w.seg_blocks) * INDEX_ENTRY_LEN as u64;
        if let Err(e) = w.idx.write_all_at(&idx_bytes, idx_off) {
            // The index is rebuilt from the segment at the next open; reads use memory.
            tracing::warn!(log = %self.id, error = %e, "index write failed; it will be rebuilt at next open");
        }
        w.seg_len += bytes.len() as u64;
        w.seg_blocks += entries.len() as u32;
        w.last_hash = hash;
        w.max_ts_cum = cum;
        w.next_seq = records.last().expect("non-empty").seq + 1;
        w.last_ts = records.last().expect("non-empty").ts;
        let mut view = self.view.write();
        view.durable_seq = w.next_seq - 1;
        let seg = view.segments.last_mut().expect("active segment");
        seg.last_seq = w.next_seq - 1;
        seg.bytes = w.seg_len;
        seg.max_ts = seg.max_ts.max(cum);
        seg.min_ts = seg
            .min_ts
            .min(records.iter().map(|r| r.ts).min().expect("non-empty"));
        seg.last_written_at = now;
        let index = seg.index.get_or_insert_with(Default::default);
        Arc::make_mut(index).extend(entries);
        Ok(())
    }

    /// Seals the active segment and starts the next one.
    fn roll(&self, w: &mut Writer, now: i64) -> Result<(), StoreError> {
        let io = |what: &str, e| StoreError::io(format!("{what} in {}", self.dir.display()), e);
        w.idx.sync_data().map_err(|e| io("syncing index", e))?;
        let sources = w
            .producers
            .iter()
            .map(|(s, (b, l))| (s.clone(), *b, *l))
            .collect();
        meta::write_atomic(
            &self.dir.join("producers.json"),
            &ProducersFile::V1 { sources },
        )?;
        let (seg, idx) = create_segment(&self.dir, w.next_seq)?;
        w.seg = seg;
        w.idx = idx;
        w.seg_first_seq = w.next_seq;
        w.seg_len = format::SEGMENT_HEADER_LEN;
        w.seg_blocks = 0;
        w.seg_created_at = now;
        let mut view = self.view.write();
        if let Some(last) = view.segments.last_mut() {
            last.index = None;
        }
        view.segments.push(SegmentView {
            first_seq: w.next_seq,
            last_seq: w.next_seq - 1,
            bytes: format::SEGMENT_HEADER_LEN,
            max_ts: i64::MIN,
            min_ts: i64::MAX,
            last_written_at: now,
            index: Some(Arc::new(Vec::new())),
        });
        Ok(())
    }

    fn seal(
        &self,
        guard: &mut Option<Writer>,
        status: Outcome,
        exit_code: i32,
    ) -> Result<Completion, StoreError> {
        let existing = self.view.read().meta.completion;
        if let Some(c) = existing {
            return if c.status == status && c.exit_code == exit_code {
                Ok(c)
            } else {
                Err(StoreError::Completed {
                    status: Some(c.status),
                })
            };
        }
        let Some(w) = guard.as_mut() else {
            return Err(StoreError::Completed { status: None });
        };
        if let Some(why) = &w.poisoned {
            return Err(StoreError::Poisoned(why.clone()));
        }
        w.idx
            .sync_data()
            .map_err(|e| StoreError::io(format!("syncing index in {}", self.dir.display()), e))?;
        let completion = Completion {
            status,
            exit_code,
            at: self.hooks.clock.now(),
            last_seq: w.next_seq - 1,
        };
        let mut meta = self.view.read().meta.clone();
        meta.completion = Some(completion);
        meta::write_atomic(&self.dir.join("meta.json"), &MetaFile::V1(meta.clone()))?;
        *guard = None;
        let mut view = self.view.write();
        view.meta = meta;
        if let Some(last) = view.segments.last_mut() {
            last.index = None;
        }
        drop(view);
        self.hooks.listener.completed(&self.id, &completion);
        Ok(completion)
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
            first_ts,
            last_ts,
            completion: view.meta.completion,
            steps: view.steps.clone(),
        }
    }

    pub fn completion(&self) -> Option<Completion> {
        self.view.read().meta.completion
    }

    /// Seq of the last durable line (0 when empty).
    pub fn durable_seq(&self) -> u64 {
        self.view.read().durable_seq
    }

    /// Reads one page. Forward: lines with seq > `from`; backward: lines with seq < `from`
    /// (`u64::MAX` = from the end). At most `limit` matching lines, and at most
    /// `cfg.scan_budget` uncompressed bytes examined (then `exhausted` is false and
    /// `scanned_to` says where to continue).
    pub fn read(
        &self,
        dir: Direction,
        from: u64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let (segments, durable) = {
            let v = self.view.read();
            (v.segments.clone(), v.durable_seq)
        };
        let mut page = Page {
            scanned_to: from,
            ..Page::default()
        };
        let mut budget = self.cfg.scan_budget;
        let mut files: Option<(u64, File)> = None;
        let order: Vec<&SegmentView> = match dir {
            Direction::Forward => segments
                .iter()
                .filter(|s| s.last_seq > from && s.last_seq >= s.first_seq)
                .collect(),
            Direction::Backward => segments
                .iter()
                .rev()
                .filter(|s| s.first_seq < from && s.last_seq >= s.first_seq)
                .collect(),
        };
        for seg in order {
            if dir == Direction::Forward && filter.since.is_some_and(|since| seg.max_ts < since) {
                page.scanned_to = page.scanned_to.max(seg.last_seq.min(durable));
                continue;
            }
            let index = self.segment_index(seg)?;
            let entries: Box<dyn Iterator<Item = &IndexEntry>> = match dir {
                Direction::Forward => {
                    let by_seq = index.partition_point(|e| e.last_seq() <= from);
                    let by_time = filter
                        .since
                        .map_or(0, |s| index.partition_point(|e| e.max_ts_cum < s));
                    let start = by_seq.max(by_time);
                    if start > by_seq {
                        // Blocks skipped by the time seek are examined (and empty of matches).
                        page.scanned_to = page.scanned_to.max(index[start - 1].last_seq());
                    }
                    Box::new(index[start..].iter())
                }
                Direction::Backward => {
                    let end = index.partition_point(|e| e.first_seq < from);
                    Box::new(index[..end].iter().rev())
                }
            };
            for e in entries {
                if e.first_seq > durable {
                    break;
                }
                if page.records.len() >= limit {
                    return Ok(page);
                }
                if budget == 0 {
                    return Ok(page);
                }
                let skip =
                    !filter.may_match_block(e.levels, e.streams, e.min_ts, e.max_ts, |_| true);
                let block = if skip {
                    None
                } else {
                    let file = match &files {
                        Some((first, f)) if *first == seg.first_seq => f,
                        _ => {
                            let path = self
                                .dir
                                .join(format::segment_file_name(seg.first_seq, "seg"));
                            let f = File::open(&path).map_err(|e| {
                                StoreError::io(format!("opening {}", path.display()), e)
                            })?;
                            &files.insert((seg.first_seq, f)).1
                        }
                    };
                    Some(read_block(file, e, &self.dir, seg.first_seq)?)
                };
                let records = match block {
                    Some((h, bytes))
                        if filter.steps.is_empty()
                            || filter.steps.iter().any(|s| h.steps.contains(s)) =>
                    {
                        budget = budget.saturating_sub(h.uncompressed_len as usize);
                        format::decode_records(&bytes, &h).map_err(|r| StoreError::Corrupt {
                            path: self
                                .dir
                                .join(format::segment_file_name(seg.first_seq, "seg")),
                            reason: format!("block at offset {}: {r}", e.offset),
                        })?
                    }
                    _ => Vec::new(),
                };
                let take = |r: LogRecord, page: &mut Page| -> bool {
                    page.scanned_to = r.seq;
                    if filter.matches(&r) {
                        page.records.push(r);
                    }
                    page.records.len() < limit
                };
                match dir {
                    Direction::Forward => {
                        for r in records
                            .into_iter()
                            .filter(|r| r.seq > from && r.seq <= durable)
                        {
                            if !take(r, &mut page) {
                                return Ok(page);
                            }
                        }
                        page.scanned_to = page.scanned_to.max(e.last_seq().min(durable));
                    }
                    Direction::Backward => {
                        for r in records
                            .into_iter()
                            .rev()
                            .filter(|r| r.seq < from && r.seq <= durable)
                        {
                            if !take(r, &mut page) {
                                return Ok(page);
                            }
                        }
                        page.scanned_to = e.first_seq;
                    }
                }
            }
        }
        page.exhausted = true;
        if dir == Direction::Forward {
            page.scanned_to = page.scanned_to.max(durable);
        }
        Ok(page)
    }

    fn segment_index(&self, seg: &SegmentView) -> Result<Arc<Vec<IndexEntry>>, StoreError> {
        if let Some(i) = &seg.index {
            return Ok(i.clone());
        }
        let mut cache = self.index_cache.lock();
        if let Some(pos) = cache.iter().position(|(f, _)| *f == seg.first_seq) {
            let hit = cache.remove(pos);
            cache.push(hit.clone());
            return Ok(hit.1);
        }
        let entries = Arc::new(load_index(&self.dir, seg.first_seq)?);
        if cache.len() >= INDEX_CACHE {
            cache.remove(0);
        }
        cache.push((seg.first_seq, entries.clone()));
        Ok(entries)
    }

    /// Deletes sealed segments whose newest block was written before `cutoff`.
    /// Returns the (first_seq, last_seq, bytes) of each deleted segment.
    pub(crate) fn expire(&self, cutoff: i64) -> Result<Vec<(u64, u64, u64)>, StoreError> {
        let _writer = self.writer.lock();
        let mut view = self.view.write();
        let mut deleted = Vec::new();
        let sealed = if view.meta.completion.is_some() {
            view.segments.len()
        } else {
            view.segments.len() - 1
        };
        let expired = view.segments[..sealed]
            .iter()
            .take_while(|s| s.last_written_at < cutoff)
            .count();
        if expired == 0 {
            return Ok(deleted);
        }
        // The first kept block chains to the last deleted block: record that anchor first.
        let next_from = view
            .segments
            .get(expired)
            .map(|s| s.first_seq)
            .unwrap_or(view.durable_seq + 1);
        let anchor = match view.segments.get(expired) {
            Some(s) if s.last_seq >= s.first_seq => {
                let first = load_index(&self.dir, s.first_seq).or_else(|_| {
                    s.index
                        .as_ref()
                        .map(|i| i.as_ref().clone())
                        .ok_or(StoreError::NotFound)
                })?;
                let e = first.first().ok_or(StoreError::NotFound)?;
                let file = File::open(self.dir.join(format::segment_file_name(s.first_seq, "seg")))
                    .map_err(|e| StoreError::io("opening segment", e))?;
                let (h, _) = read_block(&file, e, &self.dir, s.first_seq)?;
                meta::hex(&h.prev_hash)
            }
            _ => {
                let (hash, _) = last_block_hash(&self.dir, &view.segments[expired - 1])?;
                meta::hex(&hash)
            }
        };
        let mut meta = view.meta.clone();
        meta.retained_from = next_from;
        meta.retained_prev_hash = anchor;
        meta::write_atomic(&self.dir.join("meta.json"), &MetaFile::V1(meta.clone()))?;
        view.meta = meta;
        for s in view.segments.drain(..expired) {
            for ext in ["seg", "idx"] {
                let p = self.dir.join(format::segment_file_name(s.first_seq, ext));
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io(format!("deleting {}", p.display()), e)),
                }
            }
            deleted.push((s.first_seq, s.last_seq, s.bytes));
        }
        meta::sync_dir(&self.dir)?;
        self.index_cache.lock().clear();
        Ok(deleted)
    }

    /// True when the log is sealed and retention removed every segment.
    pub(crate) fn is_empty_and_sealed(&self) -> bool {
        let v = self.view.read();
        v.meta.completion.is_some() && v.segments.is_empty()
    }
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut seqs = Vec::new();
    let rd =
        fs::read_dir(dir).map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
    for entry in rd {
        let entry = entry.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
        if let Some(seq) = entry
            .file_name()
            .to_str()
            .and_then(|n| format::parse_segment_file_name(n, "seg"))
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

fn create_segment(dir: &Path, first_seq: u64) -> Result<(File, File), StoreError> {
    let seg_path = dir.join(format::segment_file_name(first_seq, "seg"));
    let idx_path = dir.join(format::segment_file_name(first_seq, "idx"));
    let io = |p: &Path, e| StoreError::io(format!("creating {}", p.display()), e);
    let mut seg = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&seg_path)
        .map_err(|e| io(&seg_path, e))?;
    seg.write_all(&format::segment_header())
        .and_then(|()| seg.sync_all())
        .map_err(|e| io(&seg_path, e))?;
    let idx = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&idx_path)
        .map_err(|e| io(&idx_path, e))?;
    meta::sync_dir(dir)?;
    Ok((seg, idx))
}

/// Reads and CRC-checks the block an index entry points at.
fn read_block(
    file: &File,
    e: &IndexEntry,
    dir: &Path,
    seg_first: u64,
) -> Result<(BlockHeader, Vec<u8>), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: dir.join(format::segment_file_name(seg_first, "seg")),
        reason: format!("block at offset {}: {reason}", e.offset),
    };
    let mut buf = vec![0u8; e.len as usize];
    file.read_exact_at(&mut buf, e.offset)
        .map_err(|err| corrupt(err.to_string()))?;
    let h = format::decode_header(&buf).map_err(|r| corrupt(r.to_string()))?;
    format::check_block(&buf, &h).map_err(|r| corrupt(r.to_string()))?;
    Ok((h, buf))
}

/// Reads one block at `offset` from a segment file of length `len` (for scans).
pub(crate) fn scan_block(
    file: &File,
    offset: u64,
    len: u64,
) -> Result<(BlockHeader, Vec<u8>), format::FormatError> {
    if offset + format::PREFIX_LEN as u64 > len {
        return Err(format::FormatError::Truncated);
    }
    let mut prefix = [0u8; format::PREFIX_LEN];
    file.read_exact_at(&mut prefix, offset)
        .map_err(|_| format::FormatError::Truncated)?;
    let (hl, pl) = format::block_lengths(&prefix)?;
    let total = u64::from(hl) + u64::from(pl);
    if offset + total > len {
        return Err(format::FormatError::Truncated);
    }
    let mut buf = vec![0u8; total as usize];
    file.read_exact_at(&mut buf, offset)
        .map_err(|_| format::FormatError::Truncated)?;
    let h = format::decode_header(&buf)?;
    format::check_block(&buf, &h)?;
    Ok((h, buf))
}

fn load_index(dir: &Path, first_seq: u64) -> Result<Vec<IndexEntry>, StoreError> {
    let path = dir.join(format::segment_file_name(first_seq, "idx"));
    let bytes =
        fs::read(&path).map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
    Ok(bytes
        .chunks_exact(INDEX_ENTRY_LEN)
        .map(IndexEntry::decode)
        .collect())
}

/// Scans a segment from `offset`, validating blocks and the chain; returns the entries of
/// the valid blocks and the offset where validity ends.
fn scan_from(
    file: &File,
    len: u64,
    mut offset: u64,
    mut next_seq: Option<u64>,
    mut cum: i64,
) -> (Vec<IndexEntry>, u64) {
    let mut entries = Vec::new();
    while let Ok((h, _)) = scan_block(file, offset, len) {
        if next_seq.is_some_and(|s| s != h.first_seq) {
            break;
        }
        let e = IndexEntry::from_header(&h, offset, cum);
        cum = e.max_ts_cum;
        next_seq = Some(h.last_seq() + 1);
        offset += h.total_len();
        entries.push(e);
    }
    (entries, offset)
}

/// Opens a sealed segment; rebuilds its index if it does not match the file.
fn open_sealed(dir: &Path, first_seq: u64) -> Result<SegmentView, StoreError> {
    let seg_path = dir.join(format::segment_file_name(first_seq, "seg"));
    let len = fs::metadata(&seg_path)
        .map_err(|e| StoreError::io(format!("reading {}", seg_path.display()), e))?
        .len();
    let mut entries = load_index(dir, first_seq).unwrap_or_default();
    let consistent = entries
        .last()
        .map_or(len == format::SEGMENT_HEADER_LEN, |e| {
            e.offset + u64::from(e.len) == len
        });
    if !consistent {
        let file = File::open(&seg_path)
            .map_err(|e| StoreError::io(format!("opening {}", seg_path.display()), e))?;
        let (scanned, end) = scan_from(
            &file,
            len,
            format::SEGMENT_HEADER_LEN,
            Some(first_seq),
            i64::MIN,
        );
        if end != len {
            return Err(StoreError::Corrupt {
                path: seg_path,
                reason: format!(
                    "sealed segment has an invalid block at offset {end}; run `logstream-gateway store verify`"
                ),
            });
        }
        write_index(dir, first_seq, &scanned)?;
        entries = scanned;
    }
    Ok(view_of(first_seq, len, &entries, None))
}

fn view_of(
    first_seq: u64,
    len: u64,
    entries: &[IndexEntry],
    index: Option<Arc<Vec<IndexEntry>>>,
) -> SegmentView {
    SegmentView {
        first_seq,
        last_seq: entries.last().map_or(first_seq - 1, IndexEntry::last_seq),
        bytes: len,
        max_ts: entries.last().map_or(i64::MIN, |e| e.max_ts_cum),
        min_ts: entries.iter().map(|e| e.min_ts).min().unwrap_or(i64::MAX),
        last_written_at: entries.last().map_or(0, |e| e.written_at),
        index,
    }
}

fn write_index(dir: &Path, first_seq: u64, entries: &[IndexEntry]) -> Result<(), StoreError> {
    let path = dir.join(format::segment_file_name(first_seq, "idx"));
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.encode()).collect();
    fs::write(&path, bytes).map_err(|e| StoreError::io(format!("writing {}", path.display()), e))
}

/// Opens the active segment: keeps the indexed blocks, scans the unindexed tail, and
/// truncates a torn or corrupt tail block.
fn recover_active(
    dir: &Path,
    first_seq: u64,
    cfg: &StoreConfig,
    now: i64,
) -> Result<(SegmentView, Writer), StoreError> {
    let seg_path = dir.join(format::segment_file_name(first_seq, "seg"));
    let idx_path = dir.join(format::segment_file_name(first_seq, "idx"));
    let io = |what: &str, e| StoreError::io(format!("{what} {}", seg_path.display()), e);
    let seg = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg_path)
        .map_err(|e| io("opening", e))?;
    let mut len = seg.metadata().map_err(|e| io("reading", e))?.len();
    let mut header = [0u8; format::SEGMENT_HEADER_LEN as usize];
    if len < format::SEGMENT_HEADER_LEN
        || seg.read_exact_at(&mut header, 0).is_err()
        || !format::check_segment_header(&header)
    {
        if len > format::SEGMENT_HEADER_LEN {
            return Err(StoreError::Corrupt {
                path: seg_path,
                reason: "bad segment header".into(),
            });
        }
        // Torn creation: nothing was ever acknowledged from this file.
        seg.set_len(0).map_err(|e| io("truncating", e))?;
        seg.write_all_at(&format::segment_header(), 0)
            .and_then(|()| seg.sync_all())
            .map_err(|e| io("writing", e))?;
        len = format::SEGMENT_HEADER_LEN;
    }
    let mut entries = load_index(dir, first_seq).unwrap_or_default();
    // Keep index entries that point inside the file; re-check the last one.
    while let Some(last) = entries.last() {
        if last.offset + u64::from(last.len) <= len && scan_block(&seg, last.offset, len).is_ok() {
            break;
        }
        entries.pop();
    }
    let (resume, next, cum) = entries.last().map_or(
        (format::SEGMENT_HEADER_LEN, Some(first_seq), i64::MIN),
        |e| {
            (
                e.offset + u64::from(e.len),
                Some(e.last_seq() + 1),
                e.max_ts_cum,
            )
        },
    );
    let (tail, end) = scan_from(&seg, len, resume, next, cum);
    entries.extend(tail);
    if end < len {
        tracing::warn!(segment = %seg_path.display(), at = end, dropped = len - end, "truncating torn tail");
        seg.set_len(end)
            .and_then(|()| seg.sync_all())
            .map_err(|e| io("truncating", e))?;
        len = end;
    }
    write_index(dir, first_seq, &entries)?;
    let idx = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&idx_path)
        .map_err(|e| io("opening index of", e))?;
    let _ = cfg;
    let view = view_of(first_seq, len, &entries, Some(Arc::new(entries.clone())));
    let writer = Writer {
        seg,
        idx,
        seg_first_seq: first_seq,
        seg_len: len,
        seg_blocks: entries.len() as u32,
        seg_created_at: entries.first().map_or(now, |e| e.written_at),
        last_hash: [0; 32],
        next_seq: 0,
        last_ts: 0,
        max_ts_cum: i64::MIN,
        producers: HashMap::new(),
        poisoned: None,
    };
    Ok((view, writer))
}

/// The hash and last timestamp of a segment's last block.
fn last_block_hash(dir: &Path, seg: &SegmentView) -> Result<(Hash, i64), StoreError> {
    let entries = match &seg.index {
        Some(i) => i.clone(),
        None => Arc::new(load_index(dir, seg.first_seq)?),
    };
    let e = entries.last().ok_or(StoreError::NotFound)?;
    let path = dir.join(format::segment_file_name(seg.first_seq, "seg"));
    let file = File::open(&path)
        .map_err(|err| StoreError::io(format!("opening {}", path.display()), err))?;
    let (h, bytes) = read_block(&file, e, dir, seg.first_seq)?;
    let records = format::decode_records(&bytes, &h).map_err(|r| StoreError::Corrupt {
        path,
        reason: r.to_string(),
    })?;
    Ok((
        *blake3::hash(&bytes).as_bytes(),
        records.last().map_or(0, |r| r.ts),
    ))
}

/// Producer batch ids: the snapshot from the last roll plus the marks in the active
/// segment's headers.
fn load_producers(
    dir: &Path,
    active_first: u64,
    segments: &[SegmentView],
) -> Result<HashMap<String, (u64, u64)>, StoreError> {
    let mut map = HashMap::new();
    if let Some(ProducersFile::V1 { sources }) =
        meta::read_atomic::<ProducersFile>(&dir.join("producers.json"))?
    {
        for (s, b, l) in sources {
            map.insert(s, (b, l));
        }
    }
    let Some(active) = segments.iter().find(|s| s.first_seq == active_first) else {
        return Ok(map);
    };
    let Some(index) = &active.index else {
        return Ok(map);
    };
    let path = dir.join(format::segment_file_name(active_first, "seg"));
    let file =
        File::open(&path).map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
    for e in index.iter() {
        let (h, _) = read_block(&file, e, dir, active_first)?;
        for m in h.marks {
            map.insert(m.source, (m.batch_id, m.last_seq));
        }
    }
    Ok(map)
}
