//! Object storage against the same store on local disk, same machine, same run:
//! `cargo bench -p logstream-gateway --bench objstore` (needs `moto_server`, which
//! `./e2e/test` installs; `LOGSTREAM_MOTO_SERVER` names another).
//!
//! One completed deployment of 2,000,000 loghub lines in 4 MiB segments, then:
//! - offload: every sealed segment uploaded, read back and compared, manifest written
//!   (MB/s of segment bytes), against plain PUTs of the same bytes to the same server
//!   (the peer: what the service takes without verification or bookkeeping);
//! - 500-line history pages at random positions, forward (the store's read path that
//!   history, export and catch-up share): p50/p99 with every segment local (the cache),
//!   then with every segment evicted (ranged GETs from the S3 server on loopback).
//!
//! `LOGSTREAM_BENCH_RUNS` (default 3) runs; the table gives the median and the range.

use std::sync::Arc;
use std::time::Instant;

use logstream_gateway::config::ObjectStoreConfig;
use logstream_gateway::objstore::ObjectStorage;
use logstream_gateway::store::{
    DeploymentId, Direction, Outcome, Remote, Store, StoreConfig, StoreHooks,
};
use logstream_gateway::testkit::S3Server;
use logstream_model::{Filter, LogRecord};

mod common;
use common::loghub_lines;

const LINES: usize = 2_000_000;
const PAGES: usize = 300;

