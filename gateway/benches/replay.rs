//! Multi-GB replay (issue 25, part): `cargo bench -p logstream-gateway --bench replay`
//! (`LOGSTREAM_REPLAY_GB`, default 5: gigabytes of message bytes).
//!
//! A completed deployment of that size (the loghub lines, pushed over HTTP by 4
//! producers) is exported whole and followed over SSE from a cursor in its middle, both
//! at once, while a live deployment gets 1,000 lines a second and one SSE viewer: the
//! live viewer's latency percentiles before and during the replay say whether a big log
//! starves the others, and the process's RSS, sampled every 250 ms, whether reading it
//! holds memory. The gateway runs in this process (its RSS includes the bench's client).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use logstream_gateway::auth::Scope;
use logstream_gateway::config::Config;
use logstream_gateway::server::Running;

mod common;
use common::{loghub_lines, ndjson_bodies, now_ns, sse_latencies};

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn pct(v: &mut [i64], p: f64) -> f64 {
    v.sort_unstable();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)] as f64 / 1e6
}

/// Live lines at 1,000 a second for `secs` to `dep` (with `start` first and `stop`
/// last), and one SSE viewer's latencies.
async fn live(http: &str, token: &str, dep: &str, secs: u64) -> Vec<i64> {
    let c = reqwest::Client::new();
    let post = |body: String| {
        c.post(format!("{http}/v1/deployments/{dep}/logs"))
            .bearer_auth(token)
            .header("content-type", "text/plain")
            .body(body)
            .send()
    };
    post("start".into()).await.unwrap();
    let resp = c
        .get(format!("{http}/v1/deployments/{dep}/stream"))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let viewer = tokio::spawn(sse_latencies(resp, move || {
        if let Some(t) = ready_tx.take() {
            let _ = t.send(());
        }
    }));
    ready_rx.await.unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for _ in 0..secs * 100 {
        tick.tick().await;
        let body: String = (0..10).map(|_| format!("t={}\n", now_ns())).collect();
        post(body).await.unwrap().error_for_status().unwrap();
    }
    post("stop".into()).await.unwrap();
    viewer.await.unwrap()
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let gb: f64 = std::env::var("LOGSTREAM_REPLAY_GB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5.0);
    let target = (gb * 1e9) as u64;
    let tmp = tempfile::tempdir().unwrap();
    let running = Running::start(Config::loopback(tmp.path())).await.unwrap();
    let http = running.http.clone();
    let token = running.state.auth.mint(
        "bench",
        "bench",
        &[Scope::Read, Scope::Write, Scope::Export],
        Duration::from_secs(24 * 3600),
        None,
    );
    let lines = loghub_lines();
    let bodies = Arc::new(ndjson_bodies(&lines));
    let per_body: Vec<u64> = lines
        .chunks(1000)
        .map(|c| c.iter().map(|l| l.len() as u64).sum())
        .collect();
    let per_body = Arc::new(per_body);

    // The big deployment: 4 producers until `target` message bytes.
    let written = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut producers = Vec::new();
    for p in 0..4usize {
        let (http, token, bodies, per_body, written) = (
            http.clone(),
            token.clone(),
            bodies.clone(),
            per_body.clone(),
            written.clone(),
        );
        producers.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            let mut i = p;
            while written.load(Ordering::Relaxed) < target {
                let r = c
                    .post(format!("{http}/v1/deployments/big/logs"))
                    .bearer_auth(&token)
                    .header("content-type", "application/x-ndjson")
                    .body(bodies[i % bodies.len()].clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                written.fetch_add(per_body[i % per_body.len()], Ordering::Relaxed);
                i += 4;
            }
        }));
    }
    for p in producers {
        p.await.unwrap();
    }
    let ingest = t0.elapsed();
    let c = reqwest::Client::new();
    c.post(format!("{http}/v1/deployments/big/complete"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"status": "succeeded"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let info: serde_json::Value = c
        .get(format!("{http}/v1/deployments/big"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let total_lines = info["lines"].as_u64().unwrap();
    let stored = info["bytes"].as_u64().unwrap_or(0);
    let middle: serde_json::Value = c
        .get(format!(
            "{http}/v1/deployments/big/logs?at={}&limit=1",
            total_lines / 2
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cursor = middle["lines"][0]["cursor"].as_str().unwrap().to_owned();

    // Before: the live viewer alone.
    let mut before = live(&http, &token, "live-before", 10).await;
    let rss_before = rss_mb();

    // During: export + follow from the middle, the live viewer beside them, RSS sampled.
    let samples = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sampling = {
        let samples = samples.clone();
        tokio::spawn(async move {
            loop {
                samples.lock().push(rss_mb());
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let export = {
        let (http, token) = (http.clone(), token.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            let r = reqwest::Client::new()
                .get(format!("{http}/v1/deployments/big/export?format=text"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            let mut s = r.bytes_stream();
            let mut n = 0u64;
            while let Some(b) = s.next().await {
                n += b.unwrap().len() as u64;
            }
            (n, t.elapsed())
        })
    };
    let follow = {
        let (http, token) = (http.clone(), token.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            let r = reqwest::Client::new()
                .get(format!("{http}/v1/deployments/big/stream?cursor={cursor}"))
                .bearer_auth(&token)
                .header("accept", "text/event-stream")
                .send()
                .await
                .unwrap();
            let mut s = r.bytes_stream();
            let (mut lines, mut carry) = (0u64, Vec::new());
            while let Some(b) = s.next().await {
                carry.extend_from_slice(&b.unwrap());
                lines += memchr::memmem::find_iter(&carry, b"event: line\n").count() as u64;
                let ended = memchr::memmem::find(&carry, b"event: end\n").is_some();
                // Less than a marker: a marker split across chunks is kept, none counted twice.
                let keep = carry.len().min(11);
                carry.drain(..carry.len() - keep);
                if ended {
                    break;
                }
            }
            (lines, t.elapsed())
        })
    };
    let live_during = {
        let (http, token) = (http.clone(), token.clone());
        tokio::spawn(async move { live(&http, &token, "live-during", 10).await })
    };
    let mut during = live_during.await.unwrap();
    let (export_bytes, export_time) = export.await.unwrap();
    let (followed, follow_time) = follow.await.unwrap();
    sampling.abort();
    let rss: Vec<f64> = samples.lock().clone();
    let (rss_min, rss_max) = rss
        .iter()
        .fold((f64::MAX, 0f64), |(a, b), x| (a.min(*x), b.max(*x)));

    println!("## Multi-GB replay (issue 25, part), same run\n");
    println!(
        "A completed deployment of {total_lines} lines ({:.2} GB of messages, {:.2} GB stored), ingested in {:.0} s ({:.0} lines/s).\n",
        written.load(Ordering::Relaxed) as f64 / 1e9,
        stored as f64 / 1e9,
        ingest.as_secs_f64(),
        total_lines as f64 / ingest.as_secs_f64()
    );
    println!("| replay | size | time | rate |");
    println!("|---|---:|---:|---:|");
    println!(
        "| export (text, whole) | {:.2} GB | {:.1} s | {:.0} MB/s |",
        export_bytes as f64 / 1e9,
        export_time.as_secs_f64(),
        export_bytes as f64 / 1e6 / export_time.as_secs_f64()
    );
    println!(
        "| SSE follow from the middle (seq {}) to the end | {followed} lines | {:.1} s | {:.0} lines/s |",
        total_lines / 2,
        follow_time.as_secs_f64(),
        followed as f64 / follow_time.as_secs_f64()
    );
    println!(
        "\nProcess RSS: {rss_before:.0} MB before; during the replay {rss_min:.0}..{rss_max:.0} MB ({} samples).\n",
        rss.len()
    );
    println!("| live viewer (1,000 lines/s, SSE) | lines | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    for (name, v) in [("alone", &mut before), ("during the replay", &mut during)] {
        let n = v.len();
        println!(
            "| {name} | {n} | {:.2} ms | {:.2} ms | {:.2} ms |",
            pct(v, 0.5),
            pct(v, 0.99),
            pct(v, 1.0)
        );
    }
    running.shutdown().await.unwrap();
}
