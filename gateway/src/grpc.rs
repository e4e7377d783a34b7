//! gRPC `logstream.v1`: `Ingest.Push` (bidirectional batches <-> durable acks),
//! `Ingest.Complete`, `Tail.Subscribe` (a viewer session over a server stream). A thin
//! transport over the core: the same token parser, access checks, filter builder,
//! completion rule and viewer session as HTTP. Errors leave through exactly one mapping,
//! `status()`; a refused batch carries the core error's `code` in `PushAck.error.code`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use logstream_model::{FilterParams, Level, LogRecord};
use logstream_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{AuthError, Principal, Scope};
use crate::core::ingest::{self, IngestLine};
use crate::core::viewer::{Session, SessionEvent, Start};
use crate::core::{Error, ErrorKind, Gateway, access, read};
use crate::store::BatchId;

/// The one mapping from the core's error to a gRPC status: the code by kind, the
/// message `"{code}: {message}"`, and the code alone in the `logstream-error-code`
/// metadata (plus `retry-after` seconds when the core gives one).
pub fn status(e: Error) -> Status {
    let code = match e.kind {
        ErrorKind::Invalid | ErrorKind::TooLarge | ErrorKind::Unsupported => {
            tonic::Code::InvalidArgument
        }
        ErrorKind::NotAcceptable => tonic::Code::InvalidArgument,
        ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
        ErrorKind::Forbidden => tonic::Code::PermissionDenied,
        ErrorKind::NotFound => tonic::Code::NotFound,
        ErrorKind::Conflict => tonic::Code::FailedPrecondition,
        ErrorKind::TooMany => tonic::Code::ResourceExhausted,
        ErrorKind::Unavailable => tonic::Code::Unavailable,
        ErrorKind::Internal => tonic::Code::Internal,
    };
    let mut st = Status::new(code, format!("{}: {}", e.code, e.message));
    if let Ok(v) = e.code.parse() {
        st.metadata_mut().insert("logstream-error-code", v);
    }
    if let Some(d) = e.retry_after
        && let Ok(v) = d.as_secs().max(1).to_string().parse()
    {
        st.metadata_mut().insert("retry-after", v);
    }
    st
}

/// The refusal of one batch, for `PushAck.error`: the core error's contract code.
fn ack_error(e: Error) -> pb::Error {
    pb::Error {
        code: e.code.to_owned(),
        retry_after_secs: e
            .retry_after
            .map_or(0, |d| d.as_secs().clamp(1, u64::from(u32::MAX)) as u32),
        message: e.message,
    }
}

pub(crate) async fn principal<T>(state: &Gateway, req: &Request<T>) -> Result<Principal, Status> {
    let md = req.metadata();
    let token = access::token_from_headers(
        md.get("authorization").map(|v| v.as_bytes()),
        md.get(access::PROXY_SAFE_AUTHORIZATION)
            .map(|v| v.as_bytes()),
    )
    .unwrap_or(Err(AuthError::Missing));
    state
        .authenticate(token, req.remote_addr())
        .await
        .map_err(status)
}

fn level_from_pb(l: i32) -> Option<Level> {
    match pb::Level::try_from(l).unwrap_or(pb::Level::Unspecified) {
        pb::Level::Unspecified => None,
        pb::Level::Trace => Some(Level::Trace),
        pb::Level::Debug => Some(Level::Debug),
        pb::Level::Info => Some(Level::Info),
        pb::Level::Warn => Some(Level::Warn),
        pb::Level::Error => Some(Level::Error),
        pb::Level::Fatal => Some(Level::Fatal),
        pb::Level::Unknown => Some(Level::Unknown),
    }
}

fn level_to_pb(l: Level) -> pb::Level {
    match l {
        Level::Trace => pb::Level::Trace,
        Level::Debug => pb::Level::Debug,
        Level::Info => pb::Level::Info,
        Level::Warn => pb::Level::Warn,
        Level::Error => pb::Level::Error,
        Level::Fatal => pb::Level::Fatal,
        Level::Unknown => pb::Level::Unknown,
    }
}

fn stream_from_pb(s: i32) -> logstream_model::Stream {
    if s == pb::Stream::Stderr as i32 {
        logstream_model::Stream::Stderr
    } else {
        logstream_model::Stream::Stdout
    }
}

fn stream_to_pb(s: logstream_model::Stream) -> pb::Stream {
    match s {
        logstream_model::Stream::Stdout => pb::Stream::Stdout,
        logstream_model::Stream::Stderr => pb::Stream::Stderr,
    }
}

/// `Ingest` and `Tail` services over the gateway core.
#[derive(Clone)]
pub struct Services(Arc<Gateway>);

