//! What an edge does not serve itself goes to its store unchanged: ingest, history,
//! exports, lists, the change feed. The response streams back unbuffered; the store
//! sees the original `Authorization` header. The edge's own requests to the store
//! (history pages for catch-up, its audit records) go through the same client.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::Edge;

/// The HTTP client to the store.
pub struct Proxy {
    pub upstream: axum::http::Uri,
    client: Client<HttpConnector, Body>,
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

/// Largest store answer the edge reads whole (a history page of 1,000 lines is far
/// below).
const MAX_ANSWER: usize = 64 << 20;

impl Proxy {
    /// A client of the store at `upstream` (`http://host:port`).
    pub fn new(upstream: &str) -> anyhow::Result<Proxy> {
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
        Ok(Proxy {
            upstream: uri,
            client,
        })
    }

    fn uri(&self, path_and_query: &str) -> axum::http::Uri {
        let mut parts = self.upstream.clone().into_parts();
        parts.path_and_query = Some(
            path_and_query
                .parse()
                .unwrap_or_else(|_| "/".parse().expect("/")),
        );
        axum::http::Uri::from_parts(parts).expect("scheme and authority come from upstream")
    }

    /// GETs `path_and_query` with the edge's `token`: the status and the whole body.
    pub async fn get(
        &self,
        path_and_query: &str,
        token: &str,
    ) -> Result<(StatusCode, bytes::Bytes), String> {
        let req = axum::http::Request::get(self.uri(path_and_query))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request");
        self.call(req).await
    }

    /// POSTs a JSON `body` with the edge's `token`; `Err` unless the store answers 2xx.
    pub async fn post_json(&self, path: &str, token: &str, body: Vec<u8>) -> Result<(), String> {
        let req = axum::http::Request::post(self.uri(path))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .expect("request");
        match self.call(req).await? {
            (s, _) if s.is_success() => Ok(()),
            (s, b) => Err(format!(
                "the store answered {s}: {}",
                String::from_utf8_lossy(&b)
            )),
        }
    }

    async fn call(
        &self,
        req: axum::http::Request<Body>,
    ) -> Result<(StatusCode, bytes::Bytes), String> {
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .map_err(|_| "the store did not answer within 30 s".to_owned())?
            .map_err(|e| format!("the store is unreachable: {e}"))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the store's answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}

/// `/readyz`: ready when the store is.
pub async fn readyz(State(edge): State<Arc<Edge>>) -> Response {
    let req = axum::http::Request::get(edge.proxy.uri("/readyz"))
        .body(Body::empty())
        .expect("request");
    match tokio::time::timeout(Duration::from_secs(2), edge.proxy.client.request(req)).await {
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

/// Forwards a request the edge does not serve itself (see the module comment).
pub async fn forward(State(edge): State<Arc<Edge>>, req: Request) -> Response {
    match edge.proxy.relay(req, &edge.proxy.upstream).await {
        Ok(r) => {
            edge.metrics
                .requests
                .with_label_values(&["forwarded"])
                .inc();
            r
        }
        Err(e) => {
            edge.metrics
                .requests
                .with_label_values(&["upstream_error"])
                .inc();
            tracing::warn!(error = %e, "forwarding to the store failed");
            problem(
                StatusCode::BAD_GATEWAY,
                "store_unreachable",
                "the edge could not reach the tenant's store; retry (live clients resume from their cursor)",
            )
        }
    }
}

impl Proxy {
    /// Relays `req` to the server at `to` (scheme and authority) unchanged but for
    /// hop-by-hop headers and `X-Forwarded-For`; WebSocket upgrades are spliced. The
    /// response streams back unbuffered.
    pub async fn relay(
        &self,
        mut req: Request,
        to: &axum::http::Uri,
    ) -> Result<Response, hyper_util::client::legacy::Error> {
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
        let mut target = to.clone().into_parts();
        target.path_and_query = pq.parse().ok();
        parts.uri = axum::http::Uri::from_parts(target).unwrap_or_else(|_| self.uri(&pq));
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
        // The host the client asked for, for what the store answers with URLs (export
        // links): kept when a proxy in front already set it.
        if let Some(host) = parts.headers.remove(header::HOST)
            && !parts.headers.contains_key("x-forwarded-host")
        {
            parts.headers.insert("x-forwarded-host", host);
        }
        let upstream_req = Request::from_parts(parts, body);
        let mut resp = self.client.request(upstream_req).await?;

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return Ok(problem(
                    StatusCode::BAD_GATEWAY,
                    "bad_upstream",
                    "the store switched protocols unasked",
                ));
            };
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await)
                else {
                    return;
                };
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
            let (mut parts, _) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, true);
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            return Ok(Response::from_parts(parts, Body::empty()));
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}
