//! The HTTP API (the contract in ARCHITECTURE.md): ingest, completion, listing, history,
//! live streams over SSE and WebSocket, export, probes, metrics, OpenAPI.
//!
//! A thin transport over the core (`crate::core`): it parses requests, calls the core and
//! encodes answers. Every error leaves through the one `IntoResponse for Error` mapping
//! as `{"error":{"code","message"}}` with the right status; 500s carry a generic message
//! and the detail is logged once.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bookmarks as bm;
use futures::future::Either;
use futures::{SinkExt, StreamExt};
use logstream_model::{Cursor, Level, LogRecord, Stream};
use serde_json::json;

use logstream_model::wire::{self, ErrorBody};
use openapi::{AuditQuery, ExportQuery, FilterQuery, IngestQuery, PageQuery, StreamQuery};

use crate::audit::Need;
use crate::auth::{AuthError, Principal, Scope};
use crate::core::ingest::{self, IngestLine};
use crate::core::list as listing;
use crate::core::viewer::{Session, SessionEvent, Start, WaitEvent, Waiting};
use crate::core::{Error, ErrorKind, Gateway, Result, access, read};
use crate::hub::completion;
use crate::store::{DeploymentId, Direction};

mod bookmarks;
mod links;
mod openapi;

// === Errors: the one mapping from the core's error ===

/// The HTTP status of an error kind (every protocol served on the HTTP port uses it).
pub(crate) fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Unsupported => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::TooMany => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = status_of(self.kind);
        let body = ErrorBody::new(self.code, &self.message);
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(d) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(d.as_secs().max(1)));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

// === Auth ===

/// The authenticated caller, from `Authorization: Bearer` (or `Logstream-Authorization:
/// Bearer`, see `access::token_from_headers`; or `access_token` for stream/export GETs,
/// which browsers' EventSource cannot give headers).
pub struct Auth(pub Principal);

impl FromRequestParts<Arc<Gateway>> for Auth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Gateway>) -> Result<Auth> {
        let client = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let from_headers = header_token(&parts.headers);
        let query_token;
        let token = match from_headers {
            Some(t) => t,
            None => {
                let path = parts.uri.path();
                let query_ok = parts.method == axum::http::Method::GET
                    && (path.ends_with("/stream")
                        || path.ends_with("/export")
                        || path == "/v1/deployments/events");
                query_token = parts.uri.query().and_then(|q| {
                    url_pairs(q)
                        .into_iter()
                        .find(|(k, _)| k == "access_token")
                        .map(|(_, v)| v)
                });
                match &query_token {
                    Some(t) if query_ok => Ok(t.as_str()),
                    Some(_) => {
                        return Err(Error::invalid(
                            "access_token_not_allowed",
                            "access_token in the query is accepted only on GET .../stream and .../export; send an Authorization header",
                        ));
                    }
                    None => Err(AuthError::Missing),
                }
            }
        };
        state.authenticate(token, client).await.map(Auth)
    }
}

/// The caller of a request whose handler answers in another protocol's form (OTLP,
/// Loki): the token from the headers only.
pub(crate) async fn principal(state: &Gateway, parts: &Parts) -> Result<Principal> {
    let client = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let token = header_token(&parts.headers).unwrap_or(Err(AuthError::Missing));
    state.authenticate(token, client).await
}

/// The token of `Authorization` or `Logstream-Authorization` (`None`: neither is set).
fn header_token(headers: &HeaderMap) -> Option<std::result::Result<&str, AuthError>> {
    access::token_from_headers(
        headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
        headers
            .get(access::PROXY_SAFE_AUTHORIZATION)
            .map(|v| v.as_bytes()),
    )
}

/// The request's media type, lower case, without parameters ("" when none).
pub(crate) fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default()
}

// === Router ===

