//! Retention: whole sealed segments are deleted once their newest block is older than
//! the cutoff. The retention anchor (first kept seq, and the hash the first kept block
//! chains to) is written to `meta.json` before any file is deleted.

use std::fs;

use super::DeploymentLog;
use super::segment::{last_block_hash, load_index};
use crate::StoreError;
use crate::format;
use crate::meta::{self, MetaFile};

impl DeploymentLog {
    /// Deletes sealed segments whose newest block was written before `cutoff`.
    /// Returns the (first_seq, last_seq, bytes) of each deleted segment.
    pub(crate) fn expire(&self, cutoff: i64) -> Result<Vec<(u64, u64, u64)>, StoreError> {
        let _one = self.maintenance.lock();
        if self.is_deleted() {
            return Ok(Vec::new());
        }
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
        let anchor = match (
            view.segments.get(expired),
            &view.segments[expired - 1].remote,
        ) {
            // Uploaded segments carry their last block's hash: no read (and no request
            // to object storage under the writer lock).
            (_, Some(r)) => r.last_hash.clone(),
            (Some(s), None) if s.last_seq >= s.first_seq => {
                let first = load_index(&self.dir, s.first_seq).or_else(|_| {
                    s.index
                        .as_ref()
                        .map(|i| i.as_ref().clone())
                        .ok_or(StoreError::NotFound)
                })?;
                let e = first.first().ok_or(StoreError::NotFound)?;
                let (h, _) = self.any_block(s, e)?;
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
            if let Some(t) = &self.tiering {
                if !s.local {
                    let _ = t.remote_only_bytes.fetch_update(
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                        |v| Some(v.saturating_sub(s.bytes)),
                    );
                } else {
                    t.remove_cached(&self.id, s.first_seq);
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
