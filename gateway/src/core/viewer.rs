//! A viewer follows a deployment live: history from the store, then the broadcast, with
//! no gap and no duplicate across the boundary, and catch-up from the store whenever it
//! falls behind. `Session` is the one viewer loop every transport drives (SSE,
//! WebSocket, gRPC `Tail.Subscribe`): lines, heartbeats, completion, token expiry and
//! shutdown, in that one place; each transport only encodes its events.
//!
//! ```text
//! subscribe to hub ──> read store pages after the cursor ──> follow broadcast
//!        (first, so no commit is missed)      │                 │  gap / Lagged
//!                                            └──── catch_up() <─┘  (by seq)
//! ```
//!
//! Runs as one task per viewer writing to a bounded channel; the task ends when the
//! viewer goes away (send fails), at completion (after `End`), or at shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use logstream_model::Filter;
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc};

use crate::core::{Error, Gateway, Result};
use crate::hub::{Frame, LiveEvent, WireLine};
use crate::store::{Completion, DeploymentId, DeploymentLog, Direction};

/// What a viewer receives.
#[derive(Debug)]
pub enum ViewerEvent {
    Lines(Vec<Arc<WireLine>>),
    /// A whole commit group, already framed (the viewer has no filter and no gap).
    Frame(Arc<Frame>),
    End(Completion),
    /// The stream ends early: the viewer reconnects.
    Closed(Error),
    /// Lines in these seq ranges were masked in the store since they were sent.
    Redacted(crate::hub::SeqRanges),
}

/// Where a viewer starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// After this seq (0 = from the beginning).
    After(u64),
    /// The last N matching lines, then live.
    Tail(usize),
}

/// Lines per store page while catching up.
const CATCH_UP_PAGE: usize = 1000;
/// Most bytes of lines merged into one viewer event.
const MAX_EVENT_BYTES: usize = 256 << 10;

/// Starts a viewer task; events arrive on the returned channel.
pub async fn spawn(
    state: Arc<Gateway>,
    log: Arc<DeploymentLog>,
    start: Start,
    filter: Filter,
) -> mpsc::Receiver<ViewerEvent> {
    let (tx, rx) = mpsc::channel(4);
    // Subscribe before reading the store: every later commit reaches this receiver.
    let live = state.hub.subscribe(&log.id);
    // Kafka mode: a partition revoked between the caller's ownership check and this
    // subscription sent its `moved` to nobody: check again now that it would arrive.
    if state.check_owner(&log.id).is_err() {
        let _ = tx.try_send(ViewerEvent::Closed(Error::moved()));
        return rx;
    }
    tokio::spawn(async move {
        state.metrics.live_viewers.inc();
        let mut viewer = Viewer {
            log,
            filter,
            tx,
            last: 0,
            state: state.clone(),
        };
        if let Err(e) = viewer.run(live, start).await {
            tracing::warn!(error = %e, "viewer ended with an error");
        }
        state.metrics.live_viewers.dec();
    });
    rx
}

struct Viewer {
    log: Arc<DeploymentLog>,
    filter: Filter,
    tx: mpsc::Sender<ViewerEvent>,
    /// Highest seq delivered or skipped by the filter.
    last: u64,
    state: Arc<Gateway>,
}

/// The viewer went away.
struct Gone;

