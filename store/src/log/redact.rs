//! Audited rewrites of stored lines (hotfix redaction): the matched bytes of some lines
//! are replaced in place, in every copy (local segment, its index, object storage),
//! and the hash chain records the rewrite (see `format` and `ledger`).
//!
//! Per segment holding a changed line, in this order:
//! 1. The new segment is built in memory: unchanged blocks byte for byte, changed ones
//!    re-encoded as REWRITTEN versions (same first seq, count, marks, `written_at`,
//!    `prev_hash`; `link_hash` the original's; `record_hash` their ledger line's).
//! 2. The ledger lines are appended and fsync'd. A crash from here to step 5 leaves
//!    records naming versions that never were: ignored by verify; retry the redaction.
//! 3. With object storage, the new `.seg` and `.idx` objects are put and read back,
//!    then the manifest names them (and `remote.json` is written).
//! 4. The new `.seg` (if the segment is on local disk) and `.idx` are written beside the
//!    old ones (`*.redact`) and fsync'd.
//! 5. Under the `swap` lock (readers hold it shared), both are renamed over the old
//!    files and the view (size, in-memory index, manifest entry) is updated; then the
//!    directory is fsync'd. The active segment is rewritten under the writer lock,
//!    whose files are the renamed ones afterwards (appends continue after the new
//!    end; `last_hash` stays the link hash, so the next block chains correctly).
//! 6. The old objects are deleted (a failure leaves an orphan the sweep removes).
//!
//! The whole redaction holds `maintenance` (no retention, eviction, compaction or
//! deletion of this log meanwhile: those wait for it); each segment's rewrite holds
//! `remote_state` (no upload pass of this log meanwhile); only the active segment's
//! rewrite holds the writer lock, so appends wait only for that one (including the wait
//! for reads in progress when it is swapped in).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use logstream_model::LogRecord;
use parking_lot::MutexGuard;
use regex::Regex;

use super::offload::fetch_segment;
use super::{DeploymentLog, Writer};
use crate::StoreError;
use crate::format::{self, Hash, IndexEntry, Rewritten};
use crate::ledger::{LedgerRecord, LedgerTail};
use crate::meta;
use crate::remote::{self, Manifest, RemoteSegment};

/// The redaction detector a rewritten line counts its matches under (in
/// `LogRecord::redaction`), so viewers can show the line was masked.
pub const HOTFIX_DETECTOR: &str = "hotfix";

/// Suffix of the files a rewrite writes before renaming them into place.
const TMP_SUFFIX: &str = ".redact";

/// At most this many bytes of `subject` and of `reason` (they go into every ledger line).
const MAX_TEXT: usize = 4096;

/// What to mask: lines in `seqs` (inclusive), or every line when None; within them the
/// matches of `pattern`, or the whole message when None. At least one is given.
#[derive(Debug, Clone)]
pub struct RedactRequest {
    pub seqs: Option<(u64, u64)>,
    /// Matches are replaced in the message and in metadata values. Empty matches are
    /// skipped. Never written anywhere by the store (it may be the secret itself).
    pub pattern: Option<Regex>,
    /// What each match (or the whole message) becomes, literally (no `$1` expansion).
    pub replacement: String,
    /// Who asked (recorded in the ledger).
    pub subject: String,
    /// Why (recorded in the ledger; required).
    pub reason: String,
}

/// What a redaction changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedactOutcome {
    /// Lines changed.
    pub lines: u64,
    /// Blocks rewritten.
    pub blocks: u64,
    /// Matches replaced (1 per line when whole messages were replaced).
    pub matches: u64,
    /// The changed lines' seqs, as inclusive ranges in order.
    pub seqs: Vec<(u64, u64)>,
    /// Hex BLAKE3 of the ledger's last line now ("" while it has none). Like a chain
    /// head, worth recording elsewhere (the audit log): the newest ledger line, like
    /// the newest block, is only as safe as a copy of its hash kept outside the log.
    pub ledger_head: String,
}

