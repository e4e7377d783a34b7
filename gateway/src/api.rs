//! The HTTP API (the contract in ARCHITECTURE.md): ingest, completion, listing, history,
//! live streams over SSE and WebSocket, export, probes, metrics, OpenAPI.
//!
//! Every error leaves through `ApiError` as `{"error":{"code","message"}}` with the right
//! status; 500s carry a generic message and the detail is logged once.

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
use axum::routing::{get, post};
use futures::{SinkExt, StreamExt};
use logstream_model::{Cursor, Filter, FilterParams, Level, LogRecord, Stream};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{AuthError, Principal, Scope};
use crate::ingest::{self, IngestLine};
use crate::live::{self, Start, ViewerEvent, ViewerSlot};
use crate::server::AppState;
use crate::store::{Completion, DeploymentLog, Direction, LogId, Outcome, StoreError};

// === ApiError ===

/// An error answer: status, stable code, and a message saying what was wrong and how to
/// fix it.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "deployment_not_found",
            "no such deployment for this tenant; check the id (GET /v1/deployments lists them)",
        )
    }
    pub fn too_many(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(5),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }
    pub fn internal(detail: impl Into<String>) -> ApiError {
        let detail = detail.into();
        tracing::error!(error = %detail, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it was logged on the gateway",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match &e {
            StoreError::NotFound => ApiError::not_found(),
            StoreError::Completed { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "deployment_completed",
                format!("{e}; start a new deployment id to push more lines"),
            ),
            StoreError::Io { .. } | StoreError::Poisoned(_) => {
                tracing::error!(error = %e, "store unavailable");
                let msg = if e.is_disk_full() {
                    "the gateway's disk is full; nothing was stored from this request, retry later"
                } else {
                    "storage is unavailable; nothing was stored from this request, retry later"
                };
                ApiError {
                    retry_after: Some(5),
                    ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", msg)
                }
            }
            StoreError::Corrupt { .. } | StoreError::Config(_) => ApiError::internal(e.to_string()),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

type ApiResult<T> = Result<T, ApiError>;

// === Auth ===

/// The authenticated caller, from `Authorization: Bearer` (or `Logstream-Authorization:
/// Bearer`, for requests through the Kubernetes API server's service proxy, which keeps
/// `Authorization` for itself; or `access_token` for stream/export GETs, which browsers'
/// EventSource cannot give headers).
pub struct Auth(pub Principal);

/// The header clients use when `Authorization` is taken by a proxy.
pub const PROXY_SAFE_AUTHORIZATION: &str = "logstream-authorization";

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> ApiResult<Auth> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .or_else(|| parts.headers.get(PROXY_SAFE_AUTHORIZATION));
        let token = match header {
            Some(v) => {
                let v = v
                    .to_str()
                    .map_err(|_| ApiError::from(AuthError::Malformed))?;
                let t = v
                    .strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
                    .ok_or(AuthError::Malformed)?;
                t.trim().to_owned()
            }
            None => {
                let path = parts.uri.path();
                let query_ok = parts.method == axum::http::Method::GET
                    && (path.ends_with("/stream") || path.ends_with("/export"));
                let from_query = parts.uri.query().and_then(|q| {
                    url_pairs(q)
                        .into_iter()
                        .find(|(k, _)| k == "access_token")
                        .map(|(_, v)| v)
                });
                match from_query {
                    Some(t) if query_ok => t,
                    Some(_) => {
                        return Err(ApiError::bad_request(
                            "access_token_not_allowed",
                            "access_token in the query is accepted only on GET .../stream and .../export; send an Authorization header",
                        ));
                    }
                    None => return Err(AuthError::Missing.into()),
                }
            }
        };
        state
            .auth
            .verify_request(&token)
            .await
            .map(Auth)
            .map_err(|e| {
                state.metrics.auth_failures.inc();
                let client = parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0);
                state.audit("auth_rejected", "", "", "", &e.to_string(), client);
                ApiError::from(e)
            })
    }
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default()
}

fn require(p: &Principal, scope: Scope) -> ApiResult<()> {
    if p.has(scope) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "missing_scope",
            format!("this token lacks the {} scope", scope.as_str()),
        ))
    }
}

