//! logstream's segment store: per (tenant, deployment), an append-only, hash-chained
//! log of zstd-compressed blocks in segment files, fsync'd before acknowledging.
//!
//! ```text
//! <root>/tenants/<tenant>/deployments/<deployment>/
//!     meta.json                       created_at, completion, retention anchor
//!     producers.json                  last batch id per producer (at each roll)
//!     steps.json                      step names in order of appearance
//!     redactions.ndjson               audit ledger of rewritten blocks (redactions)
//!     00000000000000000001.seg/.idx   segment + its sparse index (64 B per block)
//!     00000000000000052341.seg/.idx   ...
//! <root>/system/audit/                the audit log, same format
//! ```
//!
//! A segment file is named after the seq of its first line and holds a header and then
//! blocks; the active (last) one is appended to and rolled past a size, block count or
//! age ([`StoreConfig`]). A block carries its first seq, line count, min/max timestamp,
//! level and stream masks, the step names and producer batches it holds, a CRC32C, and
//! the BLAKE3 hash of the block before it. The `.idx` file is a cache of the block
//! headers (64 B per block) and is rebuilt from the `.seg` when it does not match.
//!
//! Guarantees:
//! - **Durable acknowledgement.** `append` returns once its lines are `fdatasync`'d.
//!   Concurrent appends share one write and one fsync (group commit).
//! - **Dense seqs.** The store assigns seqs per deployment, dense, starting at 1.
//! - **Idempotent batches.** A batch whose id is not above the last stored one of its
//!   source is stored once; the marks live in block headers and `producers.json`, so this
//!   holds across restarts.
//! - **Recovery.** Opening a log keeps the active segment's valid blocks and truncates a
//!   torn or corrupt tail block (a write cut short by a crash was never acknowledged:
//!   acknowledgement follows the fsync). An invalid block in a sealed segment is
//!   reported as [`StoreError::Corrupt`], never skipped.
//! - **I/O errors reach the writer.** A failed write is rolled back to the last block
//!   boundary; if the rollback fails too, the log refuses appends until reopened.
//! - **Tamper evidence.** An edited byte fails the CRC; a removed or reordered block
//!   breaks the seq run and the hash chain. [`verify_dir`] checks both from the bytes on
//!   disk, and [`compact`] refuses a log that fails it.
//! - **Audited hotfixes.** [`Store::redact`] masks lines in place (a leaked secret) in
//!   every copy, local and in object storage; each rewritten block keeps its seqs and
//!   its place in the chain and names its record in the append-only, hash-chained
//!   ledger (who, when, why, which lines), so `verify` accepts it while any unaudited
//!   change still fails. [`Store::delete`] removes a whole deployment.
//! - **Sealing and retention.** Completing a deployment seals its log. Retention deletes
//!   whole sealed segments and first records in `meta.json` where the chain resumes, so
//!   a trimmed log still verifies.
//! - **Atomic metadata.** The `.json` files are written tmp, fsync, rename, fsync dir;
//!   a reader tries a leftover tmp first. `meta.json` and `producers.json` are versioned.
//! - **Readers never block the writer.** They read only durable lines, through the
//!   index, without the writer lock.
//!
//! See `format` for the bytes, `log` for append/read/retention/recovery, `meta` for the
//! metadata files, `verify` for the tamper check and compaction. Everything here is
//! synchronous, with no async runtime; the gateway calls it from blocking threads.

mod catalog;
mod format;
mod ledger;
mod log;
mod meta;
mod offload;
mod remote;
mod verify;

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use logstream_model::LogRecord;
use parking_lot::{Mutex, RwLock};

pub use catalog::{
    Catalog, CatalogEvent, CatalogListener, ListPage, ListQuery, NoCatalogListener, TenantSummary,
};
pub use log::{
    AppendOutcome, DeploymentLog, Direction, HOTFIX_DETECTOR, LogStats, MAX_STEPS, Page,
    RedactOutcome, RedactRequest,
};
pub use meta::{Completion, Outcome};
pub use offload::OffloadPass;
pub use remote::{
    Manifest, Remote, RemoteError, RemoteLedger, RemoteObject, RemoteSegment, TierStats, Tiering,
};
pub use verify::{BadBlock, Rewrite, VerifyReport, compact, verify_dir, verify_log};

/// A producer's batch: retried batches (same source, id not above the last stored) are
/// stored once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchId {
    pub source: String,
    pub batch_id: u64,
}