struct Figures {
    segments: usize,
    bytes: u64,
    offload_mb_s: f64,
    put_mb_s: f64,
    local_p50: f64,
    local_p99: f64,
    remote_p50: f64,
    remote_p99: f64,
    gets_per_page: f64,
    kib_per_page: f64,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn pages(store: &Store, id: &DeploymentId, seed: u64) -> Vec<f64> {
    let log = store.log(id, false).unwrap().unwrap();
    let mut x = seed;
    (0..PAGES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let from = x % (LINES as u64 - 500);
            let t = Instant::now();
            let page = log
                .read(Direction::Forward, from, &Filter::default(), 500)
                .unwrap();
            assert_eq!(page.records.len(), 500);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

async fn run(s3: &S3Server, lines: &[String], n: usize) -> Figures {
    let tmp = tempfile::tempdir().unwrap();
    let creds = tmp.path().join("s3.env");
    std::fs::write(
        &creds,
        "AWS_ACCESS_KEY_ID=bench\nAWS_SECRET_ACCESS_KEY=bench-secret\n",
    )
    .unwrap();
    let cfg = ObjectStoreConfig {
        url: format!("s3://{}/run{n}", s3.bucket),
        endpoint: Some(s3.endpoint()),
        region: Some("us-east-1".into()),
        credentials_file: Some(creds),
        ..ObjectStoreConfig::default()
    };
    let remote = Arc::new(ObjectStorage::open(&cfg).unwrap());
    let store = Store::open(
        tmp.path().join("store"),
        StoreConfig {
            segment_bytes: 4 << 20,
            ..StoreConfig::default()
        },
        StoreHooks {
            remote: Some(remote.clone()),
            ..StoreHooks::default()
        },
    )
    .unwrap();
    let id = DeploymentId::new("bench", "big");
    let log = store.log(&id, true).unwrap().unwrap();
    for chunk in 0..LINES / 10_000 {
        let recs: Vec<LogRecord> = (0..10_000)
            .map(|i| {
                let k = chunk * 10_000 + i;
                LogRecord::new(k as i64 * 1_000_000, "main", lines[k % lines.len()].clone())
            })
            .collect();
        log.append(recs, None).unwrap();
    }
    log.complete(Outcome::Succeeded, 0).unwrap();
    drop(log);
    let local = tokio::task::block_in_place(|| pages(&store, &id, 7 + n as u64));

    let t = Instant::now();
    let pass = tokio::task::block_in_place(|| store.offload(|_| true));
    let offload_s = t.elapsed().as_secs_f64();
    assert!(pass.error.is_none(), "{:?}", pass.error);
    // The peer: the same bytes as plain PUTs.
    let segs: Vec<Vec<u8>> =
        std::fs::read_dir(tmp.path().join("store/tenants/bench/deployments/big"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .map(|p| std::fs::read(p).unwrap())
            .collect();
    let t = Instant::now();
    tokio::task::block_in_place(|| {
        for (i, s) in segs.iter().enumerate() {
            remote.put(&format!("peer{n}/{i}.seg"), s).unwrap();
        }
    });
    let put_s = t.elapsed().as_secs_f64();

    let stats0 = store.tier_stats().unwrap();
    tokio::task::block_in_place(|| store.evict(0));
    let remote_ms = tokio::task::block_in_place(|| pages(&store, &id, 7 + n as u64));
    let stats1 = store.tier_stats().unwrap();
    let (mut local, mut remote_ms) = (local, remote_ms);
    let gets = (stats1.remote_reads - stats0.remote_reads) as f64 / PAGES as f64;
    let kib = (stats1.remote_read_bytes - stats0.remote_read_bytes) as f64 / PAGES as f64 / 1024.0;
    Figures {
        segments: pass.uploaded as usize,
        bytes: pass.bytes,
        offload_mb_s: pass.bytes as f64 / offload_s / 1e6,
        put_mb_s: pass.bytes as f64 / put_s / 1e6,
        local_p50: percentile(&mut local, 0.5),
        local_p99: percentile(&mut local, 0.99),
        remote_p50: percentile(&mut remote_ms, 0.5),
        remote_p99: percentile(&mut remote_ms, 0.99),
        gets_per_page: gets,
        kib_per_page: kib,
    }
}

fn median_range(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    format!("{:.2} ({:.2}-{:.2})", s[s.len() / 2], s[0], s[s.len() - 1])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("LOGSTREAM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let lines = loghub_lines();
    let s3 = S3Server::start("bench").await;
    let mut all = Vec::new();
    for n in 0..runs {
        let f = run(&s3, &lines, n).await;
        eprintln!(
            "run {n}: {} segments, {} MB; offload {:.1} MB/s, put {:.1} MB/s; local p99 {:.2} ms, remote p99 {:.2} ms",
            f.segments,
            f.bytes / 1_000_000,
            f.offload_mb_s,
            f.put_mb_s,
            f.local_p99,
            f.remote_p99
        );
        all.push(f);
    }
    let col = |f: &dyn Fn(&Figures) -> f64| median_range(&all.iter().map(f).collect::<Vec<_>>());
    println!(
        "\n{LINES} loghub lines, {} segments of 4 MiB ({} MB), moto S3 on loopback, {runs} runs: median (range)\n",
        all[0].segments,
        all[0].bytes / 1_000_000
    );
    println!("| measure | logstream | peer | ratio |");
    println!("|---|---|---|---|");
    let offload = all.iter().map(|f| f.offload_mb_s).collect::<Vec<_>>();
    let put = all.iter().map(|f| f.put_mb_s).collect::<Vec<_>>();
    let ratio: Vec<f64> = offload.iter().zip(&put).map(|(a, b)| a / b).collect();
    println!(
        "| offload, MB/s (upload + read-back verify + manifest) | {} | {} (plain PUT) | {}x |",
        col(&|f| f.offload_mb_s),
        col(&|f| f.put_mb_s),
        median_range(&ratio)
    );
    let r99: Vec<f64> = all.iter().map(|f| f.remote_p99 / f.local_p99).collect();
    println!(
        "| 500-line page p50, ms | {} (remote) | {} (local cache) | |",
        col(&|f| f.remote_p50),
        col(&|f| f.local_p50)
    );
    println!(
        "| 500-line page p99, ms | {} (remote) | {} (local cache) | {}x |",
        col(&|f| f.remote_p99),
        col(&|f| f.local_p99),
        median_range(&r99)
    );
    println!(
        "| ranged GETs per remote page | {} | | |",
        col(&|f| f.gets_per_page)
    );
    println!(
        "| KiB fetched per remote page | {} | | |",
        col(&|f| f.kib_per_page)
    );
}