impl Viewer {
    async fn run(&mut self, mut live: broadcast::Receiver<LiveEvent>, start: Start) -> Result<()> {
        let id = self.log.id.clone();
        match start {
            Start::After(seq) => self.last = seq,
            Start::Tail(n) => {
                let durable = self.log.durable_seq();
                let page = read(
                    &self.log,
                    Direction::Backward,
                    durable + 1,
                    self.filter.clone(),
                    n,
                )
                .await?;
                let mut lines: Vec<_> = page
                    .into_iter()
                    .map(|r| Arc::new(WireLine::new(&id, r)))
                    .collect();
                lines.reverse();
                if self.send(lines).await.is_err() {
                    return Ok(());
                }
                self.last = durable;
            }
        }
        if self.catch_up(None).await?.is_err() {
            return Ok(());
        }
        if let Some(c) = self.log.completion()
            && self.last >= c.last_seq
        {
            let _ = self.tx.send(ViewerEvent::End(c)).await;
            return Ok(());
        }
        loop {
            let first = tokio::select! {
                ev = live.recv() => ev,
                () = self.tx.closed() => return Ok(()),
            };
            // Merge what is already queued into one viewer event (fewer writes).
            let mut events = vec![first];
            let mut bytes = 0;
            while bytes < MAX_EVENT_BYTES {
                match live.try_recv() {
                    Ok(ev) => {
                        if let LiveEvent::Lines(f) = &ev {
                            bytes += f.sse.len();
                        }
                        events.push(Ok(ev));
                    }
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        events.push(Err(broadcast::error::RecvError::Lagged(n)))
                    }
                    Err(broadcast::error::TryRecvError::Closed) => {
                        events.push(Err(broadcast::error::RecvError::Closed));
                        break;
                    }
                }
            }
            let mut batch: Vec<Arc<WireLine>> = Vec::new();
            for event in events {
                match event {
                    Ok(LiveEvent::Lines(frame)) => {
                        let group = &frame.lines;
                        if self.filter.is_all()
                            && group.first().is_some_and(|f| f.seq() == self.last + 1)
                        {
                            // The whole group, in order: send the shared framing as is.
                            if self.send(std::mem::take(&mut batch)).await.is_err() {
                                return Ok(());
                            }
                            self.last = group.last().map_or(self.last, |l| l.seq());
                            if self
                                .tx
                                .send(ViewerEvent::Frame(frame.clone()))
                                .await
                                .is_err()
                            {
                                return Ok(());
                            }
                            continue;
                        }
                        if let Some(first) = group.first()
                            && first.seq() > self.last + 1
                        {
                            // A gap (commits made before our subscription): from the store.
                            let gap_end = first.seq() - 1;
                            if self.send(std::mem::take(&mut batch)).await.is_err()
                                || self.catch_up(Some(gap_end)).await?.is_err()
                            {
                                return Ok(());
                            }
                        }
                        for l in group.iter() {
                            if l.seq() <= self.last {
                                continue;
                            }
                            self.last = l.seq();
                            if self.filter.matches(&l.record) {
                                batch.push(l.clone());
                            }
                        }
                    }
                    Ok(LiveEvent::Moved) => {
                        let _ = self.send(std::mem::take(&mut batch)).await;
                        let _ = self.tx.send(ViewerEvent::Closed(Error::moved())).await;
                        return Ok(());
                    }
                    Ok(LiveEvent::Redacted(seqs)) => {
                        // Only what this viewer was sent: later lines come masked.
                        let sent: Vec<(u64, u64)> = seqs
                            .iter()
                            .filter(|(a, _)| *a <= self.last)
                            .map(|&(a, z)| (a, z.min(self.last)))
                            .collect();
                        if self.send(std::mem::take(&mut batch)).await.is_err()
                            || (!sent.is_empty()
                                && self
                                    .tx
                                    .send(ViewerEvent::Redacted(sent.into()))
                                    .await
                                    .is_err())
                        {
                            return Ok(());
                        }
                    }
                    Ok(LiveEvent::Deleted) => {
                        let _ = self.send(std::mem::take(&mut batch)).await;
                        let _ = self
                            .tx
                            .send(ViewerEvent::Closed(Error::deployment_deleted()))
                            .await;
                        return Ok(());
                    }
                    Ok(LiveEvent::End(c)) => {
                        if self.send(std::mem::take(&mut batch)).await.is_err()
                            || self.catch_up(Some(c.last_seq)).await?.is_err()
                        {
                            return Ok(());
                        }
                        let _ = self.tx.send(ViewerEvent::End(c)).await;
                        return Ok(());
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.state.metrics.lagging_viewers.inc();
                        if self.send(std::mem::take(&mut batch)).await.is_err()
                            || self.catch_up(None).await?.is_err()
                        {
                            return Ok(());
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        // The deployment completed and its channel was dropped.
                        if self.send(std::mem::take(&mut batch)).await.is_err()
                            || self.catch_up(None).await?.is_err()
                        {
                            return Ok(());
                        }
                        if let Some(c) = self.log.completion() {
                            let _ = self.tx.send(ViewerEvent::End(c)).await;
                        }
                        return Ok(());
                    }
                }
            }
            if self.send(batch).await.is_err() {
                return Ok(());
            }
        }
    }

