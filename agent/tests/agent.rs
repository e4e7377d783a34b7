//! `logstream-agent` against a real gateway on loopback (`logstream_gateway::testkit`),
//! with a fault-injecting TCP proxy in between where the behaviour needs a broken
//! network: lost acknowledgements, cut streams, a stalled gateway.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use logstream_agent::{
    Client, Error, Event, ExportEvent, ExportOptions, FollowOptions, Line, PushOptions,
    RetryReason, Transport,
};
use logstream_gateway::auth::Scope;
use logstream_gateway::testkit::{TestGateway, loopback_listener, seqs};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

/// Bounds every wait on an event, so a broken behaviour fails instead of hanging.
const WITHIN: Duration = Duration::from_secs(60);

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WITHIN, f).await.expect("in time")
}

fn messages(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect()
}

fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix} {i}")).collect()
}

// === a fault-injecting proxy ===

/// What the proxy does to a connection.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Forwards both ways.
    Pass,
    /// Forwards the request, waits for the first bytes of the answer (so the gateway
    /// has handled it), then closes the client's connection without them.
    LoseAnswer,
    /// Forwards both ways, and closes once this many bytes went to the client.
    CutAfter(usize),
}

/// A TCP proxy to `upstream`: the first `faulty` connections get `fault`, the rest pass.
/// Connections wait while the gate is closed (a stalled gateway).
struct Proxy {
    url: String,
    /// Connections that got the fault.
    faults: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: &str, fault: Fault, faulty: usize) -> Proxy {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = loopback_listener().await;
        let url = format!("http://{}", listener.local_addr().unwrap());
        let faults = Arc::new(AtomicUsize::new(0));
        let (gate, open) = watch::channel(true);
        let counter = faults.clone();
        tokio::spawn(async move {
            let mut accepted = 0usize;
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let fault = if accepted < faulty {
                    fault
                } else {
                    Fault::Pass
                };
                accepted += 1;
                let (upstream, counter, mut open) =
                    (upstream.clone(), counter.clone(), open.clone());
                tokio::spawn(async move {
                    let _ = open.wait_for(|o| *o).await;
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    serve(client, server, fault, &counter).await;
                });
            }
        });
        Proxy { url, faults, gate }
    }

    fn faults(&self) -> usize {
        self.faults.load(Ordering::SeqCst)
    }
}

