//! Object storage with real processes against a real S3 API server (moto, which
//! `./e2e/test` installs with `pip install moto[server]`): sealed segments are uploaded,
//! verified and evicted, and every read gives the same bytes as from disk; a kill -9
//! mid-upload loses nothing and leaves no orphan after the sweep; retention deletes
//! objects and `store verify` names an altered or missing one; an unreachable service
//! keeps segments local (reported), and reads of remote-only lines answer a retryable
//! `object_store_unavailable`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use logstream_gateway::auth::{Authenticator, Scope};
use logstream_gateway::testkit::{S3Server, client};
use serde_json::Value;

mod common;
use common::{BIN, Proc, complete, free_port, push};

/// One gateway (role `all`) on a data dir, restartable with another config.
struct Node {
    dir: PathBuf,
    key: PathBuf,
    http: u16,
}

impl Node {
    fn new(dir: &Path) -> Node {
        let key = dir.join("signing-key");
        Authenticator::load_or_create_key(&key).unwrap();
        Node {
            dir: dir.to_owned(),
            key,
            http: free_port(),
        }
    }

    /// Writes the config (`top` lines first, then `tables`) and returns its path.
    fn config(&self, name: &str, top: &str, tables: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(
            &path,
            format!(
                "signing_key_file = \"{}\"\n{top}\n{tables}",
                self.key.display()
            ),
        )
        .unwrap();
        path
    }