/// Names a deployment of a tenant (whose log a `DeploymentLog` is).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeploymentId {
    pub tenant: String,
    pub deployment: String,
}

impl DeploymentId {
    pub fn new(tenant: impl Into<String>, deployment: impl Into<String>) -> DeploymentId {
        DeploymentId {
            tenant: tenant.into(),
            deployment: deployment.into(),
        }
    }
}

impl fmt::Display for DeploymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.deployment)
    }
}

/// Errors of the store. I/O errors are returned to the writer, never swallowed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("no such deployment")]
    NotFound,
    #[error("the deployment has completed{}; its log is sealed", status.map(|s| format!(" ({})", s.as_str())).unwrap_or_default())]
    Completed { status: Option<Outcome> },
    #[error("the log stopped accepting writes after an I/O error: {0}")]
    Poisoned(String),
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// Object storage did not answer (a read of a segment held only there, an
    /// adoption): retryable.
    #[error("{0}")]
    Unavailable(String),
}

impl StoreError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> StoreError {
        StoreError::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }

    /// Stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            StoreError::Io { .. } => "io",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::NotFound => "not_found",
            StoreError::Completed { .. } => "completed",
            StoreError::Poisoned(_) => "poisoned",
            StoreError::Config(_) => "config",
            StoreError::Unavailable(_) => "unavailable",
        }
    }

    /// Whether this is "no space left on device".
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if source.raw_os_error() == Some(28))
    }

    /// Whether this is "too many open files" (the process's or the system's limit).
    pub fn is_out_of_descriptors(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if matches!(source.raw_os_error(), Some(23 | 24)))
    }
}

/// Tuning of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Roll the active segment past this size. Default: 64 MiB.
    pub segment_bytes: u64,
    /// Roll the active segment past this many blocks (bounds its in-memory index to
    /// 64 B per block). Default: 8192.
    pub segment_blocks: u32,
    /// Roll the active segment after this age, so retention can delete old data of
    /// long-running deployments. Default: 1 h.
    pub segment_age: Duration,
    /// Target uncompressed message bytes per block. Default: 128 KiB (larger blocks
    /// compress better, smaller ones read a page faster; see docs/benchmarks.md).
    pub block_bytes: usize,
    /// Maximum lines per block. Default: 16384.
    pub block_records: usize,
    /// Block size `compact` rewrites completed logs into. Default: 1 MiB.
    pub compact_block_bytes: usize,
    /// zstd level of blocks. Default: 3 (see docs/benchmarks.md).
    pub zstd_level: i32,
    /// Extra wait before a group commit so more appends share the fsync. Default: 0
    /// (appends arriving during an fsync already share the next one).
    pub commit_window: Duration,
    /// Uncompressed bytes one page read may examine before returning a partial page.
    /// Default: 64 MiB.
    pub scan_budget: usize,
    /// Logs kept open at most (a running one holds two descriptors, its active segment
    /// and index); the least recently used that nobody holds are closed and reopen on
    /// demand. 0: no bound. Default: 1000.
    pub max_open_logs: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            segment_bytes: 64 << 20,
            segment_blocks: 8192,
            segment_age: Duration::from_secs(3600),
            block_bytes: 128 << 10,
            block_records: 16_384,
            compact_block_bytes: 1 << 20,
            zstd_level: 3,
            commit_window: Duration::ZERO,
            scan_budget: 64 << 20,
            max_open_logs: 1000,
        }
    }
}

impl StoreConfig {
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad = |m: &str| Err(StoreError::Config(m.to_owned()));
        if self.segment_bytes < 4096 {
            return bad("segment_bytes must be at least 4096");
        }
        if self.segment_blocks == 0
            || self.block_records == 0
            || self.block_bytes == 0
            || self.compact_block_bytes == 0
        {
            return bad("segment_blocks, block_records and block_bytes must be positive");
        }
        if !(1..=19).contains(&self.zstd_level) {
            return bad("zstd_level must be between 1 and 19");
        }
        if self.commit_window > Duration::from_millis(50) {
            return bad("commit_window must be at most 50ms (it delays every acknowledgement)");
        }
        Ok(())
    }
}

/// The store's wallclock (Unix ns); injected so retention can be tested.
pub trait Clock: Send + Sync {
    fn now(&self) -> i64;
}

/// The real clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0)
    }
}

