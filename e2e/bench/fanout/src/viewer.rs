//! One viewer: opens a live stream (SSE or WebSocket), waits for its first line, then
//! either measures every line it receives or, when stalled, never reads its socket again.
//!
//! ```text
//! connect (bounded by the gate) ─> first line ─> ready ─┬─ measured: read, now - sent per line
//!                                                       └─ stalled: hold the socket, read nothing
//! ```
//!
//! Both transports are a [`Feed`]: something that yields payloads (an SSE `data:` value, a
//! WebSocket text frame) with the time they were read. One loop serves both, so SSE and
//! WebSocket rows are measured by the same code.

use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::http::{self, Body, Endpoint};

/// The live transport a viewer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Server-sent events (`Accept: text/event-stream`).
    Sse,
    /// WebSocket (HTTP Upgrade).
    Ws,
}

/// Where a viewer finds the pusher's message in a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// logstream: line JSON (`{"cursor",...,"message":"..."}`), one per SSE event or
    /// several in a WebSocket `{"type":"lines","lines":[...]}` frame.
    LineJson,
    /// nchan: the payload is the published message itself.
    Raw,
}

/// The wall clock in Unix nanoseconds: the pusher stamps lines with it and viewers
/// subtract it on receipt (same machine, same clock).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Parses a pushed message, `<seq> <send_unix_nanos>`. Anything else (the warm-up line)
/// is `None`.
pub fn parse_message(m: &[u8]) -> Option<(u64, u64)> {
    let space = memchr::memchr(b' ', m)?;
    let seq = std::str::from_utf8(&m[..space]).ok()?.parse().ok()?;
    let sent = std::str::from_utf8(&m[space + 1..]).ok()?.parse().ok()?;
    Some((seq, sent))
}

static MESSAGE_KEY: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"\"message\":\""));

/// Calls `f` with each message in one payload and returns how many there were.
///
/// For line JSON this finds every `"message":"` key and takes the string up to the next
/// quote, without a JSON parser: the pusher's messages are digits and one space (no
/// escapes), and at 10,000 viewers a full parse per line would make the generator, not
/// the server, the thing measured.
pub fn for_each_message(payload: &[u8], format: Format, mut f: impl FnMut(&[u8])) -> usize {
    match format {
        Format::Raw => {
            f(payload);
            1
        }
        Format::LineJson => {
            let mut count = 0;
            let mut at = 0;
            while let Some(i) = MESSAGE_KEY.find(&payload[at..]) {
                let start = at + i + MESSAGE_KEY.needle().len();
                let Some(len) = memchr::memchr(b'"', &payload[start..]) else {
                    break;
                };
                f(&payload[start..start + len]);
                count += 1;
                at = start + len + 1;
            }
            count
        }
    }
}

/// Consumes every complete line of `text` (an SSE body) and calls `f` with each `data:`
/// value (one leading space removed, as the SSE spec says). An incomplete last line stays
/// in `text` for the next read.
pub fn sse_data(text: &mut Vec<u8>, mut f: impl FnMut(&[u8])) {
    let mut at = 0;
    while let Some(nl) = memchr::memchr(b'\n', &text[at..]) {
        let mut line = &text[at..at + nl];
        if let Some(l) = line.strip_suffix(b"\r") {
            line = l;
        }
        if let Some(value) = line.strip_prefix(b"data:") {
            f(value.strip_prefix(b" ").unwrap_or(value));
        }
        at += nl + 1;
    }
    text.drain(..at);
}

/// What one viewer received: which lines (a bitset over the pusher's seqs), how late, and
/// how many twice.
#[derive(Debug)]
pub struct Tally {
    /// Bit `seq` is set once line `seq` arrived.
    seen: Vec<u64>,
    /// Lines the pusher was asked to send (seqs `0..lines`).
    lines: u64,
    /// Receipt minus send time of each line's first arrival, in microseconds.
    pub latencies_us: Vec<u32>,
    /// Arrivals of a line already seen.
    pub duplicates: u64,
}

impl Tally {
    pub fn new(lines: u64) -> Tally {
        Tally {
            seen: vec![0; lines.div_ceil(64) as usize],
            lines,
            latencies_us: Vec::new(),
            duplicates: 0,
        }
    }

