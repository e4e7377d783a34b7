//! One node collector, two tenants: each pod's lines go to the gateway of the LogStream
//! that selects it (namespaces, pod selector, its own deployment label key); pods no
//! LogStream selects are not sent anywhere.

use logstream_gateway::auth::Scope;
use logstream_gateway::config::Config;
use logstream_gateway::server::Running;
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

async fn gateway(dir: &Path, key: &Path) -> Running {
    let mut c = Config::loopback(dir);
    c.signing_key_file = Some(key.to_owned());
    Running::start(c).await.unwrap()
}

fn pod(ns: &str, name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": labels},
        "spec": {"containers": [{"name": "main"}]},
        "status": {"phase": "Running"}})
}

fn logstream(ns: &str, name: &str, spec: Value, ingest: &str) -> Value {
    json!({"apiVersion": "logstream.dev/v1alpha1", "kind": "LogStream",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
        "status": {"endpoints": {"ingest": ingest, "http": "", "service": format!("{name}-edge"), "namespace": ns, "port": "http"}}})
}

async fn count(g: &Running, token: &str, id: &str) -> usize {
    let r = reqwest::Client::new()
        .get(format!("{}/v1/deployments/{id}/logs?limit=5000", g.http))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    if r.status() == 404 {
        return 0;
    }
    r.json::<Value>().await.unwrap()["lines"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pod_goes_to_the_gateway_of_the_logstream_that_selects_it() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key");
    let a = gateway(&tmp.path().join("a"), &key).await;
    let b = gateway(&tmp.path().join("b"), &key).await;
    let token = a.state.auth.mint(
        "collector",
        "node",
        &[Scope::Read, Scope::Write],
        Duration::from_secs(600),
        None,
    );
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, &token).unwrap();

    let root = tmp.path().join("pods");
    let pods = [
        pod("team-a", "pa", json!({"logstream.dev/deployment": "run-a"})),
        pod(
            "team-b",
            "pb",
            json!({"app": "ci", "ci.example/run": "run-b", "ci.example/task": "lint"}),
        ),
        pod("team-b", "pc", json!({"ci.example/run": "run-c"})),
        pod("other", "pd", json!({"logstream.dev/deployment": "run-d"})),
    ];
    for p in &pods {
        let dir = root.join(format!(
            "{}_{}_{}/main",
            p["metadata"]["namespace"].as_str().unwrap(),
            p["metadata"]["name"].as_str().unwrap(),
            p["metadata"]["uid"].as_str().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = std::fs::File::create(dir.join("0.log")).unwrap();
        for i in 0..200 {
            writeln!(
                f,
                "2026-11-23T10:00:00Z stdout F {} line {i}",
                p["metadata"]["name"].as_str().unwrap()
            )
            .unwrap();
        }
    }
    let pods_file = tmp.path().join("pods.json");
    std::fs::write(
        &pods_file,
        serde_json::to_vec(&json!({"kind": "List", "apiVersion": "v1", "items": pods})).unwrap(),
    )
    .unwrap();
    let grpc_a = a.grpc.trim_start_matches("http://").to_owned();
    let grpc_b = b.grpc.trim_start_matches("http://").to_owned();
    let ls_file = tmp.path().join("logstreams.json");
    std::fs::write(
        &ls_file,
        serde_json::to_vec(&json!({"kind": "List", "apiVersion": "v1", "items": [
            logstream("team-a", "a", json!({"tenant": "a"}), &grpc_a),
            logstream("team-b", "b", json!({"tenant": "b",
                "selector": {"podSelector": {"matchLabels": {"app": "ci"}}},
                "labels": {"deployment": "ci.example/run", "step": "ci.example/task"}}), &grpc_b),
        ]}))
        .unwrap(),
    )
    .unwrap();

    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_logstream-collector"))
        .args([
            "--log-root",
            root.to_str().unwrap(),
            "--state-dir",
            tmp.path().join("state").to_str().unwrap(),
        ])
        .args([
            "--pods",
            pods_file.to_str().unwrap(),
            "--logstreams",
            ls_file.to_str().unwrap(),
        ])
        .args([
            "--token-file",
            token_file.to_str().unwrap(),
            "--node-name",
            "n1",
        ])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while count(&a, &token, "run-a").await < 200 || count(&b, &token, "run-b").await < 200 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "lines did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The step comes from the LogStream's own step label.
    let r: Value = reqwest::Client::new()
        .get(format!("{}/v1/deployments/run-b/logs?limit=1", b.http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["lines"][0]["step"], "lint");
    // Nothing crossed over, and unselected pods went nowhere.
    for (g, id) in [
        (&a, "run-b"),
        (&b, "run-a"),
        (&a, "run-c"),
        (&b, "run-c"),
        (&a, "run-d"),
        (&b, "run-d"),
    ] {
        assert_eq!(
            count(g, &token, id).await,
            0,
            "{id} must not be on {}",
            g.http
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn without_a_gateway_or_logstreams_the_collector_says_what_to_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let pods = tmp.path().join("pods.json");
    std::fs::write(&pods, br#"{"kind":"List","apiVersion":"v1","items":[]}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_logstream-collector"))
        .args([
            "--log-root",
            tmp.path().to_str().unwrap(),
            "--pods",
            pods.to_str().unwrap(),
            "--node-name",
            "n",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--gateway") && err.contains("--logstreams"),
        "{err}"
    );
}
