//! Store at scale: `cargo bench -p logstream-store --bench scale`.
//!
//! For 10,000 and 100,000 deployments (one line each, 10% left open), on real files:
//! - creation rate (16 threads), descriptors and RSS afterwards;
//! - start-up (`Store::open`: catalog load and reconcile), descriptors and RSS after it,
//!   and RSS per known deployment;
//! - p50/p99 of a listing page of 100 at a random position;
//! - ingest throughput over many deployments at once against one deployment, same
//!   threads and batches, same run.
//!
//! `LOGSTREAM_BENCH_SCALE` (default `10000,100000`) sets the counts; the data lives in a
//! temporary directory under `$TMPDIR`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use logstream_model::LogRecord;
use logstream_store::{DeploymentId, ListQuery, Outcome, Store, StoreConfig, StoreHooks};
use rand::Rng;

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn line(msg: String) -> LogRecord {
    LogRecord {
        step: "build".into(),
        message: msg,
        ..LogRecord::default()
    }
}

fn parallel(n: usize, threads: usize, f: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    f(i);
                }
            });
        }
    });
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn id(i: usize) -> DeploymentId {
    DeploymentId::new("acme", format!("pipeline-{i:06}"))
}

fn scale(n: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let base_fds = fds();
    let base_rss = rss_kib();
    let store = Store::open(tmp.path(), StoreConfig::default(), StoreHooks::default()).unwrap();
    let t = Instant::now();
    parallel(n, 16, |i| {
        let log = store.log(&id(i), true).unwrap().unwrap();
        log.append(vec![line(format!("pipeline {i} started"))], None)
            .unwrap();
        if i % 10 != 0 {
            log.complete(Outcome::Succeeded, 0).unwrap();
        }
    });
    let created = t.elapsed();
    store.sync_catalog().unwrap();
    let (fds_after, rss_after) = (fds() - base_fds, rss_kib().saturating_sub(base_rss));
    drop(store);

    let rss_before_open = rss_kib();
    let t = Instant::now();
    let store = Store::open(tmp.path(), StoreConfig::default(), StoreHooks::default()).unwrap();
    let startup = t.elapsed();
    let (fds_open, rss_open) = (fds() - base_fds, rss_kib().saturating_sub(rss_before_open));

    // Pages of 100 at random positions.
    let positions: Vec<(i64, String)> = {
        let mut q = ListQuery {
            limit: 1000,
            ..ListQuery::default()
        };
        let mut all = Vec::new();
        loop {
            let page = store.catalog().list("acme", &q, |_| true);
            all.extend(
                page.entries
                    .iter()
                    .map(|(id, s)| (s.created_at, id.clone())),
            );
            match page.next {
                Some(n) => q.after = Some(n),
                None => break all,
            }
        }
    };
    assert_eq!(positions.len(), n);
    let mut rng = rand::rng();
    let mut lat: Vec<Duration> = (0..2000)
        .map(|_| {
            let at = positions[rng.random_range(0..positions.len())].clone();
            let q = ListQuery {
                limit: 100,
                after: Some(at),
                ..ListQuery::default()
            };
            let t = Instant::now();
            let page = store.catalog().list("acme", &q, |_| true);
            std::hint::black_box(page);
            t.elapsed()
        })
        .collect();
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    println!(
        "| {n} | {:.0}/s | {fds_after} | {:.0} MiB | {:.0} ms | {fds_open} | {:.1} MiB | {:.2} KiB | {:.3} ms | {:.3} ms |",
        n as f64 / created.as_secs_f64(),
        rss_after as f64 / 1024.0,
        startup.as_secs_f64() * 1000.0,
        rss_open as f64 / 1024.0,
        rss_open as f64 / n as f64,
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0,
    );
}

/// Lines/s with `threads` writers sending batches of 100 lines, spread over `deployments`.
fn ingest(deployments: usize, threads: usize, batches: usize) -> f64 {
    let tmp = tempfile::tempdir().unwrap();
    let store =
        Arc::new(Store::open(tmp.path(), StoreConfig::default(), StoreHooks::default()).unwrap());
    let msg: String = "x".repeat(120);
    let t = Instant::now();
    parallel(batches, threads, |b| {
        let log = store.log(&id(b % deployments), true).unwrap().unwrap();
        let batch: Vec<LogRecord> = (0..100).map(|i| line(format!("{b} {i} {msg}"))).collect();
        log.append(batch, None).unwrap();
    });
    (batches * 100) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let counts: Vec<usize> = std::env::var("LOGSTREAM_BENCH_SCALE")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "| deployments (10% open) | created | descriptors after | RSS after | start-up | descriptors after start-up | catalog RSS | per deployment | list page p50 | list page p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for n in counts {
        scale(n);
    }
    println!();
    println!("| ingest, 16 threads, batches of 100 lines | lines/s |");
    println!("|---|---|");
    let one = ingest(1, 16, 4000);
    let many = ingest(400, 16, 4000);
    println!("| one deployment | {one:.0} |");
    println!("| 400 deployments at once | {many:.0} |");
    println!("| ratio many / one | {:.2} |", many / one);
}
