//! One log's side of object storage: uploading its sealed segments (verified before a
//! local copy may go), the manifest, evicting a local copy, reading a block of a
//! segment held only in object storage (one ranged GET), and adopting a log from its
//! manifest (Kafka mode: a replica that takes a partition over).
//!
//! Order of writes, so a crash anywhere leaves nothing lost and nothing referenced that
//! is not there: the `.seg` and `.idx` objects are put and read back (size and BLAKE3),
//! then the manifest naming them is put, then `remote.json` is written locally; only
//! then may the local copy be evicted. A crash before the manifest leaves an orphan the
//! sweep deletes (and the restart uploads the segment again, under the same name). The
//! audit ledger of rewritten blocks goes the same way (a new object per version, put
//! before the manifest naming it), so a replica adopting the log verifies its rewrites.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;

use super::segment::{load_index, view_of};
use super::{DeploymentLog, SegmentView};
use crate::format::{self, BlockHeader, IndexEntry};
use crate::ledger::{self, LEDGER_FILE};
use crate::meta::{self, Meta, MetaFile, ProducersFile};
use crate::remote::{
    self, MANIFEST, Manifest, ManifestFile, RemoteError, RemoteLedger, RemoteSegment, Tiering,
};
use crate::{DeploymentId, StoreError};

pub(crate) const REMOTE_FILE: &str = "remote.json";

/// `remote.json` of the log in `dir`: the manifest as last written (None when nothing
/// was uploaded).
pub(crate) fn local_manifest(dir: &Path) -> Result<Option<Manifest>, StoreError> {
    Ok(meta::read_atomic::<ManifestFile>(&dir.join(REMOTE_FILE))?.map(|ManifestFile::V1(m)| m))
}

fn unavailable(what: impl std::fmt::Display, t: &Tiering, e: RemoteError) -> StoreError {
    StoreError::Unavailable(format!(
        "{what}: object storage ({}) did not answer: {e}",
        t.describe()
    ))
}

fn hex_hash(bytes: &[u8]) -> String {
    meta::hex(blake3::hash(bytes).as_bytes())
}

/// Reads and checks the block `e` points at in `buf`, a whole segment or one block.
pub(crate) fn check_block_at(buf: &[u8]) -> Result<BlockHeader, format::FormatError> {
    let h = format::decode_header(buf)?;
    format::check_block(buf, &h)?;
    Ok(h)
}

/// Puts `data` under `key` and reads it back: the object must have the same size and
/// BLAKE3 before anything may refer to it.
fn put_verified(t: &Tiering, key: &str, data: &[u8]) -> Result<(), StoreError> {
    t.remote
        .put(key, data)
        .map_err(|e| unavailable(format!("uploading {key}"), t, e))?;
    let back = t
        .remote
        .get(key)
        .map_err(|e| unavailable(format!("reading back {key}"), t, e))?;
    if back.len() != data.len() || blake3::hash(&back) != blake3::hash(data) {
        return Err(StoreError::Unavailable(format!(
            "uploaded {key} reads back as {} bytes that differ from the {} written; the upload will be retried",
            back.len(),
            data.len()
        )));
    }
    Ok(())
}

fn put_manifest(t: &Tiering, id: &DeploymentId, m: &Manifest) -> Result<(), StoreError> {
    let key = format!("{}{MANIFEST}", remote::log_prefix(id));
    let body = serde_json::to_vec(&ManifestFile::V1(m.clone()))
        .map_err(|e| StoreError::Config(format!("encoding the manifest: {e}")))?;
    t.remote
        .put(&key, &body)
        .map_err(|e| unavailable(format!("writing {key}"), t, e))
}

/// The manifest of `id` in object storage, if any.
pub(crate) fn fetch_manifest(
    t: &Tiering,
    id: &DeploymentId,
) -> Result<Option<Manifest>, StoreError> {
    let key = format!("{}{MANIFEST}", remote::log_prefix(id));
    match t.remote.get(&key) {
        Ok(bytes) => match serde_json::from_slice::<ManifestFile>(&bytes) {
            Ok(ManifestFile::V1(m)) => Ok(Some(m)),
            Err(e) => Err(StoreError::Corrupt {
                path: key.into(),
                reason: format!("manifest does not parse: {e}"),
            }),
        },
        Err(RemoteError::NotFound) => Ok(None),
        Err(e) => Err(unavailable(format!("reading {key}"), t, e)),
    }
}

