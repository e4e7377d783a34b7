//! `kubectl-logstream` against a real gateway: the binary runs as a subprocess.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use logstream_gateway::auth::Scope;
use logstream_gateway::config::Config;
use logstream_gateway::server::Running;
use logstream_model::wire;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-logstream");

async fn gateway(dir: &Path, listen: &str) -> Running {
    let config = Config {
        listen: listen.parse().unwrap(),
        ..Config::loopback(dir)
    };
    Running::start(config).await.unwrap()
}

fn token(g: &Running) -> String {
    g.state.auth.mint(
        "cli-test",
        "acme",
        &[Scope::Read, Scope::Write, Scope::Export],
        Duration::from_secs(3600),
        None,
    )
}

fn cli(g: &Running, token: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env("LOGSTREAM_SERVER", &g.http)
        .env("LOGSTREAM_TOKEN", token)
        .env_remove("NO_COLOR")
        .kill_on_drop(true);
    c
}

async fn push(g: &Running, token: &str, id: &str, lines: &[Value]) {
    let body: String = lines.iter().map(|l| l.to_string() + "\n").collect();
    let r = reqwest::Client::new()
        .post(format!("{}/v1/deployments/{id}/logs", g.http))
        .bearer_auth(token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn complete(g: &Running, token: &str, id: &str, status: &str, code: i32) {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/deployments/{id}/complete", g.http))
        .bearer_auth(token)
        .json(&json!({"status": status, "exit_code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Every stored line of `id`, as the history API gives them.
async fn stored_lines(g: &Running, token: &str, id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let page: Value = reqwest::Client::new()
            .get(format!(
                "{}/v1/deployments/{id}/logs?limit=5000&cursor={cursor}",
                g.http
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let lines = page["lines"].as_array().unwrap();
        if lines.is_empty() {
            return out;
        }
        out.extend(lines.iter().cloned());
        cursor = page["next_cursor"].as_str().unwrap().to_owned();
    }
}

async fn messages(g: &Running, token: &str, id: &str) -> (Vec<String>, Value) {
    let out = stored_lines(g, token, id)
        .await
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect();
    let d: Value = reqwest::Client::new()
        .get(format!("{}/v1/deployments/{id}", g.http))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (out, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_streams_100k_lines_and_exits_with_the_commands_code() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let t = token(&g);
    let out = cli(&g, &t)
        .args([
            "run",
            "--deployment",
            "ci-1",
            "--step",
            "build",
            "--quiet",
            "--",
            "sh",
            "-c",
            "seq 1 100000; echo oops >&2; exit 3",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (msgs, d) = messages(&g, &t, "ci-1").await;
    assert_eq!(msgs.len(), 100_001);
    let stdout: Vec<&String> = msgs.iter().filter(|m| *m != "oops").collect();
    assert!(
        stdout
            .iter()
            .enumerate()
            .all(|(i, m)| **m == (i + 1).to_string()),
        "stdout lines in order, exactly once"
    );
    assert_eq!(
        (d["status"].as_str(), d["exit_code"].as_i64()),
        (Some("failed"), Some(3))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_exits_with_the_deployments_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let t = token(&g);
    for (id, status, want) in [
        ("ok", "succeeded", 0),
        ("bad", "failed", 1),
        ("stopped", "cancelled", 3),
    ] {
        push(
            &g,
            &t,
            id,
            &[json!({"message": "one"}), json!({"message": "two"})],
        )
        .await;
        complete(&g, &t, id, status, 7).await;
        for transport in ["sse", "ws"] {
            let out = cli(&g, &t)
                .args(["logs", "-f", id, "--transport", transport])
                .output()
                .await
                .unwrap();
            assert_eq!(out.status.code(), Some(want), "{id} over {transport}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_survives_a_gateway_restart_with_every_line_exactly_once() {
    follow_across_a_gateway_restart("sse").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_over_websocket_survives_a_gateway_restart_with_every_line_exactly_once() {
    follow_across_a_gateway_restart("ws").await;
}

async fn follow_across_a_gateway_restart(transport: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let addr = g.http.trim_start_matches("http://").to_owned();
    let t = token(&g);
    push(
        &g,
        &t,
        "live",
        &(0..50)
            .map(|i| json!({"message": format!("a{i}")}))
            .collect::<Vec<_>>(),
    )
    .await;
    let mut child = cli(&g, &t)
        .args([
            "logs",
            "-f",
            "live",
            "--color",
            "never",
            "--transport",
            transport,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut got = Vec::new();
    while got.len() < 50 {
        got.push(lines.next_line().await.unwrap().unwrap());
    }
    g.shutdown().await.unwrap();
    let g = gateway(tmp.path(), &addr).await;
    push(
        &g,
        &t,
        "live",
        &(0..50)
            .map(|i| json!({"message": format!("b{i}")}))
            .collect::<Vec<_>>(),
    )
    .await;
    complete(&g, &t, "live", "succeeded", 0).await;
    while let Some(l) = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("lines keep coming")
        .unwrap()
    {
        got.push(l);
    }
    let status = child.wait().await.unwrap();
    let want: Vec<String> = (0..50)
        .map(|i| format!("a{i}"))
        .chain((0..50).map(|i| format!("b{i}")))
        .collect();
    assert_eq!(got, want);
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_keeps_every_line_across_a_gateway_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let addr = g.http.trim_start_matches("http://").to_owned();
    let t = token(&g);
    // The command prints for ~2 s; the gateway is down for part of that time.
    let mut child = cli(&g, &t)
        .args([
            "run",
            "--deployment",
            "r",
            "--quiet",
            "--complete",
            "--",
            "sh",
            "-c",
            "for i in $(seq 1 40); do echo l$i; sleep 0.05; done",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    g.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let g = gateway(tmp.path(), &addr).await;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let (msgs, d) = messages(&g, &t, "r").await;
    assert_eq!(msgs, (1..=40).map(|i| format!("l{i}")).collect::<Vec<_>>());
    assert_eq!(d["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_colours_tables_and_export() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let t = token(&g);
    push(
        &g,
        &t,
        "fmt",
        &[
            json!({"message": "ERROR boom", "step": "build"}),
            json!({"message": "all good", "step": "test"}),
        ],
    )
    .await;
    let run = |args: &[&str]| {
        let mut c = cli(&g, &t);
        c.args(args);
        async move { c.output().await.unwrap() }
    };
    let out = run(&["logs", "fmt", "-o", "json"]).await;
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["level"], "error");
    let csv = String::from_utf8(run(&["logs", "fmt", "-o", "csv"]).await.stdout).unwrap();
    assert!(csv.starts_with("seq,ts,step,stream,level,message\r\n1,"));
    let coloured =
        String::from_utf8(run(&["logs", "fmt", "--color", "always"]).await.stdout).unwrap();
    assert!(
        coloured.contains("\x1b[31mERROR boom\x1b[0m"),
        "{coloured:?}"
    );
    assert!(
        coloured.contains("build\x1b[0m | "),
        "aligned step prefix: {coloured:?}"
    );
    let plain = String::from_utf8(run(&["logs", "fmt", "--color", "never"]).await.stdout).unwrap();
    assert_eq!(plain, "build | ERROR boom\ntest  | all good\n");
    let auto = String::from_utf8(run(&["logs", "fmt"]).await.stdout).unwrap();
    assert!(!auto.contains('\x1b'), "not a terminal: no colour");
    let tail = String::from_utf8(
        run(&["logs", "fmt", "--tail", "1", "--color", "never"])
            .await
            .stdout,
    )
    .unwrap();
    assert_eq!(tail, "test | all good\n", "aligned to the steps seen");
    let filtered = String::from_utf8(
        run(&["logs", "fmt", "--level", "error", "--color", "never"])
            .await
            .stdout,
    )
    .unwrap();
    assert_eq!(filtered, "build | ERROR boom\n");
    let table = String::from_utf8(run(&["get", "deployments"]).await.stdout).unwrap();
    let mut rows = table.lines();
    let header: Vec<&str> = rows.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["ID", "STATUS", "STEPS", "LINES", "SIZE", "AGE"]);
    let row: Vec<&str> = rows.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["fmt", "running", "build,test", "2"]);
    let described = String::from_utf8(run(&["describe", "fmt"]).await.stdout).unwrap();
    assert!(
        described.contains("steps:       build, test\n"),
        "{described}"
    );
    // Every format is rendered by the CLI exactly as the gateway's own export writes it.
    for format in ["text", "ndjson", "csv"] {
        let file = tmp.path().join(format!("out.{format}"));
        let out = run(&[
            "export",
            "fmt",
            "--format",
            format,
            "-o",
            file.to_str().unwrap(),
        ])
        .await;
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            std::fs::read(&file).unwrap(),
            gateway_export(&g, &t, "fmt", format).await,
            "{format}"
        );
        assert!(!tmp.path().join(format!("out.{format}.part")).exists());
    }
}

/// The gateway's own export of a deployment, straight over HTTP.
async fn gateway_export(g: &Running, token: &str, id: &str, format: &str) -> Vec<u8> {
    let r = reqwest::Client::new()
        .get(format!(
            "{}/v1/deployments/{id}/export?format={format}",
            g.http
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_killed_midway_resumes_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let t = token(&g);
    for chunk in 0..30 {
        let lines: Vec<Value> = (0..10_000)
            .map(|i| json!({"message": format!("line {} with, a \"quote\"", chunk * 10_000 + i), "step": format!("s{}", chunk % 3)}))
            .collect();
        push(&g, &t, "big", &lines).await;
    }
    complete(&g, &t, "big", "succeeded", 0).await;
    let file = tmp.path().join("big.csv");
    let part = tmp.path().join("big.csv.part");
    let state = tmp.path().join("big.csv.part.json");
    let args = [
        "export",
        "big",
        "--format",
        "csv",
        "-o",
        file.to_str().unwrap(),
    ];
    // Kill -9 once the first state is saved (5,000 lines in): data after it is cut off.
    let mut first = cli(&g, &t).args(args).spawn().unwrap();
    while !state.exists() {
        assert!(
            first.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    first.kill().await.unwrap();
    assert!(part.exists() && !file.exists());
    // Another export into the same file is refused while this one is unfinished.
    let other = cli(&g, &t)
        .args([
            "export",
            "big",
            "--format",
            "text",
            "-o",
            file.to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(other.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&other.stderr).contains("--restart"));
    let out = cli(&g, &t).args(args).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("resuming") && stderr.contains("after line"),
        "{stderr}"
    );
    assert!(stderr.contains("wrote 300000 lines"), "{stderr}");
    assert!(!part.exists() && !state.exists());
    assert_eq!(
        std::fs::read(&file).unwrap(),
        gateway_export(&g, &t, "big", "csv").await,
        "every line once, in order, one header"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_and_values_exit_2_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let t = token(&g);
    push(&g, &t, "x", &[json!({"message": "m"})]).await;
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["logs"], "<ID>"),
        (vec!["logs", "bad id!"], "ID \"bad id!\""),
        (vec!["logs", "x", "--level", "loud"], "level"),
        (vec!["logs", "x", "--server", "ftp://nowhere"], "--server"),
        (vec!["logs", "x", "-o", "yaml"], "yaml"),
        (
            vec![
                "run",
                "--deployment",
                "x",
                "--mask-env",
                "LOGSTREAM_NO_SUCH_VAR",
                "--",
                "true",
            ],
            "LOGSTREAM_NO_SUCH_VAR",
        ),
        (vec!["logs", "missing"], "no such deployment"),
    ];
    for (args, needle) in cases {
        let out = cli(&g, &t).args(&args).output().await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = Command::new(BIN)
        .args(["logs", "x"])
        .env_remove("LOGSTREAM_SERVER")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LOGSTREAM_SERVER"));
    let out = Command::new(BIN)
        .args(["completion", "bash"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("kubectl-logstream")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_rereads_a_rotated_token_file_when_the_token_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let writer = token(&g);
    let file = tmp.path().join("token");
    // A token that expires in 5 s (long enough for the CLI to print `before` on a loaded machine): the stream ends with auth_expired, the CLI re-reads
    // the file (rotated meanwhile) and resumes after the last line it printed.
    std::fs::write(
        &file,
        g.state.auth.mint(
            "viewer",
            "acme",
            &[Scope::Read],
            Duration::from_secs(5),
            None,
        ),
    )
    .unwrap();
    push(&g, &writer, "rot", &[json!({"message": "before"})]).await;
    let child = Command::new(BIN)
        .args([
            "logs",
            "-f",
            "rot",
            "--color",
            "never",
            "--token-file",
            file.to_str().unwrap(),
        ])
        .env("LOGSTREAM_SERVER", &g.http)
        .env_remove("LOGSTREAM_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    follow_through_token_expiry(child, &g, &writer, "rot", || {
        std::fs::write(
            &file,
            g.state.auth.mint(
                "viewer",
                "acme",
                &[Scope::Read],
                Duration::from_secs(600),
                None,
            ),
        )
        .unwrap();
    })
    .await;
}

/// A follow of `id` (which holds the line `before`) whose token expires in a few seconds: after
/// `before`, `rotate` puts a fresh token where the CLI gets it; the CLI says it is
/// reconnecting, prints `after` (pushed then) exactly once and exits 0.
async fn follow_through_token_expiry(
    mut child: tokio::process::Child,
    g: &Running,
    writer: &str,
    id: &str,
    rotate: impl FnOnce(),
) {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut status = BufReader::new(child.stderr.take().unwrap()).lines();
    assert_eq!(lines.next_line().await.unwrap().unwrap(), "before");
    rotate();
    // The stream ends at the first token's expiry; the CLI says it is reconnecting.
    let note = tokio::time::timeout(Duration::from_secs(10), status.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(note.contains("reconnecting"), "{note}");
    push(g, writer, id, &[json!({"message": "after"})]).await;
    complete(g, writer, id, "succeeded", 0).await;
    let mut rest = Vec::new();
    while let Some(l) = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
    {
        rest.push(l);
    }
    assert_eq!(rest, vec!["after"]);
    assert_eq!(child.wait().await.unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_a_row_when_a_deployment_appears_or_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let t = token(&g);
    push(&g, &t, "first", &[json!({"message": "a"})]).await;
    let mut child = cli(&g, &t)
        .args(["get", "deployments", "-w"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(next_line(&mut out).await.starts_with("ID"));
    let row = next_line(&mut out).await;
    assert!(row.starts_with("first") && row.contains("running"), "{row}");
    push(&g, &t, "second", &[json!({"message": "b"})]).await;
    let row = next_line(&mut out).await;
    assert!(row.starts_with("second"), "{row}");
    complete(&g, &t, "first", "failed", 4).await;
    let row = next_line(&mut out).await;
    assert!(
        row.starts_with("first") && row.contains("failed (4)"),
        "{row}"
    );
    child.kill().await.unwrap();

    // -w is for tables; a status that does not exist names the values.
    let out = cli(&g, &t)
        .args(["get", "deployments", "-w", "-o", "json"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = cli(&g, &t)
        .args(["get", "deployments", "--status", "done"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed_out"));
}

async fn next_line(out: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(20), out.next_line())
        .await
        .expect("a line within 20 s")
        .unwrap()
        .expect("stdout open")
}

/// A fake Kubernetes API server: it authenticates the kubeconfig's credentials (a
/// bearer token that only its exec plugin knows), serves the LogStream list, and
/// proxies `/api/v1/namespaces/ci/services/acme-edge:http/proxy/...` to the real gateway
/// after stripping `Authorization`, as kube-apiserver does.
/// A fake API server: LogStreams in namespace `ci` and the service proxy to `gateway`;
/// `api_token` is the bearer it accepts (any, when `None`).
async fn fake_api_server(gateway: String, api_token: Option<&'static str>) -> String {
    use axum::extract::Request;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(move |req: Request| {
        let gateway = gateway.clone();
        async move {
            let bearer = req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
            if bearer.is_none_or(|b| api_token.is_some_and(|want| want != b)) {
                return (StatusCode::UNAUTHORIZED, "{}").into_response();
            }
            let path = req.uri().path().to_owned();
            if path == "/apis/logstream.dev/v1alpha1/namespaces/ci/logstreams" {
                let ls = json!({
                    "apiVersion": "logstream.dev/v1alpha1", "kind": "LogStreamList", "metadata": {},
                    "items": [{"apiVersion": "logstream.dev/v1alpha1", "kind": "LogStream",
                        "metadata": {"name": "acme", "namespace": "ci"},
                        "spec": {"tenant": "acme"},
                        "status": {"endpoints": {"ingest": "acme-store.ci.svc:8081", "http": "http://acme-edge.ci.svc:8080",
                                                 "service": "acme-edge", "namespace": "ci", "port": "http"}}}]
                });
                return axum::Json(ls).into_response();
            }
            if path.starts_with("/apis/logstream.dev/v1alpha1/namespaces/") {
                return axum::Json(json!({"apiVersion": "logstream.dev/v1alpha1", "kind": "LogStreamList", "metadata": {}, "items": []})).into_response();
            }
            let Some(rest) = path.strip_prefix("/api/v1/namespaces/ci/services/acme-edge:http/proxy") else {
                return (StatusCode::NOT_FOUND, "{}").into_response();
            };
            let url = match req.uri().query() {
                Some(q) => format!("{gateway}{rest}?{q}"),
                None => format!("{gateway}{rest}"),
            };
            let method = req.method().clone();
            let mut headers = req.headers().clone();
            headers.remove("authorization");
            headers.remove("host");
            let body = axum::body::to_bytes(req.into_body(), 64 << 20).await.unwrap();
            let resp = reqwest::Client::new().request(method, url).headers(headers).body(body).send().await.unwrap();
            let status = resp.status();
            let ct = resp.headers().get("content-type").cloned();
            let mut r = axum::response::Response::new(axum::body::Body::from_stream(resp.bytes_stream()));
            *r.status_mut() = status;
            if let Some(ct) = ct {
                r.headers_mut().insert("content-type", ct);
            }
            r
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// A kubeconfig for `api` whose user authenticates with an exec plugin (as cloud
/// providers' do) printing the output of `token_cmd` as its token.
fn exec_kubeconfig(dir: &Path, api: &str, token_cmd: &str) -> std::path::PathBuf {
    let plugin = dir.join("credential-plugin");
    std::fs::write(
        &plugin,
        format!("#!/bin/sh\nprintf '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"%s\"}}}}' \"$({token_cmd})\"\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: dev\n\
             clusters: [{{name: c, cluster: {{server: \"{api}\"}}}}]\n\
             users: [{{name: u, user: {{exec: {{apiVersion: client.authentication.k8s.io/v1, command: \"{}\", interactiveMode: Never}}}}}}]\n\
             contexts: [{{name: dev, context: {{cluster: c, user: u, namespace: ci}}}}]\n",
            plugin.display()
        ),
    )
    .unwrap();
    kubeconfig
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_mid_follow_runs_the_kubeconfig_exec_plugin_again_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let writer = token(&g);
    let api = fake_api_server(g.http.clone(), None).await;
    // The exec plugin's token is also the gateway token (no LOGSTREAM_TOKEN): it expires
    // in 5 s, the stream ends, the reconnect gets 401, the plugin runs again.
    let file = tmp.path().join("current-token");
    let mint = |secs| {
        g.state.auth.mint(
            "viewer",
            "acme",
            &[Scope::Read],
            Duration::from_secs(secs),
            None,
        )
    };
    std::fs::write(&file, mint(5)).unwrap();
    let kubeconfig = exec_kubeconfig(tmp.path(), &api, &format!("cat {}", file.display()));
    push(&g, &writer, "exec", &[json!({"message": "before"})]).await;
    let child = Command::new(BIN)
        .args(["logs", "-f", "exec", "--color", "never"])
        .env_remove("LOGSTREAM_SERVER")
        .env_remove("LOGSTREAM_TOKEN")
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    follow_through_token_expiry(child, &g, &writer, "exec", || {
        std::fs::write(&file, mint(600)).unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_server_the_gateway_is_found_from_the_kubeconfig_through_the_service_proxy() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let t = token(&g);
    push(
        &g,
        &t,
        "via-kube",
        &[json!({"message": "one"}), json!({"message": "two"})],
    )
    .await;
    complete(&g, &t, "via-kube", "succeeded", 0).await;
    let api = fake_api_server(g.http.clone(), Some("kube-user-token")).await;
    // The kubeconfig's user authenticates with an exec plugin (like cloud providers').
    let kubeconfig = exec_kubeconfig(tmp.path(), &api, "echo kube-user-token");
    let kube_cli = || {
        let mut c = Command::new(BIN);
        c.env_remove("LOGSTREAM_SERVER")
            .env("KUBECONFIG", &kubeconfig)
            .env("LOGSTREAM_TOKEN", &t)
            .kill_on_drop(true);
        c
    };
    let out = kube_cli()
        .args(["logs", "-f", "via-kube", "--color", "never"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["one", "two"]);
    let out = kube_cli()
        .args(["get", "deployments"])
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("via-kube"));
    // The service proxy route carries SSE; asking for a WebSocket there says so.
    let out = kube_cli()
        .args(["logs", "-f", "via-kube", "--transport", "ws"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--transport ws"));

    // A namespace without a LogStream is a usage error naming the fix.
    let out = kube_cli()
        .args(["get", "deployments", "-n", "empty"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no LogStream in namespace \"empty\"") && err.contains("--server"),
        "{err}"
    );
}

/// Runs the CLI in a pseudo-terminal (100x24). `react` sees the output so far each time
/// more arrives and may type something back (once). Returns the exit code and all the
/// terminal showed.
async fn in_pty(
    g: &Running,
    token: &str,
    args: &[&str],
    env: &[(&str, &str)],
    mut react: impl FnMut(&str) -> Option<&'static [u8]>,
) -> (Option<i32>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (pty, pts) = pty_process::open().unwrap();
    pty.resize(pty_process::Size::new(24, 100)).unwrap();
    let mut cmd = pty_process::Command::new(BIN)
        .args(args)
        .env("LOGSTREAM_SERVER", &g.http)
        .env("LOGSTREAM_TOKEN", token)
        .env_remove("NO_COLOR")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    let mut child = cmd.spawn(pts).unwrap();
    let (mut r, mut w) = pty.into_split();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let mut answered = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), r.read(&mut buf))
            .await
            .expect("the CLI keeps writing or exits")
        {
            Ok(0) | Err(_) => break, // EIO: the CLI exited and the terminal closed
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if !answered && let Some(keys) = react(&String::from_utf8_lossy(&out)) {
            answered = true;
            w.write_all(keys).await.unwrap();
        }
    }
    let status = child.wait().await.unwrap();
    (status.code(), String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_levels_and_steps_are_coloured_unless_no_color() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let t = token(&g);
    push(
        &g,
        &t,
        "tty",
        &[
            json!({"message": "ERROR boom", "step": "build"}),
            json!({"message": "WARN careful", "step": "build"}),
            json!({"message": "DEBUG detail", "step": "test"}),
            json!({"message": "plain", "step": "test"}),
        ],
    )
    .await;
    let never = |_: &str| None;
    let (code, shown) = in_pty(&g, &t, &["logs", "tty"], &[], never).await;
    assert_eq!(code, Some(0), "{shown}");
    for (what, seq) in [
        ("error red", "\x1b[31mERROR boom\x1b[0m"),
        ("warn yellow", "\x1b[33mWARN careful\x1b[0m"),
        ("debug dim", "\x1b[2mDEBUG detail\x1b[0m"),
        ("first step cyan, padded", "\x1b[36mbuild\x1b[0m | "),
        ("second step magenta", "\x1b[35mtest\x1b[0m  | plain"),
    ] {
        assert!(shown.contains(seq), "{what}: {shown:?}");
    }
    for env in [[("NO_COLOR", "1")].as_slice(), &[]] {
        let args: &[&str] = if env.is_empty() {
            &["logs", "tty", "--color", "never"]
        } else {
            &["logs", "tty"]
        };
        let (code, shown) = in_pty(&g, &t, args, env, never).await;
        assert_eq!(code, Some(0));
        assert!(!shown.contains('\x1b'), "{args:?} {env:?}: {shown:?}");
        assert!(shown.contains("build | ERROR boom"), "{shown:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_a_follow_exits_130_with_the_terminal_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let t = token(&g);
    push(&g, &t, "long", &[json!({"message": "ERROR still going"})]).await;
    let (code, shown) = in_pty(&g, &t, &["logs", "-f", "long"], &[], |s| {
        s.contains("still going\x1b[0m")
            .then_some(b"\x03".as_slice())
    })
    .await;
    assert_eq!(code, Some(130), "{shown:?}");
    let after = &shown[shown.find("still going").unwrap()..];
    assert!(
        after.trim_end().ends_with("^C\x1b[0m\x1b[0m"),
        "colours reset, then a fresh line: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_shows_a_progress_bar_on_a_terminal_only() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let t = token(&g);
    let lines: Vec<Value> = (0..20_000)
        .map(|i| json!({"message": format!("line {i}")}))
        .collect();
    push(&g, &t, "bar", &lines).await;
    let file = tmp.path().join("bar.log");
    let args = ["export", "bar", "-o", file.to_str().unwrap()];
    let (code, shown) = in_pty(&g, &t, &args, &[], |_| None).await;
    assert_eq!(code, Some(0), "{shown:?}");
    assert!(shown.contains("/20000 lines"), "a bar: {shown:?}");
    assert!(shown.contains("wrote 20000 lines"), "{shown:?}");
    assert!(shown.contains("still running"), "{shown:?}");
    let piped = cli(&g, &t).args(args).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(piped.status.success(), "{stderr}");
    assert!(
        !stderr.contains("/20000 lines"),
        "no bar without a terminal: {stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().lines().count(),
        20_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_pty_gives_the_command_a_terminal_and_keeps_its_colours() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let t = token(&g);
    let script = r#"if [ -t 1 ]; then echo "stdout is a terminal"; fi
printf '\033[31mred\033[0m\n' >&2
printf 'no newline at the end'
exit 3"#;
    let out = cli(&g, &t)
        .args([
            "run",
            "--deployment",
            "ptyrun",
            "--step",
            "sh",
            "--pty",
            "--quiet",
        ])
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let (got, d) = messages(&g, &t, "ptyrun").await;
    assert_eq!(
        got,
        [
            "stdout is a terminal",
            "\x1b[31mred\x1b[0m",
            "no newline at the end"
        ]
    );
    assert_eq!(
        (d["status"].as_str(), d["exit_code"].as_i64()),
        (Some("failed"), Some(3))
    );
    // Without --pty the same command sees pipes.
    let out = cli(&g, &t)
        .args([
            "run",
            "--deployment",
            "piperun",
            "--quiet",
            "--",
            "sh",
            "-c",
            script,
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let (messages, _) = messages(&g, &t, "piperun").await;
    assert!(
        !messages.contains(&"stdout is a terminal".to_owned()),
        "{messages:?}"
    );
}

/// The gateway's refusal of `req`: its status and error body.
async fn refusal(req: reqwest::RequestBuilder) -> (u16, wire::ErrorBody) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_at_the_viewer_limit_exits_with_the_gateways_message_instead_of_retrying() {
    let tmp = tempfile::tempdir().unwrap();
    let g = Running::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_viewers_per_deployment: 1,
        ..Config::loopback(tmp.path())
    })
    .await
    .unwrap();
    let t = token(&g);
    push(&g, &t, "busy", &[json!({"message": "one"})]).await;
    let stream = || {
        reqwest::Client::new()
            .get(format!("{}/v1/deployments/busy/stream", g.http))
            .bearer_auth(&t)
            .header("accept", "text/event-stream")
    };
    // The one viewer the deployment allows, held open.
    let held = stream().send().await.unwrap();
    assert_eq!(held.status(), 200);
    let (status, refused) = refusal(stream()).await;
    assert_eq!(
        (status, refused.error.code.as_str()),
        (429, "viewers_per_deployment")
    );
    for transport in ["sse", "ws"] {
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            cli(&g, &t)
                .args(["logs", "-f", "busy", "--transport", transport])
                .output(),
        )
        .await
        .expect("a final refusal is not retried")
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{transport}: {err}");
        assert_eq!(
            err,
            format!("error: {} (HTTP 429)\n", refused.error.message),
            "{transport}"
        );
        assert!(out.stdout.is_empty(), "{transport}");
    }
    // Without the limit reached the same follow works.
    drop(held);
    complete(&g, &t, "busy", "succeeded", 0).await;
    let out = cli(&g, &t)
        .args(["logs", "-f", "busy"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_against_a_completed_deployment_stops_with_the_gateways_message() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let t = token(&g);
    push(&g, &t, "sealed", &[json!({"message": "one"})]).await;
    // Failed: a run's own completion (succeeded, 0) differs, so it is refused too (the
    // same completion again would be an idempotent success).
    complete(&g, &t, "sealed", "failed", 7).await;
    let (status, refused) = refusal(
        reqwest::Client::new()
            .post(format!("{}/v1/deployments/sealed/logs", g.http))
            .bearer_auth(&t)
            .header("content-type", "application/x-ndjson")
            .body("{\"message\":\"late\"}\n"),
    )
    .await;
    assert_eq!(
        (status, refused.error.code.as_str()),
        (409, "deployment_completed")
    );
    // With output (the first batch is refused) and without, as the last step (the
    // completion is).
    for (script, last) in [("echo more; echo again", false), ("true", true)] {
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            cli(&g, &t)
                .args(["run", "--deployment", "sealed", "--quiet"])
                .args(last.then_some("--complete"))
                .arg("--")
                .args(["sh", "-c", script])
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .expect("a final refusal is not retried")
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{script}: {err}");
        assert_eq!(
            err,
            format!("error: {} (HTTP 409)\n", refused.error.message),
            "{script}"
        );
    }
    let (msgs, d) = messages(&g, &t, "sealed").await;
    assert_eq!(msgs, ["one"]);
    assert_eq!(
        (d["status"].as_str(), d["exit_code"].as_i64()),
        (Some("failed"), Some(7))
    );
}

/// Runs `kubectl logstream run --deployment id --step step [flags] -- sh -c script`.
async fn step(g: &Running, t: &str, id: &str, step: &str, flags: &[&str], script: &str) -> i32 {
    let out = cli(g, t)
        .args(["run", "--deployment", id, "--step", step, "--quiet"])
        .args(flags)
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    out.status.code().unwrap()
}

async fn status(g: &Running, t: &str, id: &str) -> (String, Option<i64>, Value) {
    let (_, d) = messages(g, t, id).await;
    (
        d["status"].as_str().unwrap().to_owned(),
        d["exit_code"].as_i64(),
        d["steps"].clone(),
    )
}

/// The README's pipeline: steps share a deployment; a failing step completes it as
/// failed with its code (the pipeline stops there), a follower ends with that status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_ends_the_pipeline_with_its_status_and_code() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let t = token(&g);
    assert_eq!(step(&g, &t, "p1", "checkout", &[], "echo cloned").await, 0);
    assert_eq!(
        status(&g, &t, "p1").await.0,
        "running",
        "a passing step leaves it open"
    );
    let follower = cli(&g, &t)
        .args(["logs", "-f", "p1", "--color", "never"])
        .output();
    let follower = tokio::spawn(follower);
    assert_eq!(
        step(
            &g,
            &t,
            "p1",
            "build",
            &[],
            "echo compiling; echo 'error: E0308'; exit 2"
        )
        .await,
        2
    );
    let (s, code, steps) = status(&g, &t, "p1").await;
    assert_eq!((s.as_str(), code), ("failed", Some(2)));
    assert_eq!(steps, json!(["checkout", "build"]));
    let out = tokio::time::timeout(Duration::from_secs(30), follower)
        .await
        .expect("the follower ends with the deployment")
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "checkout | cloned\nbuild    | compiling\nbuild    | error: E0308\n"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("deployment p1 failed (exit code 2) after ")
            && err.ends_with(", 3 lines\n"),
        "{err}"
    );
}

/// Three passing steps, `--complete` on the last: succeeded, and its follower exits 0.
/// `--no-complete` keeps a failing step's deployment open; `complete` ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_steps_stay_open_until_the_last_completes_and_complete_ends_a_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let t = token(&g);
    assert_eq!(step(&g, &t, "p2", "checkout", &[], "echo a").await, 0);
    let follower = tokio::spawn(cli(&g, &t).args(["logs", "-f", "p2"]).output());
    assert_eq!(step(&g, &t, "p2", "build", &[], "echo b").await, 0);
    assert_eq!(status(&g, &t, "p2").await.0, "running");
    assert_eq!(
        step(&g, &t, "p2", "test", &["--complete"], "echo c").await,
        0
    );
    let (s, code, steps) = status(&g, &t, "p2").await;
    assert_eq!((s.as_str(), code), ("succeeded", Some(0)));
    assert_eq!(steps, json!(["checkout", "build", "test"]));
    let out = tokio::time::timeout(Duration::from_secs(30), follower)
        .await
        .expect("the follower ends")
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "checkout | a\nbuild    | b\ntest     | c\n"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("deployment p2 succeeded after ") && err.ends_with(", 3 lines\n"),
        "{err}"
    );

    // An allowed failure: the step's code, the deployment stays open.
    assert_eq!(
        step(
            &g,
            &t,
            "p3",
            "lint",
            &["--no-complete"],
            "echo linting; exit 4"
        )
        .await,
        4
    );
    assert_eq!(status(&g, &t, "p3").await.0, "running");
    let complete = |args: &[&str]| {
        let mut c = cli(&g, &t);
        c.arg("complete").args(args);
        c.output()
    };
    let out = complete(&["p3", "--status", "cancelled", "--exit-code", "9"])
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (s, code, _) = status(&g, &t, "p3").await;
    assert_eq!((s.as_str(), code), ("cancelled", Some(9)));
    // Saying it again is fine; saying something else names what was recorded.
    let out = complete(&["p3", "--status", "cancelled"]).await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = complete(&["p3", "--status", "succeeded"]).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: deployment p3 had already completed as cancelled (exit code 9); a completion is final\n"
    );
    let out = complete(&["p3", "--status", "done"]).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--status"));
    let out = cli(&g, &t)
        .args([
            "run",
            "--deployment",
            "p4",
            "--complete",
            "--no-complete",
            "--",
            "true",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-complete"));
}

/// A runner that died leaves its deployment open: the gateway times it out, and a
/// follower exits 5 saying so instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_an_abandoned_deployment_exits_when_it_times_out() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Config {
        deployment_idle_timeout: "2s".into(),
        ..Config::loopback(tmp.path())
    };
    let g = Running::start(config).await.unwrap();
    let t = token(&g);
    // The runner is killed: its step never completes.
    let mut runner = cli(&g, &t)
        .args(["run", "--deployment", "gone", "--quiet", "--"])
        .args(["sh", "-c", "echo started; sleep 600"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while reqwest::Client::new()
            .get(format!("{}/v1/deployments/gone", g.http))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap()
            .status()
            != 200
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the first line arrives");
    runner.kill().await.unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        cli(&g, &t).args(["logs", "-f", "gone"]).output(),
    )
    .await
    .expect("the follower ends at the timeout")
    .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "sh | started\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("deployment gone timed out: "),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// stdout and stderr are read by one loop: stored lines (in the order they were read)
/// never go back in time, however the two pipes interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stamps_stdout_and_stderr_in_the_order_it_reads_them() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let t = token(&g);
    let code = step(
        &g,
        &t,
        "mixed",
        "both",
        &[],
        "i=0; while [ $i -lt 3000 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done",
    )
    .await;
    assert_eq!(code, 0);
    let lines = stored_lines(&g, &t, "mixed").await;
    assert_eq!(lines.len(), 6000);
    let ts: Vec<i64> = lines
        .iter()
        .map(|l| logstream_model::time::parse_rfc3339(l["ts"].as_str().unwrap()).unwrap())
        .collect();
    if let Some(i) = ts.windows(2).position(|w| w[1] <= w[0]) {
        panic!(
            "line {} ({}) stamped before line {} ({})",
            i + 2,
            lines[i + 1]["message"],
            i + 1,
            lines[i]["message"]
        );
    }
    // Each stream on its own keeps its order.
    for (stream, prefix) in [("stdout", "out"), ("stderr", "err")] {
        let got: Vec<&str> = lines
            .iter()
            .filter(|l| l["stream"] == stream)
            .map(|l| l["message"].as_str().unwrap())
            .collect();
        let want: Vec<String> = (0..3000).map(|i| format!("{prefix}{i}")).collect();
        assert_eq!(got, want, "{stream}");
    }
}

/// A pipeline's link opened before its first line: `logs -f` waits (saying so), then
/// follows; `--wait-timeout` gives up with exit 5; a token that may not see the id
/// waits the same (nothing leaks); `-q` keeps stderr quiet; `--strip-ansi` removes the
/// log's own escapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_waits_for_a_deployment_that_has_not_started() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let t = token(&g);
    for transport in ["sse", "ws"] {
        let id = format!("queued-{transport}");
        let mut child = cli(&g, &t)
            .args(["logs", "-f", &id, "--transport", transport, "--strip-ansi"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
        let said = tokio::time::timeout(Duration::from_secs(20), err.next_line())
            .await
            .expect("the waiting notice")
            .unwrap()
            .unwrap();
        assert_eq!(
            said,
            format!("waiting for deployment {id} to start (no line yet)...")
        );
        push(
            &g,
            &t,
            &id,
            &[json!({"message": "\u{1b}[32mok\u{1b}[0m first"})],
        )
        .await;
        complete(&g, &t, &id, "succeeded", 0).await;
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .expect("the follow ends")
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{transport}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "ok first\n",
            "{transport}"
        );
        let summary = err.next_line().await.unwrap().unwrap();
        assert!(
            summary.starts_with(&format!("deployment {id} succeeded after ")),
            "{summary}"
        );
    }
    let out = cli(&g, &t)
        .args(["logs", "-f", "never", "--wait-timeout", "1s", "-q"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: deployment never did not start within 1s (--wait-timeout)\n"
    );
    // A token for other deployments: the id waits like a missing one, even once it
    // exists (its existence does not leak).
    push(&g, &t, "secret-build", &[json!({"message": "x"})]).await;
    let narrow = g.state.auth.mint(
        "ci",
        "acme",
        &[logstream_gateway::auth::Scope::Read],
        Duration::from_secs(60),
        Some(vec!["public-*".into()]),
    );
    let out = cli(&g, &narrow)
        .args(["logs", "-f", "secret-build", "--wait-timeout", "1s"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    // Without -f a missing deployment is still an error.
    let out = cli(&g, &t)
        .args(["logs", "nothing"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = cli(&g, &t)
        .args(["logs", "nothing", "--wait-timeout", "1s"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--wait-timeout needs -f");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redact_masks_a_leaked_value_and_delete_removes_a_deployment() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let t = token(&g);
    let admin = g.state.auth.mint(
        "oncall",
        "acme",
        &[Scope::Read, Scope::LogsAdmin],
        Duration::from_secs(3600),
        None,
    );
    push(
        &g,
        &t,
        "leaky",
        &[
            json!({"message": "ok"}),
            json!({"message": "vault says s3cr3t-Vq9Lw2 today"}),
        ],
    )
    .await;
    // Bad flags exit 2 naming them; a token without logs:admin is refused by the gateway.
    for (args, needle) in [
        (vec!["redact", "leaky", "--reason", "x"], "--seq"),
        (
            vec!["redact", "leaky", "--match", "(", "--reason", "x"],
            "--match",
        ),
        (
            vec!["redact", "leaky", "--seq", "1", "--reason", " "],
            "--reason",
        ),
    ] {
        let out = cli(&g, &admin).args(&args).output().await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = cli(&g, &t)
        .args([
            "redact",
            "leaky",
            "--match",
            "s3cr3t-\\w+",
            "--reason",
            "leak",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("logs:admin"));

    let out = cli(&g, &admin)
        .args([
            "redact",
            "leaky",
            "--match",
            "s3cr3t-\\w+",
            "--reason",
            "INC-42 leak",
        ])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("masked 1 matches in 1 lines of leaky (seqs 2)"),
        "{err}"
    );
    let lines = stored_lines(&g, &t, "leaky").await;
    assert_eq!(lines[1]["message"], "vault says [REDACTED:hotfix] today");

    let out = cli(&g, &admin)
        .args(["delete", "leaky", "--reason", "INC-42"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "asks for --yes without a terminal"
    );
    let out = cli(&g, &admin)
        .args(["delete", "leaky", "--reason", "INC-42", "--yes"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&g, &t)
        .args(["describe", "leaky"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_with_a_bookmark_resumes_where_the_last_follower_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let t = token(&g);
    let lines = |r: std::ops::Range<usize>| -> Vec<Value> {
        r.map(|i| json!({"message": format!("l{i}")})).collect()
    };
    push(&g, &t, "bm", &lines(0..5)).await;
    // A first follower reads the five lines and is stopped with Ctrl+C (SIGINT): it
    // saves its place first.
    let mut first = cli(&g, &t)
        .args(["logs", "-f", "bm", "--bookmark", "laptop"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(first.stdout.take().unwrap()).lines();
    for i in 0..5 {
        assert_eq!(out.next_line().await.unwrap().unwrap(), format!("l{i}"));
    }
    let pid = first.id().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    assert_eq!(first.wait().await.unwrap().code(), Some(130));
    let (status, b) = {
        let r = reqwest::Client::new()
            .get(format!("{}/v1/deployments/bm/bookmarks/laptop", g.http))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!((status, b["seq"].as_u64()), (200, Some(5)), "{b}");

    // Elsewhere, the same subject goes on after line 5; the bookmark follows.
    push(&g, &t, "bm", &lines(5..8)).await;
    complete(&g, &t, "bm", "succeeded", 0).await;
    let again = cli(&g, &t)
        .args(["logs", "-f", "bm", "--bookmark", "laptop"])
        .output()
        .await
        .unwrap();
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&again.stdout), "l5\nl6\nl7\n");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("resuming after line 5 (bookmark laptop)")
    );
    // Another subject has no such bookmark: it reads from the start.
    let other = g.state.auth.mint(
        "someone-else",
        "acme",
        &[Scope::Read],
        Duration::from_secs(600),
        None,
    );
    let fresh = cli(&g, &other)
        .args(["logs", "-f", "bm", "--bookmark", "laptop", "-q"])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&fresh.stdout).lines().count(), 8);
    let bad = cli(&g, &t)
        .args(["logs", "-f", "bm", "--bookmark", "a b"])
        .output()
        .await
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--bookmark"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_link_prints_a_url_that_downloads_without_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gateway(tmp.path(), "127.0.0.1:0").await;
    let t = token(&g);
    push(
        &g,
        &t,
        "shared",
        &[json!({"message": "one"}), json!({"message": "two"})],
    )
    .await;
    complete(&g, &t, "shared", "succeeded", 0).await;
    let out = cli(&g, &t)
        .args([
            "export",
            "shared",
            "--link",
            "--format",
            "ndjson",
            "--expires",
            "1h",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(url.contains("/v1/shared/acme/shared/export?"), "{url}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("expires"));
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("etag"));
    assert_eq!(r.text().await.unwrap().lines().count(), 2);
    let bad = cli(&g, &t)
        .args(["export", "shared", "--link", "--expires", "30d"])
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("expires_in"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
