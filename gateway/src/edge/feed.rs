//! One followed deployment on an edge: a window of its recent commit groups, filled by
//! ONE upstream `Tail.Subscribe` to the store and read by every viewer of the
//! deployment on this edge.
//!
//! ```text
//! store ──Tail.Subscribe (one per deployment, all on one HTTP/2 connection)──> upstream task
//!   ──publish: Frame (JSON, SSE and WebSocket framing encoded once)──> window (≤ edge_window_bytes)
//!   ──wake──> viewers (each reads the frames after its own seq; no copy, no task of its own)
//! ```
//!
//! The window holds every line after `base`; a viewer behind it catches up from the
//! store's history API. The upstream resumes after the last seq it received when the
//! store restarts or the stream breaks (nothing lost, nothing twice), and ends when the
//! last viewer leaves.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Waker;
use std::time::Duration;

use logstream_model::Cursor;
use logstream_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use super::Edge;
use crate::hub::{Frame, WireLine};
use crate::store::{Completion, DeploymentId, Outcome};

/// Where the upstream subscription stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Not answered yet.
    Connecting,
    /// Subscribed (or resubscribing after a break: viewers wait, nothing is lost).
    Live,
    /// The store has no such deployment (retried every second while viewers wait).
    Missing,
    /// The store refused the edge (its key or scopes are wrong): viewers are closed.
    Refused(String),
    /// The deployment was deleted (an audited hotfix): the window was emptied and
    /// viewers are closed with `deployment_deleted`; a later subscription starts anew.
    Deleted,
}

/// The window and its readers.
pub struct Window {
    /// Commit groups in seq order, contiguous, all after `base`.
    pub frames: VecDeque<Arc<Frame>>,
    bytes: usize,
    /// Every line with a seq above this is in `frames` (None: no line received yet).
    pub base: Option<u64>,
    /// The deployment completed: no line after `end.last_seq` will come.
    pub end: Option<Completion>,
    /// Bumped on every change, so a viewer whose catch-up made no progress waits for one.
    pub version: u64,
    /// Hotfix redactions the store announced (numbered from 1, the last few kept):
    /// followers tell their viewers about the lines they were sent.
    pub redactions: VecDeque<(u64, crate::hub::SeqRanges)>,
    pub redaction_count: u64,
    /// Viewers waiting for the next change.
    wakers: Vec<Waker>,
}

impl Window {
    /// Seq of the last line received.
    pub fn last_seq(&self) -> Option<u64> {
        self.frames
            .back()
            .and_then(|f| f.lines.last())
            .map(|l| l.seq())
            .or(self.base)
    }

    /// Wakes `waker` at the next change (or heartbeat).
    pub fn wait(&mut self, waker: &Waker) {
        self.wakers.push(waker.clone());
    }
}

/// One deployment followed by this edge.
pub struct Feed {
    pub id: DeploymentId,
    pub window: Mutex<Window>,
    pub phase: watch::Sender<Phase>,
    /// Viewers holding this feed (changed under the edge's feed map lock when rising).
    viewers: AtomicUsize,
    /// Tells the upstream task the last viewer left.
    idle: Notify,
    /// This window's bytes: `edge_window_bytes`, or its share of
    /// `edge_windows_total_bytes` when many deployments are followed (set by the edge).
    limit: std::sync::atomic::AtomicUsize,
    /// When the viewers were last woken for new lines, and whether a wake is due.
    pace: Mutex<Pace>,
}

/// Wakes for new lines are paced by the number of viewers: after waking N viewers the
/// next wake waits N x [`WAKE_COST`] (at most [`MAX_COALESCE`]), so lines that come in
/// between go out together, in one write per viewer. A few viewers are woken at once;
/// 2,500 on one edge see lines in groups 25 ms apart, 5,000 and more 50 ms apart, so
/// the edge's writes per second stay bounded whatever the line rate (a write costs a
/// few microseconds, mostly the kernel's: on 2 cores 10,000 viewers x 100 lines/s one
/// write each is more than the machine has).
#[derive(Default)]
struct Pace {
    last: Option<std::time::Instant>,
    scheduled: bool,
}

/// What waking and serving one viewer costs, roughly (a poll and a write).
const WAKE_COST: Duration = Duration::from_micros(10);
/// The longest a line waits for others to go out with.
const MAX_COALESCE: Duration = Duration::from_millis(50);