/// The HTTP application.
pub fn app(state: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/deployments", get(list))
        .route("/v1/deployments/events", get(changes))
        .route("/v1/deployments/{id}", get(get_one).delete(delete_one))
        .route("/v1/deployments/{id}/redactions", post(redactions))
        .route("/v1/deployments/{id}/logs", post(ingest_http).get(history))
        .route("/v1/deployments/{id}/complete", post(complete))
        .route("/v1/deployments/{id}/secrets", post(secrets))
        .route("/v1/deployments/{id}/stream", get(stream))
        .route("/v1/deployments/{id}/export", get(export))
        .route("/v1/deployments/{id}/export-links", post(links::create))
        .route(
            "/v1/shared/{tenant}/{deployment}/export",
            get(links::download),
        )
        .route(
            "/v1/deployments/{id}/bookmarks/{name}",
            put(bm::put).get(bm::get).delete(bm::del),
        )
        .route("/v1/alerts", get(alerts))
        .route("/v1/logs", post(crate::compat::otlp::http))
        .route("/loki/api/v1/push", post(crate::compat::loki::push))
        .route("/v1/audit", get(audit_log))
        .route("/v1/audit/events", post(audit_append))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/cluster", get(cluster))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .merge(crate::ui::routes())
        .fallback(|| async {
            Error::new(
                ErrorKind::NotFound,
                "no_such_route",
                "no such API path; see /openapi.json",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            to_owner,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts every request by route template (not its path: ids would explode the label
/// set), method and status, with its latency to the response head.
async fn observe(
    State(s): State<Arc<Gateway>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let method = req.method().clone();
    let response = next.run(req).await;
    s.metrics.http(
        &route,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Marks a request one replica forwarded to another (it is never forwarded again).
const FORWARDED: &str = "logstream-forwarded";

/// Kafka mode: a request about one deployment whose partition another replica serves
/// goes to that replica (one hop; without a known owner the handler answers
/// `not_owner`, retryable).
async fn to_owner(
    State(s): State<Arc<Gateway>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (Some(kafka), Some(replicas)) = (&s.kafka, &s.replicas) else {
        return next.run(req).await;
    };
    // `/v1/deployments/{id}/..` (the tenant from the token) or an export link's
    // `/v1/shared/{tenant}/{deployment}/..` (no token; the link's signature is checked by
    // whichever replica serves it).
    let (tenant, deployment) = {
        let mut seg = req.uri().path().split('/').skip(1);
        match (seg.next(), seg.next(), seg.next(), seg.next()) {
            (Some("v1"), Some("deployments"), Some(id), _) if id != "events" => {
                (None, id.to_owned())
            }
            (Some("v1"), Some("shared"), Some(t), Some(d)) => (Some(t.to_owned()), d.to_owned()),
            _ => return next.run(req).await,
        }
    };
    if req.headers().contains_key(FORWARDED) {
        return next.run(req).await;
    }
    let tenant = match tenant {
        Some(t) => t,
        None => {
            let token = header_token(req.headers());
            // EventSource and download links carry it in the query (where the handlers allow).
            let query_token = req.uri().query().and_then(|q| {
                serde_urlencoded::from_str::<Vec<(String, String)>>(q)
                    .ok()?
                    .into_iter()
                    .find(|(k, _)| k == "access_token")
                    .map(|(_, v)| v)
            });
            let token = match (token, &query_token) {
                (Some(t), _) => t,
                (None, Some(q)) => Ok(q.as_str()),
                (None, None) => return next.run(req).await,
            };
            // Not routable without a tenant: the handler refuses the token itself.
            let Ok(token) = token else {
                return next.run(req).await;
            };
            let Ok(p) = s.auth.verify_request(token).await else {
                return next.run(req).await;
            };
            p.tenant
        }
    };
    let id = crate::store::DeploymentId::new(tenant, deployment);
    if kafka.serves(&id) {
        return next.run(req).await;
    }
    let owner = match replicas.lookup(&id.tenant, &id.deployment) {
        crate::cluster::Lookup::Served(o) if o.http != kafka.advertise_url => o,
        _ => {
            replicas.poke();
            return next.run(req).await;
        }
    };
    let Ok(to) = owner.http.parse::<axum::http::Uri>() else {
        return next.run(req).await;
    };
    let mut req = req;
    req.headers_mut()
        .insert(FORWARDED, header::HeaderValue::from_static("1"));
    match replicas.proxy.relay(req, &to).await {
        Ok(r) => r,
        Err(e) => {
            replicas.poke();
            Error::not_owner(&format!(
                "the store replica that owns deployment {} did not answer ({e})",
                id.deployment
            ))
            .into_response()
        }
    }
}

/// Kafka mode: the partitions this replica owns, for edges and peers to route by.
#[utoipa::path(get, path = "/v1/cluster", security(()), responses((status = 200, description = "This replica's partitions", body = crate::cluster::ClusterState), (status = 404, description = "Not in Kafka mode", body = ErrorBody)))]
async fn cluster(State(s): State<Arc<Gateway>>) -> Result<Response> {
    let Some(k) = &s.kafka else {
        return Err(Error::new(
            ErrorKind::NotFound,
            "not_kafka_mode",
            "this gateway runs without [kafka]: one store holds every deployment",
        ));
    };
    let mut tenants: Vec<crate::cluster::TenantPartitions> = k
        .topics()
        .iter()
        .map(|(tenant, n)| {
            let owned = k.ownership.of(tenant);
            let pick = |want| {
                owned
                    .iter()
                    .filter(|(_, st)| *st == want)
                    .map(|(p, _)| *p)
                    .collect()
            };
            crate::cluster::TenantPartitions {
                tenant: tenant.clone(),
                topic: k.config.topic(tenant),
                partitions: *n,
                serving: pick(crate::kafka::PartitionState::Serving),
                catching_up: pick(crate::kafka::PartitionState::CatchingUp),
            }
        })
        .collect();
    tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    Ok(axum::Json(crate::cluster::ClusterState {
        replica: k.advertise_url.clone(),
        grpc: k.advertise_grpc.clone(),
        tenants,
    })
    .into_response())
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, description = "ok", content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", security(()), responses((status = 200, description = "ready"), (status = 503, description = "shutting down", body = ErrorBody)))]
async fn readyz(State(s): State<Arc<Gateway>>) -> Response {
    if *s.shutdown.borrow() {
        return Error::shutting_down("the gateway is shutting down").into_response();
    }
    if let Some(k) = &s.kafka {
        if k.stalled.load(std::sync::atomic::Ordering::Relaxed) {
            return Error::unavailable(
                "kafka_apply_failing",
                "this store replica cannot consume or apply its partitions' records (see its log: a full or broken disk, or the group or topic ACLs for kafka.group and the tenants' topics); its partitions are not served here until it can",
                std::time::Duration::from_secs(5),
            )
            .into_response();
        }
        let k = k.clone();
        let up = tokio::task::spawn_blocking(move || k.reachable())
            .await
            .unwrap_or(false);
        if !up {
            return Error::unavailable(
                "kafka_unreachable",
                "the Kafka brokers (kafka.brokers) do not answer: ingest is refused until they do",
                std::time::Duration::from_secs(2),
            )
            .into_response();
        }
    }
    "ready".into_response()
}

#[utoipa::path(get, path = "/metrics", security(()), responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
async fn metrics(State(s): State<Arc<Gateway>>) -> Response {
    s.metrics.store_bytes.set(s.store.known_bytes() as i64);
    s.metrics.open_logs.set(s.store.open_logs() as i64);
    if let Some(t) = s.store.tier_stats() {
        s.metrics.set_offload(&t);
    }
    s.metrics
        .known_deployments
        .set(s.store.catalog().len() as i64);
    let now = s.store.hooks().clock.now();
    let (m, summary) = (&s.metrics, s.store.catalog().summary());
    m.open_deployments
        .set(summary.iter().map(|t| t.running as i64).sum());
    m.tenant_bytes.reset();
    m.oldest_line_age.reset();
    m.retention_limit.reset();
    let slack = s.config.segment_max_age() + s.config.retention_interval();
    for t in summary {
        m.tenant_bytes
            .with_label_values(&[&t.tenant])
            .set(t.bytes as i64);
        m.retention_limit
            .with_label_values(&[&t.tenant])
            .set((s.config.retention_for(&t.tenant) + slack).as_secs() as i64);
        if let Some(ts) = t.oldest_ts {
            m.oldest_line_age
                .with_label_values(&[&t.tenant])
                .set((now - ts).max(0) / 1_000_000_000);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/openapi.json", security(()), responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json")))]
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::document(),
    )
        .into_response()
}

// === Ingest ===

pub(crate) async fn read_body(state: &Gateway, headers: &HeaderMap, body: Body) -> Result<Vec<u8>> {
    let max = state.config.max_body_bytes;
    let too_large = || {
        Error::new(
            ErrorKind::TooLarge,
            "body_too_large",
            format!("the request body is over {max} bytes (max_body_bytes); send smaller batches"),
        )
    };
    let raw = axum::body::to_bytes(body, max)
        .await
        .map_err(|_| too_large())?;
    match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?"))
    {
        None | Some("identity") => Ok(raw.to_vec()),
        Some("gzip") => {
            let mut out = Vec::new();
            let mut dec = flate2::read::GzDecoder::new(&raw[..]).take(max as u64 + 1);
            dec.read_to_end(&mut out).map_err(|e| {
                Error::invalid(
                    "bad_gzip",
                    format!("the gzip body does not decompress: {e}"),
                )
            })?;
            if out.len() > max {
                return Err(too_large());
            }
            Ok(out)
        }
        Some(other) => Err(Error::new(
            ErrorKind::Unsupported,
            "unsupported_encoding",
            format!("Content-Encoding {other:?} is not supported; use gzip or none"),
        )),
    }
}

fn parse_ts(v: &serde_json::Value, line: usize) -> Result<i64> {
    let bad = || {
        Error::invalid(
            "invalid_line",
            format!(
                "line {line}: ts must be RFC 3339 (\"2024-01-02T03:04:05Z\") or a Unix time number (s, ms or ns)"
            ),
        )
    };
    match v {
        serde_json::Value::String(s) => logstream_model::time::parse_rfc3339(s).ok_or_else(bad),
        serde_json::Value::Number(n) => {
            let n = n.as_i64().ok_or_else(bad)?;
            Ok(match n.unsigned_abs() {
                0..100_000_000_000 => n * 1_000_000_000,
                100_000_000_000..100_000_000_000_000 => n * 1_000_000,
                _ => n,
            })
        }
        serde_json::Value::Null => Ok(0),
        _ => Err(bad()),
    }
}

fn parse_ndjson(body: &[u8]) -> Result<Vec<IngestLine>> {
    let mut out = Vec::new();
    for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let l: wire::IngestLine = serde_json::from_slice(raw).map_err(|e| {
            Error::invalid(
                "invalid_json",
                format!("line {n}: not a JSON object with a \"message\" string: {e}"),
            )
        })?;
        let message = l.message.ok_or_else(|| {
            Error::invalid("invalid_line", format!("line {n}: \"message\" is missing"))
        })?;
        let stream = match l.stream.as_deref() {
            None => Stream::Stdout,
            Some(s) => Stream::parse(s).ok_or_else(|| {
                Error::invalid(
                    "invalid_line",
                    format!("line {n}: stream {s:?} is not stdout or stderr"),
                )
            })?,
        };
        let level = match l.level.as_deref() {
            None | Some("") => None,
            Some(s) => Some(Level::parse(s).ok_or_else(|| Error::invalid("invalid_line", format!("line {n}: level {s:?} is not a level (trace, debug, info, warn, error, fatal)")))?),
        };
        let ts =
            l.ts.as_ref()
                .map(|v| parse_ts(v, n))
                .transpose()?
                .unwrap_or(0);
        out.push(IngestLine {
            ts,
            step: l.step.unwrap_or_default(),
            stream,
            level,
            message,
            metadata: Default::default(),
        });
    }
    Ok(out)
}

fn parse_text(body: &[u8], step: &str, stream: Stream) -> Result<Vec<IngestLine>> {
    let text = std::str::from_utf8(body).map_err(|e| {
        Error::invalid(
            "invalid_utf8",
            format!(
                "text/plain body is not UTF-8 (at byte {}); send UTF-8 or use NDJSON",
                e.valid_up_to()
            ),
        )
    })?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    if text.is_empty() {
        return Ok(Vec::new());
    }
    Ok(text
        .split('\n')
        .map(|l| IngestLine {
            ts: 0,
            step: step.to_owned(),
            stream,
            level: None,
            message: l.strip_suffix('\r').unwrap_or(l).to_owned(),
            metadata: Default::default(),
        })
        .collect())
}

#[utoipa::path(post, path = "/v1/deployments/{id}/logs", summary = "Ingest lines; the answer comes once they are durable", params(("id" = String, Path, description = "Deployment id: [A-Za-z0-9][A-Za-z0-9._-]{0,127}"), IngestQuery, ("Logstream-Source" = Option<String>, Header, description = "With Logstream-Batch: a retried batch is stored once"), ("Logstream-Batch" = Option<u64>, Header)), request_body(content((Vec<wire::IngestLine> = "application/x-ndjson"), (String = "text/plain")), description = "NDJSON lines, or plain text lines (gzip with Content-Encoding)"), responses((status = 200, description = "Durable", body = wire::IngestReply), (status = "default", description = "An error: its code says what was wrong and how to fix it", body = ErrorBody)))]
async fn ingest_http(
    State(s): State<Arc<Gateway>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let id = access::deployment(&p, &id, Scope::Write)?;
    for k in q.keys() {
        if !matches!(k.as_str(), "step" | "stream") {
            return Err(Error::invalid(
                "unknown_parameter",
                format!(
                    "unknown query parameter {k:?}; ingest takes step and stream (for text/plain)"
                ),
            ));
        }
    }
    let ctype = media_type(&headers);
    let started = Instant::now();
    let body = read_body(&s, &headers, body).await?;
    let lines = match ctype.as_str() {
        "application/x-ndjson"
        | "application/jsonl"
        | "application/json"
        | "application/x-jsonlines" => parse_ndjson(&body)?,
        "text/plain" | "" => {
            let stream = match q.get("stream") {
                None => Stream::Stdout,
                Some(v) => Stream::parse(v).ok_or_else(|| {
                    Error::invalid(
                        "invalid_parameter",
                        format!("stream {v:?} is not stdout or stderr"),
                    )
                })?,
            };
            parse_text(&body, q.get("step").map_or("", String::as_str), stream)?
        }
        other => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "unsupported_media_type",
                format!(
                    "Content-Type {other:?} is not accepted; use application/x-ndjson or text/plain"
                ),
            ));
        }
    };
    let batch = match (
        headers.get("logstream-source"),
        headers.get("logstream-batch"),
    ) {
        (None, None) => None,
        (Some(src), Some(b)) => {
            let source = src
                .to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.len() <= 256)
                .ok_or_else(|| {
                    Error::invalid(
                        "invalid_header",
                        "Logstream-Source must be 1 to 256 visible ASCII characters",
                    )
                })?;
            let batch_id = b
                .to_str()
                .ok()
                .and_then(|b| b.parse().ok())
                .ok_or_else(|| {
                    Error::invalid(
                        "invalid_header",
                        "Logstream-Batch must be an unsigned integer",
                    )
                })?;
            Some(crate::store::BatchId {
                source: source.to_owned(),
                batch_id,
            })
        }
        _ => {
            return Err(Error::invalid(
                "invalid_header",
                "send Logstream-Source and Logstream-Batch together (or neither)",
            ));
        }
    };
    let reply = ingest::append(&s, &id, lines, batch, started).await?;
    Ok(axum::Json(wire::IngestReply {
        accepted: reply.accepted,
        cursor: reply.cursor,
        first_seq: reply.first_seq,
        last_seq: reply.last_seq,
        duplicate: reply.duplicate,
    })
    .into_response())
}

