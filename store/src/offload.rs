//! The store's offloader (with `[object_store]`): the gateway runs [`Store::offload`]
//! every few seconds, then [`Store::evict`] with the disk budget, and [`Store::sweep`]
//! now and then. Sealed segments are uploaded in seq order per log and verified before
//! their local copies may be evicted, least recently read first; segments not yet
//! uploaded are never evicted, so a budget that cannot be met is reported
//! ([`TierStats::budget_exceeded`]), never met by dropping data.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::format;
use crate::log::local_manifest;
use crate::meta::{self, MetaFile};
use crate::remote::{MANIFEST, ManifestFile, RemoteError, TierStats, Tiering};
use crate::{DeploymentId, Store, StoreError, VerifyReport};

/// What one upload pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OffloadPass {
    pub uploaded: u64,
    pub bytes: u64,
    /// Objects of expired segments deleted.
    pub deleted: u64,
    /// The first failure (the pass stops at a failure to reach object storage).
    pub error: Option<String>,
}

impl Store {
    /// Object storage and its bookkeeping, when configured.
    pub fn tiering(&self) -> Option<&Arc<Tiering>> {
        self.tiering.as_ref()
    }

    /// Uploads every sealed segment not yet in object storage (the first pass scans
    /// every log's directory for them; later passes take the logs that sealed one).
    ///
    /// `owns` says whether this replica serves a deployment now (Kafka mode): a log of
    /// a partition that moved away is left to its new owner.
    pub fn offload(&self, owns: impl Fn(&DeploymentId) -> bool) -> OffloadPass {
        let mut pass = OffloadPass::default();
        let Some(t) = &self.tiering else {
            return pass;
        };
        let _one = t.pass.lock();
        if let Err(e) = self.ensure_scanned(t) {
            pass.error = Some(format!("scanning the store for segments to upload: {e}"));
            t.failing.store(true, Ordering::Relaxed);
            return pass;
        }
        let mut pending = t.take_pending().into_iter();
        for id in pending.by_ref() {
            if !owns(&id) {
                // Kafka mode: not served here now (moved, or still catching up): its
                // owner uploads it; looked at again next pass.
                t.mark_pending(&id);
                continue;
            }
            let log = match self.log(&id, false) {
                Ok(Some(log)) => log,
                Ok(None) => continue,
                Err(e) => {
                    t.mark_pending(&id);
                    pass.error.get_or_insert(format!("{id}: {e}"));
                    continue;
                }
            };
            match log.offload() {
                Ok(o) => {
                    for (_, bytes) in o.uploaded {
                        pass.uploaded += 1;
                        pass.bytes += bytes;
                    }
                    pass.deleted += o.deleted;
                    t.deleted_objects.fetch_add(o.deleted, Ordering::Relaxed);
                }
                Err(e) => {
                    t.mark_pending(&id);
                    let unreachable = matches!(e, StoreError::Unavailable(_));
                    pass.error.get_or_insert(format!("{id}: {e}"));
                    if unreachable {
                        // Object storage does not answer: the rest waits for the next pass.
                        break;
                    }
                }
            }
        }
        for id in pending {
            t.mark_pending(&id);
        }
        t.failing.store(pass.error.is_some(), Ordering::Relaxed);
        pass
    }

    /// Runs the start-up scan once (under the pass lock), before anything else changes
    /// the remote byte count.
    fn ensure_scanned(&self, t: &Tiering) -> Result<(), StoreError> {
        if t.scanned.load(Ordering::Acquire) {
            return Ok(());
        }
        self.scan(t)?;
        t.scanned.store(true, Ordering::Release);
        Ok(())
    }

    /// Before retention changes anything: the start-up scan.
    pub(crate) fn scan_before_expire(&self) -> Result<(), StoreError> {
        match &self.tiering {
            Some(t) => {
                let _one = t.pass.lock();
                self.ensure_scanned(t)
            }
            None => Ok(()),
        }
    }