/// The gRPC router (both services, gzip and zstd accepted and sent).
pub fn routes(state: Arc<Gateway>) -> tonic::transport::server::Router {
    use tonic::codec::CompressionEncoding as E;
    let svc_state = state.clone();
    let svc = Services(state);
    let ingest = pb::ingest_server::IngestServer::new(svc.clone())
        .accept_compressed(E::Gzip)
        .accept_compressed(E::Zstd)
        .send_compressed(E::Zstd)
        .max_decoding_message_size(64 << 20);
    let tail = pb::tail_server::TailServer::new(svc)
        .accept_compressed(E::Gzip)
        .accept_compressed(E::Zstd)
        .send_compressed(E::Zstd);
    tonic::transport::Server::builder()
        .add_service(ingest)
        .add_service(tail)
        .add_service(crate::compat::otlp::Grpc::server(svc_state))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::ingest_server::Ingest for Services {
    type PushStream = BoxStream<pb::PushAck>;

    async fn push(
        &self,
        req: Request<Streaming<pb::PushRequest>>,
    ) -> Result<Response<Self::PushStream>, Status> {
        observed(&self.0, "logstream.v1.Ingest/Push", self.push_call(req)).await
    }

    async fn complete(
        &self,
        req: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        observed(
            &self.0,
            "logstream.v1.Ingest/Complete",
            self.complete_call(req),
        )
        .await
    }
}

/// Counts a call by method and the status it is answered with, with its latency (a
/// stream's: until it is opened).
async fn observed<T>(
    state: &Gateway,
    method: &str,
    call: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let started = Instant::now();
    let result = call.await;
    let code = result
        .as_ref()
        .map_or_else(Status::code, |_| tonic::Code::Ok);
    state.metrics.grpc(method, code, started.elapsed());
    result
}

impl Services {
    async fn push_call(
        &self,
        req: Request<Streaming<pb::PushRequest>>,
    ) -> Result<Response<BoxStream<pb::PushAck>>, Status> {
        let p = principal(&self.0, &req).await?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(32);
        let state = self.0.clone();
        let mut shutdown = self.0.shutdown.clone();
        tokio::spawn(async move {
            // Batches are processed in order: acks come back in the order sent. At
            // shutdown the batch in progress is finished and acked, then the stream ends
            // so the client reconnects (and re-sends anything unacknowledged).
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m.transpose(),
                    _ = shutdown.changed() => {
                        let e = Error::shutting_down("the gateway is restarting; reconnect and re-send unacknowledged batches");
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                };
                let Some(msg) = msg else { return };
                let ack = match msg {
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    Ok(batch) => push_one(&state, &p, batch).await,
                };
                if tx.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn complete_call(
        &self,
        req: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let p = principal(&self.0, &req).await?;
        let r = req.into_inner();
        let id = access::deployment(&p, &r.deployment, Scope::Write).map_err(status)?;
        let outcome = ingest::parse_status(&r.status).map_err(status)?;
        let c = ingest::complete(&self.0, &id, outcome, r.exit_code, &p.subject)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CompleteResponse {
            last_seq: c.last_seq,
        }))
    }
}

async fn push_one(state: &Arc<Gateway>, p: &Principal, batch: pb::PushRequest) -> pb::PushAck {
    let started = Instant::now();
    let mut ack = pb::PushAck {
        deployment: batch.deployment.clone(),
        source: batch.source.clone(),
        batch_id: batch.batch_id,
        ..Default::default()
    };
    let id = match access::deployment(p, &batch.deployment, Scope::Write) {
        Ok(id) => id,
        Err(e) => {
            ack.error = Some(ack_error(e));
            return ack;
        }
    };
    let lines = batch
        .lines
        .into_iter()
        .map(|l| IngestLine {
            ts: l.ts_unix_nanos,
            step: l.step,
            stream: stream_from_pb(l.stream),
            level: level_from_pb(l.level),
            message: l.message,
            metadata: crate::compat::bounded(l.metadata),
        })
        .collect();
    let mark = (!batch.source.is_empty()).then(|| BatchId {
        source: batch.source.clone(),
        batch_id: batch.batch_id,
    });
    match ingest::append(state, &id, lines, mark, started).await {
        Ok(r) => {
            ack.accepted = r.accepted as u32;
            ack.last_seq = r.last_seq;
            ack.cursor = r.cursor;
            ack.duplicate = r.duplicate;
        }
        Err(e) => ack.error = Some(ack_error(e)),
    }
    ack
}

/// A gRPC filter as the same parameters HTTP takes, for the one filter builder.
fn filter(f: Option<pb::Filter>) -> Result<logstream_model::Filter, Error> {
    let Some(f) = f else {
        return Ok(logstream_model::Filter::default());
    };
    let join = |v: Vec<&str>| (!v.is_empty()).then(|| v.join(","));
    let levels = join(
        f.levels
            .iter()
            .filter_map(|l| level_from_pb(*l))
            .map(Level::as_str)
            .collect(),
    );
    let streams = join(
        f.streams
            .iter()
            .map(|s| stream_from_pb(*s).as_str())
            .collect(),
    );
    let steps = join(f.steps.iter().map(String::as_str).collect());
    let time = |ns: i64| (ns != 0).then(|| logstream_model::time::format_rfc3339(ns));
    let (since, until) = (time(f.since_unix_nanos), time(f.until_unix_nanos));
    read::filter(&FilterParams {
        level: levels.as_deref(),
        step: steps.as_deref(),
        stream: streams.as_deref(),
        since: since.as_deref(),
        until: until.as_deref(),
        q: Some(f.query.as_str()),
    })
}

fn line_to_pb(l: &crate::hub::WireLine) -> pb::StoredLine {
    record_to_pb(&l.record, l.seq(), l.cursor.clone())
}

/// A stored line as protobuf (`Tail.Subscribe`, and Kafka mode's topic records).
pub fn record_to_pb(r: &LogRecord, seq: u64, cursor: String) -> pb::StoredLine {
    pb::StoredLine {
        seq,
        cursor,
        line: Some(pb::Line {
            ts_unix_nanos: r.ts,
            step: r.step.clone(),
            stream: stream_to_pb(r.stream) as i32,
            level: level_to_pb(r.level) as i32,
            message: r.message.clone(),
            metadata: r.metadata.clone().into_iter().collect(),
        }),
        redaction: r.redaction.0.iter().map(|(k, v)| (k.clone(), *v)).collect(),
    }
}

/// The line a `StoredLine` carries, as stored.
pub fn record_from_pb(l: pb::StoredLine) -> LogRecord {
    let line = l.line.unwrap_or_default();
    LogRecord {
        seq: l.seq,
        ts: line.ts_unix_nanos,
        step: line.step,
        stream: match pb::Stream::try_from(line.stream) {
            Ok(pb::Stream::Stderr) => logstream_model::Stream::Stderr,
            _ => logstream_model::Stream::Stdout,
        },
        level: match pb::Level::try_from(line.level) {
            Ok(pb::Level::Trace) => Level::Trace,
            Ok(pb::Level::Debug) => Level::Debug,
            Ok(pb::Level::Info) => Level::Info,
            Ok(pb::Level::Warn) => Level::Warn,
            Ok(pb::Level::Error) => Level::Error,
            Ok(pb::Level::Fatal) => Level::Fatal,
            _ => Level::Unknown,
        },
        message: line.message,
        metadata: line.metadata.into_iter().collect(),
        redaction: logstream_model::RedactionState(l.redaction.into_iter().collect()),
    }
}

#[tonic::async_trait]
impl pb::tail_server::Tail for Services {
    type SubscribeStream = BoxStream<pb::SubscribeResponse>;

    /// gRPC encoding of a viewer session: line batches, then `End`; a session closed by
    /// token expiry ends with `UNAUTHENTICATED` (`auth_expired: ...`), one closed by
    /// shutdown with `UNAVAILABLE` (`shutting_down: ...`). Heartbeats are HTTP/2's own.
    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        observed(
            &self.0,
            "logstream.v1.Tail/Subscribe",
            self.subscribe_call(req),
        )
        .await
    }
}

impl Services {
    async fn subscribe_call(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<BoxStream<pb::SubscribeResponse>>, Status> {
        let p = principal(&self.0, &req).await?;
        let client = req.remote_addr();
        let r = req.into_inner();
        let id = access::deployment(&p, &r.deployment, Scope::Read).map_err(status)?;
        let start = if !r.cursor.is_empty() {
            Start::After(read::cursor(&r.cursor, &id, "cursor").map_err(status)?.seq)
        } else if r.tail > 0 {
            Start::Tail(r.tail as usize)
        } else {
            Start::After(0)
        };
        let filter = filter(r.filter).map_err(status)?;
        let mut session = Session::open(&self.0, &p, &id, start, filter, client)
            .await
            .map_err(status)?;
        let (tx, rx) = mpsc::channel(4);
        let subscribers = self.0.metrics.tail_subscribers.clone();
        subscribers.inc();
        tokio::spawn(async move {
            /// Counts the stream while its task lives.
            struct Counted(prometheus::IntGauge);
            impl Drop for Counted {
                fn drop(&mut self) {
                    self.0.dec();
                }
            }
            let _counted = Counted(subscribers);
            loop {
                let ev = tokio::select! {
                    ev = session.next() => ev,
                    () = tx.closed() => return,
                };
                let msg = match ev {
                    None => return,
                    Some(SessionEvent::Heartbeat) => continue,
                    Some(SessionEvent::Lines(lines)) => {
                        pb::subscribe_response::Event::Lines(pb::LineBatch {
                            lines: lines.iter().map(|l| line_to_pb(l)).collect(),
                        })
                    }
                    Some(SessionEvent::Frame(frame)) => {
                        pb::subscribe_response::Event::Lines(pb::LineBatch {
                            lines: frame.lines.iter().map(|l| line_to_pb(l)).collect(),
                        })
                    }
                    Some(SessionEvent::Redacted(seqs)) => {
                        pb::subscribe_response::Event::Redacted(pb::Redacted {
                            ranges: seqs
                                .iter()
                                .map(|&(first, last)| pb::SeqRange { first, last })
                                .collect(),
                        })
                    }
                    Some(SessionEvent::End(c)) => pb::subscribe_response::Event::End(pb::End {
                        status: c.status.as_str().into(),
                        exit_code: c.exit_code,
                    }),
                    Some(SessionEvent::Closed(e)) => {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                };
                if tx
                    .send(Ok(pb::SubscribeResponse { event: Some(msg) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
