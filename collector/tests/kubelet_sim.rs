//! A kubelet simulator writes CRI logs for many pods (partial lines on both streams,
//! secrets, rename rotations and copytruncate) while the real collector binary follows
//! them into a real gateway; the collector is killed with SIGKILL and restarted (also
//! after copytruncates and inside their copy window), and the gateway is restarted.
//! Afterwards every line is stored exactly once, in order per stream, with secrets
//! masked, and every deployment completed with its pod's status.

#![allow(clippy::needless_range_loop)] // pods are numbered; `next[p]` reads best

mod common;

use common::*;
use logstream_gateway::auth::Scope;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_arrives_once_in_order_through_rotation_crashes_and_gateway_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, state, gwdir) = (
        tmp.path().join("pods"),
        tmp.path().join("state"),
        tmp.path().join("gw"),
    );
    std::fs::create_dir_all(&root).unwrap();
    let pods_file = tmp.path().join("pods.json");
    let (http_port, grpc_port) = (free_port(), free_port());
    let mut gw = start_gateway(&gwdir, http_port, grpc_port).await;
    let http = gw.http.clone();
    let token = gw.state.auth.mint(
        "test",
        "acme",
        &[Scope::Read, Scope::Write],
        Duration::from_secs(3600),
        None,
    );
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, &token).unwrap();

    const PODS: usize = 6;
    const PER_PHASE: u64 = 1500;
    let mut sim = Sim::new(&root, &pods_file);
    sim.add_pod(0, "warmup");
    sim.write_pods();
    let mut collector = start_collector(&root, &state, &pods_file, &token_file, grpc_port);
    let mut next = vec![0u64; PODS];

    // A pod created while the collector runs is picked up (inotify), from its first line.
    for p in 1..PODS {
        sim.add_pod(p, &format!("run-{p}"));
    }
    let write_phase = |sim: &Sim, next: &mut Vec<u64>| {
        for p in 1..PODS {
            let mut f = sim.open(p);
            for _ in 0..PER_PHASE {
                sim.write_line(&mut f, p, next[p]);
                next[p] += 1;
            }
        }
    };

    // Phase 1: plain writes, then a rename rotation in the middle of the next phase.
    write_phase(&sim, &mut next);
    for p in 1..PODS {
        sim.rotate_rename(p, 1);
    }
    write_phase(&sim, &mut next);

    // Phase 2: SIGKILL the collector mid-stream, write more, restart it.
    tokio::time::sleep(Duration::from_millis(150)).await;
    collector.kill().unwrap();
    collector.wait().unwrap();
    write_phase(&sim, &mut next);
    for p in 1..PODS {
        sim.rotate_rename(p, 2);
    }
    write_phase(&sim, &mut next);
    collector = start_collector(&root, &state, &pods_file, &token_file, grpc_port);

    // Phase 3: the gateway goes away and comes back on the same ports and data.
    for p in 1..PODS {
        wait_for_count(&http, &token, &format!("run-{p}"), (next[p] / 2) as usize).await;
    }
    gw.shutdown().await.unwrap();
    write_phase(&sim, &mut next);
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw = start_gateway(&gwdir, http_port, grpc_port).await;

    // Phase 4: copytruncate. Lines written before the truncation and not yet read would
    // only be in the copy (which no collector reads): that is copytruncate's own race,
    // so the simulator truncates only what the gateway already has.
    for p in 1..PODS {
        wait_for_count(&http, &token, &format!("run-{p}"), next[p] as usize).await;
        sim.rotate_copytruncate(p);
    }
    write_phase(&sim, &mut next);

    // Pods finish: odd ones fail with 3.
    for p in 1..PODS {
        sim.finish_pod(p, if p % 2 == 1 { 3 } else { 0 });
    }
    let start = Instant::now();
    for p in 1..PODS {
        let id = format!("run-{p}");
        loop {
            let d = deployment(&http, &token, &id).await;
            if d["status"] != "running" && !d["status"].is_null() {
                let want = if p % 2 == 1 {
                    ("failed", 3)
                } else {
                    ("succeeded", 0)
                };
                assert_eq!(
                    (
                        d["status"].as_str().unwrap(),
                        d["exit_code"].as_i64().unwrap()
                    ),
                    (want.0, want.1),
                    "{d}"
                );
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{id} never completed: {d}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    for p in 1..PODS {
        let id = format!("run-{p}");
        assert_exactly_once_in_order(&all_lines(&http, &token, &id).await, p, next[p]);
    }
    collector.kill().unwrap();
    collector.wait().unwrap();
    gw.shutdown().await.unwrap();
}

/// copytruncate keeps the inode and starts it again at offset 0: the regrown file is a
/// new generation of it, and a collector killed with SIGKILL and restarted later must
/// resume in that generation (not read it again as an unknown file, which would send
/// every line since the truncation twice). Killed inside copytruncate's window, between
/// the copy and the truncation or right after the truncation, it must read the new
/// contents once. Truncations only come after the gateway has every line of the file:
/// lines not yet read when it is emptied are only in the copy, copytruncate's own race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_then_sigkill_sends_every_line_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (gw, grpc, token, token_file) = gateway_with_token(tmp.path()).await;
    let http = gw.http.clone();
    let (mut sim, root, state, pods_file) = Sim::node(tmp.path());
    const PODS: usize = 4;
    for p in 1..PODS {
        sim.add_pod(p, &format!("ct-{p}"));
    }
    let mut next = [0u64; PODS];
    let write = |next: &mut [u64; PODS], p: usize, n: u64| {
        let mut f = sim.open(p);
        for _ in 0..n {
            sim.write_line(&mut f, p, next[p]);
            next[p] += 1;
        }
    };
    let caught_up = async |next: &[u64; PODS], p: usize| {
        wait_for_count(&http, &token, &format!("ct-{p}"), next[p] as usize).await;
    };
    let start = || start_collector(&root, &state, &pods_file, &token_file, grpc);
    let mut collector = start();
    for p in 1..PODS {
        write(&mut next, p, 800);
        caught_up(&next, p).await;
    }

    // Pod 1: copytruncate while the collector runs, and the lines written after it
    // acknowledged (so the new generation is in the checkpoint).
    sim.rotate_copytruncate(1);
    write(&mut next, 1, 700);
    caught_up(&next, 1).await;
    // Pod 2 is copied and the collector killed before the truncation; pod 3 is killed
    // right after its truncation.
    sim.copy_away(2);
    sim.copy_away(3);
    sim.truncate(3);
    collector.kill().unwrap();
    collector.wait().unwrap();
    sim.truncate(2);
    // While it is down: pod 2's file stays shorter than the offset it was read to,
    // pod 3's grows past it (only its first bytes tell it is not the file it was).
    write(&mut next, 1, 500);
    write(&mut next, 2, 100);
    write(&mut next, 3, 1500);
    collector = start();
    for p in 1..PODS {
        caught_up(&next, p).await;
    }

    // Round two, on the generations the restarted collector resumed: every pod
    // copytruncated (pod 3 rename-rotated first), its new lines acknowledged, then
    // SIGKILL, more lines, restart.
    sim.rotate_rename(3, 1);
    write(&mut next, 3, 300);
    caught_up(&next, 3).await;
    for p in 1..PODS {
        sim.rotate_copytruncate(p);
        write(&mut next, p, 400);
    }
    for p in 1..PODS {
        caught_up(&next, p).await;
    }
    collector.kill().unwrap();
    collector.wait().unwrap();
    for p in 1..PODS {
        write(&mut next, p, 300);
    }
    collector = start();

    // A pod's deployment completes only once its files are read to the end and every
    // batch is acknowledged: after that, nothing more of it is on the way.
    for p in 1..PODS {
        sim.finish_pod(p, 0);
    }
    for p in 1..PODS {
        let id = format!("ct-{p}");
        let d = wait_completed(&http, &token, &id).await;
        assert_eq!(d["status"], "succeeded", "{d}");
        assert_exactly_once_in_order(&all_lines(&http, &token, &id).await, p, next[p]);
    }
    collector.kill().unwrap();
    collector.wait().unwrap();
}

/// The collector in sidecar mode on `files`, as the pod `ci/build-7` of `deployment`.
fn start_sidecar(
    files: &[&Path],
    state: &Path,
    token: &Path,
    grpc: u16,
    deployment: &str,
) -> Collector {
    let mut c = Command::new(env!("CARGO_BIN_EXE_logstream-collector"));
    c.args(["--mode", "sidecar", "--state-dir", state.to_str().unwrap()])
        .args(["--token-file", token.to_str().unwrap()])
        .args(["--gateway", &format!("http://127.0.0.1:{grpc}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .env_remove("NODE_NAME")
        .env("POD_NAMESPACE", "ci")
        .env("POD_NAME", "build-7")
        .env("POD_UID", "0b6f1a52-uid")
        .env("LOGSTREAM_DEPLOYMENT", deployment)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for f in files {
        c.args(["--path", f.to_str().unwrap()]);
    }
    Collector(c.spawn().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_follows_plain_files_through_rotation_and_a_crash_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (shared, state) = (tmp.path().join("shared"), tmp.path().join("state"));
    std::fs::create_dir_all(&shared).unwrap();
    let (gw, grpc_port, token, token_file) = gateway_with_token(tmp.path()).await;
    let (app, worker) = (shared.join("app.log"), shared.join("worker.log"));
    let write = |path: &Path, from: u64, to: u64| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for i in from..to {
            // Plain lines as an app writes them: some CRLF, some carrying a secret.
            match i % 500 {
                7 => writeln!(f, "line {i} key={SECRET}").unwrap(),
                9 => write!(f, "line {i} windows\r\n").unwrap(),
                _ => writeln!(f, "line {i}").unwrap(),
            }
        }
    };
    write(&app, 0, 3000);
    let mut sidecar = start_sidecar(&[&app, &worker], &state, &token_file, grpc_port, "side-7");
    // SIGKILL mid-stream; while it is down the app writes on, rotates its file by
    // rename and goes on in a new one; the second file appears. The restarted sidecar
    // finishes the renamed file (found by its inode) before the new one.
    wait_for_count(&gw.http, &token, "side-7", 1000).await;
    sidecar.kill().unwrap();
    sidecar.wait().unwrap();
    write(&app, 3000, 3500);
    std::fs::rename(&app, shared.join("app.log.1")).unwrap();
    write(&app, 3500, 5000);
    write(&worker, 0, 1000);
    let mut sidecar = start_sidecar(&[&app, &worker], &state, &token_file, grpc_port, "side-7");
    wait_for_count(&gw.http, &token, "side-7", 6000).await;
    // And a rename while it runs.
    std::fs::rename(&app, shared.join("app.log.2")).unwrap();
    write(&app, 5000, 6000);
    wait_for_count(&gw.http, &token, "side-7", 7000).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // anything extra would show now
    sidecar.kill().unwrap();
    sidecar.wait().unwrap();

    let lines = all_lines(&gw.http, &token, "side-7").await;
    assert_eq!(lines.len(), 7000, "every line once");
    for (step, n) in [("app", 6000), ("worker", 1000)] {
        let got: Vec<String> = lines
            .iter()
            .filter(|l| l["step"] == step)
            .map(|l| l["message"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(got.len(), n, "{step}");
        for (i, m) in got.iter().enumerate() {
            match i % 500 {
                7 => assert!(
                    m.starts_with(&format!("line {i} key=")) && !m.contains(SECRET),
                    "{m}"
                ),
                9 => assert_eq!(m, &format!("line {i} windows")),
                _ => assert_eq!(m, &format!("line {i}"), "{step} in order"),
            }
        }
    }
}

#[test]
fn sidecar_mode_names_the_missing_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_logstream-collector"))
        .args([
            "--mode",
            "sidecar",
            "--path",
            "/tmp/x.log",
            "--gateway",
            "http://127.0.0.1:1",
        ])
        .args(["--state-dir", tmp.path().to_str().unwrap()])
        .env("POD_NAMESPACE", "ci")
        .env("POD_NAME", "p")
        .env_remove("POD_UID")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("POD_UID") && err.contains("metadata.uid"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_gateway_away_the_spool_fills_then_holds_back_and_nothing_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    // The gateway mints the token, then goes away for most of the test.
    let away = gateway_then_away(tmp.path()).await;
    let (token, token_file) = (away.token.clone(), away.token_file.clone());
    let (gwdir, http_port, grpc_port) = (away.dir.clone(), away.http, away.grpc);
    let (mut sim, root, state, pods_file) = Sim::node(tmp.path());
    sim.add_pod(1, "spooled");
    const LIMIT: i64 = 1 << 20;
    let mport = free_port();
    let args = ["--spool-bytes", "1Mi", "--spool-after", "200ms"];
    let start = |port| {
        start_collector_with(
            &root,
            &state,
            &pods_file,
            &token_file,
            grpc_port,
            &args,
            port,
        )
    };
    let mut collector = start(mport);
    let mut next = 0u64;
    let mut write = |sim: &Sim, n: u64| {
        let mut f = sim.open(1);
        for _ in 0..n {
            sim.write_line(&mut f, 1, next);
            next += 1;
        }
    };

    // 1. The gateway is away: lines go to the spool and the file is read to its end...
    write(&sim, 3000);
    until_metrics(mport, "all 3000 lines spooled", async |p| {
        metric(p, "spool_bytes").await > 0
            && metric(p, "lag_bytes").await == 0
            && metric(p, "spooled_lines_total").await >= 3000
    })
    .await;
    // ...so kubelet may rotate it and delete the rotated file: nothing is lost.
    sim.rotate_rename(1, 1);
    let rotated = sim.dir(1).join("0.log.20261123-100001");
    until_metrics(mport, "the rotated file let go", async |p| {
        metric(p, "files_watched").await == 0
    })
    .await;
    std::fs::remove_file(&rotated).unwrap();

    // 2. More than the spool holds: it fills to its limit, then reading stops.
    write(&sim, 60_000);
    until_metrics(mport, "the spool full and reading held back", async |p| {
        metric(p, "spool_full_total").await >= 1 && metric(p, "backpressure_containers").await == 1
    })
    .await;
    let held = metric(mport, "spool_bytes").await;
    assert!(
        held > LIMIT / 4 && held <= LIMIT,
        "spool holds {held} bytes, limit {LIMIT}"
    );
    let lag = metric(mport, "lag_bytes").await;
    assert!(lag > 0, "the rest waits in the file");
    // The same backlog, per container.
    let series = backlog_series(mport).await;
    assert_eq!(series.len(), 1, "{series:?}");
    assert!(series[0].0.contains(r#"pod="pod-1""#), "{series:?}");
    assert!(series[0].1 > 0, "{series:?}");

    // 3. kill -9 with a full spool; the restarted collector takes up the spool.
    collector.kill().unwrap();
    collector.wait().unwrap();
    let mport = free_port();
    let mut collector = start(mport);
    until_metrics(mport, "the spool reloaded", async |p| {
        metric(p, "spool_bytes").await == held
    })
    .await;

    // 4. The gateway returns: the spool drains, then the file; every line once, in order.
    let gw = start_gateway(&gwdir, http_port, grpc_port).await;
    wait_for_count(&gw.http, &token, "spooled", next as usize).await;
    until_metrics(
        mport,
        "the spool drained, no container behind or held back",
        async |p| {
            metric(p, "spool_bytes").await == 0
                && backlog_series(p).await.is_empty()
                && metric(p, "backpressure_containers").await == 0
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // anything extra would show now
    assert_exactly_once_in_order(&all_lines(&gw.http, &token, "spooled").await, 1, next);
    let left: Vec<_> = std::fs::read_dir(state.join("spool"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "delivered batches are deleted: {left:?}");
    collector.kill().unwrap();
    collector.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_follows_a_named_pipe_across_writers() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let (gw, grpc_port, token, token_file) = gateway_with_token(tmp.path()).await;
    let pipe = shared.join("steps.pipe");
    assert!(
        Command::new("mkfifo")
            .arg(&pipe)
            .status()
            .unwrap()
            .success()
    );
    // Without the spool a pipe is refused: its lines could not be read again.
    let state = tmp.path().join("state");
    let refused = Command::new(env!("CARGO_BIN_EXE_logstream-collector"))
        .args([
            "--mode",
            "sidecar",
            "--spool-bytes",
            "0",
            "--gateway",
            "http://127.0.0.1:1",
        ])
        .args([
            "--path",
            pipe.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .envs([
            ("POD_NAMESPACE", "ci"),
            ("POD_NAME", "p"),
            ("POD_UID", "u"),
            ("LOGSTREAM_DEPLOYMENT", "d"),
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("named pipe"));

    let mut sidecar = start_sidecar(&[&pipe], &state, &token_file, grpc_port, "piped-1");
    // Two writers one after the other, as two commands of a step writing to the pipe;
    // opening for writing waits until the sidecar has the pipe open.
    let p2 = pipe.clone();
    tokio::task::spawn_blocking(move || {
        for (from, to) in [(0, 20_000), (20_000, 25_000)] {
            let mut w =
                std::io::BufWriter::new(std::fs::OpenOptions::new().write(true).open(&p2).unwrap());
            for i in from..to {
                writeln!(w, "piped {i}").unwrap();
            }
        }
    })
    .await
    .unwrap();
    wait_for_count(&gw.http, &token, "piped-1", 25_000).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // anything extra would show now
    let got: Vec<String> = all_lines(&gw.http, &token, "piped-1")
        .await
        .iter()
        .map(|l| {
            assert_eq!(l["step"], "steps");
            l["message"].as_str().unwrap().to_owned()
        })
        .collect();
    let want: Vec<String> = (0..25_000).map(|i| format!("piped {i}")).collect();
    assert_eq!(got, want, "every line once, in order");
    sidecar.kill().unwrap();
    sidecar.wait().unwrap();
}

/// The collector's `backlog_bytes` series: (labels, bytes).
async fn backlog_series(port: u16) -> Vec<(String, i64)> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("logstream_collector_backlog_bytes{"))
        .filter_map(|l| l.rsplit_once("} "))
        .map(|(labels, v)| (labels.to_owned(), v.trim().parse().unwrap()))
        .collect()
}

/// A pipeline of several pods (one per stage) in one deployment: a stage annotated
/// `logstream.dev/complete: on-failure` that passes leaves the deployment open for the
/// next stage, whose end completes it; one that fails ends the pipeline with its code;
/// `never` (a stage allowed to fail) leaves it open either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_of_pods_completes_at_its_last_stage_or_its_first_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let (gw, grpc, token, token_file) = gateway_with_token(tmp.path()).await;
    let http = gw.http.clone();
    let (mut sim, root, state, pods_file) = Sim::node(tmp.path());
    sim.write_pods();
    let mut collector = start_collector(&root, &state, &pods_file, &token_file, grpc);
    const LINES: u64 = 30;
    let stage = |sim: &mut Sim, p: usize, deployment: &str, policy: Option<&str>, code: i32| {
        sim.add_pod(p, deployment);
        if let Some(v) = policy {
            sim.annotate(p, "logstream.dev/complete", v);
        }
        let mut f = sim.open(p);
        for n in 0..LINES {
            sim.write_line(&mut f, p, n);
        }
        sim.finish_pod(p, code);
    };
    let lines_of = |lines: &[serde_json::Value], p: usize| -> Vec<serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["step"] == format!("step-{p}"))
            .cloned()
            .collect()
    };
    // pipe-ok: build (on-failure, passes), test (never, fails), deploy (last, passes).
    stage(&mut sim, 1, "pipe-ok", Some("on-failure"), 0);
    wait_for_count(&http, &token, "pipe-ok", LINES as usize).await;
    stage(&mut sim, 2, "pipe-ok", Some("never"), 4);
    wait_for_count(&http, &token, "pipe-ok", 2 * LINES as usize).await;
    // pipe-bad: build (on-failure) fails with 3.
    stage(&mut sim, 4, "pipe-bad", Some("on-failure"), 3);
    let d = wait_completed(&http, &token, "pipe-bad").await;
    assert_eq!(
        (d["status"].as_str(), d["exit_code"].as_i64()),
        (Some("failed"), Some(3)),
        "{d}"
    );
    // By now the passing and the allowed-to-fail stages of pipe-ok were seen finished
    // (pipe-bad's later stage was), and pipe-ok is still open.
    assert_eq!(
        deployment(&http, &token, "pipe-ok").await["status"],
        "running"
    );
    stage(&mut sim, 3, "pipe-ok", None, 0);
    let d = wait_completed(&http, &token, "pipe-ok").await;
    assert_eq!(
        (d["status"].as_str(), d["exit_code"].as_i64()),
        (Some("succeeded"), Some(0)),
        "{d}"
    );
    let all = all_lines(&http, &token, "pipe-ok").await;
    assert_eq!(
        all.len(),
        3 * LINES as usize,
        "every stage's lines, none refused"
    );
    for p in 1..=3 {
        assert_exactly_once_in_order(&lines_of(&all, p), p, LINES);
    }
    collector.kill().unwrap();
    collector.wait().unwrap();
}

/// Found by the whole-path suite (e2e/local): the last stage of a pipeline finished while
/// an earlier stage's lines were still held back by a full spool (the gateway away); its
/// completion went first and the earlier stage's remaining lines were refused. A
/// completion now waits until every other pod of the deployment has sent what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_stage_completes_only_after_an_earlier_stages_backlog_is_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let away = gateway_then_away(tmp.path()).await;
    let (mut sim, root, state, pods_file) = Sim::node(tmp.path());
    let mport = free_port();
    // A spool smaller than a batch (512 KiB) must not hold a container back forever.
    let args = [
        "--spool-bytes",
        "256Ki",
        "--spool-after",
        "100ms",
        "--rotate-wait",
        "100ms",
    ];
    let mut collector = start_collector_with(
        &root,
        &state,
        &pods_file,
        &away.token_file,
        away.grpc,
        &args,
        mport,
    );
    // With the gateway away: the build stage writes more than the spool holds and passes;
    // the deploy stage writes a little and fails.
    const BUILD: u64 = 100_000;
    const DEPLOY: u64 = 50;
    sim.add_pod(1, "pipe");
    sim.annotate(1, "logstream.dev/complete", "on-failure");
    let mut f = sim.open(1);
    for n in 0..BUILD {
        sim.write_line(&mut f, 1, n);
    }
    until_metrics(mport, "the spool full, reading held back", async |p| {
        metric(p, "spool_full_total").await > 0
    })
    .await;
    sim.finish_pod(1, 0);
    sim.add_pod(2, "pipe");
    let mut f = sim.open(2);
    for n in 0..DEPLOY {
        sim.write_line(&mut f, 2, n);
    }
    sim.finish_pod(2, 5);
    // The gateway comes back.
    let gw = start_gateway(&away.dir, away.http, away.grpc).await;
    let (http, token) = (gw.http.clone(), away.token);
    let d = wait_completed(&http, &token, "pipe").await;
    assert_eq!(
        (d["status"].as_str(), d["exit_code"].as_i64()),
        (Some("failed"), Some(5)),
        "{d}"
    );
    let all = all_lines(&http, &token, "pipe").await;
    for (p, n) in [(1, BUILD), (2, DEPLOY)] {
        let lines: Vec<_> = all
            .iter()
            .filter(|l| l["step"] == format!("step-{p}"))
            .cloned()
            .collect();
        assert_exactly_once_in_order(&lines, p, n);
    }
    collector.kill().unwrap();
    collector.wait().unwrap();
}
