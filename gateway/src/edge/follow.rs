//! One viewer on an edge: opened once (token, limits, audit, the feed), then polled by
//! its connection for what to send next: catch-up pages from the store's history while
//! it is behind the shared window, then the window's frames (the shared encoding
//! itself when the viewer takes whole groups unfiltered), heartbeats, the end.
//!
//! A follower is plain state: no task, no channel and no timer of its own. It waits by
//! leaving its connection's waker with the feed (woken by the next frame or the shared
//! heartbeat) and with the edge's expiry wheel (its token's expiry).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use logstream_model::{Cursor, Filter, Level, LogRecord, RedactionState, Stream};

use super::{Edge, Feed, Phase, Slot};
use crate::audit::{AuditEvent, Need};
use crate::auth::{AuthError, Scope};
use crate::core::{Error, Result, access, read};
use crate::hub::{WireLine, encode_sse, encode_ws};
use crate::store::{Completion, DeploymentId};

/// Lines per history page while catching up.
const CATCH_UP_PAGE: usize = 1000;
/// Most bytes handed to the connection in one go.
const MAX_CHUNK: usize = 256 << 10;
/// How long a new viewer waits for the store to answer the feed's subscription.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(10);

/// How the viewer's connection encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Sse,
    Ws,
}

/// What to send next.
#[derive(Debug)]
pub enum Out {
    /// Encoded for the viewer's format: SSE events (concatenable), or one WebSocket
    /// text message each.
    Data(Vec<Bytes>),
    /// Nothing for a heartbeat interval.
    Heartbeat,
    /// `wait=true` on a deployment with no line yet: waiting for it.
    Waiting,
    /// The deployment completed: the last event.
    End(Completion),
    /// The viewer is disconnected: `auth_expired`, `shutting_down`, `too_slow` or the
    /// store's failure. The last event.
    Closed(Error),
}

/// A stream request, whatever carried it.
pub struct StreamRequest<'a> {
    pub deployment: String,
    pub query: HashMap<String, String>,
    pub last_event_id: Option<String>,
    pub authorization: Option<&'a [u8]>,
    pub proxy_authorization: Option<&'a [u8]>,
    pub format: Format,
    pub peer: SocketAddr,
}

/// One catch-up page.
struct Page {
    lines: Vec<Arc<WireLine>>,
    /// Seq the store scanned to (lines filtered out included).
    scanned_to: u64,
}

type PageFuture = Pin<Box<dyn Future<Output = Result<Page>> + Send>>;

/// The filter a viewer asked for: applied to shared frames here, and sent with its
/// catch-up reads so the store filters history the same way.
struct ViewerFilter {
    filter: Filter,
    /// `level=..&step=..` as the store's history API takes them.
    query: String,
}

/// One viewer (see the module comment).
pub struct Follower {
    edge: Arc<Edge>,
    id: DeploymentId,
    /// None: a `wait=true` on a deployment the token may not see, which never starts.
    feed: Option<Arc<Feed>>,
    format: Format,
    filter: Option<Box<ViewerFilter>>,
    /// Highest seq sent or skipped by the filter.
    last: u64,
    /// `tail=N` not served yet.
    tail: Option<usize>,
    heartbeat: u64,
    expires_at: u64,
    expiry_armed: bool,
    /// Reading the window's frames (false while catching up).
    live: bool,
    /// When it fell out of the window while live.
    behind_since: Option<Instant>,
    /// The window's version when a catch-up read made no progress: retry after a change.
    stuck_at: Option<u64>,
    /// The window's `redaction_count` this viewer was told of.
    redactions_seen: u64,
    announced_waiting: bool,
    /// Encoded lines to send first (a `tail=N` read at opening).
    pending: Option<Bytes>,
    catch_up: Option<PageFuture>,
    done: bool,
    slot: Option<Slot>,
    subject: String,
    client: String,
}

