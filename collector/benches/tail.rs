//! Collector benchmark: `cargo bench -p logstream-collector --bench tail` (installs
//! nothing; the rsyslog baseline runs when `rsyslogd` is on PATH: `apt-get install
//! rsyslog`).
//!
//! Workload: 16 pods' CRI files of real loghub lines (1 in 50 carries a secret), already
//! written when the shipper starts (a backlog, so lines/s measures the shipper, not the
//! writer). Runs, each with a fresh state:
//! - logstream-collector (release binary) into a null gRPC sink that acks at once;
//! - logstream-collector into the real gateway (durable, fsync'd acks);
//! - rsyslog `imfile` (inotify mode) -> `omfwd` TCP into a counting sink: the baseline.
//!   rsyslog ships raw lines; the collector also parses CRI, joins partials, redacts and
//!   batches over gRPC.
//!
//! For each: wall time until the sink has every line, lines/s, CPU seconds of the
//! shipper process (utime + stime from /proc), lines per CPU-second, peak RSS (VmHWM).
//! Then new-file pickup latency: a pod created while the collector idles, time from its
//! first line's write to the sink receiving it (median of 10).

use logstream_proto::v1 as pb;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PODS: usize = 16;
const LINES_PER_POD: usize = 62_500;

fn loghub_lines() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/loghub");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("loghub data beside the repository") {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "log") {
            out.extend(
                String::from_utf8_lossy(&std::fs::read(p).unwrap())
                    .lines()
                    .map(str::to_owned),
            );
        }
    }
    out
}

fn write_pods(root: &Path, pods_file: &Path) -> u64 {
    let lines = loghub_lines();
    let mut items = Vec::new();
    let mut bytes = 0u64;
    for p in 0..PODS {
        let dir = root.join(format!("ci_pod-{p}_uid-{p}/main"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("0.log")).unwrap());
        for i in 0..LINES_PER_POD {
            let l = &lines[(p * 7919 + i) % lines.len()];
            let secret = if i % 50 == 0 {
                " token=ghp_0123456789abcdefghijklmnopqrstuvwxyzAB"
            } else {
                ""
            };
            let line = format!("2026-11-23T10:00:00.{:09}Z stdout F {l}{secret}\n", i);
            bytes += line.len() as u64;
            f.write_all(line.as_bytes()).unwrap();
        }
        f.flush().unwrap();
        items.push(pod_json(p));
    }
    std::fs::write(
        pods_file,
        serde_json::to_vec(
            &serde_json::json!({"kind": "List", "apiVersion": "v1", "items": items}),
        )
        .unwrap(),
    )
    .unwrap();
    bytes
}

fn pod_json(p: usize) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{p}"), "namespace": "ci", "uid": format!("uid-{p}"),
                     "labels": {"logstream.dev/deployment": format!("bench-{p}")}},
        "spec": {"containers": [{"name": "main"}]},
        "status": {"phase": "Running"}})
}

/// A gRPC Ingest that acks every batch at once and counts lines.
#[derive(Clone, Default)]
struct NullSink {
    lines: Arc<AtomicU64>,
    first_seen: Arc<parking_lot::Mutex<Vec<(String, Instant)>>>,
}

#[tonic::async_trait]
impl pb::ingest_server::Ingest for NullSink {
    type PushStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::PushAck, tonic::Status>> + Send>>;
    async fn push(
        &self,
        req: tonic::Request<tonic::Streaming<pb::PushRequest>>,
    ) -> Result<tonic::Response<Self::PushStream>, tonic::Status> {
        let mut inbound = req.into_inner();
        let me = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while let Ok(Some(b)) = inbound.message().await {
                me.lines.fetch_add(b.lines.len() as u64, Ordering::Relaxed);
                if b.deployment.starts_with("pickup") {
                    me.first_seen
                        .lock()
                        .push((b.deployment.clone(), Instant::now()));
                }
                let ack = pb::PushAck {
                    deployment: b.deployment,
                    source: b.source,
                    batch_id: b.batch_id,
                    accepted: b.lines.len() as u32,
                    ..Default::default()
                };
                if tx.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
    async fn complete(
        &self,
        _: tonic::Request<pb::CompleteRequest>,
    ) -> Result<tonic::Response<pb::CompleteResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::CompleteResponse::default()))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// CPU seconds (user + system) and peak RSS in MiB of a process.
fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    (ticks / 100.0, hwm_kb / 1024.0)
}

