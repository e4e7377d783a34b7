//! Gateway benchmark: `cargo bench -p logstream-gateway --bench gateway` (raise the open
//! file limit first for 1,000 viewers: `ulimit -n 8192`).
//!
//! - ingest lines/s over HTTP (NDJSON batches) and gRPC (`Ingest.Push`), loghub lines;
//! - latency from the producer's send to each SSE viewer's receipt, p50/p99/max, with
//!   1, 100 and 1,000 viewers on one deployment at 1,000 lines/s (batches of 10 every
//!   10 ms). Server, producer and viewers share this machine's 2 cores.

use std::sync::Arc;
use std::time::{Duration, Instant};

use logstream_gateway::auth::Scope;
use logstream_gateway::config::Config;
use logstream_gateway::server::Running;
use logstream_proto::v1 as pb;

mod common;
use common::{http_ingest, loghub_lines, ndjson_bodies, now_ns, sse_latencies, totals};

fn percentile(v: &mut [i64], p: f64) -> f64 {
    v.sort_unstable();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)] as f64 / 1e6
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let config = Config {
        heartbeat_secs: 15,
        max_streams_per_token: 10_000,
        ..Config::loopback(tmp.path())
    };
    let running = Running::start(config).await.unwrap();
    let (http, grpc, state) = (
        running.http.clone(),
        running.grpc.clone(),
        running.state.clone(),
    );
    let only_live = std::env::var("LOGSTREAM_BENCH_ONLY").is_ok_and(|v| v == "live");
    let token = state.auth.mint(
        "bench",
        "bench",
        &[Scope::Read, Scope::Write],
        Duration::from_secs(3600),
        None,
    );
    let lines = Arc::new(loghub_lines());
    let client = reqwest::Client::new();

    println!("## Gateway\n");
    if !only_live {
        println!(
            "### Ingest (loghub lines, batches of 1,000, 4 concurrent producers on 4 deployments, 5 s)\n"
        );
        println!("| path | lines/s | MB/s |");
        println!("|---|---:|---:|");
        let run_for = Duration::from_secs(5);
        let bodies = Arc::new(ndjson_bodies(&lines));
        let (n, b, el) = http_ingest(&client, &http, &token, bodies, "http", run_for).await;
        println!(
            "| HTTP POST NDJSON | {:.0} | {:.1} |",
            n as f64 / el.as_secs_f64(),
            b as f64 / 1e6 / el.as_secs_f64()
        );

        let channel = tonic::transport::Endpoint::from_shared(grpc.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for p in 0..4 {
            let (channel, token, lines) = (channel.clone(), token.clone(), lines.clone());
            tasks.push(tokio::spawn(async move {
                let auth = format!("Bearer {token}");
                let mut c = pb::ingest_client::IngestClient::with_interceptor(
                    channel,
                    move |mut r: tonic::Request<()>| {
                        r.metadata_mut()
                            .insert("authorization", auth.parse().unwrap());
                        Ok(r)
                    },
                );
                let (tx, rx) = tokio::sync::mpsc::channel(8);
                let mut acks = c
                    .push(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .unwrap()
                    .into_inner();
                let t = Instant::now();
                let (mut n, mut bytes, mut batch_id) = (0usize, 0usize, 0u64);
                let chunks: Vec<Vec<pb::Line>> = lines
                    .chunks(1000)
                    .map(|c| {
                        c.iter()
                            .map(|l| pb::Line {
                                message: l.clone(),
                                ..Default::default()
                            })
                            .collect()
                    })
                    .collect();
                // Keep 4 batches in flight on the stream.
                for _ in 0..4 {
                    batch_id += 1;
                    let chunk = chunks[batch_id as usize % chunks.len()].clone();
                    tx.send(pb::PushRequest {
                        deployment: format!("grpc-{p}"),
                        source: format!("p{p}"),
                        batch_id,
                        lines: chunk,
                    })
                    .await
                    .unwrap();
                }
                while let Some(a) = acks.message().await.unwrap() {
                    n += a.accepted as usize;
                    bytes += chunks[a.batch_id as usize % chunks.len()]
                        .iter()
                        .map(|l| l.message.len())
                        .sum::<usize>();
                    if t.elapsed() < run_for {
                        batch_id += 1;
                        let chunk = chunks[batch_id as usize % chunks.len()].clone();
                        tx.send(pb::PushRequest {
                            deployment: format!("grpc-{p}"),
                            source: format!("p{p}"),
                            batch_id,
                            lines: chunk,
                        })
                        .await
                        .unwrap();
                    } else if a.batch_id == batch_id {
                        break;
                    }
                }
                (n, bytes, t.elapsed())
            }));
        }
        let (n, b, el) = totals(tasks).await;
        println!(
            "| gRPC Ingest.Push | {:.0} | {:.1} |\n",
            n as f64 / el.as_secs_f64(),
            b as f64 / 1e6 / el.as_secs_f64()
        );
    }

    println!("### Live latency, producer send -> SSE viewer receipt, 1,000 lines/s for 5 s\n");
    println!(
        "| viewers | lines delivered | per viewer min / max | p50 ms | p99 ms | max ms | lagged viewers |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let counts: Vec<usize> = std::env::var("LOGSTREAM_BENCH_VIEWERS")
        .unwrap_or_else(|_| "1,100,1000".into())
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    for (round, viewers) in counts.into_iter().enumerate() {
        let dep = format!("live-{round}");
        client
            .post(format!("{http}/v1/deployments/{dep}/logs"))
            .bearer_auth(&token)
            .header("content-type", "text/plain")
            .body("start")
            .send()
            .await
            .unwrap();
        let lagged_before = state.metrics.lagging_viewers.get();
        let mut handles = Vec::new();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(viewers);
        for _ in 0..viewers {
            let (http, token, dep, ready) =
                (http.clone(), token.clone(), dep.clone(), ready_tx.clone());
            handles.push(tokio::spawn(async move {
                let c = reqwest::Client::new();
                let resp = c
                    .get(format!("{http}/v1/deployments/{dep}/stream"))
                    .bearer_auth(&token)
                    .header("accept", "text/event-stream")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                sse_latencies(resp, || {
                    let _ = ready.try_send(());
                })
                .await
            }));
        }
        for _ in 0..viewers {
            ready_rx.recv().await.unwrap();
        }
        // Exactly 500 batches of 10 on a 10 ms schedule; a post does not wait for the
        // previous ack, so a slow ack cannot lower the offered rate.
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut posts = Vec::new();
        for _ in 0..500 {
            tick.tick().await;
            let body: String = (0..10).map(|_| format!("t={}\n", now_ns())).collect();
            let req = client
                .post(format!("{http}/v1/deployments/{dep}/logs"))
                .bearer_auth(&token)
                .header("content-type", "text/plain")
                .body(body);
            posts.push(tokio::spawn(async move {
                req.send().await.unwrap().error_for_status().unwrap()
            }));
        }
        for p in posts {
            p.await.unwrap();
        }
        client
            .post(format!("{http}/v1/deployments/{dep}/logs"))
            .bearer_auth(&token)
            .header("content-type", "text/plain")
            .body("stop")
            .send()
            .await
            .unwrap();
        let mut all = Vec::new();
        let (mut min, mut max) = (usize::MAX, 0);
        for h in handles {
            let l = h.await.unwrap();
            min = min.min(l.len());
            max = max.max(l.len());
            all.extend(l);
        }
        let delivered = all.len();
        println!(
            "| {viewers} | {delivered} | {min} / {max} | {:.2} | {:.2} | {:.2} | {} |",
            percentile(&mut all, 0.5),
            percentile(&mut all, 0.99),
            percentile(&mut all, 1.0),
            state.metrics.lagging_viewers.get() - lagged_before
        );
    }
}