/// The log id for `deployment` of the caller's tenant, after validating the id.
fn log_id(p: &Principal, deployment: &str) -> ApiResult<LogId> {
    logstream_model::validate_deployment_id(deployment)
        .map_err(|e| ApiError::bad_request("invalid_deployment_id", e.to_string()))?;
    if !p.may_access(deployment) {
        // Same answer as a missing deployment: a token learns nothing outside its reach.
        return Err(ApiError::not_found());
    }
    Ok(LogId::new(p.tenant.clone(), deployment))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::from)
}

async fn existing_log(state: &Arc<AppState>, id: &LogId) -> ApiResult<Arc<DeploymentLog>> {
    let (s, id) = (state.clone(), id.clone());
    blocking(move || s.store.log(&id, false))
        .await?
        .ok_or_else(ApiError::not_found)
}

// === Router ===

/// The HTTP application.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/deployments", get(list))
        .route("/v1/deployments/{id}", get(get_one))
        .route("/v1/deployments/{id}/logs", post(ingest_http).get(history))
        .route("/v1/deployments/{id}/complete", post(complete))
        .route("/v1/deployments/{id}/secrets", post(secrets))
        .route("/v1/deployments/{id}/stream", get(stream))
        .route("/v1/deployments/{id}/export", get(export))
        .route("/v1/audit", get(audit_log))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_such_route",
                "no such API path; see /openapi.json",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    if *s.shutdown.borrow() {
        return ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the gateway is shutting down",
            )
        }
        .into_response();
    }
    "ready".into_response()
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    s.metrics.store_bytes.set(s.store.open_log_bytes() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT,
    )
        .into_response()
}

// === Ingest ===

#[derive(Deserialize)]
struct NdjsonLine {
    #[serde(default)]
    ts: Option<serde_json::Value>,
    #[serde(default)]
    step: Option<String>,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    level: Option<String>,
    message: Option<String>,
}

async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> ApiResult<Vec<u8>> {
    let max = state.config.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
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
                ApiError::bad_request(
                    "bad_gzip",
                    format!("the gzip body does not decompress: {e}"),
                )
            })?;
            if out.len() > max {
                return Err(too_large());
            }
            Ok(out)
        }
        Some(other) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!("Content-Encoding {other:?} is not supported; use gzip or none"),
        )),
    }
}

fn parse_ts(v: &serde_json::Value, line: usize) -> ApiResult<i64> {
    let bad = || {
        ApiError::bad_request(
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

fn parse_ndjson(body: &[u8]) -> ApiResult<Vec<IngestLine>> {
    let mut out = Vec::new();
    for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let l: NdjsonLine = serde_json::from_slice(raw).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("line {n}: not a JSON object with a \"message\" string: {e}"),
            )
        })?;
        let message = l.message.ok_or_else(|| {
            ApiError::bad_request("invalid_line", format!("line {n}: \"message\" is missing"))
        })?;
        let stream = match l.stream.as_deref() {
            None => Stream::Stdout,
            Some(s) => Stream::parse(s).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_line",
                    format!("line {n}: stream {s:?} is not stdout or stderr"),
                )
            })?,
        };
        let level = match l.level.as_deref() {
            None | Some("") => None,
            Some(s) => Some(Level::parse(s).ok_or_else(|| ApiError::bad_request("invalid_line", format!("line {n}: level {s:?} is not a level (trace, debug, info, warn, error, fatal)")))?),
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
        });
    }
    Ok(out)
}

fn parse_text(body: &[u8], step: &str, stream: Stream) -> ApiResult<Vec<IngestLine>> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::bad_request(
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
        })
        .collect())
}