/// Reads a (possibly gzipped) JSON body; a bad one is a 400 showing the `expected` shape.
async fn json_body<T: serde::de::DeserializeOwned>(
    s: &Gateway,
    headers: &HeaderMap,
    body: Body,
    expected: &str,
) -> Result<T> {
    let body = read_body(s, headers, body).await?;
    serde_json::from_slice(&body)
        .map_err(|e| Error::invalid("invalid_json", format!("expected {expected}: {e}")))
}

#[utoipa::path(post, path = "/v1/deployments/{id}/complete", summary = "Complete a deployment: seals its log, ends its viewers' sessions", params(("id" = String, Path)), request_body = wire::CompleteRequest, responses((status = 200, description = "Completed", body = wire::Completion), (status = "default", description = "An error: its code says what was wrong and how to fix it", body = ErrorBody)))]
async fn complete(
    State(s): State<Arc<Gateway>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let id = access::deployment(&p, &id, Scope::Write)?;
    let b: wire::CompleteRequest = json_body(
        &s,
        &headers,
        body,
        r#"{"status":"succeeded|failed|cancelled|timed_out","exit_code":N}"#,
    )
    .await?;
    let status = ingest::parse_status(&b.status)?;
    let c = ingest::complete(&s, &id, status, b.exit_code, &p.subject).await?;
    Ok(axum::Json(completion(&c)).into_response())
}

/// Masks leaked bytes in stored lines: the store rewrites the blocks and records the
/// rewrite in the deployment's ledger (`store verify` names it); audited.
#[utoipa::path(post, path = "/v1/deployments/{id}/redactions", summary = "Mask leaked bytes in stored lines (scope logs:admin): the blocks are rewritten and the rewrite recorded in the hash chain's ledger; audited", params(("id" = String, Path)), request_body = wire::RedactionRequest, responses((status = 200, description = "What was masked", body = wire::RedactionReply), (status = "default", description = "An error: its code says what was wrong and how to fix it", body = ErrorBody)))]
async fn redactions(
    State(s): State<Arc<Gateway>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let lid = access::deployment(&p, &id, Scope::LogsAdmin)?;
    let b: wire::RedactionRequest = json_body(
        &s,
        &headers,
        body,
        r#"{"seqs":"A-B","match":"REGEX","reason":"why"} (seqs and/or match)"#,
    )
    .await?;
    let req = crate::core::hotfix::parse(&b, &p.subject)?;
    let reply = crate::core::hotfix::redact(&s, &p, &lid, req).await?;
    Ok(axum::Json(reply).into_response())
}

#[utoipa::path(delete, path = "/v1/deployments/{id}", summary = "Delete a deployment and every line of it (scope logs:admin); audited", params(("id" = String, Path), ("reason" = String, Query, description = "Why (required; recorded in the audit log)")), responses((status = 200, description = "Deleted", body = wire::Deleted), (status = "default", description = "An error: its code says what was wrong and how to fix it", body = ErrorBody)))]
async fn delete_one(
    State(s): State<Arc<Gateway>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let lid = access::deployment(&p, &id, Scope::LogsAdmin)?;
    let reason = q.get("reason").map(String::as_str).unwrap_or("");
    crate::core::hotfix::delete(&s, &p, &lid, reason).await?;
    Ok(axum::Json(wire::Deleted {
        deployment: id,
        deleted: true,
    })
    .into_response())
}

