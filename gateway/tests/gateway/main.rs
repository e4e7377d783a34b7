//! The gateway as clients see it: a real server on 127.0.0.1:0 and real clients (reqwest
//! with an SSE parser, tokio-tungstenite, the generated tonic client).
//!
//! One test binary, one module per concern (one link instead of eight on CI). The
//! gateway, tokens and the common client calls come from `logstream_gateway::testkit`;
//! what several modules share beyond that is here.

mod alerts;
mod audit;
mod compat;
mod errors;
mod grpc;
mod history;
mod hotfix;
mod ingest;
mod links;
mod listing;
mod live;
mod mcp;
mod metrics;
mod openapi;
mod scale;
mod tenancy;
mod transports;
mod ui;

use std::path::{Path, PathBuf};
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use logstream_gateway::testkit::{TestGateway, client};
use serde_json::Value;

/// A GET asking for `id`'s live stream as Server-Sent Events.
pub(crate) fn sse_request(
    gw: &TestGateway,
    token: impl std::fmt::Display,
    id: &str,
    query: &str,
) -> reqwest::RequestBuilder {
    client()
        .get(format!("{}/v1/deployments/{id}/stream{query}", gw.http))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
}

/// Reads SSE events until `end` (or until `stop_after` line events), returning the line
/// JSONs, the last event id, and whether `end` came.
pub(crate) async fn read_sse(
    gw: &TestGateway,
    token: &str,
    id: &str,
    query: &str,
    last_event_id: Option<&str>,
    stop_after: Option<usize>,
) -> (Vec<Value>, Option<String>, Option<Value>) {
    let mut req = sse_request(gw, token, id, query);
    if let Some(l) = last_event_id {
        req = req.header("last-event-id", l);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let mut events = resp.bytes_stream().eventsource();
    let mut got = Vec::new();
    let mut last = last_event_id.map(str::to_owned);
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .expect("an SSE event within 20 s")
    {
        let ev = ev.unwrap();
        match ev.event.as_str() {
            "line" => {
                last = Some(ev.id.clone());
                got.push(serde_json::from_str(&ev.data).unwrap());
                if stop_after.is_some_and(|n| got.len() >= n) {
                    return (got, last, None);
                }
            }
            "end" => return (got, last, Some(serde_json::from_str(&ev.data).unwrap())),
            other => panic!("unexpected event {other}: {}", ev.data),
        }
    }
    (got, last, None)
}

/// Every file under `dir`, recursively.
pub(crate) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