async fn ingest_http(
    State(s): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    require(&p, Scope::Write)?;
    let id = log_id(&p, &id)?;
    for k in q.keys() {
        if !matches!(k.as_str(), "step" | "stream") {
            return Err(ApiError::bad_request(
                "unknown_parameter",
                format!(
                    "unknown query parameter {k:?}; ingest takes step and stream (for text/plain)"
                ),
            ));
        }
    }
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
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
                    ApiError::bad_request(
                        "invalid_parameter",
                        format!("stream {v:?} is not stdout or stderr"),
                    )
                })?,
            };
            parse_text(&body, q.get("step").map_or("", String::as_str), stream)?
        }
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
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
                    ApiError::bad_request(
                        "invalid_header",
                        "Logstream-Source must be 1 to 256 visible ASCII characters",
                    )
                })?;
            let batch_id = b
                .to_str()
                .ok()
                .and_then(|b| b.parse().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
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
            return Err(ApiError::bad_request(
                "invalid_header",
                "send Logstream-Source and Logstream-Batch together (or neither)",
            ));
        }
    };
    let reply = ingest::append(&s, &id, lines, batch, started).await?;
    Ok(axum::Json(json!({
        "accepted": reply.accepted,
        "cursor": reply.cursor,
        "first_seq": reply.first_seq,
        "last_seq": reply.last_seq,
        "duplicate": reply.duplicate,
    }))
    .into_response())
}

/// Reads a (possibly gzipped) JSON body; a bad one is a 400 showing the `expected` shape.
async fn json_body<T: serde::de::DeserializeOwned>(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
    expected: &str,
) -> ApiResult<T> {
    let body = read_body(s, headers, body).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("expected {expected}: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteBody {
    status: String,
    #[serde(default)]
    exit_code: Option<i32>,
}

async fn complete(
    State(s): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    require(&p, Scope::Write)?;
    let id = log_id(&p, &id)?;
    let b: CompleteBody = json_body(
        &s,
        &headers,
        body,
        r#"{"status":"succeeded|failed|cancelled","exit_code":N}"#,
    )
    .await?;
    let status = Outcome::parse(&b.status).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_status",
            format!(
                "status {:?} is not succeeded, failed or cancelled",
                b.status
            ),
        )
    })?;
    let exit_code = b
        .exit_code
        .unwrap_or(if status == Outcome::Succeeded { 0 } else { 1 });
    let c = ingest::complete(&s, &id, status, exit_code, &p.subject).await?;
    Ok(axum::Json(completion_json(&c)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsBody {
    values: Vec<String>,
}

/// Registers values to mask in this deployment's later lines. Write-only: the values are
/// held in memory for the running deployment and never stored or returned.
async fn secrets(
    State(s): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    require(&p, Scope::Write)?;
    let lid = log_id(&p, &id)?;
    let b: SecretsBody = json_body(&s, &headers, body, r#"{"values":["..."]}"#).await?;
    if b.values.is_empty() || b.values.len() > 1000 {
        return Err(ApiError::bad_request(
            "invalid_secrets",
            "send 1 to 1000 values",
        ));
    }
    if let Some(i) = b.values.iter().position(|v| v.len() < 4 || v.len() > 4096) {
        return Err(ApiError::bad_request(
            "invalid_secrets",
            format!(
                "values[{i}] must be 4 to 4096 bytes long (shorter values would mask ordinary text)"
            ),
        ));
    }
    let (s2, l2) = (s.clone(), lid.clone());
    let log = blocking(move || s2.store.log(&l2, true))
        .await?
        .expect("created");
    if log.completion().is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "deployment_completed",
            "the deployment has completed; there are no later lines to mask",
        ));
    }
    let redactor = s.stream_redactor(&lid);
    let mut r = redactor.lock();
    for v in &b.values {
        r.add_mask(v)
            .map_err(|e| ApiError::bad_request("invalid_secrets", e.to_string()))?;
    }
    s.audit(
        "register_secrets",
        &p.subject,
        &lid.tenant,
        &lid.deployment,
        &format!("ok: {} values", b.values.len()),
        None,
    );
    Ok(axum::Json(json!({ "registered": b.values.len() })).into_response())
}

fn completion_json(c: &Completion) -> serde_json::Value {
    json!({"status": c.status.as_str(), "exit_code": c.exit_code, "last_seq": c.last_seq})
}

// === Reading ===

fn deployment_json(id: &str, st: &crate::store::LogStats) -> serde_json::Value {
    let ts = |t: Option<i64>| t.map(logstream_model::time::format_rfc3339);
    json!({
        "id": id,
        "status": st.completion.map_or("running", |c| c.status.as_str()),
        "exit_code": st.completion.map(|c| c.exit_code),
        "lines": st.lines(),
        "first_seq": st.first_seq,
        "last_seq": st.last_seq,
        "bytes": st.bytes,
        "first_ts": ts(st.first_ts),
        "last_ts": ts(st.last_ts),
        "created_at": logstream_model::time::format_rfc3339(st.created_at),
        "completed_at": st.completion.map(|c| logstream_model::time::format_rfc3339(c.at)),
        "steps": st.steps,
    })
}

