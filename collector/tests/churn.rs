//! A long-lived CI node: pods pass through in waves of 100 (created, write, some
//! rotate, complete, their directories deleted by kubelet), with a SIGKILL of the
//! collector in the middle. Every line arrives once, every deployment completes, and at
//! the end the collector's descriptors, memory and state directory are back to their
//! idle size: nothing is held for pods that are gone.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Waves of 100 pods: 20 (2,000 pods, the figure: about 75 s here) with
/// `LOGSTREAM_CHURN_WAVES=20`; the test command runs 6 to stay within CI's time.
fn waves() -> usize {
    std::env::var("LOGSTREAM_CHURN_WAVES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}
const PER_WAVE: usize = 100;
const LINES: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_by_the_thousand_pass_through_and_nothing_stays_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let (gw, grpc, token, token_file) = gateway_with_token(tmp.path()).await;
    let http = gw.http.clone();
    let (mut sim, root, state, pods_file) = Sim::node(tmp.path());
    sim.write_pods();
    let metrics_port = free_port();
    // Quick to let go, so twenty waves fit in the test command.
    let quick = ["--rotate-wait", "100ms", "--close-grace", "100ms"];
    let start = || {
        start_collector_with(
            &root,
            &state,
            &pods_file,
            &token_file,
            grpc,
            &quick,
            metrics_port,
        )
    };
    let mut collector = start();
    until_metrics(metrics_port, "the collector serves metrics", async |p| {
        metric(p, "containers").await == 0
    })
    .await;
    let (idle_fds, idle_rss) = process_usage(collector.id());
    let idle_state = dir_bytes(&state);
    let completed = |pod: usize| {
        gw.state
            .store
            .catalog()
            .get("acme", &format!("churn-{pod}"))
            .is_some_and(|s| s.completion.is_some())
    };
    let started = Instant::now();
    for wave in 0..waves() {
        let pods: Vec<usize> = (wave * PER_WAVE..(wave + 1) * PER_WAVE).collect();
        for &p in &pods {
            sim.add_pod(p, &format!("churn-{p}"));
        }
        // Pods nobody selects live beside them (most pods of a node): no file of
        // theirs is held.
        let others: Vec<usize> = (0..10).map(|k| 100_000 + wave * 10 + k).collect();
        for &p in &others {
            sim.add_unselected_pod(p);
        }
        for &p in &pods {
            let mut f = sim.open(p);
            for n in 0..LINES / 2 {
                sim.write_line(&mut f, p, n);
            }
            if p % 10 == 0 {
                sim.rotate_rename(p, 1);
                f = sim.open(p);
            }
            for n in LINES / 2..LINES {
                sim.write_line(&mut f, p, n);
            }
        }
        if wave == waves() / 2 {
            // SIGKILL with a wave written and not completed; a new collector resumes.
            collector.kill().unwrap();
            collector.wait().unwrap();
            collector = start();
        }
        let written = started.elapsed();
        if wave == 0 {
            until_metrics(
                metrics_port,
                "only the selected pods' files open",
                async |m| metric(m, "files_watched").await == PER_WAVE as i64,
            )
            .await;
        }
        for &p in &pods {
            sim.finish_pod(p, 0);
        }
        let t = Instant::now();
        while !pods.iter().all(|p| completed(*p)) {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "wave {wave}: {} of {PER_WAVE} deployments completed after 60 s",
                pods.iter().filter(|p| completed(**p)).count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if std::env::var_os("LOGSTREAM_CHURN_TRACE").is_some() {
            eprintln!(
                "wave {wave}: written at {written:?}, completed after {:?}",
                t.elapsed()
            );
        }
        for &p in pods.iter().chain(&others) {
            sim.remove_pod(p);
        }
        if std::env::var_os("LOGSTREAM_CHURN_TRACE").is_some() {
            // One point of the plot in docs/benchmarks.md: what is held once the wave's
            // pods are gone.
            until_metrics(metrics_port, "the wave let go", async |p| {
                metric(p, "containers").await == 0
            })
            .await;
            let (fds, rss) = process_usage(collector.id());
            eprintln!(
                "| {} | {fds} | {} | {} |",
                (wave + 1) * PER_WAVE,
                rss / 1024,
                dir_bytes(&state)
            );
        }
    }
    eprintln!(
        "{} pods through in {:?}",
        waves() * PER_WAVE,
        started.elapsed()
    );
    // Everything of the gone pods is let go: files, containers, checkpoints.
    until_metrics(metrics_port, "every container let go", async |p| {
        metric(p, "containers").await == 0
            && metric(p, "files_watched").await == 0
            && metric(p, "files_deleted_open").await == 0
    })
    .await;
    let (fds, rss) = process_usage(collector.id());
    eprintln!(
        "descriptors {idle_fds} -> {fds}, RSS {idle_rss} -> {rss} KiB, state {idle_state} -> {} bytes",
        dir_bytes(&state)
    );
    assert!(
        fds <= idle_fds + 2,
        "descriptors {idle_fds} idle, {fds} after"
    );
    // The checkpoint file shrinks at the collector's next save after the last container
    // goes (the metrics above can say so first): await it, within a bound.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while dir_bytes(&state) > idle_state + 4096 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        dir_bytes(&state) <= idle_state + 4096,
        "state directory {idle_state} bytes idle, {} after 30 s",
        dir_bytes(&state)
    );
    assert!(
        rss < idle_rss + 32 * 1024,
        "RSS {idle_rss} KiB idle, {rss} KiB after {} pods",
        waves() * PER_WAVE
    );
    for p in 0..waves() * PER_WAVE {
        let id = format!("churn-{p}");
        assert_exactly_once_in_order(&all_lines(&http, &token, &id).await, p, LINES);
    }
    collector.kill().unwrap();
    collector.wait().unwrap();
}
