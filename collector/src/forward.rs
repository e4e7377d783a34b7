//! The gRPC side: batches go out on one `Ingest.Push` stream (zstd), acknowledgements
//! come back in order and are handed to the engine, which only then moves checkpoints.
//! A broken stream or a retryable refusal (quota, unavailable, expired token) reconnects
//! with exponential backoff and jitter and re-sends every unacknowledged batch with its
//! original source and id, which the gateway stores once.

use logstream_proto::v1 as pb;
use pb::ingest_client::IngestClient;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// A batch for the gateway, tagged with the container it came from.
#[derive(Debug, Clone)]
pub struct Batch {
    pub container: u64,
    /// The tenant gateway; `None`: the default (`--gateway`).
    pub gateway: Option<String>,
    pub req: pb::PushRequest,
}

/// Work for the forwarder.
#[derive(Debug)]
pub enum Outgoing {
    Push(Batch),
    Complete {
        pod_uid: String,
        deployment: String,
        status: String,
        exit_code: i32,
        gateway: Option<String>,
    },
}

impl Outgoing {
    fn gateway(&self) -> Option<&str> {
        match self {
            Outgoing::Push(b) => b.gateway.as_deref(),
            Outgoing::Complete { gateway, .. } => gateway.as_deref(),
        }
    }
}

/// Sends each batch to its tenant's gateway: one [`Forwarder`] (one stream) per
/// gateway, started on first use. Runs until `rx` closes and every forwarder is done.
pub async fn route(
    default: Option<String>,
    token: Arc<TokenFile>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    report: impl Fn(Report) + Send + Sync + Clone + 'static,
) {
    let mut lanes: std::collections::HashMap<String, mpsc::UnboundedSender<Outgoing>> =
        std::collections::HashMap::new();
    let mut tasks = Vec::new();
    while let Some(o) = rx.recv().await {
        let Some(endpoint) = o.gateway().map(str::to_owned).or_else(|| default.clone()) else {
            tracing::error!("a batch has no gateway and no --gateway is set; it stays unsent");
            continue;
        };
        let lane = lanes.entry(endpoint.clone()).or_insert_with(|| {
            let (tx, lane_rx) = mpsc::unbounded_channel();
            let f = Forwarder {
                endpoint,
                token: token.clone(),
            };
            tasks.push(tokio::spawn(f.run(lane_rx, report.clone())));
            tx
        });
        let _ = lane.send(o);
    }
    drop(lanes);
    for t in tasks {
        let _ = t.await;
    }
}

/// What the forwarder reports back.
#[derive(Debug)]
pub enum Report {
    /// The gateway durably stored (or had already stored) this batch.
    Acked {
        container: u64,
        batch_id: u64,
        lines: u64,
        bytes: u64,
    },
    /// The gateway refused it for good (bad deployment id, permission): counted and
    /// logged, and the checkpoint moves past it so the file is not blocked forever.
    Rejected {
        container: u64,
        batch_id: u64,
        lines: u64,
        reason: String,
    },
    Completed {
        pod_uid: String,
    },
    /// The stream broke before this batch was acknowledged: the engine rebuilds it from
    /// the file (same source, same id) and sends it again. No copy is kept here.
    Resend {
        container: u64,
        batch_id: u64,
    },
    Retry,
}

/// What the forwarder remembers of a batch it sent: enough to match the ack.
struct Sent {
    container: u64,
    source: String,
    batch_id: u64,
    deployment: String,
    lines: u64,
    bytes: u64,
}

/// The bearer token, re-read when its file changes (projected tokens rotate).
pub struct TokenFile {
    path: Option<PathBuf>,
    cached: parking_lot::Mutex<(Option<SystemTime>, String)>,
}

impl TokenFile {
    pub fn new(path: Option<PathBuf>) -> Arc<TokenFile> {
        Arc::new(TokenFile {
            path,
            cached: parking_lot::Mutex::new((None, String::new())),
        })
    }

    /// The current token (`None` without a token file).
    pub fn get(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let mtime = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
        let mut c = self.cached.lock();
        if c.0 != Some(mtime) {
            let t = std::fs::read_to_string(path)
                .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
            *c = (Some(mtime), t.trim().to_owned());
        }
        Ok(Some(c.1.clone()))
    }
}

/// Sends batches and completions to one gateway.
pub struct Forwarder {
    pub endpoint: String,
    pub token: Arc<TokenFile>,
}

fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << attempt.min(6));
    let capped = base.min(Duration::from_secs(5));
    // Full jitter on the upper half, so many collectors do not reconnect in step.
    let half = capped / 2;
    half + half.mul_f64(rand::random::<f64>())
}

fn retryable(code: &str) -> bool {
    !matches!(
        code,
        "InvalidArgument" | "PermissionDenied" | "NotFound" | "FailedPrecondition"
    )
}

