//! Kafka mode against the direct store, same machine, same run:
//! `cargo bench -p logstream-gateway --bench kafka` (needs the tansu broker that
//! `./e2e/test` installs; `LOGSTREAM_TANSU` names another).
//!
//! - ingest lines/s over HTTP (NDJSON batches of 1,000 loghub lines, 4 producers on 4
//!   deployments, 5 s); in Kafka mode a batch is answered once the brokers acknowledged
//!   it and the store applied it;
//! - latency from the producer's send to an SSE viewer's receipt at 1,000 lines/s
//!   (batches of 10 every 10 ms, 5 s): what Kafka adds between agent and viewer.
//!
//! Each system runs `LOGSTREAM_BENCH_RUNS` times (default 3), alternating; the table gives
//! the median and the range. Broker, gateway, producers and viewer share the 2 cores.

use std::sync::Arc;
use std::time::Duration;

use logstream_gateway::auth::Scope;
use logstream_gateway::config::{Config, KafkaConfig};
use logstream_gateway::server::Running;
use logstream_gateway::testkit::Broker;

mod common;
use common::{http_ingest, loghub_lines, ndjson_bodies, now_ns, sse_latencies};

/// One run's figures.
struct Figures {
    lines_per_s: f64,
    mb_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

async fn run(kafka: Option<u16>, bodies: Arc<Vec<String>>) -> Figures {
    let tmp = tempfile::tempdir().unwrap();
    let config = Config {
        max_streams_per_token: 10_000,
        kafka: kafka.map(|port| KafkaConfig {
            brokers: format!("127.0.0.1:{port}"),
            tenants: vec!["bench".into()],
            partitions: 4,
            replication_factor: 1,
            // A fresh topic per run: each run starts from an empty partition.
            topic_prefix: format!("bench{}.", now_ns()),
            ..KafkaConfig::default()
        }),
        ..Config::loopback(tmp.path())
    };
    let running = Running::start(config).await.unwrap();
    let (http, state) = (running.http.clone(), running.state.clone());
    if let Some(k) = &state.kafka {
        // The group's first join: every partition served before measuring.
        while k.ownership.count() < 4
            || k.ownership
                .of("bench")
                .iter()
                .any(|(_, s)| *s != logstream_gateway::kafka::PartitionState::Serving)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let token = state.auth.mint(
        "bench",
        "bench",
        &[Scope::Read, Scope::Write],
        Duration::from_secs(3600),
        None,
    );
    let client = reqwest::Client::new();

    let (n, b, el) = http_ingest(
        &client,
        &http,
        &token,
        bodies,
        "ingest",
        Duration::from_secs(5),
    )
    .await;

    // Latency: one viewer, 1,000 lines/s.
    let dep = "live";
    let post = |body: String| {
        client
            .post(format!("{http}/v1/deployments/{dep}/logs"))
            .bearer_auth(&token)
            .header("content-type", "text/plain")
            .body(body)
    };
    post("start".into()).send().await.unwrap();
    let resp = client
        .get(format!("{http}/v1/deployments/{dep}/stream"))
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let viewer = tokio::spawn(sse_latencies(resp, || {}));
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut posts = Vec::new();
    for _ in 0..500 {
        tick.tick().await;
        let req = post((0..10).map(|_| format!("t={}\n", now_ns())).collect());
        posts.push(tokio::spawn(async move {
            req.send().await.unwrap().error_for_status().unwrap()
        }));
    }
    for p in posts {
        p.await.unwrap();
    }
    post("stop".into()).send().await.unwrap();
    let mut lat = viewer.await.unwrap();
    assert_eq!(lat.len(), 5000, "every line reached the viewer");
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1e6;
    let f = Figures {
        lines_per_s: n as f64 / el.as_secs_f64(),
        mb_per_s: b as f64 / 1e6 / el.as_secs_f64(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
    };
    running.shutdown().await.unwrap();
    f
}

fn median_range(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs: usize = std::env::var("LOGSTREAM_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let bodies = Arc::new(ndjson_bodies(&loghub_lines()));
    let broker = Broker::start().await;
    let mut direct = Vec::new();
    let mut kafka = Vec::new();
    for _ in 0..runs {
        direct.push(run(None, bodies.clone()).await);
        kafka.push(run(Some(broker.port), bodies.clone()).await);
    }
    println!("## Kafka mode (issue 19): through a broker vs direct, same run\n");
    println!(
        "{runs} runs each, alternating; median (min-max). Broker: tansu 0.6 (memory-only), one store, 4 partitions, on this machine's 2 cores.\n"
    );
    println!(
        "| system | ingest lines/s | ingest MB/s | viewer p50 ms | viewer p99 ms | viewer max ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let mut medians = Vec::new();
    for (name, figures) in [("direct (no Kafka)", &direct), ("through Kafka", &kafka)] {
        let col = |f: &dyn Fn(&Figures) -> f64| {
            let mut v: Vec<f64> = figures.iter().map(f).collect();
            median_range(&mut v)
        };
        let cols = [
            col(&|f| f.lines_per_s),
            col(&|f| f.mb_per_s),
            col(&|f| f.p50_ms),
            col(&|f| f.p99_ms),
            col(&|f| f.max_ms),
        ];
        medians.push(cols.map(|c| c.0));
        println!(
            "| {name} | {:.0} ({:.0}-{:.0}) | {:.1} ({:.1}-{:.1}) | {:.2} ({:.2}-{:.2}) | {:.2} ({:.2}-{:.2}) | {:.1} ({:.1}-{:.1}) |",
            cols[0].0,
            cols[0].1,
            cols[0].2,
            cols[1].0,
            cols[1].1,
            cols[1].2,
            cols[2].0,
            cols[2].1,
            cols[2].2,
            cols[3].0,
            cols[3].1,
            cols[3].2,
            cols[4].0,
            cols[4].1,
            cols[4].2
        );
    }
    println!(
        "\nKafka / direct: ingest {:.2}x, viewer p50 +{:.2} ms, p99 +{:.2} ms",
        medians[1][0] / medians[0][0],
        medians[1][2] - medians[0][2],
        medians[1][3] - medians[0][3]
    );
}