impl RedactRequest {
    fn validate(&self) -> Result<(), StoreError> {
        let bad = |m: &str| Err(StoreError::Config(format!("invalid redaction: {m}")));
        if self.seqs.is_none() && self.pattern.is_none() {
            return bad("give a seq range, a pattern, or both");
        }
        if let Some((a, b)) = self.seqs
            && (a == 0 || a > b)
        {
            return bad("the seq range must be A-B with 1 <= A <= B");
        }
        if self.reason.trim().is_empty() {
            return bad("a reason is required");
        }
        if self.subject.trim().is_empty() {
            return bad("a subject is required");
        }
        if self.reason.len() > MAX_TEXT || self.subject.len() > MAX_TEXT {
            return bad("subject and reason are limited to 4096 bytes");
        }
        Ok(())
    }

    /// Whether seqs `first..=last` may hold a line to change.
    fn overlaps(&self, first: u64, last: u64) -> bool {
        self.seqs.is_none_or(|(a, b)| a <= last && first <= b)
    }

    /// Masks `r` in place; returns the matches replaced (0: the line is unchanged).
    fn apply(&self, r: &mut LogRecord) -> u64 {
        if self.seqs.is_some_and(|(a, b)| !(a..=b).contains(&r.seq)) {
            return 0;
        }
        let matches = match &self.pattern {
            None if r.message == self.replacement => 0,
            None => {
                r.message.clone_from(&self.replacement);
                // Metadata can hold what the line held (OTLP attributes, Loki labels):
                // whole lines go whole; the split marker is the store's own.
                for (k, v) in r.metadata.iter_mut() {
                    if k != "split" {
                        v.clone_from(&self.replacement);
                    }
                }
                1
            }
            Some(re) => {
                let mut n = 0;
                if let Some((text, m)) = mask(re, &r.message, &self.replacement) {
                    r.message = text;
                    n += m;
                }
                for v in r.metadata.values_mut() {
                    if let Some((text, m)) = mask(re, v, &self.replacement) {
                        *v = text;
                        n += m;
                    }
                }
                n
            }
        };
        if matches > 0 {
            r.redaction
                .add(HOTFIX_DETECTOR, u32::try_from(matches).unwrap_or(u32::MAX));
        }
        matches
    }
}

/// `text` with every non-empty match of `re` replaced by `with`, and how many there
/// were; None when that changes nothing.
fn mask(re: &Regex, text: &str, with: &str) -> Option<(String, u64)> {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut n = 0;
    for m in re.find_iter(text).filter(|m| !m.is_empty()) {
        out.push_str(&text[last..m.start()]);
        out.push_str(with);
        last = m.end();
        n += 1;
    }
    out.push_str(&text[last..]);
    (out != text).then_some((out, n))
}

/// Seqs in ascending order as inclusive ranges.
fn ranges(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in seqs {
        match out.last_mut() {
            Some((_, b)) if *b + 1 == s => *b = s,
            _ => out.push((s, s)),
        }
    }
    out
}

/// One segment rewritten in memory.
struct NewSegment {
    bytes: Vec<u8>,
    entries: Vec<IndexEntry>,
    /// Ledger lines, one per rewritten block, chained after the ledger's head.
    lines: Vec<String>,
    blocks: u64,
    matches: u64,
    /// Seqs of the changed lines.
    seqs: Vec<u64>,
}