    /// Records one message received at `now` (Unix ns); true when it is a line not seen
    /// before.
    pub fn record(&mut self, message: &[u8], now: u64) -> bool {
        let Some((seq, sent)) = parse_message(message) else {
            return false;
        };
        if seq >= self.lines {
            return false;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return false;
        }
        self.seen[word] |= bit;
        let us = now.saturating_sub(sent) / 1_000;
        self.latencies_us.push(us.min(u32::MAX as u64) as u32);
        true
    }

    /// How many of the lines in `mask` (a bitset in the same layout) arrived.
    pub fn seen_among(&self, mask: &[u64]) -> u64 {
        self.seen
            .iter()
            .zip(mask)
            .map(|(s, m)| u64::from((s & m).count_ones()))
            .sum()
    }
}

/// What all viewers of a row share with the driver.
#[derive(Default)]
pub struct Shared {
    /// Viewers that received their first line (stalled ones included).
    pub ready: AtomicUsize,
    /// Of those, the ones that read (not stalled): the drain waits for their lines.
    pub measured_ready: AtomicUsize,
    /// Viewers that could not open their stream.
    pub failed: AtomicUsize,
    /// New lines received by measured viewers, summed: the drain ends when it reaches
    /// lines accepted x measured viewers.
    pub received: AtomicU64,
    /// Woken whenever `ready` or `failed` moves, so the driver awaits the last viewer
    /// instead of sleeping.
    pub progress: Notify,
}

/// One viewer's instructions.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The stream URL (a target plus the system's stream path).
    pub endpoint: Endpoint,
    pub transport: Transport,
    pub format: Format,
    /// Sent as `Authorization: Bearer` when set.
    pub token: Option<String>,
    /// Stops reading after its first line (on a socket with a small receive buffer, see
    /// [`STALLED_RECV_BUFFER`]).
    pub stalled: bool,
    /// Lines the pusher will send (sizes the tally).
    pub lines: u64,
}

/// How one viewer's row went.
#[derive(Debug)]
pub struct Outcome {
    pub stalled: bool,
    /// The stream opened and delivered its first line.
    pub connected: bool,
    /// The stream ended (closed or broken) before the row did.
    pub disconnected: bool,
    pub error: Option<String>,
    pub tally: Tally,
}

/// Runs one viewer until `stop` turns true.
pub async fn run(
    plan: Plan,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> Outcome {
    let mut outcome = Outcome {
        stalled: plan.stalled,
        connected: false,
        disconnected: false,
        error: None,
        tally: Tally::new(plan.lines),
    };
    let opened = tokio::select! {
        _ = stop.wait_for(|s| *s) => Err(anyhow::anyhow!("still connecting when the row ended")),
        r = async {
            let _permit = gate.acquire().await?;
            open(&plan, &mut outcome.tally).await
        } => r,
    };
    let mut feed = match opened {
        Ok(feed) => feed,
        Err(e) => {
            outcome.error = Some(format!("{e:#}"));
            shared.failed.fetch_add(1, Ordering::Relaxed);
            shared.progress.notify_one();
            return outcome;
        }
    };
    outcome.connected = true;
    if !plan.stalled {
        shared.measured_ready.fetch_add(1, Ordering::Relaxed);
    }
    shared.ready.fetch_add(1, Ordering::Relaxed);
    shared.progress.notify_one();

    if plan.stalled {
        // Keep the socket open and never read it: the server sees a reader that stopped.
        let _ = stop.wait_for(|s| *s).await;
        drop(feed);
        return outcome;
    }
    let tally = &mut outcome.tally;
    loop {
        let mut fresh = 0;
        let mut on_payload = |payload: &[u8], now| {
            for_each_message(payload, plan.format, |m| {
                fresh += u64::from(tally.record(m, now));
            });
        };
        let next = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            r = feed.next(&mut on_payload) => r,
        };
        if fresh > 0 {
            shared.received.fetch_add(fresh, Ordering::Relaxed);
        }
        match next {
            Ok(true) => {}
            Ok(false) => {
                outcome.disconnected = true;
                break;
            }
            Err(e) => {
                outcome.disconnected = true;
                outcome.error = Some(format!("{e:#}"));
                break;
            }
        }
    }
    outcome
}

