//! Role `edge` in front of a real store: every request kind goes through it unchanged,
//! live streams stream through it (SSE and WebSocket), it counts them, and a missing
//! store is a clear 502.

use eventsource_stream::Eventsource;
use futures::{SinkExt, StreamExt};
use logstream_gateway::auth::Scope;
use logstream_gateway::config::{Config, Role};
use logstream_gateway::server;
use logstream_gateway::testkit::{
    TestGateway, assert_documented_metrics_exported, loopback_listener, scrape,
};
use serde_json::{Value, json};
use std::time::Duration;

/// An edge in front of `store` (its HTTP and gRPC addresses, its key).
async fn start_edge(store: &TestGateway) -> (String, tokio::sync::oneshot::Sender<()>) {
    start_edge_to(
        store.http.clone(),
        store.grpc.clone(),
        store.state.config.data_dir.join("dev-signing-key"),
    )
    .await
}

async fn start_edge_to(
    upstream: String,
    upstream_grpc: String,
    key: std::path::PathBuf,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let config = Config {
        role: Role::Edge,
        upstream: Some(upstream),
        upstream_grpc: Some(upstream_grpc),
        signing_key_file: Some(key),
        ..Config::default()
    };
    config.validate().unwrap();
    let listener = loopback_listener().await;
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        server::serve_edge(&config, listener, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (url, stop)
}

/// The edge's `logstream_live_viewers` gauge, read from its /metrics.
async fn live_viewers(edge: &str) -> i64 {
    scrape(edge, "logstream_live_viewers")
        .await
        .expect("logstream_live_viewers on the edge's /metrics") as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_forwards_ingest_history_sse_and_websocket_to_its_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = TestGateway::start(tmp.path()).await;
    let token = store.token_for(
        "acme",
        &[Scope::Read, Scope::Write],
        Duration::from_secs(600),
    );
    let (edge, _stop) = start_edge(&store).await;
    let http = reqwest::Client::new();

    // The web UI is the edge's own (viewers open it there), with its policy.
    for path in ["/", "/deployments/x", "/ui/log.js"] {
        let r = http.get(format!("{edge}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(
            r.headers().contains_key("content-security-policy"),
            "{path}"
        );
    }

    // Ingest through the edge.
    let body: String = (0..100)
        .map(|i| json!({"message": format!("line {i}")}).to_string() + "\n")
        .collect();
    let r = http
        .post(format!("{edge}/v1/deployments/d1/logs"))
        .bearer_auth(&token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // History with a filter, through the edge.
    let page: Value = http
        .get(format!("{edge}/v1/deployments/d1/logs?limit=10&q=line%209"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let msgs: Vec<_> = page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].clone())
        .collect();
    assert_eq!(msgs[0], "line 9");
    assert_eq!(msgs.len(), 10);

    // Errors pass through with the store's JSON.
    let r = http
        .get(format!("{edge}/v1/deployments/d1/logs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.json::<Value>().await.unwrap()["error"]["code"].is_string());

    // SSE through the edge: history, then a live line pushed after subscribing.
    let resp = http
        .get(format!("{edge}/v1/deployments/d1/stream"))
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut events = resp.bytes_stream().eventsource();
    let mut seen = 0;
    while seen < 100 {
        let ev = events.next().await.unwrap().unwrap();
        if ev.event == "line" {
            seen += 1;
        }
    }
    assert_eq!(live_viewers(&edge).await, 1);

    // WebSocket through the edge (the upgrade is forwarded and spliced).
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let mut req = format!(
        "{}/v1/deployments/d1/stream?tail=1",
        edge.replace("http", "ws")
    )
    .into_client_request()
    .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);

    let r = http
        .post(format!("{edge}/v1/deployments/d1/logs"))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("live one\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if ev.event == "line" {
            assert_eq!(
                serde_json::from_str::<Value>(&ev.data).unwrap()["message"],
                "live one"
            );
            break;
        }
    }
    let mut ws_lines = Vec::new();
    while ws_lines.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "lines" {
                    ws_lines.extend(
                        v["lines"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|l| l["message"].clone()),
                    );
                }
            }
            Message::Ping(p) => ws.send(Message::Pong(p)).await.unwrap(),
            _ => {}
        }
    }
    assert_eq!(ws_lines, ["line 99", "live one"]);
    drop(events);
    ws.close(None).await.unwrap();
    drop(ws);
    // Both streams closed: the gauge falls back to 0.
    let mut live = -1;
    for _ in 0..100 {
        live = live_viewers(&edge).await;
        if live == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(live, 0);
    assert_eq!(
        reqwest::get(format!("{edge}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );
    // Every metric docs/metrics.md lists for the edge (and process_*) is exported.
    let text = reqwest::get(format!("{edge}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_documented_metrics_exported(&text, "edge", &[]);
    store.shutdown().await;
}

#[tokio::test]
async fn an_edge_without_its_store_answers_502_and_is_not_ready() {
    // A port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), "00112233445566778899aabbccddeeff").unwrap();
    let (edge, _stop) = start_edge_to(dead.clone(), dead, key.path().to_owned()).await;
    let r = reqwest::get(format!("{edge}/v1/deployments"))
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "store_unreachable");
    assert_eq!(
        reqwest::get(format!("{edge}/readyz"))
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        reqwest::get(format!("{edge}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn edge_and_upstream_must_go_together() {
    let c = Config {
        role: Role::Edge,
        ..Config::default()
    };
    assert_eq!(c.validate().unwrap_err().field, "upstream");
    let c = Config {
        upstream: Some("http://x:8080".into()),
        ..Config::default()
    };
    assert_eq!(c.validate().unwrap_err().field, "upstream");
    let bad = logstream_gateway::edge::Edge::new(Config {
        role: Role::Edge,
        upstream: Some("https://x".into()),
        ..Config::default()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(bad.contains("must be http://host:port"), "{bad}");
}

#[tokio::test]
async fn an_edge_serves_mcp_reading_through_its_store_with_the_callers_token() {
    use logstream_gateway::testkit::McpSession;
    let tmp = tempfile::tempdir().unwrap();
    let store = TestGateway::start(tmp.path()).await;
    let (edge, _stop) = start_edge(&store).await;
    let token = store.rw();
    store
        .push(
            &token,
            "via-edge",
            &logstream_gateway::testkit::lines("l", 0..12),
        )
        .await;
    let mut s = McpSession::open(&edge, &token).await.unwrap();
    let page = s
        .call("get_logs", json!({"deployment": "via-edge", "lines": 2}))
        .await
        .unwrap();
    assert_eq!(page["lines"][1]["seq"], 12, "{page}");
    let foreign = store.token("other", &[Scope::Read]);
    let mut f = McpSession::open(&edge, &foreign).await.unwrap();
    let e = f
        .call("get_deployment", json!({"deployment": "via-edge"}))
        .await
        .unwrap_err();
    assert_eq!(e["code"], -32002, "{e}");
    // The edge checks the token itself before any MCP.
    let r = reqwest::Client::new()
        .post(format!("{edge}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    store.shutdown().await;
}

/// A hotfix redaction reaches an edge: its viewers are told which lines they were sent
/// were masked, and its window forgets them, so a viewer opening after reads them masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redaction_on_the_store_reaches_the_edges_viewers_and_window() {
    use logstream_gateway::testkit::sse_events;
    let tmp = tempfile::tempdir().unwrap();
    let store = TestGateway::start(tmp.path()).await;
    let rw = store.rw();
    let admin = store.token("acme", &[Scope::LogsAdmin]);
    let (edge, _stop) = start_edge(&store).await;
    let leak = "hunter2-Zq8vXw3kLm";
    store
        .push(
            &rw,
            "d",
            &["first".into(), format!("the vault answered {leak}")],
        )
        .await;
    // A viewer on the edge holds its window: it has both lines.
    let mut a = sse_events(&edge, &rw, "d", "").await;
    let mut seen = 0;
    while seen < 2 {
        let ev = futures::StreamExt::next(&mut a).await.unwrap();
        if ev.event == "line" {
            seen += 1;
        }
    }
    let r = reqwest::Client::new()
        .post(format!("{edge}/v1/deployments/d/redactions"))
        .bearer_auth(&admin)
        .json(&json!({"match": "hunter2-[A-Za-z0-9]+", "reason": "leak"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let told = loop {
        let ev = futures::StreamExt::next(&mut a).await.unwrap();
        if ev.event == "redacted" {
            break ev;
        }
    };
    assert!(told.data.contains("[[2,2]]"), "{}", told.data);
    // A new viewer on the edge reads the line masked (not from the old window).
    let mut b = sse_events(&edge, &rw, "d", "").await;
    let mut lines = Vec::new();
    while lines.len() < 2 {
        let ev = futures::StreamExt::next(&mut b).await.unwrap();
        if ev.event == "line" {
            lines.push(ev.data);
        }
    }
    assert!(!lines[1].contains(leak), "{}", lines[1]);
    assert!(lines[1].contains("[REDACTED:hotfix]"), "{}", lines[1]);
    // Deleted: the edge's viewers are told and their streams end.
    let r = reqwest::Client::new()
        .delete(format!("{edge}/v1/deployments/d?reason=leak"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    for viewer in [&mut a, &mut b] {
        let ev = loop {
            let ev = futures::StreamExt::next(viewer)
                .await
                .expect("told before the end");
            if ev.event == "deleted" {
                break ev;
            }
        };
        assert!(ev.data.contains("deployment_deleted"), "{}", ev.data);
        assert!(
            futures::StreamExt::next(viewer).await.is_none(),
            "the stream ends"
        );
    }
    drop((a, b));
    store.shutdown().await;
}

/// OTLP, Loki push and export links go through an edge to its store unchanged (the
/// OTLP/JSON a browser or SDK sends, the link the store signed with the edge's Host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_forwards_otlp_loki_and_export_links() {
    let tmp = tempfile::tempdir().unwrap();
    let store = TestGateway::start(tmp.path()).await;
    let (edge, _stop) = start_edge(&store).await;
    let token = store.rw();
    let c = reqwest::Client::new();
    let otlp = json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "logstream.deployment", "value": {"stringValue": "via-edge"}}]},
        "scopeLogs": [{"logRecords": [{"body": {"stringValue": "from otlp"}, "severityNumber": 9}]}]
    }]});
    let r = c
        .post(format!("{edge}/v1/logs"))
        .bearer_auth(&token)
        .json(&otlp)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let loki = json!({"streams": [{"stream": {"deployment": "via-edge"}, "values": [["1700000000000000000", "from loki"]]}]});
    let r = c
        .post(format!("{edge}/loki/api/v1/push"))
        .bearer_auth(&token)
        .json(&loki)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let lines = store.read_all(&token, "via-edge").await;
    let got: Vec<&str> = lines
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["from otlp", "from loki"]);
    store.complete(&token, "via-edge", "succeeded", 0).await;
    let link: Value = c
        .post(format!("{edge}/v1/deployments/via-edge/export-links"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = link["url"].as_str().unwrap();
    assert!(
        url.starts_with(&edge),
        "the link names the edge it was asked at: {url}"
    );
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("etag"));
    assert_eq!(r.text().await.unwrap().lines().count(), 2);
    store.shutdown().await;
}
