//! Log alerts and hotfix redaction (issue 23): `cargo bench -p logstream-gateway --bench
//! alerts`.
//!
//! - Ingest over HTTP (loghub lines, batches of 1,000, 4 producers, 5 s) without rules
//!   and with 20 rules (10 regex `matches`, 5 `errorRatio`, 5 `silence`) over every
//!   deployment, in the same run: the ratio is what evaluating on the ingest path costs.
//! - The engine alone: ns per line for those 20 rules (commits of 1,000 loghub lines).
//! - Hotfix redaction of a completed 200,000-line deployment (a regex matching 1 line in
//!   1,000, and a seq range of 1,000 lines), against reading the whole log once (the
//!   least a rewrite must do); then `verify` of the rewritten log.
//!
//! Medians of 3 runs with min..max. Everything shares this machine's cores.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use logstream_gateway::alerts::Alerts;
use logstream_gateway::auth::Scope;
use logstream_gateway::config::Config;
use logstream_gateway::metrics::Metrics;
use logstream_gateway::server::Running;
use logstream_gateway::store::{
    CommitListener, DeploymentId, Direction, RedactRequest, SystemClock,
};
use logstream_model::alert::AlertsSpec;
use logstream_model::config::AlertingConfig;
use logstream_model::{Filter, Level, LogRecord};

mod common;
use common::{http_ingest, loghub_lines, ndjson_bodies};

const RUNS: usize = 3;

