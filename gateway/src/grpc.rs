//! gRPC `logstream.v1`: `Ingest.Push` (bidirectional batches ⇄ durable acks),
//! `Ingest.Complete`, `Tail.Subscribe` (server stream from a cursor). Same auth, same
//! store, same live viewer core as HTTP; errors convert from `ApiError` in one place.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use logstream_model::{Cursor, Filter, Level, LevelSet};
use logstream_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::ApiError;
use crate::auth::{Principal, Scope};
use crate::ingest::{self, IngestLine};
use crate::live::{self, Start, ViewerEvent, ViewerSlot};
use crate::server::AppState;
use crate::store::{BatchId, LogId, Outcome};

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        use axum::http::StatusCode as S;
        let code = match e.status {
            S::BAD_REQUEST | S::PAYLOAD_TOO_LARGE | S::UNSUPPORTED_MEDIA_TYPE => {
                tonic::Code::InvalidArgument
            }
            S::UNAUTHORIZED => tonic::Code::Unauthenticated,
            S::FORBIDDEN => tonic::Code::PermissionDenied,
            S::NOT_FOUND => tonic::Code::NotFound,
            S::CONFLICT => tonic::Code::FailedPrecondition,
            S::TOO_MANY_REQUESTS => tonic::Code::ResourceExhausted,
            S::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
            _ => tonic::Code::Internal,
        };
        Status::new(code, format!("{}: {}", e.code, e.message))
    }
}

async fn principal<T>(state: &AppState, req: &Request<T>) -> Result<Principal, Status> {
    let v = req.metadata().get("authorization").ok_or_else(|| {
        Status::unauthenticated("no bearer token; send `authorization: Bearer <token>` metadata")
    })?;
    let token = v
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("authorization metadata is not `Bearer <token>`"))?;
    state.auth.verify_request(token).await.map_err(|e| {
        state.metrics.auth_failures.inc();
        state.audit(
            "auth_rejected",
            "",
            "",
            "",
            &e.to_string(),
            req.remote_addr(),
        );
        Status::unauthenticated(e.to_string())
    })
}