/// Told about every commit, in seq order per log, while the commit is still exclusive:
/// the live broadcast hangs off this.
pub trait CommitListener: Send + Sync {
    fn committed(&self, log: &DeploymentId, records: &[LogRecord]);
    fn completed(&self, log: &DeploymentId, completion: &Completion);
}

/// A listener that ignores everything.
pub struct NoListener;

impl CommitListener for NoListener {
    fn committed(&self, _: &DeploymentId, _: &[LogRecord]) {}
    fn completed(&self, _: &DeploymentId, _: &Completion) {}
}

/// Named fault points for tests (`segment_write`, `segment_sync`, `redact_swap`: after a
/// redaction's ledger records are durable, before its segment is swapped in): when
/// armed, the I/O at that point fails with the given error instead of running. Named
/// pause points (`read_open`: a read about to open a segment file, its index in hand)
/// sleep when armed with [`Faults::pause_at`], to widen a race window in a test.
#[derive(Default)]
pub struct Faults {
    errors: Mutex<HashMap<&'static str, std::io::ErrorKind>>,
    pauses: Mutex<HashMap<&'static str, Duration>>,
    /// Whether any pause is armed (reads check this, not the map).
    paused: std::sync::atomic::AtomicBool,
}

impl Faults {
    pub fn arm(&self, point: &'static str, kind: std::io::ErrorKind) {
        self.errors.lock().insert(point, kind);
    }

    pub fn disarm(&self, point: &'static str) {
        self.errors.lock().remove(point);
        let mut pauses = self.pauses.lock();
        pauses.remove(point);
        self.paused.store(!pauses.is_empty(), Ordering::Relaxed);
    }

    /// Makes the code passing `point` sleep `pause` first.
    pub fn pause_at(&self, point: &'static str, pause: Duration) {
        self.pauses.lock().insert(point, pause);
        self.paused.store(true, Ordering::Relaxed);
    }

    pub(crate) fn check(&self, point: &'static str) -> std::io::Result<()> {
        match self.errors.lock().get(point) {
            Some(kind) => Err(std::io::Error::new(
                *kind,
                format!("injected fault at {point}"),
            )),
            None => Ok(()),
        }
    }

    /// Sleeps when `point` is armed with a pause.
    pub(crate) fn pause(&self, point: &'static str) {
        if !self.paused.load(Ordering::Relaxed) {
            return;
        }
        let pause = self.pauses.lock().get(point).copied();
        if let Some(d) = pause {
            std::thread::sleep(d);
        }
    }
}

/// Told how long the store's I/O takes, for metrics (the store has none of its own).
pub trait Observer: Send + Sync {
    /// One segment write and its fsync.
    fn fsync(&self, _took: std::time::Duration) {}
    /// One group commit: from the first queued append to every appender answered.
    fn group_commit(&self, _took: std::time::Duration, _appends: usize) {}
}

/// An observer that ignores everything.
pub struct NoObserver;

impl Observer for NoObserver {}

/// What the store calls out to.
pub struct StoreHooks {
    pub clock: Arc<dyn Clock>,
    pub listener: Arc<dyn CommitListener>,
    /// Told about catalog changes (the change feed).
    pub catalog_listener: Arc<dyn CatalogListener>,
    pub observer: Arc<dyn Observer>,
    pub faults: Faults,
    /// Object storage for sealed segments (see [`Store::offload`]). Default: none.
    pub remote: Option<Arc<dyn Remote>>,
    /// A tenant log created here is first looked for in object storage and adopted
    /// from its manifest (Kafka mode: a replica taking a partition over). Default: false.
    pub adopt_remote: bool,
}

impl Default for StoreHooks {
    fn default() -> Self {
        StoreHooks {
            clock: Arc::new(SystemClock),
            listener: Arc::new(NoListener),
            catalog_listener: Arc::new(NoCatalogListener),
            observer: Arc::new(NoObserver),
            faults: Faults::default(),
            remote: None,
            adopt_remote: false,
        }
    }
}

/// One segment deleted by retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub log: DeploymentId,
    pub first_seq: u64,
    pub last_seq: u64,
    pub bytes: u64,
}

/// An open log and when it was last asked for (for the LRU).
struct OpenLog {
    log: Arc<DeploymentLog>,
    used: AtomicU64,
}

/// The state behind a log's opening lock.
#[derive(Default)]
struct Opening {
    /// `Store::delete` removed the log while this lock was waited for: the callers that
    /// waited (they raced the deletion) do not create it again.
    deleted: bool,
}