/// Opens a viewer: verifies the token, checks the filter and limits, records
/// `stream_open`, joins the deployment's feed and waits for the store's first answer
/// (404 for a deployment it does not have, unless `wait=true`).
pub async fn open(edge: &Arc<Edge>, req: StreamRequest<'_>) -> Result<Follower> {
    let r = open_counted(edge, req).await;
    let code = match &r {
        Ok(_) => "ok",
        Err(e) => e.code,
    };
    edge.metrics.streams.with_label_values(&[code]).inc();
    r
}

async fn open_counted(edge: &Arc<Edge>, req: StreamRequest<'_>) -> Result<Follower> {
    let client = req.peer.ip().to_string();
    let token = match access::token_from_headers(req.authorization, req.proxy_authorization) {
        Some(t) => t,
        None => req
            .query
            .get("access_token")
            .map(|t| Ok(t.as_str()))
            .unwrap_or(Err(AuthError::Missing)),
    }?;
    let p = edge.auth.verify_request(token).await.map_err(|e| {
        edge.audit
            .noise("auth_rejected", "", &client, &e.to_string());
        Error::from(e)
    })?;
    let wait = read::wait(&req.query)?;
    // With wait=true a deployment the token may not see waits like a missing one.
    let (id, visible) = match access::deployment(&p, &req.deployment, Scope::Read) {
        Err(e) if wait && e.code == "deployment_not_found" => (
            DeploymentId::new(p.tenant.clone(), req.deployment.clone()),
            false,
        ),
        other => (other?, true),
    };
    let mut allowed = read::FILTERS.to_vec();
    allowed.extend(["cursor", "tail", "wait"]);
    let mut rp = read::read_params(&req.query, &id, &allowed)?;
    if rp.cursor.is_none()
        && let Some(v) = &req.last_event_id
    {
        rp.cursor = Some(read::cursor(v, &id, "Last-Event-ID")?);
    }
    let (last, tail) = match (rp.cursor, rp.tail) {
        (Some(c), _) => (c.seq, None),
        (None, Some(n)) if n > 0 => (0, Some(n)),
        _ => (0, None),
    };
    let filter = (!rp.filter.is_all()).then(|| {
        let pairs: Vec<(&str, &str)> = read::FILTERS
            .iter()
            .filter_map(|k| req.query.get(*k).map(|v| (*k, v.as_str())))
            .collect();
        Box::new(ViewerFilter {
            filter: rp.filter,
            query: serde_urlencoded::to_string(pairs).expect("pairs encode"),
        })
    });
    let slot = edge
        .take_slot(&id, format!("{}/{:x}", p.tenant, p.token_id))
        .inspect_err(|e| {
            edge.audit
                .noise("stream_refused", &id.tenant, &p.subject, e.code);
        })?;
    let mut follower = Follower {
        edge: edge.clone(),
        id: id.clone(),
        feed: None,
        format: req.format,
        filter,
        last,
        tail,
        heartbeat: edge.heartbeat(),
        expires_at: p.expires_at,
        expiry_armed: false,
        live: false,
        behind_since: None,
        stuck_at: None,
        redactions_seen: 0,
        announced_waiting: false,
        pending: None,
        catch_up: None,
        done: false,
        slot: Some(slot),
        subject: p.subject.clone(),
        client,
    };
    edge.audit
        .require(follower.event("stream_open", &id), Need::Accepted)
        .await
        .inspect_err(|_| follower.subject.clear())?;
    if !visible {
        return Ok(follower);
    }
    let feed = edge.join(&id);
    follower.redactions_seen = feed.window.lock().redaction_count;
    follower.feed = Some(feed.clone());
    let mut phase = feed.phase.subscribe();
    let answered =
        tokio::time::timeout(SUBSCRIBE_WAIT, phase.wait_for(|p| *p != Phase::Connecting)).await;
    let answered = match answered.map(|r| r.map(|p| p.clone())) {
        Ok(Ok(p)) => p,
        _ => {
            return Err(Error::unavailable(
                "store_unreachable",
                "the edge could not reach the tenant's store; retry (live clients resume from their cursor)",
                Duration::from_secs(1),
            ));
        }
    };
    match answered {
        Phase::Missing | Phase::Deleted if !wait => Err(Error::deployment_not_found()),
        Phase::Refused(why) => Err(refused(&why)),
        Phase::Live => {
            // `tail=N` means the last N when the viewer opened: read them now.
            if let Some(n) = follower.tail.take() {
                let page = follower.tail_page(n).await?;
                follower.last = page.scanned_to;
                if !page.lines.is_empty() {
                    follower.pending = Some(follower.encode(&page.lines));
                }
            }
            Ok(follower)
        }
        _ => Ok(follower),
    }
}