    async fn start(&self, config: &Path) -> Proc {
        Proc::start(&[
            "--role".into(),
            "all".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.http),
            // Unused here: port 0, so no other test can take it between choosing and
            // binding (a free_port() raced with a parallel test in CI).
            "--grpc-listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            self.dir.join("data").display().to_string(),
            "--config".into(),
            config.display().to_string(),
        ])
        .await
    }

    fn token(&self) -> String {
        common::mint(&self.key, &[Scope::Read, Scope::Write, Scope::Export])
    }

    fn log_dir(&self, id: &str) -> PathBuf {
        self.dir
            .join(format!("data/store/tenants/acme/deployments/{id}"))
    }

    /// `.seg` files of a deployment on local disk.
    fn local_segments(&self, id: &str) -> usize {
        std::fs::read_dir(self.log_dir(id))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".seg")
            })
            .count()
    }

    /// `logstream-gateway store verify`: (success, output).
    fn verify(&self, config: &Path) -> (bool, String) {
        let out = std::process::Command::new(BIN)
            .args(["store", "verify", "--data-dir"])
            .arg(self.dir.join("data"))
            .arg("--config")
            .arg(config)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

async fn get(url: &str, token: &str) -> (u16, Vec<u8>) {
    let r = client().get(url).bearer_auth(token).send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

async fn page(base: &str, token: &str, id: &str, query: &str) -> Value {
    let (status, body) = get(&format!("{base}/v1/deployments/{id}/logs?{query}"), token).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Waits until `cond` holds for the node's metric `name`.
async fn until(p: &Proc, name: &str, cond: impl Fn(f64) -> bool) -> f64 {
    let mut got = f64::NAN;
    for _ in 0..1200 {
        got = p.metric(name).await;
        if cond(got) {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} = {got}");
}

/// Line `i`'s message: its number and 16 hex digits that do not compress away (so a
/// log of small segments has many of them).
fn message(i: usize) -> String {
    format!(
        "line {i} {:016x}",
        (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    )
}

/// Pushes `n` lines ([`message`], every 7th at level error) in idempotent batches of
/// `batch`.
async fn fill(base: &str, token: &str, id: &str, n: usize, batch: usize) {
    for (b, from) in (0..n).step_by(batch).enumerate() {
        let body: String = (from..(from + batch).min(n))
            .map(|i| {
                let level = if i % 7 == 0 { "error" } else { "info" };
                serde_json::json!({"message": message(i), "level": level}).to_string() + "\n"
            })
            .collect();
        let r = client()
            .post(format!("{base}/v1/deployments/{id}/logs"))
            .bearer_auth(token)
            .header("content-type", "application/x-ndjson")
            .header("logstream-source", "fill")
            .header("logstream-batch", (b + 1).to_string())
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
    }
}

/// What a client reads of a deployment: history pages at cursors spread over the log
/// (both directions, with and without filters), the whole export (sha1 and size) and a
/// viewer resuming from an old cursor. Each a string, to compare byte for byte.
async fn reads(base: &str, token: &str, id: &str, lines: u64) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursors = Vec::new();
    for i in 0..12u64 {
        let from = i * lines / 12;
        let query = if from == 0 {
            "limit=500".to_owned()
        } else {
            let c = &cursors[i as usize - 1];
            format!("limit=500&cursor={c}")
        };
        let p = page(base, token, id, &query).await;
        let last = p["lines"].as_array().unwrap().last().unwrap()["cursor"]
            .as_str()
            .unwrap()
            .to_owned();
        // The next probe starts near lines * (i+1)/12: walk there by a filtered page.
        let skip = page(
            base,
            token,
            id,
            &format!("limit=1&cursor={last}&q=^line {} ", (i + 1) * lines / 12),
        )
        .await;
        cursors.push(
            skip["lines"][0]["cursor"]
                .as_str()
                .map_or(last.clone(), str::to_owned),
        );
        out.push(p.to_string());
    }
    out.push(
        page(base, token, id, "limit=500&direction=backward")
            .await
            .to_string(),
    );
    out.push(
        page(base, token, id, "limit=500&level=error")
            .await
            .to_string(),
    );
    out.push(
        page(
            base,
            token,
            id,
            &format!("limit=200&cursor={}&direction=backward", cursors[5]),
        )
        .await
        .to_string(),
    );
    // The whole export, hashed as it streams.
    let r = client()
        .get(format!("{base}/v1/deployments/{id}/export?format=ndjson"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let (mut n, mut hash) = (0usize, sha1::Sha1::default());
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        n += chunk.len();
        sha1::Digest::update(&mut hash, &chunk);
    }
    out.push(format!(
        "export {n} bytes sha1 {:x}",
        sha1::Digest::finalize(hash)
    ));
    // A viewer resuming from an old cursor: everything after it, then `end`.
    let resume = &cursors[10];
    let r = client()
        .get(format!("{base}/v1/deployments/{id}/stream"))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .header("last-event-id", resume)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut events = r.bytes_stream().eventsource();
    let (mut seen, mut hash) = (0u64, sha1::Sha1::default());
    while let Some(Ok(ev)) = events.next().await {
        match ev.event.as_str() {
            "line" => {
                seen += 1;
                sha1::Digest::update(&mut hash, ev.data.as_bytes());
            }
            "end" => break,
            _ => {}
        }
    }
    assert!(seen >= lines / 13, "resumed viewer got {seen} lines");
    out.push(format!(
        "viewer {seen} lines sha1 {:x}",
        sha1::Digest::finalize(hash)
    ));
    out
}

const FAST: &str = "upload_interval = \"100ms\"\nsweep_interval = \"300ms\"\norphan_grace = \"1ms\"\nrequest_timeout = \"3s\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_million_lines_read_the_same_from_object_storage() {
    let s3 = S3Server::start("logs").await;
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::new(tmp.path());
    let token = node.token();
    let id = "big-1";
    const LINES: u64 = 1_000_000;
    // First on local disk alone.
    let local = node.config("local.toml", "segment_bytes = 262144", "");
    let p = node.start(&local).await;
    let base = p.http.clone();
    fill(&base, &token, id, LINES as usize, 20_000).await;
    complete(&base, &token, id).await;
    let before = reads(&base, &token, id, LINES).await;
    p.stop().await;
    let segments = node.local_segments(id);
    assert!(segments >= 8, "{segments} segments");

    // Then with object storage and a cache of one byte: every segment is uploaded,
    // verified and evicted.
    let tiered = node.config(
        "tiered.toml",
        "segment_bytes = 262144",
        &s3.config("acme-logs", &format!("local_cache_bytes = 1\n{FAST}")),
    );
    let p = node.start(&tiered).await;
    until(&p, "logstream_offload_uploaded_segments_total", |v| {
        v == segments as f64
    })
    .await;
    until(&p, "logstream_offload_local_bytes", |v| v == 0.0).await;
    assert_eq!(node.local_segments(id), 0, "every local copy evicted");
    let objects = s3.list(&format!("acme-logs/tenants/acme/{id}/")).await;
    assert_eq!(objects.len(), 2 * segments + 1, "{objects:?}");
    let after = reads(&p.http, &token, id, LINES).await;
    for (b, a) in before.iter().zip(&after) {
        assert!(
            b == a,
            "differs from disk:\n{}\n{}",
            &b[..b.len().min(300)],
            &a[..a.len().min(300)]
        );
    }
    assert_eq!(before.len(), after.len());
    assert!(p.metric("logstream_offload_remote_reads_total").await > 0.0);
    // A 500-line page read only the blocks it needed, not whole segments.
    let bytes = p.metric("logstream_offload_remote_read_bytes_total").await;
    let reads_n = p.metric("logstream_offload_remote_reads_total").await;
    assert!(
        bytes / reads_n < 262_144.0,
        "{bytes} bytes in {reads_n} reads"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_during_upload_loses_nothing_and_leaves_no_orphan() {
    let s3 = S3Server::start("logs").await;
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::new(tmp.path());
    let token = node.token();
    let id = "crashy-1";
    const LINES: usize = 120_000;
    // Uploads start only once every line is in: a long interval first.
    let slow = node.config(
        "slow.toml",
        "segment_bytes = 4096",
        &s3.config("p", "upload_interval = \"1h\""),
    );
    let p = node.start(&slow).await;
    fill(&p.http, &token, id, LINES, 2_000).await;
    complete(&p.http, &token, id).await;
    p.stop().await;
    let segments = node.local_segments(id);
    assert!(segments >= 20, "{segments} segments");
    // An object no manifest will name (as an upload cut short before its manifest).
    let orphan = format!("p/tenants/acme/{id}/00000000000000000001-deadbeefdeadbeef.seg");
    s3.put(&orphan, b"cut short".to_vec()).await;

    let fast = node.config(
        "fast.toml",
        "segment_bytes = 4096",
        &s3.config("p", &format!("local_cache_bytes = 1\n{FAST}")),
    );
    let mut p = node.start(&fast).await;
    // Kill -9 once some objects are up and the manifest does not name all yet.
    let prefix = format!("p/tenants/acme/{id}/");
    loop {
        let n = s3
            .list(&prefix)
            .await
            .iter()
            .filter(|(k, _)| k.ends_with(".seg"))
            .count();
        if n >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    p.kill();
    let _ = p.child.wait().await;
    let manifest: Value = serde_json::from_slice(
        &s3.get(&format!("{prefix}manifest.json"))
            .await
            .unwrap_or(b"{\"segments\":[]}".to_vec()),
    )
    .unwrap();
    let named = manifest["segments"].as_array().map_or(0, Vec::len);
    assert!(
        named < segments,
        "killed after the upload finished ({named} of {segments})"
    );

    let p = node.start(&fast).await;
    until(&p, "logstream_offload_local_bytes", |v| v == 0.0).await;
    until(&p, "logstream_offload_swept_objects_total", |v| v >= 1.0).await;
    // Wait for a sweep after the last upload: the orphan is gone then.
    for _ in 0..400 {
        if s3.get(&orphan).await.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let manifest: Value =
        serde_json::from_slice(&s3.get(&format!("{prefix}manifest.json")).await.unwrap()).unwrap();
    let mut named: Vec<String> = vec![format!("{prefix}manifest.json")];
    for s in manifest["segments"].as_array().unwrap() {
        let stem = format!(
            "{prefix}{:020}-{}",
            s["first_seq"].as_u64().unwrap(),
            &s["seg_blake3"].as_str().unwrap()[..16]
        );
        named.push(format!("{stem}.seg"));
        named.push(format!("{stem}.idx"));
    }
    named.sort();
    let listed: Vec<String> = s3.list(&prefix).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        listed, named,
        "the bucket holds exactly what the manifest names"
    );
    assert_eq!(manifest["segments"].as_array().unwrap().len(), segments);
    // Every line, once, in order, from object storage.
    let (status, body) = get(
        &format!("{}/v1/deployments/{id}/export?format=text", p.http),
        &token,
    )
    .await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(got.len(), LINES);
    for (i, l) in got.iter().enumerate() {
        assert!(l.ends_with(&message(i)), "line {i}: {l}");
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_deletes_objects_and_verify_names_an_altered_one() {
    let s3 = S3Server::start("logs").await;
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::new(tmp.path());
    let token = node.token();
    let id = "kept-1";
    let config = node.config(
        "c.toml",
        "segment_bytes = 4096",
        &s3.config("r", &format!("local_cache_bytes = 1\n{FAST}")),
    );
    let p = node.start(&config).await;
    fill(&p.http, &token, id, 30_000, 2_000).await;
    complete(&p.http, &token, id).await;
    until(&p, "logstream_offload_local_bytes", |v| v == 0.0).await;
    p.stop().await;
    let (ok, out) = node.verify(&config);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("ok   acme/{id}")), "{out}");

    // Alter one object by hand: verify names it.
    let prefix = format!("r/tenants/acme/{id}/");
    let objects = s3.list(&prefix).await;
    let (seg, _) = objects
        .iter()
        .filter(|(k, _)| k.ends_with(".seg"))
        .nth(2)
        .unwrap()
        .clone();
    let original = s3.get(&seg).await.unwrap();
    let mut altered = original.clone();
    let mid = altered.len() / 2;
    altered[mid] ^= 0x20;
    s3.put(&seg, altered).await;
    let (ok, out) = node.verify(&config);
    assert!(!ok, "{out}");
    let name = seg.rsplit('/').next().unwrap();
    assert!(
        out.contains("BAD") && out.contains(name) && out.contains("altered"),
        "{out}"
    );
    s3.put(&seg, original).await;
    // A missing one too.
    let (idx, _) = objects
        .iter()
        .filter(|(k, _)| k.ends_with(".idx"))
        .nth(1)
        .unwrap()
        .clone();
    let idx_body = s3.get(&idx).await.unwrap();
    s3.delete(&idx).await;
    let (ok, out) = node.verify(&config);
    assert!(!ok && out.contains("missing"), "{out}");
    s3.put(&idx, idx_body).await;
    assert!(node.verify(&config).0);

    // Retention of two seconds: the deployment and every object of it go.
    let short = node.config(
        "short.toml",
        "segment_bytes = 4096\nretention_interval = \"300ms\"\n[tenant_retention]\nacme = \"2s\"",
        &s3.config("r", &format!("local_cache_bytes = 1\n{FAST}")),
    );
    let p = node.start(&short).await;
    for _ in 0..400 {
        if s3.list(&prefix).await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        s3.list(&prefix).await,
        vec![],
        "objects left after retention"
    );
    let (status, _) = get(&format!("{}/v1/deployments/{id}", p.http), &token).await;
    assert_eq!(status, 404);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_object_storage_keeps_segments_local_and_reads_say_unavailable() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::new(tmp.path());
    let token = node.token();
    let id = "away-1";
    let port = free_port();
    let mut s3 = S3Server::start_on(port, "logs", false).await;
    let config = node.config(
        "c.toml",
        "segment_bytes = 4096",
        &s3.config("u", &format!("local_cache_bytes = 1\n{FAST}")),
    );
    let p = node.start(&config).await;
    fill(&p.http, &token, id, 30_000, 2_000).await;
    complete(&p.http, &token, id).await;
    // No bucket yet: uploads fail, segments stay local, the budget is reported exceeded.
    until(&p, "logstream_offload_failing", |v| v == 1.0).await;
    until(&p, "logstream_offload_budget_exceeded", |v| v == 1.0).await;
    let all = page(&p.http, &token, id, "limit=5000&q=^line 29999 ").await;
    assert_eq!(all["lines"].as_array().unwrap().len(), 1, "{all}");
    // The bucket appears: everything goes up and the budget is met.
    s3.create_bucket().await;
    until(&p, "logstream_offload_failing", |v| v == 0.0).await;
    until(&p, "logstream_offload_local_bytes", |v| v == 0.0).await;
    until(&p, "logstream_offload_budget_exceeded", |v| v == 0.0).await;
    // The server goes away: remote-only lines answer a retryable 503 naming the cause.
    s3.kill();
    let (status, body) = get(
        &format!("{}/v1/deployments/{id}/logs?limit=10", p.http),
        &token,
    )
    .await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["error"]["code"], "object_store_unavailable", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only in object storage"),
        "{err}"
    );
    // Ingest of other deployments is not affected.
    push(&p.http, &token, "away-2", 1, 0, 10).await;
    let fresh = page(&p.http, &token, "away-2", "limit=100").await;
    assert_eq!(fresh["lines"].as_array().unwrap().len(), 10);
    p.stop().await;
}
