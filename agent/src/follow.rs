//! Following a deployment live: one connection at a time (SSE or WebSocket), resumed
//! after the last line's cursor whenever it drops, so no line is missed or seen twice.
//!
//! ```text
//! next() ──connect (cursor | tail, wait=true)──> events ──Line──> cursor := line.cursor
//!   dropped / reconnect / retryable refusal ──> Event::Reconnecting ──backoff──> connect
//!   401 / auth_expired ──> the refresh callback (or the token file) ──> connect
//!   end ──> Event::End, then None;   final refusal ──> Err(Error::Api)
//! ```

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use logstream_model::wire;

use crate::{ApiError, Client, Error, Result};

/// How live lines are received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Server-Sent Events (`Accept: text/event-stream`).
    #[default]
    Sse,
    /// A WebSocket (batched JSON frames).
    Ws,
}

/// Where and how to follow.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// Start after this cursor. Default: the start (or `tail`).
    pub cursor: Option<String>,
    /// Start with the last N lines (until the first line arrives; then the cursor
    /// rules). Default: none.
    pub tail: Option<usize>,
    /// Filters, as the stream's query parameters (`level`, `step`, `stream`, `q`,
    /// `since`, `until`). Default: none.
    pub filters: Vec<(String, String)>,
    /// Wait for a deployment with no line yet ([`Event::Waiting`]) instead of a 404.
    /// Default: true.
    pub wait: bool,
    pub transport: Transport,
    /// 401s in a row (each after a token refresh) before the refusal is final.
    /// Default: 5.
    pub max_unauthorized: u32,
    /// First reconnection delay, doubled per attempt. Default: 200 ms.
    pub backoff_base: Duration,
    /// The longest reconnection delay (a `Retry-After` may be longer). Default: 10 s.
    pub backoff_cap: Duration,
}

impl Default for FollowOptions {
    fn default() -> FollowOptions {
        FollowOptions {
            cursor: None,
            tail: None,
            filters: Vec::new(),
            wait: true,
            transport: Transport::Sse,
            max_unauthorized: 5,
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(10),
        }
    }
}

/// What a follow yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The next line (each exactly once, in order, across reconnections).
    Line(wire::Line),
    /// The deployment has no line yet; the gateway holds the stream until it starts.
    Waiting,
    /// The connection dropped (`why`); the next call reconnects after `wait`.
    Reconnecting {
        /// Reconnections since the last line (from 1).
        attempt: u32,
        why: String,
        wait: Duration,
    },
    /// The deployment completed: the last event.
    End(wire::Completion),
}

type SseStream = Pin<
    Box<
        dyn Stream<
                Item = std::result::Result<
                    eventsource_stream::Event,
                    eventsource_stream::EventStreamError<reqwest::Error>,
                >,
            > + Send,
    >,
>;
type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum Conn {
    None,
    Sse(SseStream),
    Ws(Box<WsStream>),
}

/// A live follow of one deployment: call [`next`](Self::next) until it returns `None`
/// (after [`Event::End`]).
pub struct Follow {
    client: Client,
    deployment: String,
    options: FollowOptions,
    /// The last line's cursor: where a reconnection resumes.
    cursor: Option<String>,
    /// `tail`, until the first line.
    tail: Option<usize>,
    /// Reconnections since the last line or waiting notice.
    attempt: u32,
    /// 401s since the last line.
    unauthorized: u32,
    conn: Conn,
    /// Lines of a WebSocket frame not yet returned.
    queued: VecDeque<wire::Line>,
    /// Wait this long before the next connection.
    delay: Option<Duration>,
    ended: bool,
}

/// How one connection ended: why (for [`Event::Reconnecting`]), and not sooner than.
struct Dropped(String, Option<Duration>);

impl Follow {
    pub(crate) fn new(client: Client, deployment: String, options: FollowOptions) -> Follow {
        Follow {
            client,
            deployment,
            cursor: options.cursor.clone(),
            tail: options.tail,
            options,
            attempt: 0,
            unauthorized: 0,
            conn: Conn::None,
            queued: VecDeque::new(),
            delay: None,
            ended: false,
        }
    }

