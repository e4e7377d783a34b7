//! Ingest compatibility and export links (issue 24): `cargo bench -p logstream-gateway
//! --bench compat`.
//!
//! - Ingest of the loghub lines in batches of 1,000 (4 producers, 5 s, each waiting for
//!   its answer) over native NDJSON, OTLP/HTTP protobuf, OTLP/HTTP JSON, Loki push
//!   protobuf (snappy) and Loki JSON, in the same run: the ratio to native is what each
//!   protocol's decoding and mapping costs.
//! - A completed 200,000-line deployment downloaded through an export link: the first
//!   download (rendering into the cache), a cached one, and the authenticated streaming
//!   export; then 1,000 random 64 KiB `Range` requests (latency percentiles).
//!
//! Medians of 3 runs with min..max. Everything shares this machine's cores.

use std::sync::Arc;
use std::time::{Duration, Instant};

use logstream_gateway::auth::Scope;
use logstream_gateway::compat::loki;
use logstream_gateway::config::Config;
use logstream_gateway::server::Running;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

mod common;
use common::{loghub_lines, ndjson_bodies};

const RUNS: usize = 3;
const BATCH: usize = 1000;

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// One protocol's request bodies (each `BATCH` lines of deployment `{dep}`; `{dep}` is
/// replaced per producer).
struct Protocol {
    name: &'static str,
    path: &'static str,
    ctype: &'static str,
    bodies: Vec<Vec<u8>>,
    /// The deployment is in the body (OTLP, Loki): one body set per producer.
    per_producer: bool,
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn otlp(chunk: &[String], dep: &str) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("logstream.deployment", dep), kv("service.name", "bench")],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: chunk
                    .iter()
                    .map(|l| LogRecord {
                        time_unix_nano: common::now_ns() as u64,
                        severity_number: 9,
                        body: Some(AnyValue {
                            value: Some(Value::StringValue(l.clone())),
                        }),
                        attributes: vec![kv("logstream.step", "build")],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn loki_proto(chunk: &[String], dep: &str) -> Vec<u8> {
    let req = loki::PushRequest {
        streams: vec![loki::StreamAdapter {
            labels: format!("{{deployment=\"{dep}\", step=\"build\", job=\"bench\"}}"),
            entries: chunk
                .iter()
                .map(|l| loki::EntryAdapter {
                    timestamp: Some(loki::Timestamp {
                        seconds: common::now_ns() / 1_000_000_000,
                        nanos: 0,
                    }),
                    line: l.clone(),
                    structured_metadata: vec![],
                })
                .collect(),
            hash: 0,
        }],
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap()
}

fn loki_json(chunk: &[String], dep: &str) -> Vec<u8> {
    let ts = common::now_ns().to_string();
    let values: Vec<_> = chunk.iter().map(|l| serde_json::json!([ts, l])).collect();
    serde_json::json!({"streams": [{"stream": {"deployment": dep, "step": "build", "job": "bench"}, "values": values}]})
        .to_string()
        .into_bytes()
}

fn protocols(lines: &[String]) -> Vec<Protocol> {
    let chunks: Vec<&[String]> = lines.chunks(BATCH).filter(|c| c.len() == BATCH).collect();
    // Producer p's bodies name deployment `c-p`: body `p * chunks + i` is its chunk i.
    let build = |f: &dyn Fn(&[String], &str) -> Vec<u8>| -> Vec<Vec<u8>> {
        (0..4)
            .flat_map(|p| {
                let dep = format!("c-{p}");
                chunks
                    .iter()
                    .map(move |c| (c, dep.clone()))
                    .collect::<Vec<_>>()
            })
            .map(|(c, dep)| f(c, &dep))
            .collect()
    };
    vec![
        Protocol {
            name: "native NDJSON (`/v1/deployments/{id}/logs`)",
            path: "/v1/deployments/c-{p}/logs",
            ctype: "application/x-ndjson",
            bodies: ndjson_bodies(lines)
                .into_iter()
                .filter(|b| b.lines().count() == BATCH)
                .map(String::into_bytes)
                .collect(),
            per_producer: false,
        },
        Protocol {
            name: "OTLP/HTTP protobuf (`/v1/logs`)",
            path: "/v1/logs",
            ctype: "application/x-protobuf",
            bodies: build(&|c, d| otlp(c, d).encode_to_vec()),
            per_producer: true,
        },
        Protocol {
            name: "OTLP/HTTP JSON (`/v1/logs`)",
            path: "/v1/logs",
            ctype: "application/json",
            bodies: build(&|c, d| serde_json::to_vec(&otlp(c, d)).unwrap()),
            per_producer: true,
        },
        Protocol {
            name: "Loki push protobuf + snappy",
            path: "/loki/api/v1/push",
            ctype: "application/x-protobuf",
            bodies: build(&loki_proto),
            per_producer: true,
        },
        Protocol {
            name: "Loki push JSON",
            path: "/loki/api/v1/push",
            ctype: "application/json",
            bodies: build(&loki_json),
            per_producer: true,
        },
    ]
}

/// Lines per second of one protocol: 4 producers for 5 s on a fresh gateway.
async fn ingest(proto: &Protocol) -> f64 {
    let tmp = tempfile::tempdir().unwrap();
    let running = Running::start(Config::loopback(tmp.path())).await.unwrap();
    let token = running.state.auth.mint(
        "bench",
        "bench",
        &[Scope::Write],
        Duration::from_secs(3600),
        None,
    );
    let client = reqwest::Client::new();
    let bodies = Arc::new(proto.bodies.clone());
    let per = if proto.per_producer {
        bodies.len() / 4
    } else {
        bodies.len()
    };
    let mut tasks = Vec::new();
    for p in 0..4 {
        let (client, token, bodies) = (client.clone(), token.clone(), bodies.clone());
        let url = format!(
            "{}{}",
            running.http,
            proto.path.replace("{p}", &p.to_string())
        );
        let (ctype, offset) = (proto.ctype, if proto.per_producer { p * per } else { 0 });
        tasks.push(tokio::spawn(async move {
            let (mut n, t) = (0usize, Instant::now());
            let mut i = p;
            while t.elapsed() < Duration::from_secs(5) {
                let body = bodies[offset + i % per].clone();
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", ctype)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{:?}", r.text().await);
                let _ = r.bytes().await;
                n += BATCH;
                i += 1;
            }
            (n, t.elapsed())
        }));
    }
    let (mut n, mut el) = (0, Duration::ZERO);
    for t in tasks {
        let (a, e) = t.await.unwrap();
        n += a;
        el = el.max(e);
    }
    running.shutdown().await.unwrap();
    n as f64 / el.as_secs_f64()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

async fn links(lines: &[String]) {
    let tmp = tempfile::tempdir().unwrap();
    let running = Running::start(Config::loopback(tmp.path())).await.unwrap();
    let token = running.state.auth.mint(
        "bench",
        "bench",
        &[Scope::Write, Scope::Read, Scope::Export],
        Duration::from_secs(3600),
        None,
    );
    let client = reqwest::Client::new();
    let bodies = ndjson_bodies(lines);
    let mut pushed = 0;
    'push: loop {
        for b in &bodies {
            let r = client
                .post(format!("{}/v1/deployments/big/logs", running.http))
                .bearer_auth(&token)
                .header("content-type", "application/x-ndjson")
                .body(b.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            pushed += b.lines().count();
            if pushed >= 200_000 {
                break 'push;
            }
        }
    }
    let r = client
        .post(format!("{}/v1/deployments/big/complete", running.http))
        .bearer_auth(&token)
        .json(&serde_json::json!({"status": "succeeded"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let link: serde_json::Value = client
        .post(format!("{}/v1/deployments/big/export-links", running.http))
        .bearer_auth(&token)
        .json(&serde_json::json!({"format": "text"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = link["url"].as_str().unwrap().to_owned();
    let timed = |req: reqwest::RequestBuilder| async move {
        let t = Instant::now();
        let r = req.send().await.unwrap();
        assert!(r.status().is_success());
        let n = r.bytes().await.unwrap().len();
        (n, t.elapsed().as_secs_f64())
    };
    let (len, first) = timed(client.get(&url)).await;
    let mut cached = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..RUNS {
        cached.push(timed(client.get(&url)).await.1);
        direct.push(
            timed(
                client
                    .get(format!(
                        "{}/v1/deployments/big/export?format=text",
                        running.http
                    ))
                    .bearer_auth(&token),
            )
            .await
            .1,
        );
    }
    let mb = len as f64 / 1e6;
    let (c, clo, chi) = median(cached);
    let (d, dlo, dhi) = median(direct);
    println!("### Export link of a completed {pushed}-line deployment ({mb:.1} MB as text)\n");
    println!("| download | time (median) | MB/s | min..max |");
    println!("|---|---:|---:|---|");
    println!(
        "| link, first (renders into the cache) | {:.0} ms | {:.0} | |",
        first * 1e3,
        mb / first
    );
    println!(
        "| link, cached (ETag, Range-able) | {:.0} ms | {:.0} | {:.0}..{:.0} ms |",
        c * 1e3,
        mb / c,
        clo * 1e3,
        chi * 1e3
    );
    println!(
        "| authenticated export (streamed from the store) | {:.0} ms | {:.0} | {:.0}..{:.0} ms |",
        d * 1e3,
        mb / d,
        dlo * 1e3,
        dhi * 1e3
    );
    println!("\ncached link / streamed export throughput: {:.2}\n", d / c);

    let mut lat = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let start = x % (len as u64 - 65_536);
        let t = Instant::now();
        let r = client
            .get(&url)
            .header("range", format!("bytes={start}-{}", start + 65_535))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(r.bytes().await.unwrap().len(), 65_536);
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("### 1,000 random 64 KiB Range requests on the cached link\n");
    println!("| p50 | p99 | max |");
    println!("|---:|---:|---:|");
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    println!(
        "| {p50:.2} ms | {p99:.2} ms | {:.2} ms |\n",
        pct(&mut lat, 1.0)
    );
    running.shutdown().await.unwrap();
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let lines = loghub_lines();
    let protos = protocols(&lines);
    println!("## Ingest compatibility and export links (issue 24)\n");
    println!(
        "### Ingest by protocol (loghub lines, batches of {BATCH}, 4 producers, 5 s each, {RUNS} runs)\n"
    );
    println!("| protocol | lines/s (median) | min..max | / native |");
    println!("|---|---:|---|---:|");
    let mut native = 0.0;
    for p in &protos {
        let mut rates = Vec::new();
        for _ in 0..RUNS {
            rates.push(ingest(p).await);
        }
        let (m, lo, hi) = median(rates);
        if native == 0.0 {
            native = m;
        }
        println!(
            "| {} | {m:.0} | {lo:.0}..{hi:.0} | {:.2} |",
            p.name,
            m / native
        );
    }
    println!();
    links(&lines).await;
}