async fn serve(mut client: TcpStream, mut server: TcpStream, fault: Fault, faults: &AtomicUsize) {
    match fault {
        Fault::Pass => {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        }
        Fault::LoseAnswer => {
            let (mut cr, _cw) = client.split();
            let (mut sr, mut sw) = server.split();
            let up = tokio::io::copy(&mut cr, &mut sw);
            let mut buf = [0u8; 1];
            tokio::select! {
                _ = up => {}
                r = sr.read(&mut buf) => if matches!(r, Ok(n) if n > 0) {
                    faults.fetch_add(1, Ordering::SeqCst);
                },
            }
            // Both sockets close here: the answer never reaches the client.
        }
        Fault::CutAfter(limit) => {
            let (mut cr, mut cw) = client.split();
            let (mut sr, mut sw) = server.split();
            let up = tokio::io::copy(&mut cr, &mut sw);
            let down = async {
                let mut sent = 0usize;
                let mut buf = vec![0u8; 4096];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let n = n.min(limit - sent);
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    sent += n;
                    if sent >= limit {
                        faults.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            };
            tokio::select! {
                _ = up => {}
                () = down => {}
            }
        }
    }
}

fn fast_push() -> PushOptions {
    PushOptions {
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(200),
        ..PushOptions::default()
    }
}

fn fast_follow(transport: Transport) -> FollowOptions {
    FollowOptions {
        transport,
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(200),
        ..FollowOptions::default()
    }
}

// === push ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_batches_arrive_once_and_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let g = TestGateway::start(tmp.path()).await;
    let t = g.rw();
    let client = Client::new(&g.http).unwrap().with_token(&t);
    let pusher = client.push(
        "ordered",
        PushOptions {
            max_lines: 100,
            ..fast_push()
        },
    );
    let sent = numbered("line", 2500);
    for (i, m) in sent.iter().enumerate() {
        let line = if i % 2 == 0 {
            Line::stdout(m)
        } else {
            Line::stderr(m)
        };
        pusher.send(line.step("build")).await.unwrap();
    }
    let summary = within(pusher.finish()).await.unwrap();
    assert_eq!(summary.lines, 2500);
    assert!(summary.batches >= 25, "{summary:?}");
    assert_eq!((summary.duplicates, summary.last_seq), (0, 2500));
    let stored = g.read_all(&t, "ordered").await;
    assert_eq!(messages(&stored), sent);
    assert_eq!(seqs(&stored), (1..=2500).collect::<Vec<_>>());
    assert_eq!(stored[1]["stream"], "stderr");
    assert_eq!(stored[1]["step"], "build");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_again_after_a_lost_acknowledgement_is_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let g = TestGateway::start(tmp.path()).await;
    let t = g.rw();
    // The gateway stores the batch twice over, but its answers never arrive.
    let proxy = Proxy::start(&g.http, Fault::LoseAnswer, 2).await;
    let client = Client::new(&proxy.url).unwrap().with_token(&t);
    let cut_off = Arc::new(AtomicUsize::new(0));
    let seen = cut_off.clone();
    let pusher = client.push(
        "once",
        PushOptions {
            source: Some("ci/runner-7".into()),
            on_retry: Some(Arc::new(move |r| {
                assert_eq!(r.batch, 1);
                if !matches!(r.reason, RetryReason::Refused(_)) {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            })),
            ..fast_push()
        },
    );
    let sent = numbered("once", 10);
    for m in &sent {
        pusher.send(Line::stdout(m)).await.unwrap();
    }
    let summary = within(pusher.finish()).await.unwrap();
    assert_eq!(proxy.faults(), 2, "both answers were lost");
    assert_eq!(cut_off.load(Ordering::SeqCst), 2);
    assert_eq!((summary.retries, summary.duplicates), (2, 1), "{summary:?}");
    assert_eq!(messages(&g.read_all(&t, "once").await), sent);

    // An agent restarted with the same source and batch ids resends: stored once too.
    let again = Client::new(&g.http).unwrap().with_token(&t).push(
        "once",
        PushOptions {
            source: Some("ci/runner-7".into()),
            first_batch: 1,
            ..fast_push()
        },
    );
    for m in &sent {
        again.send(Line::stdout(m)).await.unwrap();
    }
    let summary = within(again.finish()).await.unwrap();
    assert_eq!(summary.duplicates, 1);
    assert_eq!(messages(&g.read_all(&t, "once").await), sent);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_refusal_is_retried_after_retry_after_and_a_final_one_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    // 100 lines a second: a batch of 200 puts the tenant in debt for two seconds.
    let g = TestGateway::start_with(tmp.path(), |c| c.quotas.ingest_lines_per_sec = 100).await;
    let t = g.rw();
    let client = Client::new(&g.http).unwrap().with_token(&t);
    let refusals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = refusals.clone();
    let pusher = client.push(
        "quota",
        PushOptions {
            max_lines: 200,
            on_retry: Some(Arc::new(move |r| {
                if let RetryReason::Refused(e) = &r.reason {
                    seen.lock()
                        .unwrap()
                        .push((e.code.clone(), e.retry_after, r.wait));
                }
            })),
            ..fast_push()
        },
    );
    let sent = numbered("q", 400);
    for m in &sent {
        pusher.send(Line::stdout(m)).await.unwrap();
    }
    let summary = within(pusher.finish()).await.unwrap();
    let refusals = refusals.lock().unwrap().clone();
    assert!(!refusals.is_empty(), "the second batch was over quota");
    for (code, retry_after, wait) in &refusals {
        assert_eq!(code, "quota_exceeded");
        let retry_after = retry_after.expect("a Retry-After");
        assert!(*wait >= retry_after, "waited {wait:?} < {retry_after:?}");
    }
    assert_eq!(summary.lines, 400);
    assert_eq!(messages(&g.read_all(&t, "quota").await), sent);

    // A completed deployment refuses for good: not retried, the refusal is returned
    // (the tenant may still be over its quota first: that one is retried).
    client.complete("quota", "succeeded", None).await.unwrap();
    let retried = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = retried.clone();
    let late = client.push(
        "quota",
        PushOptions {
            on_retry: Some(Arc::new(move |r| {
                if let RetryReason::Refused(e) = &r.reason {
                    seen.lock().unwrap().push(e.code.clone());
                }
            })),
            ..fast_push()
        },
    );
    late.send(Line::stdout("too late")).await.unwrap();
    let err = within(late.finish()).await.unwrap_err();
    let api = err.api().expect("a refusal");
    assert_eq!(
        (api.code.as_str(), api.status.as_u16()),
        ("deployment_completed", 409)
    );
    let retried = retried.lock().unwrap().clone();
    assert!(
        retried.iter().all(|c| c == "quota_exceeded"),
        "only the quota was retried: {retried:?}"
    );
    assert_eq!(g.read_all(&t, "quota").await.len(), 400);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_gateway_fills_the_buffer_and_holds_the_producer() {
    let tmp = tempfile::tempdir().unwrap();
    let g = TestGateway::start(tmp.path()).await;
    let t = g.rw();
    let proxy = Proxy::start(&g.http, Fault::Pass, 0).await;
    proxy.gate.send_replace(false);
    let client = Client::new(&proxy.url).unwrap().with_token(&t);
    let pusher = client.push(
        "stalled",
        PushOptions {
            buffer_lines: 50,
            max_lines: 10,
            ..fast_push()
        },
    );
    for i in 0..50 {
        pusher.try_send(Line::stdout(format!("s {i}"))).unwrap();
    }
    // Nothing is acknowledged: the 51st line has no room.
    assert!(matches!(
        pusher.try_send(Line::stdout("s 50")),
        Err(Error::Full)
    ));
    {
        let waiting = pusher.send(Line::stdout("s 50"));
        tokio::pin!(waiting);
        assert!(
            futures::poll!(&mut waiting).is_pending(),
            "send waits for room"
        );
        proxy.gate.send_replace(true);
        within(waiting).await.unwrap();
    }
    let summary = within(pusher.finish()).await.unwrap();
    assert_eq!(summary.lines, 51);
    assert_eq!(
        messages(&g.read_all(&t, "stalled").await),
        numbered("s", 51)
    );
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_refreshed_and_the_batch_sent_again() {
    let tmp = tempfile::tempdir().unwrap();
    let g = TestGateway::start(tmp.path()).await;
    let t = g.rw();
    let calls = Arc::new(AtomicUsize::new(0));
    let (counted, fresh) = (calls.clone(), t.clone());
    let client = Client::new(&g.http)
        .unwrap()
        .with_token("not-a-token")
        .with_refresh(Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Some(fresh.clone())
        }));
    let pusher = client.push("refresh", fast_push());
    pusher.send(Line::stdout("hello")).await.unwrap();
    within(pusher.finish()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(messages(&g.read_all(&t, "refresh").await), ["hello"]);

    // Without a way to get another token, a 401 is final.
    let stuck = Client::new(&g.http).unwrap().with_token("not-a-token");
    let pusher = stuck.push("refresh", fast_push());
    pusher.send(Line::stdout("never")).await.unwrap();
    let err = within(pusher.finish()).await.unwrap_err();
    assert_eq!(err.api().map(|e| e.status.as_u16()), Some(401));
    g.shutdown().await;
}

// === completion ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_is_recorded_once_and_ends_followers() {
    let tmp = tempfile::tempdir().unwrap();
    let g = TestGateway::start(tmp.path()).await;
    let t = g.rw();
    let client = Client::new(&g.http).unwrap().with_token(&t);
    g.push(&t, "done", &["a".into(), "b".into()]).await;
    let mut follow = client.follow("done", fast_follow(Transport::Sse));
    for want in ["a", "b"] {
        match within(follow.next()).await.unwrap() {
            Some(Event::Line(l)) => assert_eq!(l.message, want),
            other => panic!("{other:?}"),
        }
    }
    let done = client.complete("done", "failed", Some(3)).await.unwrap();
    assert_eq!(
        (done.status.as_str(), done.exit_code, done.last_seq),
        ("failed", 3, 2)
    );
    match within(follow.next()).await.unwrap() {
        Some(Event::End(end)) => assert_eq!(end, done),
        other => panic!("{other:?}"),
    }
    assert!(follow.next().await.unwrap().is_none());
    let d = client.deployment("done").await.unwrap();
    assert_eq!((d.status.as_str(), d.exit_code), ("failed", Some(3)));
    // A completion is final: another one is refused, not retried.
    let err = client
        .complete("done", "succeeded", None)
        .await
        .unwrap_err();
    assert_eq!(err.api().unwrap().code, "deployment_completed");
    g.shutdown().await;
}

// === follow ===

/// Follows a deployment through a proxy that cuts the first connections mid-stream
/// while its lines are pushed (ten a request: each a commit group, a WebSocket frame of
/// its own); every line must arrive once, in order.
async fn follow_through_cuts(transport: Transport) {
    let tmp = tempfile::tempdir().unwrap();
    let g = TestGateway::start(tmp.path()).await;
    let t = g.rw();
    // Each of the first six connections carries a few KiB, then breaks mid-event.
    let proxy = Proxy::start(&g.http, Fault::CutAfter(12_000), 6).await;
    let client = Client::new(&proxy.url).unwrap().with_token(&t);
    let mut follow = client.follow("cut", fast_follow(transport));
    let producer = Client::new(&g.http).unwrap().with_token(&t);
    tokio::spawn(async move {
        let p = producer.push(
            "cut",
            PushOptions {
                max_lines: 10,
                ..PushOptions::default()
            },
        );
        for m in numbered("line", 1000) {
            p.send(Line::stdout(m)).await.unwrap();
        }
        p.finish().await.unwrap();
        producer.complete("cut", "succeeded", None).await.unwrap();
    });
    let mut seen = Vec::new();
    // How many lines had arrived at each reconnection.
    let mut cuts = Vec::new();
    let end = loop {
        match within(follow.next()).await.unwrap().expect("an event") {
            Event::Line(l) => seen.push(l.seq),
            Event::Reconnecting { .. } => cuts.push(seen.len()),
            Event::Waiting => {}
            Event::End(end) => break end,
        }
    };
    assert_eq!(proxy.faults(), 6, "every faulty connection was cut");
    assert!(
        cuts.iter().any(|n| *n > 0 && *n < 1000),
        "a connection broke mid-stream: {cuts:?}"
    );
    assert_eq!(
        seen,
        (1..=1000).collect::<Vec<u64>>(),
        "no gap, no duplicate"
    );
    assert_eq!((end.status.as_str(), end.last_seq), ("succeeded", 1000));
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_resumes_after_dropped_connections_with_no_gap_or_duplicate() {
    follow_through_cuts(Transport::Sse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_over_websocket_resumes_after_dropped_connections_with_no_gap_or_duplicate() {
    follow_through_cuts(Transport::Ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_gets_a_new_token_when_its_token_expires_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let g = TestGateway::start(tmp.path()).await;
    let t = g.rw();
    g.push(&t, "expiring", &["before".into()]).await;
    // The first token expires in 3 s: the stream ends with auth_expired.
    let short = g.token_for("acme", &[Scope::Read], Duration::from_secs(3));
    let fresh = g.token("acme", &[Scope::Read]);
    let refreshed = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let (notify, counted) = (refreshed.clone(), calls.clone());
    let client = Client::new(&g.http)
        .unwrap()
        .with_token(short)
        .with_refresh(Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            notify.notify_one();
            Some(fresh.clone())
        }));
    let mut follow = client.follow("expiring", fast_follow(Transport::Sse));
    let first = within(follow.next()).await.unwrap();
    assert!(
        matches!(first, Some(Event::Line(ref l)) if l.message == "before"),
        "{first:?}"
    );
    // The expiry drops the stream; the follow asks for a token and reconnects.
    let next = within(follow.next()).await.unwrap();
    assert!(matches!(next, Some(Event::Reconnecting { .. })), "{next:?}");
    within(refreshed.notified()).await;
    g.push(&t, "expiring", &["after".into()]).await;
    g.complete(&t, "expiring", "succeeded", 0).await;
    let mut rest = Vec::new();
    loop {
        match within(follow.next()).await.unwrap().expect("an event") {
            Event::Line(l) => rest.push(l.message),
            Event::End(_) => break,
            Event::Reconnecting { why, .. } => panic!("reconnected again: {why}"),
            Event::Waiting => {}
        }
    }
    assert_eq!(rest, ["after"]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_refusal_ends_a_follow_without_retrying() {
    let tmp = tempfile::tempdir().unwrap();
    let g = TestGateway::start(tmp.path()).await;
    // A write-only token may not read: missing_scope, final.
    let client = Client::new(&g.http)
        .unwrap()
        .with_token(g.token("acme", &[Scope::Write]));
    let mut follow = client.follow("any", fast_follow(Transport::Sse));
    let err = within(follow.next()).await.unwrap_err();
    assert_eq!(err.api().unwrap().code, "missing_scope");
    g.shutdown().await;
}

// === export ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_resumes_after_a_broken_download_with_every_line_once() {
    let tmp = tempfile::tempdir().unwrap();
    let g = TestGateway::start(tmp.path()).await;
    let t = g.rw();
    // Incompressible enough that a gzip'd download is cut several times.
    let sent: Vec<String> = (0..3000u64)
        .map(|i| format!("export {i} {:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
        .collect();
    g.push(&t, "big", &sent).await;
    let proxy = Proxy::start(&g.http, Fault::CutAfter(20_000), 3).await;
    let client = Client::new(&proxy.url).unwrap().with_token(&t);
    let mut export = client.export(
        "big",
        ExportOptions {
            backoff_base: Duration::from_millis(10),
            ..ExportOptions::default()
        },
    );
    let (mut got, mut resumed, mut started) = (Vec::new(), 0, 0);
    while let Some(ev) = within(export.next()).await.unwrap() {
        match ev {
            ExportEvent::Started => started += 1,
            ExportEvent::Line { raw, line } => {
                let parsed: Value = serde_json::from_slice(&raw).unwrap();
                assert_eq!(parsed["seq"], line.seq);
                got.push(line.message);
            }
            ExportEvent::Resuming { error, .. } => {
                assert!(error.retryable(), "{error}");
                resumed += 1;
            }
        }
    }
    assert_eq!(proxy.faults(), 3);
    assert_eq!((resumed, started), (3, 4));
    assert_eq!(got, sent);

    // A deployment that does not exist is final at once.
    let mut missing = client.export("nope", ExportOptions::default());
    let err = within(missing.next()).await.unwrap_err();
    assert_eq!(err.api().unwrap().code, "deployment_not_found");
    g.shutdown().await;
}
