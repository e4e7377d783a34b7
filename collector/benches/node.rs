//! The collector's footprint per live idle container: `cargo bench -p logstream-collector
//! --bench node`.
//!
//! For 10, 100 and 1,000 live pods (one container each, a few lines written and
//! delivered, then idle) on the kubelet simulator with a real gateway: the collector's
//! RSS and descriptors against its own idle figures before the pods came.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!(
        "| live idle containers | collector RSS | RSS per container | descriptors per container | files open / parked |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for n in [10, 100, 1000] {
        measure(n).await;
    }
}

async fn measure(n: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let (gw, grpc, _token, token_file) = gateway_with_token(tmp.path()).await;
    let (mut sim, root, state, pods_file) = Sim::node(tmp.path());
    sim.write_pods();
    let port = free_port();
    let mut collector =
        start_collector_with(&root, &state, &pods_file, &token_file, grpc, &[], port);
    until_metrics(port, "the collector serves metrics", async |p| {
        metric(p, "containers").await == 0
    })
    .await;
    let (idle_fds, idle_rss) = process_usage(collector.id());
    for p in 0..n {
        sim.add_pod(p, &format!("idle-{p}"));
        let mut f = sim.open(p);
        for line in 0..5 {
            sim.write_line(&mut f, p, line);
        }
    }
    // Every pod's lines delivered, then the collector left alone for a moment.
    let start = Instant::now();
    while !(0..n).all(|p| {
        gw.state
            .store
            .catalog()
            .get("acme", &format!("idle-{p}"))
            .is_some_and(|s| s.lines() == 5)
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "lines never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each container's file is open, or closed while idle (parked) beyond the
    // --max-open-files bound (default 512).
    until_metrics(port, "every file followed and read", async |p| {
        metric(p, "files_watched").await + metric(p, "files_parked").await == n as i64
            && metric(p, "lag_bytes").await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (fds, rss) = process_usage(collector.id());
    println!(
        "| {n} | {:.1} MiB | {:.1} KiB | {:.2} | {} / {} |",
        rss as f64 / 1024.0,
        (rss.saturating_sub(idle_rss)) as f64 / n as f64,
        (fds.saturating_sub(idle_fds)) as f64 / n as f64,
        metric(port, "files_watched").await,
        metric(port, "files_parked").await,
    );
    collector.kill().unwrap();
    collector.wait().unwrap();
}
