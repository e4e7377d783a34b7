//! Role `edge`: the stateless viewer front of a tenant, scaled by an HPA.
//!
//! An edge forwards every HTTP request to the tenant's store (`upstream`) and streams
//! the response back unbuffered: history pages, exports, SSE tails and WebSocket tails
//! (the upgrade is forwarded and the two connections are spliced). Authentication,
//! quotas and viewer limits are enforced by the store, which sees the original
//! `Authorization` header. The edge counts the live streams it carries
//! (`logstream_live_viewers`, the HPA's pods metric) and answers `/healthz`, `/readyz`
//! (the store answers) and `/metrics` itself.
//!
//! Not built yet (see docs/status.md): one multiplexed `Tail.Subscribe` upstream per
//! deployment with fan-out at the edge. Today every viewer is one upstream stream, so
//! the store still frames each viewer's events; edges add connection capacity, TLS and
//! slow-client buffering, not fan-out.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::{IntCounterVec, IntGauge, Registry};
use std::sync::Arc;
use std::time::Duration;

/// Shared state of an edge.
pub struct Edge {
    upstream: axum::http::Uri,
    client: Client<HttpConnector, Body>,
    registry: Registry,
    /// `process_*`.
    process: Registry,
    live: IntGauge,
    requests: IntCounterVec,
}

/// Hop-by-hop headers, never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [header::HeaderName; 6] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

impl Edge {
    /// An edge forwarding to `upstream` (`http://host:port`).
    pub fn new(upstream: &str) -> anyhow::Result<Arc<Edge>> {
        let uri: axum::http::Uri = upstream
            .parse()
            .map_err(|e| anyhow::anyhow!("invalid configuration: upstream {upstream:?}: {e}"))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            anyhow::bail!(
                "invalid configuration: upstream {upstream:?} must be http://host:port (the store Service)"
            );
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let registry = Registry::new_custom(Some("logstream".into()), None).expect("registry");
        let live = IntGauge::new(
            "live_viewers",
            "Live streams (SSE, WebSocket) this edge carries.",
        )
        .expect("metric");
        let requests = IntCounterVec::new(
            prometheus::Opts::new("edge_requests_total", "Requests forwarded, by outcome."),
            &["outcome"],
        )
        .expect("metric");
        registry.register(Box::new(live.clone())).expect("register");
        registry
            .register(Box::new(requests.clone()))
            .expect("register");
        Ok(Arc::new(Edge {
            upstream: uri,
            client,
            registry,
            process: crate::metrics::process_registry(),
            live,
            requests,
        }))
    }

    /// The edge's routes: its own probes and metrics, everything else forwarded.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route("/readyz", axum::routing::get(readyz))
            .route("/metrics", axum::routing::get(metrics))
            .fallback(forward)
            .with_state(self.clone())
    }

    fn upstream_uri(&self, path_and_query: &str) -> axum::http::Uri {
        let mut parts = self.upstream.clone().into_parts();
        parts.path_and_query = Some(
            path_and_query
                .parse()
                .unwrap_or_else(|_| "/".parse().expect("/")),
        );
        axum::http::Uri::from_parts(parts).expect("scheme and authority come from upstream")
    }
}

async fn readyz(State(edge): State<Arc<Edge>>) -> Response {
    let req = axum::http::Request::get(edge.upstream_uri("/readyz"))
        .body(Body::empty())
        .expect("request");
    match tokio::time::timeout(Duration::from_secs(2), edge.client.request(req)).await {
        Ok(Ok(r)) if r.status().is_success() => "ok".into_response(),
        Ok(Ok(r)) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_not_ready",
            &format!("the store answered {}", r.status()),
        ),
        Ok(Err(e)) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unreachable",
            &e.to_string(),
        ),
        Err(_) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unreachable",
            "no answer within 2 s",
        ),
    }
}

async fn metrics(State(edge): State<Arc<Edge>>) -> String {
    crate::metrics::render(&[&edge.registry, &edge.process])
}

fn problem(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<header::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| n.trim().parse().ok())
        .filter(|n| !(keep_upgrade && *n == header::UPGRADE))
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
    headers.remove("keep-alive");
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// Counts one live stream while its body is open.
struct LiveGuard(IntGauge);
impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn forward(State(edge): State<Arc<Edge>>, mut req: Request) -> Response {
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let client_upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut req));
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    parts.uri = edge.upstream_uri(&pq);
    parts.version = axum::http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, is_upgrade);
    if is_upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if let Some(ip) = peer {
        let xff = match parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            parts.headers.insert("x-forwarded-for", v);
        }
    }
    parts.headers.remove(header::HOST);
    let upstream_req = Request::from_parts(parts, body);
    let mut resp = match edge.client.request(upstream_req).await {
        Ok(r) => r,
        Err(e) => {
            edge.requests.with_label_values(&["upstream_error"]).inc();
            tracing::warn!(error = %e, "forwarding to the store failed");
            return problem(
                StatusCode::BAD_GATEWAY,
                "store_unreachable",
                "the edge could not reach the tenant's store; retry (live clients resume from their cursor)",
            );
        }
    };
    edge.requests.with_label_values(&["forwarded"]).inc();

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return problem(
                StatusCode::BAD_GATEWAY,
                "bad_upstream",
                "the store switched protocols unasked",
            );
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let live = edge.live.clone();
        tokio::spawn(async move {
            let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) else {
                return;
            };
            live.inc();
            let _guard = LiveGuard(live);
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
        let (mut parts, _) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        return Response::from_parts(parts, Body::empty());
    }

    let streaming = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    if streaming {
        edge.live.inc();
        let guard = LiveGuard(edge.live.clone());
        let body = http_body_util::BodyExt::map_frame(body, move |f| {
            let _ = &guard;
            f
        });
        return Response::from_parts(parts, Body::new(body));
    }
    Response::from_parts(parts, Body::new(body))
}