/// Rewrites the blocks of segment `data` (of the segment starting at `seg_first`) that
/// `req` changes; None when it changes nothing. `Err((offset, why))` names a block that
/// does not read (a segment that fails verify is not rewritten around its bad block).
fn rewrite_segment(
    data: &[u8],
    seg_first: u64,
    req: &RedactRequest,
    at: i64,
    mut head: Option<Hash>,
    zstd_level: i32,
) -> Result<Option<NewSegment>, (u64, String)> {
    let hl = format::SEGMENT_HEADER_LEN as usize;
    if data.len() < hl || !format::check_segment_header(&data[..hl]) {
        return Err((0, "bad segment header".into()));
    }
    let mut new = NewSegment {
        bytes: Vec::with_capacity(data.len()),
        entries: Vec::new(),
        lines: Vec::new(),
        blocks: 0,
        matches: 0,
        seqs: Vec::new(),
    };
    new.bytes.extend_from_slice(&data[..hl]);
    let mut cum = i64::MIN;
    let mut offset = hl as u64;
    while offset < data.len() as u64 {
        let (h, block) = crate::verify::block_in(data, offset)
            .map_err(|e| (offset, format!("unreadable block: {e}")))?;
        let at_offset = new.bytes.len() as u64;
        let mut header = None;
        if req.overlaps(h.first_seq, h.last_seq()) {
            let mut records = format::decode_records(block, &h)
                .map_err(|e| (offset, format!("payload does not decode: {e}")))?;
            let mut changed = Vec::new();
            let mut matches = 0;
            for r in &mut records {
                let n = req.apply(r);
                if n > 0 {
                    changed.push(r.seq);
                    matches += n;
                }
            }
            if !changed.is_empty() {
                let hash = *blake3::hash(block).as_bytes();
                let link = h.link_hash(&hash);
                let mut rec = LedgerRecord {
                    block: h.first_seq,
                    segment: seg_first,
                    seqs: ranges(&changed),
                    subject: req.subject.clone(),
                    reason: req.reason.clone(),
                    at,
                    replaced_hash: meta::hex(&hash),
                    new_hash: String::new(),
                    link_hash: meta::hex(&link),
                    matches,
                    prev: head.map(|h| meta::hex(&h)).unwrap_or_default(),
                };
                // The block commits to the line with `new_hash` empty (see `ledger`).
                let record_hash = *blake3::hash(rec.line().as_bytes()).as_bytes();
                let b = format::encode_rewritten(
                    &records,
                    &h,
                    Rewritten {
                        link_hash: link,
                        record_hash,
                    },
                    zstd_level,
                );
                rec.new_hash = meta::hex(&b.hash);
                let line = rec.line();
                debug_assert_eq!(
                    crate::ledger::authorisation_hash(&line, &rec.new_hash),
                    Some(record_hash)
                );
                head = Some(*blake3::hash(line.as_bytes()).as_bytes());
                new.lines.push(line);
                new.blocks += 1;
                new.matches += matches;
                new.seqs.extend(changed);
                new.bytes.extend_from_slice(&b.bytes);
                header = Some(b.header);
            }
        }
        let header = header.unwrap_or_else(|| {
            new.bytes.extend_from_slice(block);
            h.clone()
        });
        let e = IndexEntry::from_header(&header, at_offset, cum);
        cum = e.max_ts_cum;
        new.entries.push(e);
        offset += h.total_len();
    }
    Ok((new.blocks > 0).then_some(new))
}

/// Writes `bytes` to a new file at `path` and fsyncs it; returns it open for reading and
/// writing (the writer's handle once renamed into place).
fn write_new(path: &Path, bytes: &[u8]) -> Result<File, StoreError> {
    let io = |e| StoreError::io(format!("writing {}", path.display()), e);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    f.write_all_at(bytes, 0)
        .and_then(|()| f.sync_all())
        .map_err(io)?;
    Ok(f)
}

fn tmp_path(dir: &Path, first: u64, ext: &str) -> PathBuf {
    dir.join(format!(
        "{}{TMP_SUFFIX}",
        format::segment_file_name(first, ext)
    ))
}

/// Removes the `*.redact` files a rewrite cut short left (they hold no line that is not
/// also in the segment they were to replace, or its redacted version).
pub(super) fn remove_leftovers(dir: &Path) -> Result<(), StoreError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(format!("listing {}", dir.display()), e)),
    };
    for entry in rd.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(TMP_SUFFIX))
        {
            let p = entry.path();
            fs::remove_file(&p)
                .map_err(|e| StoreError::io(format!("removing {}", p.display()), e))?;
        }
    }
    Ok(())
}

/// A log closed by `Store::delete`: nothing else replaces its files, uploads or appends
/// while this is held, and appends answer NotFound from now on.
pub(crate) struct ClosedLog<'a> {
    _maintenance: MutexGuard<'a, ()>,
    _remote_state: MutexGuard<'a, Option<Manifest>>,
}

