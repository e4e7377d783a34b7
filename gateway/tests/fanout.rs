//! The fan-out tier with real processes: one store and two edges (the gateway binary),
//! viewers over SSE and WebSocket. Each edge holds one upstream subscription per
//! deployment whatever its number of viewers; an edge's death and a store's restart
//! lose and duplicate no line for any viewer; a stalled viewer is dropped without
//! delaying the others; tokens, limits and audit are checked at the edge.

use std::path::{Path, PathBuf};
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::{SinkExt, StreamExt};
use logstream_gateway::auth::{Authenticator, Scope};
use logstream_gateway::testkit::client;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{Proc, complete, follow_sse, free_port, push, spawn_follow_sse};

/// A store's addresses and data dir (kept across its restarts).
struct StoreSpec {
    data: PathBuf,
    http: u16,
    grpc: u16,
}

impl StoreSpec {
    fn new(dir: &Path) -> StoreSpec {
        StoreSpec {
            data: dir.join("store"),
            http: free_port(),
            grpc: free_port(),
        }
    }

    async fn start(&self) -> Proc {
        Proc::start(&[
            "--role".into(),
            "store".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.http),
            "--grpc-listen".into(),
            format!("127.0.0.1:{}", self.grpc),
            "--data-dir".into(),
            self.data.display().to_string(),
        ])
        .await
    }

    fn key(&self) -> PathBuf {
        self.data.join("dev-signing-key")
    }

    fn token(&self, scopes: &[Scope]) -> String {
        let key = Authenticator::load_or_create_key(&self.key()).unwrap();
        Authenticator::hs256(&key, None, None).mint(
            "tester",
            "acme",
            scopes,
            Duration::from_secs(600),
            None,
        )
    }

    /// An edge in front of this store; `extra` is appended to its config file.
    async fn edge(&self, dir: &Path, name: &str, extra: &str) -> Proc {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "upstream = \"http://127.0.0.1:{}\"\nupstream_grpc = \"http://127.0.0.1:{}\"\nsigning_key_file = \"{}\"\n{extra}",
                self.http,
                self.grpc,
                self.key().display()
            ),
        )
        .unwrap();
        Proc::start(&[
            "--role".into(),
            "edge".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--config".into(),
            config.display().to_string(),
        ])
        .await
    }
}