/// Registers values to mask in this deployment's later lines. Write-only: the values are
/// held in memory for the running deployment and never stored or returned.
#[utoipa::path(post, path = "/v1/deployments/{id}/secrets", summary = "Register values to mask in this deployment's later lines (write-only, held in memory)", params(("id" = String, Path)), request_body = wire::SecretsRequest, responses((status = 200, description = "Registered", body = wire::SecretsReply), (status = "default", description = "An error: its code says what was wrong and how to fix it", body = ErrorBody)))]
async fn secrets(
    State(s): State<Arc<Gateway>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let lid = access::deployment(&p, &id, Scope::Write)?;
    let b: wire::SecretsRequest = json_body(&s, &headers, body, r#"{"values":["..."]}"#).await?;
    if b.values.is_empty() || b.values.len() > 1000 {
        return Err(Error::invalid("invalid_secrets", "send 1 to 1000 values"));
    }
    if let Some(i) = b.values.iter().position(|v| v.len() < 4 || v.len() > 4096) {
        return Err(Error::invalid(
            "invalid_secrets",
            format!(
                "values[{i}] must be 4 to 4096 bytes long (shorter values would mask ordinary text)"
            ),
        ));
    }
    let (s2, l2) = (s.clone(), lid.clone());
    let log = read::blocking(move || s2.store.log(&l2, true))
        .await?
        .expect("created");
    if log.completion().is_some() {
        return Err(Error::conflict(
            "deployment_completed",
            "the deployment has completed; there are no later lines to mask",
        ));
    }
    // Recorded before it takes effect: no registration without its audit record.
    s.audit(
        Need::Durable,
        "register_secrets",
        &p.subject,
        &lid.tenant,
        &lid.deployment,
        &format!("ok: {} values", b.values.len()),
        None,
    )
    .await?;
    let redactor = s.stream_redactor(&lid);
    let mut r = redactor.lock();
    for v in &b.values {
        r.add_mask(v)
            .map_err(|e| Error::invalid("invalid_secrets", e.to_string()))?;
    }
    Ok(axum::Json(wire::SecretsReply {
        registered: b.values.len() as u64,
    })
    .into_response())
}

// === Reading ===

#[utoipa::path(get, path = "/v1/deployments", summary = "The tenant's deployments, newest first, in pages (from the catalog)", params(ListParams), responses((status = 200, description = "A page; pass next_cursor as cursor for the next one", body = wire::DeploymentList), (status = "default", description = "An error: its code says what was wrong and how to fix it", body = ErrorBody)))]
async fn list(
    State(s): State<Arc<Gateway>>,
    Auth(p): Auth,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response> {
    access::require(&p, Scope::Read)?;
    let query = listing::params(&q)?;
    let mut body = listing::list(&s, &p, &query);
    // Every replica lists the deployments it serves: gather theirs.
    if let Some(others) = gather::<wire::DeploymentList>(&s, &headers, &uri).await? {
        body = listing::merge(std::iter::once(body).chain(others).collect(), query.limit);
    }
    s.audit(
        Need::Accepted,
        "list",
        &p.subject,
        &p.tenant,
        "",
        "ok",
        None,
    )
    .await?;
    Ok(axum::Json(body).into_response())
}

#[utoipa::path(get, path = "/v1/alerts", summary = "The tenant's log alerts (pending, firing, recently resolved) and its receivers' delivery record", params(AlertParams), responses((status = 200, description = "Alerts sorted by rule and deployment", body = wire::AlertList), (status = "default", description = "An error: its code says what was wrong and how to fix it", body = ErrorBody)))]
async fn alerts(
    State(s): State<Arc<Gateway>>,
    Auth(p): Auth,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response> {
    access::require(&p, Scope::Read)?;
    if let Some(bad) = q
        .keys()
        .find(|k| !["state", "deployment"].contains(&k.as_str()))
    {
        return Err(Error::invalid(
            "invalid_parameter",
            format!("unknown parameter {bad:?}; use state and deployment"),
        ));
    }
    let states: Option<Vec<&str>> = q
        .get("state")
        .map(|v| v.split(',').map(str::trim).collect());
    if let Some(bad) = states
        .iter()
        .flatten()
        .find(|v| !["pending", "firing", "resolved"].contains(v))
    {
        return Err(Error::invalid(
            "invalid_parameter",
            format!("state {bad:?}: use pending, firing or resolved (comma-separated)"),
        ));
    }
    let mut body = wire::AlertList {
        alerts: s
            .alerts
            .list(&p.tenant)
            .into_iter()
            .filter(|a| p.may_access(&a.deployment))
            .filter(|a| {
                states
                    .as_ref()
                    .is_none_or(|st| st.contains(&a.state.as_str()))
            })
            .filter(|a| q.get("deployment").is_none_or(|d| &a.deployment == d))
            .collect(),
        receivers: s.alerts.notifier().status(&p.tenant),
    };
    // Each replica evaluates the deployments it stores and delivers their notices.
    for other in gather::<wire::AlertList>(&s, &headers, &uri)
        .await?
        .unwrap_or_default()
    {
        body.alerts.extend(other.alerts);
        for r in other.receivers {
            match body.receivers.iter_mut().find(|x| x.name == r.name) {
                Some(x) => {
                    x.sent += r.sent;
                    x.failed += r.failed;
                    if r.last_error_at > x.last_error_at {
                        (x.last_error, x.last_error_at) = (r.last_error, r.last_error_at);
                    }
                    x.last_sent_at = x.last_sent_at.take().max(r.last_sent_at);
                }
                None => body.receivers.push(r),
            }
        }
    }
    body.alerts
        .sort_by(|a, b| (&a.rule, &a.deployment).cmp(&(&b.rule, &b.deployment)));
    s.audit(
        Need::Accepted,
        "alerts",
        &p.subject,
        &p.tenant,
        "",
        "ok",
        None,
    )
    .await?;
    Ok(axum::Json(body).into_response())
}

/// Query parameters of the alerts listing.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents the query string; the handler reads it as a map
struct AlertParams {
    /// Comma-separated: pending, firing, resolved. Default: all three.
    state: Option<String>,
    /// Only this deployment's alerts.
    deployment: Option<String>,
}

/// Kafka mode with store replicas, asked by a client (not by another replica): the
/// same request's answers from every other replica (each serves its own partitions).
/// `None` elsewhere.
async fn gather<T: serde::de::DeserializeOwned>(
    s: &Gateway,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Result<Option<Vec<T>>> {
    let (Some(k), Some(r)) = (&s.kafka, &s.replicas) else {
        return Ok(None);
    };
    if headers.contains_key(FORWARDED) {
        return Ok(None);
    }
    let pq = uri.path_and_query().map_or(uri.path(), |x| x.as_str());
    let auth = headers
        .get(header::AUTHORIZATION)
        .or_else(|| headers.get(access::PROXY_SAFE_AUTHORIZATION))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let others = r
        .gather(&k.advertise_url, pq, auth, FORWARDED)
        .await
        .map_err(|why| Error::not_owner(&format!("the answer is incomplete: {why}")))?;
    others
        .iter()
        .map(|b| {
            serde_json::from_slice(b).map_err(|e| {
                Error::not_owner(&format!("a store replica answered {} with {e}", uri.path()))
            })
        })
        .collect::<Result<Vec<T>>>()
        .map(Some)
}

/// Query parameters of the deployments listing.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents the query string; the handler reads it as a map
struct ListParams {
    /// Page size, 1 to 1000. Default 100.
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Comma-separated: running, succeeded, failed, cancelled, timed_out, completed (any
    /// of the four ends).
    status: Option<String>,
    /// Only deployments with a line or a change since: a duration (`24h`) or RFC 3339.
    since: Option<String>,
    /// Only ids containing this (case-insensitive).
    q: Option<String>,
}

#[utoipa::path(get, path = "/v1/deployments/events", summary = "Change feed of the tenant's deployments (SSE)", responses((status = 200, description = "event: created|updated|completed|deleted (data = a Deployment; updated at most once a second per deployment), event: resync (the feed fell behind: list again), event: auth_expired, event: reconnect, `: hb` comments", content_type = "text/event-stream"), (status = "default", description = "An error: its code says what was wrong and how to fix it", body = ErrorBody)))]
async fn changes(
    State(s): State<Arc<Gateway>>,
    Auth(p): Auth,
    headers: axum::http::HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    access::require(&p, Scope::Read)?;
    if let Some(k) = q.keys().find(|k| *k != "access_token") {
        return Err(Error::invalid(
            "unknown_parameter",
            format!("unknown query parameter {k:?}; this endpoint takes none"),
        ));
    }
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !wants_sse {
        return Err(Error::new(
            ErrorKind::NotAcceptable,
            "not_acceptable",
            "ask for Server-Sent Events with `Accept: text/event-stream`",
        ));
    }
    s.audit(
        Need::Accepted,
        "watch_deployments",
        &p.subject,
        &p.tenant,
        "",
        "ok",
        None,
    )
    .await?;
    let rx = s.hub.subscribe_changes(&p.tenant);
    // Kafka mode: the other replicas' changes too (each has its partitions').
    let remote = match (&s.kafka, &s.replicas) {
        (Some(k), Some(r)) if !headers.contains_key(FORWARDED) => {
            let auth = headers
                .get(header::AUTHORIZATION)
                .or_else(|| headers.get(access::PROXY_SAFE_AUTHORIZATION))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .or_else(|| q.get("access_token").map(|t| format!("Bearer {t}")))
                .unwrap_or_default();
            Some(r.follow_changes(&k.advertise_url, auth, FORWARDED))
        }
        _ => None,
    };
    let feed = ChangeFeed {
        rx,
        remote,
        heartbeat: tokio::time::interval(Duration::from_secs(s.config.heartbeat_secs.max(1))),
        shutdown: s.shutdown.clone(),
        expires: Duration::from_secs(
            p.expires_at
                .saturating_sub((read::now_ns() / 1_000_000_000).max(0) as u64),
        ),
        started: tokio::time::Instant::now(),
        principal: p,
        done: false,
    };
    let first = Bytes::from_static(b"retry: 1000\n\n");
    let body = Body::from_stream(
        futures::stream::once(async move { Ok::<_, Infallible>(first) }).chain(
            futures::stream::unfold(feed, |mut f| async move {
                let chunk = f.next().await?;
                Some((Ok(chunk), f))
            }),
        ),
    );
    Ok(sse_response(body))
}

/// One change-feed connection: the tenant's changes its token may see, heartbeats, and
/// an end at token expiry or shutdown.
struct ChangeFeed {
    rx: tokio::sync::broadcast::Receiver<Arc<crate::hub::DeploymentChange>>,
    /// Kafka mode: the other replicas' events, whole.
    remote: Option<tokio::sync::mpsc::Receiver<Bytes>>,
    heartbeat: tokio::time::Interval,
    shutdown: tokio::sync::watch::Receiver<bool>,
    expires: Duration,
    started: tokio::time::Instant,
    principal: crate::auth::Principal,
    done: bool,
}

impl ChangeFeed {
    async fn next(&mut self) -> Option<Bytes> {
        use crate::store::CatalogEvent;
        if self.done {
            return None;
        }
        loop {
            let expiry = tokio::time::sleep_until(self.started + self.expires);
            let change = tokio::select! {
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(b": hb\n\n")),
                _ = expiry => {
                    self.done = true;
                    return Some(Bytes::from_static(b"event: auth_expired\ndata: {\"message\":\"the token expired; reconnect with a fresh token\"}\n\n"));
                }
                _ = self.shutdown.wait_for(|s| *s) => {
                    self.done = true;
                    return Some(Bytes::from_static(b"event: reconnect\ndata: {\"message\":\"the gateway is restarting; reconnect and list again\"}\n\n"));
                }
                c = self.rx.recv() => c,
                Some(event) = async {
                    match &mut self.remote {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                } => return Some(event),
            };
            let c = match change {
                Ok(c) => c,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    return Some(Bytes::from_static(b"event: resync\ndata: {\"message\":\"changes were missed; list the deployments again\"}\n\n"));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            if !self.principal.may_access(&c.deployment) {
                continue;
            }
            let event = match c.event {
                CatalogEvent::Created => "created",
                CatalogEvent::Updated => "updated",
                CatalogEvent::Completed => "completed",
                CatalogEvent::Deleted => "deleted",
            };
            let body = serde_json::to_string(&listing::deployment(&c.deployment, &c.stats))
                .expect("a deployment serialises");
            return Some(Bytes::from(format!("event: {event}\ndata: {body}\n\n")));
        }
    }
}

#[utoipa::path(get, path = "/v1/deployments/{id}", summary = "One deployment's status and counts", params(("id" = String, Path)), responses((status = 200, description = "Deployment", body = wire::Deployment), (status = "default", description = "An error: its code says what was wrong and how to fix it", body = ErrorBody)))]
async fn get_one(
    State(s): State<Arc<Gateway>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let lid = access::deployment(&p, &id, Scope::Read)?;
    let log = s.existing_log(&lid).await?;
    let body = wire::Deployment {
        viewers: Some(s.hub.viewers(&lid) as u64),
        ..listing::deployment(&id, &log.stats())
    };
    Ok(axum::Json(body).into_response())
}

#[utoipa::path(get, path = "/v1/deployments/{id}/logs", summary = "History, paginated", params(("id" = String, Path), FilterQuery, PageQuery), responses((status = 200, description = "A page", body = wire::HistoryPage), (status = "default", description = "An error: its code says what was wrong and how to fix it", body = ErrorBody)))]
async fn history(
    State(s): State<Arc<Gateway>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let lid = access::deployment(&p, &id, Scope::Read)?;
    let mut allowed = read::FILTERS.to_vec();
    allowed.extend(["cursor", "limit", "direction", "at"]);
    let rp = read::read_params(&q, &lid, &allowed)?;
    let at = read::line_number(&q, rp.cursor.is_some())?;
    let log = s.existing_log(&lid).await?;
    let from = match (rp.cursor, at, rp.direction) {
        (Some(c), _, _) => c.seq,
        (None, Some(n), Direction::Forward) => n - 1,
        (None, Some(n), Direction::Backward) => n.saturating_add(1),
        (None, None, Direction::Forward) => 0,
        (None, None, Direction::Backward) => u64::MAX,
    };
    let (l2, filter, limit, dir) = (log.clone(), rp.filter, rp.limit, rp.direction);
    let page = read::blocking(move || l2.read(dir, from, &filter, limit)).await?;
    s.audit(
        Need::Accepted,
        "read",
        &p.subject,
        &lid.tenant,
        &lid.deployment,
        "ok",
        None,
    )
    .await?;
    let wallclock = page.records.last().map_or(0, |r| r.ts);
    let lines: Vec<wire::Line> = page
        .records
        .into_iter()
        .map(|r| {
            serde_json::from_slice(&crate::hub::WireLine::new(&lid, r).json).expect("our own JSON")
        })
        .collect();
    let next = Cursor::new(&lid.tenant, &lid.deployment, page.scanned_to, wallclock).encode();
    let complete = page.exhausted
        && (dir == Direction::Backward
            || log
                .completion()
                .is_some_and(|c| page.scanned_to >= c.last_seq));
    Ok(axum::Json(wire::HistoryPage {
        lines,
        next_cursor: next,
        complete,
    })
    .into_response())
}

/// Appends audit records made by an edge (scope `audit:write`, which only edges'
/// own tokens carry): a JSON array of events of the caller's tenant, answered once they
/// are durable. Each record names the edge in `via`.
#[utoipa::path(post, path = "/v1/audit/events", summary = "Append an edge's audit records (scope audit:write, edges only)", request_body(content = Vec<Object>, content_type = "application/json", description = "Audit events {\"action\",\"subject\",\"tenant\",\"deployment\",\"result\",\"client\",\"count\"} of the token's tenant"), responses((status = 200, description = "Durable", body = wire::AuditRecorded), (status = "default", description = "An error: its code says what was wrong and how to fix it", body = ErrorBody)))]
async fn audit_append(
    State(s): State<Arc<Gateway>>,
    Auth(p): Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    access::require(&p, Scope::AuditWrite)?;
    let raw = read_body(&s, &headers, body).await?;
    let events: Vec<crate::audit::AuditEvent> = serde_json::from_slice(&raw).map_err(|e| {
        Error::invalid(
            "invalid_body",
            format!("the body must be a JSON array of audit events: {e}"),
        )
    })?;
    if let Some(e) = events.iter().find(|e| e.tenant != p.tenant) {
        return Err(Error::forbidden(
            "wrong_tenant",
            format!(
                "an event of tenant {:?} was sent with a token of tenant {:?}; send each tenant's events with its own token",
                e.tenant, p.tenant
            ),
        ));
    }
    let n = events.len();
    for (i, mut e) in events.into_iter().enumerate() {
        e.via = p.subject.clone();
        // In order: once the last is durable, so is every one before it.
        let need = if i + 1 == n {
            crate::audit::Need::Durable
        } else {
            crate::audit::Need::Accepted
        };
        s.audit.require(e, need).await?;
    }
    Ok(axum::Json(wire::AuditRecorded { recorded: n as u64 }).into_response())
}

/// The audit log of the caller's tenant (admin scope): `action`, `deployment`, `since`,
/// `until`, `cursor`, `limit`, `direction`.
#[utoipa::path(get, path = "/v1/audit", summary = "The caller's tenant's audit log (admin scope)", params(AuditQuery), responses((status = 200, description = "Events", body = wire::AuditPage), (status = "default", description = "An error: its code says what was wrong and how to fix it", body = ErrorBody)))]
async fn audit_log(
    State(s): State<Arc<Gateway>>,
    Auth(p): Auth,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    access::require(&p, Scope::Admin)?;
    let id = crate::audit::audit_log_id();
    for k in q.keys() {
        if ![
            "action",
            "deployment",
            "since",
            "until",
            "cursor",
            "limit",
            "direction",
        ]
        .contains(&k.as_str())
        {
            return Err(Error::invalid(
                "unknown_parameter",
                format!(
                    "unknown query parameter {k:?}; /v1/audit takes action, deployment, since, until, cursor, limit, direction"
                ),
            ));
        }
    }
    let rq: HashMap<String, String> = q
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "action" | "deployment"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut rp = read::read_params(
        &rq,
        &id,
        &["since", "until", "cursor", "limit", "direction"],
    )?;
    // Events are JSON in a fixed field order (action, subject, tenant, deployment, ...):
    // select by the `action` field (one or several, comma-separated), then only this
    // tenant's events (tenant names are [A-Za-z0-9._-]: escape the dots).
    let mut pattern = String::new();
    if let Some(a) = q.get("action") {
        let actions: Vec<String> = a
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(regex::escape)
            .collect();
        if !actions.is_empty() {
            pattern = format!("^\\{{\"action\":\"(?:{})\".*", actions.join("|"));
        }
    }
    pattern.push_str(&format!("\"tenant\":\"{}\"", regex::escape(&p.tenant)));
    if let Some(d) = q.get("deployment") {
        logstream_model::validate_deployment_id(d)
            .map_err(|e| Error::invalid("invalid_deployment_id", e.to_string()))?;
        pattern.push_str(&format!(".*\"deployment\":\"{}\"", regex::escape(d)));
    }
    rp.filter.query = Some(regex::Regex::new(&pattern).expect("escaped pattern"));
    // The audit log is each store's own, never a Kafka-routed deployment: no owner check
    // (in Kafka mode it answered `tenant_not_served` for `_system`; found by e2e/local).
    let log = s.local_log(&id).await?;
    let from = match (rp.cursor, rp.direction) {
        (Some(c), _) => c.seq,
        (None, Direction::Forward) => 0,
        (None, Direction::Backward) => u64::MAX,
    };
    let (filter, limit, dir) = (rp.filter, rp.limit, rp.direction);
    let page = read::blocking(move || log.read(dir, from, &filter, limit)).await?;
    let events: Vec<serde_json::Value> = page
        .records
        .iter()
        .map(|r| {
            let mut e: serde_json::Value =
                serde_json::from_str(&r.message).unwrap_or(serde_json::Value::Null);
            e["seq"] = json!(r.seq);
            e["time"] = json!(logstream_model::time::format_rfc3339(r.ts));
            e
        })
        .collect();
    let next = Cursor::new(&id.tenant, &id.deployment, page.scanned_to, 0).encode();
    s.audit(
        Need::Accepted,
        "audit_read",
        &p.subject,
        &p.tenant,
        "",
        "ok",
        None,
    )
    .await?;
    Ok(axum::Json(wire::AuditPage {
        events,
        next_cursor: next,
        complete: page.exhausted,
    })
    .into_response())
}

// === Live ===

#[utoipa::path(get, path = "/v1/deployments/{id}/stream", summary = "Follow live: SSE (Accept: text/event-stream) or WebSocket (Upgrade)", params(("id" = String, Path), FilterQuery, StreamQuery, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this cursor")), responses((status = 200, description = "event: line (id = cursor, data = a Line), event: end (data = a Completion), event: auth_expired, event: reconnect, `: hb` comments", content_type = "text/event-stream"), (status = 101, description = "WebSocket: {\"type\":\"lines\",\"lines\":[Line]} and {\"type\":\"end\",...} text frames"), (status = "default", description = "An error: its code says what was wrong and how to fix it", body = ErrorBody)))]
async fn stream(
    State(s): State<Arc<Gateway>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    match stream_inner(s, id, q, peer, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn stream_inner(
    s: Arc<Gateway>,
    id: String,
    q: HashMap<String, String>,
    peer: SocketAddr,
    req: Request,
) -> Result<Response> {
    let (mut parts, _body) = req.into_parts();
    let Auth(p) = Auth::from_request_parts(&mut parts, &s).await?;
    let wait = read::wait(&q)?;
    // With wait=true a deployment the token may not see waits like a missing one.
    let lid = match access::deployment(&p, &id, Scope::Read) {
        Err(e) if wait && e.code == "deployment_not_found" => {
            DeploymentId::new(p.tenant.clone(), id.clone())
        }
        other => other?,
    };
    let mut allowed = read::FILTERS.to_vec();
    allowed.extend(["cursor", "tail", "wait"]);
    let mut rp = read::read_params(&q, &lid, &allowed)?;
    if rp.cursor.is_none()
        && let Some(v) = parts.headers.get("last-event-id")
    {
        let v = v.to_str().unwrap_or("");
        rp.cursor = Some(read::cursor(v, &lid, "Last-Event-ID")?);
    }
    let start = match (rp.cursor, rp.tail) {
        (Some(c), _) => Start::After(c.seq),
        (None, Some(n)) if n > 0 => Start::Tail(n),
        _ => Start::After(0),
    };
    let exists = match s.existing_log(&lid).await {
        Ok(_) if p.may_access(&lid.deployment) => true,
        Ok(_) => false,
        Err(e) if wait && e.code == "deployment_not_found" => false,
        Err(e) => return Err(e),
    };
    let is_ws = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let wants_sse = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !is_ws && !wants_sse {
        return Err(Error::new(
            ErrorKind::NotAcceptable,
            "not_acceptable",
            "ask for Server-Sent Events with `Accept: text/event-stream`, or upgrade to a WebSocket",
        ));
    }
    if !exists {
        // Waiting for the first line: the response starts now (`waiting`, then
        // heartbeats), the session opens when the deployment appears.
        let waiting = Waiting::new(&s, &p, &lid);
        let open = OpenLater {
            state: s.clone(),
            who: p.clone(),
            id: lid.clone(),
            start,
            filter: rp.filter,
            peer,
        };
        if is_ws {
            let ws = WebSocketUpgrade::from_request_parts(&mut parts, &s)
                .await
                .map_err(|e| Error::invalid("bad_upgrade", e.body_text()))?;
            let ws = ws.max_message_size(64 << 10).max_frame_size(64 << 10);
            return Ok(ws.on_upgrade(move |socket| ws_wait_then_session(waiting, open, socket)));
        }
        return Ok(sse_response(Body::from_stream(sse_wait_then_session(
            waiting, open,
        ))));
    }
    let session = Session::open(&s, &p, &lid, start, rp.filter, Some(peer)).await?;
    if is_ws {
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &s)
            .await
            .map_err(|e| Error::invalid("bad_upgrade", e.body_text()))?;
        let ws = ws.max_message_size(64 << 10).max_frame_size(64 << 10);
        return Ok(ws.on_upgrade(move |socket| ws_session(session, socket)));
    }
    Ok(sse_response(Body::from_stream(sse_stream(session))))
}

/// The headers of every SSE answer.
fn sse_response(body: Body) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(body)
        .expect("valid response")
}

/// What opens a viewer session once the awaited deployment exists.
struct OpenLater {
    state: Arc<Gateway>,
    who: Principal,
    id: DeploymentId,
    start: Start,
    filter: logstream_model::Filter,
    peer: SocketAddr,
}

impl OpenLater {
    async fn open(self) -> Result<Session> {
        Session::open(
            &self.state,
            &self.who,
            &self.id,
            self.start,
            self.filter,
            Some(self.peer),
        )
        .await
    }
}

/// SSE of `?wait=true` on a deployment that does not exist yet: `event: waiting`,
/// heartbeats, then the session's events as `sse_stream` gives them.
fn sse_wait_then_session(
    waiting: Waiting,
    open: OpenLater,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send {
    enum Phase {
        Waiting(Box<Waiting>, Box<OpenLater>),
        Done,
    }
    let first = Bytes::from_static(b"retry: 1000\n\n");
    let waiting_ev = Bytes::from_static(crate::hub::SSE_WAITING);
    let wait = futures::stream::unfold(
        Phase::Waiting(Box::new(waiting), Box::new(open)),
        |phase| async move {
            let Phase::Waiting(mut w, open) = phase else {
                return None;
            };
            let item = match w.next().await {
                WaitEvent::Heartbeat => (
                    Either::Left(Bytes::from_static(crate::hub::SSE_HEARTBEAT)),
                    Phase::Waiting(w, open),
                ),
                WaitEvent::Closed(e) => (Either::Left(closed_sse(&e)), Phase::Done),
                WaitEvent::Ready => match open.open().await {
                    Ok(session) => (Either::Right(session), Phase::Done),
                    Err(e) => (Either::Left(closed_sse(&e)), Phase::Done),
                },
            };
            Some(item)
        },
    );
    futures::stream::iter([Ok(first), Ok(waiting_ev)]).chain(wait.flat_map(|item| match item {
        Either::Left(bytes) => futures::stream::once(async move { Ok(bytes) }).boxed(),
        // The session's own stream, without its `retry:` preamble (sent already).
        Either::Right(session) => sse_stream(session).skip(1).boxed(),
    }))
}

/// How a wait that could not become a session ends, in SSE.
fn closed_sse(e: &Error) -> Bytes {
    match e.code {
        "auth_expired" => Bytes::from_static(b"event: auth_expired\ndata: {\"message\":\"the token expired; reconnect with a fresh token\"}\n\n"),
        "shutting_down" => Bytes::from_static(b"event: reconnect\ndata: {\"message\":\"the gateway is restarting; reconnect\"}\n\n"),
        _ => Bytes::from(format!(
            "event: error\ndata: {}\n\n",
            json!({"code": e.code, "message": e.message})
        )),
    }
}

/// WebSocket of `?wait=true`: `{"type":"waiting"}`, pings, then the session.
async fn ws_wait_then_session(mut waiting: Waiting, open: OpenLater, socket: WebSocket) {
    let (mut tx, mut incoming) = socket.split();
    let waiting_msg = Message::Text(crate::hub::WS_WAITING.into());
    if tx.send(waiting_msg).await.is_err() {
        return;
    }
    loop {
        let ev = tokio::select! {
            ev = waiting.next() => ev,
            m = incoming.next() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        };
        match ev {
            WaitEvent::Heartbeat => {
                if tx.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
            WaitEvent::Closed(e) => {
                let (code, reason) = if e.code == "auth_expired" {
                    (4001, "token expired")
                } else {
                    (1012, "gateway restarting")
                };
                let _ = tx
                    .send(Message::Close(Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    })))
                    .await;
                return;
            }
            WaitEvent::Ready => {
                let Ok(session) = open.open().await else {
                    let _ = tx
                        .send(Message::Close(Some(CloseFrame {
                            code: 1011,
                            reason: "the session could not open".into(),
                        })))
                        .await;
                    return;
                };
                let socket = tx.reunite(incoming).expect("halves of one socket");
                return ws_session(session, socket).await;
            }
        }
    }
}

/// SSE encoding of a viewer session: one chunk per event (many lines per write), a `: hb`
/// comment every heartbeat, `event: end` at completion, `event: auth_expired` when the
/// token expires, `event: reconnect` at shutdown (the client resumes with Last-Event-ID).
///
/// The HTTP body polls the session directly (no task in between). When the client
/// leaves, hyper drops the body and with it the session: the viewer task ends, the slot
/// is freed. After a final event the stream ends at once.
fn sse_stream(session: Session) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send {
    let first = Bytes::from_static(b"retry: 1000\n\n");
    // Tell EventSource how soon to reconnect after a drop, then the session's events.
    futures::stream::once(async move { Ok(first) }).chain(futures::stream::unfold(
        session,
        |mut session| async move {
            let chunk = match session.next().await? {
                SessionEvent::Lines(lines) => Bytes::from(crate::hub::encode_sse(&lines)),
                SessionEvent::Frame(frame) => frame.sse.clone(),
                SessionEvent::Heartbeat => Bytes::from_static(crate::hub::SSE_HEARTBEAT),
                SessionEvent::End(c) => crate::hub::end_sse(&c),
                SessionEvent::Redacted(seqs) => crate::hub::redacted_sse(&seqs),
                SessionEvent::Closed(e) if e.code == "auth_expired" => Bytes::from_static(crate::hub::SSE_AUTH_EXPIRED),
                SessionEvent::Closed(e) if e.code == "deployment_deleted" => crate::hub::deleted_sse(e.code, &e.message),
                SessionEvent::Closed(_) => Bytes::from_static(b"event: reconnect\ndata: {\"message\":\"the gateway is restarting; reconnect with Last-Event-ID\"}\n\n"),
            };
            Some((Ok(chunk), session))
        },
    ))
}

/// WebSocket encoding of a viewer session: `{"type":"lines","lines":[...]}` frames,
/// `{"type":"end",...}`, pings every heartbeat; close 4001 when the token expires, 1012
/// at shutdown.
async fn ws_session(mut session: Session, socket: WebSocket) {
    let (mut tx, mut incoming) = socket.split();
    let close = |code: u16, reason: String| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    };
    loop {
        let ev = tokio::select! {
            ev = session.next() => ev,
            m = incoming.next() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        };
        let msg = match ev {
            None => return,
            Some(SessionEvent::Lines(lines)) => Message::Text(
                String::from_utf8(crate::hub::encode_ws(&lines))
                    .expect("JSON is UTF-8")
                    .into(),
            ),
            Some(SessionEvent::Frame(frame)) => Message::Text(
                String::from_utf8(frame.ws.to_vec())
                    .expect("JSON is UTF-8")
                    .into(),
            ),
            Some(SessionEvent::Heartbeat) => Message::Ping(Bytes::new()),
            Some(SessionEvent::Redacted(seqs)) => {
                Message::Text(crate::hub::redacted_ws(&seqs).into())
            }
            Some(SessionEvent::End(c)) => {
                let _ = tx.send(Message::Text(crate::hub::end_ws(&c).into())).await;
                let _ = tx.send(close(1000, "deployment completed".into())).await;
                return;
            }
            Some(SessionEvent::Closed(e)) => {
                let code = match e.code {
                    "auth_expired" => 4001,
                    "deployment_deleted" => 4004,
                    _ => 1012,
                };
                let reason = match e.code {
                    "auth_expired" => {
                        "token expired; reconnect with a fresh token and the last cursor"
                    }
                    "deployment_deleted" => "deployment deleted",
                    _ => "gateway restarting; reconnect with the last cursor",
                };
                let _ = tx.send(close(code, reason.into())).await;
                return;
            }
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

// === Export ===

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Ndjson,
    Csv,
}

fn export_line(out: &mut Vec<u8>, format: Format, id: &DeploymentId, r: LogRecord) {
    use logstream_model::export;
    match format {
        Format::Text => {
            export::text_line(
                out,
                &logstream_model::time::format_rfc3339(r.ts),
                &r.message,
            );
        }
        Format::Ndjson => {
            out.extend_from_slice(&crate::hub::WireLine::new(id, r).json);
            out.push(b'\n');
        }
        Format::Csv => export::csv_line(
            out,
            r.seq,
            &logstream_model::time::format_rfc3339(r.ts),
            &r.step,
            r.stream.as_str(),
            r.level.as_str(),
            &r.message,
        ),
    }
}

#[utoipa::path(get, path = "/v1/deployments/{id}/export", summary = "The whole log, streamed (gzip when accepted)", params(("id" = String, Path), FilterQuery, ExportQuery), responses((status = 200, description = "An attachment in the asked format", content((String = "text/plain"), (String = "application/x-ndjson"), (String = "text/csv"))), (status = "default", description = "An error: its code says what was wrong and how to fix it", body = ErrorBody)))]
async fn export(
    State(s): State<Arc<Gateway>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    let lid = access::deployment(&p, &id, Scope::Export)?;
    let mut allowed = read::FILTERS.to_vec();
    allowed.extend(["format", "cursor"]);
    let rp = read::read_params(&q, &lid, &allowed)?;
    // `cursor`: resume an interrupted export after the last line received.
    let resume_from = rp.cursor.as_ref().map(|c| c.seq);
    let format = Format::from_query(&q)?;
    let log = s.existing_log(&lid).await?;
    s.audit(
        Need::Durable,
        "export",
        &p.subject,
        &lid.tenant,
        &lid.deployment,
        "ok",
        None,
    )
    .await?;
    Ok(stream_export(
        log,
        lid,
        rp.filter,
        format,
        resume_from,
        &headers,
    ))
}

impl Format {
    /// `format` of an export query (default text).
    fn from_query(q: &HashMap<String, String>) -> Result<Format> {
        match q.get("format").map(String::as_str) {
            None | Some("text") => Ok(Format::Text),
            Some("ndjson") => Ok(Format::Ndjson),
            Some("csv") => Ok(Format::Csv),
            Some(f) => Err(Error::invalid(
                "invalid_format",
                format!("format {f:?} must be text, ndjson or csv"),
            )),
        }
    }

    /// File extension and Content-Type.
    fn file(self) -> (&'static str, &'static str) {
        match self {
            Format::Text => ("log", "text/plain; charset=utf-8"),
            Format::Ndjson => ("ndjson", "application/x-ndjson"),
            Format::Csv => ("csv", "text/csv; charset=utf-8"),
        }
    }
}

/// Renders `log` (after `resume_from`, else from the start, with the CSV header) as
/// `format`, one chunk per store page, to `emit` (`done` on the last; `false` from it
/// stops). Constant memory: one page at a time.
fn render_export(
    log: &crate::store::DeploymentLog,
    lid: &DeploymentId,
    filter: &logstream_model::Filter,
    format: Format,
    resume_from: Option<u64>,
    mut emit: impl FnMut(Vec<u8>, bool) -> bool,
) -> std::result::Result<(), crate::store::StoreError> {
    let mut from = resume_from.unwrap_or(0);
    let mut first = resume_from.is_none();
    loop {
        let page = log.read(Direction::Forward, from, filter, 5000)?;
        let mut chunk = Vec::new();
        if first && format == Format::Csv {
            chunk.extend_from_slice(logstream_model::export::CSV_HEADER);
        }
        first = false;
        for r in page.records {
            export_line(&mut chunk, format, lid, r);
        }
        from = page.scanned_to;
        let done = page.exhausted;
        if !emit(chunk, done) || done {
            return Ok(());
        }
    }
}

/// An export streamed as it is read (gzip when the client accepts it), as an attachment.
fn stream_export(
    log: Arc<crate::store::DeploymentLog>,
    lid: DeploymentId,
    filter: logstream_model::Filter,
    format: Format,
    resume_from: Option<u64>,
    headers: &HeaderMap,
) -> Response {
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let (ext, ctype) = format.file();
    let filename = format!("{}.{ext}", lid.deployment);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let mut enc =
            gzip.then(|| flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        let r = render_export(&log, &lid, &filter, format, resume_from, |chunk, done| {
            let out = match enc.as_mut() {
                Some(e) => {
                    use std::io::Write;
                    let _ = e.write_all(&chunk);
                    if done {
                        enc.take().expect("encoder").finish().unwrap_or_default()
                    } else {
                        std::mem::take(e.get_mut())
                    }
                }
                None => chunk,
            };
            !((!out.is_empty() || done) && tx.blocking_send(Ok(Bytes::from(out))).is_err())
        });
        if let Err(e) = r {
            tracing::error!(error = %e, "export read failed");
            let _ = tx.blocking_send(Err(std::io::Error::other("export aborted: storage error")));
        }
    });
    let mut resp = Response::builder()
        .header(header::CONTENT_TYPE, ctype)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{filename}\""),
        )
        .header(header::VARY, "accept-encoding");
    if gzip {
        resp = resp.header(header::CONTENT_ENCODING, "gzip");
    }
    resp.body(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ))
    .expect("valid response")
}