    /// The cursor of the last line returned (or the starting one).
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// The next event; `None` after [`Event::End`]. A final refusal (a viewer limit, a
    /// missing deployment, a token that cannot be refreshed) is `Err(Error::Api)`.
    pub async fn next(&mut self) -> Result<Option<Event>> {
        if self.ended {
            return Ok(None);
        }
        loop {
            if let Some(line) = self.queued.pop_front() {
                return Ok(Some(self.line(line)));
            }
            if matches!(self.conn, Conn::None) {
                if let Some(d) = self.delay.take() {
                    tokio::time::sleep(d).await;
                }
                if let Err(Dropped(why, at_least)) = self.connect().await? {
                    return Ok(Some(self.dropped(why, at_least)));
                }
            }
            let got = match &mut self.conn {
                Conn::None => continue,
                Conn::Sse(s) => next_sse(&self.client, s).await?,
                Conn::Ws(ws) => next_ws(&self.client, ws, &mut self.queued).await?,
            };
            match got {
                Ok(Some(Event::Line(line))) => return Ok(Some(self.line(line))),
                Ok(Some(ev)) => {
                    if let Event::End(_) = &ev {
                        self.ended = true;
                        self.conn = Conn::None;
                    } else {
                        self.attempt = 0;
                    }
                    return Ok(Some(ev));
                }
                Ok(None) => {}
                Err(Dropped(why, at_least)) => {
                    self.conn = Conn::None;
                    return Ok(Some(self.dropped(why, at_least)));
                }
            }
        }
    }

    fn line(&mut self, line: wire::Line) -> Event {
        self.attempt = 0;
        self.unauthorized = 0;
        self.cursor = Some(line.cursor.clone());
        self.tail = None;
        Event::Line(line)
    }

    fn dropped(&mut self, why: String, at_least: Option<Duration>) -> Event {
        self.attempt += 1;
        let wait = logstream_model::retry::backoff(
            self.attempt - 1,
            self.options.backoff_base,
            self.options.backoff_cap,
            rand::random(),
        )
        .max(at_least.unwrap_or_default());
        self.delay = Some(wait);
        Event::Reconnecting {
            attempt: self.attempt,
            why,
            wait,
        }
    }

    fn query(&self) -> Vec<(String, String)> {
        let mut q = self.options.filters.clone();
        if self.options.wait {
            q.push(("wait".into(), "true".into()));
        }
        if self.cursor.is_none()
            && let Some(n) = self.tail
        {
            q.push(("tail".into(), n.to_string()));
        }
        q
    }

    /// How a refused connection ends: reconnect when its code may be retried (after
    /// any `Retry-After`), or on a 401 while the token can be got again; otherwise the
    /// refusal is final.
    fn refused(&mut self, e: ApiError) -> Result<std::result::Result<(), Dropped>> {
        let retry = if e.unauthorized() {
            let refreshable =
                self.client.refreshable() && self.unauthorized < self.options.max_unauthorized;
            if refreshable {
                self.unauthorized += 1;
                self.client.refresh_token();
            }
            refreshable
        } else {
            e.retryable()
        };
        if !retry {
            return Err(e.into());
        }
        Ok(Err(Dropped(format!("HTTP {}", e.status), e.retry_after)))
    }

    async fn connect(&mut self) -> Result<std::result::Result<(), Dropped>> {
        match self.options.transport {
            Transport::Sse => self.connect_sse().await,
            Transport::Ws => self.connect_ws().await,
        }
    }

    async fn connect_sse(&mut self) -> Result<std::result::Result<(), Dropped>> {
        let mut req = self
            .client
            .request(
                reqwest::Method::GET,
                &format!("/v1/deployments/{}/stream", self.deployment),
            )?
            .query(&self.query())
            .header("accept", "text/event-stream");
        if let Some(cur) = &self.cursor {
            req = req.header("last-event-id", cur);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Ok(Err(Dropped(e.to_string(), None))),
        };
        if !resp.status().is_success() {
            return self.refused(ApiError::read(resp).await);
        }
        self.conn = Conn::Sse(Box::pin(resp.bytes_stream().eventsource()));
        Ok(Ok(()))
    }

    async fn connect_ws(&mut self) -> Result<std::result::Result<(), Dropped>> {
        use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
        let mut q = self.query();
        if let Some(cur) = &self.cursor {
            q.push(("cursor".into(), cur.clone()));
        }
        let mut url = reqwest::Url::parse(&format!(
            "{}/v1/deployments/{}/stream",
            self.client.base(),
            self.deployment
        ))
        .map_err(|_| Error::InvalidServer(self.client.base().to_owned()))?;
        url.query_pairs_mut().extend_pairs(&q);
        let ws_url = url.as_str().replacen("http", "ws", 1);
        let mut req = ws_url
            .into_client_request()
            .map_err(|_| Error::InvalidServer(self.client.base().to_owned()))?;
        if let Some(t) = self.client.token()? {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| Error::Protocol("the token is not a valid header value".into()))?,
            );
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => {
                self.conn = Conn::Ws(Box::new(ws));
                Ok(Ok(()))
            }
            Err(tungstenite::Error::Http(resp)) => {
                let status = reqwest::StatusCode::from_u16(resp.status().as_u16())
                    .unwrap_or(reqwest::StatusCode::BAD_GATEWAY);
                let body = resp.body().as_deref().unwrap_or_default();
                let e = ApiError::parse(status, crate::retry_after(resp.headers()), body);
                self.refused(e)
            }
            Err(e) => Ok(Err(Dropped(e.to_string(), None))),
        }
    }
}

