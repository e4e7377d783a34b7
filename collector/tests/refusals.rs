//! A refusal the contract calls final (here `deployment_completed`) is not retried: one
//! pod's deployment is completed through the gateway's API while the pod writes on; its
//! batches are refused, counted, logged once and skipped, and the other pod's lines (its
//! own deployment, on the same gRPC stream) keep arriving in full. The refused pod's own
//! completion, refused too, does not hold up the other pod's.

mod common;

use common::*;
use logstream_gateway::testkit::assert_documented_metrics_exported;
use serde_json::json;
use std::time::{Duration, Instant};

/// Appends `n` lines of the simulator's pod `p`, numbered on from `next[p]`.
fn write(sim: &Sim, next: &mut [u64], p: usize, n: u64) {
    let mut f = sim.open(p);
    for _ in 0..n {
        sim.write_line(&mut f, p, next[p]);
        next[p] += 1;
    }
}

async fn wait_for_status(http: &str, token: &str, id: &str, want: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let d = deployment(http, token, id).await;
        if d["status"] == want {
            return d;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{id} never {want}: {d}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_deployment_is_refused_once_and_the_other_pods_lines_go_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (gw, grpc, token, token_file) = gateway_with_token(tmp.path()).await;
    let (mut sim, root, state, pods_file) = Sim::node(tmp.path());
    // The deployment comes from the pod's label: two pods, two deployments.
    sim.add_pod(1, "done-a");
    sim.add_pod(2, "live-b");
    let log = tmp.path().join("collector.log");
    let mport = free_port();
    let mut collector = Collector(
        collector_command(&root, &state, &pods_file, &token_file, grpc, &[], mport)
            .env_remove("RUST_LOG")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut next = [0u64; 3];

    // 1. Both deployments take lines.
    write(&sim, &mut next, 1, 300);
    write(&sim, &mut next, 2, 300);
    wait_for_count(&gw.http, &token, "done-a", 300).await;
    wait_for_count(&gw.http, &token, "live-b", 300).await;

    // 2. done-a is completed through the API; both pods write on.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/deployments/done-a/complete", gw.http))
        .bearer_auth(&token)
        .json(&json!({"status": "cancelled"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    for _ in 0..10 {
        write(&sim, &mut next, 1, 200);
        write(&sim, &mut next, 2, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_count(&gw.http, &token, "live-b", next[2] as usize).await;
    // Every line of pod 1 written after the completion was read, refused and skipped.
    let refused = next[1] - 300;
    until_metrics(
        mport,
        "pod 1's later lines refused and skipped",
        async |p| {
            metric(p, r#"batches_rejected_total{code="deployment_completed"}"#).await >= 1
                && metric(p, "lines_rejected_total").await == refused as i64
                && metric(p, "lag_bytes").await == 0
        },
    )
    .await;
    // Every metric docs/metrics.md lists for the collector (and process_*) is exported;
    // the per-container backlog has a series only while a container is behind (checked
    // with a full spool in kubelet_sim.rs).
    let text = reqwest::get(format!("http://127.0.0.1:{mport}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_documented_metrics_exported(&text, "collector", &["logstream_collector_backlog_bytes"]);
    // Not retried: no reconnect loop goes on.
    let retries = metric(mport, "retries_total").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        metric(mport, "retries_total").await,
        retries,
        "the collector keeps retrying"
    );

    // 3. Pod 1 finishes with a status other than the deployment's: its completion is
    // refused (deployment_completed) and not retried, so pod 2's lines and completion
    // behind it go through.
    sim.finish_pod(1, 3);
    write(&sim, &mut next, 2, 500);
    sim.finish_pod(2, 0);
    let d = wait_for_status(&gw.http, &token, "live-b", "succeeded").await;
    assert_eq!(d["exit_code"], 0, "{d}");
    assert_exactly_once_in_order(&all_lines(&gw.http, &token, "live-b").await, 2, next[2]);
    let d = deployment(&gw.http, &token, "done-a").await;
    assert_eq!(d["status"], "cancelled", "{d}");
    let a = all_lines(&gw.http, &token, "done-a").await;
    assert_exactly_once_in_order(&a, 1, 300);

    // 4. One log line for all those refusals, one for the refused completion.
    let lines_rejected = metric(mport, "lines_rejected_total").await;
    collector.kill().unwrap();
    collector.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    let about = |what: &str| {
        log.lines()
            .filter(|l| l.contains(what) && l.contains("done-a"))
            .collect::<Vec<_>>()
    };
    let batch = about("refused a batch for good");
    assert_eq!(
        batch.len(),
        1,
        "one log line for {lines_rejected} refused lines:\n{}",
        batch.join("\n")
    );
    assert!(batch[0].contains("deployment_completed"), "{}", batch[0]);
    let completion = about("refused to complete a deployment");
    assert_eq!(completion.len(), 1, "{log}");
    assert!(completion[0].contains("deployment_completed"), "{log}");
    assert!(
        about("completing a deployment failed; retrying").is_empty(),
        "{log}"
    );
    assert!(about("refused a batch for now").is_empty(), "{log}");
}
