//! Tamper check and compaction of a deployment's log.
//!
//! `verify_dir` walks every block of every segment from the bytes on disk (not the
//! index): magic and lengths, CRC32C, the BLAKE3 chain (`prev_hash` of each block equals
//! the hash of the block before it, across segments, starting from the retention anchor
//! in `meta.json`), dense seqs, and that every payload decodes. It reports the first bad
//! block: an edited byte fails the CRC, a removed or reordered block breaks the seq run
//! and the chain.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use logstream_model::LogRecord;

use super::format::{self, Hash};
use super::log::scan_block;
use super::meta::{self, MetaFile};
use super::{BatchId, DeploymentId, StoreError};

/// The result of verifying one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub segments: usize,
    pub blocks: u64,
    pub lines: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// BLAKE3 of the last block: the head of the chain.
    pub head: String,
    /// The first problem found, if any: where and what.
    pub first_bad: Option<BadBlock>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadBlock {
    pub segment: PathBuf,
    pub offset: u64,
    /// Seq the block was expected to start at.
    pub expected_seq: u64,
    pub reason: String,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// Verifies the log stored in `dir` (a deployment directory).
pub fn verify_dir(dir: &Path) -> Result<VerifyReport, StoreError> {
    let meta = match meta::read_atomic::<MetaFile>(&dir.join("meta.json"))? {
        Some(MetaFile::V1(m)) => m,
        None => return Err(StoreError::NotFound),
    };
    let mut prev: Hash = if meta.retained_from > 1 {
        meta::unhex(&meta.retained_prev_hash).unwrap_or([0; 32])
    } else {
        [0; 32]
    };
    let mut seqs: Vec<u64> = fs::read_dir(dir)
        .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?
        .filter_map(|e| format::parse_segment_file_name(e.ok()?.file_name().to_str()?, "seg"))
        .collect();
    seqs.sort_unstable();
    let mut report = VerifyReport {
        segments: seqs.len(),
        blocks: 0,
        lines: 0,
        first_seq: meta.retained_from,
        last_seq: meta.retained_from - 1,
        head: meta::hex(&prev),
        first_bad: None,
    };
    let mut expected = meta.retained_from;
    for first in seqs {
        let path = dir.join(format::segment_file_name(first, "seg"));
        let bad = |offset: u64, expected_seq: u64, reason: String| BadBlock {
            segment: path.clone(),
            offset,
            expected_seq,
            reason,
        };
        if first != expected {
            report.first_bad = Some(bad(
                0,
                expected,
                format!("segment starts at seq {first}, expected {expected}: a segment is missing"),
            ));
            return Ok(report);
        }
        let file = File::open(&path)
            .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?
            .len();
        let mut header = [0u8; format::SEGMENT_HEADER_LEN as usize];
        use std::os::unix::fs::FileExt;
        if file.read_exact_at(&mut header, 0).is_err() || !format::check_segment_header(&header) {
            report.first_bad = Some(bad(0, expected, "bad segment header".into()));
            return Ok(report);
        }
        let mut offset = format::SEGMENT_HEADER_LEN;
        while offset < len {
            let (h, bytes) = match scan_block(&file, offset, len) {
                Ok(b) => b,
                Err(e) => {
                    report.first_bad =
                        Some(bad(offset, expected, format!("unreadable block: {e}")));
                    return Ok(report);
                }
            };
            if h.first_seq != expected {
                report.first_bad = Some(bad(
                    offset,
                    expected,
                    format!(
                        "block starts at seq {}, expected {expected}: blocks were removed or reordered",
                        h.first_seq
                    ),
                ));
                return Ok(report);
            }
            if h.prev_hash != prev {
                report.first_bad = Some(bad(offset, expected, "hash chain broken: the block before this one was changed, removed or reordered".into()));
                return Ok(report);
            }
            if let Err(e) = format::decode_records(&bytes, &h) {
                report.first_bad = Some(bad(
                    offset,
                    expected,
                    format!("payload does not decode: {e}"),
                ));
                return Ok(report);
            }
            prev = *blake3::hash(&bytes).as_bytes();
            expected = h.last_seq() + 1;
            offset += h.total_len();
            report.blocks += 1;
            report.lines += u64::from(h.count);
        }
    }
    report.last_seq = expected - 1;
    report.head = meta::hex(&prev);
    Ok(report)
}

/// Rewrites a completed log into full-size blocks (small live blocks compress poorly),
/// after verifying it: a log that fails `verify` is refused, so compaction never
/// launders tampering. The new log is written beside the old one and swapped in with a
/// rename. Returns (old report, new report).
pub fn compact(
    store: &super::Store,
    id: &DeploymentId,
) -> Result<(VerifyReport, VerifyReport), StoreError> {
    let log = store.log(id, false)?.ok_or(StoreError::NotFound)?;
    let completion = log.completion().ok_or_else(|| {
        StoreError::Config("only completed deployments can be compacted; complete it first".into())
    })?;
    let dir = log.dir().to_owned();
    let before = verify_dir(&dir)?;
    if let Some(bad) = &before.first_bad {
        return Err(StoreError::Corrupt {
            path: bad.segment.clone(),
            reason: format!(
                "refusing to compact a log that fails verify: {}",
                bad.reason
            ),
        });
    }
    if before.first_seq != 1 {
        return Err(StoreError::Config(
            "retention already trimmed this log; compaction would break its anchor".into(),
        ));
    }
    let tmp_id = DeploymentId::new(id.tenant.clone(), format!("{}.compact", id.deployment));
    let tmp_dir = dir.with_file_name(format!("{}.compact", id.deployment));
    if tmp_dir.exists() {
        fs::remove_dir_all(&tmp_dir)
            .map_err(|e| StoreError::io("removing a stale compaction", e))?;
    }
    let quiet = super::StoreHooks {
        clock: store.hooks().clock.clone(),
        ..Default::default()
    };
    let tmp = super::DeploymentLog::open(
        tmp_id,
        tmp_dir.clone(),
        store.cfg.clone(),
        std::sync::Arc::new(quiet),
        true,
    )?
    .expect("created");
    let mut from = 0;
    loop {
        let page = log.read(
            super::Direction::Forward,
            from,
            &logstream_model::Filter::default(),
            65_536,
        )?;
        if !page.records.is_empty() {
            let recs: Vec<LogRecord> = page.records;
            tmp.append(recs, None::<BatchId>)?;
        }
        from = page.scanned_to;
        if page.exhausted {
            break;
        }
    }
    tmp.complete(completion.status, completion.exit_code)?;
    drop(tmp);
    // Keep created_at and the completion time of the original.
    let mut meta = match meta::read_atomic::<MetaFile>(&dir.join("meta.json"))? {
        Some(MetaFile::V1(m)) => m,
        None => return Err(StoreError::NotFound),
    };
    meta.completion = Some(completion);
    meta::write_atomic(&tmp_dir.join("meta.json"), &MetaFile::V1(meta))?;
    if let Ok(p) = fs::read(dir.join("producers.json")) {
        fs::write(tmp_dir.join("producers.json"), p)
            .map_err(|e| StoreError::io("copying producers", e))?;
    }
    let after = verify_dir(&tmp_dir)?;
    if !after.is_clean() || after.lines != before.lines {
        return Err(StoreError::Corrupt {
            path: tmp_dir,
            reason: "compacted copy failed verification; original kept".into(),
        });
    }
    let old = dir.with_file_name(format!("{}.old", id.deployment));
    store.forget(id);
    fs::rename(&dir, &old).map_err(|e| StoreError::io("swapping in the compacted log", e))?;
    fs::rename(&tmp_dir, &dir).map_err(|e| StoreError::io("swapping in the compacted log", e))?;
    meta::sync_dir(dir.parent().expect("parent"))?;
    fs::remove_dir_all(&old).map_err(|e| StoreError::io("removing the old log", e))?;
    Ok((before, after))
}
