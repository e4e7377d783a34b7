//! A minimal HTTP/1.1 client over a plain `TcpStream`: enough for one-line pushes on
//! keep-alive connections, `/metrics` scrapes and long-lived SSE bodies.
//!
//! Why not reqwest/hyper: at 10,000 viewers the generator shares two cores with the
//! servers it measures, so each viewer is a socket, a read buffer and a small parser,
//! nothing more. Only `http://` with an IP or host name is supported (everything here is
//! on 127.0.0.1).

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Where a URL points: `authority` for the socket and the `Host` header, `path` for the
/// request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` (port 80 added when the URL has none).
    pub authority: String,
    /// Path and query, `/` when the URL has none.
    pub path: String,
}

impl Endpoint {
    /// Parses `http://host[:port][/path]`; anything else is refused with the URL named.
    pub fn parse(url: &str) -> anyhow::Result<Endpoint> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("{url:?}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        ensure!(!authority.is_empty(), "{url:?}: no host");
        let authority = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Endpoint {
            authority,
            path: path.to_owned(),
        })
    }

    /// The same server, another path (`path` starts with `/`).
    pub fn with_path(&self, path: &str) -> Endpoint {
        Endpoint {
            authority: self.authority.clone(),
            path: path.to_owned(),
        }
    }
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body runs until the server closes.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub framing: Framing,
    /// The server said `Connection: close`: do not reuse the connection.
    pub close: bool,
    /// Bytes of the buffer the head took; the body starts there.
    pub len: usize,
}

/// Parses a response head from the start of `buf`; `None` until it is complete.
pub fn parse_head(buf: &[u8]) -> anyhow::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf).context("bad HTTP response head")? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(n) => n,
    };
    let status = resp.code.unwrap_or(0);
    let mut framing = Framing::UntilClose;
    let mut close = false;
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            framing = Framing::Chunked;
        } else if h.name.eq_ignore_ascii_case("content-length") && framing != Framing::Chunked {
            framing = Framing::Length(value.parse().context("bad Content-Length")?);
        } else if h.name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    // 1xx, 204 and 304 have no body whatever the headers say.
    if status < 200 || status == 204 || status == 304 {
        framing = Framing::Length(0);
    }
    Ok(Some(Head {
        status,
        framing,
        close,
        len,
    }))
}

/// Incremental body decoder: feed it raw bytes as they arrive, get the body bytes out.
#[derive(Debug)]
pub enum Body {
    /// Identity: everything is body (`remaining` counts down for `Content-Length`).
    Identity { remaining: Option<usize> },
    /// Chunked transfer encoding.
    Chunked(Chunked),
}

impl Body {
    pub fn new(framing: Framing) -> Body {
        match framing {
            Framing::Length(n) => Body::Identity { remaining: Some(n) },
            Framing::UntilClose => Body::Identity { remaining: None },
            Framing::Chunked => Body::Chunked(Chunked::default()),
        }
    }

    /// Decodes what it can of `input` into `out` and returns how many bytes of `input` it
    /// took (an incomplete chunk-size line is left for the next call).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> anyhow::Result<usize> {
        match self {
            Body::Identity { remaining: None } => {
                out.extend_from_slice(input);
                Ok(input.len())
            }
            Body::Identity {
                remaining: Some(left),
            } => {
                let n = input.len().min(*left);
                out.extend_from_slice(&input[..n]);
                *left -= n;
                Ok(n)
            }
            Body::Chunked(c) => c.feed(input, out),
        }
    }

    /// The whole body has been decoded (never true for a body that runs until close).
    pub fn done(&self) -> bool {
        match self {
            Body::Identity { remaining } => *remaining == Some(0),
            Body::Chunked(c) => c.done(),
        }
    }
}

/// State of a chunked-body decoder (RFC 9112 §7.1): `size[;ext]\r\n data \r\n` ...
/// `0\r\n`, then trailer lines (skipped) up to an empty line.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk, this many data bytes to go.
    Data(usize),
    /// After a chunk's data, expecting its `\r\n`.
    DataEnd,
    /// After the zero-size chunk: trailer lines until an empty one.
    Trailers,
    /// The body is complete.
    Done,
}

impl Chunked {
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> anyhow::Result<usize> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match self.state {
                ChunkState::Done => return Ok(at),
                ChunkState::Size => {
                    let Some(eol) = memchr::memmem::find(rest, b"\r\n") else {
                        ensure!(rest.len() < 1024, "chunk-size line longer than 1 KiB");
                        return Ok(at);
                    };
                    let line = std::str::from_utf8(&rest[..eol]).context("bad chunk size")?;
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16)
                        .with_context(|| format!("bad chunk size {line:?}"))?;
                    at += eol + 2;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if rest.is_empty() {
                        return Ok(at);
                    }
                    let n = rest.len().min(left);
                    out.extend_from_slice(&rest[..n]);
                    at += n;
                    self.state = if n == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n)
                    };
                }
                ChunkState::Trailers => {
                    let Some(eol) = memchr::memmem::find(rest, b"\r\n") else {
                        return Ok(at);
                    };
                    at += eol + 2;
                    if eol == 0 {
                        self.state = ChunkState::Done;
                    }
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(at);
                    }
                    if &rest[..2] != b"\r\n" {
                        bail!("chunk data not followed by CRLF");
                    }
                    at += 2;
                    self.state = ChunkState::Size;
                }
            }
        }
    }

    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// Writes a request head (and body) in one buffer, so a one-line push is one write.