/// Fetches a segment's index from object storage, checks it and writes it locally.
fn fetch_index(
    id: &DeploymentId,
    dir: &Path,
    r: &RemoteSegment,
    t: &Tiering,
) -> Result<Vec<IndexEntry>, StoreError> {
    let key = format!("{}{}", remote::log_prefix(id), r.idx_name());
    let bytes = t.remote.get(&key).map_err(|e| match e {
        RemoteError::NotFound => StoreError::Corrupt {
            path: key.clone().into(),
            reason: "the index of a stored segment is missing from object storage; run `logstream-gateway store verify`".into(),
        },
        e => unavailable(format!("reading {key}"), t, e),
    })?;
    if bytes.len() as u64 != r.idx_bytes || hex_hash(&bytes) != r.idx_blake3 {
        return Err(StoreError::Corrupt {
            path: key.into(),
            reason: "the index object does not match its manifest entry (altered?); run `logstream-gateway store verify`".into(),
        });
    }
    let path = dir.join(format::segment_file_name(r.first_seq, "idx"));
    fs::write(&path, &bytes)
        .map_err(|e| StoreError::io(format!("writing {}", path.display()), e))?;
    Ok(bytes
        .chunks_exact(format::INDEX_ENTRY_LEN)
        .map(IndexEntry::decode)
        .collect())
}

/// The reader's view of a segment held only in object storage: its index is kept
/// locally (64 B per block), fetched again when missing.
pub(super) fn open_remote(
    id: &DeploymentId,
    dir: &Path,
    r: &RemoteSegment,
    tiering: Option<&Tiering>,
) -> Result<SegmentView, StoreError> {
    let consistent = |e: &Vec<IndexEntry>| {
        e.len() as u64 == r.blocks
            && e.last().is_some_and(|l| {
                l.offset + u64::from(l.len) == r.bytes && l.last_seq() == r.last_seq
            })
    };
    let entries = match load_index(dir, r.first_seq) {
        Ok(e) if consistent(&e) => e,
        _ => {
            let t = tiering.ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "segment {}..={} of {id} is in object storage, which is not configured here",
                    r.first_seq, r.last_seq
                ))
            })?;
            fetch_index(id, dir, r, t)?
        }
    };
    let mut view = view_of(r.first_seq, r.bytes, &entries, None);
    view.local = false;
    Ok(view)
}

/// Creates the log of `id` in `dir` from its manifest in object storage, if there is
/// one: metadata, steps, producer marks and the segments' indexes; the segments stay
/// remote. Nothing happens without a manifest.
pub(super) fn adopt(id: &DeploymentId, dir: &Path, t: &Tiering) -> Result<(), StoreError> {
    let Some(m) = fetch_manifest(t, id)? else {
        return Ok(());
    };
    fs::create_dir_all(dir)
        .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
    for s in m.segments.iter().filter(|s| s.first_seq >= m.retained_from) {
        fetch_index(id, dir, s, t)?;
    }
    if let Some(l) = &m.ledger {
        let key = format!("{}{}", remote::log_prefix(id), l.name());
        let bytes = t
            .remote
            .get(&key)
            .map_err(|e| unavailable(format!("reading {key}"), t, e))?;
        if bytes.len() as u64 != l.bytes || hex_hash(&bytes) != l.blake3 {
            return Err(StoreError::Corrupt {
                path: key.into(),
                reason: "the audit ledger object does not match its manifest entry (altered?)"
                    .into(),
            });
        }
        let path = dir.join(LEDGER_FILE);
        fs::File::create(&path)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, &bytes)?;
                f.sync_all()
            })
            .map_err(|e| StoreError::io(format!("writing {}", path.display()), e))?;
    }
    meta::write_atomic(&dir.join("steps.json"), &m.steps)?;
    meta::write_atomic(
        &dir.join("producers.json"),
        &ProducersFile::V1 {
            sources: m.producers.clone(),
        },
    )?;
    meta::write_atomic(&dir.join(REMOTE_FILE), &ManifestFile::V1(m.clone()))?;
    // meta.json last: its presence is what makes the log exist.
    let meta = Meta {
        created_at: m.created_at,
        completion: m.completion,
        retained_from: m.retained_from,
        retained_prev_hash: m.retained_prev_hash.clone(),
    };
    meta::write_atomic(&dir.join("meta.json"), &MetaFile::V1(meta))?;
    meta::sync_dir(dir.parent().expect("a deployment dir has a parent"))?;
    // Counted here once the start-up scan ran (before it, the scan counts them).
    if t.scanned.load(std::sync::atomic::Ordering::Acquire) {
        let remote_bytes: u64 = m
            .segments
            .iter()
            .filter(|s| s.first_seq >= m.retained_from)
            .map(|s| s.bytes)
            .sum();
        t.remote_only_bytes
            .fetch_add(remote_bytes, std::sync::atomic::Ordering::Relaxed);
    }
    tracing::info!(
        log = %id,
        segments = m.segments.len(),
        last_seq = m.segments.last().map_or(0, |s| s.last_seq),
        "adopted the log from object storage"
    );
    Ok(())
}