/// 20 rules over every deployment, delivering nowhere (no receivers): the cost measured
/// is the evaluation.
fn rules() -> AlertsSpec {
    let mut t = String::new();
    let patterns = [
        "(?i)exception",
        "(?i)fatal",
        "panicked at",
        "(?i)out of memory",
        "(?i)connection (refused|reset)",
        "(?i)timed? ?out",
        "(?i)permission denied",
        "(?i)failed to",
        "(?i)segfault|core dumped",
        "\\b5[0-9]{2}\\b",
    ];
    for (i, p) in patterns.iter().enumerate() {
        t += &format!(
            "[[rules]]\nname = \"m{i}\"\nmatch = {{ regex = '{p}' }}\ncondition = {{ matches = {{ count = 1000000, window = \"5m\" }} }}\n"
        );
    }
    for i in 0..5 {
        t += &format!(
            "[[rules]]\nname = \"r{i}\"\ncondition = {{ errorRatio = {{ above = 0.99, window = \"5m\" }} }}\n"
        );
    }
    for i in 0..5 {
        t += &format!(
            "[[rules]]\nname = \"s{i}\"\nselector = {{ step = \"deploy-{i}\" }}\ncondition = {{ silence = {{ for = \"1h\" }} }}\n"
        );
    }
    toml::from_str(&t).unwrap()
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

async fn ingest_rate(with_rules: bool, bodies: Arc<Vec<String>>) -> f64 {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::loopback(tmp.path());
    if with_rules {
        config.tenant_alerts.insert("bench".into(), rules());
    }
    let running = Running::start(config).await.unwrap();
    let token = running.state.auth.mint(
        "bench",
        "bench",
        &[Scope::Write],
        Duration::from_secs(3600),
        None,
    );
    let client = reqwest::Client::new();
    let (n, _, el) = http_ingest(
        &client,
        &running.http,
        &token,
        bodies,
        "d",
        Duration::from_secs(5),
    )
    .await;
    running.shutdown().await.unwrap();
    n as f64 / el.as_secs_f64()
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let lines = loghub_lines();
    let bodies = Arc::new(ndjson_bodies(&lines));

    println!("## Log alerts and hotfix redaction (issue 23)\n");
    println!(
        "### Ingest with 20 alert rules vs none (HTTP NDJSON, 4 producers, 5 s each, {RUNS} runs)\n"
    );
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        without.push(ingest_rate(false, bodies.clone()).await);
        with.push(ingest_rate(true, bodies.clone()).await);
    }
    let (w0, w0lo, w0hi) = median(without);
    let (w1, w1lo, w1hi) = median(with);
    println!("| rules | lines/s (median) | min..max |");
    println!("|---|---:|---|");
    println!("| none | {w0:.0} | {w0lo:.0}..{w0hi:.0} |");
    println!(
        "| 20 (10 regex matches, 5 error ratio, 5 silence) | {w1:.0} | {w1lo:.0}..{w1hi:.0} |"
    );
    println!("\nwith rules / without: {:.2}\n", w1 / w0);

    // The engine alone.
    let records: Vec<LogRecord> = lines
        .iter()
        .take(1000)
        .enumerate()
        .map(|(i, m)| LogRecord {
            step: format!("deploy-{}", i % 7),
            level: Level::detect(m),
            message: m.clone(),
            ..LogRecord::default()
        })
        .collect();
    let engine = Alerts::new(
        &BTreeMap::from([("bench".to_owned(), rules())]),
        &AlertingConfig::default(),
        "http://bench".into(),
        Arc::new(SystemClock),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let mut per_line = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let mut n = 0;
        for d in 0..200 {
            engine.committed(
                &DeploymentId::new("bench", format!("d{}", d % 50)),
                &records,
            );
            n += records.len();
        }
        per_line.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
    let (ns, lo, hi) = median(per_line);
    println!("### The engine alone (20 rules, commits of 1,000 loghub lines)\n");
    println!("| ns per line (median) | min..max | ns per line per rule |");
    println!("|---:|---|---:|");
    println!("| {ns:.0} | {lo:.0}..{hi:.0} | {:.1} |\n", ns / 20.0);

    // Hotfix redaction.
    println!("### Hotfix redaction of a completed 200,000-line deployment ({RUNS} runs)\n");
    println!("| operation | ms (median) | min..max | MB/s of log |");
    println!("|---|---:|---|---:|");
    let mut rows: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut size_mb = 0.0;
    for run in 0..RUNS {
        let tmp = tempfile::tempdir().unwrap();
        let running = Running::start(Config::loopback(tmp.path())).await.unwrap();
        let store = &running.state.store;
        let id = DeploymentId::new("bench", "big");
        let log = store.log(&id, true).unwrap().unwrap();
        let mut bytes = 0usize;
        for chunk in 0..200 {
            let batch: Vec<LogRecord> = (0..1000)
                .map(|i| {
                    let k = chunk * 1000 + i;
                    let mut m = lines[k % lines.len()].clone();
                    if k % 1000 == 500 {
                        m = format!("{m} token=leak-{run}-Zq8vXw3kLm");
                    }
                    bytes += m.len();
                    LogRecord {
                        message: m,
                        ..LogRecord::default()
                    }
                })
                .collect();
            log.append(batch, None).unwrap();
        }
        log.complete(logstream_gateway::store::Outcome::Succeeded, 0)
            .unwrap();
        size_mb = bytes as f64 / 1e6;
        let t = Instant::now();
        let mut from = 0;
        loop {
            let page = log
                .read(Direction::Forward, from, &Filter::default(), 5000)
                .unwrap();
            if page.exhausted {
                break;
            }
            from = page.scanned_to + 1;
        }
        rows.entry("read the whole log once (baseline)")
            .or_default()
            .push(t.elapsed().as_secs_f64() * 1e3);
        let req = |seqs, pattern: Option<&str>| RedactRequest {
            seqs,
            pattern: pattern.map(|p| regex::Regex::new(p).unwrap()),
            replacement: "[REDACTED:hotfix]".into(),
            subject: "bench".into(),
            reason: "bench".into(),
        };
        let t = Instant::now();
        let out = store
            .redact(&id, &req(None, Some("leak-[0-9]+-Zq8vXw3kLm")))
            .unwrap();
        assert_eq!(out.lines, 200);
        rows.entry("redact by regex (200 matches, every block)")
            .or_default()
            .push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        store
            .redact(&id, &req(Some((100_001, 101_000)), None))
            .unwrap();
        rows.entry("redact lines 100,001-101,000 (whole)")
            .or_default()
            .push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let report = store.verify(&id).unwrap();
        assert!(report.is_clean(), "{report:?}");
        rows.entry("verify after both (chain + ledger)")
            .or_default()
            .push(t.elapsed().as_secs_f64() * 1e3);
        running.shutdown().await.unwrap();
    }
    for (name, v) in rows {
        let (ms, lo, hi) = median(v);
        println!(
            "| {name} | {ms:.0} | {lo:.0}..{hi:.0} | {:.0} |",
            size_mb / (ms / 1e3)
        );
    }
    println!("\n({size_mb:.1} MB of messages)");
}