struct Row {
    name: &'static str,
    secs: f64,
    cpu: f64,
    rss: f64,
}

fn collector(root: &Path, state: &Path, pods: &Path, grpc: u16, token: Option<&Path>) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_logstream-collector"));
    c.args([
        "--log-root",
        root.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ])
    .args(["--pods", pods.to_str().unwrap(), "--node-name", "bench"])
    .args(["--gateway", &format!("http://127.0.0.1:{grpc}")])
    .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(t) = token {
        c.args(["--token-file", t.to_str().unwrap()]);
    }
    c.spawn().unwrap()
}

fn wait_until(total: u64, count: impl Fn() -> u64, timeout: Duration) -> f64 {
    let start = Instant::now();
    while count() < total {
        assert!(
            start.elapsed() < timeout,
            "only {} of {total} lines after {timeout:?}",
            count()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed().as_secs_f64()
}

fn run_collector_null(
    rt: &tokio::runtime::Runtime,
    root: &Path,
    pods: &Path,
    tmp: &Path,
    total: u64,
) -> (Row, Duration) {
    let sink = NullSink::default();
    let port = free_port();
    let svc = pb::ingest_server::IngestServer::new(sink.clone())
        .accept_compressed(tonic::codec::CompressionEncoding::Zstd)
        .send_compressed(tonic::codec::CompressionEncoding::Zstd)
        .max_decoding_message_size(64 << 20);
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve(([127, 0, 0, 1], port).into()),
    );
    std::thread::sleep(Duration::from_millis(100));
    let state = tmp.join("state-null");
    let mut child = collector(root, &state, pods, port, None);
    let lines = sink.lines.clone();
    let secs = wait_until(
        total,
        || lines.load(Ordering::Relaxed),
        Duration::from_secs(300),
    );
    let (cpu, rss) = usage(child.id());

    // New-file pickup: a pod appears while the collector idles.
    let mut pickups = Vec::new();
    for k in 0..10 {
        let p = 1000 + k;
        let dir = root.join(format!("ci_pickup-{p}_uid-{p}/main"));
        let mut items: serde_json::Value =
            serde_json::from_slice(&std::fs::read(pods).unwrap()).unwrap();
        let mut pj = pod_json(p);
        pj["metadata"]["labels"]["logstream.dev/deployment"] = format!("pickup-{p}").into();
        items["items"].as_array_mut().unwrap().push(pj);
        std::fs::write(pods, serde_json::to_vec(&items).unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(400)); // metadata first (a watcher has it before the container starts)
        std::fs::create_dir_all(&dir).unwrap();
        let written = Instant::now();
        let mut f = std::fs::File::create(dir.join("0.log")).unwrap();
        f.write_all(b"2026-11-23T10:00:00Z stdout F hello\n")
            .unwrap();
        let want = format!("pickup-{p}");
        loop {
            if let Some((_, t)) = sink.first_seen.lock().iter().find(|(d, _)| *d == want) {
                pickups.push(t.duration_since(written));
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(10),
                "pickup of {want}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::fs::remove_dir_all(root.join(format!("ci_pickup-{p}_uid-{p}"))).ok();
    }
    pickups.sort();
    child.kill().ok();
    child.wait().ok();
    (
        Row {
            name: "logstream-collector -> null gRPC sink",
            secs,
            cpu,
            rss,
        },
        pickups[pickups.len() / 2],
    )
}

fn run_collector_gateway(
    rt: &tokio::runtime::Runtime,
    root: &Path,
    pods: &Path,
    tmp: &Path,
    total: u64,
) -> Row {
    let mut cfg = logstream_gateway::config::Config::loopback(&tmp.join("gw"));
    let grpc = free_port();
    cfg.grpc_listen = ([127, 0, 0, 1], grpc).into();
    let gw = rt
        .block_on(logstream_gateway::server::Running::start(cfg))
        .unwrap();
    let token = gw.state.auth.mint(
        "bench",
        "bench",
        &[logstream_gateway::auth::Scope::Write],
        Duration::from_secs(3600),
        None,
    );
    let token_file = tmp.join("token");
    std::fs::write(&token_file, token).unwrap();
    let state = tmp.join("state-gw");
    let mut child = collector(root, &state, pods, grpc, Some(&token_file));
    let metrics = gw.state.clone();
    let count = || metrics.metrics.ingest_lines.get();
    let secs = wait_until(total, count, Duration::from_secs(300));
    let (cpu, rss) = usage(child.id());
    child.kill().ok();
    child.wait().ok();
    rt.block_on(gw.shutdown()).unwrap();
    Row {
        name: "logstream-collector -> gateway (fsync'd)",
        secs,
        cpu,
        rss,
    }
}

fn run_rsyslog(root: &Path, tmp: &Path, total: u64) -> Option<Row> {
    let rsyslogd = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let c = c.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    c.fetch_add(
                        memchr::memchr_iter(b'\n', &buf[..n]).count() as u64,
                        Ordering::Relaxed,
                    );
                }
            });
        }
    });
    let work = tmp.join("rsyslog-work");
    std::fs::create_dir_all(&work).unwrap();
    let conf = tmp.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{work}")
