//! The node collector's engine: discovers container log files, follows them through
//! rotation and truncation, joins, redacts and batches their lines, hands batches to the
//! forwarder and moves checkpoints only when the gateway acknowledged them.
//!
//! One thread does the file work. It wakes on inotify events (new files are picked up
//! at once), on acknowledgements, and on a short poll tick; a slow rescan is the safety
//! net for missed events. Each container has at most one batch in flight and one queued,
//! and each pass reads at most `read_budget` bytes per container in turn, so memory is
//! bounded and one noisy pod cannot starve the others. A batch not acknowledged within
//! `spool_after` is rebuilt into the on-disk spool (see `spool.rs`), and so are the
//! container's next batches until the spool has drained; when the spool is full nothing
//! more is read and the data waits in the node's log files.

use crate::checkpoint::{Checkpoints, FileId};
use crate::forward::{Batch, Outgoing, Report};
use crate::metrics::Metrics;
use crate::pods::{PodInfo, PodMap, parse_pod_dir};
use crate::spool::{Header, Spool};
use crate::tail::{Emitted, FileTail, file_id, is_same_file};
use logstream_model::redact::{Redactor, StreamRedactor};
use logstream_proto::v1 as pb;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Engine settings.
#[derive(Clone)]
pub struct Settings {
    pub log_root: PathBuf,
    pub state_dir: PathBuf,
    /// Prefix of every batch source (the node name).
    pub source: String,
    pub batch_bytes: usize,
    pub batch_delay: Duration,
    pub read_budget: usize,
    pub max_line: usize,
    pub poll: Duration,
    pub rescan: Duration,
    /// How long a replaced (rotated) file must stay quiet at its end before it is let go.
    pub rotate_wait: Duration,
    /// How long a container whose pod ended stays open once drained and its completion
    /// acknowledged, before its files are closed (its descriptors never outlive it by
    /// more than this).
    pub close_grace: Duration,
    /// Log files held open at most (an LRU): beyond it, the files of the containers idle
    /// longest (everything read acknowledged) are closed and reopened at their
    /// checkpoint when they change. Exceeded only while more containers than this are
    /// all busy at once.
    pub max_open_files: usize,
    pub redactor: Arc<Redactor>,
    /// Bytes the on-disk spool may hold (0: no spool; the backlog waits in the files).
    pub spool_bytes: u64,
    /// How long a batch may wait for its acknowledgement before its container spools.
    pub spool_after: Duration,
    /// Sidecar mode: these plain files instead of kubelet's layout under `log_root`.
    pub sidecar: Option<Sidecar>,
}

/// What a sidecar follows: plain log files of one pod (each file is a step, named by its
/// stem, unless the pod names one step), in a volume shared with the app container.
#[derive(Clone, Debug)]
pub struct Sidecar {
    pub files: Vec<PathBuf>,
    /// The pod's uid: the key of its entry in the pod map.
    pub pod_uid: String,
}

impl Settings {
    pub fn new(log_root: PathBuf, state_dir: PathBuf, source: String) -> Settings {
        Settings {
            log_root,
            state_dir,
            source,
            batch_bytes: 512 << 10,
            batch_delay: Duration::from_millis(50),
            read_budget: 128 << 10,
            max_line: 1 << 20,
            poll: Duration::from_millis(250),
            rescan: Duration::from_secs(5),
            rotate_wait: Duration::from_secs(1),
            close_grace: Duration::from_secs(2),
            max_open_files: 512,
            redactor: Arc::new(Redactor::builtin()),
            spool_bytes: 256 << 20,
            spool_after: Duration::from_secs(2),
            sidecar: None,
        }
    }
}

/// What wakes the engine.
#[derive(Debug)]
pub enum Event {
    /// Something changed under the log root.
    Fs {
        created: bool,
    },
    Forwarder(Report),
    Pods(PodMap),
    Stop,
}

struct InFlight {
    batch_id: u64,
    resume: u64,
    /// The file and generation it was read from: its acknowledgement moves that
    /// checkpoint only (after a copytruncate the file is in a newer generation, where
    /// this batch's offsets mean nothing).
    file: FileId,
    generation: u32,
    /// The spool entry it was sent from (`None`: straight from the file).
    spooled: Option<u64>,
    since: Instant,
}

/// One container's log: its files in order (rotated ones first), read one at a time.
struct Container {
    id: u64,
    pod_uid: String,
    name: String,
    tails: VecDeque<FileTail>,
    /// Paths known to belong here, by restart number.
    files: BTreeMap<u32, PathBuf>,
    queued: VecDeque<Emitted>,
    queued_bytes: usize,
    first_queued: Option<Instant>,
    in_flight: Option<InFlight>,
    redactors: [StreamRedactor; 2],
    /// Since when the head tail has been at its end (for rotate_wait).
    quiet_since: Option<Instant>,
    /// This pass's read reached the head file's end (false when nothing was read).
    at_eof: bool,
    /// The next batch goes to the spool (the one in flight took too long).
    spool_next: bool,
    /// Waiting for room in a full spool.
    stalled: bool,
    /// The last read error (logged when it changes).
    read_error: Option<String>,
    /// The pod as last seen in the pod map: its lines and completion still go out after
    /// the pod is deleted from the API.
    pod: Option<PodInfo>,
    /// Drained and closed after its pod ended: no file of it is opened again.
    closed: bool,
    /// Its pod is not selected (no deployment label): no file of it is open.
    unselected: bool,
    /// Closed while idle (the LRU bound): the file it followed and how long it was
    /// then; reopened at its checkpoint when the file at its path changes.
    parked: Option<Parked>,
    /// When a read last returned bytes (the LRU order).
    last_read: Instant,
}

/// An idle container's closed file.
struct Parked {
    id: FileId,
    len: u64,
    /// The path it was followed at (its newest `<n>.log`).
    path: PathBuf,
}

pub struct Engine {
    s: Settings,
    checkpoints: Checkpoints,
    dirty: bool,
    /// The last failed checkpoint write: not tried again before the instant (a missing
    /// or full state directory must not spin the loop or flood the log), and its error
    /// (logged once until it changes).
    save_failed: Option<(Instant, String)>,
    containers: HashMap<PathBuf, Container>,
    by_id: HashMap<u64, PathBuf>,
    next_id: u64,
    pods: PodMap,
    completing: HashMap<String, Instant>,
    completed: std::collections::HashSet<String>,
    out: tokio::sync::mpsc::UnboundedSender<Outgoing>,
    spool: Option<Spool>,
    pub metrics: Metrics,
}