async fn list(State(s): State<Arc<AppState>>, Auth(p): Auth) -> ApiResult<Response> {
    require(&p, Scope::Read)?;
    let (s2, p2) = (s.clone(), p.clone());
    let items = blocking(move || {
        let mut items = Vec::new();
        for d in s2.store.deployments(&p2.tenant)? {
            if !p2.may_access(&d) {
                continue;
            }
            if let Some(log) = s2
                .store
                .log(&LogId::new(p2.tenant.clone(), d.clone()), false)?
            {
                items.push(deployment_json(&d, &log.stats()));
            }
        }
        Ok(items)
    })
    .await?;
    s.audit("list", &p.subject, &p.tenant, "", "ok", None);
    Ok(axum::Json(json!({ "deployments": items })).into_response())
}

async fn get_one(
    State(s): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    require(&p, Scope::Read)?;
    let lid = log_id(&p, &id)?;
    let log = existing_log(&s, &lid).await?;
    let mut body = deployment_json(&id, &log.stats());
    body["viewers"] = json!(s.hub.viewers(&lid));
    Ok(axum::Json(body).into_response())
}

/// Query parameters shared by history, stream and export.
struct ReadParams {
    filter: Filter,
    cursor: Option<Cursor>,
    limit: usize,
    direction: Direction,
    tail: Option<usize>,
}

fn now_ns() -> i64 {
    crate::store::Clock::now(&crate::store::SystemClock)
}

fn read_params(q: &HashMap<String, String>, id: &LogId, allowed: &[&str]) -> ApiResult<ReadParams> {
    for k in q.keys() {
        if !allowed.contains(&k.as_str()) && k != "access_token" {
            return Err(ApiError::bad_request(
                "unknown_parameter",
                format!(
                    "unknown query parameter {k:?}; this endpoint takes {}",
                    allowed.join(", ")
                ),
            ));
        }
    }
    let g = |k: &str| q.get(k).map(String::as_str);
    let filter = Filter::parse(
        &FilterParams {
            level: g("level"),
            step: g("step"),
            stream: g("stream"),
            since: g("since"),
            until: g("until"),
            q: g("q"),
        },
        now_ns(),
    )
    .map_err(|e| ApiError::bad_request("invalid_filter", e.to_string()))?;
    let cursor = match g("cursor").filter(|c| !c.is_empty()) {
        Some(c) => Some(
            Cursor::decode(c, &id.tenant, &id.deployment)
                .map_err(|e| ApiError::bad_request("invalid_cursor", e.to_string()))?,
        ),
        None => None,
    };
    let limit = match g("limit") {
        None => 1000,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=5000).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_limit",
                    format!("limit {l:?} must be a number from 1 to 5000"),
                ));
            }
        },
    };
    let direction = match g("direction") {
        None | Some("forward") => Direction::Forward,
        Some("backward") => Direction::Backward,
        Some(d) => {
            return Err(ApiError::bad_request(
                "invalid_direction",
                format!("direction {d:?} must be forward or backward"),
            ));
        }
    };
    let tail = match g("tail") {
        None => None,
        Some(t) => match t.parse::<usize>() {
            Ok(n) if n <= 100_000 => Some(n),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_tail",
                    format!("tail {t:?} must be a number from 0 to 100000"),
                ));
            }
        },
    };
    Ok(ReadParams {
        filter,
        cursor,
        limit,
        direction,
        tail,
    })
}

const FILTERS: [&str; 6] = ["level", "step", "stream", "since", "until", "q"];

