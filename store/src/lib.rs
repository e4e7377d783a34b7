//! logstream's segment store: per (tenant, deployment), an append-only, hash-chained
//! log of zstd-compressed blocks in segment files, fsync'd before acknowledging.
//!
//! ```text
//! <root>/tenants/<tenant>/deployments/<deployment>/
//!     meta.json                       created_at, completion, retention anchor
//!     producers.json                  last batch id per producer (at each roll)
//!     steps.json                      step names in order of appearance
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

mod format;
mod log;
mod meta;
mod verify;

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use logstream_model::LogRecord;
use parking_lot::{Mutex, RwLock};

pub use log::{AppendOutcome, DeploymentLog, Direction, LogStats, MAX_STEPS, Page};
pub use meta::{Completion, Outcome};
pub use verify::{VerifyReport, compact, verify_dir};

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
        }
    }

    /// Whether this is "no space left on device".
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if source.raw_os_error() == Some(28))
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

/// Named fault points for tests (`segment_write`, `segment_sync`): when armed, the I/O at
/// that point fails with the given error instead of running.
#[derive(Default)]
pub struct Faults(Mutex<HashMap<&'static str, std::io::ErrorKind>>);

impl Faults {
    pub fn arm(&self, point: &'static str, kind: std::io::ErrorKind) {
        self.0.lock().insert(point, kind);
    }

    pub fn disarm(&self, point: &'static str) {
        self.0.lock().remove(point);
    }

    pub(crate) fn check(&self, point: &'static str) -> std::io::Result<()> {
        match self.0.lock().get(point) {
            Some(kind) => Err(std::io::Error::new(
                *kind,
                format!("injected fault at {point}"),
            )),
            None => Ok(()),
        }
    }
}

/// What the store calls out to.
pub struct StoreHooks {
    pub clock: Arc<dyn Clock>,
    pub listener: Arc<dyn CommitListener>,
    pub faults: Faults,
}

impl Default for StoreHooks {
    fn default() -> Self {
        StoreHooks {
            clock: Arc::new(SystemClock),
            listener: Arc::new(NoListener),
            faults: Faults::default(),
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

/// All deployments' logs under one root directory.
pub struct Store {
    root: PathBuf,
    pub(crate) cfg: Arc<StoreConfig>,
    hooks: Arc<StoreHooks>,
    logs: RwLock<HashMap<DeploymentId, Arc<DeploymentLog>>>,
    /// Serialises opening/creating logs so two callers never open one log twice.
    opening: Mutex<()>,
}

impl Store {
    pub fn open(
        root: impl Into<PathBuf>,
        cfg: StoreConfig,
        hooks: StoreHooks,
    ) -> Result<Store, StoreError> {
        cfg.validate()?;
        let root = root.into();
        fs::create_dir_all(root.join("tenants"))
            .map_err(|e| StoreError::io(format!("creating {}", root.display()), e))?;
        Ok(Store {
            root,
            cfg: Arc::new(cfg),
            hooks: Arc::new(hooks),
            logs: RwLock::new(HashMap::new()),
            opening: Mutex::new(()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn hooks(&self) -> &StoreHooks {
        &self.hooks
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

    /// The log of `id`, opening it from disk; with `create`, a missing log is created.
    /// `Ok(None)` when it does not exist and `create` is false.
    pub fn log(
        &self,
        id: &DeploymentId,
        create: bool,
    ) -> Result<Option<Arc<DeploymentLog>>, StoreError> {
        if let Some(log) = self.logs.read().get(id) {
            return Ok(Some(log.clone()));
        }
        let _guard = self.opening.lock();
        if let Some(log) = self.logs.read().get(id) {
            return Ok(Some(log.clone()));
        }
        let opened = DeploymentLog::open(
            id.clone(),
            self.log_dir(id),
            self.cfg.clone(),
            self.hooks.clone(),
            create,
        )?;
        Ok(opened.map(|log| {
            let log = Arc::new(log);
            self.logs.write().insert(id.clone(), log.clone());
            log
        }))
    }

    /// Forgets the handles of completed logs that nobody holds (they reopen from disk
    /// on the next access), so the map does not grow with every deployment ever read.
    /// Returns how many were dropped.
    pub fn evict_idle(&self) -> usize {
        let mut logs = self.logs.write();
        let before = logs.len();
        logs.retain(|_, log| Arc::strong_count(log) > 1 || log.completion().is_none());
        before - logs.len()
    }

    /// Opens every tenant log not completed yet (only `meta.json` of the others is
    /// read), so [`Store::idle_running`] sees the deployments left open before a restart.
    /// Returns how many are running.
    pub fn open_running(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for tenant in self.tenants()? {
            for deployment in self.deployments(&tenant)? {
                let id = DeploymentId::new(tenant.clone(), deployment);
                let path = self.log_dir(&id).join("meta.json");
                let running = matches!(
                    meta::read_atomic::<meta::MetaFile>(&path)?,
                    Some(meta::MetaFile::V1(m)) if m.completion.is_none()
                );
                if running && self.log(&id, false)?.is_some() {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Open tenant logs not completed whose last append (or creation) is older than
    /// `cutoff(tenant)` (store wallclock, Unix ns). System logs never count.
    pub fn idle_running(&self, cutoff: impl Fn(&str) -> i64) -> Vec<Arc<DeploymentLog>> {
        self.logs
            .read()
            .values()
            .filter(|l| !l.id.tenant.starts_with('_') && l.completion().is_none())
            .filter(|l| l.last_write_at() < cutoff(&l.id.tenant))
            .cloned()
            .collect()
    }

    /// Number of logs with an open handle.
    pub fn open_logs(&self) -> usize {
        self.logs.read().len()
    }

    /// Bytes of the segment files of the logs open in this process.
    pub fn open_log_bytes(&self) -> u64 {
        self.logs.read().values().map(|l| l.stats().bytes).sum()
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

    /// Bytes of the files under `tenant`'s directory (segments, indexes, metadata).
    pub fn tenant_bytes(&self, tenant: &str) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(rd) = fs::read_dir(dir) else { return 0 };
            rd.filter_map(|e| e.ok())
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        }
        walk(&self.tenant_dir(tenant))
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
        for tenant in self.tenants()? {
            let cutoff = now.saturating_sub(retention(&tenant).as_nanos() as i64);
            for deployment in self.deployments(&tenant)? {
                let id = DeploymentId::new(tenant.clone(), deployment);
                let Some(log) = self.log(&id, false)? else {
                    continue;
                };
                for (first_seq, last_seq, bytes) in log.expire(cutoff)? {
                    out.push(Expired {
                        log: id.clone(),
                        first_seq,
                        last_seq,
                        bytes,
                    });
                }
                if log.is_empty_and_sealed() {
                    self.logs.write().remove(&id);
                    fs::remove_dir_all(log.dir()).map_err(|e| {
                        StoreError::io(format!("deleting {}", log.dir().display()), e)
                    })?;
                }
            }
        }
        Ok(out)
    }
}
