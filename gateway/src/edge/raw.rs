//! The edge's connections. A connection whose first request is a live stream
//! (`GET /v1/deployments/{id}/stream`, SSE or WebSocket) is served here directly: the
//! request head is peeked and parsed (httparse), and from then on the connection is a
//! socket and a [`Follower`] — no HTTP library state, no read or write buffers kept per
//! viewer; frames go out as the shared `Bytes` they are (vectored writes). Every other
//! connection goes to hyper (axum) untouched: the edge's probes, metrics, a stream on a
//! reused connection (a [`FollowerBody`], or a WebSocket upgrade pumped the same way)
//! and everything forwarded to the store.

use std::collections::HashMap;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use sha1::Digest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Edge;
use super::follow::{self, Follower, Format, Out, StreamRequest};
use crate::core::Error;
use crate::hub;

/// Largest request head served on the lean path (larger ones go to hyper).
const MAX_HEAD: usize = 8 << 10;

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\nconnection: close\r\n\r\nretry: 1000\n\n";

/// Accepts until `stop`, then tells every viewer to reconnect and lets hyper's
/// connections finish.
pub async fn serve(
    edge: Arc<Edge>,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()>,
) {
    let mcp_stop = tokio_util::sync::CancellationToken::new();
    let mut app = router(&edge);
    match mcp(&edge, &listener, mcp_stop.clone()) {
        Ok(Some(mcp)) => app = app.merge(mcp),
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "/mcp is not served"),
    }
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            c = crate::server::accept(&listener) => c,
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let edge = edge.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            if let Some(stream) = lean(&edge, stream, peer).await {
                serve_hyper(&edge, stream, peer, app, watcher).await;
            }
        });
    }
    edge.shut_down();
    mcp_stop.cancel();
    // Viewers end themselves with `reconnect` (close 1012): give them time to say so.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while edge.metrics.live.get() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        graceful.shutdown().await;
    })
    .await;
}

async fn serve_hyper(
    edge: &Edge,
    stream: TcpStream,
    peer: SocketAddr,
    app: axum::Router,
    watcher: hyper_util::server::graceful::Watcher,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(edge.config.header_read_timeout_secs));
    builder.http2().timer(TokioTimer::new());
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move {
            use tower::Service;
            app.call(req.map(Body::new)).await
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    let _ = watcher.watch(conn.into_owned()).await;
}

/// The edge's hyper routes.
fn router(edge: &Arc<Edge>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(super::proxy::readyz))
        .route("/metrics", axum::routing::get(metrics))
        .route("/v1/deployments/{id}/stream", axum::routing::get(stream))
        .merge(crate::ui::routes())
        .fallback(super::proxy::forward)
        .with_state(edge.clone())
}