async fn history(
    State(s): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    require(&p, Scope::Read)?;
    let lid = log_id(&p, &id)?;
    let mut allowed = FILTERS.to_vec();
    allowed.extend(["cursor", "limit", "direction"]);
    let rp = read_params(&q, &lid, &allowed)?;
    let log = existing_log(&s, &lid).await?;
    let from = match (rp.cursor, rp.direction) {
        (Some(c), _) => c.seq,
        (None, Direction::Forward) => 0,
        (None, Direction::Backward) => u64::MAX,
    };
    let (l2, filter, limit, dir) = (log.clone(), rp.filter, rp.limit, rp.direction);
    let page = blocking(move || l2.read(dir, from, &filter, limit)).await?;
    s.audit("read", &p.subject, &lid.tenant, &lid.deployment, "ok", None);
    let lines: Vec<serde_json::Value> = page
        .records
        .into_iter()
        .map(|r| {
            serde_json::from_slice(&crate::hub::WireLine::new(&lid, r).json).expect("our own JSON")
        })
        .collect();
    let wallclock = lines
        .last()
        .and_then(|l| l["ts"].as_str())
        .and_then(logstream_model::time::parse_rfc3339)
        .unwrap_or(0);
    let next = Cursor::new(&lid.tenant, &lid.deployment, page.scanned_to, wallclock).encode();
    let complete = page.exhausted
        && (dir == Direction::Backward
            || log
                .completion()
                .is_some_and(|c| page.scanned_to >= c.last_seq));
    Ok(
        axum::Json(json!({ "lines": lines, "next_cursor": next, "complete": complete }))
            .into_response(),
    )
}

/// The audit log of the caller's tenant (admin scope): `action`, `deployment`, `since`,
/// `until`, `cursor`, `limit`, `direction`.
async fn audit_log(
    State(s): State<Arc<AppState>>,
    Auth(p): Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    require(&p, Scope::Admin)?;
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
            return Err(ApiError::bad_request(
                "unknown_parameter",
                format!(
                    "unknown query parameter {k:?}; /v1/audit takes action, deployment, since, until, cursor, limit, direction"
                ),
            ));
        }
    }
    let mut rq: HashMap<String, String> = q
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "action" | "deployment"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(a) = q.get("action") {
        rq.insert("step".into(), a.clone());
    }
    let mut rp = read_params(
        &rq,
        &id,
        &["since", "until", "cursor", "limit", "direction", "step"],
    )?;
    // Only this tenant's events (tenant names are [A-Za-z0-9._-]: escape the dots).
    let mut pattern = format!("\"tenant\":\"{}\"", regex::escape(&p.tenant));
    if let Some(d) = q.get("deployment") {
        logstream_model::validate_deployment_id(d)
            .map_err(|e| ApiError::bad_request("invalid_deployment_id", e.to_string()))?;
        pattern.push_str(&format!(".*\"deployment\":\"{}\"", regex::escape(d)));
    }
    rp.filter.query = Some(regex::Regex::new(&pattern).expect("escaped pattern"));
    let log = existing_log(&s, &id).await?;
    let from = match (rp.cursor, rp.direction) {
        (Some(c), _) => c.seq,
        (None, Direction::Forward) => 0,
        (None, Direction::Backward) => u64::MAX,
    };
    let (filter, limit, dir) = (rp.filter, rp.limit, rp.direction);
    let page = blocking(move || log.read(dir, from, &filter, limit)).await?;
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
    s.audit("audit_read", &p.subject, &p.tenant, "", "ok", None);
    Ok(
        axum::Json(json!({ "events": events, "next_cursor": next, "complete": page.exhausted }))
            .into_response(),
    )
}

// === Live ===