    /// Reads from the store after `self.last` up to `until` (or everything durable).
    async fn catch_up(&mut self, until: Option<u64>) -> Result<std::result::Result<(), Gone>> {
        loop {
            if until.is_some_and(|u| self.last >= u) {
                return Ok(Ok(()));
            }
            let page = self.log.clone();
            let filter = self.filter.clone();
            let from = self.last;
            let p = tokio::task::spawn_blocking(move || {
                page.read(Direction::Forward, from, &filter, CATCH_UP_PAGE)
            })
            .await??;
            let lines: Vec<_> = p
                .records
                .into_iter()
                .map(|r| Arc::new(WireLine::new(&self.log.id, r)))
                .collect();
            if !lines.is_empty() && self.send(lines).await.is_err() {
                return Ok(Err(Gone));
            }
            self.last = self.last.max(p.scanned_to);
            if p.exhausted {
                return Ok(Ok(()));
            }
        }
    }

    async fn send(&self, lines: Vec<Arc<WireLine>>) -> std::result::Result<(), Gone> {
        if lines.is_empty() {
            return Ok(());
        }
        self.tx
            .send(ViewerEvent::Lines(lines))
            .await
            .map_err(|_| Gone)
    }
}

async fn read(
    log: &Arc<DeploymentLog>,
    dir: Direction,
    from: u64,
    filter: Filter,
    limit: usize,
) -> Result<Vec<logstream_model::LogRecord>> {
    let log = log.clone();
    let page = tokio::task::spawn_blocking(move || log.read(dir, from, &filter, limit)).await??;
    Ok(page.records)
}

/// Live viewers per tenant, per deployment and per token, for the limits.
#[derive(Default)]
pub struct ViewerCounts {
    tenants: HashMap<String, usize>,
    deployments: HashMap<DeploymentId, usize>,
    /// Keyed by tenant and token hash: one token's streams.
    tokens: HashMap<String, usize>,
}

fn dec<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl ViewerCounts {
    /// Counts one more viewer of `id` with `token` (`tenant/token id`), or says which
    /// of `config`'s limits is reached (`too_many`, retry after 5 s). Stores count
    /// every viewer; an edge counts its own.
    pub fn take(
        &mut self,
        config: &crate::config::Config,
        id: &DeploymentId,
        token: &str,
    ) -> Result<()> {
        let checks = [
            (
                "viewers_per_tenant",
                self.tenants.get(&id.tenant).copied().unwrap_or(0),
                config.max_viewers_per_tenant,
                format!("tenant {}", id.tenant),
            ),
            (
                "viewers_per_deployment",
                self.deployments.get(id).copied().unwrap_or(0),
                config.max_viewers_per_deployment,
                format!("deployment {}", id.deployment),
            ),
            (
                "streams_per_token",
                self.tokens.get(token).copied().unwrap_or(0),
                config.max_streams_per_token,
                "this token".to_owned(),
            ),
        ];
        for (code, now, limit, what) in checks {
            if now >= limit {
                return Err(Error::too_many(
                    code,
                    format!(
                        "{what} already has {now} live streams (limit {limit}); close some streams or raise the limit"
                    ),
                    Duration::from_secs(5),
                ));
            }
        }
        *self.tenants.entry(id.tenant.clone()).or_default() += 1;
        *self.deployments.entry(id.clone()).or_default() += 1;
        *self.tokens.entry(token.to_owned()).or_default() += 1;
        Ok(())
    }

    /// The viewer `take` counted is gone.
    pub fn release(&mut self, id: &DeploymentId, token: &str) {
        dec(&mut self.tenants, &id.tenant);
        dec(&mut self.deployments, id);
        dec(&mut self.tokens, &token.to_owned());
    }
}

/// Viewer-count guard: counts a viewer against its tenant, deployment and token limits
/// while it lives; opening and closing are audited.
pub struct ViewerSlot {
    counts: Arc<Mutex<ViewerCounts>>,
    audit: crate::audit::Audit,
    id: DeploymentId,
    subject: String,
    token: String,
    client: Option<std::net::SocketAddr>,
    /// Its `stream_open` record is durable (so its close is recorded too).
    opened: bool,
}