    /// Finds, without opening logs, what the offloader must know after a start:
    /// sealed segments not uploaded, uploaded ones with a local copy (evictable), and
    /// the bytes held only remotely.
    fn scan(&self, t: &Tiering) -> Result<(), StoreError> {
        let mut remote_only = 0;
        for tenant in self.tenants()? {
            for d in self.deployments(&tenant)? {
                let id = DeploymentId::new(tenant.clone(), d);
                let dir = self.log_dir(&id);
                let (m, manifest) = match (
                    meta::read_atomic::<MetaFile>(&dir.join("meta.json")),
                    local_manifest(&dir),
                ) {
                    (Ok(Some(MetaFile::V1(m))), Ok(manifest)) => (m, manifest),
                    (Ok(None), _) => continue,
                    (Err(e), _) | (_, Err(e)) => {
                        // One unreadable log must not stop every upload.
                        tracing::warn!(log = %id, error = %e, "skipping a log the offloader cannot read");
                        continue;
                    }
                };
                let uploaded: BTreeMap<u64, u64> = manifest
                    .iter()
                    .flat_map(|m| &m.segments)
                    .filter(|s| s.first_seq >= m.retained_from)
                    .map(|s| (s.first_seq, s.bytes))
                    .collect();
                let mut pending = manifest.as_ref().is_some_and(|man| {
                    man.completion != m.completion
                        || man.segments.iter().any(|s| s.first_seq < m.retained_from)
                });
                if let Some(man) = &manifest
                    && !pending
                {
                    // Redacted after its last upload pass: the ledger object is behind.
                    let ledger = crate::log::local_ledger(&dir)
                        .ok()
                        .flatten()
                        .map(|(_, l)| l);
                    pending = ledger.is_some() && ledger != man.ledger;
                }
                let mut local = Vec::new();
                let rd = fs::read_dir(&dir)
                    .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
                for entry in rd.flatten() {
                    let Some(first) = entry
                        .file_name()
                        .to_str()
                        .and_then(|n| format::parse_segment_file_name(n, "seg"))
                    else {
                        continue;
                    };
                    let md = entry
                        .metadata()
                        .map_err(|e| StoreError::io(format!("reading {}", dir.display()), e))?;
                    let read_at = md
                        .accessed()
                        .or_else(|_| md.modified())
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos() as i64);
                    local.push((first, md.len(), read_at));
                }
                local.sort_unstable();
                let active = match m.completion {
                    None => local.last().map(|l| l.0),
                    Some(_) => None,
                };
                for &(first, len, read_at) in &local {
                    if Some(first) == active {
                        continue;
                    }
                    match uploaded.get(&first) {
                        Some(&bytes) if bytes == len => t.add_cached(&id, first, read_at),
                        _ if len > format::SEGMENT_HEADER_LEN => pending = true,
                        _ => {}
                    }
                }
                remote_only += uploaded
                    .iter()
                    .filter(|(first, _)| local.binary_search_by_key(*first, |l| l.0).is_err())
                    .map(|(_, bytes)| bytes)
                    .sum::<u64>();
                if pending {
                    t.mark_pending(&id);
                }
            }
        }
        t.remote_only_bytes
            .fetch_add(remote_only, Ordering::Relaxed);
        Ok(())
    }

    /// Bytes of segments on local disk.
    fn local_bytes(&self, t: &Tiering) -> u64 {
        self.known_bytes()
            .saturating_sub(t.remote_only_bytes.load(Ordering::Relaxed))
    }

    /// Evicts local copies of uploaded segments, least recently read first, until the
    /// local segments fit in `budget` bytes. Returns how many were evicted; when the
    /// budget cannot be met, `budget_exceeded` says so.
    pub fn evict(&self, budget: u64) -> u64 {
        let Some(t) = &self.tiering else {
            return 0;
        };
        let mut local = self.local_bytes(t);
        let mut evicted = 0;
        for (id, first) in t.eviction_order() {
            if local <= budget {
                break;
            }
            let freed = match self.log(&id, false) {
                Ok(Some(log)) => log.evict(first),
                Ok(None) => Ok(0),
                Err(e) => Err(e),
            };
            match freed {
                Ok(freed) => {
                    t.remove_cached(&id, first);
                    if freed > 0 {
                        local = local.saturating_sub(freed);
                        t.remote_only_bytes.fetch_add(freed, Ordering::Relaxed);
                        t.evicted_segments.fetch_add(1, Ordering::Relaxed);
                        evicted += 1;
                    }
                }
                Err(e) => tracing::warn!(log = %id, first, error = %e, "evicting a segment failed"),
            }
        }
        let exceeded = local > budget;
        if exceeded && !t.budget_exceeded.load(Ordering::Relaxed) {
            tracing::warn!(
                local_bytes = local,
                budget,
                "local segments exceed object_store.local_cache_bytes: segments not yet uploaded are kept (uploads behind or failing)"
            );
        }
        t.budget_exceeded.store(exceeded, Ordering::Relaxed);
        evicted
    }

    /// Deletes objects no manifest names (uploads cut short, segments retention
    /// removed while object storage was away) once older than `grace`. Returns how
    /// many were deleted.
    pub fn sweep(&self, grace: Duration) -> Result<u64, StoreError> {
        let Some(t) = &self.tiering else {
            return Ok(0);
        };
        let _one = t.pass.lock();
        let unavailable = |what: &str, e: RemoteError| {
            StoreError::Unavailable(format!(
                "{what}: object storage ({}) did not answer: {e}",
                t.describe()
            ))
        };
        let objects = t
            .remote
            .list("tenants/")
            .map_err(|e| unavailable("listing objects", e))?;
        let cutoff = self
            .hooks
            .clock
            .now()
            .saturating_sub(grace.as_nanos() as i64);
        let mut groups: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for o in objects {
            // tenants/<tenant>/<deployment>/<name>
            let parts: Vec<&str> = o.key.splitn(4, '/').collect();
            if parts.len() != 4 {
                continue;
            }
            let prefix = format!("{}/{}/{}/", parts[0], parts[1], parts[2]);
            groups.entry(prefix).or_default().push(o);
        }
        let mut deleted = 0;
        for (prefix, objs) in groups {
            let referenced: HashSet<String> = match t.remote.get(&format!("{prefix}{MANIFEST}")) {
                Ok(bytes) => match serde_json::from_slice::<ManifestFile>(&bytes) {
                    Ok(ManifestFile::V1(m)) => m
                        .segments
                        .iter()
                        .flat_map(|s| [s.seg_name(), s.idx_name()])
                        .chain(m.ledger.iter().map(|l| l.name()))
                        .chain([MANIFEST.to_owned()])
                        .collect(),
                    Err(e) => {
                        tracing::warn!(prefix, error = %e, "a manifest does not parse; its objects are left alone");
                        continue;
                    }
                },
                Err(RemoteError::NotFound) => HashSet::new(),
                Err(e) => return Err(unavailable("reading a manifest", e)),
            };
            let in_flight = t.in_flight.lock().clone();
            for o in objs {
                let name = &o.key[prefix.len()..];
                if referenced.contains(name)
                    || in_flight.contains(&o.key)
                    || o.last_modified > cutoff
                {
                    continue;
                }
                t.remote
                    .delete(&o.key)
                    .map_err(|e| unavailable("deleting an orphan", e))?;
                tracing::info!(key = o.key, "deleted an object no manifest names");
                deleted += 1;
            }
        }
        t.swept_objects.fetch_add(deleted, Ordering::Relaxed);
        Ok(deleted)
    }

    /// The offloader's figures (None without object storage).
    pub fn tier_stats(&self) -> Option<TierStats> {
        let t = self.tiering.as_ref()?;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        Some(TierStats {
            local_bytes: self.local_bytes(t),
            remote_only_bytes: get(&t.remote_only_bytes),
            pending_logs: t.pending_len() as u64,
            budget_exceeded: t.budget_exceeded.load(Ordering::Relaxed),
            failing: t.failing.load(Ordering::Relaxed),
            uploaded_segments: get(&t.uploaded_segments),
            uploaded_bytes: get(&t.uploaded_bytes),
            evicted_segments: get(&t.evicted_segments),
            remote_reads: get(&t.remote_reads),
            remote_read_bytes: get(&t.remote_read_bytes),
            swept_objects: get(&t.swept_objects),
            deleted_objects: get(&t.deleted_objects),
        })
    }

    /// Verifies a tenant log across its local and remote segments (see
    /// [`crate::verify_log`]).
    pub fn verify(&self, id: &DeploymentId) -> Result<VerifyReport, StoreError> {
        crate::verify::verify_log(&self.log_dir(id), self.tiering.as_deref().map(|t| (t, id)))
    }
}
