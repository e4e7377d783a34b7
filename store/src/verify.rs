//! Tamper check and compaction of a deployment's log.
//!
//! `verify_dir` walks every block of every segment from the bytes on disk (not the
//! index): magic and lengths, CRC32C, the BLAKE3 chain (`prev_hash` of each block equals
//! the link hash of the block before it, across segments, starting from the retention
//! anchor in `meta.json`: a block's own hash, or for a REWRITTEN block the original's it
//! carries), dense seqs, and that every payload decodes. A REWRITTEN block is accepted
//! only with its audit record in the ledger (`redactions.ndjson`, see `ledger`): the
//! record its `record_hash` names must describe this block (first seq, this version's
//! hash, the link hash), the versions it replaced must be audited back to the original,
//! and the ledger's own chain must hold up to that record. It reports the first bad
//! block: an edited byte fails the CRC, a removed or reordered block breaks the seq run
//! and the chain, a rewrite nobody audited fails the ledger check; and then a break in
//! the ledger's chain. With object storage, segments held there are read from it and
//! every uploaded object is checked against the manifest (size and BLAKE3).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use logstream_model::LogRecord;

use super::format::{self, Hash};
use super::ledger::{self, LEDGER_FILE};
use super::meta::{self, MetaFile};
use super::remote::{RemoteError, RemoteSegment, Tiering};
use super::{BatchId, DeploymentId, StoreError};

/// The result of verifying one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub segments: usize,
    pub blocks: u64,
    pub lines: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The head of the chain: the link hash of the last block (its BLAKE3, or the
    /// original's for a rewritten block: an audited rewrite does not move the head).
    pub head: String,
    /// Audited rewrites of the blocks verified, in block order (a block rewritten
    /// twice is listed twice, oldest first).
    pub rewrites: Vec<Rewrite>,
    /// Hex BLAKE3 of the audit ledger's last line ("" without one): its head, as
    /// `head` is the blocks' (compare it with the one recorded at the last redaction).
    pub ledger_head: String,
    /// The first problem found, if any: where and what.
    pub first_bad: Option<BadBlock>,
}

/// One audited rewrite (a redaction) of a block, from its ledger record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// First seq of the block.
    pub block: u64,
    /// First seq of its segment.
    pub segment: u64,
    /// The lines it changed, as inclusive ranges.
    pub seqs: Vec<(u64, u64)>,
    pub subject: String,
    pub reason: String,
    /// Store wallclock, Unix ns.
    pub at: i64,
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

/// Verifies the log stored in `dir` (a deployment directory) from its local files; a
/// segment held only in object storage is reported missing (see [`verify_log`]).
pub fn verify_dir(dir: &Path) -> Result<VerifyReport, StoreError> {
    verify_log(dir, None)
}

/// One segment's bytes for verification, and what to call it in a report.
struct SegmentBytes {
    name: PathBuf,
    bytes: Vec<u8>,
}

