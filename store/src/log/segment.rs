//! Segment and index files: create and list them, read and scan blocks, and the
//! recovery `DeploymentLog::open` runs: a sealed segment whose index does not match the
//! file gets its index rebuilt by a scan (an invalid block there is an error), and the
//! active segment keeps its indexed blocks, scans the unindexed tail, and truncates a
//! torn or corrupt tail block.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::{SegmentView, Writer};
use crate::format::{self, BlockHeader, Hash, INDEX_ENTRY_LEN, IndexEntry};
use crate::meta::{self, ProducersFile};
use crate::{StoreConfig, StoreError};

pub(super) fn list_segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
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

pub(super) fn create_segment(dir: &Path, first_seq: u64) -> Result<(File, File), StoreError> {
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
pub(super) fn read_block(
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
pub(super) fn scan_block(
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

pub(super) fn load_index(dir: &Path, first_seq: u64) -> Result<Vec<IndexEntry>, StoreError> {
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
pub(super) fn open_sealed(dir: &Path, first_seq: u64) -> Result<SegmentView, StoreError> {
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

pub(super) fn view_of(
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
        remote: None,
        local: true,
    }
}

pub(super) fn write_index(
    dir: &Path,
    first_seq: u64,
    entries: &[IndexEntry],
) -> Result<(), StoreError> {
    let path = dir.join(format::segment_file_name(first_seq, "idx"));
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.encode()).collect();
    fs::write(&path, bytes).map_err(|e| StoreError::io(format!("writing {}", path.display()), e))
}

/// Opens the active segment: keeps the indexed blocks, scans the unindexed tail, and
/// truncates a torn or corrupt tail block.
pub(super) fn recover_active(
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

/// The link hash (what the next block chains to: see `format`) and last timestamp of a
/// segment's last block.
pub(super) fn last_block_hash(dir: &Path, seg: &SegmentView) -> Result<(Hash, i64), StoreError> {
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
        h.link_hash(blake3::hash(&bytes).as_bytes()),
        records.last().map_or(0, |r| r.ts),
    ))
}

/// Producer batch ids: the snapshot from the last roll plus the marks in the active
/// segment's headers.
pub(super) fn load_producers(
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