/// `/mcp`, calling this edge's own listener (which forwards to the store) with the
/// caller's token; tokens are checked here first, like the edge's live streams.
fn mcp(
    edge: &Arc<Edge>,
    listener: &TcpListener,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Option<axum::Router>> {
    let verify: crate::mcp::Verify = {
        let edge = edge.clone();
        Arc::new(move |token, _client| {
            let edge = edge.clone();
            Box::pin(async move {
                let token = token?;
                edge.auth.verify_request(&token).await.map_err(Error::from)
            })
        })
    };
    crate::mcp::routes(&edge.config.mcp, listener.local_addr()?, verify, stop)
}

async fn metrics(State(edge): State<Arc<Edge>>) -> String {
    edge.render_metrics()
}

/// What a peeked request head says.
struct Head {
    len: usize,
    deployment: String,
    query: HashMap<String, String>,
    authorization: Option<Vec<u8>>,
    proxy_authorization: Option<Vec<u8>>,
    last_event_id: Option<String>,
    /// `Sec-WebSocket-Key` of a WebSocket upgrade.
    ws_key: Option<String>,
    ws_version_ok: bool,
    sse: bool,
}

/// Serves the connection here if its first request is a live stream; otherwise gives
/// it back untouched (nothing consumed) for hyper.
async fn lean(edge: &Arc<Edge>, stream: TcpStream, peer: SocketAddr) -> Option<TcpStream> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(edge.config.header_read_timeout_secs);
    let head = {
        let mut buf = vec![0u8; MAX_HEAD];
        let mut delay = Duration::from_millis(1);
        loop {
            if tokio::time::timeout_at(deadline, stream.readable())
                .await
                .is_err()
            {
                // Hyper applies the same timeout and answers it.
                return Some(stream);
            }
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            };
            match parse_head(&buf[..n]) {
                Parsed::Stream(head) => break head,
                Parsed::Other => return Some(stream),
                Parsed::Partial if n == buf.len() => return Some(stream),
                Parsed::Partial => {
                    // Peeking does not consume: wait a little before looking again.
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(100));
                }
            }
        }
    };
    let mut stream = stream;
    let mut consumed = vec![0u8; head.len];
    if stream.read_exact(&mut consumed).await.is_err() {
        return None;
    }
    drop(consumed);
    let format = if head.ws_key.is_some() {
        Format::Ws
    } else if head.sse {
        Format::Sse
    } else {
        let e = Error::new(
            crate::core::ErrorKind::NotAcceptable,
            "not_acceptable",
            "ask for Server-Sent Events with `Accept: text/event-stream`, or upgrade to a WebSocket",
        );
        write_error(&mut stream, e).await;
        return None;
    };
    if format == Format::Ws && !head.ws_version_ok {
        let e = Error::invalid(
            "bad_upgrade",
            "WebSocket upgrades need Sec-WebSocket-Version: 13",
        );
        write_error(&mut stream, e).await;
        return None;
    }
    let req = StreamRequest {
        deployment: head.deployment,
        query: head.query,
        last_event_id: head.last_event_id,
        authorization: head.authorization.as_deref(),
        proxy_authorization: head.proxy_authorization.as_deref(),
        format,
        peer,
    };
    let follower = match follow::open(edge, req).await {
        Ok(f) => f,
        Err(e) => {
            write_error(&mut stream, e).await;
            return None;
        }
    };
    let answer = match &head.ws_key {
        Some(key) => ws_accept_head(key),
        None => SSE_HEAD.to_vec(),
    };
    if stream.write_all(&answer).await.is_err() {
        return None;
    }
    let (rd, wr) = stream.into_split();
    pump(rd, wr, follower, edge.config.slow_viewer_timeout_secs).await;
    None
}

enum Parsed {
    Stream(Head),
    Other,
    Partial,
}

