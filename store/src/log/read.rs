//! Paged reads. Readers never take the writer lock: they snapshot the segment list and
//! the durable seq, and read blocks with `pread` through the index (the active
//! segment's is in memory; sealed segments' are loaded on demand and the most recently
//! used ones cached). A read holds the `swap` lock shared from its snapshot to its last
//! block, so a redaction swapping a segment in waits for it: the index and the file a
//! read uses are always of the same version.

use std::fs::File;
use std::sync::Arc;

use logstream_model::{Filter, LogRecord};

use super::segment::{load_index, read_block};
use super::{DeploymentLog, Direction, Page, SegmentView};
use crate::StoreError;
use crate::format::{self, IndexEntry};
use crate::remote::RemoteSegment;

const INDEX_CACHE: usize = 4;

enum Source {
    Local(File),
    Remote(Arc<RemoteSegment>),
}

impl DeploymentLog {
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
        let _swap = self.swap.read();
        let (segments, durable) = {
            let v = self.view.read();
            (v.segments.clone(), v.durable_seq)
        };
        let mut page = Page {
            scanned_to: from,
            ..Page::default()
        };
        let mut budget = self.cfg.scan_budget;
        let mut files: Option<(u64, Source)> = None;
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
                    if files
                        .as_ref()
                        .is_none_or(|(first, _)| *first != seg.first_seq)
                    {
                        self.hooks.faults.pause("read_open");
                        files = Some((seg.first_seq, self.source(seg)?));
                    }
                    Some(match &files {
                        Some((_, Source::Local(f))) => read_block(f, e, &self.dir, seg.first_seq)?,
                        Some((_, Source::Remote(r))) => self.remote_block(r, e)?,
                        None => unreachable!("set above"),
                    })
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

    /// Where a segment's blocks are read from: its local file (a read of a sealed one
    /// moves it back in the eviction order), else object storage.
    fn source(&self, seg: &SegmentView) -> Result<Source, StoreError> {
        if seg.local {
            let path = self
                .dir
                .join(format::segment_file_name(seg.first_seq, "seg"));
            match File::open(&path) {
                Ok(f) => {
                    if let Some(t) = &self.tiering
                        && seg.remote.is_some()
                    {
                        t.touch(&self.id, seg.first_seq, self.hooks.clock.now());
                    }
                    return Ok(Source::Local(f));
                }
                // Evicted since the snapshot: object storage has it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(format!("opening {}", path.display()), e)),
            }
        }
        let remote = seg.remote.clone().or_else(|| self.remote_of(seg.first_seq));
        remote
            .map(Source::Remote)
            .ok_or_else(|| StoreError::Corrupt {
                path: self
                    .dir
                    .join(format::segment_file_name(seg.first_seq, "seg")),
                reason: "segment file missing and not in object storage".into(),
            })
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
}