impl Feed {
    pub fn new(id: DeploymentId, limit: usize) -> Feed {
        Feed {
            id,
            window: Mutex::new(Window {
                frames: VecDeque::new(),
                bytes: 0,
                base: None,
                end: None,
                version: 0,
                redactions: VecDeque::new(),
                redaction_count: 0,
                wakers: Vec::new(),
            }),
            phase: watch::channel(Phase::Connecting).0,
            viewers: AtomicUsize::new(0),
            idle: Notify::new(),
            limit: AtomicUsize::new(limit),
            pace: Mutex::new(Pace::default()),
        }
    }

    /// Sets the window's size (it shrinks at the next group).
    pub(super) fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    pub fn viewers(&self) -> usize {
        self.viewers.load(Ordering::Acquire)
    }

    /// Counts one more viewer (the edge's feed map lock is held).
    pub(super) fn join(&self) {
        self.viewers.fetch_add(1, Ordering::AcqRel);
    }

    /// A viewer left; the last one wakes the upstream task to end.
    pub fn leave(&self) {
        if self.viewers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_one();
        }
    }

    async fn until_idle(&self) {
        while self.viewers() > 0 {
            self.idle.notified().await;
        }
    }

    /// Wakes every waiting viewer (a heartbeat, shutdown, a phase change).
    pub fn wake_all(&self) {
        let wakers = std::mem::take(&mut self.window.lock().wakers);
        for w in wakers {
            w.wake();
        }
    }

    fn change(&self, f: impl FnOnce(&mut Window)) {
        let wakers = {
            let mut w = self.window.lock();
            f(&mut w);
            w.version += 1;
            std::mem::take(&mut w.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }

    /// Wakes the viewers for new lines, now or (see [`Pace`]) a little later.
    fn wake_paced(self: &Arc<Self>) {
        let gap = (WAKE_COST * self.viewers() as u32).min(MAX_COALESCE);
        let mut pace = self.pace.lock();
        if pace.scheduled {
            return;
        }
        let now = std::time::Instant::now();
        let due = pace.last.map_or(now, |l| l + gap);
        if due <= now {
            pace.last = Some(now);
            drop(pace);
            self.wake_all();
            return;
        }
        pace.scheduled = true;
        drop(pace);
        let feed = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            {
                let mut pace = feed.pace.lock();
                pace.scheduled = false;
                pace.last = Some(std::time::Instant::now());
            }
            feed.wake_all();
        });
    }

    /// Appends a commit group (contiguous after the last; anything already held is
    /// skipped) and drops the oldest groups beyond the window's size.
    fn publish(self: &Arc<Self>, lines: Vec<Arc<WireLine>>) {
        let limit = self.limit.load(Ordering::Relaxed);
        {
            let mut w = self.window.lock();
            let w = &mut *w;
            let after = w.last_seq();
            let lines: Vec<_> = lines
                .into_iter()
                .filter(|l| after.is_none_or(|a| l.seq() > a))
                .collect();
            let Some(first) = lines.first() else {
                return;
            };
            if w.base.is_none() || after.is_some_and(|a| first.seq() != a + 1) {
                // The first group, or a gap (cannot happen: the upstream resumes after
                // the last seq): the window restarts here, viewers behind catch up.
                w.frames.clear();
                w.bytes = 0;
                w.base = Some(first.seq() - 1);
            }
            let frame = Arc::new(Frame::new(lines.into()));
            w.bytes += frame.sse.len() + frame.ws.len();
            w.frames.push_back(frame);
            while w.bytes > limit && w.frames.len() > 1 {
                let old = w.frames.pop_front().expect("more than one");
                w.bytes -= old.sse.len() + old.ws.len();
                w.base = old.lines.last().map(|l| l.seq());
            }
            w.version += 1;
        }
        self.wake_paced();
    }

    /// Lines in `ranges` were masked in the store since they came: the window drops its
    /// groups up to the last of them (viewers behind the new base read them, masked, from
    /// the store), and followers tell their viewers.
    fn redacted(&self, ranges: crate::hub::SeqRanges) {
        let Some(seq) = ranges.iter().map(|r| r.1).max() else {
            return;
        };
        self.change(|w| {
            w.redaction_count += 1;
            w.redactions.push_back((w.redaction_count, ranges));
            while w.redactions.len() > 16 {
                w.redactions.pop_front();
            }
            while w
                .frames
                .front()
                .is_some_and(|f| f.lines.first().is_some_and(|l| l.seq() <= seq))
            {
                let old = w.frames.pop_front().expect("a front frame");
                w.bytes -= old.sse.len() + old.ws.len();
                w.base = old.lines.last().map(|l| l.seq());
            }
        });
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.send_if_modified(|p| {
            let changed = *p != phase;
            *p = phase;
            changed
        });
        self.change(|_| {});
    }
}