module(load="imfile" mode="inotify")
main_queue(queue.type="LinkedList" queue.size="200000" queue.dequeueBatchSize="1024")
template(name="raw" type="string" string="%msg%\n")
ruleset(name="fwd") {{
  action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp" template="raw")
}}
input(type="imfile" File="{root}/*/*/0.log" Tag="pods" ruleset="fwd" freshStartTail="off")
"#,
            work = work.display(),
            root = root.display()
        ),
    )
    .unwrap();
    let start = Instant::now();
    let mut child = Command::new(rsyslogd)
        .args([
            "-n",
            "-f",
            conf.to_str().unwrap(),
            "-i",
            tmp.join("rsyslog.pid").to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Duration::from_secs(300);
    while count.load(Ordering::Relaxed) < total && start.elapsed() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = start.elapsed().as_secs_f64();
    let (cpu, rss) = usage(child.id());
    let got = count.load(Ordering::Relaxed);
    child.kill().ok();
    child.wait().ok();
    if got < total {
        eprintln!("rsyslog delivered only {got} of {total} lines in {deadline:?}");
        return None;
    }
    Some(Row {
        name: "rsyslog imfile -> omfwd TCP (baseline)",
        secs,
        cpu,
        rss,
    })
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let pods = tmp.path().join("pods.json");
    let bytes = write_pods(&root, &pods);
    let total = (PODS * LINES_PER_POD) as u64;
    println!(
        "workload: {PODS} pods x {LINES_PER_POD} CRI lines = {total} lines, {:.0} MiB (loghub lines, 1 in 50 with a secret)",
        bytes as f64 / 1048576.0
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (null, pickup) = run_collector_null(&rt, &root, &pods, tmp.path(), total);
    let mut rows = vec![null];
    rows.push(run_collector_gateway(&rt, &root, &pods, tmp.path(), total));
    match run_rsyslog(&root, tmp.path(), total) {
        Some(r) => rows.push(r),
        None => println!("(rsyslogd not found or incomplete: no baseline row)"),
    }
    println!("\n| shipper | wall s | lines/s | CPU s | lines per CPU-second | peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.2} | {:.0} | {:.2} | {:.0} | {:.1} |",
            r.name,
            r.secs,
            total as f64 / r.secs,
            r.cpu,
            total as f64 / r.cpu.max(0.01),
            r.rss
        );
    }
    if let Some(base) = rows.iter().find(|r| r.name.starts_with("rsyslog")) {
        let ours = &rows[0];
        println!(
            "\ncollector (null sink) vs rsyslog: {:.2}x lines/s, {:.2}x lines per CPU-second",
            base.secs / ours.secs,
            (total as f64 / ours.cpu.max(0.01)) / (total as f64 / base.cpu.max(0.01))
        );
    }
    println!(
        "new-file pickup latency (write -> sink), median of 10: {:.1} ms",
        pickup.as_secs_f64() * 1000.0
    );
}