impl DeploymentLog {
    /// Masks lines (see [`RedactRequest`]) in every copy of the log and records each
    /// rewritten block in the ledger (`redactions.ndjson`); seqs stay valid and `verify`
    /// accepts the rewrites as audited. Lines appended while it runs are covered up to
    /// the moment the active segment is rewritten; lines appended after it returns are
    /// not. A failure leaves the segments done so far redacted and the rest as they
    /// were: retry it (redacting a redacted line changes nothing).
    pub fn redact(&self, req: &RedactRequest) -> Result<RedactOutcome, StoreError> {
        req.validate()?;
        let _one = self.maintenance.lock();
        if self.is_deleted() {
            return Err(StoreError::NotFound);
        }
        let mut ledger = LedgerTail::open(&self.dir)?;
        let mut out = RedactOutcome::default();
        let mut seqs = Vec::new();
        let at = self.hooks.clock.now();
        let mut after: Option<u64> = None;
        let result = loop {
            // Segments in order, looked up afresh each time: one may have rolled (sealed,
            // and a new active one after it) meanwhile.
            let next = self
                .view
                .read()
                .segments
                .iter()
                .map(|s| s.first_seq)
                .find(|f| after.is_none_or(|a| *f > a));
            let Some(first) = next else {
                break Ok(());
            };
            after = Some(first);
            if req.seqs.is_some_and(|(_, b)| first > b) {
                break Ok(());
            }
            // Per segment: an upload pass may run between two (a segment uploaded
            // meanwhile is then rewritten in object storage too).
            let mut state = self.remote_state.lock();
            let mut guard = self.writer.lock();
            let done = if guard.as_ref().is_some_and(|w| w.seg_first_seq == first) {
                // The active segment: no append until it is swapped in.
                let w = guard.as_mut().expect("checked");
                self.redact_segment(req, first, Some(w), &mut state, &mut ledger, at)
            } else {
                drop(guard);
                self.redact_segment(req, first, None, &mut state, &mut ledger, at)
            };
            match done {
                Ok(Some(n)) => {
                    out.blocks += n.blocks;
                    out.matches += n.matches;
                    out.lines += n.seqs.len() as u64;
                    seqs.extend(n.seqs);
                }
                Ok(None) => {}
                Err(e) => break Err(e),
            }
        };
        out.ledger_head = ledger.head.map(|h| meta::hex(&h)).unwrap_or_default();
        if out.blocks > 0 {
            if let Some(t) = &self.tiering {
                // The ledger object is behind (rewrites of segments not uploaded yet).
                t.mark_pending(&self.id);
            }
            self.catalog_update();
            tracing::info!(log = %self.id, lines = out.lines, blocks = out.blocks, "lines redacted");
        }
        out.seqs = ranges(&seqs);
        result.map(|()| out)
    }