fn restart_number(file: &str) -> Option<u32> {
    file.strip_suffix(".log")?.parse().ok()
}

/// kubelet's rotated name: `<n>.log.<YYYYMMDD-HHMMSS>` (compressed ones end in `.gz`
/// and are never read; copies made by other tools are not followed either).
fn is_kubelet_rotated(file: &str) -> bool {
    let Some((base, stamp)) = file.split_once(".log.") else {
        return false;
    };
    base.parse::<u32>().is_ok()
        && stamp.len() == 15
        && stamp.bytes().enumerate().all(|(i, b)| {
            if i == 8 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
}

impl Engine {
    pub fn new(
        s: Settings,
        out: tokio::sync::mpsc::UnboundedSender<Outgoing>,
        metrics: Metrics,
    ) -> Result<Engine, String> {
        let mut checkpoints = Checkpoints::load(&s.state_dir)?;
        let spool = if s.spool_bytes > 0 {
            Some(Spool::open(&s.state_dir.join("spool"), s.spool_bytes)?)
        } else {
            None
        };
        // The spool is the write-ahead log of its batches: a checkpoint a crash left
        // behind a spooled batch moves up to it (else the file would be read into
        // differently cut batches that overlap it).
        let mut dirty = false;
        for e in spool.iter().flat_map(Spool::entries) {
            if let Some(st) = checkpoints.files.get_mut(&e.head.file)
                && st.generation == e.head.generation
                && st.acked < e.head.end
            {
                st.acked = e.head.end;
                st.resume = e.head.resume;
                st.pending = st.pending.filter(|p| *p > e.head.end);
                dirty = true;
            }
        }
        let mut engine = Engine {
            s,
            checkpoints,
            dirty,
            save_failed: None,
            containers: HashMap::new(),
            by_id: HashMap::new(),
            next_id: 1,
            pods: PodMap::new(),
            completing: HashMap::new(),
            completed: Default::default(),
            out,
            spool,
            metrics,
        };
        // Containers with spooled batches are sent from even if their files are gone.
        let spooled: Vec<Header> = engine
            .spool
            .iter()
            .flat_map(Spool::entries)
            .map(|e| e.head.clone())
            .collect();
        for h in spooled {
            engine.container(&h.key, &h.pod_uid, h.container.clone());
        }
        Ok(engine)
    }

    /// Runs until `Event::Stop`; saves checkpoints on the way out.
    pub fn run(mut self, events: Receiver<Event>) -> Result<(), String> {
        let mut last_scan = Instant::now() - self.s.rescan;
        loop {
            if last_scan.elapsed() >= self.s.rescan {
                self.scan();
                last_scan = Instant::now();
            }
            self.pass();
            self.flush_checkpoints();
            let timeout = if self
                .containers
                .values()
                .any(|c| !c.at_eof && c.queued_bytes < self.s.batch_bytes && !c.stalled)
            {
                Duration::ZERO
            } else {
                // Wake when the oldest queued line's batch is due (batch_delay), not at
                // the next poll tick: that is the latency of a quiet pod's lines.
                let now = Instant::now();
                self.containers
                    .values()
                    .filter_map(|c| c.first_queued)
                    .map(|f| (f + self.s.batch_delay).saturating_duration_since(now))
                    .fold(self.s.poll, Duration::min)
            };
            let mut next = match events.recv_timeout(timeout) {
                Ok(e) => Some(e),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return self.stop(),
            };
            // Drain everything that is already waiting.
            while let Some(e) = next {
                match e {
                    Event::Stop => return self.stop(),
                    Event::Fs { created } => {
                        if created {
                            last_scan = Instant::now() - self.s.rescan;
                        }
                    }
                    Event::Forwarder(r) => self.report(r),
                    Event::Pods(p) => self.pods = p,
                }
                next = events.try_recv().ok();
            }
        }
    }

    fn stop(mut self) -> Result<(), String> {
        self.dirty = true;
        self.flush_checkpoints();
        Ok(())
    }

    fn flush_checkpoints(&mut self) {
        if !self.dirty {
            return;
        }
        for c in self.containers.values() {
            for t in &c.tails {
                self.checkpoints.files.insert(t.id(), t.state.clone());
            }
        }
        if self
            .save_failed
            .as_ref()
            .is_some_and(|(retry_at, _)| Instant::now() < *retry_at)
        {
            return;
        }
        match self.checkpoints.save() {
            Ok(()) => {
                self.dirty = false;
                self.save_failed = None;
            }
            Err(e) => {
                let e = e.to_string();
                if self.save_failed.as_ref().is_none_or(|(_, last)| *last != e) {
                    tracing::error!(error = %e, "writing checkpoints failed; retrying every second");
                }
                self.save_failed = Some((Instant::now() + Duration::from_secs(1), e));
            }
        }
    }

    /// A container entry for `key` (created on first sight).
    fn container(&mut self, key: &Path, pod_uid: &str, name: String) -> &mut Container {
        self.containers.entry(key.to_owned()).or_insert_with(|| {
            let id = self.next_id;
            self.next_id += 1;
            self.by_id.insert(id, key.to_owned());
            Container {
                id,
                pod_uid: pod_uid.to_owned(),
                name,
                tails: VecDeque::new(),
                files: BTreeMap::new(),
                queued: VecDeque::new(),
                queued_bytes: 0,
                first_queued: None,
                in_flight: None,
                redactors: [
                    StreamRedactor::new(self.s.redactor.clone()),
                    StreamRedactor::new(self.s.redactor.clone()),
                ],
                quiet_since: None,
                at_eof: false,
                spool_next: false,
                stalled: false,
                read_error: None,
                pod: None,
                closed: false,
                unselected: false,
                parked: None,
                last_read: Instant::now(),
            }
        })
    }

    /// Sidecar mode: each given file is a container of its own, keyed by its path.
    fn scan_sidecar(&mut self, sc: &Sidecar) {
        for path in &sc.files {
            let usable = std::fs::metadata(path).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.is_file() || m.file_type().is_fifo()
            });
            if !usable {
                continue; // not created yet (or between a rotation's rename and create)
            }
            let name = path
                .file_stem()
                .map_or_else(|| "log".to_owned(), |s| s.to_string_lossy().into_owned());
            self.container(path, &sc.pod_uid, name)
                .files
                .insert(0, path.clone());
        }
    }

    /// Finds container log files under the log root (or the sidecar's files).
    fn scan(&mut self) {
        if let Some(sc) = self.s.sidecar.clone() {
            self.scan_sidecar(&sc);
        } else {
            self.scan_kubelet();
        }
        self.forget_gone();
    }

    fn scan_kubelet(&mut self) {
        let Ok(pods) = std::fs::read_dir(&self.s.log_root) else {
            return;
        };
        for pod in pods.flatten() {
            let pod_name = pod.file_name().to_string_lossy().into_owned();
            let Some((_, _, uid)) = parse_pod_dir(&pod_name) else {
                continue;
            };
            let Ok(containers) = std::fs::read_dir(pod.path()) else {
                continue;
            };
            for c in containers.flatten() {
                let dir = c.path();
                let Ok(files) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for f in files.flatten() {
                    let name = f.file_name().to_string_lossy().into_owned();
                    let Some(n) = restart_number(&name) else {
                        continue;
                    };
                    let name = c.file_name().to_string_lossy().into_owned();
                    self.container(&dir, uid, name).files.insert(n, f.path());
                }
            }
        }
    }

    /// Drops what belongs to files and containers that are gone; opens new files.
    fn forget_gone(&mut self) {
        // Checkpoints of files whose container directory is gone.
        let before = self.checkpoints.files.len();
        self.checkpoints
            .files
            .retain(|_, s| s.path.parent().is_some_and(Path::exists));
        self.dirty |= self.checkpoints.files.len() != before;
        // Containers whose pod directory is gone and whose files are all let go.
        let gone: Vec<PathBuf> = self
            .containers
            .iter()
            .filter(|(d, c)| {
                c.tails.is_empty()
                    && !d.exists()
                    && !self.spool.as_ref().is_some_and(|s| s.holds(d))
            })
            .map(|(d, _)| d.clone())
            .collect();
        for d in gone {
            if let Some(c) = self.containers.remove(&d) {
                self.by_id.remove(&c.id);
                if c.parked.is_some() {
                    self.metrics.files_parked.dec();
                }
                if !c.closed {
                    self.metrics.containers_pruned.inc();
                }
            }
        }
        // Pods nobody follows any more: their completion marks go too (memory follows
        // the live pods, not history).
        let live: std::collections::HashSet<&str> = self
            .containers
            .values()
            .map(|c| c.pod_uid.as_str())
            .chain(self.pods.keys().map(String::as_str))
            .collect();
        self.completed.retain(|u| live.contains(u.as_str()));
        self.completing.retain(|u, _| live.contains(u.as_str()));
        self.metrics.containers.set(self.containers.len() as i64);
        self.metrics.files_deleted_open.set(
            self.containers
                .values()
                .flat_map(|c| &c.tails)
                .filter(|t| t.deleted())
                .count() as i64,
        );
        let ids: Vec<PathBuf> = self.containers.keys().cloned().collect();
        for dir in ids {
            self.open_new_files(&dir);
        }
        self.metrics
            .files_watched
            .set(self.containers.values().map(|c| c.tails.len() as i64).sum());
    }

    /// Opens files of `dir` that no tail follows yet: rotated remainders named in the
    /// checkpoints first, then each `<n>.log` in restart order.
    fn open_new_files(&mut self, dir: &Path) {
        let Some(c) = self.containers.get_mut(dir) else {
            return;
        };
        if c.closed || c.unselected || c.parked.is_some() {
            return;
        }
        let followed: Vec<FileId> = c.tails.iter().map(FileTail::id).collect();
        let mut opened = Vec::new();
        if c.tails.is_empty() && self.s.sidecar.is_some() {
            // A file renamed away (rotated) before it was read to its end, while we were
            // stopped: find its inode in the directory and finish it first.
            let current = c.files.values().next().and_then(|p| file_id(p).ok());
            let unfinished: Vec<crate::checkpoint::FileState> = self
                .checkpoints
                .files
                .values()
                .filter(|s| s.path == dir && !s.done && Some(s.id) != current)
                .cloned()
                .collect();
            let siblings: Vec<PathBuf> = dir
                .parent()
                .and_then(|d| std::fs::read_dir(d).ok())
                .map(|it| it.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            for saved in unfinished {
                let Some(p) = siblings.iter().find(|p| file_id(p).ok() == Some(saved.id)) else {
                    continue;
                };
                if let Ok(mut t) = FileTail::open(p, Some(&saved), self.s.max_line) {
                    t.raw = true;
                    t.state.path = dir.to_owned(); // still this container's file
                    opened.push(t);
                }
            }
        } else if self.s.sidecar.is_none() {
            // Rotated files not read to their end and not followed (we stopped, or were
            // down when kubelet rotated, or kubelet rotated twice between two looks, so
            // a file was renamed away before it was ever opened): finish them first,
            // oldest first.
            if let Ok(entries) = std::fs::read_dir(dir) {
                let mut rotated: Vec<(PathBuf, FileId)> = entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        is_kubelet_rotated(&p.file_name().unwrap_or_default().to_string_lossy())
                    })
                    .filter_map(|p| Some((p.clone(), file_id(&p).ok()?)))
                    .filter(|(p, id)| {
                        !followed.contains(id)
                            && !self
                                .checkpoints
                                .files
                                .get(id)
                                .is_some_and(|s| s.done && is_same_file(p, s))
                    })
                    .collect();
                rotated.sort();
                for (p, id) in rotated {
                    let saved = self.checkpoints.files.get(&id).cloned();
                    if let Ok(mut t) = FileTail::open(&p, saved.as_ref(), self.s.max_line) {
                        t.raw = self.s.sidecar.is_some();
                        opened.push(t);
                    }
                }
            }
        }
        let rotated = opened.len();
        let mut live = Vec::new();
        for path in c.files.values() {
            let Ok(id) = file_id(path) else { continue };
            live.push(id);
            if followed.contains(&id) || opened.iter().any(|t: &FileTail| t.id() == id) {
                continue;
            }
            let saved = self.checkpoints.files.get(&id).cloned();
            match FileTail::open(path, saved.as_ref(), self.s.max_line) {
                Ok(mut t) => {
                    t.raw = self.s.sidecar.is_some();
                    if !c.tails.is_empty() || !opened.is_empty() {
                        self.metrics.rotations.inc();
                    }
                    opened.push(t);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "opening a log file failed")
                }
            }
        }
        if !opened.is_empty() {
            c.at_eof = false;
        }
        // Rotated files go before the live files already followed (older than them),
        // never before the file being read.
        let at = c
            .tails
            .iter()
            .skip(1)
            .position(|t| live.contains(&t.id()))
            .map_or(c.tails.len(), |i| i + 1);
        let newer: Vec<FileTail> = c.tails.drain(at..).collect();
        let mut opened = opened.into_iter();
        c.tails.extend(opened.by_ref().take(rotated));
        c.tails.extend(newer);
        c.tails.extend(opened);
    }

    /// One round over every container: read, batch, send, retire finished files.
    fn pass(&mut self) {
        let dirs: Vec<PathBuf> = self.containers.keys().cloned().collect();
        let mut lag = 0u64;
        let mut backlog = Vec::new();
        for dir in dirs {
            self.send_spooled(&dir);
            let pod = {
                let c = self.containers.get_mut(&dir).expect("present");
                if let Some(p) = self.pods.get(&c.pod_uid) {
                    c.pod = Some(p.clone());
                }
                if c.closed {
                    continue;
                }
                c.pod.clone()
            };
            let Some(pod) = pod else {
                // Metadata not known yet: the lines wait in the file, not dropped. A
                // directory already removed (its pod never showed up) is let go of.
                let c = self.containers.get_mut(&dir).expect("present");
                c.at_eof = true;
                if !dir.exists() {
                    c.tails.clear();
                }
                continue;
            };
            let Some(deployment) = pod.deployment.clone() else {
                // Not selected (most pods of a node): nothing of it is read and no file
                // of it is kept open.
                let c = self.containers.get_mut(&dir).expect("present");
                c.at_eof = true;
                c.tails.clear();
                c.unselected = true;
                continue;
            };
            let c = self.containers.get_mut(&dir).expect("present");
            if c.unselected {
                // Selected since (its labels changed): its files are opened now.
                c.unselected = false;
                self.open_new_files(&dir);
            }
            let c = self.containers.get_mut(&dir).expect("present");
            if let Some(p) = &c.parked {
                use std::os::unix::fs::MetadataExt;
                // Closed while idle: reopened (at its checkpoint, rotated remainder
                // first) once its file changes, or its pod ends (to finish and close it).
                let now = std::fs::metadata(&p.path).ok();
                let same = now.as_ref().is_some_and(|m| {
                    m.dev() == p.id.dev && m.ino() == p.id.ino && m.len() == p.len
                });
                if same && pod.finished.is_none() && dir.exists() {
                    continue;
                }
                c.parked = None;
                self.metrics.files_parked.dec();
                self.open_new_files(&dir);
            }
            self.read_container(&dir);
            self.maybe_send(&dir, &pod, &deployment);
            self.retire(&dir);
            self.close_if_done(&dir);
            if let Some(c) = self.containers.get(&dir) {
                let behind = c.tails.iter().map(FileTail::lag).sum::<u64>();
                lag += behind;
                if behind > 0 {
                    backlog.push((
                        pod.namespace.clone(),
                        pod.name.clone(),
                        c.name.clone(),
                        behind,
                    ));
                }
            }
        }
        self.metrics.lag_bytes.set(lag as i64);
        self.metrics.set_backlog(backlog);
        self.park_least_recent();
        self.metrics
            .files_watched
            .set(self.containers.values().map(|c| c.tails.len() as i64).sum());
        if let Some(sp) = &self.spool {
            self.metrics.spool_bytes.set(sp.bytes() as i64);
            self.metrics.spool_batches.set(sp.batches() as i64);
        }
        self.metrics
            .stalled
            .set(self.containers.values().filter(|c| c.stalled).count() as i64);
        self.check_completions();
    }

    /// Sends a container's oldest spooled batch when nothing of it is in flight.
    fn send_spooled(&mut self, dir: &Path) {
        let (Some(spool), Some(c)) = (self.spool.as_mut(), self.containers.get_mut(dir)) else {
            return;
        };
        if c.in_flight.is_some() {
            return;
        }
        let Some(e) = spool.front(dir).cloned() else {
            return;
        };
        match spool.load(&e) {
            Ok(req) => {
                c.in_flight = Some(InFlight {
                    batch_id: req.batch_id,
                    resume: e.head.resume,
                    file: e.head.file,
                    generation: e.head.generation,
                    spooled: Some(e.seq),
                    since: Instant::now(),
                });
                let _ = self.out.send(Outgoing::Push(Batch {
                    container: c.id,
                    gateway: e.head.gateway.clone(),
                    req,
                }));
            }
            Err(err) => {
                tracing::error!(seq = e.seq, error = %err, "a spooled batch cannot be read back; it is skipped and kept on disk");
                spool.set_aside(dir, e.seq);
            }
        }
    }

    fn read_container(&mut self, dir: &Path) {
        let s = &self.s;
        let c = self.containers.get_mut(dir).expect("present");
        // A batch being rebuilt after a crash may be larger than today's cap: read on
        // until its last line is queued.
        let rebuilding = c
            .tails
            .front()
            .and_then(|t| t.state.pending.filter(|p| *p > t.state.acked))
            .is_some_and(|p| !c.queued.iter().any(|e| e.end >= p));
        if c.queued_bytes >= s.batch_bytes && !rebuilding {
            // Backpressure: a bounded queue (and one batch in flight) per container.
            // Not read, so not known to be at the end: the file may have grown since
            // the last read, and a rotated file is let go only after a read finds its end.
            c.at_eof = false;
            return;
        }
        let Some(t) = c.tails.front_mut() else {
            c.at_eof = true;
            return;
        };
        let r = match t.read(s.read_budget) {
            Ok(r) => {
                c.read_error = None;
                r
            }
            Err(e) => {
                // Said once per distinct error, not on every pass.
                let msg = e.to_string();
                if c.read_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(path = %t.path.display(), error = %msg, "reading a log file failed; retrying");
                    c.read_error = Some(msg);
                }
                c.at_eof = true;
                return;
            }
        };
        if r.truncated {
            // What was read of the generation before and not sent is only in the copy
            // now (copytruncate's own race).
            self.metrics.truncations.inc();
            c.queued.clear();
            c.queued_bytes = 0;
            c.first_queued = None;
        }
        let r_truncated = r.truncated;
        if r.bytes > 0 {
            c.last_read = Instant::now();
        }
        self.metrics.bytes_read.inc_by(r.bytes);
        self.metrics.lines_read.inc_by(r.physical);
        self.metrics.parse_errors.inc_by(r.parse_errors);
        c.at_eof = r.eof;
        if r.eof && r.bytes == 0 {
            c.quiet_since.get_or_insert_with(Instant::now);
        } else if r.eof {
            // Lines just arrived: quiet from now on, not since before them (a file
            // written and rotated at once was let go with its last lines unread).
            c.quiet_since = Some(Instant::now());
        } else {
            c.quiet_since = None;
        }
        for mut e in r.lines {
            for rec in &mut e.records {
                let mut state = logstream_model::RedactionState::default();
                let red = match c.redactors[rec.stream.code() as usize]
                    .redact(&rec.message, &mut state)
                {
                    std::borrow::Cow::Borrowed(_) => None,
                    std::borrow::Cow::Owned(s) => Some(s),
                };
                if !state.is_empty() {
                    self.metrics
                        .redactions
                        .inc_by(state.0.values().map(|v| u64::from(*v)).sum());
                }
                if let Some(red) = red {
                    rec.message = red;
                }
                c.queued_bytes += rec.message.len() + 64;
            }
            c.first_queued.get_or_insert_with(Instant::now);
            c.queued.push_back(e);
        }
        if r_truncated {
            // The new generation is durable before any of its batches is sent or
            // spooled: a restart resumes in it, with the fingerprint of its start.
            self.dirty = true;
            self.flush_checkpoints();
        }
    }

    fn maybe_send(&mut self, dir: &Path, pod: &PodInfo, deployment: &str) {
        let s = &self.s;
        let c = self.containers.get_mut(dir).expect("present");
        // The gateway has not acknowledged a batch for too long: take it back (it is
        // rebuilt exactly from the file, as after a crash: the intent is kept) into the
        // spool. Should the first copy arrive after all, the gateway stores it once.
        if self.spool.is_some()
            && c.in_flight
                .as_ref()
                .is_some_and(|f| f.spooled.is_none() && f.since.elapsed() >= s.spool_after)
        {
            c.in_flight = None;
            reset_reading(c, &s.redactor);
            c.spool_next = true;
            return;
        }
        // A pipe cannot be read again: its batches always go through the spool, so what
        // was read survives a broken stream or a restart.
        let fifo = c.tails.front().is_some_and(|t| t.fifo);
        let to_spool = self
            .spool
            .as_ref()
            .is_some_and(|sp| c.spool_next || sp.holds(dir) || fifo);
        if (c.in_flight.is_some() && !to_spool) || c.queued.is_empty() {
            return;
        }
        if to_spool {
            let estimate = c.queued_bytes.min(s.batch_bytes) as u64 + 4096;
            if !self.spool.as_ref().is_some_and(|sp| sp.has_room(estimate)) {
                if !c.stalled {
                    c.stalled = true;
                    self.metrics.spool_full.inc();
                }
                return; // Backpressure: the queue stays full, nothing more is read.
            }
        }
        // Not held back (any more): a container that went on directly once the spool
        // drained stayed counted as held back, and its next full spool went uncounted.
        c.stalled = false;
        let Some(t) = c.tails.front_mut() else { return };
        // After a crash, the batch that was in flight is rebuilt exactly.
        let replay = t.state.pending.filter(|p| *p > t.state.acked);
        if let Some(p) = replay
            && !c.queued.iter().any(|e| e.end >= p)
        {
            return; // Not read up to the end of the batch being rebuilt yet.
        }
        let due = c.queued_bytes >= s.batch_bytes
            || c.first_queued.is_some_and(|f| f.elapsed() >= s.batch_delay)
            || replay.is_some();
        if !due {
            return;
        }
        let step = pod.step.clone().unwrap_or_else(|| c.name.clone());
        let mut lines = Vec::new();
        let mut last: Option<(u64, u64)> = None;
        let mut bytes = 0;
        while let Some(e) = c.queued.front() {
            if let Some(p) = replay {
                if e.end > p {
                    break;
                }
            } else if bytes >= s.batch_bytes && last.is_some() {
                break;
            }
            let e = c.queued.pop_front().expect("front");
            for r in e.records {
                bytes += r.message.len() + 64;
                lines.push(pb::Line {
                    ts_unix_nanos: r.ts,
                    step: step.clone(),
                    stream: match r.stream {
                        logstream_model::Stream::Stdout => pb::Stream::Stdout as i32,
                        logstream_model::Stream::Stderr => pb::Stream::Stderr as i32,
                    },
                    level: pb::Level::Unspecified as i32,
                    message: r.message,
                    // The pod is named by deployment + step; per-line metadata would cost
                    // an allocation-heavy map per line on the wire and in the store.
                    metadata: HashMap::new(),
                });
            }
            last = Some((e.end, e.resume));
            if replay == Some(e.end) {
                break;
            }
        }
        c.queued_bytes = c
            .queued
            .iter()
            .flat_map(|e| &e.records)
            .map(|r| r.message.len() + 64)
            .sum();
        c.first_queued = (!c.queued.is_empty()).then(Instant::now);
        let Some((end, resume)) = last else { return };
        let source = format!(
            "{}/{}/{}/{}.{}",
            s.source, c.pod_uid, c.name, t.state.id.ino, t.state.generation
        );
        let req = pb::PushRequest {
            deployment: deployment.to_owned(),
            source,
            batch_id: end,
            lines,
        };
        if to_spool {
            let head = Header {
                key: dir.to_owned(),
                pod_uid: c.pod_uid.clone(),
                container: c.name.clone(),
                gateway: pod.gateway.clone(),
                file: t.state.id,
                generation: t.state.generation,
                end,
                resume,
            };
            let spool = self.spool.as_mut().expect("spooling");
            match spool.push(head, &req) {
                Ok(_) => {
                    // Durable in the spool: the file's checkpoint moves past the batch.
                    t.state.acked = end;
                    t.state.resume = resume;
                    t.state.pending = None;
                    c.spool_next = false;
                    c.stalled = false;
                    self.metrics.spooled.inc_by(req.lines.len() as u64);
                }
                Err(e) => {
                    tracing::error!(error = %e, "writing to the spool failed; the batch is read again from its file");
                    reset_reading(c, &s.redactor);
                    c.spool_next = true;
                    return;
                }
            }
            self.dirty = true;
            self.flush_checkpoints();
            return;
        }
        t.state.pending = Some(end);
        self.dirty = true;
        c.in_flight = Some(InFlight {
            batch_id: end,
            resume,
            file: t.state.id,
            generation: t.state.generation,
            spooled: None,
            since: Instant::now(),
        });
        let batch = Batch {
            container: c.id,
            gateway: pod.gateway.clone(),
            req,
        };
        // Write the intent before the batch can reach the gateway.
        self.flush_checkpoints();
        let _ = self.out.send(Outgoing::Push(batch));
    }

    fn report(&mut self, r: Report) {
        match r {
            Report::Acked {
                container,
                batch_id,
                lines,
                bytes,
            } => {
                self.metrics.lines_forwarded.inc_by(lines);
                self.metrics.bytes_forwarded.inc_by(bytes);
                self.acked(container, batch_id);
            }
            Report::Rejected {
                container,
                batch_id,
                lines,
                code,
                ..
            } => {
                // Final: the checkpoint (or the spool) moves past the batch like an ack,
                // so the container's next lines go on.
                self.metrics.lines_rejected.inc_by(lines);
                self.metrics.batch_rejected(&code);
                self.acked(container, batch_id);
            }
            Report::Completed { pod_uid } => self.pod_done(&pod_uid),
            Report::Resend {
                container,
                batch_id,
            } => {
                let Some(dir) = self.by_id.get(&container) else {
                    return;
                };
                let Some(c) = self.containers.get_mut(dir) else {
                    return;
                };
                let Some(f) = c.in_flight.take_if(|f| f.batch_id == batch_id) else {
                    return;
                };
                // A spooled batch is simply sent again from the spool.
                if f.spooled.is_none() {
                    reset_reading(c, &self.s.redactor);
                }
            }
            Report::Retry => self.metrics.retries.inc(),
        }
    }

    fn acked(&mut self, container: u64, batch_id: u64) {
        let Some(dir) = self.by_id.get(&container) else {
            return;
        };
        let Some(c) = self.containers.get_mut(dir) else {
            return;
        };
        let Some(f) = c.in_flight.take_if(|f| f.batch_id == batch_id) else {
            return;
        };
        if let Some(seq) = f.spooled {
            if let Some(sp) = self.spool.as_mut() {
                sp.remove(dir, seq);
            }
            return;
        }
        if let Some(t) = c
            .tails
            .front_mut()
            .filter(|t| t.id() == f.file && t.state.generation == f.generation)
        {
            t.state.acked = f.batch_id;
            t.state.resume = f.resume;
            t.state.pending = None;
        }
        self.dirty = true;
    }

    /// Lets go of a file that was replaced (rotated, or a newer restart exists) once it
    /// has been quiet at its end for `rotate_wait` and everything read was acknowledged.
    fn retire(&mut self, dir: &Path) {
        let rotate_wait = self.s.rotate_wait;
        let c = self.containers.get_mut(dir).expect("present");
        if c.tails.len() < 2
            && c.tails
                .front()
                .is_none_or(|t| file_id(&t.path).ok() == Some(t.id()))
        {
            return;
        }
        // A spooled batch in flight no longer needs its file. A file whose directory was
        // removed gets no more writes: it goes as soon as it is read to its end.
        let gone = !dir.exists();
        let idle = c.in_flight.as_ref().is_none_or(|f| f.spooled.is_some())
            && c.queued.is_empty()
            && c.at_eof
            && (gone || c.quiet_since.is_some_and(|q| q.elapsed() >= rotate_wait));
        // At its end now, not only at the last read: written to between that read and
        // the rename, it is read again first.
        if !idle {
            return;
        }
        if c.tails.front().is_some_and(|t| t.unread() > 0) {
            c.at_eof = false;
            return;
        }
        if let Some(mut t) = c.tails.pop_front() {
            t.state.done = true;
            self.checkpoints.files.insert(t.id(), t.state.clone());
            self.dirty = true;
            c.quiet_since = None;
            c.at_eof = false;
            c.redactors = [
                StreamRedactor::new(self.s.redactor.clone()),
                StreamRedactor::new(self.s.redactor.clone()),
            ];
            let d = dir.to_owned();
            self.open_new_files(&d);
        }
    }

    /// Keeps open files within `max_open_files`: closes the files of the containers idle
    /// longest whose every read line is acknowledged (their checkpoint is where they
    /// resume: same inode and fingerprint, or a rotated remainder found by its inode).
    fn park_least_recent(&mut self) {
        let open: usize = self.containers.values().map(|c| c.tails.len()).sum();
        if open <= self.s.max_open_files {
            return;
        }
        let mut idle: Vec<(Instant, PathBuf)> = self
            .containers
            .iter()
            .filter(|(_, c)| {
                let Some(t) = c.tails.front() else {
                    return false;
                };
                c.tails.len() == 1
                    && !t.fifo
                    && c.parked.is_none()
                    && !c.closed
                    && c.in_flight.is_none()
                    && c.queued.is_empty()
                    && c.at_eof
                    && t.state.pending.is_none()
                    && t.state.resume == t.offset()
                    && c.files.values().next_back() == Some(&t.path)
            })
            .map(|(d, c)| (c.last_read, d.clone()))
            .collect();
        idle.sort();
        for (_, dir) in idle.into_iter().take(open - self.s.max_open_files) {
            let c = self.containers.get_mut(&dir).expect("present");
            let t = c.tails.pop_front().expect("one tail");
            let len = match std::fs::metadata(&t.path) {
                Ok(m) if file_id(&t.path).ok() == Some(t.id()) => m.len(),
                // Replaced (rotated) meanwhile: retire handles it.
                _ => u64::MAX,
            };
            if len != t.offset() {
                // Written since the read (or rotated): not idle after all.
                c.tails.push_front(t);
                continue;
            }
            self.checkpoints.files.insert(t.id(), t.state.clone());
            c.parked = Some(Parked {
                id: t.id(),
                len,
                path: t.path.clone(),
            });
            self.metrics.files_parked.inc();
            self.dirty = true;
        }
    }

    /// Closes the files of a container whose pod ended, once everything of it is read,
    /// sent and acknowledged and its completion too, after `close_grace`: its
    /// descriptors (and the disk space of files kubelet deletes) are let go, and no file
    /// of it is opened again. The checkpoint keeps where it ended.
    fn close_if_done(&mut self, dir: &Path) {
        let grace = self.s.close_grace;
        let spooled = self.spool.as_ref().is_some_and(|s| s.holds(dir));
        let Some(c) = self.containers.get_mut(dir) else {
            return;
        };
        let ended = c.pod.as_ref().is_some_and(|p| p.finished.is_some())
            && self.completed.contains(&c.pod_uid);
        let drained = c.in_flight.is_none()
            && c.queued.is_empty()
            && c.at_eof
            && !spooled
            && c.quiet_since.is_some_and(|q| q.elapsed() >= grace);
        if c.closed || !ended || !drained {
            return;
        }
        for mut t in c.tails.drain(..) {
            t.state.done = true;
            t.state.finished = true;
            self.checkpoints.files.insert(t.id(), t.state.clone());
        }
        c.closed = true;
        c.queued = VecDeque::new();
        c.redactors = [
            StreamRedactor::new(self.s.redactor.clone()),
            StreamRedactor::new(self.s.redactor.clone()),
        ];
        self.dirty = true;
        self.metrics.containers_pruned.inc();
    }

    /// A finished pod is done with: everything of it read and acknowledged, and its
    /// deployment's completion acknowledged when it was to complete it.
    fn pod_done(&mut self, pod_uid: &str) {
        self.completing.remove(pod_uid);
        self.completed.insert(pod_uid.to_owned());
        for c in self
            .containers
            .values_mut()
            .filter(|c| c.pod_uid == pod_uid)
        {
            for t in &mut c.tails {
                t.state.finished = true;
            }
        }
        self.dirty = true;
    }

    /// A finished pod whose files are all read and acknowledged completes its deployment
    /// (also after the pod was deleted from the API: its last known state counts), unless
    /// its [`CompletePolicy`](crate::pods::CompletePolicy) leaves the deployment open for
    /// a later stage.
    fn check_completions(&mut self) {
        let mut done: Vec<(String, String, String, i32, Option<String>)> = Vec::new();
        let mut open: Vec<String> = Vec::new();
        let mut pods: Vec<(&String, &PodInfo)> = self.pods.iter().collect();
        pods.extend(
            self.containers
                .values()
                .filter_map(|c| Some((&c.pod_uid, c.pod.as_ref()?)))
                .filter(|(uid, _)| !self.pods.contains_key(*uid)),
        );
        pods.sort_by_key(|(uid, _)| *uid);
        pods.dedup_by_key(|(uid, _)| *uid);
        for (uid, pod) in pods {
            let (Some(dep), Some((status, code))) = (&pod.deployment, &pod.finished) else {
                continue;
            };
            if self.completed.contains(uid) || self.completing.contains_key(uid) {
                continue;
            }
            let spool = self.spool.as_ref();
            let mut containers = self
                .containers
                .iter()
                .filter(|(_, c)| &c.pod_uid == uid)
                .map(|(d, c)| (c, spool.is_some_and(|s| s.holds(d))))
                .peekable();
            if containers.peek().is_none() {
                continue;
            }
            let mut all_done = true;
            let mut already = true;
            for (c, spooled) in containers {
                let quiet = c
                    .quiet_since
                    .is_some_and(|q| q.elapsed() >= self.s.rotate_wait);
                if !(c.at_eof
                    && quiet
                    && c.queued.is_empty()
                    && c.in_flight.is_none()
                    && !spooled
                    && c.tails.len() <= 1
                    && c.tails.front().is_none_or(|t| t.unread() == 0))
                {
                    all_done = false;
                }
                already &= !c.tails.is_empty() && c.tails.iter().all(|t| t.state.finished);
            }
            if already {
                self.completed.insert(uid.clone());
                continue;
            }
            if all_done && !pod.complete.completes(status) {
                open.push(uid.clone());
            } else if all_done {
                done.push((
                    uid.clone(),
                    dep.clone(),
                    status.clone(),
                    *code,
                    pod.gateway.clone(),
                ));
            }
        }
        for uid in open {
            self.pod_done(&uid);
        }
        // A completion ends the deployment for every pod: it waits while another pod of
        // the same deployment still has lines to send (an earlier stage held back by a
        // full spool, or a restart's backlog), or they would be refused after it.
        let spool = self.spool.as_ref();
        done.retain(|(uid, deployment, _, _, gateway)| {
            self.containers.iter().all(|(d, c)| {
                let same = &c.pod_uid != uid
                    && c.pod.as_ref().is_some_and(|p| {
                        p.deployment.as_ref() == Some(deployment) && &p.gateway == gateway
                    });
                !same
                    || c.closed
                    || self.completed.contains(&c.pod_uid)
                    || (c.at_eof
                        && c.queued.is_empty()
                        && c.in_flight.is_none()
                        && c.tails.len() <= 1
                        && !spool.is_some_and(|s| s.holds(d)))
            })
        });
        for (uid, deployment, status, exit_code, gateway) in done {
            self.completing.insert(uid.clone(), Instant::now());
            let _ = self.out.send(Outgoing::Complete {
                pod_uid: uid,
                deployment,
                status,
                exit_code,
                gateway,
            });
        }
    }
}

