//! Shared by the collector's integration tests: a kubelet simulator (CRI files and a
//! pods file), a real gateway and token, the real collector binary, and reading back
//! what the gateway stored and what the collector's /metrics say.

#![allow(dead_code)] // each test file uses some of these

use logstream_gateway::auth::Scope;
use logstream_gateway::config::Config;
use logstream_gateway::server::Running;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "AKIAIOSFODNN7EXAMPLE";

pub struct Sim {
    root: PathBuf,
    pods_file: PathBuf,
    pods: Vec<Value>,
}

pub fn ts(n: u64) -> String {
    // Distinct, increasing RFC 3339 timestamps.
    format!(
        "2026-11-23T10:{:02}:{:02}.{:09}Z",
        (n / 60_000_000) % 60,
        (n / 1_000_000) % 60,
        n % 1_000_000 * 1000
    )
}

impl Sim {
    /// A simulated node under `dir`: kubelet's log root `dir/pods` (created), the pod list
    /// `dir/pods.json` and the collector's state directory `dir/state`; (the simulator,
    /// root, state, pod list).
    pub fn node(dir: &Path) -> (Sim, PathBuf, PathBuf, PathBuf) {
        let (root, state) = (dir.join("pods"), dir.join("state"));
        std::fs::create_dir_all(&root).unwrap();
        let pods_file = dir.join("pods.json");
        (Sim::new(&root, &pods_file), root, state, pods_file)
    }

    pub fn new(root: &Path, pods_file: &Path) -> Sim {
        Sim {
            root: root.to_owned(),
            pods_file: pods_file.to_owned(),
            pods: Vec::new(),
        }
    }

    pub fn dir(&self, pod: usize) -> PathBuf {
        self.root.join(format!("ci_pod-{pod}_uid-{pod}/main"))
    }

    pub fn add_pod(&mut self, pod: usize, deployment: &str) {
        std::fs::create_dir_all(self.dir(pod)).unwrap();
        self.pods.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("pod-{pod}"), "namespace": "ci", "uid": format!("uid-{pod}"),
                         "labels": {"logstream.dev/deployment": deployment, "logstream.dev/step": format!("step-{pod}")}},
            "spec": {"containers": [{"name": "main"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "main", "image": "x", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]},
        }));
        self.write_pods();
    }

    /// Sets an annotation on `pod` (already added).
    pub fn annotate(&mut self, pod: usize, key: &str, value: &str) {
        let p = self
            .pods
            .iter_mut()
            .find(|p| p["metadata"]["uid"] == format!("uid-{pod}"))
            .unwrap();
        p["metadata"]["annotations"][key] = value.into();
        self.write_pods();
    }

    /// A pod no LogStream selects (no deployment label), writing a line: the collector
    /// reads nothing of it and keeps no file of it open.
    pub fn add_unselected_pod(&mut self, pod: usize) {
        std::fs::create_dir_all(self.dir(pod)).unwrap();
        self.pods.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("pod-{pod}"), "namespace": "ci", "uid": format!("uid-{pod}"),
                         "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "main"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "main", "image": "x", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]},
        }));
        self.write_pods();
        let mut f = self.open(pod);
        self.write_line(&mut f, pod, 0);
    }

    pub fn finish_pod(&mut self, pod: usize, code: i32) {
        let p = self
            .pods
            .iter_mut()
            .find(|p| p["metadata"]["uid"] == format!("uid-{pod}"))
            .unwrap();
        p["status"]["phase"] = if code == 0 { "Succeeded" } else { "Failed" }.into();
        p["status"]["containerStatuses"][0]["state"] = json!({"terminated": {"exitCode": code}});
        self.write_pods();
    }

    /// kubelet deletes the pod: out of the pod list, its log directory removed.
    pub fn remove_pod(&mut self, pod: usize) {
        self.pods
            .retain(|p| p["metadata"]["uid"] != format!("uid-{pod}"));
        self.write_pods();
        std::fs::remove_dir_all(self.dir(pod).parent().unwrap()).unwrap();
    }

    pub fn write_pods(&self) {
        let tmp = self.pods_file.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "items": self.pods}))
                .unwrap(),
        )
        .unwrap();
        std::fs::rename(tmp, &self.pods_file).unwrap();
    }

    /// Appends logical line `n` of `pod`: every 7th as two partial fragments, odd ones on
    /// stderr, every 11th with a secret.
    pub fn write_line(&self, f: &mut std::fs::File, pod: usize, n: u64) {
        let stream = if n % 2 == 1 { "stderr" } else { "stdout" };
        let secret = if n.is_multiple_of(11) {
            format!(" key={SECRET}")
        } else {
            String::new()
        };
        let msg = format!("pod {pod} line {n}{secret}");
        let t = ts(n);
        if n.is_multiple_of(7) {
            let (a, b) = msg.split_at(msg.len() / 2);
            write!(f, "{t} {stream} P {a}\n{t} {stream} F {b}\n").unwrap();
        } else {
            writeln!(f, "{t} {stream} F {msg}").unwrap();
        }
    }

    pub fn open(&self, pod: usize) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir(pod).join("0.log"))
            .unwrap()
    }

    /// kubelet's rotation: rename the live file, a new one starts.
    pub fn rotate_rename(&self, pod: usize, k: usize) {
        let d = self.dir(pod);
        std::fs::rename(d.join("0.log"), d.join(format!("0.log.20261123-10000{k}"))).unwrap();
    }

    /// copytruncate (logrotate's way): copy, then truncate in place.
    pub fn rotate_copytruncate(&self, pod: usize) {
        self.copy_away(pod);
        self.truncate(pod);
    }

    /// copytruncate's first half: the live file copied beside it (no collector reads
    /// the copy).
    pub fn copy_away(&self, pod: usize) {
        let d = self.dir(pod);
        std::fs::copy(d.join("0.log"), d.join("0.log.copy")).unwrap();
    }

    /// copytruncate's second half: the live file emptied in place (its writer goes on
    /// writing through its descriptor, from the start).
    pub fn truncate(&self, pod: usize) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir(pod).join("0.log"))
            .unwrap()
            .set_len(0)
            .unwrap();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn start_gateway(dir: &Path, http: u16, grpc: u16) -> Running {
    let mut c = Config::loopback(dir);
    c.listen = ([127, 0, 0, 1], http).into();
    c.grpc_listen = ([127, 0, 0, 1], grpc).into();
    Running::start(c).await.unwrap()
}