pub fn request_bytes(
    method: &str,
    endpoint: &Endpoint,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut req = Vec::with_capacity(256 + body.len());
    req.extend_from_slice(
        format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\n",
            endpoint.path, endpoint.authority
        )
        .as_bytes(),
    );
    for (name, value) in headers {
        req.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if method != "GET" || !body.is_empty() {
        req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    req
}

/// Opens a TCP connection with Nagle off (a one-line push or an SSE request should not
/// wait for an ACK). `recv_buffer` fixes the socket's receive buffer (and so turns off
/// the kernel's autotuning, which on loopback lets one socket absorb megabytes).
pub async fn connect(authority: &str, recv_buffer: Option<u32>) -> anyhow::Result<TcpStream> {
    let addr = tokio::net::lookup_host(authority)
        .await
        .with_context(|| format!("resolve {authority}"))?
        .next()
        .with_context(|| format!("resolve {authority}: no address"))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    socket.set_nodelay(true)?;
    socket
        .connect(addr)
        .await
        .with_context(|| format!("connect {authority}"))
}

/// Reads until a response head is complete; returns it and the bytes read past it.
pub async fn read_head(stream: &mut TcpStream) -> anyhow::Result<(Head, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before a response head");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = parse_head(&buf)? {
            let rest = buf.split_off(head.len);
            return Ok((head, rest));
        }
        ensure!(buf.len() < 64 << 10, "response head larger than 64 KiB");
    }
}

/// A keep-alive connection for request/response exchanges (pushes, scrapes). It
/// reconnects on the next request after the server closed it or an exchange failed.
pub struct Client {
    authority: String,
    stream: Option<TcpStream>,
}

impl Client {
    pub fn new(authority: &str) -> Client {
        Client {
            authority: authority.to_owned(),
            stream: None,
        }
    }

    /// One request and its whole response body. On any error the connection is dropped,
    /// so the next request starts on a fresh one.
    pub async fn exchange(&mut self, request: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let result = self.exchange_inner(request).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange_inner(&mut self, request: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let stream = match &mut self.stream {
            Some(s) => s,
            None => self.stream.insert(connect(&self.authority, None).await?),
        };
        stream.write_all(request).await?;
        let (head, rest) = read_head(stream).await?;
        let mut body = Body::new(head.framing);
        let mut out = Vec::new();
        let mut pending = rest;
        let mut chunk = [0u8; 8192];
        loop {
            let used = body.feed(&pending, &mut out)?;
            pending.drain(..used);
            if body.done() {
                break;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                if head.framing == Framing::UntilClose {
                    break;
                }
                bail!("connection closed inside a response body");
            }
            pending.extend_from_slice(&chunk[..n]);
        }
        if head.close || head.framing == Framing::UntilClose {
            self.stream = None;
        }
        Ok((head.status, out))
    }
}

/// `GET url` on a fresh connection; the status and the body as text.
pub async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let endpoint = Endpoint::parse(url)?;
    let req = request_bytes("GET", &endpoint, &[("Connection", "close")], b"");
    let (status, body) = Client::new(&endpoint.authority).exchange(&req).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        let e = Endpoint::parse("http://127.0.0.1:8080/v1/x?a=b").unwrap();
        assert_eq!(e.authority, "127.0.0.1:8080");
        assert_eq!(e.path, "/v1/x?a=b");
        assert_eq!(Endpoint::parse("http://h").unwrap().authority, "h:80");
        assert_eq!(Endpoint::parse("http://h:1").unwrap().path, "/");
        assert!(Endpoint::parse("https://h").is_err());
    }

    #[test]
    fn a_head_names_its_framing_and_where_the_body_starts() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n5\r\nhello";
        let head = parse_head(raw).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.framing, Framing::Chunked);
        assert_eq!(&raw[head.len..], b"5\r\nhello");
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Le")
                .unwrap()
                .is_none()
        );
        let head =
            parse_head(b"HTTP/1.1 201 Created\r\nContent-Length: 12\r\nConnection: close\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!((head.framing, head.close), (Framing::Length(12), true));
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let raw = b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: 1\r\n\r\n";
        // Every split of the input into two reads gives the same body.
        for split in 0..raw.len() {
            let mut c = Chunked::default();
            let mut out = Vec::new();
            let mut pending = raw[..split].to_vec();
            let used = c.feed(&pending, &mut out).unwrap();
            pending.drain(..used);
            pending.extend_from_slice(&raw[split..]);
            let used = c.feed(&pending, &mut out).unwrap();
            assert_eq!(used, pending.len(), "split at {split}");
            assert_eq!(out, b"hello world!", "split at {split}");
            assert!(c.done());
        }
        let mut c = Chunked::default();
        assert!(c.feed(b"zz\r\n", &mut Vec::new()).is_err());
    }

    #[test]
    fn a_request_is_one_buffer_with_its_length() {
        let e = Endpoint::parse("http://127.0.0.1:9/v1/deployments/d/logs").unwrap();
        let req = request_bytes("POST", &e, &[("Content-Type", "text/plain")], b"x");
        assert_eq!(
            req,
            b"POST /v1/deployments/d/logs HTTP/1.1\r\nHost: 127.0.0.1:9\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx"
        );
    }
}