fn log_id(p: &Principal, deployment: &str, scope: Scope) -> Result<LogId, Status> {
    if !p.has(scope) {
        return Err(Status::permission_denied(format!(
            "this token lacks the {} scope",
            scope.as_str()
        )));
    }
    logstream_model::validate_deployment_id(deployment)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    if !p.may_access(deployment) {
        return Err(ApiError::not_found().into());
    }
    Ok(LogId::new(p.tenant.clone(), deployment))
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

/// `Ingest` and `Tail` services over the shared state.
#[derive(Clone)]
pub struct Services(Arc<AppState>);

/// The gRPC router (both services, gzip and zstd accepted and sent).
pub fn routes(state: Arc<AppState>) -> tonic::transport::server::Router {
    use tonic::codec::CompressionEncoding as E;
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
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::ingest_server::Ingest for Services {
    type PushStream = BoxStream<pb::PushAck>;

    async fn push(
        &self,
        req: Request<Streaming<pb::PushRequest>>,
    ) -> Result<Response<Self::PushStream>, Status> {
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
                        let _ = tx.send(Err(Status::unavailable("gateway restarting; reconnect and re-send unacknowledged batches"))).await;
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

    async fn complete(
        &self,
        req: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let p = principal(&self.0, &req).await?;
        let r = req.into_inner();
        let id = log_id(&p, &r.deployment, Scope::Write)?;
        let status = Outcome::parse(&r.status).ok_or_else(|| {
            Status::invalid_argument(format!(
                "status {:?} is not succeeded, failed or cancelled",
                r.status
            ))
        })?;
        let c = ingest::complete(&self.0, &id, status, r.exit_code, &p.subject).await?;
        Ok(Response::new(pb::CompleteResponse {
            last_seq: c.last_seq,
        }))
    }
}

async fn push_one(state: &Arc<AppState>, p: &Principal, batch: pb::PushRequest) -> pb::PushAck {
    let started = Instant::now();
    let mut ack = pb::PushAck {
        deployment: batch.deployment.clone(),
        source: batch.source.clone(),
        batch_id: batch.batch_id,
        ..Default::default()
    };
    let id = match log_id(p, &batch.deployment, Scope::Write) {
        Ok(id) => id,
        Err(s) => {
            ack.error = Some(pb::Error {
                code: format!("{:?}", s.code()),
                message: s.message().to_owned(),
            });
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
        Err(e) => {
            ack.error = Some(pb::Error {
                code: e.code.to_owned(),
                message: e.message,
            })
        }
    }
    ack
}

#[tonic::async_trait]
impl pb::tail_server::Tail for Services {
    type SubscribeStream = BoxStream<pb::SubscribeResponse>;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let p = principal(&self.0, &req).await?;
        let r = req.into_inner();
        let id = log_id(&p, &r.deployment, Scope::Read)?;
        let start = if !r.cursor.is_empty() {
            Start::After(
                Cursor::decode(&r.cursor, &id.tenant, &id.deployment)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?
                    .seq,
            )
        } else if r.tail > 0 {
            Start::Tail(r.tail as usize)
        } else {
            Start::After(0)
        };
        let filter = match r.filter {
            None => Filter::default(),
            Some(f) => {
                let mut filter = Filter {
                    steps: f.steps,
                    since: (f.since_unix_nanos != 0).then_some(f.since_unix_nanos),
                    until: (f.until_unix_nanos != 0).then_some(f.until_unix_nanos),
                    ..Filter::default()
                };
                if !f.levels.is_empty() {
                    filter.levels = f
                        .levels
                        .iter()
                        .filter_map(|l| level_from_pb(*l))
                        .fold(LevelSet::EMPTY, LevelSet::with);
                }
                if f.streams.len() == 1 {
                    filter.stream = Some(stream_from_pb(f.streams[0]));
                }
                if !f.query.is_empty() {
                    filter.query = Some(
                        regex::RegexBuilder::new(&f.query)
                            .size_limit(1 << 20)
                            .build()
                            .map_err(|e| Status::invalid_argument(format!("query: {e}")))?,
                    );
                }
                filter
            }
        };
        let s = self.0.clone();
        let log = s
            .store
            .log(&id, false)
            .map_err(ApiError::from)?
            .ok_or_else(|| Status::from(ApiError::not_found()))?;
        let slot = ViewerSlot::acquire(&s, &id, &p, None)?;
        let mut viewer = live::spawn(s.clone(), log, start, filter).await;
        let (tx, rx) = mpsc::channel(4);
        let mut shutdown = s.shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                let ev = tokio::select! {
                    ev = viewer.recv() => ev,
                    _ = shutdown.changed() => {
                        let _ = tx.send(Err(Status::unavailable("gateway restarting; resubscribe with the last cursor"))).await;
                        return;
                    }
                };
                let lines = match ev {
                    Some(ViewerEvent::Lines(lines)) => lines,
                    Some(ViewerEvent::Frame(frame)) => frame.lines.to_vec(),
                    Some(ViewerEvent::End(c)) => {
                        let _ = tx
                            .send(Ok(pb::SubscribeResponse {
                                event: Some(pb::subscribe_response::Event::End(pb::End {
                                    status: c.status.as_str().into(),
                                    exit_code: c.exit_code,
                                })),
                            }))
                            .await;
                        return;
                    }
                    None => return,
                };
                let msg = {
                    {
                        pb::subscribe_response::Event::Lines(pb::LineBatch {
                            lines: lines
                                .iter()
                                .map(|l| pb::StoredLine {
                                    seq: l.seq(),
                                    cursor: l.cursor.clone(),
                                    line: Some(pb::Line {
                                        ts_unix_nanos: l.record.ts,
                                        step: l.record.step.clone(),
                                        stream: stream_to_pb(l.record.stream) as i32,
                                        level: level_to_pb(l.record.level) as i32,
                                        message: l.record.message.clone(),
                                        metadata: l.record.metadata.clone().into_iter().collect(),
                                    }),
                                })
                                .collect(),
                        })
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