type Next = Result<std::result::Result<Option<Event>, Dropped>>;

/// The next event of an SSE connection: `Ok(Ok(None))` for one that yields nothing.
async fn next_sse(client: &Client, s: &mut SseStream) -> Next {
    let Some(Ok(ev)) = s.next().await else {
        return Ok(Err(Dropped("stream interrupted".into(), None)));
    };
    Ok(match ev.event.as_str() {
        "line" => Ok(Some(Event::Line(serde_json::from_str(&ev.data).map_err(
            |e| Error::Protocol(format!("a line from the gateway: {e}")),
        )?))),
        "end" => Ok(Some(Event::End(serde_json::from_str(&ev.data).map_err(
            |e| Error::Protocol(format!("the end event from the gateway: {e}")),
        )?))),
        "waiting" => Ok(Some(Event::Waiting)),
        // The retry hint and comments come without an event name.
        "" | "message" => Ok(None),
        // auth_expired: get the token again before reconnecting.
        "auth_expired" => {
            client.refresh_token();
            Err(Dropped("the token expired".into(), None))
        }
        // reconnect (the gateway is restarting), and anything unknown.
        other => Err(Dropped(format!("the gateway said {other}"), None)),
    })
}

/// The next event of a WebSocket connection; a frame's lines go to `queued`.
async fn next_ws(client: &Client, ws: &mut WsStream, queued: &mut VecDeque<wire::Line>) -> Next {
    use tokio_tungstenite::tungstenite;
    let text = match ws.next().await {
        Some(Ok(tungstenite::Message::Text(t))) => t,
        Some(Ok(tungstenite::Message::Close(frame))) => {
            // 4001: the token expired; get it again before reconnecting.
            if frame.as_ref().is_some_and(|f| u16::from(f.code) == 4001) {
                client.refresh_token();
            }
            let why = frame.map_or_else(|| "closed".to_owned(), |f| f.reason.to_string());
            return Ok(Err(Dropped(why, None)));
        }
        Some(Ok(_)) => return Ok(Ok(None)),
        Some(Err(e)) => return Ok(Err(Dropped(e.to_string(), None))),
        None => return Ok(Err(Dropped("stream interrupted".into(), None))),
    };
    let frame: WsFrame = serde_json::from_str(&text)
        .map_err(|e| Error::Protocol(format!("a frame from the gateway: {e}")))?;
    Ok(Ok(match frame {
        WsFrame::Lines { lines } => {
            queued.extend(lines);
            None
        }
        WsFrame::End(end) => Some(Event::End(end)),
        WsFrame::Waiting => Some(Event::Waiting),
        WsFrame::Other => None,
    }))
}

/// A WebSocket text frame of a live stream.
#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WsFrame {
    /// `{"type":"lines","lines":[Line]}`
    Lines { lines: Vec<wire::Line> },
    /// `{"type":"end", ...Completion}`
    End(wire::Completion),
    /// `{"type":"waiting", "message": ...}`: the deployment has no line yet.
    Waiting,
    /// A frame type this version does not know: ignored.
    #[serde(other)]
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_frames_are_lines_end_or_ignored() {
        let line = r#"{"cursor":"c1","seq":1,"ts":"2024-01-02T03:04:05.000000000Z","step":"build","stream":"stdout","level":"info","message":"hi"}"#;
        let frame: WsFrame =
            serde_json::from_str(&format!(r#"{{"type":"lines","lines":[{line}]}}"#)).unwrap();
        let WsFrame::Lines { lines } = frame else {
            panic!("lines")
        };
        assert_eq!(lines.len(), 1);
        assert_eq!((lines[0].cursor.as_str(), lines[0].seq), ("c1", 1));
        let frame: WsFrame =
            serde_json::from_str(r#"{"type":"end","status":"failed","exit_code":3,"last_seq":9}"#)
                .unwrap();
        let WsFrame::End(end) = frame else {
            panic!("end")
        };
        assert_eq!(
            end,
            wire::Completion {
                status: "failed".into(),
                exit_code: 3,
                last_seq: 9
            }
        );
        let frame: WsFrame = serde_json::from_str(r#"{"type":"news","x":1}"#).unwrap();
        assert!(matches!(frame, WsFrame::Other));
        assert!(serde_json::from_str::<WsFrame>(r#"{"type":"lines"}"#).is_err());
    }
}