fn parse_head(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if req.method != Some("GET") || req.version != Some(1) {
        return Parsed::Other;
    }
    let Some(target) = req.path else {
        return Parsed::Other;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let Some(id) = path
        .strip_prefix("/v1/deployments/")
        .and_then(|r| r.strip_suffix("/stream"))
    else {
        return Parsed::Other;
    };
    let Some(deployment) = percent_decode(id).filter(|d| !d.is_empty() && !d.contains('/')) else {
        return Parsed::Other;
    };
    let mut head = Head {
        len,
        deployment,
        query: HashMap::new(),
        authorization: None,
        proxy_authorization: None,
        last_event_id: None,
        ws_key: None,
        ws_version_ok: false,
        sse: false,
    };
    let Ok(pairs) = serde_urlencoded::from_str::<Vec<(String, String)>>(query) else {
        return Parsed::Other;
    };
    head.query = pairs.into_iter().collect();
    let mut upgrade = false;
    for h in req.headers.iter() {
        let v = h.value;
        match h.name.to_ascii_lowercase().as_str() {
            "authorization" => head.authorization = Some(v.to_vec()),
            "logstream-authorization" => head.proxy_authorization = Some(v.to_vec()),
            "last-event-id" => head.last_event_id = std::str::from_utf8(v).ok().map(str::to_owned),
            "accept" => head.sse |= contains(v, b"text/event-stream"),
            "upgrade" => upgrade = v.eq_ignore_ascii_case(b"websocket"),
            "sec-websocket-key" => {
                head.ws_key = std::str::from_utf8(v).ok().map(|k| k.trim().to_owned())
            }
            "sec-websocket-version" => head.ws_version_ok = v == b"13",
            // A body on a GET, or anything hyper would have to interpret: not ours.
            "content-length" | "transfer-encoding" | "expect" => return Parsed::Other,
            _ => {}
        }
    }
    if !upgrade {
        head.ws_key = None;
    }
    Parsed::Stream(head)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The 101 answer to a WebSocket upgrade (RFC 6455 4.2.2).
fn ws_accept_head(key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
        ws_accept(key)
    )
    .into_bytes()
}

fn ws_accept(key: &str) -> String {
    let mut sha = sha1::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// An error answer on the lean path: the same status, headers and JSON body as the
/// store's (one mapping, `impl IntoResponse for Error`), then the connection closes.
async fn write_error(stream: &mut TcpStream, e: Error) {
    let resp = e.into_response();
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-length: {}\r\nconnection: close\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or(""),
        body.len()
    );
    for (k, v) in &parts.headers {
        if let Ok(v) = v.to_str() {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

/// How an event goes on the wire.
fn encode(out: Out, format: Format) -> (Vec<Bytes>, bool) {
    match format {
        Format::Sse => match out {
            Out::Data(b) => (b, false),
            Out::Heartbeat => (vec![Bytes::from_static(hub::SSE_HEARTBEAT)], false),
            Out::Waiting => (vec![Bytes::from_static(hub::SSE_WAITING)], false),
            Out::End(c) => (vec![hub::end_sse(&c)], true),
            Out::Closed(e) if e.code == "auth_expired" => {
                (vec![Bytes::from_static(hub::SSE_AUTH_EXPIRED)], true)
            }
            Out::Closed(e) if e.code == "deployment_deleted" => {
                (vec![hub::deleted_sse(e.code, &e.message)], true)
            }
            Out::Closed(e) => (
                vec![Bytes::from(format!(
                    "event: reconnect\ndata: {}\n\n",
                    serde_json::json!({"code": e.code, "message": e.message})
                ))],
                true,
            ),
        },
        Format::Ws => match out {
            Out::Data(msgs) => {
                let mut v = Vec::with_capacity(msgs.len() * 2);
                for m in msgs {
                    v.push(ws_header(0x1, m.len()));
                    v.push(m);
                }
                (v, false)
            }
            Out::Heartbeat => (vec![Bytes::from_static(&[0x89, 0x00])], false),
            Out::Waiting => (
                vec![
                    ws_header(0x1, hub::WS_WAITING.len()),
                    Bytes::from_static(hub::WS_WAITING.as_bytes()),
                ],
                false,
            ),
            Out::End(c) => {
                let end = hub::end_ws(&c);
                (
                    vec![
                        ws_header(0x1, end.len()),
                        Bytes::from(end),
                        ws_close(1000, "deployment completed"),
                    ],
                    true,
                )
            }
            Out::Closed(e) => {
                let (code, reason) = match e.code {
                    "auth_expired" => (
                        4001,
                        "token expired; reconnect with a fresh token and the last cursor",
                    ),
                    "shutting_down" => (1012, "gateway restarting; reconnect with the last cursor"),
                    "too_slow" => (1013, "too slow; reconnect with the last cursor"),
                    "deployment_deleted" => (4004, "deployment deleted"),
                    _ => (1011, "the store failed; reconnect with the last cursor"),
                };
                (vec![ws_close(code, reason)], true)
            }
        },
    }
}

/// A server frame header (never masked).
fn ws_header(opcode: u8, len: usize) -> Bytes {
    let mut h = Vec::with_capacity(10);
    h.push(0x80 | opcode);
    if len < 126 {
        h.push(len as u8);
    } else if len <= u16::MAX as usize {
        h.push(126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(127);
        h.extend_from_slice(&(len as u64).to_be_bytes());
    }
    Bytes::from(h)
}

fn ws_close(code: u16, reason: &str) -> Bytes {
    let mut f = vec![0x88, (2 + reason.len()) as u8];
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(reason.as_bytes());
    Bytes::from(f)
}

/// What a client's WebSocket frames ask for.
#[derive(Default)]
struct WsIn {
    buf: Vec<u8>,
    /// Payload bytes of a data frame still to skip.
    skip: u64,
}

enum WsAsk {
    Pong(Bytes),
    Close,
}

impl WsIn {
    /// Takes `data`; returns what to answer. Errors close the connection.
    fn feed(&mut self, mut data: &[u8]) -> Result<Vec<WsAsk>, ()> {
        let mut asks = Vec::new();
        loop {
            if self.skip > 0 {
                let n = (self.skip as usize).min(data.len());
                self.skip -= n as u64;
                data = &data[n..];
            }
            if data.is_empty() && self.buf.is_empty() {
                return Ok(asks);
            }
            self.buf.extend_from_slice(data);
            data = &[];
            let b = &self.buf;
            if b.len() < 2 {
                return Ok(asks);
            }
            let opcode = b[0] & 0x0f;
            if b[1] & 0x80 == 0 {
                return Err(()); // clients must mask
            }
            let (len, mut at) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as u64, 4),
                127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().expect("8")), 10),
                126 | 127 => return Ok(asks),
                n => (n as u64, 2),
            };
            if b.len() < at + 4 {
                return Ok(asks);
            }
            let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            if opcode >= 0x8 {
                // Control frames carry at most 125 bytes: wait for all of it.
                if len > 125 {
                    return Err(());
                }
                if (b.len() as u64) < at as u64 + len {
                    if self.buf.len() > 256 {
                        return Err(());
                    }
                    return Ok(asks);
                }
                let payload: Vec<u8> = b[at..at + len as usize]
                    .iter()
                    .enumerate()
                    .map(|(i, x)| x ^ mask[i % 4])
                    .collect();
                self.buf.drain(..at + len as usize);
                match opcode {
                    0x8 => {
                        asks.push(WsAsk::Close);
                        return Ok(asks);
                    }
                    0x9 => asks.push(WsAsk::Pong(Bytes::from(payload))),
                    _ => {}
                }
            } else {
                // Data from the client means nothing here: skip it.
                let have = (b.len() - at) as u64;
                let take = have.min(len);
                self.skip = len - take;
                self.buf.drain(..at + take as usize);
            }
        }
    }
}

/// Sends `bufs` whole (vectored; the shared frames are not copied).
async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, mut bufs: Vec<Bytes>) -> std::io::Result<()> {
    let mut first = 0;
    while first < bufs.len() {
        let slices: Vec<IoSlice<'_>> = bufs[first..]
            .iter()
            .take(64)
            .map(|b| IoSlice::new(b))
            .collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let b = &mut bufs[first];
            if n >= b.len() {
                n -= b.len();
                first += 1;
            } else {
                let _ = b.split_to(n);
                n = 0;
            }
        }
        while first < bufs.len() && bufs[first].is_empty() {
            first += 1;
        }
    }
    Ok(())
}