/// Follows `id` over a WebSocket until `end`: the seqs received.
async fn follow_ws(edge: String, token: String, id: String) -> Vec<u64> {
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let mut req = format!("{}/v1/deployments/{id}/stream", edge.replace("http", "ws"))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut seqs = Vec::new();
    while let Some(Ok(m)) = ws.next().await {
        match m {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("lines") => seqs.extend(
                        v["lines"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|l| l["seq"].as_u64().unwrap()),
                    ),
                    Some("end") => {
                        assert_eq!(v["status"], "succeeded");
                        // The store's `end` as it is: its last seq included.
                        assert_eq!(v["last_seq"].as_u64(), seqs.last().copied(), "{v}");
                        let _ = ws.close(None).await;
                        return seqs;
                    }
                    _ => {}
                }
            }
            Message::Ping(p) => ws.send(Message::Pong(p)).await.unwrap(),
            _ => {}
        }
    }
    panic!("the WebSocket closed before `end`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_edge_holds_one_upstream_per_deployment_and_every_viewer_gets_each_line_once() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = StoreSpec::new(tmp.path());
    let store = spec.start().await;
    let (a, b) = (
        spec.edge(tmp.path(), "a", "").await,
        spec.edge(tmp.path(), "b", "").await,
    );
    let token = spec.token(&[Scope::Read, Scope::Write]);
    push(&store.http, &token, "fan", 1, 1, 51).await; // seqs 1..=50 before anyone follows
    let edges = [a.http.clone(), b.http.clone()];

    let mut viewers = Vec::new();
    let mut opened = Vec::new();
    for i in 0..40 {
        let query = match i % 4 {
            0 => "?level=error".to_owned(),
            1 => "?tail=5".to_owned(),
            _ => String::new(),
        };
        let (viewer, open) = spawn_follow_sse(
            vec![edges[i % 2].clone()],
            token.clone(),
            "fan".into(),
            query.clone(),
        );
        viewers.push((query, viewer));
        opened.push(open);
    }
    // Open (their `tail=5` read) before any later line: counted viewers may still be
    // opening.
    for o in opened {
        o.await.unwrap();
    }
    let ws: Vec<_> = (0..10)
        .map(|i| tokio::spawn(follow_ws(edges[i % 2].clone(), token.clone(), "fan".into())))
        .collect();
    a.until_metric("logstream_live_viewers", 25.0).await;
    b.until_metric("logstream_live_viewers", 25.0).await;
    // Fifty viewers, two subscriptions: one per edge.
    store.until_metric("logstream_tail_subscribers", 2.0).await;
    a.until_metric("logstream_edge_upstreams", 1.0).await;
    b.until_metric("logstream_edge_upstreams", 1.0).await;

    for batch in 2..=11 {
        let from = 51 + (batch as usize - 2) * 20;
        push(&store.http, &token, "fan", batch, from, from + 20).await;
    }
    complete(&store.http, &token, "fan").await;
    let all: Vec<u64> = (1..=250).collect();
    for (query, v) in viewers {
        let got = v.await.unwrap();
        let want: Vec<u64> = match query.as_str() {
            "?level=error" => all.iter().copied().filter(|s| s % 7 == 0).collect(),
            // The last five when it opened (all 50 were there), then everything after.
            "?tail=5" => (46..=250).collect(),
            _ => all.clone(),
        };
        assert_eq!(got, want, "viewer {query:?}");
    }
    for w in ws {
        assert_eq!(w.await.unwrap(), all);
    }
    // Every viewer gone: the upstreams close.
    store.until_metric("logstream_tail_subscribers", 0.0).await;
    a.until_metric("logstream_edge_upstreams", 0.0).await;
    b.until_metric("logstream_edge_upstreams", 0.0).await;
    a.until_metric("logstream_live_viewers", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_killed_and_a_store_restarted_lose_and_duplicate_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = StoreSpec::new(tmp.path());
    let mut store = spec.start().await;
    let mut a = spec.edge(tmp.path(), "a", "").await;
    let b = spec.edge(tmp.path(), "b", "").await;
    let token = spec.token(&[Scope::Read, Scope::Write]);
    push(&store.http, &token, "chaos", 1, 1, 11).await;
    // Viewers start on edge a and fail over to b; one filtered.
    let order = vec![a.http.clone(), b.http.clone()];
    let viewers: Vec<_> = (0..6)
        .map(|i| {
            let query = if i == 0 { "?level=error" } else { "" };
            tokio::spawn(follow_sse(
                order.clone(),
                token.clone(),
                "chaos".into(),
                query.into(),
            ))
        })
        .collect();
    a.until_metric("logstream_live_viewers", 6.0).await;

    let mut next = 11;
    let mut batch = 2;
    let mut push_some = async |store: &str, n: usize| {
        for _ in 0..n {
            push(store, &token, "chaos", batch, next, next + 10).await;
            next += 10;
            batch += 1;
        }
    };
    push_some(&store.http, 5).await;
    // Edge a dies mid-stream: its viewers come back through b from their cursors.
    a.kill();
    push_some(&store.http, 5).await;
    b.until_metric("logstream_live_viewers", 6.0).await;
    push_some(&store.http, 5).await;
    // The store restarts: b resubscribes after the last seq it had.
    store.stop().await;
    store = spec.start().await;
    push_some(&store.http, 5).await;
    b.until_metric("logstream_edge_upstreams", 1.0).await;
    store.until_metric("logstream_tail_subscribers", 1.0).await;
    push_some(&store.http, 5).await;
    complete(&store.http, &token, "chaos").await;
    let total = (next - 1) as u64;
    for (i, v) in viewers.into_iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(60), v)
            .await
            .expect("every viewer reaches the end")
            .unwrap();
        let want: Vec<u64> = (1..=total).filter(|s| i != 0 || s % 7 == 0).collect();
        assert_eq!(got, want, "viewer {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_viewer_is_dropped_and_never_delays_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = StoreSpec::new(tmp.path());
    let store = spec.start().await;
    let edge = spec
        .edge(
            tmp.path(),
            "e",
            "slow_viewer_timeout_secs = 2\nedge_window_bytes = 65536\n",
        )
        .await;
    let token = spec.token(&[Scope::Read, Scope::Write]);
    push(&store.http, &token, "slow", 1, 1, 2).await;

    // A viewer that never reads, on a small receive buffer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket
        .connect(edge.http.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap();
    stalled
        .write_all(
            format!(
                "GET /v1/deployments/slow/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let reader = tokio::spawn(follow_sse(
        vec![edge.http.clone()],
        token.clone(),
        "slow".into(),
        String::new(),
    ));
    edge.until_metric("logstream_live_viewers", 2.0).await;
    // ~4 MB of lines: far beyond the stalled viewer's buffers and the window.
    let pad = "x".repeat(2000);
    for (batch, chunk) in (2..).zip(0..20) {
        let body: String = (0..100)
            .map(|i| json!({"message": format!("{chunk}/{i} {pad}")}).to_string() + "\n")
            .collect();
        let r = client()
            .post(format!("{}/v1/deployments/slow/logs", store.http))
            .bearer_auth(&token)
            .header("content-type", "application/x-ndjson")
            .header("logstream-source", "slow-test")
            .header("logstream-batch", batch.to_string())
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    complete(&store.http, &token, "slow").await;
    let got = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the reading viewer is not held back")
        .unwrap();
    assert_eq!(got, (1..=2001).collect::<Vec<u64>>());
    // The stalled one is disconnected at its limit.
    edge.until_metric(
        "logstream_edge_viewers_closed_total{reason=\"too_slow\"}",
        1.0,
    )
    .await;
    edge.until_metric("logstream_live_viewers", 0.0).await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut sink)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_limits_waiting_and_audit_are_handled_at_the_edge() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = StoreSpec::new(tmp.path());
    let store = spec.start().await;
    let edge = spec
        .edge(tmp.path(), "e", "max_streams_per_token = 2\n")
        .await;
    let token = spec.token(&[Scope::Read, Scope::Write]);
    let sse = |token: &str, id: &str, query: &str| {
        client()
            .get(format!("{}/v1/deployments/{id}/stream{query}", edge.http))
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .send()
    };

    // A forged token: 401 from the edge, with the error body.
    let r = sse("not-a-token", "w", "").await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unauthorized", "{v}");
    // A deployment that does not exist: 404; with wait=true: `waiting`, then its lines.
    let r = sse(&token, "w", "").await.unwrap();
    assert_eq!(r.status(), 404);
    let r = sse(&token, "w", "?wait=true").await.unwrap();
    assert_eq!(r.status(), 200);
    let mut events = r.bytes_stream().eventsource();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first.event, "waiting");
    push(&store.http, &token, "w", 1, 1, 4).await;
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if ev.event == "line" {
            seqs.push(serde_json::from_str::<Value>(&ev.data).unwrap()["seq"].clone());
        }
    }
    assert_eq!(seqs, [1, 2, 3]);
    // The token's second stream is fine, its third is refused by the edge's limit.
    let second = sse(&token, "w", "").await.unwrap();
    assert_eq!(second.status(), 200);
    let r = sse(&token, "w", "").await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "streams_per_token"
    );
    // A cursor from another deployment is a 400 naming it.
    let r = sse(&token, "w", "?cursor=bogus").await.unwrap();
    assert_eq!(r.status(), 400);
    drop((events, second));

    // The stream opens and closes are in the store's audit log, from the edge.
    let admin = spec.token(&[Scope::Admin]);
    let mut found = Vec::new();
    for _ in 0..100 {
        let page: Value = client()
            .get(format!("{}/v1/audit?deployment=w&limit=100", store.http))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        found = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["via"].as_str().is_some_and(|v| v.starts_with("edge/")))
            .map(|e| (e["action"].clone(), e["subject"].clone()))
            .collect();
        if found.iter().filter(|(a, _)| a == "stream_close").count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        found.contains(&(json!("stream_open"), json!("tester")))
            && found.iter().filter(|(a, _)| a == "stream_close").count() >= 2,
        "{found:?}"
    );
    // A tenant's admin cannot write into the audit log.
    let r = client()
        .post(format!("{}/v1/audit/events", store.http))
        .bearer_auth(&admin)
        .json(&json!([{"action": "read", "subject": "x", "tenant": "acme", "result": "ok"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}