/// The upstream subscription of `feed`: subscribes after the last seq held (the first
/// time: the last line, then live), publishes what comes, resubscribes after a break,
/// and ends (and leaves the edge's map) once no viewer holds the feed.
pub(super) async fn upstream(edge: Arc<Edge>, feed: Arc<Feed>) {
    edge.metrics.upstreams.inc();
    let mut backoff = Duration::from_millis(100);
    loop {
        if feed.viewers() == 0 && edge.retire(&feed) {
            break;
        }
        let (after, ended) = {
            let w = feed.window.lock();
            (w.last_seq(), w.end.is_some())
        };
        if ended {
            // Completed: nothing more will come; hold the window for its viewers.
            feed.until_idle().await;
            continue;
        }
        let request = pb::SubscribeRequest {
            deployment: feed.id.deployment.clone(),
            cursor: after
                .map(|s| Cursor::new(&feed.id.tenant, &feed.id.deployment, s, 0).encode())
                .unwrap_or_default(),
            filter: None,
            // From nothing: the last line, which fixes where the window starts.
            tail: u32::from(after.is_none()),
        };
        let mut request = tonic::Request::new(request);
        let bearer = format!("Bearer {}", edge.subscription_token(&feed.id));
        if let Ok(v) = bearer.parse() {
            request.metadata_mut().insert("authorization", v);
        }
        let mut client = edge.tail_for(&feed.id);
        let answer = tokio::select! {
            a = client.subscribe(request) => a,
            () = feed.until_idle() => continue,
        };
        let mut stream = match answer {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => {
                feed.set_phase(Phase::Missing);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = feed.until_idle() => {}
                }
                continue;
            }
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) && !s.message().starts_with("auth_expired") =>
            {
                tracing::error!(deployment = %feed.id, error = %s, "the store refused this edge's subscription: is signing_key_file the store's key?");
                feed.set_phase(Phase::Refused(s.message().to_owned()));
                feed.until_idle().await;
                continue;
            }
            Err(s) => {
                edge.reroute();
                tracing::warn!(deployment = %feed.id, error = %s, "subscribing to the store failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = feed.until_idle() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        feed.set_phase(Phase::Live);
        backoff = Duration::from_millis(100);
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                () = feed.until_idle() => break,
            };
            match msg {
                Ok(Some(pb::SubscribeResponse { event: Some(ev) })) => match ev {
                    pb::subscribe_response::Event::Lines(batch) => {
                        let lines = batch
                            .lines
                            .into_iter()
                            .map(|l| Arc::new(wire_line(&feed.id, l)))
                            .collect();
                        feed.publish(lines);
                    }
                    pb::subscribe_response::Event::Redacted(r) => {
                        feed.redacted(r.ranges.iter().map(|x| (x.first, x.last)).collect());
                    }
                    pb::subscribe_response::Event::End(end) => {
                        let last_seq = feed.window.lock().last_seq().unwrap_or(0);
                        let completion = Completion {
                            status: Outcome::parse(&end.status).unwrap_or(Outcome::Failed),
                            exit_code: end.exit_code,
                            at: 0,
                            last_seq,
                        };
                        feed.change(|w| w.end = Some(completion));
                    }
                },
                Ok(Some(_)) => {}
                // The store ended the stream (a restart, an expired token): resubscribe.
                Ok(None) => break,
                Err(s)
                    if s.code() == tonic::Code::NotFound
                        && s.metadata()
                            .get("logstream-error-code")
                            .is_some_and(|c| c == "deployment_deleted") =>
                {
                    // Deleted: forget every line held, close the viewers.
                    feed.change(|w| {
                        w.frames.clear();
                        w.bytes = 0;
                        w.base = None;
                        w.end = None;
                    });
                    feed.set_phase(Phase::Deleted);
                    break;
                }
                Err(s) => {
                    edge.reroute();
                    tracing::info!(deployment = %feed.id, error = %s, "the store's stream broke; resubscribing after the last line");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    break;
                }
            }
        }
    }
    edge.metrics.upstreams.dec();
}

/// A line as the store sent it, with the same JSON the store serves.
fn wire_line(id: &DeploymentId, l: pb::StoredLine) -> WireLine {
    WireLine::new(id, crate::grpc::record_from_pb(l))
}