/// All deployments' logs under one root directory.
pub struct Store {
    root: PathBuf,
    pub(crate) cfg: Arc<StoreConfig>,
    hooks: Arc<StoreHooks>,
    logs: RwLock<HashMap<DeploymentId, OpenLog>>,
    /// One lock per log being opened, so two callers never open one log twice while
    /// different logs open (and create, with their fsyncs) in parallel. `Store::delete`
    /// holds it too.
    opening: Mutex<HashMap<DeploymentId, Arc<Mutex<Opening>>>>,
    /// Ticks of [`Store::log`], the LRU's clock.
    tick: AtomicU64,
    catalog: Arc<Catalog>,
    /// Object storage and the offloader's bookkeeping (with `hooks.remote`).
    tiering: Option<Arc<Tiering>>,
}

impl Store {
    /// Opens the store: loads each tenant's catalog and squares it with the deployment
    /// directories (no log is opened but those the catalog does not know yet).
    pub fn open(
        root: impl Into<PathBuf>,
        cfg: StoreConfig,
        hooks: StoreHooks,
    ) -> Result<Store, StoreError> {
        cfg.validate()?;
        let root = root.into();
        fs::create_dir_all(root.join("tenants"))
            .map_err(|e| StoreError::io(format!("creating {}", root.display()), e))?;
        let catalog = Arc::new(Catalog::new(&root, hooks.catalog_listener.clone()));
        let tiering = hooks
            .remote
            .clone()
            .map(|r| Arc::new(Tiering::new(r, hooks.adopt_remote)));
        let store = Store {
            root,
            cfg: Arc::new(cfg),
            hooks: Arc::new(hooks),
            logs: RwLock::new(HashMap::new()),
            opening: Mutex::new(HashMap::new()),
            tick: AtomicU64::new(0),
            catalog,
            tiering,
        };
        for tenant in store.tenants()? {
            store.finish_interrupted(&tenant)?;
            let dirs = store.deployments(&tenant)?;
            let added = store.catalog.reconcile(&tenant, &dirs, |d| {
                let id = DeploymentId::new(tenant.clone(), d);
                let log = DeploymentLog::open(
                    id.clone(),
                    store.log_dir(&id),
                    store.cfg.clone(),
                    store.hooks.clone(),
                    false,
                    store.tiering.clone(),
                )?;
                Ok(log.map(|l| l.stats()))
            })?;
            if added > 0 {
                tracing::info!(
                    tenant,
                    added,
                    "deployments added to the catalog from their logs"
                );
            }
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn hooks(&self) -> &StoreHooks {
        &self.hooks
    }

    /// The deployments catalog (listings, status, counts without opening logs).
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn tenant_dir(&self, tenant: &str) -> PathBuf {
        self.root.join("tenants").join(tenant).join("deployments")
    }

    fn log_dir(&self, id: &DeploymentId) -> PathBuf {
        if id.tenant.starts_with('_') {
            // System logs (`_audit`) live beside the tenants; tenant names cannot start
            // with '_', so they never collide.
            return self.root.join("system").join(&id.deployment);
        }
        self.tenant_dir(&id.tenant).join(&id.deployment)
    }

    /// The log of `id`, opening it from disk (its torn tail, if any, is repaired now,
    /// on first use); with `create`, a missing log is created. `Ok(None)` when it does
    /// not exist and `create` is false. At most `max_open_logs` stay open: the least
    /// recently used that nobody holds are closed (and reopen on demand).
    pub fn log(
        &self,
        id: &DeploymentId,
        create: bool,
    ) -> Result<Option<Arc<DeploymentLog>>, StoreError> {
        let now = self.tick.fetch_add(1, Ordering::Relaxed);
        if let Some(o) = self.logs.read().get(id) {
            o.used.store(now, Ordering::Relaxed);
            return Ok(Some(o.log.clone()));
        }
        let slot = self.opening.lock().entry(id.clone()).or_default().clone();
        let result = {
            let guard = slot.lock();
            match guard.deleted {
                // Deleted while we waited: this call raced the deletion.
                true if create => Err(StoreError::NotFound),
                true => Ok(None),
                false => self.open_log(id, create, now),
            }
        };
        let mut opening = self.opening.lock();
        // The map's and ours: nobody else waits for this log.
        if opening.get(id).is_some_and(|s| Arc::ptr_eq(s, &slot)) && Arc::strong_count(&slot) <= 2 {
            opening.remove(id);
        }
        result
    }

    /// Opens `id` under its opening lock (see [`Store::log`]).
    fn open_log(
        &self,
        id: &DeploymentId,
        create: bool,
        now: u64,
    ) -> Result<Option<Arc<DeploymentLog>>, StoreError> {
        if let Some(o) = self.logs.read().get(id) {
            o.used.store(now, Ordering::Relaxed);
            return Ok(Some(o.log.clone()));
        }
        let tenant_log = !id.tenant.starts_with('_');
        let opened = DeploymentLog::open(
            id.clone(),
            self.log_dir(id),
            self.cfg.clone(),
            self.hooks.clone(),
            create,
            self.tiering.clone().filter(|_| tenant_log),
        )?;
        let Some(mut log) = opened else {
            return Ok(None);
        };
        if tenant_log {
            log.catalog = Some(self.catalog.clone());
            // New, or refreshed from the log (counts that lagged after a crash).
            if let Err(e) = self.catalog.update(&id.tenant, &id.deployment, log.stats()) {
                tracing::warn!(log = %id, error = %e, "updating the catalog failed");
            }
        }
        let log = Arc::new(log);
        let mut logs = self.logs.write();
        logs.insert(
            id.clone(),
            OpenLog {
                log: log.clone(),
                used: AtomicU64::new(now),
            },
        );
        let max = self.cfg.max_open_logs;
        if max > 0 && logs.len() > max {
            // Close the least recently used tenth that nobody holds.
            let mut idle: Vec<(u64, DeploymentId)> = logs
                .iter()
                .filter(|(k, o)| Arc::strong_count(&o.log) == 1 && !k.tenant.starts_with('_'))
                .map(|(k, o)| (o.used.load(Ordering::Relaxed), k.clone()))
                .collect();
            idle.sort_unstable();
            let excess = logs.len() - max + max / 10;
            for (_, k) in idle.into_iter().take(excess) {
                logs.remove(&k);
            }
        }
        Ok(Some(log))
    }

    /// Forgets the handles of completed logs that nobody holds (they reopen from disk
    /// on the next access). Returns how many were dropped.
    pub fn evict_idle(&self) -> usize {
        let mut logs = self.logs.write();
        let before = logs.len();
        logs.retain(|_, o| Arc::strong_count(&o.log) > 1 || o.log.completion().is_none());
        before - logs.len()
    }

    /// Running deployments (of every tenant) with no line since `cutoff(tenant)` (store
    /// wallclock, Unix ns): the catalog names the candidates, each is opened and its
    /// last write checked (the catalog may lag after a crash). System logs never count.
    pub fn idle_running(
        &self,
        cutoff: impl Fn(&str) -> i64,
    ) -> Result<Vec<Arc<DeploymentLog>>, StoreError> {
        let mut out = Vec::new();
        for (tenant, deployment) in self.catalog.idle_running(&cutoff) {
            let id = DeploymentId::new(tenant, deployment);
            if let Some(log) = self.log(&id, false)?
                && log.completion().is_none()
                && log.last_write_at() < cutoff(&id.tenant)
            {
                out.push(log);
            }
        }
        Ok(out)
    }

    /// Writes the catalog's pending progress and fsyncs it (call every second or so).
    pub fn sync_catalog(&self) -> Result<usize, StoreError> {
        self.catalog.sync()
    }

    /// Number of logs with an open handle.
    pub fn open_logs(&self) -> usize {
        self.logs.read().len()
    }

    /// Bytes of the segment files of every deployment the catalog knows.
    pub fn known_bytes(&self) -> u64 {
        self.catalog.bytes()
    }

    /// Drops the open handle of a log (after compaction replaced its files).
    pub(crate) fn forget(&self, id: &DeploymentId) {
        self.logs.write().remove(id);
    }

    /// Deployment ids of `tenant`, sorted.
    pub fn deployments(&self, tenant: &str) -> Result<Vec<String>, StoreError> {
        let dir = self.tenant_dir(tenant);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io(format!("listing {}", dir.display()), e)),
        };
        let mut ids: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("meta.json").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| logstream_model::validate_deployment_id(name).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Tenants with a directory in the store.
    pub fn tenants(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join("tenants");
        let rd = fs::read_dir(&dir)
            .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
        let mut t: Vec<String> = rd
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        t.sort();
        Ok(t)
    }

    /// Deletes every sealed segment whose newest block is older than its tenant's
    /// retention (`retention(tenant)`), and the directories of completed deployments
    /// left empty. Returns what was deleted (for the audit log).
    pub fn expire(&self, retention: impl Fn(&str) -> Duration) -> Result<Vec<Expired>, StoreError> {
        let now = self.hooks.clock.now();
        let mut out = Vec::new();
        // The offloader's byte counts are settled before retention changes them.
        self.scan_before_expire()?;
        for tenant in self.tenants()? {
            let cutoff = now.saturating_sub(retention(&tenant).as_nanos() as i64);
            // A segment expires when its last write is older than the cutoff, so only
            // logs created before it can hold one: the catalog names them, newest
            // deployments are never opened.
            for deployment in self.catalog.created_before(&tenant, cutoff) {
                let id = DeploymentId::new(tenant.clone(), deployment);
                let Some(log) = self.log(&id, false)? else {
                    continue;
                };
                let expired = match log.expire(cutoff) {
                    Ok(e) => e,
                    // One log that cannot be trimmed now does not stop the others.
                    Err(e) => {
                        tracing::warn!(log = %id, error = %e, "retention of this log failed; retried at the next pass");
                        continue;
                    }
                };
                for &(first_seq, last_seq, bytes) in &expired {
                    out.push(Expired {
                        log: id.clone(),
                        first_seq,
                        last_seq,
                        bytes,
                    });
                }
                if log.is_empty_and_sealed() {
                    log.delete_remote();
                    if let Some(t) = &self.tiering {
                        t.forget_log(&id);
                    }
                    self.logs.write().remove(&id);
                    fs::remove_dir_all(log.dir()).map_err(|e| {
                        StoreError::io(format!("deleting {}", log.dir().display()), e)
                    })?;
                    self.catalog.delete(&id.tenant, &id.deployment)?;
                } else if !expired.is_empty() {
                    self.catalog
                        .update(&id.tenant, &id.deployment, log.stats())?;
                    // The next upload pass drops the expired segments from the manifest
                    // and deletes their objects.
                    if let Some(t) = &self.tiering {
                        t.mark_pending(&id);
                    }
                }
            }
        }
        Ok(out)
    }
}

// === impl Store: redaction and deletion ===

impl Store {
    /// Masks lines of `id`'s log in every copy and records the rewrite in its audit
    /// ledger (see [`DeploymentLog::redact`]).
    pub fn redact(
        &self,
        id: &DeploymentId,
        req: &RedactRequest,
    ) -> Result<RedactOutcome, StoreError> {
        let log = self.log(id, false)?.ok_or(StoreError::NotFound)?;
        log.redact(req)
    }