impl ViewerSlot {
    /// Takes a slot or says which limit is reached (`too_many`, retry after 5 s); the
    /// stream is opened only once its audit record is durable.
    pub async fn acquire(
        state: &Gateway,
        id: &DeploymentId,
        who: &crate::auth::Principal,
        client: Option<std::net::SocketAddr>,
    ) -> Result<ViewerSlot> {
        let token = format!("{}/{:x}", who.tenant, who.token_id);
        let mut slot = Self::take(state, id, who, client, token)?;
        state
            .audit(
                crate::audit::Need::Accepted,
                "stream_open",
                &who.subject,
                &id.tenant,
                &id.deployment,
                "ok",
                client,
            )
            .await?;
        slot.opened = true;
        Ok(slot)
    }

    /// Counts the viewer against the limits (no record yet).
    fn take(
        state: &Gateway,
        id: &DeploymentId,
        who: &crate::auth::Principal,
        client: Option<std::net::SocketAddr>,
        token: String,
    ) -> Result<ViewerSlot> {
        state
            .viewer_counts
            .lock()
            .take(&state.config, id, &token)
            .inspect_err(|e| {
                // Noise: one record per subject and limit per interval, with a count.
                state
                    .audit
                    .noise("stream_refused", &id.tenant, &who.subject, e.code);
            })?;
        Ok(ViewerSlot {
            counts: state.viewer_counts.clone(),
            audit: state.audit.clone(),
            id: id.clone(),
            subject: who.subject.clone(),
            token,
            client,
            opened: false,
        })
    }
}

impl Drop for ViewerSlot {
    fn drop(&mut self) {
        if self.opened {
            self.audit.record(crate::audit::AuditEvent {
                action: "stream_close".into(),
                subject: std::mem::take(&mut self.subject),
                tenant: self.id.tenant.clone(),
                deployment: self.id.deployment.clone(),
                result: "ok".into(),
                client: self.client.map(|c| c.ip().to_string()).unwrap_or_default(),
                count: None,
                via: String::new(),
            });
        }
        self.counts.lock().release(&self.id, &self.token);
    }
}

/// What a session hands its transport to encode.
#[derive(Debug)]
pub enum SessionEvent {
    /// Lines in seq order, filtered.
    Lines(Vec<Arc<WireLine>>),
    /// A whole commit group, already framed for SSE and WebSocket.
    Frame(Arc<Frame>),
    /// Nothing happened for a heartbeat interval (transports without their own
    /// keep-alive send something so proxies keep the connection).
    Heartbeat,
    /// The deployment completed: the last event.
    End(Completion),
    /// Lines already sent (inclusive seq ranges) were masked in the store since.
    Redacted(crate::hub::SeqRanges),
    /// The session ends with this error: `auth_expired` when the token expired,
    /// `shutting_down` when the gateway is stopping. The last event.
    Closed(Error),
}

/// One viewer's session: the viewer task's events, heartbeats, the token's expiry and the
/// gateway's shutdown, merged in one place for every transport. Holds the viewer's slot
/// (limits, audit) for as long as it lives; dropping it ends the viewer task.
pub struct Session {
    rx: mpsc::Receiver<ViewerEvent>,
    heartbeat: tokio::time::Interval,
    expiry: std::pin::Pin<Box<tokio::time::Sleep>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    done: bool,
    _slot: ViewerSlot,
}

impl Session {
    /// Opens a session for `who` on deployment `id` (already access-checked): takes a
    /// viewer slot, finds the deployment and starts its viewer task.
    pub async fn open(
        state: &Arc<Gateway>,
        who: &crate::auth::Principal,
        id: &DeploymentId,
        start: Start,
        filter: Filter,
        client: Option<std::net::SocketAddr>,
    ) -> Result<Session> {
        let log = state.existing_log(id).await?;
        let slot = ViewerSlot::acquire(state, id, who, client).await?;
        let now = crate::core::read::now_ns().max(0) as u64 / 1_000_000_000;
        let expires_in = Duration::from_secs(who.expires_at.saturating_sub(now));
        let heartbeat = Duration::from_secs(state.config.heartbeat_secs);
        let rx = spawn(state.clone(), log, start, filter).await;
        Ok(Session {
            rx,
            heartbeat: tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat),
            expiry: Box::pin(tokio::time::sleep(expires_in)),
            shutdown: state.shutdown.clone(),
            done: false,
            _slot: slot,
        })
    }

    /// The next event; `None` after the last one (or when the viewer task ended).
    /// Cancel-safe: it may be raced against a transport's own events.
    pub async fn next(&mut self) -> Option<SessionEvent> {
        if self.done {
            return None;
        }
        let ev = tokio::select! {
            ev = self.rx.recv() => match ev? {
                ViewerEvent::Lines(lines) => SessionEvent::Lines(lines),
                ViewerEvent::Frame(frame) => SessionEvent::Frame(frame),
                ViewerEvent::End(c) => SessionEvent::End(c),
                ViewerEvent::Closed(e) => SessionEvent::Closed(e),
                ViewerEvent::Redacted(s) => SessionEvent::Redacted(s),
            },
            _ = self.heartbeat.tick() => SessionEvent::Heartbeat,
            () = &mut self.expiry => SessionEvent::Closed(Error::auth_expired()),
            _ = self.shutdown.wait_for(|down| *down) => SessionEvent::Closed(Error::shutting_down(
                "the gateway is restarting; reconnect with the last cursor",
            )),
        };
        if matches!(ev, SessionEvent::End(_) | SessionEvent::Closed(_)) {
            self.done = true;
        }
        Some(ev)
    }
}