fn refused(why: &str) -> Error {
    Error::unavailable(
        "store_refused_edge",
        format!(
            "the store refused this edge ({why}); the edge and its store must share signing_key_file"
        ),
        Duration::from_secs(5),
    )
}

impl Follower {
    fn event(&self, action: &str, id: &DeploymentId) -> AuditEvent {
        AuditEvent {
            action: action.to_owned(),
            subject: self.subject.clone(),
            tenant: id.tenant.clone(),
            deployment: id.deployment.clone(),
            result: "ok".into(),
            client: self.client.clone(),
            count: None,
            via: String::new(),
        }
    }

    fn finish(&mut self, out: Out) -> Poll<Option<Out>> {
        self.done = true;
        let reason = match &out {
            Out::Closed(e) => Some(e.code),
            _ => None,
        };
        if let Some(r) = reason {
            self.edge.metrics.dropped.with_label_values(&[r]).inc();
        }
        Poll::Ready(Some(out))
    }

    fn heartbeat_or_pending(&mut self) -> Poll<Option<Out>> {
        let hb = self.edge.heartbeat();
        if hb != self.heartbeat {
            self.heartbeat = hb;
            return Poll::Ready(Some(Out::Heartbeat));
        }
        Poll::Pending
    }

    fn encode(&self, lines: &[Arc<WireLine>]) -> Bytes {
        Bytes::from(match self.format {
            Format::Sse => encode_sse(lines),
            Format::Ws => encode_ws(lines),
        })
    }

