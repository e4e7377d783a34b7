//! Role `edge`: the viewer front of a tenant, scaled by an HPA, that really fans out.
//!
//! ```text
//! viewers ──SSE / WebSocket──> edge: token, limits, audit checked here
//!                                │  one Feed per followed deployment (feed.rs): one
//!                                │  upstream Tail.Subscribe to the store, its frames
//!                                │  encoded once and shared by every viewer
//!                                ├─ catch-up (a cursor older than the window): the
//!                                │  store's history API (follow.rs)
//!                                └─ everything else (ingest, history, export, lists):
//!                                   forwarded to the store unchanged (proxy.rs)
//! ```
//!
//! A viewer costs no task and no timer of its own: the connection's task polls its
//! [`follow::Follower`], which reads the shared window; heartbeats and token expiry come
//! from one ticker for all viewers. Stream requests that open a connection are served
//! by a lean HTTP/1.1 path (raw.rs) that keeps no buffers per viewer; any other request
//! (and a stream request on a reused connection) goes through hyper.

mod feed;
pub mod follow;
pub mod proxy;
mod raw;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Waker;
use std::time::{Duration, Instant};

use logstream_proto::v1::tail_client::TailClient;
use parking_lot::Mutex;
use prometheus::{IntCounterVec, IntGauge, Registry};
use tokio::net::TcpListener;

use crate::audit::Audit;
use crate::auth::{Authenticator, Scope};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::DeploymentId;
pub use feed::{Feed, Phase};

/// Lifetime of the tokens an edge signs for its own requests to the store; renewed at
/// half of it.
const EDGE_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The edge's metrics (`docs/metrics.md`, role edge).
pub struct EdgeMetrics {
    pub registry: Registry,
    pub live: IntGauge,
    pub upstreams: IntGauge,
    pub requests: IntCounterVec,
    /// Viewers that fell out of the window and caught up from the store.
    pub lagging: prometheus::IntCounter,
    /// Viewers disconnected, by reason (`too_slow`, `auth_expired`, `shutting_down`).
    pub dropped: IntCounterVec,
    /// Live stream opens, `ok` or the error code answered.
    pub streams: IntCounterVec,
}