/// Opens the stream and reads until its first line (the warm-up line pushed before any
/// viewer connected), so a ready viewer is known to be attached to the live deployment.
async fn open(plan: &Plan, tally: &mut Tally) -> anyhow::Result<Feed> {
    let mut feed = match plan.transport {
        Transport::Sse => Feed::Sse(SseFeed::open(plan).await?),
        Transport::Ws => Feed::Ws(Box::new(open_ws(plan).await?)),
    };
    let mut seen = false;
    while !seen {
        let open = feed
            .next(&mut |payload, now| {
                for_each_message(payload, plan.format, |m| {
                    seen = true;
                    tally.record(m, now);
                });
            })
            .await?;
        if !open {
            bail!("the stream ended before its first line");
        }
    }
    Ok(feed)
}

/// A live stream, whatever its transport.
enum Feed {
    Sse(SseFeed),
    Ws(Box<WebSocketStream<TcpStream>>),
}

impl Feed {
    /// Waits for the next read and calls `on` with each payload in it and the time it
    /// was read; false once the stream ended.
    async fn next(&mut self, on: &mut (dyn FnMut(&[u8], u64) + Send)) -> anyhow::Result<bool> {
        match self {
            Feed::Sse(sse) => sse.next(on).await,
            Feed::Ws(ws) => match ws.next().await {
                None | Some(Ok(Message::Close(_))) => Ok(false),
                Some(Ok(Message::Text(t))) => {
                    on(t.as_str().as_bytes(), unix_nanos());
                    Ok(true)
                }
                Some(Ok(Message::Binary(b))) => {
                    on(&b, unix_nanos());
                    Ok(true)
                }
                // Pings are answered by tungstenite on the next read.
                Some(Ok(_)) => Ok(true),
                Some(Err(e)) => Err(e.into()),
            },
        }
    }
}

/// An SSE response body read straight off the socket.
struct SseFeed {
    stream: TcpStream,
    body: Body,
    /// Bytes read but not yet decoded (a partial chunk-size line).
    raw: Vec<u8>,
    /// Decoded body not yet split into lines (a partial line).
    text: Vec<u8>,
    /// The read buffer.
    buf: Box<[u8]>,
    /// Bytes that came with the response head wait in `raw` for the first `next`.
    primed: bool,
}

/// Receive buffer of a stalled viewer's socket. Left to autotuning, loopback would let
/// the kernel take megabytes for a reader that never reads, and the server would not see
/// it stall within a 10 s row; a slow client far away fills up about this early.
const STALLED_RECV_BUFFER: u32 = 16 << 10;

/// The receive buffer a viewer's socket gets: fixed when stalled, the kernel's otherwise.
fn recv_buffer(plan: &Plan) -> Option<u32> {
    plan.stalled.then_some(STALLED_RECV_BUFFER)
}

/// Read buffer per SSE viewer: a behind viewer takes many events per syscall, and
/// 10,000 of them cost 160 MiB, which the generator can afford.
const SSE_READ_BUFFER: usize = 16 << 10;

impl SseFeed {
    async fn open(plan: &Plan) -> anyhow::Result<SseFeed> {
        let mut stream = http::connect(&plan.endpoint.authority, recv_buffer(plan)).await?;
        let auth = plan.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![
            ("Accept", "text/event-stream"),
            ("Cache-Control", "no-cache"),
        ];
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        stream
            .write_all(&http::request_bytes("GET", &plan.endpoint, &headers, b""))
            .await?;
        let (head, rest) = http::read_head(&mut stream).await?;
        if head.status != 200 {
            bail!(
                "GET {}: HTTP {}: {}",
                plan.endpoint.path,
                head.status,
                String::from_utf8_lossy(&rest[..rest.len().min(300)])
            );
        }
        Ok(SseFeed {
            stream,
            body: Body::new(head.framing),
            raw: rest,
            text: Vec::new(),
            buf: vec![0; SSE_READ_BUFFER].into_boxed_slice(),
            primed: false,
        })
    }

