//! Helpers of the tests that run the gateway binary as processes (`fanout.rs`,
//! `kafka.rs`): free ports, a process with its ready line, idempotent pushes, a
//! resuming SSE follower.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use logstream_gateway::testkit::{client, scrape};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

pub const BIN: &str = env!("CARGO_BIN_EXE_logstream-gateway");

/// The `Logstream-Source` of `push`'s batches.
pub const SOURCE: &str = "test-agent";

/// A free loopback port (bound, then released for a child to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One gateway process; killed when dropped.
pub struct Proc {
    pub child: tokio::process::Child,
    pub http: String,
}

impl Proc {
    /// Starts `logstream-gateway` with `args` and waits for its ready line.
    pub async fn start(args: &[String]) -> Proc {
        let mut child = tokio::process::Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the gateway starts");
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), out.next_line())
            .await
            .expect("a ready line in time")
            .unwrap()
            .expect("a ready line");
        assert!(line.contains("ready"), "{line}");
        tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
        let listen = args
            .iter()
            .position(|a| a == "--listen")
            .map(|i| args[i + 1].clone())
            .unwrap();
        Proc {
            child,
            http: format!("http://{listen}"),
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    pub async fn stop(mut self) {
        let pid = self.child.id().expect("running") as i32;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("graceful shutdown")
            .unwrap();
    }

    pub async fn metric(&self, name: &str) -> f64 {
        scrape(&self.http, name).await.unwrap_or(f64::NAN)
    }

    /// Waits until `name` (summed over its series) is `want`.
    pub async fn until_metric(&self, name: &str, want: f64) {
        let mut got = f64::NAN;
        for _ in 0..200 {
            got = self.metric(name).await;
            if got == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} {name} = {got}, want {want}", self.http);
    }
}

/// Pushes lines `from..to` (`line N`, every 7th at level error) as one idempotent batch
/// (`Logstream-Batch` = `batch`), retrying until the store takes it.
pub async fn push(store: &str, token: &str, id: &str, batch: u64, from: usize, to: usize) {
    let body: String = (from..to)
        .map(|i| {
            let level = if i % 7 == 0 { "error" } else { "info" };
            json!({"message": format!("line {i}"), "level": level}).to_string() + "\n"
        })
        .collect();
    for _ in 0..400 {
        let r = client()
            .post(format!("{store}/v1/deployments/{id}/logs"))
            .bearer_auth(token)
            .header("content-type", "application/x-ndjson")
            .header("logstream-source", SOURCE)
            .header("logstream-batch", batch.to_string())
            .body(body.clone())
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the store never took batch {batch}");
}

/// Follows `id` over SSE through `edges` (the first that answers, in turn), resuming
/// with Last-Event-ID after any break, until `end`: the seqs received, in order.
pub async fn follow_sse(edges: Vec<String>, token: String, id: String, query: String) -> Vec<u64> {
    follow_sse_opened(edges, token, id, query, None).await
}

/// Spawns [`follow_sse`]; the receiver resolves once its stream is open (answered
/// 200: a `tail=N` is fixed then).
pub fn spawn_follow_sse(
    edges: Vec<String>,
    token: String,
    id: String,
    query: String,
) -> (
    tokio::task::JoinHandle<Vec<u64>>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(follow_sse_opened(edges, token, id, query, Some(tx)));
    (task, rx)
}

async fn follow_sse_opened(
    edges: Vec<String>,
    token: String,
    id: String,
    query: String,
    mut opened: Option<tokio::sync::oneshot::Sender<()>>,
) -> Vec<u64> {
    let mut seqs: Vec<u64> = Vec::new();
    let mut last: Option<String> = None;
    let mut turn = 0;
    loop {
        let edge = &edges[turn % edges.len()];
        turn += 1;
        let mut req = client()
            .get(format!("{edge}/v1/deployments/{id}/stream{query}"))
            .bearer_auth(&token)
            .header("accept", "text/event-stream");
        if let Some(l) = &last {
            req = req.header("last-event-id", l);
        }
        let Ok(resp) = req.send().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if resp.status() != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        if let Some(o) = opened.take() {
            let _ = o.send(());
        }
        let mut events = resp.bytes_stream().eventsource();
        while let Some(Ok(ev)) = events.next().await {
            match ev.event.as_str() {
                "line" => {
                    let v: Value = serde_json::from_str(&ev.data).unwrap();
                    seqs.push(v["seq"].as_u64().unwrap());
                    last = Some(ev.id);
                }
                "end" => return seqs,
                "reconnect" => break,
                _ => {}
            }
        }
    }
}

/// A token for tenant `acme` signed with the key in `key` (created if missing).
pub fn mint(key: &std::path::Path, scopes: &[logstream_gateway::auth::Scope]) -> String {
    use logstream_gateway::auth::Authenticator;
    let key = Authenticator::load_or_create_key(key).unwrap();
    Authenticator::hs256(&key, None, None).mint(
        "tester",
        "acme",
        scopes,
        Duration::from_secs(3600),
        None,
    )
}

/// (seq, message) of every line of a history page.
pub fn seq_messages(page: &Value) -> Vec<(u64, String)> {
    page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["seq"].as_u64().unwrap(),
                l["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub async fn complete(store: &str, token: &str, id: &str) {
    let r = client()
        .post(format!("{store}/v1/deployments/{id}/complete"))
        .bearer_auth(token)
        .json(&json!({"status": "succeeded"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}