impl EdgeMetrics {
    fn new() -> EdgeMetrics {
        let registry = Registry::new_custom(Some("logstream".into()), None).expect("registry");
        let live = IntGauge::new(
            "live_viewers",
            "Live viewers (SSE, WebSocket) this edge serves: the HPA's pods metric.",
        )
        .expect("metric");
        let upstreams = IntGauge::new(
            "edge_upstreams",
            "Upstream Tail.Subscribe streams to the store: one per deployment with viewers here.",
        )
        .expect("metric");
        let requests = IntCounterVec::new(
            prometheus::Opts::new("edge_requests_total", "Requests forwarded, by outcome."),
            &["outcome"],
        )
        .expect("metric");
        let lagging = prometheus::IntCounter::new(
            "edge_lagging_viewers_total",
            "Times a viewer fell out of the shared window and caught up from the store.",
        )
        .expect("metric");
        let dropped = IntCounterVec::new(
            prometheus::Opts::new(
                "edge_viewers_closed_total",
                "Viewers the edge disconnected, by reason (too_slow, auth_expired, shutting_down).",
            ),
            &["reason"],
        )
        .expect("metric");
        for reason in ["too_slow", "auth_expired", "shutting_down"] {
            dropped.with_label_values(&[reason]);
        }
        let streams = IntCounterVec::new(
            prometheus::Opts::new(
                "edge_streams_total",
                "Live stream opens on this edge: ok, or the error code answered (store_unreachable, store_refused_edge, ...).",
            ),
            &["code"],
        )
        .expect("metric");
        streams.with_label_values(&["ok"]);
        for m in [
            Box::new(live.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(upstreams.clone()),
            Box::new(requests.clone()),
            Box::new(lagging.clone()),
            Box::new(dropped.clone()),
            Box::new(streams.clone()),
            Box::new(crate::auth::KEY_FETCH_FAILURES.clone()),
        ] {
            registry.register(m).expect("register");
        }
        EdgeMetrics {
            registry,
            live,
            upstreams,
            requests,
            lagging,
            dropped,
            streams,
        }
    }
}

/// Shared state of an edge.
pub struct Edge {
    pub config: Config,
    pub(crate) proxy: proxy::Proxy,
    tail: TailClient<tonic::transport::Channel>,
    pub auth: Authenticator,
    pub audit: Audit,
    /// The audit writer's metrics (the only gateway metrics an edge exports).
    audit_metrics: Arc<Metrics>,
    pub metrics: EdgeMetrics,
    process: Registry,
    feeds: Mutex<HashMap<DeploymentId, Arc<Feed>>>,
    counts: Mutex<crate::core::viewer::ViewerCounts>,
    /// Bumped every heartbeat: viewers that see it change send one.
    heartbeat: AtomicU64,
    /// Unix seconds, updated by the ticker (viewers check token expiry against it).
    now: AtomicU64,
    /// Viewers to wake when their token expires, by Unix second.
    expiries: Mutex<BTreeMap<u64, Vec<Waker>>>,
    /// Viewers waiting with no feed (for the next heartbeat).
    feedless: Mutex<Vec<Waker>>,
    shutting_down: AtomicBool,
    /// Per tenant: the token this edge signs for the store, and when it was signed.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    /// `edge/<hostname>`: the subject of this edge's own requests.
    subject: String,
    /// Kafka mode (`store_replicas`): who owns which deployment, and a client per owner
    /// (each one HTTP/2 connection) for the live upstreams.
    replicas: Option<Arc<crate::cluster::Replicas>>,
    owner_tails: Mutex<HashMap<String, TailClient<tonic::transport::Channel>>>,
    stop_routes: tokio::sync::watch::Sender<bool>,
}

/// A `Tail` client over one lazily connected HTTP/2 connection.
fn tail_client(endpoint: tonic::transport::Endpoint) -> TailClient<tonic::transport::Channel> {
    TailClient::new(endpoint.connect_lazy()).max_decoding_message_size(64 << 20)
}

/// Unix seconds now.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Edge {
    /// An edge of `config` (role `edge`): its store from `upstream` / `upstream_grpc`,
    /// tokens checked with the store's keys.
    pub fn new(config: Config) -> anyhow::Result<Arc<Edge>> {
        let upstream = config
            .upstream
            .clone()
            .ok_or_else(|| anyhow::anyhow!("invalid configuration: role edge needs upstream"))?;
        let proxy = proxy::Proxy::new(&upstream)?;
        let grpc = match &config.upstream_grpc {
            Some(g) => g.clone(),
            None => {
                let host = proxy.upstream.host().unwrap_or("127.0.0.1");
                format!("http://{host}:8081")
            }
        };
        let endpoint = tonic::transport::Endpoint::from_shared(grpc.clone())
            .map_err(|e| anyhow::anyhow!("invalid configuration: upstream_grpc {grpc:?}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        // One HTTP/2 connection carries every deployment's subscription.
        let tail = tail_client(endpoint);
        let replicas = match config.store_replicas.is_empty() {
            true => None,
            false => Some(Arc::new(crate::cluster::Replicas::new(
                &config.store_replicas,
            )?)),
        };
        let (stop_routes, stop_rx) = tokio::sync::watch::channel(false);
        if let Some(r) = &replicas {
            r.spawn(stop_rx);
        }
        let auth = crate::auth::from_config(&config, false)?;
        let audit_metrics = Arc::new(Metrics::new());
        let subject = format!(
            "edge/{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into())
        );
        let edge = Arc::new_cyclic(|me: &std::sync::Weak<Edge>| {
            let me = me.clone();
            let write: crate::audit::RemoteWrite = Arc::new(move |events| {
                let me = me.clone();
                Box::pin(async move {
                    match me.upgrade() {
                        Some(edge) => edge.send_audit(events).await,
                        None => Err("the edge is stopping".into()),
                    }
                })
            });
            let audit = Audit::start_with(
                crate::audit::Sink::Remote(write),
                audit_metrics.clone(),
                config.audit_wait(),
                config.audit_aggregate_interval(),
                config.audit_queue,
            );
            Edge {
                proxy,
                tail,
                auth,
                audit,
                audit_metrics,
                metrics: EdgeMetrics::new(),
                process: crate::metrics::process_registry(),
                feeds: Mutex::new(HashMap::new()),
                counts: Mutex::new(Default::default()),
                heartbeat: AtomicU64::new(0),
                now: AtomicU64::new(unix_now()),
                expiries: Mutex::new(BTreeMap::new()),
                feedless: Mutex::new(Vec::new()),
                shutting_down: AtomicBool::new(false),
                tokens: Mutex::new(HashMap::new()),
                subject,
                config,
                replicas,
                owner_tails: Mutex::new(HashMap::new()),
                stop_routes,
            }
        });
        tokio::spawn(ticker(Arc::downgrade(&edge)));
        Ok(edge)
    }

    /// The client for `id`'s live upstream: its owner's in Kafka mode (when known),
    /// else the store Service's.
    pub fn tail_for(&self, id: &DeploymentId) -> TailClient<tonic::transport::Channel> {
        let Some(r) = &self.replicas else {
            return self.tail.clone();
        };
        let crate::cluster::Lookup::Served(owner) = r.lookup(&id.tenant, &id.deployment) else {
            r.poke();
            return self.tail.clone();
        };
        let mut tails = self.owner_tails.lock();
        if let Some(t) = tails.get(&owner.grpc) {
            return t.clone();
        }
        let Ok(endpoint) = tonic::transport::Endpoint::from_shared(owner.grpc.clone()) else {
            return self.tail.clone();
        };
        let t = tail_client(
            endpoint
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_while_idle(true),
        );
        tails.insert(owner.grpc, t.clone());
        t
    }

    /// An upstream failed: the owners may have changed (Kafka mode).
    pub fn reroute(&self) {
        if let Some(r) = &self.replicas {
            r.poke();
        }
    }

    /// The feed of `id`, joined (its upstream started if it is new).
    pub fn join(self: &Arc<Self>, id: &DeploymentId) -> Arc<Feed> {
        let mut feeds = self.feeds.lock();
        if let Some(f) = feeds.get(id) {
            f.join();
            return f.clone();
        }
        let feed = Arc::new(Feed::new(id.clone(), self.config.edge_window_bytes));
        feed.join();
        feeds.insert(id.clone(), feed.clone());
        share_windows(&self.config, &feeds);
        tokio::spawn(feed::upstream(self.clone(), feed.clone()));
        feed
    }

    /// Removes `feed` from the map if nobody holds it (under the map's lock, so no
    /// viewer joins it meanwhile). False: a viewer came back, keep going.
    fn retire(&self, feed: &Arc<Feed>) -> bool {
        let mut feeds = self.feeds.lock();
        if feed.viewers() > 0 {
            return false;
        }
        if feeds.get(&feed.id).is_some_and(|f| Arc::ptr_eq(f, feed)) {
            feeds.remove(&feed.id);
            share_windows(&self.config, &feeds);
        }
        true
    }

    /// A token for this edge's own requests to the store about `tenant` (reading,
    /// appending its audit records), signed with the shared key, renewed at half-life.
    pub fn token(&self, tenant: &str) -> String {
        let mut tokens = self.tokens.lock();
        if let Some((t, at)) = tokens.get(tenant)
            && at.elapsed() < EDGE_TOKEN_TTL / 2
        {
            return t.clone();
        }
        let t = self.auth.mint(
            &self.subject,
            tenant,
            &[Scope::Read, Scope::AuditWrite],
            EDGE_TOKEN_TTL,
            None,
        );
        tokens.insert(tenant.to_owned(), (t.clone(), Instant::now()));
        t
    }

    /// A token for `id`'s subscription alone: limited to that deployment, so each
    /// subscription is its own token to the store's `streams_per_token` limit, and read
    /// only.
    pub fn subscription_token(&self, id: &DeploymentId) -> String {
        self.auth.mint(
            &self.subject,
            &id.tenant,
            &[Scope::Read],
            EDGE_TOKEN_TTL,
            Some(vec![id.deployment.clone()]),
        )
    }

    /// Sends audit records to the store, one request per tenant (each with its token).
    async fn send_audit(&self, events: Vec<crate::audit::AuditEvent>) -> Result<(), String> {
        let mut by_tenant: BTreeMap<String, Vec<crate::audit::AuditEvent>> = BTreeMap::new();
        for e in events {
            by_tenant.entry(e.tenant.clone()).or_default().push(e);
        }
        for (tenant, events) in by_tenant {
            let body = serde_json::to_vec(&events).expect("events serialise");
            self.proxy
                .post_json("/v1/audit/events", &self.token(&tenant), body)
                .await?;
        }
        Ok(())
    }

    pub fn now(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }

    pub fn heartbeat(&self) -> u64 {
        self.heartbeat.load(Ordering::Relaxed)
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Wakes `waker` once Unix second `at` has passed (a token's expiry).
    pub fn wake_at(&self, at: u64, waker: &Waker) {
        self.expiries
            .lock()
            .entry(at)
            .or_default()
            .push(waker.clone());
    }

    /// Tells every viewer to reconnect (at shutdown).
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
        let _ = self.stop_routes.send(true);
        self.wake_everyone(true);
    }

    /// Wakes every viewer waiting on a feed, and those waiting with none (a `wait=true`
    /// the token may not see); at shutdown also those waiting for their expiry.
    fn wake_everyone(&self, expiries_too: bool) {
        let feeds: Vec<_> = self.feeds.lock().values().cloned().collect();
        for f in feeds {
            f.wake_all();
        }
        for w in std::mem::take(&mut *self.feedless.lock()) {
            w.wake();
        }
        if expiries_too {
            let all = std::mem::take(&mut *self.expiries.lock());
            for w in all.into_values().flatten() {
                w.wake();
            }
        }
    }

    /// Wakes `waker` at the next heartbeat (a viewer with no feed to wait on).
    pub fn wait_heartbeat(&self, waker: &Waker) {
        self.feedless.lock().push(waker.clone());
    }

    /// The text exposition of the edge's metrics.
    pub fn render_metrics(&self) -> String {
        let audit: Vec<_> = self
            .audit_metrics
            .registry
            .gather()
            .into_iter()
            .filter(|f| f.name().starts_with("logstream_audit_"))
            .collect();
        let mut families = self.metrics.registry.gather();
        families.extend(audit);
        families.extend(self.process.gather());
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&families, &mut out)
            .expect("text encoding");
        out
    }

    /// Takes a viewer slot (this edge's viewers against the limits) or says which
    /// limit is reached.
    fn take_slot(&self, id: &DeploymentId, token: String) -> crate::core::Result<Slot> {
        self.counts.lock().take(&self.config, id, &token)?;
        self.metrics.live.inc();
        Ok(Slot {
            id: id.clone(),
            token,
        })
    }

    fn free_slot(&self, slot: &Slot) {
        self.counts.lock().release(&slot.id, &slot.token);
        self.metrics.live.dec();
    }
}

/// Each followed deployment's window: `edge_window_bytes`, or an equal share of
/// `edge_windows_total_bytes` when that is smaller (at least 64 KiB).
fn window_share(config: &Config, feeds: usize) -> usize {
    (config.edge_windows_total_bytes / feeds.max(1))
        .clamp(64 << 10, config.edge_window_bytes.max(64 << 10))
}

fn share_windows(config: &Config, feeds: &HashMap<DeploymentId, Arc<Feed>>) {
    let share = window_share(config, feeds.len());
    for f in feeds.values() {
        f.set_limit(share);
    }
}

/// A viewer's place in the limits.
pub struct Slot {
    id: DeploymentId,
    token: String,
}

/// Once a second: the clock viewers read, token expiries due; every `heartbeat_secs`: a
/// heartbeat for every waiting viewer (one wake each, from this one task).
async fn ticker(edge: std::sync::Weak<Edge>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heartbeat = Instant::now();
    loop {
        tick.tick().await;
        let Some(edge) = edge.upgrade() else { return };
        let now = unix_now();
        edge.now.store(now, Ordering::Relaxed);
        let due = {
            let mut ex = edge.expiries.lock();
            let later = ex.split_off(&(now + 1));
            std::mem::replace(&mut *ex, later)
        };
        for w in due.into_values().flatten() {
            w.wake();
        }
        if last_heartbeat.elapsed() >= Duration::from_secs(edge.config.heartbeat_secs.max(1)) {
            last_heartbeat = Instant::now();
            edge.heartbeat.fetch_add(1, Ordering::Relaxed);
            edge.wake_everyone(false);
        }
    }
}

/// Serves role `edge` on `listener` until `stop`.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let edge = Edge::new(config)?;
    raw::serve(edge, listener, stop).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_share_the_total_and_never_go_below_64_kib() {
        let c = Config {
            edge_window_bytes: 8 << 20,
            edge_windows_total_bytes: 256 << 20,
            ..Config::default()
        };
        assert_eq!(window_share(&c, 1), 8 << 20);
        assert_eq!(window_share(&c, 32), 8 << 20);
        assert_eq!(window_share(&c, 64), 4 << 20);
        assert_eq!(window_share(&c, 1024), 256 << 10);
        assert_eq!(window_share(&c, 100_000), 64 << 10);
    }
}