/// What one offload pass of a log did.
#[derive(Debug, Default)]
pub(crate) struct Offloaded {
    /// (first_seq, bytes) of segments uploaded now; their local copies may be evicted.
    pub uploaded: Vec<(u64, u64)>,
    /// Objects deleted (retention).
    pub deleted: u64,
}

/// The audit ledger of the log in `dir` as object storage should hold it: its complete
/// lines, and their description (None without rewrites).
pub(crate) fn local_ledger(dir: &Path) -> Result<Option<(Vec<u8>, RemoteLedger)>, StoreError> {
    let path = dir.join(LEDGER_FILE);
    let mut bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
    };
    bytes.truncate(ledger::parse(&bytes).valid_len as usize);
    if bytes.is_empty() {
        return Ok(None);
    }
    let l = RemoteLedger {
        bytes: bytes.len() as u64,
        blake3: hex_hash(&bytes),
    };
    Ok(Some((bytes, l)))
}

/// A ledger object put for a manifest about to be written.
pub(super) struct LedgerUpload {
    key: String,
    /// The ledger object the manifest named before (deleted once it names the new one).
    replaced: Option<String>,
}

/// Deletes every object `manifests` name under `id`'s prefix: the segments first, the
/// manifest last (while it is there, what it names is not an orphan). Returns how many
/// were deleted and the first failure (the rest are still tried, each failure logged).
pub(crate) fn delete_objects(
    t: &Tiering,
    id: &DeploymentId,
    manifests: &[Manifest],
) -> (u64, Option<StoreError>) {
    let prefix = remote::log_prefix(id);
    let mut keys = Vec::new();
    let ledgers = manifests.iter().flat_map(|m| &m.ledger).map(|l| l.name());
    for s in manifests.iter().flat_map(|m| &m.segments) {
        for name in [s.seg_name(), s.idx_name()] {
            let key = format!("{prefix}{name}");
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    for name in ledgers {
        let key = format!("{prefix}{name}");
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.push(format!("{prefix}{MANIFEST}"));
    let mut deleted = 0;
    let mut first_err = None;
    for key in keys {
        match t.remote.delete(&key) {
            Ok(()) => deleted += 1,
            Err(e) => {
                tracing::warn!(log = %id, key, error = %e, "deleting an object failed");
                first_err.get_or_insert_with(|| unavailable(format!("deleting {key}"), t, e));
            }
        }
    }
    (deleted, first_err)
}

/// A segment's whole `.seg` object, checked against its manifest entry.
pub(super) fn fetch_segment(
    t: &Tiering,
    id: &DeploymentId,
    r: &RemoteSegment,
) -> Result<Vec<u8>, StoreError> {
    let key = format!("{}{}", remote::log_prefix(id), r.seg_name());
    let bytes = t.remote.get(&key).map_err(|e| match e {
        RemoteError::NotFound => StoreError::Corrupt {
            path: key.clone().into(),
            reason: "a stored segment is missing from object storage; run `logstream-gateway store verify`".into(),
        },
        e => unavailable(format!("reading {key}"), t, e),
    })?;
    if bytes.len() as u64 != r.bytes || hex_hash(&bytes) != r.seg_blake3 {
        return Err(StoreError::Corrupt {
            path: key.into(),
            reason: "the object does not match its manifest entry (altered?); run `logstream-gateway store verify`".into(),
        });
    }
    t.count_remote_read(bytes.len());
    Ok(bytes)
}

impl DeploymentLog {
    /// Uploads the sealed segments not yet in object storage, in seq order, and brings
    /// the manifest up to date (completion, steps, retention); deletes the objects of
    /// segments retention removed. Stops at the first failure (what was uploaded before
    /// it stays recorded).
    pub(crate) fn offload(&self) -> Result<Offloaded, StoreError> {
        let mut out = Offloaded::default();
        let Some(t) = self.tiering.clone() else {
            return Ok(out);
        };
        let mut state = self.remote_state.lock();
        if !self.dir.join("meta.json").exists() {
            // Deleted whole (retention) while this pass held it: nothing to describe.
            return Ok(out);
        }
        let (segments, meta, steps) = {
            let v = self.view.read();
            (v.segments.clone(), v.meta.clone(), v.steps.clone())
        };
        let sealed = if meta.completion.is_some() {
            segments.len()
        } else {
            segments.len().saturating_sub(1)
        };
        let mut manifest = state.clone().unwrap_or_default();
        let (stale, kept): (Vec<RemoteSegment>, Vec<RemoteSegment>) = manifest
            .segments
            .drain(..)
            .partition(|s| s.first_seq < meta.retained_from);
        manifest.segments = kept;
        let mut producers: BTreeMap<String, (u64, u64)> = manifest
            .producers
            .iter()
            .map(|(s, b, l)| (s.clone(), (*b, *l)))
            .collect();
        // The manifest says "completed" only once it names every segment with lines: a
        // replica adopting it must not take a log for finished that lacks lines.
        let with_lines = segments[..sealed]
            .iter()
            .filter(|s| s.last_seq >= s.first_seq)
            .count();
        let describe = |m: &mut Manifest, producers: &BTreeMap<String, (u64, u64)>| {
            m.created_at = meta.created_at;
            m.completion = meta.completion.filter(|_| m.segments.len() >= with_lines);
            m.retained_from = meta.retained_from;
            m.retained_prev_hash = meta.retained_prev_hash.clone();
            m.steps = steps.clone();
            m.producers = producers
                .iter()
                .map(|(s, (b, l))| (s.clone(), *b, *l))
                .collect();
        };
        // The audit ledger, when it changed, goes with the next manifest written.
        let to_upload = segments[..sealed]
            .iter()
            .any(|s| s.remote.is_none() && s.local && s.last_seq >= s.first_seq);
        let ledger_up = if state.is_some() || to_upload {
            self.upload_ledger(&t, &mut manifest)?
        } else {
            None
        };
        let mut result = Ok(());
        for seg in &segments[..sealed] {
            if seg.remote.is_some() || !seg.local || seg.last_seq < seg.first_seq {
                continue;
            }
            let (r, marks) = match self.upload_segment(&t, seg) {
                Ok(x) => x,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            for m in marks {
                producers.insert(m.source, (m.batch_id, m.last_seq));
            }
            manifest.segments.push(r.clone());
            manifest.segments.sort_by_key(|s| s.first_seq);
            describe(&mut manifest, &producers);
            let written = self.write_manifest(&t, &manifest);
            self.done_in_flight(&t, &r);
            if let Err(e) = written {
                result = Err(e);
                break;
            }
            *state = Some(manifest.clone());
            let r = Arc::new(r);
            if let Some(s) = self
                .view
                .write()
                .segments
                .iter_mut()
                .find(|s| s.first_seq == r.first_seq)
            {
                s.remote = Some(r.clone());
            }
            // Evictable from now on (recorded at once: a later failure in this pass
            // must not leave it out of the eviction order).
            t.add_cached(&self.id, r.first_seq, self.hooks.clock.now());
            t.uploaded_segments
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            t.uploaded_bytes
                .fetch_add(r.bytes, std::sync::atomic::Ordering::Relaxed);
            out.uploaded.push((r.first_seq, r.bytes));
        }
        let written = result.and_then(|()| {
            describe(&mut manifest, &producers);
            let changed = state.as_ref() != Some(&manifest);
            if changed && (state.is_some() || !manifest.segments.is_empty()) {
                self.write_manifest(&t, &manifest)?;
                *state = Some(manifest);
            }
            Ok(())
        });
        if let Some(up) = ledger_up {
            let named = state
                .as_ref()
                .and_then(|m| m.ledger.as_ref())
                .is_some_and(|l| up.key.ends_with(&l.name()));
            self.ledger_uploaded(&t, up, named);
        }
        written?;
        let prefix = remote::log_prefix(&self.id);
        for s in stale {
            for key in [s.seg_name(), s.idx_name()] {
                match t.remote.delete(&format!("{prefix}{key}")) {
                    Ok(()) => out.deleted += 1,
                    // Unreferenced now: the sweep deletes it later.
                    Err(e) => {
                        tracing::warn!(log = %self.id, key, error = %e, "deleting an expired object failed; the sweep retries")
                    }
                }
            }
        }
        Ok(out)
    }

    pub(super) fn write_manifest(&self, t: &Tiering, m: &Manifest) -> Result<(), StoreError> {
        put_manifest(t, &self.id, m)?;
        meta::write_atomic(&self.dir.join(REMOTE_FILE), &ManifestFile::V1(m.clone()))
    }

    /// Uploads one sealed segment and its index, verified; returns its manifest entry
    /// and the producer marks in its blocks.
    fn upload_segment(
        &self,
        t: &Tiering,
        seg: &SegmentView,
    ) -> Result<(RemoteSegment, Vec<format::BatchMark>), StoreError> {
        let seg_path = self
            .dir
            .join(format::segment_file_name(seg.first_seq, "seg"));
        let idx_path = self
            .dir
            .join(format::segment_file_name(seg.first_seq, "idx"));
        let data = fs::read(&seg_path)
            .map_err(|e| StoreError::io(format!("reading {}", seg_path.display()), e))?;
        let idx = fs::read(&idx_path)
            .map_err(|e| StoreError::io(format!("reading {}", idx_path.display()), e))?;
        let entries: Vec<IndexEntry> = idx
            .chunks_exact(format::INDEX_ENTRY_LEN)
            .map(IndexEntry::decode)
            .collect();
        let corrupt = |reason: String| StoreError::Corrupt {
            path: seg_path.clone(),
            reason,
        };
        let last = entries
            .last()
            .ok_or_else(|| corrupt("a sealed segment with lines has an empty index".into()))?;
        if last.offset + u64::from(last.len) != data.len() as u64 || last.last_seq() != seg.last_seq
        {
            return Err(corrupt(
                "the index does not match the segment; reopen the store to rebuild it".into(),
            ));
        }
        // Never upload a bad block: every block is checked, its marks collected.
        let mut marks = Vec::new();
        let mut last_hash = String::new();
        let mut last_ts = 0;
        for (i, e) in entries.iter().enumerate() {
            let Some(block) = data.get(e.offset as usize..(e.offset + u64::from(e.len)) as usize)
            else {
                return Err(corrupt(format!(
                    "index entry {i} points past the segment's end; reopen the store to rebuild the index"
                )));
            };
            let h = check_block_at(block)
                .map_err(|r| corrupt(format!("block at offset {}: {r}", e.offset)))?;
            if i + 1 == entries.len() {
                // What the next segment's first block chains to.
                last_hash = meta::hex(&h.link_hash(blake3::hash(block).as_bytes()));
                let records = format::decode_records(block, &h)
                    .map_err(|r| corrupt(format!("block at offset {}: {r}", e.offset)))?;
                last_ts = records.last().map_or(0, |r| r.ts);
            }
            marks.extend(h.marks);
        }
        let r = RemoteSegment {
            first_seq: seg.first_seq,
            last_seq: seg.last_seq,
            bytes: data.len() as u64,
            blocks: entries.len() as u64,
            seg_blake3: hex_hash(&data),
            idx_bytes: idx.len() as u64,
            idx_blake3: hex_hash(&idx),
            min_ts: seg.min_ts,
            max_ts: seg.max_ts,
            last_written_at: seg.last_written_at,
            last_hash,
            last_ts,
        };
        self.put_segment_objects(t, &r, &data, &idx)?;
        Ok((r, marks))
    }

    /// Puts a segment's `.seg` and `.idx` objects, each read back and checked, and
    /// marks them in flight (the sweep leaves them alone until the manifest names them:
    /// see [`DeploymentLog::done_in_flight`]).
    pub(super) fn put_segment_objects(
        &self,
        t: &Tiering,
        r: &RemoteSegment,
        data: &[u8],
        idx: &[u8],
    ) -> Result<(), StoreError> {
        let prefix = remote::log_prefix(&self.id);
        let seg_key = format!("{prefix}{}", r.seg_name());
        let idx_key = format!("{prefix}{}", r.idx_name());
        {
            let mut f = t.in_flight.lock();
            f.insert(seg_key.clone());
            f.insert(idx_key.clone());
        }
        let put = put_verified(t, &seg_key, data).and_then(|()| put_verified(t, &idx_key, idx));
        if put.is_err() {
            self.done_in_flight(t, r);
        }
        put
    }

    /// Brings `m.ledger` up to the local ledger: puts the new version (verified, in
    /// flight until the manifest is written: see [`DeploymentLog::ledger_uploaded`]).
    /// None when it is up to date.
    pub(super) fn upload_ledger(
        &self,
        t: &Tiering,
        m: &mut Manifest,
    ) -> Result<Option<LedgerUpload>, StoreError> {
        let Some((bytes, l)) = local_ledger(&self.dir)? else {
            return Ok(None);
        };
        if m.ledger.as_ref() == Some(&l) {
            return Ok(None);
        }
        let prefix = remote::log_prefix(&self.id);
        let key = format!("{prefix}{}", l.name());
        t.in_flight.lock().insert(key.clone());
        if let Err(e) = put_verified(t, &key, &bytes) {
            t.in_flight.lock().remove(&key);
            return Err(e);
        }
        let replaced = m
            .ledger
            .replace(l)
            .map(|old| format!("{prefix}{}", old.name()))
            .filter(|old| *old != key);
        Ok(Some(LedgerUpload { key, replaced }))
    }

    /// The manifest naming an uploaded ledger was written (`named`) or not: the old
    /// version goes, or the new one is left to the sweep.
    pub(super) fn ledger_uploaded(&self, t: &Tiering, up: LedgerUpload, named: bool) {
        t.in_flight.lock().remove(&up.key);
        if let (true, Some(old)) = (named, up.replaced)
            && let Err(e) = t.remote.delete(&old)
        {
            tracing::warn!(log = %self.id, key = old, error = %e, "deleting a replaced ledger object failed; the sweep deletes it");
        }
    }

    /// The objects of `r` are named by the manifest now (or abandoned).
    pub(super) fn done_in_flight(&self, t: &Tiering, r: &RemoteSegment) {
        let prefix = remote::log_prefix(&self.id);
        let mut f = t.in_flight.lock();
        f.remove(&format!("{prefix}{}", r.seg_name()));
        f.remove(&format!("{prefix}{}", r.idx_name()));
    }

    /// Deletes the local copy of an uploaded sealed segment; it stays readable from
    /// object storage. Returns the bytes freed (0 when it was not evictable).
    pub(crate) fn evict(&self, first_seq: u64) -> Result<u64, StoreError> {
        // Not while a redaction rewrites the segment (it would come back).
        let _one = self.maintenance.lock();
        if self.is_deleted() {
            return Ok(0);
        }
        let bytes = {
            let mut view = self.view.write();
            let sealed = if view.meta.completion.is_some() {
                view.segments.len()
            } else {
                view.segments.len().saturating_sub(1)
            };
            let Some(s) = view.segments[..sealed]
                .iter_mut()
                .find(|s| s.first_seq == first_seq && s.local && s.remote.is_some())
            else {
                return Ok(0);
            };
            s.local = false;
            s.bytes
        };
        // Readers holding the file open keep reading it; later ones go remote.
        let path = self.dir.join(format::segment_file_name(first_seq, "seg"));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(format!("evicting {}", path.display()), e)),
        }
        Ok(bytes)
    }

    /// Reads and checks one block of a segment held only in object storage: one ranged
    /// GET of exactly the block.
    pub(super) fn remote_block(
        &self,
        r: &RemoteSegment,
        e: &IndexEntry,
    ) -> Result<(BlockHeader, Vec<u8>), StoreError> {
        let Some(t) = &self.tiering else {
            return Err(StoreError::Unavailable(format!(
                "segment {}..={} of {} is in object storage, which is not configured here",
                r.first_seq, r.last_seq, self.id
            )));
        };
        let key = format!("{}{}", remote::log_prefix(&self.id), r.seg_name());
        let buf = t
            .remote
            .get_range(&key, e.offset..e.offset + u64::from(e.len))
            .map_err(|err| match err {
                RemoteError::NotFound => StoreError::Corrupt {
                    path: key.clone().into(),
                    reason: "a stored segment is missing from object storage; run `logstream-gateway store verify`".into(),
                },
                err => unavailable(
                    format!(
                        "lines {}..={} of {} are only in object storage",
                        r.first_seq, r.last_seq, self.id
                    ),
                    t,
                    err,
                ),
            })?;
        t.count_remote_read(buf.len());
        let h = check_block_at(&buf).map_err(|reason| StoreError::Corrupt {
            path: key.into(),
            reason: format!("block at offset {}: {reason}", e.offset),
        })?;
        Ok((h, buf))
    }

    /// Reads one block of `seg` wherever it is: the local file, else object storage
    /// (as `seg` says: it does not look at the view).
    pub(super) fn any_block(
        &self,
        seg: &SegmentView,
        e: &IndexEntry,
    ) -> Result<(BlockHeader, Vec<u8>), StoreError> {
        if seg.local {
            let path = self
                .dir
                .join(format::segment_file_name(seg.first_seq, "seg"));
            match File::open(&path) {
                Ok(f) => return super::segment::read_block(&f, e, &self.dir, seg.first_seq),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(StoreError::io(format!("opening {}", path.display()), err));
                }
            }
        }
        // Not `remote_of`: callers may hold the view lock.
        match &seg.remote {
            Some(r) => self.remote_block(r, e),
            None => Err(StoreError::Corrupt {
                path: self
                    .dir
                    .join(format::segment_file_name(seg.first_seq, "seg")),
                reason: "segment file missing and not in object storage".into(),
            }),
        }
    }

    /// The object storage entry of the segment starting at `first_seq`, now.
    pub(super) fn remote_of(&self, first_seq: u64) -> Option<Arc<RemoteSegment>> {
        self.view
            .read()
            .segments
            .iter()
            .find(|s| s.first_seq == first_seq)
            .and_then(|s| s.remote.clone())
    }

    /// Deletes every object of this log (retention removed it whole). Failures are
    /// left to the sweep (the objects are orphans once the manifest is gone).
    pub(crate) fn delete_remote(&self) -> u64 {
        let Some(t) = &self.tiering else {
            return 0;
        };
        let mut state = self.remote_state.lock();
        let Some(m) = state.take() else {
            return 0;
        };
        delete_objects(t, &self.id, &[m]).0
    }

    /// Whether any of the log's segments is in object storage.
    pub(crate) fn has_remote(&self) -> bool {
        self.remote_state
            .lock()
            .as_ref()
            .is_some_and(|m| !m.segments.is_empty())
    }
}
