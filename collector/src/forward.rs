//! The gRPC side: batches go out on one `Ingest.Push` stream (zstd), acknowledgements
//! come back in order and are handed to the engine, which only then moves checkpoints.
//! A broken stream or a retryable refusal (the contract's list,
//! `logstream_model::retry::RETRYABLE_CODES`: quota, unavailable, storage, shutdown,
//! internal) reconnects with exponential backoff and jitter and re-sends every
//! unacknowledged batch with its original source and id, which the gateway stores once.
//! Any other refusal is final for that batch: it is counted, logged once per deployment
//! and code, and the container moves on past it. A completion refused with a final code
//! is not retried either.

use logstream_model::retry;
use logstream_proto::v1 as pb;
use pb::ingest_client::IngestClient;
use std::collections::{HashSet, VecDeque};
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
    /// The gateway refused it for good (a code not in the contract's retry list: the
    /// deployment completed, a bad id, a missing scope): counted by `code`, and the
    /// checkpoint moves past it so the file is not blocked forever.
    Rejected {
        container: u64,
        batch_id: u64,
        lines: u64,
        code: String,
        reason: String,
    },
    /// The pod's completion is settled: the gateway completed the deployment, or refused
    /// the completion with a final code (e.g. `deployment_completed`: it was already
    /// completed, maybe with another status), which is logged and not retried.
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

/// 100 ms doubling, at most 5 s, jittered so many collectors do not reconnect in step.
fn backoff(attempt: u32) -> Duration {
    retry::backoff(
        attempt,
        Duration::from_millis(100),
        Duration::from_secs(5),
        rand::random(),
    )
}