/// A collector process, killed when dropped: a failing test leaves none running behind
/// it (one left spinning on a deleted state directory slowed every later test run).
pub struct Collector(pub Child);

impl std::ops::Deref for Collector {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Collector {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start_collector(
    root: &Path,
    state: &Path,
    pods: &Path,
    token: &Path,
    grpc: u16,
) -> Collector {
    start_collector_with(root, state, pods, token, grpc, &[], free_port())
}

pub fn start_collector_with(
    root: &Path,
    state: &Path,
    pods: &Path,
    token: &Path,
    grpc: u16,
    extra: &[&str],
    metrics_port: u16,
) -> Collector {
    Collector(
        collector_command(root, state, pods, token, grpc, extra, metrics_port)
            .spawn()
            .unwrap(),
    )
}

/// The node collector's command line (output discarded; set `stderr` to read its log).
pub fn collector_command(
    root: &Path,
    state: &Path,
    pods: &Path,
    token: &Path,
    grpc: u16,
    extra: &[&str],
    metrics_port: u16,
) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_logstream-collector"));
    c.args(extra)
        .args([
            "--log-root",
            root.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .args([
            "--pods",
            pods.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
        ])
        .args([
            "--gateway",
            &format!("http://127.0.0.1:{grpc}"),
            "--node-name",
            "node-a",
        ])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

pub async fn all_lines(http: &str, token: &str, id: &str) -> Vec<Value> {
    let c = reqwest::Client::new();
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{http}/v1/deployments/{id}/logs?limit=5000");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = c.get(url).bearer_auth(token).send().await.unwrap();
        if r.status() == 404 {
            return out;
        }
        let v: Value = r.json().await.unwrap();
        let lines = v["lines"].as_array().unwrap().clone();
        if lines.is_empty() {
            return out;
        }
        out.extend(lines);
        cursor = v["next_cursor"].as_str().map(str::to_owned);
    }
}

pub async fn deployment(http: &str, token: &str, id: &str) -> Value {
    let r = reqwest::Client::new()
        .get(format!("{http}/v1/deployments/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    r.json().await.unwrap_or(Value::Null)
}

pub async fn wait_for_count(http: &str, token: &str, id: &str, n: usize) {
    let start = Instant::now();
    while all_lines(http, token, id).await.len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{id}: fewer than {n} lines after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until deployment `id` is no longer running (its pod's files were all read and
/// acknowledged, so nothing more of it is on the way) and returns it.
pub async fn wait_completed(http: &str, token: &str, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let d = deployment(http, token, id).await;
        if d["status"] != "running" && !d["status"].is_null() {
            return d;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{id} never completed: {d}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lines `0..n` of the simulator's `pod`: each exactly once, in order per stream, on
/// the right stream and step, secrets masked.
pub fn assert_exactly_once_in_order(lines: &[Value], p: usize, n: u64) {
    let id = format!("pod {p}");
    let mut seen = vec![0u32; n as usize];
    let mut last_by_stream = [None::<u64>, None];
    for l in lines {
        let msg = l["message"].as_str().unwrap();
        assert!(!msg.contains(SECRET), "a secret reached the gateway: {msg}");
        let n: u64 = msg
            .strip_prefix(&format!("pod {p} line "))
            .unwrap_or_else(|| panic!("{id}: unexpected line {msg:?}"))
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        seen[n as usize] += 1;
        let s = usize::from(l["stream"] == "stderr");
        assert_eq!(s as u64, n % 2, "{msg} on the wrong stream");
        if let Some(prev) = last_by_stream[s] {
            assert!(n > prev, "{id}: line {n} after {prev} on one stream");
        }
        last_by_stream[s] = Some(n);
        assert_eq!(l["step"], format!("step-{p}"));
        if n.is_multiple_of(11) {
            assert!(msg.contains("key=AKIA"), "masked but recognisable: {msg}");
        }
    }
    let missing: Vec<usize> = seen
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == 0)
        .map(|(i, _)| i)
        .collect();
    let dup: Vec<usize> = seen
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 1)
        .map(|(i, _)| i)
        .collect();
    assert!(
        missing.is_empty(),
        "{id}: {} lines missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        dup.is_empty(),
        "{id}: {} lines duplicated, first {:?}",
        dup.len(),
        &dup[..dup.len().min(10)]
    );
}

/// A gateway on fresh ports with its data in `dir/gw`, and a read-write token for it,
/// also written to `dir/token`.
pub async fn gateway_with_token(dir: &Path) -> (Running, u16, String, PathBuf) {
    let grpc = free_port();
    let gw = start_gateway(&dir.join("gw"), free_port(), grpc).await;
    let (token, token_file) = token_of(&gw, dir);
    (gw, grpc, token, token_file)
}

/// A gateway that minted a token and went away: started again on the same data dir and
/// ports with [`start_gateway`]`(&away.dir, away.http, away.grpc)`.
pub struct AwayGateway {
    pub dir: PathBuf,
    pub http: u16,
    pub grpc: u16,
    pub token: String,
    pub token_file: PathBuf,
}

/// [`gateway_with_token`], then the gateway shut down.
pub async fn gateway_then_away(dir: &Path) -> AwayGateway {
    let (http, grpc) = (free_port(), free_port());
    let gw = start_gateway(&dir.join("gw"), http, grpc).await;
    let (token, token_file) = token_of(&gw, dir);
    gw.shutdown().await.unwrap();
    AwayGateway {
        dir: dir.join("gw"),
        http,
        grpc,
        token,
        token_file,
    }
}

/// A read-write token of tenant `acme` from `gw`, also written to `dir/token`.
fn token_of(gw: &Running, dir: &Path) -> (String, PathBuf) {
    let token = gw.state.auth.mint(
        "test",
        "acme",
        &[Scope::Read, Scope::Write],
        Duration::from_secs(3600),
        None,
    );
    let token_file = dir.join("token");
    std::fs::write(&token_file, &token).unwrap();
    (token, token_file)
}

/// A gauge or counter of the collector's /metrics.
pub async fn metric(port: u16, name: &str) -> i64 {
    let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return -1; // not listening yet
    };
    let text = r.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("logstream_collector_{name} ")))
        .map_or(-1, |v| v.trim().parse().unwrap())
}

/// Waits (polling /metrics) until `ok` holds for the collector's metrics.
pub async fn until_metrics(port: u16, what: &str, ok: impl AsyncFn(u16) -> bool) {
    let start = Instant::now();
    while !ok(port).await {
        assert!(start.elapsed() < Duration::from_secs(60), "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Descriptors, RSS (KiB) of process `pid`.
pub fn process_usage(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    (fds, rss)
}

/// Bytes of the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                _ => e.metadata().map_or(0, |m| m.len()),
            })
            .sum()
    })
}