async fn stream(
    State(s): State<Arc<AppState>>,
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
    s: Arc<AppState>,
    id: String,
    q: HashMap<String, String>,
    peer: SocketAddr,
    req: Request,
) -> ApiResult<Response> {
    let (mut parts, _body) = req.into_parts();
    let Auth(p) = Auth::from_request_parts(&mut parts, &s).await?;
    require(&p, Scope::Read)?;
    let lid = log_id(&p, &id)?;
    let mut allowed = FILTERS.to_vec();
    allowed.extend(["cursor", "tail"]);
    let mut rp = read_params(&q, &lid, &allowed)?;
    if rp.cursor.is_none()
        && let Some(v) = parts.headers.get("last-event-id")
    {
        let v = v.to_str().unwrap_or("");
        rp.cursor = Some(
            Cursor::decode(v, &lid.tenant, &lid.deployment).map_err(|e| {
                ApiError::bad_request("invalid_cursor", format!("Last-Event-ID: {e}"))
            })?,
        );
    }
    let start = match (rp.cursor, rp.tail) {
        (Some(c), _) => Start::After(c.seq),
        (None, Some(n)) if n > 0 => Start::Tail(n),
        _ => Start::After(0),
    };
    let log = existing_log(&s, &lid).await?;
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
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            "ask for Server-Sent Events with `Accept: text/event-stream`, or upgrade to a WebSocket",
        ));
    }
    let slot = ViewerSlot::acquire(&s, &lid, &p, Some(peer))?;
    let expires_in =
        Duration::from_secs(p.expires_at.saturating_sub(now_ns() as u64 / 1_000_000_000));
    if is_ws {
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &s)
            .await
            .map_err(|e| ApiError::bad_request("bad_upgrade", e.body_text()))?;
        let ws = ws.max_message_size(64 << 10).max_frame_size(64 << 10);
        return Ok(ws.on_upgrade(move |socket| async move {
            let rx = live::spawn(s.clone(), log, start, rp.filter).await;
            ws_session(s, socket, rx, expires_in).await;
            drop(slot);
        }));
    }
    let rx = live::spawn(s.clone(), log, start, rp.filter).await;
    let body = Body::from_stream(sse_stream(s.clone(), rx, slot, expires_in));
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(body)
        .expect("valid response"))
}

/// SSE framing of viewer events: one chunk per event (many lines per write), a `: hb`
/// comment every heartbeat, `event: end` at completion, `event: auth_expired` when the
/// token expires, `event: reconnect` at shutdown (the client resumes with Last-Event-ID).
///
/// The HTTP body polls the viewer's channel directly (no task in between). When the
/// client leaves, hyper drops the body: the channel closes, the viewer task ends, the
/// slot is freed. After a final event the stream ends at once.
fn sse_stream(
    s: Arc<AppState>,
    rx: tokio::sync::mpsc::Receiver<ViewerEvent>,
    slot: ViewerSlot,
    expires_in: Duration,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send {
    struct St {
        rx: tokio::sync::mpsc::Receiver<ViewerEvent>,
        hb: tokio::time::Interval,
        expiry: std::pin::Pin<Box<tokio::time::Sleep>>,
        shutdown: tokio::sync::watch::Receiver<bool>,
        started: bool,
        done: bool,
        _slot: ViewerSlot,
    }
    let heartbeat = Duration::from_secs(s.config.heartbeat_secs);
    let st = St {
        rx,
        hb: tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat),
        expiry: Box::pin(tokio::time::sleep(expires_in)),
        shutdown: s.shutdown.clone(),
        started: false,
        done: false,
        _slot: slot,
    };
    futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if !st.started {
            // Tell EventSource how soon to reconnect after a drop.
            st.started = true;
            return Some((Ok(Bytes::from_static(b"retry: 1000\n\n")), st));
        }
        let chunk = tokio::select! {
            ev = st.rx.recv() => match ev {
                Some(ViewerEvent::Lines(lines)) => Bytes::from(crate::hub::encode_sse(&lines)),
                Some(ViewerEvent::Frame(frame)) => frame.sse.clone(),
                Some(ViewerEvent::End(c)) => {
                    st.done = true;
                    Bytes::from(format!("event: end\ndata: {}\n\n", completion_json(&c)))
                }
                None => return None,
            },
            _ = st.hb.tick() => Bytes::from_static(b": hb\n\n"),
            () = &mut st.expiry => {
                st.done = true;
                Bytes::from_static(b"event: auth_expired\ndata: {\"message\":\"the token expired; reconnect with a fresh token and Last-Event-ID\"}\n\n")
            }
            _ = st.shutdown.wait_for(|down| *down) => {
                st.done = true;
                Bytes::from_static(b"event: reconnect\ndata: {\"message\":\"the gateway is restarting; reconnect with Last-Event-ID\"}\n\n")
            }
        };
        Some((Ok(chunk), st))
    })
}

