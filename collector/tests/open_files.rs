//! More live containers than `--max-open-files`: the collector holds at most that many
//! log files, closes the idle ones and reopens them at their checkpoint when they grow or
//! are rotated (also across a SIGKILL). Every line arrives once, in order.

mod common;

use common::*;

const PODS: usize = 60;
const MAX_OPEN: i64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_live_containers_than_open_files_and_every_line_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (gw, grpc, token, token_file) = gateway_with_token(tmp.path()).await;
    let http = gw.http.clone();
    let (mut sim, root, state, pods_file) = Sim::node(tmp.path());
    sim.write_pods();
    let metrics_port = free_port();
    let args = [
        "--max-open-files",
        "10",
        "--rotate-wait",
        "100ms",
        "--close-grace",
        "100ms",
    ];
    let start = || {
        start_collector_with(
            &root,
            &state,
            &pods_file,
            &token_file,
            grpc,
            &args,
            metrics_port,
        )
    };
    let mut collector = start();
    until_metrics(metrics_port, "the collector serves metrics", async |p| {
        metric(p, "containers").await == 0
    })
    .await;
    let (idle_fds, _) = process_usage(collector.id());

    let mut next = vec![0u64; PODS];
    let write = |sim: &Sim, next: &mut Vec<u64>, p: usize, n: u64| {
        let mut f = sim.open(p);
        for _ in 0..n {
            sim.write_line(&mut f, p, next[p]);
            next[p] += 1;
        }
    };
    for p in 0..PODS {
        sim.add_pod(p, &format!("lru-{p}"));
        write(&sim, &mut next, p, 10);
    }
    for (p, n) in next.iter().enumerate() {
        wait_for_count(&http, &token, &format!("lru-{p}"), *n as usize).await;
    }
    until_metrics(
        metrics_port,
        "at most 10 files open, the others parked",
        async |m| {
            metric(m, "files_watched").await <= MAX_OPEN
                && metric(m, "files_parked").await >= PODS as i64 - MAX_OPEN
        },
    )
    .await;
    let (fds, _) = process_usage(collector.id());
    assert!(
        fds <= idle_fds + MAX_OPEN as usize + 2,
        "{fds} descriptors with {PODS} live containers (idle: {idle_fds}, bound {MAX_OPEN})"
    );

    // Rounds: some parked containers write again (reopened at their checkpoint), some
    // of them are rotated while parked; a SIGKILL in the middle.
    for round in 0..6 {
        let touched: Vec<usize> = (0..12).map(|k| (round * 17 + k * 5) % PODS).collect();
        for (k, &p) in touched.iter().enumerate() {
            if k % 3 == 0 {
                // kubelet rotates a file the collector does not hold open: its
                // remainder is found by its inode and finished first.
                write(&sim, &mut next, p, 3);
                sim.rotate_rename(p, round + 1);
            }
            write(&sim, &mut next, p, 5);
        }
        if round == 3 {
            collector.kill().unwrap();
            collector.wait().unwrap();
            collector = start();
        }
        for &p in &touched {
            wait_for_count(&http, &token, &format!("lru-{p}"), next[p] as usize).await;
        }
        until_metrics(metrics_port, "back within the bound", async |m| {
            metric(m, "files_watched").await <= MAX_OPEN
        })
        .await;
    }
    for p in 0..PODS {
        sim.finish_pod(p, 0);
    }
    for (p, n) in next.iter().enumerate() {
        let d = wait_completed(&http, &token, &format!("lru-{p}")).await;
        assert_eq!(d["status"], "succeeded", "{d}");
        assert_exactly_once_in_order(&all_lines(&http, &token, &format!("lru-{p}")).await, p, *n);
    }
    collector.kill().unwrap();
    collector.wait().unwrap();
}