    /// Rewrites the segment starting at `first` if `req` changes a line in it (see the
    /// module doc); `w` is the writer when it is the active segment. Returns what
    /// changed (None: nothing).
    fn redact_segment(
        &self,
        req: &RedactRequest,
        first: u64,
        w: Option<&mut Writer>,
        state: &mut Option<Manifest>,
        ledger: &mut LedgerTail,
        at: i64,
    ) -> Result<Option<NewSegment>, StoreError> {
        let seg = {
            let v = self.view.read();
            v.segments.iter().find(|s| s.first_seq == first).cloned()
        };
        let Some(seg) = seg.filter(|s| s.last_seq >= s.first_seq) else {
            return Ok(None);
        };
        if !req.overlaps(seg.first_seq, seg.last_seq) {
            return Ok(None);
        }
        let seg_path = self.dir.join(format::segment_file_name(first, "seg"));
        let idx_path = self.dir.join(format::segment_file_name(first, "idx"));
        let io = |what: &str, p: &Path, e| StoreError::io(format!("{what} {}", p.display()), e);
        let tiering = match (&seg.remote, &self.tiering) {
            (Some(_), None) => {
                return Err(StoreError::Unavailable(format!(
                    "lines {}..={} of {} are in object storage, which is not configured here; they cannot be redacted without it",
                    seg.first_seq, seg.last_seq, self.id
                )));
            }
            (_, t) => t.clone(),
        };
        // The segment's bytes: the active one up to the last acknowledged block.
        let (data, local) = match &w {
            Some(w) => {
                let mut buf = vec![0u8; w.seg_len as usize];
                w.seg
                    .read_exact_at(&mut buf, 0)
                    .map_err(|e| io("reading", &seg_path, e))?;
                (buf, true)
            }
            None => match (seg.local, &seg.remote, &tiering) {
                (true, r, t) => match fs::read(&seg_path) {
                    Ok(b) => (b, true),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && r.is_some() => {
                        let (r, t) = (r.as_ref().expect("some"), t.as_ref().expect("checked"));
                        (fetch_segment(t, &self.id, r)?, false)
                    }
                    Err(e) => return Err(io("reading", &seg_path, e)),
                },
                (false, Some(r), Some(t)) => (fetch_segment(t, &self.id, r)?, false),
                (false, _, _) => {
                    return Err(StoreError::Corrupt {
                        path: seg_path,
                        reason: "segment file missing and not in object storage".into(),
                    });
                }
            },
        };
        let new = rewrite_segment(&data, first, req, at, ledger.head, self.cfg.zstd_level)
            .map_err(|(offset, why)| StoreError::Corrupt {
                path: seg_path.clone(),
                reason: format!(
                    "block at offset {offset}: {why}; refusing to redact a segment that fails verify"
                ),
            })?;
        drop(data);
        let Some(new) = new else {
            return Ok(None);
        };

        // 2. The audit records, durable before anything is swapped.
        ledger.append(&self.dir, &new.lines)?;
        self.hooks
            .faults
            .check("redact_swap")
            .map_err(|e| io("swapping in the redacted", &seg_path, e))?;
        let idx_bytes: Vec<u8> = new.entries.iter().flat_map(|e| e.encode()).collect();

        // 3. Object storage: the new objects, then the manifest naming them.
        let mut new_remote = None;
        if let (Some(old), Some(t)) = (&seg.remote, &tiering) {
            let r = RemoteSegment {
                bytes: new.bytes.len() as u64,
                seg_blake3: meta::hex(blake3::hash(&new.bytes).as_bytes()),
                idx_bytes: idx_bytes.len() as u64,
                idx_blake3: meta::hex(blake3::hash(&idx_bytes).as_bytes()),
                // A rewrite keeps every block's link hash, so `last_hash` stays.
                ..(**old).clone()
            };
            self.put_segment_objects(t, &r, &new.bytes, &idx_bytes)?;
            let mut m = state.clone().unwrap_or_default();
            // The ledger holding this rewrite's records goes with the manifest.
            let ledger_up = match self.upload_ledger(t, &mut m) {
                Ok(up) => up,
                Err(e) => {
                    self.done_in_flight(t, &r);
                    return Err(e);
                }
            };
            let written = match m.segments.iter_mut().find(|s| s.first_seq == first) {
                Some(s) => {
                    *s = r.clone();
                    self.write_manifest(t, &m)
                }
                None => Err(StoreError::Corrupt {
                    path: self.dir.join(super::offload::REMOTE_FILE),
                    reason: format!("the manifest does not name segment {first}"),
                }),
            };
            self.done_in_flight(t, &r);
            if let Some(up) = ledger_up {
                self.ledger_uploaded(t, up, written.is_ok());
            }
            written?;
            *state = Some(m);
            new_remote = Some(Arc::new(r));
        }

        // 4. The new files beside the old ones.
        let seg_tmp = tmp_path(&self.dir, first, "seg");
        let idx_tmp = tmp_path(&self.dir, first, "idx");
        let files = (if local {
            write_new(&seg_tmp, &new.bytes).map(Some)
        } else {
            Ok(None)
        })
        .and_then(|seg| Ok((seg, write_new(&idx_tmp, &idx_bytes)?)));
        let (seg_file, idx_file) = match files {
            Ok(f) => f,
            Err(e) => {
                let _ = fs::remove_file(&seg_tmp);
                let _ = fs::remove_file(&idx_tmp);
                return Err(e);
            }
        };

        // 5. The swap, invisible to readers.
        let swapped = {
            let _swap = self.swap.write();
            let mut view = self.view.write();
            let mut s = view.segments.iter_mut().find(|s| s.first_seq == first);
            if let (Some(s), Some(r)) = (s.as_deref_mut(), &new_remote) {
                // The manifest names the new objects now, whatever happens below.
                s.remote = Some(r.clone());
            }
            if local && let Err(e) = fs::rename(&seg_tmp, &seg_path) {
                let _ = fs::remove_file(&seg_tmp);
                let _ = fs::remove_file(&idx_tmp);
                return Err(io("swapping in", &seg_path, e));
            }
            let swapped = fs::rename(&idx_tmp, &idx_path).map_err(|e| {
                // The old index does not match the new segment: without one, the next
                // open rebuilds it (from the segment, or from object storage).
                let _ = fs::remove_file(&idx_path);
                let _ = fs::remove_file(&idx_tmp);
                io("swapping in", &idx_path, e)
            });
            if let Some(s) = s {
                s.bytes = new.bytes.len() as u64;
                if s.index.is_some() {
                    s.index = Some(Arc::new(new.entries.clone()));
                }
            }
            drop(view);
            self.index_cache.lock().retain(|(f, _)| *f != first);
            swapped
        };
        if let Some(w) = w {
            // The old files are unlinked: the writer continues in the new ones.
            w.seg = seg_file.expect("the active segment is local");
            w.seg_len = new.bytes.len() as u64;
            w.idx = idx_file;
            if let Err(e) = &swapped {
                w.poisoned = Some(format!("a redaction could not swap its index in: {e}"));
            }
        }
        swapped?;
        meta::sync_dir(&self.dir)?;

        // 6. The old objects go (they hold the masked bytes).
        if let (Some(old), Some(r), Some(t)) = (&seg.remote, &new_remote, &tiering) {
            if !local && t.scanned.load(Ordering::Acquire) {
                let (was, now) = (old.bytes, r.bytes);
                let _ =
                    t.remote_only_bytes
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                            Some((v + now).saturating_sub(was))
                        });
            }
            let prefix = remote::log_prefix(&self.id);
            for (old_name, new_name) in [
                (old.seg_name(), r.seg_name()),
                (old.idx_name(), r.idx_name()),
            ] {
                if old_name == new_name {
                    continue;
                }
                let key = format!("{prefix}{old_name}");
                if let Err(e) = t.remote.delete(&key) {
                    tracing::warn!(log = %self.id, key, error = %e, "deleting the unredacted object failed; the sweep deletes it (no manifest names it)");
                }
            }
        }
        Ok(Some(new))
    }

    /// Closes the log for `Store::delete`: the writer goes (appends and completions
    /// answer NotFound from now on, also through handles taken before) and nothing
    /// replaces, uploads or deletes its files while the guard is held.
    pub(crate) fn close_for_delete(&self) -> ClosedLog<'_> {
        let maintenance = self.maintenance.lock();
        let remote_state = self.remote_state.lock();
        let mut writer = self.writer.lock();
        self.deleted.store(true, Ordering::Release);
        *writer = None;
        ClosedLog {
            _maintenance: maintenance,
            _remote_state: remote_state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(seqs: Option<(u64, u64)>, pattern: Option<&str>) -> RedactRequest {
        RedactRequest {
            seqs,
            pattern: pattern.map(|p| Regex::new(p).unwrap()),
            replacement: "[REDACTED]".into(),
            subject: "admin".into(),
            reason: "leak".into(),
        }
    }

    #[test]
    fn a_request_masks_matches_in_messages_and_metadata_within_its_seqs() {
        let mut r = LogRecord::new(1, "build", "token=abc123 and abc123");
        r.seq = 5;
        r.metadata.insert("env".into(), "T=abc123".into());
        let mut other = r.clone();
        assert_eq!(req(None, Some("abc[0-9]+")).apply(&mut r), 3);
        assert_eq!(r.message, "token=[REDACTED] and [REDACTED]");
        assert_eq!(r.metadata["env"], "T=[REDACTED]");
        assert_eq!(r.redaction.0[HOTFIX_DETECTOR], 3);
        assert_eq!(req(Some((6, 9)), Some("abc")).apply(&mut other), 0);
        assert_eq!(req(Some((5, 5)), None).apply(&mut other), 1);
        assert_eq!(other.message, "[REDACTED]");
        // Already masked: nothing changes, nothing is rewritten again.
        assert_eq!(req(Some((5, 5)), None).apply(&mut other), 0);
        // Empty matches never insert anything.
        let mut e = LogRecord::new(1, "s", "xyz");
        assert_eq!(req(None, Some("q*")).apply(&mut e), 0);
        assert_eq!(e.message, "xyz");
    }

    #[test]
    fn invalid_requests_are_refused() {
        for bad in [
            req(None, None),
            req(Some((0, 3)), None),
            req(Some((4, 3)), None),
            RedactRequest {
                reason: " ".into(),
                ..req(Some((1, 1)), None)
            },
            RedactRequest {
                subject: String::new(),
                ..req(Some((1, 1)), None)
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(StoreError::Config(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn seqs_become_ranges() {
        assert_eq!(ranges(&[1, 2, 3, 5, 7, 8]), vec![(1, 3), (5, 5), (7, 8)]);
        assert_eq!(ranges(&[]), Vec::<(u64, u64)>::new());
    }
}
