//! The wiring: the HTTP and gRPC transports over the gateway core on one runtime, the
//! retention task, and graceful shutdown. The state itself is `crate::core::Gateway`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::core::Gateway;
use logstream_store::Outcome;

/// Bound listeners, so tests can bind port 0 and read the addresses.
pub struct Listeners {
    pub http: TcpListener,
    pub grpc: TcpListener,
}

impl Listeners {
    pub async fn bind(http: SocketAddr, grpc: SocketAddr) -> anyhow::Result<Listeners> {
        let h = TcpListener::bind(http)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {http} (--listen): {e}"))?;
        let g = TcpListener::bind(grpc)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {grpc} (--grpc-listen): {e}"))?;
        Ok(Listeners { http: h, grpc: g })
    }
}

/// Serves HTTP and gRPC until `stop` resolves, then shuts down gracefully: stops
/// accepting, tells live viewers to reconnect, lets in-flight requests finish.
pub async fn serve(
    state: Arc<Gateway>,
    listeners: Listeners,
    shutdown_tx: watch::Sender<bool>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut app = crate::http::app(state.clone());
    let mcp_stop = tokio_util::sync::CancellationToken::new();
    let verify: crate::mcp::Verify = {
        let state = state.clone();
        Arc::new(move |token, client| {
            let state = state.clone();
            Box::pin(async move {
                match token {
                    Ok(t) => state.authenticate(Ok(&t), client).await,
                    Err(e) => state.authenticate(Err(e), client).await,
                }
            })
        })
    };
    if let Some(mcp) = crate::mcp::routes(
        &state.config.mcp,
        listeners.http.local_addr()?,
        verify,
        mcp_stop.clone(),
    )? {
        app = app.merge(mcp);
    }
    let grpc = crate::grpc::routes(state.clone());
    let retention = tokio::spawn(retention_loop(state.clone()));
    let consumer = match state.kafka {
        Some(_) => Some(crate::kafka::start_consumer(state.clone())?),
        None => None,
    };
    if let Some(r) = &state.replicas {
        r.spawn(state.shutdown.clone());
    }
    let offload = state
        .config
        .object_store
        .as_ref()
        .map(|_| tokio::spawn(offload_loop(state.clone())));
    let idle = tokio::spawn(idle_loop(state.clone()));
    let catalog = tokio::spawn(catalog_loop(state.clone()));
    state.alerts.notifier().start();
    let alerts = tokio::spawn(state.alerts.clone().run(
        state.config.alerting.evaluation_interval(),
        state.shutdown.clone(),
    ));
    let (done_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut http_done = done_tx.subscribe();
    let mut grpc_done = done_tx.subscribe();
    let header_timeout = Duration::from_secs(state.config.header_read_timeout_secs);
    let http = serve_http(listeners.http, app, header_timeout, async move {
        let _ = http_done.recv().await;
    });
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listeners.grpc);
    let grpc = grpc.serve_with_incoming_shutdown(incoming, async move {
        let _ = grpc_done.recv().await;
    });
    tokio::spawn(async move {
        stop.await;
        tracing::info!("shutting down: live viewers are told to reconnect");
        let _ = shutdown_tx.send(true);
        mcp_stop.cancel();
        let _ = done_tx.send(());
    });
    let ((), g) = tokio::join!(http, grpc);
    if let Some(c) = consumer {
        // It sees the shutdown flag within a poll, commits and leaves the group.
        let _ = tokio::task::spawn_blocking(move || c.join()).await;
    }
    retention.abort();
    if let Some(o) = offload {
        o.abort();
    }
    idle.abort();
    catalog.abort();
    alerts.abort();
    let s = state.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.store.sync_catalog()).await {
        tracing::error!(error = %e, "writing the catalog at shutdown failed (the logs refill it at start)");
    }
    g?;
    Ok(())
}

/// Serves role `edge` on `listener` until `stop` (see `crate::edge`).
pub async fn serve_edge(
    config: &Config,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    crate::edge::serve(config.clone(), listener, stop).await
}

/// The next connection; a failed accept (out of descriptors and the like) is logged
/// and retried after a pause instead of spinning.
pub(crate) async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(c) => return c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The HTTP accept loop: hyper with a timer, so a client that does not finish its
/// request head within `header_timeout` is disconnected (slowloris); WebSocket upgrades;
/// the peer address for handlers (`ConnectInfo`); at `stop`, stop accepting and drain
/// the open connections (live streams end themselves with `reconnect`).
async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            c = accept(&listener) => c,
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = tower::ServiceExt::map_request(
            app.clone(),
            move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            },
        );
        let conn = builder.serve_connection_with_upgrades(
            TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(svc),
        );
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open 30 s after shutdown began; closing them");
    }
}