    /// What to send next; `None` after the last event. Wakes the connection's task
    /// when there is more.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Out>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.edge.shutting_down() {
            return self.finish(Out::Closed(Error::shutting_down(
                "the gateway is restarting; reconnect with the last cursor",
            )));
        }
        if self.edge.now() >= self.expires_at {
            return self.finish(Out::Closed(Error::auth_expired()));
        }
        if !self.expiry_armed {
            self.expiry_armed = true;
            self.edge.wake_at(self.expires_at, cx.waker());
        }
        if let Some(first) = self.pending.take() {
            return Poll::Ready(Some(Out::Data(vec![first])));
        }
        let Some(feed) = self.feed.clone() else {
            if !self.announced_waiting {
                self.announced_waiting = true;
                return Poll::Ready(Some(Out::Waiting));
            }
            self.edge.wait_heartbeat(cx.waker());
            return self.heartbeat_or_pending();
        };
        loop {
            if let Some(page) = self.catch_up.as_mut() {
                let page = ready!(page.as_mut().poll(cx));
                self.catch_up = None;
                match page {
                    Err(e) => return self.finish(Out::Closed(e)),
                    Ok(page) => {
                        let before = self.last;
                        let top = page.lines.last().map_or(0, |l| l.seq());
                        self.last = self.last.max(page.scanned_to).max(top);
                        if page.lines.is_empty() && self.last == before {
                            self.stuck_at = Some(feed.window.lock().version);
                        }
                        if !page.lines.is_empty() {
                            let data = self.encode(&page.lines);
                            return Poll::Ready(Some(Out::Data(vec![data])));
                        }
                    }
                }
            }
            let phase = feed.phase.borrow().clone();
            match phase {
                Phase::Refused(why) => return self.finish(Out::Closed(refused(&why))),
                Phase::Deleted => return self.finish(Out::Closed(Error::deployment_deleted())),
                Phase::Missing if !self.announced_waiting => {
                    self.announced_waiting = true;
                    feed.window.lock().wait(cx.waker());
                    return Poll::Ready(Some(Out::Waiting));
                }
                Phase::Live | Phase::Missing | Phase::Connecting => {}
            }
            let mut w = feed.window.lock();
            if w.redaction_count > self.redactions_seen {
                // Lines this viewer was sent were masked since: tell it which.
                let sent: Vec<(u64, u64)> = w
                    .redactions
                    .iter()
                    .filter(|(n, _)| *n > self.redactions_seen)
                    .flat_map(|(_, r)| r.iter())
                    .filter(|(a, _)| *a <= self.last)
                    .map(|&(a, z)| (a, z.min(self.last)))
                    .collect();
                self.redactions_seen = w.redaction_count;
                drop(w);
                if !sent.is_empty() {
                    let data = match self.format {
                        Format::Sse => crate::hub::redacted_sse(&sent),
                        Format::Ws => Bytes::from(crate::hub::redacted_ws(&sent)),
                    };
                    return Poll::Ready(Some(Out::Data(vec![data])));
                }
                continue;
            }
            let Some(base) = w.base else {
                if let Some(end) = w.end {
                    drop(w);
                    return self.finish(Out::End(end));
                }
                w.wait(cx.waker());
                drop(w);
                return self.heartbeat_or_pending();
            };
            if let Some(n) = self.tail.take() {
                drop(w);
                self.catch_up = Some(self.tail_page(n));
                continue;
            }
            if self.last < base {
                if self.stuck_at == Some(w.version) {
                    w.wait(cx.waker());
                    drop(w);
                    return self.heartbeat_or_pending();
                }
                drop(w);
                if self.live {
                    // Fell out of the window: catch up, but not forever.
                    self.live = false;
                    self.behind_since = Some(Instant::now());
                    self.edge.metrics.lagging.inc();
                }
                let limit = Duration::from_secs(self.edge.config.slow_viewer_timeout_secs);
                if self.behind_since.is_some_and(|t| t.elapsed() > limit) {
                    return self.finish(Out::Closed(Error::unavailable(
                        "too_slow",
                        "this viewer stayed behind the live window too long; reconnect with the last cursor",
                        Duration::from_secs(1),
                    )));
                }
                self.catch_up = Some(self.history_page());
                continue;
            }
            self.live = true;
            self.behind_since = None;
            let start = w
                .frames
                .partition_point(|f| f.lines.last().map_or(0, |l| l.seq()) <= self.last);
            if start < w.frames.len() {
                let mut out = Vec::new();
                let mut picked: Vec<Arc<WireLine>> = Vec::new();
                let mut bytes = 0;
                for f in w.frames.range(start..) {
                    if bytes >= MAX_CHUNK {
                        break;
                    }
                    let first = f.lines.first().map_or(0, |l| l.seq());
                    if self.filter.is_none() && first == self.last + 1 {
                        if !picked.is_empty() {
                            out.push(self.encode(&std::mem::take(&mut picked)));
                        }
                        let b = match self.format {
                            Format::Sse => f.sse.clone(),
                            Format::Ws => f.ws.clone(),
                        };
                        bytes += b.len();
                        out.push(b);
                    } else {
                        for l in f.lines.iter().filter(|l| l.seq() > self.last) {
                            if self
                                .filter
                                .as_ref()
                                .is_none_or(|v| v.filter.matches(&l.record))
                            {
                                bytes += l.json.len();
                                picked.push(l.clone());
                            }
                        }
                    }
                    self.last = f.lines.last().map_or(self.last, |l| l.seq());
                }
                drop(w);
                if !picked.is_empty() {
                    out.push(self.encode(&picked));
                }
                if out.is_empty() {
                    // Everything filtered out: look again (more, or the end).
                    continue;
                }
                return Poll::Ready(Some(Out::Data(out)));
            }
            if let Some(end) = w.end
                && self.last >= end.last_seq
            {
                drop(w);
                return self.finish(Out::End(end));
            }
            w.wait(cx.waker());
            drop(w);
            return self.heartbeat_or_pending();
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The connection dropped this viewer for not taking what it was sent.
    pub fn dropped_slow(&self) {
        self.edge
            .metrics
            .dropped
            .with_label_values(&["too_slow"])
            .inc();
    }

    fn id(&self) -> &DeploymentId {
        &self.id
    }

    /// The next history page after `self.last`, filtered by the store.
    fn history_page(&self) -> PageFuture {
        let id = self.id().clone();
        let mut query = format!("limit={CATCH_UP_PAGE}");
        if self.last > 0 {
            let c = Cursor::new(&id.tenant, &id.deployment, self.last, 0).encode();
            query.push_str("&cursor=");
            query.push_str(&c);
        }
        if let Some(f) = &self.filter {
            query.push('&');
            query.push_str(&f.query);
        }
        Box::pin(history(self.edge.clone(), id, query, false))
    }

    /// The last `n` matching lines (`tail=N`).
    fn tail_page(&self, n: usize) -> PageFuture {
        let id = self.id().clone();
        let mut query = format!("limit={}&direction=backward", n.min(5000));
        if let Some(f) = &self.filter {
            query.push('&');
            query.push_str(&f.query);
        }
        Box::pin(history(self.edge.clone(), id, query, true))
    }
}