/// Feeds a viewer's connection until either side ends it. A write that the client
/// does not take within `slow_secs` drops the viewer (it resumes from its cursor).
pub async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut rd: R,
    mut wr: W,
    mut follower: Follower,
    slow_secs: u64,
) {
    let format = follower.format();
    let slow = Duration::from_secs(slow_secs.max(1));
    let mut ws_in = (format == Format::Ws).then(WsIn::default);
    let mut scratch = [0u8; 128];
    loop {
        let mut pongs = Vec::new();
        let out = tokio::select! {
            out = std::future::poll_fn(|cx| follower.poll_next(cx)) => out,
            r = rd.read(&mut scratch) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                match ws_in.as_mut().map(|w| w.feed(&scratch[..n])) {
                    None => continue, // SSE clients have nothing to say
                    Some(Err(())) => return,
                    Some(Ok(asks)) => {
                        for a in asks {
                            match a {
                                WsAsk::Close => {
                                    let _ = write_all(&mut wr, vec![ws_close(1000, "")]).await;
                                    return;
                                }
                                WsAsk::Pong(p) => {
                                    pongs.push(ws_header(0xA, p.len()));
                                    pongs.push(p);
                                }
                            }
                        }
                    }
                }
                if pongs.is_empty() { continue; }
                let _ = tokio::time::timeout(slow, write_all(&mut wr, pongs)).await;
                continue;
            }
        };
        let Some(out) = out else { return };
        let (bufs, last) = encode(out, format);
        match tokio::time::timeout(slow, write_all(&mut wr, bufs)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                follower.dropped_slow();
                return;
            }
        }
        if last {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

// === Streams on connections hyper serves ===

/// A live stream on a connection hyper serves (one reused for another request first).
async fn stream(
    State(edge): State<Arc<Edge>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let h = req.headers();
    let ws_key = h
        .get(header::UPGRADE)
        .filter(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        .and(h.get("sec-websocket-key"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let sse = h
        .get(header::ACCEPT)
        .is_some_and(|v| contains(v.as_bytes(), b"text/event-stream"));
    let format = match (&ws_key, sse) {
        (Some(_), _) => Format::Ws,
        (None, true) => Format::Sse,
        (None, false) => {
            return Error::new(
                crate::core::ErrorKind::NotAcceptable,
                "not_acceptable",
                "ask for Server-Sent Events with `Accept: text/event-stream`, or upgrade to a WebSocket",
            )
            .into_response();
        }
    };
    let open = StreamRequest {
        deployment: id,
        query,
        last_event_id: h
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        authorization: h.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
        proxy_authorization: h
            .get(crate::core::access::PROXY_SAFE_AUTHORIZATION)
            .map(|v| v.as_bytes()),
        format,
        peer,
    };
    let follower = match follow::open(&edge, open).await {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let Some(key) = ws_key else {
        return Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .header("x-accel-buffering", "no")
            .body(Body::new(FollowerBody {
                follower,
                preamble: true,
            }))
            .expect("valid response");
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let slow = edge.config.slow_viewer_timeout_secs;
    tokio::spawn(async move {
        if let Ok(io) = upgrade.await {
            let (rd, wr) = tokio::io::split(hyper_util::rt::TokioIo::new(io));
            pump(rd, wr, follower, slow).await;
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(header::CONNECTION, HeaderValue::from_static("upgrade"))
        .header("sec-websocket-accept", ws_accept(&key))
        .body(Body::empty())
        .expect("valid response")
}

/// An SSE body over a follower (hyper polls it; no task in between).
struct FollowerBody {
    follower: Follower,
    preamble: bool,
}

impl http_body::Body for FollowerBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.preamble {
            self.preamble = false;
            return Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                b"retry: 1000\n\n",
            )))));
        }
        let Some(out) = std::task::ready!(self.follower.poll_next(cx)) else {
            return Poll::Ready(None);
        };
        let (bufs, _) = encode(out, Format::Sse);
        let data = if bufs.len() == 1 {
            bufs.into_iter().next().expect("one")
        } else {
            Bytes::from(bufs.concat())
        };
        Poll::Ready(Some(Ok(http_body::Frame::data(data))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_websocket_accept_key_is_rfc_6455s() {
        // RFC 6455 1.3's example.
        assert_eq!(
            ws_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![0x80 | opcode];
        if payload.len() < 126 {
            f.push(0x80 | payload.len() as u8);
        } else {
            f.push(0x80 | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn client_frames_are_read_across_any_split() {
        let mut stream = masked(0x1, &[b'x'; 300]);
        stream.extend(masked(0x9, b"ping!"));
        stream.extend(masked(0x1, b"hello"));
        stream.extend(masked(0x8, &1000u16.to_be_bytes()));
        for chunk in [1, 2, 3, 7, 64, stream.len()] {
            let mut ws = WsIn::default();
            let mut asks = Vec::new();
            for part in stream.chunks(chunk) {
                asks.extend(ws.feed(part).expect("valid frames"));
            }
            assert!(
                matches!(&asks[..], [WsAsk::Pong(p), WsAsk::Close] if &p[..] == b"ping!"),
                "chunk {chunk}"
            );
        }
        assert!(
            WsIn::default().feed(&[0x81, 0x05, b'h']).is_err(),
            "unmasked"
        );
    }

    #[test]
    fn only_stream_requests_take_the_lean_path() {
        let get = b"GET /v1/deployments/build%2D1/stream?level=error&tail=5 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer t\r\n\r\n";
        let Parsed::Stream(h) = parse_head(get) else {
            panic!("a stream request");
        };
        assert_eq!(h.len, get.len());
        assert_eq!(h.deployment, "build-1");
        assert_eq!(h.query["level"], "error");
        assert!(h.sse && h.ws_key.is_none());
        assert!(matches!(parse_head(&get[..40]), Parsed::Partial));
        for other in [
            &b"GET /v1/deployments/x/logs HTTP/1.1\r\n\r\n"[..],
            b"POST /v1/deployments/x/stream HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\n\r\n",
            b"GET /v1/deployments/x/stream HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(other), Parsed::Other),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }
}