/// `[object_store]`: every `upload_interval`, uploads newly sealed segments and evicts
/// local copies past `local_cache_bytes`; every `sweep_interval`, deletes orphaned
/// objects. A failure is logged and shown in the metrics (`logstream_offload_failing`);
/// the next round retries.
async fn offload_loop(state: Arc<Gateway>) {
    let Some(cfg) = state.config.object_store.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(cfg.upload_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sweep = tokio::time::Instant::now();
    let mut failing = false;
    loop {
        tick.tick().await;
        let sweep = last_sweep.elapsed() >= cfg.sweep_interval();
        let s = state.clone();
        let budget = cfg.local_cache_bytes;
        let grace = cfg.orphan_grace();
        let result = tokio::task::spawn_blocking(move || {
            let pass = s.store.offload(|id| s.check_owner(id).is_ok());
            s.store.evict(budget);
            let swept = sweep.then(|| s.store.sweep(grace));
            (pass, swept)
        })
        .await;
        let Ok((pass, swept)) = result else {
            continue;
        };
        if pass.uploaded > 0 {
            tracing::info!(
                segments = pass.uploaded,
                bytes = pass.bytes,
                "uploaded sealed segments to object storage"
            );
        }
        match (&pass.error, failing) {
            (Some(e), false) => {
                tracing::warn!(error = %e, "uploading to object storage failed; sealed segments stay local and are retried")
            }
            (None, true) => tracing::info!("uploads to object storage work again"),
            _ => {}
        }
        failing = pass.error.is_some();
        if let Some(swept) = swept {
            last_sweep = tokio::time::Instant::now();
            if let Err(e) = swept {
                tracing::warn!(error = %e, "sweeping orphaned objects failed; retried later");
            }
        }
    }
}

/// Deletes expired segments every `retention_interval` (each deletion is audited) and
/// forgets the handles of idle completed logs.
async fn retention_loop(state: Arc<Gateway>) {
    let mut tick = tokio::time::interval(state.config.retention_interval());
    loop {
        tick.tick().await;
        let s = state.clone();
        let result = tokio::task::spawn_blocking(move || {
            let expired = s.store.expire(|t| s.config.retention_for(t));
            // Also forget idle completed logs (they reopen from disk when read).
            s.store.evict_idle();
            expired
        })
        .await;
        match result {
            Ok(Ok(deleted)) => {
                for d in deleted {
                    crate::core::links::invalidate(&state, &d.log);
                    state.metrics.retention_deleted_bytes.inc_by(d.bytes);
                    let result = format!(
                        "ok: seqs {}..={} ({} bytes)",
                        d.first_seq, d.last_seq, d.bytes
                    );
                    state.audit_later(
                        "retention_delete",
                        "retention",
                        &d.log.tenant,
                        &d.log.deployment,
                        &result,
                    );
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "retention pass failed"),
            Err(e) => tracing::error!(error = %e, "retention task panicked"),
        }
    }
}

/// Completes as `timed_out` every deployment nobody completed that got no line for its
/// tenant's `deployment_idle_timeout` (its runner died), so followers and `logs -f` end
/// instead of waiting forever. Looks a twentieth of the shortest timeout apart (between
/// 50 ms and a minute), through the catalog (deployments left open before a restart are
/// in it; no log is opened but the candidates).
async fn idle_loop(state: Arc<Gateway>) {
    let every = (state.config.shortest_deployment_idle_timeout() / 20)
        .clamp(Duration::from_millis(50), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = state.clone();
        let idle = tokio::task::spawn_blocking(move || {
            let now = s.store.hooks().clock.now();
            s.store.idle_running(|tenant| {
                let timeout = s.config.deployment_idle_timeout_for(tenant);
                now.saturating_sub(timeout.as_nanos() as i64)
            })
        })
        .await;
        let idle = match idle {
            Ok(Ok(idle)) => idle,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "looking for idle deployments failed");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "looking for idle deployments panicked");
                continue;
            }
        };
        for log in idle {
            // Kafka mode: a copy of a partition another replica owns now is not ours to
            // time out (its owner sees the deployment's real last line).
            if state.check_owner(&log.id).is_err() {
                continue;
            }
            let timeout = state.config.deployment_idle_timeout_for(&log.id.tenant);
            match crate::core::ingest::complete(
                &state,
                &log.id,
                Outcome::TimedOut,
                None,
                "idle_timeout",
            )
            .await
            {
                Ok(_) => {
                    state.metrics.deployments_timed_out.inc();
                    tracing::warn!(
                        tenant = %log.id.tenant,
                        deployment = %log.id.deployment,
                        timeout = ?timeout,
                        "no line and no completion for the idle timeout: completed as timed_out"
                    );
                }
                // Completed by its runner in the meantime.
                Err(e) if e.code == "deployment_completed" => {}
                Err(e) => tracing::error!(
                    tenant = %log.id.tenant,
                    deployment = %log.id.deployment,
                    error = %e.message,
                    "completing an idle deployment failed"
                ),
            }
        }
    }
}

/// Writes the catalog's pending progress every second (it also tells the change feed
/// which deployments changed), and once more at shutdown.
async fn catalog_loop(state: Arc<Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = state.clone();
        match tokio::task::spawn_blocking(move || s.store.sync_catalog()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "writing the catalog failed; retrying"),
            Err(e) => tracing::error!(error = %e, "writing the catalog panicked"),
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// A gateway serving in the background of this process (embedding and tests).
pub struct Running {
    /// `http://127.0.0.1:PORT`
    pub http: String,
    /// `http://127.0.0.1:PORT` of the gRPC listener.
    pub grpc: String,
    pub state: Arc<Gateway>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Binds `config.listen` / `config.grpc_listen` (port 0 picks free ports), opens the
    /// store and serves until `shutdown`.
    pub async fn start(config: Config) -> anyhow::Result<Running> {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let listeners = Listeners::bind(config.listen, config.grpc_listen).await?;
        let http = format!("http://{}", listeners.http.local_addr()?);
        let grpc = format!("http://{}", listeners.grpc.local_addr()?);
        let state = Gateway::open(config, shutdown_rx)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(state.clone(), listeners, shutdown_tx, async move {
            let _ = stopped.await;
        }));
        Ok(Running {
            http,
            grpc,
            state,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Graceful shutdown; waits for the servers to finish.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}
