//! What the gateway's benchmarks share: the loghub lines, the clock the producers stamp
//! lines with, and an SSE reader that turns `t=<ns>` lines into latencies.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;

/// Unix time in nanoseconds.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// Every line of the 16 loghub samples (`../shared/data/loghub`).
pub fn loghub_lines() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/loghub");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("loghub data") {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "log") {
            out.extend(
                String::from_utf8_lossy(&std::fs::read(p).unwrap())
                    .lines()
                    .map(str::to_owned),
            );
        }
    }
    out
}

/// Reads an SSE stream of lines whose messages are `t=<send time in ns>` until the line
/// `stop`: each line's delay from its send to its receipt, in ns. `on_start` runs when
/// the line `start` arrives.
pub async fn sse_latencies(resp: reqwest::Response, mut on_start: impl FnMut()) -> Vec<i64> {
    let mut body = resp.bytes_stream();
    let mut lat = Vec::with_capacity(6000);
    let mut carry = Vec::new();
    let mut started = false;
    while let Some(chunk) = body.next().await {
        let now = now_ns();
        carry.extend_from_slice(&chunk.unwrap());
        let mut start = 0;
        while let Some(pos) = memchr::memmem::find(&carry[start..], b"\"message\":\"") {
            let from = start + pos + 11;
            let Some(end) = carry[from..].iter().position(|b| *b == b'"') else {
                break;
            };
            let msg = &carry[from..from + end];
            if msg == b"start" {
                if !started {
                    started = true;
                    on_start();
                }
            } else if msg == b"stop" {
                return lat;
            } else if let Some(t) = std::str::from_utf8(msg)
                .ok()
                .and_then(|m| m.strip_prefix("t="))
                .and_then(|t| t.parse::<i64>().ok())
            {
                lat.push(now - t);
            }
            start = from + end;
        }
        carry.drain(..start);
    }
    lat
}

/// The loghub lines as NDJSON bodies of 1,000 lines each.
pub fn ndjson_bodies(lines: &[String]) -> Vec<String> {
    lines
        .chunks(1000)
        .map(|c| {
            c.iter()
                .map(|l| serde_json::json!({"message": l}).to_string() + "\n")
                .collect()
        })
        .collect()
}

/// Four producers POST `bodies` in turn to deployments `<prefix>-0..3` for `run_for`,
/// each waiting for its ack: (lines accepted, bytes sent, longest elapsed).
pub async fn http_ingest(
    client: &reqwest::Client,
    http: &str,
    token: &str,
    bodies: Arc<Vec<String>>,
    prefix: &str,
    run_for: Duration,
) -> (usize, usize, Duration) {
    let mut tasks = Vec::new();
    for p in 0..4 {
        let (client, token, bodies) = (client.clone(), token.to_owned(), bodies.clone());
        let url = format!("{http}/v1/deployments/{prefix}-{p}/logs");
        tasks.push(tokio::spawn(async move {
            let (mut n, mut bytes, t) = (0usize, 0usize, Instant::now());
            let mut i = p;
            while t.elapsed() < run_for {
                let body = &bodies[i % bodies.len()];
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/x-ndjson")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let v: serde_json::Value = r.json().await.unwrap();
                n += v["accepted"].as_u64().unwrap() as usize;
                bytes += body.len();
                i += 1;
            }
            (n, bytes, t.elapsed())
        }));
    }
    totals(tasks).await
}

/// Sums what the producers report: (lines, bytes, longest elapsed).
pub async fn totals(
    tasks: Vec<tokio::task::JoinHandle<(usize, usize, Duration)>>,
) -> (usize, usize, Duration) {
    let (mut n, mut b, mut el) = (0, 0, Duration::ZERO);
    for t in tasks {
        let (a, by, e) = t.await.unwrap();
        n += a;
        b += by;
        el = el.max(e);
    }
    (n, b, el)
}