    /// Deletes a whole deployment: its objects in object storage (the segments, then
    /// the manifest), its directory (renamed away at once, then removed), its catalog
    /// entry and its open handle. An append racing the deletion either finished before
    /// it (its lines go too) or answers `NotFound`, also through a handle taken before;
    /// it never recreates the log. An append that starts after `delete` returned
    /// creates a new, empty log under the same id (seqs from 1), as for a new
    /// deployment: refusing that is the caller's decision. When object storage does not
    /// answer, nothing local is deleted and the error says so: retry.
    pub fn delete(&self, id: &DeploymentId) -> Result<(), StoreError> {
        if id.tenant.starts_with('_') {
            return Err(StoreError::Config("system logs are not deleted".into()));
        }
        let slot = self.opening.lock().entry(id.clone()).or_default().clone();
        let result = {
            let mut guard = slot.lock();
            let r = self.delete_locked(id);
            guard.deleted = r.is_ok();
            r
        };
        let mut opening = self.opening.lock();
        // After a deletion, later callers get a fresh lock (and may create the log);
        // the ones still waiting for this one see `deleted`.
        if opening.get(id).is_some_and(|s| Arc::ptr_eq(s, &slot))
            && (result.is_ok() || Arc::strong_count(&slot) <= 2)
        {
            opening.remove(id);
        }
        result
    }

