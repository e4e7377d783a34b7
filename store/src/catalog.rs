//! The deployments catalog: per tenant, what listings need about every deployment
//! (status, counts, times, steps), without opening a single log.
//!
//! ```text
//! <root>/tenants/<tenant>/catalog.log     one record per line: "<crc32c hex8> <json>\n"
//!   {"put":"<id>","s":{stats}}   the whole entry (created, progress, completion)
//!   {"del":"<id>"}               retention removed the deployment
//! ```
//!
//! Why an append-only log in the store's own style and not an embedded database
//! (`redb`, `sled`): the catalog is a cache of facts every log keeps durably itself
//! (`meta.json`, `steps.json`, the segments), so it needs no transactions, only to be
//! crash-safe and cheap to load; one small file per tenant, appended and compacted,
//! adds no dependency and no second storage engine to operate.
//!
//! Writes: a new deployment and a completion are appended at once (written, not
//! fsync'd: the log's own `meta.json` is the durable record); line counts, bytes and
//! times change with every commit and are kept in memory, appended for the entries that
//! changed at each [`Catalog::sync`] (the gateway calls it every second), which also
//! fsyncs and compacts the file past twice its live size.
//!
//! Crash consistency: the logs are the truth. A torn or corrupt record ends the file
//! (it is truncated there); at start the deployment directories are compared with the
//! catalog, and one it does not know (created in the last moments before a crash, or a
//! store from before the catalog) is opened once and added, one it lists without a
//! directory is dropped. Counts may lag by up to one sync after a crash, until the
//! deployment is next opened (opening refreshes its entry).

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::log::LogStats;
use crate::meta::{self, Completion};

/// A catalog change, as the change feed tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogEvent {
    /// A deployment got its first line (or was created empty).
    Created,
    /// Its counts or steps changed (at most once per sync).
    Updated,
    /// It completed.
    Completed,
    /// Retention removed it.
    Deleted,
}

/// Told about every catalog change (the gateway's change feed hangs off this).
pub trait CatalogListener: Send + Sync {
    fn changed(&self, tenant: &str, deployment: &str, event: &CatalogEvent, stats: &LogStats);
}

/// A listener that ignores everything.
pub struct NoCatalogListener;

impl CatalogListener for NoCatalogListener {
    fn changed(&self, _: &str, _: &str, _: &CatalogEvent, _: &LogStats) {}
}

/// What a listing asks for.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// At most this many entries.
    pub limit: usize,
    /// Continue after this position (`created_at`, id) of the previous page.
    pub after: Option<(i64, String)>,
    /// Only these statuses (`running`, `succeeded`, ...); empty: all.
    pub status: Vec<String>,
    /// Only deployments with a line or a change at or after this time (store clock, ns).
    pub since: Option<i64>,
    /// Only ids containing this (case-insensitive).
    pub q: Option<String>,
}

/// A page of a listing: newest first.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub entries: Vec<(String, LogStats)>,
    /// Where the next page starts, when there may be one.
    pub next: Option<(i64, String)>,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Record {
    Put { put: String, s: StatsRecord },
    Del { del: String },
}

/// `LogStats` as stored (field names short: a catalog of 100,000 deployments is read
/// at every start).
#[derive(Serialize, Deserialize)]
struct StatsRecord {
    f: u64,
    l: u64,
    b: u64,
    n: usize,
    c: i64,
    u: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ft: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lt: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    done: Option<Completion>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    st: Vec<String>,
}

impl From<&LogStats> for StatsRecord {
    fn from(s: &LogStats) -> StatsRecord {
        StatsRecord {
            f: s.first_seq,
            l: s.last_seq,
            b: s.bytes,
            n: s.segments,
            c: s.created_at,
            u: s.updated_at,
            ft: s.first_ts,
            lt: s.last_ts,
            done: s.completion,
            st: s.steps.clone(),
        }
    }
}

impl From<StatsRecord> for LogStats {
    fn from(r: StatsRecord) -> LogStats {
        LogStats {
            first_seq: r.f,
            last_seq: r.l,
            bytes: r.b,
            segments: r.n,
            created_at: r.c,
            updated_at: r.u,
            first_ts: r.ft,
            last_ts: r.lt,
            completion: r.done,
            steps: r.st,
        }
    }
}