/// Forgets what was read past the checkpoint: the queue, the joins, the redactors'
/// state; reading starts again at the resume point (and rebuilds a pending batch).
fn reset_reading(c: &mut Container, redactor: &Arc<Redactor>) {
    if let Some(t) = c.tails.front_mut() {
        t.rewind();
    }
    c.queued.clear();
    c.queued_bytes = 0;
    c.first_queued = None;
    c.at_eof = false;
    c.redactors = [
        StreamRedactor::new(redactor.clone()),
        StreamRedactor::new(redactor.clone()),
    ];
}

#[cfg(test)]
mod exactly_once;

/// Settings of the engine's unit tests on a log root under `root` holding the one pod's
/// container directory (returned, created), batches sent as soon as read.
#[cfg(test)]
fn one_pod_settings(root: &Path) -> (PathBuf, Settings) {
    let dir = root.join("pods/ci_pod-1_uid-1/main");
    std::fs::create_dir_all(&dir).unwrap();
    let mut s = Settings::new(root.join("pods"), root.join("state"), "n".into());
    s.batch_delay = Duration::ZERO;
    (dir, s)
}

/// The one pod of the engine's unit tests: `ci/pod-1` (`uid-1`) of deployment `dep`.
#[cfg(test)]
fn one_pod() -> PodInfo {
    PodInfo {
        namespace: "ci".into(),
        name: "pod-1".into(),
        uid: "uid-1".into(),
        deployment: Some("dep".into()),
        step: None,
        finished: None,
        gateway: None,
        complete: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// An engine on a temp log root holding one pod (`uid-1`, deployment `dep`) with one
    /// container, driven by hand (scan, pass, report) instead of `run`.
    struct Rig {
        _tmp: tempfile::TempDir,
        log: PathBuf,
        engine: Engine,
        out: tokio::sync::mpsc::UnboundedReceiver<Outgoing>,
        written: u64,
    }

    impl Rig {
        fn new(spool: bool) -> Rig {
            let tmp = tempfile::tempdir().unwrap();
            let (dir, mut s) = one_pod_settings(tmp.path());
            s.batch_bytes = 1 << 10; // a few lines per batch
            if spool {
                // Every batch not acknowledged at once goes through the spool.
                s.spool_after = Duration::ZERO;
            } else {
                s.spool_bytes = 0;
            }
            let (tx, out) = tokio::sync::mpsc::unbounded_channel();
            let mut engine = Engine::new(s, tx, Metrics::default()).unwrap();
            engine.pods.insert("uid-1".into(), one_pod());
            Rig {
                log: dir.join("0.log"),
                _tmp: tmp,
                engine,
                out,
                written: 0,
            }
        }

        fn write(&mut self, n: u64) {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .unwrap();
            for _ in 0..n {
                let i = self.written;
                writeln!(
                    f,
                    "2026-01-01T00:00:00.{i:09}Z stdout F line {i} {}",
                    "x".repeat(100)
                )
                .unwrap();
                self.written += 1;
            }
        }

        fn container(&self) -> &Container {
            self.engine.containers.values().next().expect("a container")
        }

        /// Passes until a batch goes out that `want` accepts (earlier ones are dropped).
        fn next_batch(&mut self, want: impl Fn(&Container) -> bool) -> Batch {
            for _ in 0..200 {
                self.engine.scan();
                self.engine.pass();
                while let Ok(o) = self.out.try_recv() {
                    if let Outgoing::Push(b) = o
                        && want(self.container())
                    {
                        return b;
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            panic!("no batch went out");
        }

        fn reject(&mut self, b: &Batch) {
            self.engine.report(Report::Rejected {
                container: b.container,
                batch_id: b.req.batch_id,
                lines: b.req.lines.len() as u64,
                code: "deployment_completed".into(),
                reason: "the deployment has completed".into(),
            });
        }

        fn rejected(&self, code: &str) -> u64 {
            self.engine
                .metrics
                .batches_rejected
                .with_label_values(&[code])
                .get()
        }
    }

    fn line_no(l: &pb::Line) -> u64 {
        l.message.split(' ').nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn a_batch_refused_for_good_moves_the_checkpoint_past_it() {
        let mut rig = Rig::new(false);
        rig.write(40);
        let first = rig.next_batch(|_| true);
        assert!(rig.container().in_flight.is_some());
        rig.reject(&first);
        let c = rig.container();
        assert!(c.in_flight.is_none(), "nothing waits for the refused batch");
        let t = c.tails.front().unwrap();
        assert_eq!(
            t.state.acked, first.req.batch_id,
            "the checkpoint moved past it"
        );
        assert_eq!(t.state.pending, None);
        assert_eq!(rig.rejected("deployment_completed"), 1);
        assert_eq!(
            rig.engine.metrics.lines_rejected.get(),
            first.req.lines.len() as u64
        );
        // The next batch starts right after the refused one: nothing is sent twice.
        let next = rig.next_batch(|_| true);
        assert_eq!(
            line_no(&next.req.lines[0]),
            line_no(first.req.lines.last().unwrap()) + 1
        );
        assert!(next.req.batch_id > first.req.batch_id);
        // Saved to disk, so a restart resumes after it too.
        rig.engine.flush_checkpoints();
        let saved = Checkpoints::load(&rig.engine.s.state_dir).unwrap();
        assert_eq!(
            saved.files.values().next().unwrap().acked,
            first.req.batch_id
        );
    }

    #[test]
    fn a_spooled_batch_refused_for_good_leaves_the_spool() {
        let mut rig = Rig::new(true);
        rig.write(40);
        let spooled = rig.next_batch(|c| c.in_flight.as_ref().is_some_and(|f| f.spooled.is_some()));
        let seq = rig.container().in_flight.as_ref().unwrap().spooled.unwrap();
        let spool = rig.engine.spool.as_ref().unwrap();
        assert_eq!(spool.entries().next().map(|e| e.seq), Some(seq));
        rig.reject(&spooled);
        assert!(rig.container().in_flight.is_none());
        let spool = rig.engine.spool.as_ref().unwrap();
        assert!(
            spool.entries().all(|e| e.seq != seq),
            "the refused batch is out of the spool"
        );
        assert!(
            !rig.engine
                .s
                .state_dir
                .join(format!("spool/{seq:020}.batch"))
                .exists(),
            "and its file deleted"
        );
        assert_eq!(rig.rejected("deployment_completed"), 1);
        // The container goes on with the rest.
        let next = rig.next_batch(|c| c.in_flight.is_some());
        assert!(line_no(&next.req.lines[0]) > line_no(spooled.req.lines.last().unwrap()));
    }
}