/// Reads one page of `id`'s history from the store with the edge's own token.
async fn history(edge: Arc<Edge>, id: DeploymentId, query: String, tail: bool) -> Result<Page> {
    let path = format!("/v1/deployments/{}/logs?{query}", id.deployment);
    let unreachable = |why: String| {
        Error::unavailable(
            "store_unreachable",
            format!("catching up from the store failed ({why}); reconnect with the last cursor"),
            Duration::from_secs(1),
        )
    };
    let (status, body) = edge
        .proxy
        .get(&path, &edge.token(&id.tenant))
        .await
        .map_err(unreachable)?;
    if !status.is_success() {
        return Err(unreachable(format!(
            "it answered {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    let page: logstream_model::wire::HistoryPage =
        serde_json::from_slice(&body).map_err(|e| unreachable(format!("its answer: {e}")))?;
    let mut lines: Vec<Arc<WireLine>> = page
        .lines
        .into_iter()
        .map(|l| Arc::new(WireLine::new(&id, record(l))))
        .collect();
    lines.sort_by_key(|l| l.seq());
    let scanned_to = if tail {
        // After the last N: the live window or the next forward page goes on from there.
        lines.last().map_or(0, |l| l.seq())
    } else {
        Cursor::decode(&page.next_cursor, &id.tenant, &id.deployment).map_or(0, |c| c.seq)
    };
    Ok(Page { lines, scanned_to })
}

/// A history line back into the record the store holds (its JSON is rebuilt byte for
/// byte by `WireLine::new`).
fn record(l: logstream_model::wire::Line) -> LogRecord {
    LogRecord {
        seq: l.seq,
        ts: logstream_model::time::parse_rfc3339(&l.ts).unwrap_or(0),
        step: l.step,
        stream: Stream::parse(&l.stream).unwrap_or(Stream::Stdout),
        level: Level::parse(&l.level).unwrap_or(Level::Unknown),
        message: l.message,
        metadata: l.metadata,
        redaction: RedactionState(l.redaction.0),
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if !self.subject.is_empty() {
            self.edge.audit.record(self.event("stream_close", &self.id));
        }
        if let Some(feed) = self.feed.take() {
            feed.leave();
        }
        if let Some(slot) = self.slot.take() {
            self.edge.free_slot(&slot);
        }
    }
}
