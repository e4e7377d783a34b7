//! A live viewer: history from the store, then the broadcast, with no gap and no
//! duplicate across the boundary, and catch-up from the store whenever it falls behind.
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

use logstream_model::Filter;
use tokio::sync::{broadcast, mpsc};

use crate::api::ApiError;
use crate::hub::{Frame, LiveEvent, WireLine};
use crate::server::AppState;
use crate::store::{Completion, DeploymentLog, Direction, LogId};

/// What a viewer receives.
#[derive(Debug)]
pub enum ViewerEvent {
    Lines(Vec<Arc<WireLine>>),
    /// A whole commit group, already framed (the viewer has no filter and no gap).
    Frame(Arc<Frame>),
    End(Completion),
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
    state: Arc<AppState>,
    log: Arc<DeploymentLog>,
    start: Start,
    filter: Filter,
) -> mpsc::Receiver<ViewerEvent> {
    let (tx, rx) = mpsc::channel(4);
    // Subscribe before reading the store: every later commit reaches this receiver.
    let live = state.hub.subscribe(&log.id);
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
            tracing::warn!(error = %e.message, "live viewer ended with an error");
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
    state: Arc<AppState>,
}

/// The viewer went away.
struct Gone;

impl Viewer {
    async fn run(
        &mut self,
        mut live: broadcast::Receiver<LiveEvent>,
        start: Start,
    ) -> Result<(), ApiError> {
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
    async fn catch_up(&mut self, until: Option<u64>) -> Result<Result<(), Gone>, ApiError> {
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
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(ApiError::from)?;
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

    async fn send(&self, lines: Vec<Arc<WireLine>>) -> Result<(), Gone> {
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
) -> Result<Vec<logstream_model::LogRecord>, ApiError> {
    let log = log.clone();
    let page = tokio::task::spawn_blocking(move || log.read(dir, from, &filter, limit))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(page.records)
}

/// Live viewers per tenant, per deployment and per token, for the limits.
#[derive(Default)]
pub struct ViewerCounts {
    tenants: HashMap<String, usize>,
    deployments: HashMap<LogId, usize>,
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

/// Viewer-count guard: counts a viewer against its tenant, deployment and token limits
/// while it lives; opening and closing are audited.
pub struct ViewerSlot {
    state: Arc<AppState>,
    id: LogId,
    subject: String,
    token: String,
    client: Option<std::net::SocketAddr>,
}

impl ViewerSlot {
    /// Takes a slot or says which limit is reached (429).
    pub fn acquire(
        state: &Arc<AppState>,
        id: &LogId,
        who: &crate::auth::Principal,
        client: Option<std::net::SocketAddr>,
    ) -> Result<ViewerSlot, ApiError> {
        let token = format!("{}/{:x}", who.tenant, who.token_id);
        let mut counts = state.viewer_counts.lock();
        let c = &state.config;
        let checks = [
            (
                "viewers_per_tenant",
                counts.tenants.get(&id.tenant).copied().unwrap_or(0),
                c.max_viewers_per_tenant,
                format!("tenant {}", id.tenant),
            ),
            (
                "viewers_per_deployment",
                counts.deployments.get(id).copied().unwrap_or(0),
                c.max_viewers_per_deployment,
                format!("deployment {}", id.deployment),
            ),
            (
                "streams_per_token",
                counts.tokens.get(&token).copied().unwrap_or(0),
                c.max_streams_per_token,
                "this token".to_owned(),
            ),
        ];
        for (code, now, limit, what) in checks {
            if now >= limit {
                return Err(ApiError::too_many(
                    code,
                    format!(
                        "{what} already has {now} live streams (limit {limit}); close some streams or raise the limit"
                    ),
                ));
            }
        }
        *counts.tenants.entry(id.tenant.clone()).or_default() += 1;
        *counts.deployments.entry(id.clone()).or_default() += 1;
        *counts.tokens.entry(token.clone()).or_default() += 1;
        drop(counts);
        state.audit(
            "stream_open",
            &who.subject,
            &id.tenant,
            &id.deployment,
            "ok",
            client,
        );
        Ok(ViewerSlot {
            state: state.clone(),
            id: id.clone(),
            subject: who.subject.clone(),
            token,
            client,
        })
    }
}

impl Drop for ViewerSlot {
    fn drop(&mut self) {
        self.state.audit(
            "stream_close",
            &self.subject,
            &self.id.tenant,
            &self.id.deployment,
            "ok",
            self.client,
        );
        let mut counts = self.state.viewer_counts.lock();
        dec(&mut counts.tenants, &self.id.tenant);
        dec(&mut counts.deployments, &self.id);
        dec(&mut counts.tokens, &self.token);
    }
}