impl Forwarder {
    async fn client(&self) -> Result<IngestClient<Channel>, String> {
        let channel = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| format!("--gateway {}: {e}", self.endpoint))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.endpoint))?;
        Ok(IngestClient::new(channel)
            .send_compressed(tonic::codec::CompressionEncoding::Zstd)
            .accept_compressed(tonic::codec::CompressionEncoding::Zstd)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    fn authed<T>(&self, msg: T) -> Result<tonic::Request<T>, String> {
        let mut req = tonic::Request::new(msg);
        if let Some(t) = self.token.get()? {
            let v = format!("Bearer {t}")
                .parse()
                .map_err(|_| "the token file holds an invalid header value".to_owned())?;
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }

    /// Runs until `rx` closes and everything sent was acknowledged.
    pub async fn run(
        self,
        mut rx: mpsc::UnboundedReceiver<Outgoing>,
        report: impl Fn(Report) + Send + 'static,
    ) {
        let mut unacked: VecDeque<Sent> = VecDeque::new();
        let mut completes: VecDeque<(String, pb::CompleteRequest)> = VecDeque::new();
        let mut attempt = 0u32;
        let mut closed = false;
        loop {
            if closed && unacked.is_empty() && completes.is_empty() {
                return;
            }
            if attempt > 0 {
                report(Report::Retry);
                tokio::time::sleep(backoff(attempt)).await;
            }
            attempt += 1;
            let mut client = match self.client().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "gateway unreachable; data waits on disk");
                    continue;
                }
            };
            // Completions first: they are small and their pods' lines are all acked.
            while let Some((uid, req)) = completes.front().cloned() {
                let r = match self.authed(req) {
                    Ok(r) => client.complete(r).await.map_err(|s| s.to_string()),
                    Err(e) => Err(e),
                };
                match r {
                    Ok(_) => {
                        completes.pop_front();
                        report(Report::Completed { pod_uid: uid });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "completing a deployment failed; retrying");
                        break;
                    }
                }
            }
            if !completes.is_empty() {
                continue;
            }
            let (tx, out) = mpsc::unbounded_channel::<pb::PushRequest>();
            let req = match self.authed(tokio_stream::wrappers::UnboundedReceiverStream::new(out)) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "no token");
                    continue;
                }
            };
            let mut acks = match client.push(req).await {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    tracing::warn!(error = %s, "opening the push stream failed");
                    continue;
                }
            };
            // Connected: serve until the stream breaks.
            let broke: String = loop {
                tokio::select! {
                    msg = rx.recv(), if !closed => match msg {
                        Some(Outgoing::Push(b)) => {
                            unacked.push_back(Sent {
                                container: b.container,
                                source: b.req.source.clone(),
                                batch_id: b.req.batch_id,
                                deployment: b.req.deployment.clone(),
                                lines: b.req.lines.len() as u64,
                                bytes: b.req.lines.iter().map(|l| l.message.len() as u64).sum(),
                            });
                            let _ = tx.send(b.req);
                        }
                        Some(Outgoing::Complete { pod_uid, deployment, status, exit_code, .. }) => {
                            completes.push_back((pod_uid, pb::CompleteRequest { deployment, status, exit_code }));
                            if unacked.is_empty() {
                                break "completion pending".into();
                            }
                        }
                        None => {
                            closed = true;
                            if unacked.is_empty() {
                                break "done".into();
                            }
                        }
                    },
                    ack = acks.message() => match ack {
                        Ok(Some(ack)) => {
                            let Some(front) = unacked.front() else {
                                break "an ack for nothing sent".into();
                            };
                            if front.batch_id != ack.batch_id || front.source != ack.source {
                                break format!("ack out of order: {} {}", ack.source, ack.batch_id);
                            }
                            let (lines, bytes) = (front.lines, front.bytes);
                            match ack.error {
                                None => {
                                    let b = unacked.pop_front().expect("front");
                                    attempt = 0;
                                    report(Report::Acked { container: b.container, batch_id: b.batch_id, lines, bytes });
                                }
                                Some(e) if retryable(&e.code) => {
                                    break format!("the gateway refused a batch for now ({}: {}); retrying", e.code, e.message);
                                }
                                Some(e) => {
                                    let b = unacked.pop_front().expect("front");
                                    tracing::error!(deployment = %b.deployment, source = %b.source, code = %e.code, error = %e.message, lines, "the gateway refused a batch for good");
                                    report(Report::Rejected { container: b.container, batch_id: b.batch_id, lines, reason: e.message });
                                }
                            }
                            if !completes.is_empty() && unacked.is_empty() {
                                break "completion pending".into();
                            }
                            if closed && unacked.is_empty() {
                                break "done".into();
                            }
                        }
                        Ok(None) => break "the gateway closed the stream".into(),
                        Err(s) => break format!("push stream: {s}"),
                    },
                }
            };
            if broke == "completion pending" || broke == "done" {
                attempt = 0;
            } else {
                tracing::warn!(reason = %broke, unacked = unacked.len(), "reconnecting");
                for s in unacked.drain(..) {
                    report(Report::Resend {
                        container: s.container,
                        batch_id: s.batch_id,
                    });
                }
            }
        }
    }
}