/// Verifies the log in `dir`, with `remote` (its tiering and id) the segments in
/// object storage too: each uploaded segment's object (and its index) must match the
/// manifest's size and BLAKE3, and the chain runs across local and remote segments. A
/// missing or altered object is named.
pub fn verify_log(
    dir: &Path,
    remote: Option<(&Tiering, &DeploymentId)>,
) -> Result<VerifyReport, StoreError> {
    let meta = match meta::read_atomic::<MetaFile>(&dir.join("meta.json"))? {
        Some(MetaFile::V1(m)) => m,
        None => return Err(StoreError::NotFound),
    };
    let manifest = super::log::local_manifest(dir)?;
    let ledger = ledger::read(dir)?;
    let uploaded: BTreeMap<u64, &RemoteSegment> = manifest
        .iter()
        .flat_map(|m| &m.segments)
        .filter(|s| s.first_seq >= meta.retained_from)
        .map(|s| (s.first_seq, s))
        .collect();
    let mut prev: Hash = if meta.retained_from > 1 {
        meta::unhex(&meta.retained_prev_hash).unwrap_or([0; 32])
    } else {
        [0; 32]
    };
    let local: Vec<u64> = fs::read_dir(dir)
        .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?
        .filter_map(|e| format::parse_segment_file_name(e.ok()?.file_name().to_str()?, "seg"))
        .collect();
    let mut seqs: Vec<u64> = local
        .iter()
        .copied()
        .chain(uploaded.keys().copied())
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    let mut report = VerifyReport {
        segments: seqs.len(),
        blocks: 0,
        lines: 0,
        first_seq: meta.retained_from,
        last_seq: meta.retained_from - 1,
        head: meta::hex(&prev),
        rewrites: Vec::new(),
        ledger_head: ledger.head.map(|h| meta::hex(&h)).unwrap_or_default(),
        first_bad: None,
    };
    let mut expected = meta.retained_from;
    for first in seqs {
        let path = dir.join(format::segment_file_name(first, "seg"));
        if first != expected {
            report.first_bad = Some(BadBlock {
                segment: path,
                offset: 0,
                expected_seq: expected,
                reason: format!(
                    "segment starts at seq {first}, expected {expected}: a segment is missing"
                ),
            });
            return Ok(report);
        }
        let seg = match segment_bytes(dir, first, uploaded.get(&first).copied(), remote)? {
            Ok(seg) => seg,
            Err((name, reason)) => {
                report.first_bad = Some(BadBlock {
                    segment: name,
                    offset: 0,
                    expected_seq: expected,
                    reason,
                });
                return Ok(report);
            }
        };
        let bad = |offset: u64, expected_seq: u64, reason: String| BadBlock {
            segment: seg.name.clone(),
            offset,
            expected_seq,
            reason,
        };
        let data = &seg.bytes;
        let len = data.len() as u64;
        if data.len() < format::SEGMENT_HEADER_LEN as usize
            || !format::check_segment_header(&data[..format::SEGMENT_HEADER_LEN as usize])
        {
            report.first_bad = Some(bad(0, expected, "bad segment header".into()));
            return Ok(report);
        }
        let mut offset = format::SEGMENT_HEADER_LEN;
        while offset < len {
            let (h, bytes) = match block_in(data, offset) {
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
            let hash = *blake3::hash(bytes).as_bytes();
            if let Some(rw) = &h.rewritten {
                match ledger::check_rewrite(&ledger, &h, &hash, rw) {
                    Ok(history) => report.rewrites.extend(history.into_iter().map(|r| Rewrite {
                        block: r.block,
                        segment: r.segment,
                        seqs: r.seqs.clone(),
                        subject: r.subject.clone(),
                        reason: r.reason.clone(),
                        at: r.at,
                    })),
                    Err(reason) => {
                        report.first_bad = Some(bad(offset, expected, reason));
                        return Ok(report);
                    }
                }
            }
            if let Err(e) = format::decode_records(bytes, &h) {
                report.first_bad = Some(bad(
                    offset,
                    expected,
                    format!("payload does not decode: {e}"),
                ));
                return Ok(report);
            }
            prev = h.link_hash(&hash);
            expected = h.last_seq() + 1;
            offset += h.total_len();
            report.blocks += 1;
            report.lines += u64::from(h.count);
        }
    }
    report.last_seq = expected - 1;
    report.head = meta::hex(&prev);
    if let Some(b) = ledger.broken {
        // The audit trail itself was edited (even where no block relies on it now).
        report.first_bad = Some(BadBlock {
            segment: dir.join(LEDGER_FILE),
            offset: b.offset,
            expected_seq: 0,
            reason: b.reason,
        });
    }
    Ok(report)
}

/// The checked block at `offset` of a whole segment in memory.
pub(crate) fn block_in(
    data: &[u8],
    offset: u64,
) -> Result<(format::BlockHeader, &[u8]), format::FormatError> {
    let start = offset as usize;
    let prefix = data
        .get(start..start + format::PREFIX_LEN)
        .ok_or(format::FormatError::Truncated)?;
    let (hl, pl) = format::block_lengths(prefix)?;
    let end = start + hl as usize + pl as usize;
    let block = data.get(start..end).ok_or(format::FormatError::Truncated)?;
    let h = format::decode_header(block)?;
    format::check_block(block, &h)?;
    Ok((h, block))
}

/// A segment's bytes: the local file, and with `remote`, its object (which must match
/// the manifest; read even when a local copy exists, so an altered object is found).
/// `Ok(Err((name, reason)))` names a missing or altered segment.
#[allow(clippy::type_complexity)]
fn segment_bytes(
    dir: &Path,
    first: u64,
    uploaded: Option<&RemoteSegment>,
    remote: Option<(&Tiering, &DeploymentId)>,
) -> Result<Result<SegmentBytes, (PathBuf, String)>, StoreError> {
    let path = dir.join(format::segment_file_name(first, "seg"));
    let local = match fs::read(&path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
    };
    let Some(r) = uploaded else {
        return Ok(match local {
            Some(bytes) => Ok(SegmentBytes { name: path, bytes }),
            None => Err((path, "segment file missing".into())),
        });
    };
    if let Some(bytes) = &local
        && (bytes.len() as u64 != r.bytes
            || meta::hex(blake3::hash(bytes).as_bytes()) != r.seg_blake3)
    {
        return Ok(Err((
            path,
            "the local copy differs from the uploaded segment (size or BLAKE3): one was altered"
                .into(),
        )));
    }
    let Some((t, id)) = remote else {
        return match local {
            Some(bytes) => Ok(Ok(SegmentBytes { name: path, bytes })),
            None => Err(StoreError::Unavailable(format!(
                "segment {first}..={} is only in object storage; give the gateway's configuration (--config) to verify it",
                r.last_seq
            ))),
        };
    };
    let prefix = crate::remote::log_prefix(id);
    let mut objects = Vec::with_capacity(2);
    for (name, size, hash) in [
        (r.seg_name(), r.bytes, &r.seg_blake3),
        (r.idx_name(), r.idx_bytes, &r.idx_blake3),
    ] {
        let key = format!("{prefix}{name}");
        let shown = PathBuf::from(format!("{}/{key}", t.describe().trim_end_matches('/')));
        let bytes = match t.remote.get(&key) {
            Ok(b) => b,
            Err(RemoteError::NotFound) => {
                return Ok(Err((shown, "missing from object storage".into())));
            }
            Err(e) => {
                return Err(StoreError::Unavailable(format!(
                    "reading {key} from object storage ({}): {e}",
                    t.describe()
                )));
            }
        };
        if bytes.len() as u64 != size || meta::hex(blake3::hash(&bytes).as_bytes()) != *hash {
            return Ok(Err((
                shown,
                format!(
                    "the object was altered: {} bytes and BLAKE3 differ from the manifest's ({size} bytes)",
                    bytes.len()
                ),
            )));
        }
        objects.push((shown, bytes));
    }
    let (name, bytes) = objects.swap_remove(0);
    Ok(Ok(match local {
        Some(bytes) => SegmentBytes { name: path, bytes },
        None => SegmentBytes { name, bytes },
    }))
}

/// Rewrites a completed log into full-size blocks (small live blocks compress poorly),
/// after verifying it: a log that fails `verify` is refused, so compaction never
/// launders tampering. A log with audited rewrites (redactions) is refused too: its new
/// blocks would drop the rewrites' audit trail. The new log is written beside the old
/// one (`.<deployment>.compact`, a name no deployment can have) and swapped in with
/// renames (the old one goes through `.<deployment>.old`; `Store::open` finishes a swap
/// a crash cut short). Returns (old report, new report).
pub fn compact(
    store: &super::Store,
    id: &DeploymentId,
) -> Result<(VerifyReport, VerifyReport), StoreError> {
    let log = store.log(id, false)?.ok_or(StoreError::NotFound)?;
    if log.has_remote() {
        return Err(StoreError::Config(
            "its segments are in object storage; offloaded logs are not compacted".into(),
        ));
    }
    let completion = log.completion().ok_or_else(|| {
        StoreError::Config("only completed deployments can be compacted; complete it first".into())
    })?;
    // No redaction, retention or deletion of this log meanwhile.
    let _one = log.maintenance();
    let dir = log.dir().to_owned();
    if dir.join(LEDGER_FILE).exists() {
        return Err(StoreError::Config(format!(
            "this log has audited rewrites ({LEDGER_FILE}); compaction would drop their audit trail"
        )));
    }
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
    let tmp_dir = dir.with_file_name(format!(".{}.compact", id.deployment));
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
        None,
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
    // What the gateway keeps beside the segments (bookmarks) goes along.
    if let Ok(b) = fs::read(dir.join("bookmarks.json")) {
        fs::write(tmp_dir.join("bookmarks.json"), b)
            .map_err(|e| StoreError::io("copying bookmarks", e))?;
    }
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
    let old = dir.with_file_name(format!(".{}.old", id.deployment));
    store.forget(id);
    fs::rename(&dir, &old).map_err(|e| StoreError::io("swapping in the compacted log", e))?;
    fs::rename(&tmp_dir, &dir).map_err(|e| StoreError::io("swapping in the compacted log", e))?;
    meta::sync_dir(dir.parent().expect("parent"))?;
    fs::remove_dir_all(&old).map_err(|e| StoreError::io("removing the old log", e))?;
    Ok((before, after))
}
