//! Appends and completion: the group-commit queue (the first waiter while no flush runs
//! leads and takes every queued operation), dedup by producer batch, seq assignment,
//! block encoding, one `pwrite` + `fdatasync` per group, segment rolls, and sealing.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use logstream_model::LogRecord;
use parking_lot::Mutex;

use super::segment::create_segment;
use super::{AppendOutcome, BatchId, DeploymentLog, MAX_STEPS, SegmentView, Writer};
use crate::StoreError;
use crate::format::{self, BatchMark, INDEX_ENTRY_LEN, IndexEntry};
use crate::meta::{self, Completion, MetaFile, Outcome, ProducersFile};

enum Op {
    Append {
        records: Vec<LogRecord>,
        /// Every mark must be new for the records to be stored (a producer's batch, and
        /// in Kafka mode the partition offset it came from).
        marks: Vec<BatchId>,
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
pub(super) struct Queue {
    pending: Vec<(Op, Arc<Slot>)>,
    flushing: bool,
}

impl DeploymentLog {
    /// Appends `records` (their `seq` is ignored and assigned here; a `ts` of 0 becomes
    /// now) and returns once they are fsync'd. `mark` makes the append idempotent: a batch
    /// whose id is not above the last stored one of its source is not stored again.
    pub fn append(
        &self,
        records: Vec<LogRecord>,
        mark: Option<BatchId>,
    ) -> Result<AppendOutcome, StoreError> {
        let marks = mark.into_iter().collect();
        match self.submit(Op::Append { records, marks })? {
            OpResult::Appended(o) => Ok(o),
            OpResult::Completed(_) => unreachable!("append answered with completion"),
        }
    }

    /// Appends several batches in this order, in one group (one fsync), each with its
    /// marks: a batch any of whose marks is not above the last stored one of its source
    /// is a duplicate and not stored again. Kafka mode applies a partition's records with
    /// it, marked by `kafka/<topic>/<partition>` and the offset, so a replay after a crash
    /// or a rebalance stores nothing twice.
    pub fn append_all(
        &self,
        batches: Vec<(Vec<LogRecord>, Vec<BatchId>)>,
    ) -> Vec<Result<AppendOutcome, StoreError>> {
        let ops = batches
            .into_iter()
            .map(|(records, marks)| Op::Append { records, marks })
            .collect();
        self.submit_all(ops)
            .into_iter()
            .map(|r| match r? {
                OpResult::Appended(o) => Ok(o),
                OpResult::Completed(_) => unreachable!("append answered with completion"),
            })
            .collect()
    }

    /// Seals the log: later appends fail with `Completed`. Idempotent for the same outcome.
    pub fn complete(&self, status: Outcome, exit_code: i32) -> Result<Completion, StoreError> {
        match self.submit(Op::Complete { status, exit_code })? {
            OpResult::Completed(c) => Ok(c),
            OpResult::Appended(_) => unreachable!("complete answered with append"),
        }
    }

    fn submit(&self, op: Op) -> Result<OpResult, StoreError> {
        self.submit_all(vec![op]).pop().expect("one result per op")
    }

    /// Queues `ops` together (so they are flushed in this order, in one group) and waits
    /// for all of them.
    fn submit_all(&self, ops: Vec<Op>) -> Vec<Result<OpResult, StoreError>> {
        let queued = std::time::Instant::now();
        let slots: Vec<Arc<Slot>> = ops.iter().map(|_| Arc::new(Slot::default())).collect();
        let mut q = self.queue.lock();
        q.pending.extend(ops.into_iter().zip(slots.iter().cloned()));
        loop {
            if slots.iter().all(|s| s.0.lock().is_some()) {
                return slots
                    .iter()
                    .map(|s| s.0.lock().take().expect("answered"))
                    .collect();
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
            let appends = ops.len();
            self.flush(ops);
            self.hooks.observer.group_commit(queued.elapsed(), appends);
            q = self.queue.lock();
            q.flushing = false;
            self.cond.notify_all();
        }
    }

    /// Runs a group of operations in order: appends are written as blocks and fsync'd
    /// once; a completion seals the log after the appends queued before it.
    fn flush(&self, ops: Vec<(Op, Arc<Slot>)>) {
        let mut guard = self.writer.lock();
        let mut group: Vec<(Vec<LogRecord>, Vec<BatchId>, Arc<Slot>)> = Vec::new();
        for (op, slot) in ops {
            match op {
                Op::Append { records, marks } => group.push((records, marks, slot)),
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
        group: Vec<(Vec<LogRecord>, Vec<BatchId>, Arc<Slot>)>,
    ) {
        if group.is_empty() {
            return;
        }
        let Some(w) = guard.as_mut() else {
            let completion = self.view.read().meta.completion;
            let deleted = self.is_deleted();
            for (_, _, slot) in group {
                *slot.0.lock() = Some(Err(if deleted {
                    StoreError::NotFound
                } else {
                    StoreError::Completed {
                        status: completion.map(|c| c.status),
                    }
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
        for (records, group_marks, slot) in group {
            let duplicate_of = group_marks.iter().find_map(|m| {
                let seen = producers
                    .get(&m.source)
                    .or_else(|| w.producers.get(&m.source))
                    .copied();
                seen.filter(|(batch, _)| m.batch_id <= *batch)
                    .map(|(_, last)| last)
            });
            if let Some(last) = duplicate_of {
                let o = AppendOutcome {
                    first_seq: last + 1,
                    last_seq: last,
                    duplicate: true,
                    last_ts: w.last_ts,
                };
                outcomes.push((slot, o));
                continue;
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
            for m in group_marks {
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
                    self.catalog_update();
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
        let started = std::time::Instant::now();
        let write = self
            .hooks
            .faults
            .check("segment_write")
            .and_then(|()| w.seg.write_all_at(&bytes, w.seg_len))
            .and_then(|()| self.hooks.faults.check("segment_sync"))
            .and_then(|()| w.seg.sync_data());
        self.hooks.observer.fsync(started.elapsed());
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
            remote: None,
            local: true,
        });
        drop(view);
        if let Some(t) = &self.tiering {
            t.mark_pending(&self.id);
        }
        Ok(())
    }

    fn seal(
        &self,
        guard: &mut Option<Writer>,
        status: Outcome,
        exit_code: i32,
    ) -> Result<Completion, StoreError> {
        if self.is_deleted() {
            return Err(StoreError::NotFound);
        }
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
        self.catalog_update();
        if let Some(t) = &self.tiering {
            t.mark_pending(&self.id);
        }
        Ok(completion)
    }
}