/// A WebSocket viewer: `{"type":"lines","lines":[...]}` frames, `{"type":"end",...}`,
/// pings every heartbeat; close 4001 when the token expires, 1012 at shutdown.
async fn ws_session(
    s: Arc<AppState>,
    socket: WebSocket,
    mut rx: tokio::sync::mpsc::Receiver<ViewerEvent>,
    expires_in: Duration,
) {
    let (mut tx, mut incoming) = socket.split();
    let heartbeat = Duration::from_secs(s.config.heartbeat_secs);
    let mut hb = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let expiry = tokio::time::sleep(expires_in);
    tokio::pin!(expiry);
    let mut shutdown = s.shutdown.clone();
    let close = |code: u16, reason: &'static str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    };
    loop {
        let msg = tokio::select! {
            ev = rx.recv() => match ev {
                Some(ViewerEvent::Lines(lines)) => Message::Text(String::from_utf8(crate::hub::encode_ws(&lines)).expect("JSON is UTF-8").into()),
                Some(ViewerEvent::Frame(frame)) => Message::Text(String::from_utf8(frame.ws.to_vec()).expect("JSON is UTF-8").into()),
                Some(ViewerEvent::End(c)) => {
                    let mut end = completion_json(&c);
                    end["type"] = json!("end");
                    let _ = tx.send(Message::Text(end.to_string().into())).await;
                    let _ = tx.send(close(1000, "deployment completed")).await;
                    return;
                }
                None => return,
            },
            _ = hb.tick() => Message::Ping(Bytes::new()),
            () = &mut expiry => {
                let _ = tx.send(close(4001, "token expired; reconnect with a fresh token and the last cursor")).await;
                return;
            }
            _ = shutdown.changed() => {
                let _ = tx.send(close(1012, "gateway restarting; reconnect with the last cursor")).await;
                return;
            }
            m = incoming.next() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
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

fn export_line(out: &mut Vec<u8>, format: Format, id: &LogId, r: LogRecord) {
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

async fn export(
    State(s): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    require(&p, Scope::Export)?;
    let lid = log_id(&p, &id)?;
    let mut allowed = FILTERS.to_vec();
    allowed.extend(["format", "cursor"]);
    let rp = read_params(&q, &lid, &allowed)?;
    // `cursor`: resume an interrupted export after the last line received.
    let resume_from = rp.cursor.as_ref().map(|c| c.seq);
    let (format, ext, ctype) = match q.get("format").map(String::as_str) {
        None | Some("text") => (Format::Text, "log", "text/plain; charset=utf-8"),
        Some("ndjson") => (Format::Ndjson, "ndjson", "application/x-ndjson"),
        Some("csv") => (Format::Csv, "csv", "text/csv; charset=utf-8"),
        Some(f) => {
            return Err(ApiError::bad_request(
                "invalid_format",
                format!("format {f:?} must be text, ndjson or csv"),
            ));
        }
    };
    let log = existing_log(&s, &lid).await?;
    s.audit(
        "export",
        &p.subject,
        &lid.tenant,
        &lid.deployment,
        "ok",
        None,
    );
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    // Constant memory: one page at a time from the store, through a bounded channel.
    tokio::task::spawn_blocking(move || {
        let mut enc =
            gzip.then(|| flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        let mut from = resume_from.unwrap_or(0);
        let mut first = resume_from.is_none();
        loop {
            let page = match log.read(Direction::Forward, from, &rp.filter, 5000) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "export read failed");
                    let _ = tx
                        .blocking_send(Err(std::io::Error::other("export aborted: storage error")));
                    return;
                }
            };
            let mut chunk = Vec::new();
            if first && format == Format::Csv {
                chunk.extend_from_slice(logstream_model::export::CSV_HEADER);
            }
            first = false;
            for r in page.records {
                export_line(&mut chunk, format, &lid, r);
            }
            from = page.scanned_to;
            let done = page.exhausted;
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
            if (!out.is_empty() || done) && tx.blocking_send(Ok(Bytes::from(out))).is_err() {
                return;
            }
            if done {
                return;
            }
        }
    });
    let mut resp = Response::builder()
        .header(header::CONTENT_TYPE, ctype)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{id}.{ext}\""),
        )
        .header(header::VARY, "accept-encoding");
    if gzip {
        resp = resp.header(header::CONTENT_ENCODING, "gzip");
    }
    Ok(resp
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .expect("valid response"))
}