    async fn next(&mut self, on: &mut (dyn FnMut(&[u8], u64) + Send)) -> anyhow::Result<bool> {
        let now;
        if !self.primed && !self.raw.is_empty() {
            self.primed = true;
            now = unix_nanos();
            let used = self.body.feed(&self.raw, &mut self.text)?;
            self.raw.drain(..used);
        } else {
            self.primed = true;
            let n = self.stream.read(&mut self.buf).await?;
            if n == 0 {
                return Ok(false);
            }
            now = unix_nanos();
            if self.raw.is_empty() {
                let used = self.body.feed(&self.buf[..n], &mut self.text)?;
                self.raw.extend_from_slice(&self.buf[used..n]);
            } else {
                self.raw.extend_from_slice(&self.buf[..n]);
                let used = self.body.feed(&self.raw, &mut self.text)?;
                self.raw.drain(..used);
            }
        }
        sse_data(&mut self.text, |payload| on(payload, now));
        Ok(!self.body.done())
    }
}

/// WebSocket read buffer per viewer (tungstenite's default is 128 KiB, eagerly
/// allocated: 1.25 GiB at 10,000 viewers).
const WS_READ_BUFFER: usize = 16 << 10;

async fn open_ws(plan: &Plan) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let stream = http::connect(&plan.endpoint.authority, recv_buffer(plan)).await?;
    let url = format!("ws://{}{}", plan.endpoint.authority, plan.endpoint.path);
    let mut request = url.as_str().into_client_request()?;
    if let Some(t) = &plan.token {
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {t}").parse().context("token")?,
        );
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0);
    match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            bail!("WebSocket {url}: HTTP {}: {body}", resp.status())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("WebSocket {url}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_found_in_line_json_and_websocket_frames() {
        let sse = br#"{"cursor":"c1","seq":2,"ts":"2026-01-01T00:00:00Z","step":"","stream":"stdout","level":"info","message":"7 1700000000000000000"}"#;
        let mut got = Vec::new();
        assert_eq!(
            for_each_message(sse, Format::LineJson, |m| got.push(m.to_vec())),
            1
        );
        assert_eq!(got, vec![b"7 1700000000000000000".to_vec()]);

        let ws = br#"{"type":"lines","lines":[{"seq":1,"message":"warmup"},{"seq":2,"message":"0 5"},{"seq":3,"message":"1 6"}]}"#;
        let mut got = Vec::new();
        for_each_message(ws, Format::LineJson, |m| got.push(parse_message(m)));
        assert_eq!(got, vec![None, Some((0, 5)), Some((1, 6))]);
        assert_eq!(
            for_each_message(br#"{"type":"end"}"#, Format::LineJson, |_| ()),
            0
        );
        assert_eq!(for_each_message(b"3 9", Format::Raw, |_| ()), 1);
    }

    #[test]
    fn sse_data_lines_are_taken_whole_and_partial_lines_wait() {
        let mut text = b"retry: 1000\n\nid: c1\nevent: line\ndata: {\"message\":\"0 1\"}\r\n\n: hb\ndata:x\ndata: par".to_vec();
        let mut got = Vec::new();
        sse_data(&mut text, |d| got.push(d.to_vec()));
        assert_eq!(got, vec![b"{\"message\":\"0 1\"}".to_vec(), b"x".to_vec()]);
        assert_eq!(text, b"data: par");
        text.extend_from_slice(b"tial\n");
        got.clear();
        sse_data(&mut text, |d| got.push(d.to_vec()));
        assert_eq!(got, vec![b"partial".to_vec()]);
        assert!(text.is_empty());
    }

    #[test]
    fn a_tally_counts_each_line_once_and_duplicates_apart() {
        let mut t = Tally::new(100);
        assert!(t.record(b"5 1000000", 3_000_000));
        assert!(!t.record(b"5 1000000", 4_000_000));
        assert!(!t.record(b"warmup", 4_000_000));
        assert!(!t.record(b"100 1", 4_000_000), "beyond the pushed range");
        assert!(t.record(b"99 10", 5));
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.latencies_us, vec![2_000, 0]);
        let mut mask = vec![0u64; 2];
        mask[0] = 1 << 5 | 1 << 6;
        assert_eq!(t.seen_among(&mask), 1);
        mask[1] = 1 << (99 - 64);
        assert_eq!(t.seen_among(&mask), 2);
    }
}