    /// `delete` under the log's opening lock (nobody opens or creates it meanwhile).
    fn delete_locked(&self, id: &DeploymentId) -> Result<(), StoreError> {
        let dir = self.log_dir(id);
        let handle = self.logs.read().get(id).map(|o| o.log.clone());
        let _closed = handle.as_ref().map(|l| l.close_for_delete());
        let meta = match meta::read_atomic::<meta::MetaFile>(&dir.join("meta.json")) {
            Ok(Some(meta::MetaFile::V1(m))) => Some(m),
            Ok(None) => None,
            // A log whose metadata does not read is deleted all the same.
            Err(_) if dir.is_dir() => None,
            Err(e) => return Err(e),
        };
        if handle.is_none() && meta.is_none() && !dir.is_dir() {
            return Err(StoreError::NotFound);
        }
        self.logs.write().remove(id);
        // Object storage first: the local files name what is there.
        let local_manifest = log::local_manifest(&dir).unwrap_or_default();
        match &self.tiering {
            Some(t) => {
                let mut manifests: Vec<remote::Manifest> = local_manifest.into_iter().collect();
                // A manifest put just before a crash may name more than remote.json.
                manifests.extend(log::fetch_manifest(t, id)?);
                let remote_only: u64 = manifests
                    .first()
                    .map(|m| {
                        let from = meta.as_ref().map_or(m.retained_from, |x| x.retained_from);
                        m.segments
                            .iter()
                            .filter(|s| s.first_seq >= from)
                            .filter(|s| {
                                !dir.join(format::segment_file_name(s.first_seq, "seg"))
                                    .exists()
                            })
                            .map(|s| s.bytes)
                            .sum()
                    })
                    .unwrap_or(0);
                if !manifests.is_empty()
                    && let (_, Some(e)) = log::delete_objects(t, id, &manifests)
                {
                    return Err(e);
                }
                t.forget_log(id);
                if t.scanned.load(Ordering::Acquire) {
                    let _ = t.remote_only_bytes.fetch_update(
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                        |v| Some(v.saturating_sub(remote_only)),
                    );
                }
            }
            None if local_manifest.is_some_and(|m| !m.segments.is_empty()) => {
                return Err(StoreError::Unavailable(format!(
                    "{id} has segments in object storage, which is not configured here; delete it where it is"
                )));
            }
            None => {}
        }
        let parent = dir.parent().expect("a deployment dir has a parent");
        let gone = parent.join(format!(".{}.deleted", id.deployment));
        let io = |what: &str, e| StoreError::io(format!("{what} {}", dir.display()), e);
        if gone.exists() {
            fs::remove_dir_all(&gone).map_err(|e| io("deleting", e))?;
        }
        if dir.exists() {
            fs::rename(&dir, &gone).map_err(|e| io("deleting", e))?;
            meta::sync_dir(parent)?;
        }
        self.catalog.delete(&id.tenant, &id.deployment)?;
        fs::remove_dir_all(&gone).map_err(|e| io("deleting", e))?;
        // What a compaction cut short left of it.
        for leftover in [".compact", ".old"] {
            let p = parent.join(format!(".{}{leftover}", id.deployment));
            if p.exists() {
                fs::remove_dir_all(&p).map_err(|e| io("deleting", e))?;
            }
        }
        meta::sync_dir(parent)
    }