/// What a wait for a deployment's first line gives.
#[derive(Debug)]
pub enum WaitEvent {
    /// Still waiting: a heartbeat keeps the connection alive.
    Heartbeat,
    /// The deployment exists now: open the session.
    Ready,
    /// The wait ends with this error (`auth_expired`, `shutting_down`).
    Closed(Error),
}

/// A viewer waiting for a deployment that does not exist yet (`?wait=true`: people open
/// a pipeline's link before its first line). The tenant's change feed is subscribed
/// before the catalog is looked at, so a creation in between is not missed. A
/// deployment the token may not see waits like a missing one and is never ready
/// (nothing leaks about it).
pub struct Waiting {
    state: Arc<Gateway>,
    id: DeploymentId,
    visible: bool,
    changes: broadcast::Receiver<Arc<crate::hub::DeploymentChange>>,
    heartbeat: tokio::time::Interval,
    expiry: std::pin::Pin<Box<tokio::time::Sleep>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    looked: bool,
}

impl Waiting {
    pub fn new(state: &Arc<Gateway>, who: &crate::auth::Principal, id: &DeploymentId) -> Waiting {
        let changes = state.hub.subscribe_changes(&id.tenant);
        let now = crate::core::read::now_ns().max(0) as u64 / 1_000_000_000;
        let expires_in = Duration::from_secs(who.expires_at.saturating_sub(now));
        let heartbeat = Duration::from_secs(state.config.heartbeat_secs.max(1));
        Waiting {
            state: state.clone(),
            id: id.clone(),
            visible: who.may_access(&id.deployment),
            changes,
            heartbeat: tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat),
            expiry: Box::pin(tokio::time::sleep(expires_in)),
            shutdown: state.shutdown.clone(),
            looked: false,
        }
    }

    fn exists(&self) -> bool {
        self.visible
            && self
                .state
                .store
                .catalog()
                .get(&self.id.tenant, &self.id.deployment)
                .is_some()
    }

    /// The next event of the wait. Cancel-safe.
    pub async fn next(&mut self) -> WaitEvent {
        if !self.looked {
            self.looked = true;
            if self.exists() {
                return WaitEvent::Ready;
            }
        }
        loop {
            let change = tokio::select! {
                _ = self.heartbeat.tick() => {
                    // Kafka mode: the deployment's partition moved away meanwhile.
                    if self.state.check_owner(&self.id).is_err() {
                        return WaitEvent::Closed(Error::moved());
                    }
                    return WaitEvent::Heartbeat;
                }
                () = &mut self.expiry => return WaitEvent::Closed(Error::auth_expired()),
                _ = self.shutdown.wait_for(|down| *down) => {
                    return WaitEvent::Closed(Error::shutting_down(
                        "the gateway is restarting; reconnect to go on waiting",
                    ));
                }
                c = self.changes.recv() => c,
            };
            match change {
                Ok(c) if self.visible && c.deployment == self.id.deployment => {
                    return WaitEvent::Ready;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if self.exists() {
                        return WaitEvent::Ready;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return WaitEvent::Closed(Error::shutting_down(
                        "the gateway is restarting; reconnect to go on waiting",
                    ));
                }
            }
        }
    }
}