fn encode(r: &Record) -> Vec<u8> {
    let json = serde_json::to_vec(r).expect("catalog records serialise");
    let mut line = format!("{:08x} ", crc32c::crc32c(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    line
}

fn decode(line: &[u8]) -> Option<Record> {
    let (crc, json) = (line.get(..8)?, line.get(9..)?);
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    if line.get(8) != Some(&b' ') || crc32c::crc32c(json) != crc {
        return None;
    }
    serde_json::from_slice(json).ok()
}

fn status_of(s: &LogStats) -> &'static str {
    s.completion.map_or("running", |c| c.status.as_str())
}

/// One tenant's catalog.
struct Tenant {
    path: PathBuf,
    file: File,
    entries: HashMap<String, LogStats>,
    /// Listing order: newest first, then by id.
    order: BTreeSet<(Reverse<i64>, String)>,
    /// Entries whose progress is not in the file yet.
    dirty: HashSet<String>,
    /// Records in the file (compaction rewrites it past twice the live entries).
    records: usize,
    unsynced: bool,
}

impl Tenant {
    fn open(path: PathBuf) -> Result<Tenant, StoreError> {
        let io = |what: &str, e| StoreError::io(format!("{what} {}", path.display()), e);
        let mut entries: HashMap<String, LogStats> = HashMap::new();
        let mut records = 0;
        let mut good = 0u64;
        match File::open(&path) {
            Ok(f) => {
                let mut r = BufReader::new(f);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    let n = r
                        .read_until(b'\n', &mut line)
                        .map_err(|e| io("reading", e))?;
                    if n == 0 {
                        break;
                    }
                    let Some(rec) = line.strip_suffix(b"\n").and_then(decode) else {
                        tracing::warn!(path = %path.display(), at = good, "torn or corrupt catalog record: the catalog ends there (the logs refill it)");
                        break;
                    };
                    good += n as u64;
                    records += 1;
                    match rec {
                        Record::Put { put, s } => {
                            entries.insert(put, s.into());
                        }
                        Record::Del { del } => {
                            entries.remove(&del);
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("opening", e)),
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io("opening", e))?;
        file.set_len(good).map_err(|e| io("truncating", e))?;
        let order = entries
            .iter()
            .map(|(id, s)| (Reverse(s.created_at), id.clone()))
            .collect();
        Ok(Tenant {
            path,
            file,
            entries,
            order,
            dirty: HashSet::new(),
            records,
            unsynced: false,
        })
    }

    fn append(&mut self, rec: &Record) -> Result<(), StoreError> {
        self.file
            .write_all(&encode(rec))
            .map_err(|e| StoreError::io(format!("appending to {}", self.path.display()), e))?;
        self.records += 1;
        self.unsynced = true;
        Ok(())
    }

    fn put(&mut self, id: &str, stats: LogStats) {
        if let Some(old) = self.entries.get(id) {
            self.order.remove(&(Reverse(old.created_at), id.to_owned()));
        }
        self.order
            .insert((Reverse(stats.created_at), id.to_owned()));
        self.entries.insert(id.to_owned(), stats);
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        let dirty: Vec<String> = self.dirty.drain().collect();
        for id in dirty {
            if let Some(s) = self.entries.get(&id) {
                let rec = Record::Put {
                    put: id.clone(),
                    s: s.into(),
                };
                self.append(&rec)?;
            }
        }
        if self.records > 2 * self.entries.len() + 1000 {
            self.compact()?;
        } else if self.unsynced {
            self.file
                .sync_data()
                .map_err(|e| StoreError::io(format!("syncing {}", self.path.display()), e))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Rewrites the file with one record per live entry.
    fn compact(&mut self) -> Result<(), StoreError> {
        let tmp = self.path.with_extension("tmp");
        let io = |e| StoreError::io(format!("compacting {}", self.path.display()), e);
        let mut body = Vec::new();
        for (id, s) in &self.entries {
            body.extend(encode(&Record::Put {
                put: id.clone(),
                s: s.into(),
            }));
        }
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&body).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &self.path).map_err(io)?;
        meta::sync_dir(self.path.parent().expect("catalog in a dir"))?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        self.records = self.entries.len();
        self.unsynced = false;
        Ok(())
    }
}

/// What [`Catalog::summary`] says of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSummary {
    pub tenant: String,
    pub deployments: usize,
    pub running: usize,
    pub bytes: u64,
    /// Timestamp of the oldest line still stored; `None` when nothing is.
    pub oldest_ts: Option<i64>,
}

/// The catalogs of every tenant of a store.
pub struct Catalog {
    root: PathBuf,
    tenants: RwLock<HashMap<String, Arc<Mutex<Tenant>>>>,
    listener: Arc<dyn CatalogListener>,
}

impl Catalog {
    pub(crate) fn new(root: &Path, listener: Arc<dyn CatalogListener>) -> Catalog {
        Catalog {
            root: root.join("tenants"),
            tenants: RwLock::new(HashMap::new()),
            listener,
        }
    }

    /// Every loaded tenant's catalog (taken out of the map's lock).
    fn all(&self) -> Vec<(String, Arc<Mutex<Tenant>>)> {
        self.tenants
            .read()
            .iter()
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect()
    }

    /// The tenant's catalog, loaded from its file on first use.
    fn tenant(&self, tenant: &str) -> Result<Arc<Mutex<Tenant>>, StoreError> {
        if let Some(t) = self.tenants.read().get(tenant) {
            return Ok(t.clone());
        }
        let mut all = self.tenants.write();
        if let Some(t) = all.get(tenant) {
            return Ok(t.clone());
        }
        let dir = self.root.join(tenant);
        fs::create_dir_all(&dir)
            .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        let t = Arc::new(Mutex::new(Tenant::open(dir.join("catalog.log"))?));
        all.insert(tenant.to_owned(), t.clone());
        Ok(t)
    }

    /// Loads `tenant`'s catalog and squares it with the deployment directories: an id
    /// with a directory but no entry gets one from `stats_of` (which opens the log once),
    /// an entry without a directory goes.
    pub(crate) fn reconcile(
        &self,
        tenant: &str,
        dirs: &[String],
        stats_of: impl Fn(&str) -> Result<Option<LogStats>, StoreError>,
    ) -> Result<usize, StoreError> {
        let t = self.tenant(tenant)?;
        let missing: Vec<String> = {
            let t = t.lock();
            dirs.iter()
                .filter(|d| !t.entries.contains_key(*d))
                .cloned()
                .collect()
        };
        let mut added = 0;
        for id in missing {
            if let Some(s) = stats_of(&id)? {
                let mut t = t.lock();
                t.put(&id, s.clone());
                t.append(&Record::Put {
                    put: id,
                    s: (&s).into(),
                })?;
                added += 1;
            }
        }
        let mut t = t.lock();
        let present: HashSet<&String> = dirs.iter().collect();
        let gone: Vec<String> = t
            .entries
            .keys()
            .filter(|id| !present.contains(id))
            .cloned()
            .collect();
        for id in gone {
            let s = t.entries.remove(&id).expect("listed");
            t.order.remove(&(Reverse(s.created_at), id.clone()));
            t.dirty.remove(&id);
            t.append(&Record::Del { del: id })?;
        }
        t.sync()?;
        Ok(added)
    }

    /// A log was created, opened, or committed lines: its entry becomes `stats`. A new
    /// entry (and a completion) is written at once, progress at the next sync.
    pub(crate) fn update(&self, tenant: &str, id: &str, stats: LogStats) -> Result<(), StoreError> {
        let t = self.tenant(tenant)?;
        let mut t = t.lock();
        let event = match t.entries.get(id) {
            None => Some(CatalogEvent::Created),
            Some(old) if old.completion.is_none() && stats.completion.is_some() => {
                Some(CatalogEvent::Completed)
            }
            Some(old) if *old == stats => return Ok(()),
            Some(_) => None,
        };
        let now = event.is_some();
        t.put(id, stats.clone());
        if now {
            t.dirty.remove(id);
            t.append(&Record::Put {
                put: id.to_owned(),
                s: (&stats).into(),
            })?;
        } else {
            t.dirty.insert(id.to_owned());
        }
        drop(t);
        if let Some(e) = event {
            self.listener.changed(tenant, id, &e, &stats);
        }
        Ok(())
    }

    /// Retention removed `id`.
    pub(crate) fn delete(&self, tenant: &str, id: &str) -> Result<(), StoreError> {
        let t = self.tenant(tenant)?;
        let mut t = t.lock();
        let Some(s) = t.entries.remove(id) else {
            return Ok(());
        };
        t.order.remove(&(Reverse(s.created_at), id.to_owned()));
        t.dirty.remove(id);
        t.append(&Record::Del { del: id.to_owned() })?;
        drop(t);
        self.listener
            .changed(tenant, id, &CatalogEvent::Deleted, &s);
        Ok(())
    }

    /// Writes the progress of changed entries, fsyncs, compacts where due; tells the
    /// listener which entries changed. Returns how many entries were written.
    pub fn sync(&self) -> Result<usize, StoreError> {
        let tenants = self.all();
        let mut n = 0;
        for (name, t) in tenants {
            let mut t = t.lock();
            let changed: Vec<(String, LogStats)> = t
                .dirty
                .iter()
                .filter_map(|id| Some((id.clone(), t.entries.get(id)?.clone())))
                .collect();
            t.sync()?;
            drop(t);
            n += changed.len();
            for (id, s) in changed {
                self.listener
                    .changed(&name, &id, &CatalogEvent::Updated, &s);
            }
        }
        Ok(n)
    }

    /// One entry.
    pub fn get(&self, tenant: &str, id: &str) -> Option<LogStats> {
        let t = self.tenants.read().get(tenant)?.clone();
        let t = t.lock();
        t.entries.get(id).cloned()
    }

    /// A page of `tenant`'s deployments, newest first, those `allow` lets through.
    pub fn list(&self, tenant: &str, q: &ListQuery, allow: impl Fn(&str) -> bool) -> ListPage {
        let Some(t) = self.tenants.read().get(tenant).cloned() else {
            return ListPage::default();
        };
        let t = t.lock();
        let needle = q.q.as_ref().map(|s| s.to_ascii_lowercase());
        let start = q.after.as_ref().map(|(c, id)| (Reverse(*c), id.clone()));
        let mut page = ListPage::default();
        let range: Box<dyn Iterator<Item = &(Reverse<i64>, String)>> = match &start {
            Some(s) => Box::new(t.order.range((
                std::ops::Bound::Excluded(s.clone()),
                std::ops::Bound::Unbounded,
            ))),
            None => Box::new(t.order.iter()),
        };
        for (_, id) in range {
            let s = &t.entries[id];
            let keep = allow(id)
                && (q.status.is_empty() || q.status.iter().any(|st| st == status_of(s)))
                && q.since.is_none_or(|since| s.updated_at >= since)
                && needle
                    .as_ref()
                    .is_none_or(|n| id.to_ascii_lowercase().contains(n.as_str()));
            if !keep {
                continue;
            }
            if page.entries.len() == q.limit {
                page.next = page
                    .entries
                    .last()
                    .map(|(id, s)| (s.created_at, id.clone()));
                break;
            }
            page.entries.push((id.clone(), s.clone()));
        }
        page
    }

    /// Deployments of `tenant` not completed.
    pub fn running(&self, tenant: &str) -> usize {
        let Some(t) = self.tenants.read().get(tenant).cloned() else {
            return 0;
        };
        let t = t.lock();
        t.entries
            .values()
            .filter(|s| s.completion.is_none())
            .count()
    }

    /// Running deployments of any tenant whose last change is older than
    /// `cutoff(tenant)`.
    pub fn idle_running(&self, cutoff: impl Fn(&str) -> i64) -> Vec<(String, String)> {
        let tenants = self.all();
        let mut out = Vec::new();
        for (name, t) in tenants {
            let c = cutoff(&name);
            let t = t.lock();
            out.extend(
                t.entries
                    .iter()
                    .filter(|(_, s)| s.completion.is_none() && s.updated_at < c)
                    .map(|(id, _)| (name.clone(), id.clone())),
            );
        }
        out
    }

    /// Ids of `tenant` created before `before` (retention's candidates).
    pub(crate) fn created_before(&self, tenant: &str, before: i64) -> Vec<String> {
        let Some(t) = self.tenants.read().get(tenant).cloned() else {
            return Vec::new();
        };
        let t = t.lock();
        t.order
            .iter()
            .rev()
            .take_while(|(Reverse(c), _)| *c < before)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Per tenant: deployments, running ones, segment bytes and the timestamp of the
    /// oldest line still stored (retention compliance), from memory.
    pub fn summary(&self) -> Vec<TenantSummary> {
        let mut out: Vec<TenantSummary> = self
            .all()
            .into_iter()
            .map(|(tenant, t)| {
                let t = t.lock();
                TenantSummary {
                    tenant,
                    deployments: t.entries.len(),
                    running: t
                        .entries
                        .values()
                        .filter(|s| s.completion.is_none())
                        .count(),
                    bytes: t.entries.values().map(|s| s.bytes).sum(),
                    oldest_ts: t.entries.values().filter_map(|s| s.first_ts).min(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        out
    }

    /// Segment bytes of `tenant`'s deployments (the stored-bytes quota).
    pub fn tenant_bytes(&self, tenant: &str) -> u64 {
        let Some(t) = self.tenants.read().get(tenant).cloned() else {
            return 0;
        };
        let t = t.lock();
        t.entries.values().map(|s| s.bytes).sum()
    }

    /// Segment bytes of every known deployment.
    pub fn bytes(&self) -> u64 {
        self.tenants
            .read()
            .values()
            .map(|t| t.lock().entries.values().map(|s| s.bytes).sum::<u64>())
            .sum()
    }

    /// Known deployments across tenants.
    pub fn len(&self) -> usize {
        self.tenants
            .read()
            .values()
            .map(|t| t.lock().entries.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