    /// Finishes what a crash interrupted in `tenant`'s deployments directory: a
    /// deletion (`.<id>.deleted`: removed), a compaction (`.<id>.compact`: removed;
    /// `.<id>.old`: removed, or renamed back when the compacted copy never took its
    /// place). These names are not deployment ids, so they never list as deployments.
    fn finish_interrupted(&self, tenant: &str) -> Result<(), StoreError> {
        let dir = self.tenant_dir(tenant);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io(format!("listing {}", dir.display()), e)),
        };
        let io = |p: &Path, e| StoreError::io(format!("cleaning up {}", p.display()), e);
        for entry in rd.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some(hidden) = name.strip_prefix('.') else {
                continue;
            };
            let path = entry.path();
            if hidden.ends_with(".deleted") || hidden.ends_with(".compact") {
                fs::remove_dir_all(&path).map_err(|e| io(&path, e))?;
            } else if let Some(id) = hidden.strip_suffix(".old") {
                let live = dir.join(id);
                if live.join("meta.json").exists() {
                    fs::remove_dir_all(&path).map_err(|e| io(&path, e))?;
                } else {
                    fs::rename(&path, &live).map_err(|e| io(&path, e))?;
                }
            } else {
                continue;
            }
            meta::sync_dir(&dir)?;
        }
        Ok(())
    }
}