/// The contract code of a refused call: the gateway's `logstream-error-code` metadata,
/// else the prefix of its message (`"{code}: {message}"`).
fn status_code(s: &tonic::Status) -> Option<String> {
    s.metadata()
        .get("logstream-error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| retry::status_code(s.message()).map(str::to_owned))
}

/// Whether a refused completion is final (not to be sent again). A contract code
/// decides by the contract's retry list, except a refused token (`unauthorized`,
/// `auth_expired`): that refuses the credentials, not the request, and the token file
/// is re-read before the next attempt (as when opening the push stream). A status
/// without a code (transport errors, an older gateway) is final only for the gRPC
/// codes that say the request itself is wrong.
fn completion_final(s: &tonic::Status) -> Option<String> {
    use tonic::Code;
    if s.code() == Code::Unauthenticated {
        return None;
    }
    match status_code(s) {
        Some(code) if matches!(code.as_str(), "unauthorized" | "auth_expired") => None,
        Some(code) => (!retry::is_retryable(&code)).then_some(code),
        None => matches!(
            s.code(),
            Code::InvalidArgument
                | Code::PermissionDenied
                | Code::NotFound
                | Code::FailedPrecondition
                | Code::AlreadyExists
                | Code::OutOfRange
                | Code::Unimplemented
        )
        .then(|| format!("{:?}", s.code())),
    }
}

/// Remembers which (deployment, code) refusals were logged, so a deployment whose every
/// batch is refused (it completed while its pod writes on) is logged once, not once
/// per batch. Bounded: the oldest entry is forgotten first (and may be logged again).
struct LoggedOnce {
    seen: HashSet<(String, String)>,
    order: VecDeque<(String, String)>,
    cap: usize,
}

impl LoggedOnce {
    fn new(cap: usize) -> LoggedOnce {
        LoggedOnce {
            seen: HashSet::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// True the first time this pair is seen (while it is remembered).
    fn first(&mut self, deployment: &str, code: &str) -> bool {
        let key = (deployment.to_owned(), code.to_owned());
        if self.seen.contains(&key) {
            return false;
        }
        if self.order.len() >= self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(key.clone());
        self.order.push_back(key);
        true
    }
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
        // The gateway's wait for a retryable refusal (`PushAck.error.retry_after_secs`).
        let mut at_least = Duration::ZERO;
        let mut closed = false;
        let mut logged = LoggedOnce::new(1024);
        loop {
            if closed && unacked.is_empty() && completes.is_empty() {
                return;
            }
            if attempt > 0 {
                report(Report::Retry);
                tokio::time::sleep(backoff(attempt).max(std::mem::take(&mut at_least))).await;
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
                let deployment = req.deployment.clone();
                let r = match self.authed(req) {
                    Ok(r) => client.complete(r).await.map_err(|s| {
                        let fin = completion_final(&s);
                        (s.to_string(), fin)
                    }),
                    Err(e) => Err((e, None)),
                };
                match r {
                    Ok(_) => {
                        completes.pop_front();
                        report(Report::Completed { pod_uid: uid });
                    }
                    Err((e, Some(code))) => {
                        // Final: sending it again would be refused again (and would hold
                        // up every batch behind it).
                        tracing::error!(%deployment, %code, error = %e, "the gateway refused to complete a deployment; not retrying");
                        completes.pop_front();
                        report(Report::Completed { pod_uid: uid });
                    }
                    Err((e, None)) => {
                        tracing::warn!(%deployment, error = %e, "completing a deployment failed; retrying");
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
                            completes.push_back((pod_uid, pb::CompleteRequest { deployment, status, exit_code: Some(exit_code) }));
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
                                Some(e) if retry::is_retryable(&e.code) => {
                                    at_least = Duration::from_secs(e.retry_after_secs.into());
                                    break format!("the gateway refused a batch for now ({}: {}); retrying", e.code, e.message);
                                }
                                Some(e) => {
                                    let b = unacked.pop_front().expect("front");
                                    attempt = 0;
                                    if logged.first(&b.deployment, &e.code) {
                                        tracing::error!(deployment = %b.deployment, source = %b.source, code = %e.code, error = %e.message, lines, "the gateway refused a batch for good; its lines are skipped, and later refusals of this deployment with this code are only counted (logstream_collector_batches_rejected_total)");
                                    }
                                    report(Report::Rejected { container: b.container, batch_id: b.batch_id, lines, code: e.code, reason: e.message });
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

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    #[test]
    fn each_deployment_and_code_is_logged_once_within_a_bound() {
        let mut l = LoggedOnce::new(2);
        assert!(l.first("a", "deployment_completed"));
        assert!(!l.first("a", "deployment_completed"));
        assert!(l.first("a", "missing_scope"));
        assert!(!l.first("a", "missing_scope"));
        // A third pair evicts the oldest, which may then be logged again.
        assert!(l.first("b", "deployment_completed"));
        assert_eq!(l.seen.len(), 2);
        assert!(!l.first("b", "deployment_completed"));
        assert!(l.first("a", "deployment_completed"));
        assert_eq!((l.seen.len(), l.order.len()), (2, 2));
    }

    #[test]
    fn completions_refused_with_a_final_code_are_not_retried() {
        let fin = |code, msg: &str| completion_final(&Status::new(code, msg));
        assert_eq!(
            fin(
                Code::FailedPrecondition,
                "deployment_completed: the deployment has completed"
            ),
            Some("deployment_completed".into())
        );
        assert_eq!(
            fin(Code::NotFound, "deployment_not_found: no such deployment"),
            Some("deployment_not_found".into())
        );
        assert_eq!(
            fin(Code::InvalidArgument, "invalid_deployment_id: bad"),
            Some("invalid_deployment_id".into())
        );
        // The contract's retryable codes, whatever the gRPC code says.
        for (code, msg) in [
            (Code::Unavailable, "storage_unavailable: disk"),
            (Code::Unavailable, "shutting_down: bye"),
            (Code::ResourceExhausted, "quota_exceeded: slow down"),
            (Code::Internal, "internal: logged"),
            (Code::Unavailable, "unavailable: later"),
        ] {
            assert_eq!(fin(code, msg), None, "{msg}");
        }
        // A refused token: re-read and retried.
        assert_eq!(fin(Code::Unauthenticated, "unauthorized: expired"), None);
        assert_eq!(fin(Code::Unauthenticated, "no bearer token"), None);
        // No code in the message: transport trouble is retried, a wrong request is not.
        assert_eq!(fin(Code::Unavailable, "transport error"), None);
        assert_eq!(fin(Code::Unknown, "h2 protocol error"), None);
        assert_eq!(
            fin(Code::FailedPrecondition, "conflict"),
            Some("FailedPrecondition".into())
        );
        // The code in metadata wins over the message.
        let mut s = Status::new(Code::FailedPrecondition, "sealed");
        s.metadata_mut().insert(
            "logstream-error-code",
            "deployment_completed".parse().unwrap(),
        );
        assert_eq!(completion_final(&s), Some("deployment_completed".into()));
    }
}
