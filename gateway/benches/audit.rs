//! Audit benchmark: `cargo bench -p logstream-gateway --bench audit`.
//!
//! What the never-dropping audit trail costs: history reads (each served once its record
//! is queued; durable with the writer's next group commit) and exports (each served once
//! its record is durable) from 16 concurrent clients for 5 s, reads also under a flood of
//! forged tokens from 64 concurrent clients; requests/s, latency and the audit wait
//! (`logstream_audit_wait_seconds`); rejections/s and how many audit records the flood
//! cost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use logstream_gateway::audit::audit_log_id;
use logstream_gateway::auth::Scope;
use logstream_gateway::config::Config;
use logstream_gateway::server::Running;

const READ: &str = "/v1/deployments/{d}/logs?limit=100";
const EXPORT: &str = "/v1/deployments/{d}/export";

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

/// GETs of `path` (`{d}`: one of 8 deployments) for `run_for` from `clients` clients:
/// (requests/s, p50 ms, p99 ms).
async fn reads(
    http: &str,
    token: &str,
    path: &'static str,
    clients: usize,
    run_for: Duration,
) -> (f64, f64, f64) {
    let c = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (c, http, token) = (c.clone(), http.to_owned(), token.to_owned());
        tasks.push(tokio::spawn(async move {
            let (t, mut lat) = (Instant::now(), Vec::new());
            while t.elapsed() < run_for {
                let s = Instant::now();
                let r = c
                    .get(format!(
                        "{http}{}",
                        path.replace("{d}", &format!("d{}", i % 8))
                    ))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
                lat.push(s.elapsed().as_secs_f64() * 1e3);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / run_for.as_secs_f64();
    (rate, percentile(&mut all, 0.5), percentile(&mut all, 0.99))
}

/// p50 and p99 (ms) of the audit wait histogram's observations since `before`, by bucket
/// upper bound.
fn wait_quantiles(state: &logstream_gateway::core::Gateway, before: &[(f64, u64)]) -> (f64, f64) {
    let now = buckets(state);
    let delta: Vec<(f64, u64)> = now
        .iter()
        .zip(before)
        .map(|((le, n), (_, b))| (*le, n - b))
        .collect();
    let total = delta.last().map_or(0, |d| d.1).max(1);
    let q = |p: f64| {
        delta
            .iter()
            .find(|(_, n)| *n as f64 >= total as f64 * p)
            .map_or(f64::INFINITY, |(le, _)| le * 1e3)
    };
    (q(0.5), q(0.99))
}

/// Cumulative (upper bound, count) of `logstream_audit_wait_seconds`, `+Inf` last.
fn buckets(state: &logstream_gateway::core::Gateway) -> Vec<(f64, u64)> {
    let h = state.metrics.audit_wait.clone();
    let families = {
        let r = prometheus::Registry::new();
        r.register(Box::new(h)).unwrap();
        r.gather()
    };
    let m = families[0].get_metric()[0].get_histogram();
    let mut out: Vec<(f64, u64)> = m
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect();
    out.push((f64::INFINITY, m.get_sample_count()));
    out
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let running = Running::start(Config::loopback(tmp.path())).await.unwrap();
    let (http, state) = (running.http.clone(), running.state.clone());
    let token = state.auth.mint(
        "bench",
        "bench",
        &[Scope::Read, Scope::Write, Scope::Export],
        Duration::from_secs(3600),
        None,
    );
    let c = reqwest::Client::new();
    for d in 0..8 {
        let body: String = (0..1000)
            .map(|i| serde_json::json!({"message": format!("line {i} of d{d}")}).to_string() + "\n")
            .collect();
        let r = c
            .post(format!("{http}/v1/deployments/d{d}/logs"))
            .bearer_auth(&token)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let run_for = Duration::from_secs(5);
    println!("## Audit (reads served once their record is queued, exports once it is durable)\n");
    println!(
        "| load | requests/s | p50 ms | p99 ms | audit wait p50 ms | audit wait p99 ms | rejections/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, path) in [("16 readers", READ), ("16 exporters", EXPORT)] {
        let before = buckets(&state);
        let (rate, p50, p99) = reads(&http, &token, path, 16, run_for).await;
        let (w50, w99) = wait_quantiles(&state, &before);
        println!("| {name} | {rate:.0} | {p50:.2} | {p99:.2} | <= {w50} | <= {w99} | - |");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let rejected = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for i in 0..64 {
        let (c, http, stop, rejected) = (c.clone(), http.clone(), stop.clone(), rejected.clone());
        flood.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = c
                    .get(format!("{http}/v1/deployments"))
                    .bearer_auth(format!("forged.token.{i}-{n}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 401);
                rejected.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    let before = buckets(&state);
    let started = Instant::now();
    let (rate, p50, p99) = reads(&http, &token, READ, 16, run_for).await;
    let (w50, w99) = wait_quantiles(&state, &before);
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    let n = rejected.load(Ordering::Relaxed);
    let per_s = n as f64 / started.elapsed().as_secs_f64();
    println!(
        "| 16 readers + 64 clients sending forged tokens | {rate:.0} | {p50:.2} | {p99:.2} | <= {w50} | <= {w99} | {per_s:.0} |"
    );
    state.audit.flush().await;
    let log = state.store.log(&audit_log_id(), false).unwrap().unwrap();
    let stats = log.stats();
    let rejected_records = {
        let page = log
            .read(
                logstream_gateway::store::Direction::Forward,
                0,
                &logstream_model::Filter::default(),
                1_000_000,
            )
            .unwrap();
        page.records
            .iter()
            .filter(|r| r.message.contains("\"auth_rejected\""))
            .count()
    };
    println!(
        "\n{n} rejected requests cost {rejected_records} audit records (aggregated per client and reason every interval); the audit log holds {} records, {} bytes.",
        stats.lines(),
        stats.bytes
    );
    running.shutdown().await.unwrap();
}
