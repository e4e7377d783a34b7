//! The engine on a clock the test moves: conditions, `for`, resolve, cooldown, silence,
//! tenancy, templates and the memory bound. Delivery (HTTP) is tested in
//! `tests/gateway/alerts.rs` and against a real Alertmanager in `e2e/alerts`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use logstream_model::alert::AlertsSpec;
use logstream_model::config::AlertingConfig;
use logstream_model::{Level, LogRecord};
use tokio::sync::mpsc;

use super::{Alerts, Notice};
use crate::metrics::Metrics;
use crate::store::{Clock, CommitListener, Completion, DeploymentId, Outcome};

const S: i64 = 1_000_000_000;

struct TestClock(AtomicI64);

impl Clock for TestClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

struct Rig {
    alerts: Alerts,
    clock: Arc<TestClock>,
    /// The first receiver's queue (every rule notifies every receiver by default).
    rx: mpsc::Receiver<Notice>,
}

impl Rig {
    fn new(tenant: &str, rules: &str) -> Rig {
        Rig::with(tenant, rules, AlertingConfig::default())
    }

    fn with(tenant: &str, rules: &str, cfg: AlertingConfig) -> Rig {
        let spec: AlertsSpec = toml::from_str(&format!(
            "[[receivers]]\nname = \"hook\"\nwebhook = {{ url = \"http://127.0.0.1:9/\" }}\n{rules}"
        ))
        .unwrap();
        let clock = Arc::new(TestClock(AtomicI64::new(1_700_000_000 * S)));
        let alerts = Alerts::new(
            &BTreeMap::from([(tenant.to_owned(), spec)]),
            &cfg,
            "http://logs.example".into(),
            clock.clone(),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let rx = alerts.notifier.take_queue(tenant, 0);
        Rig { alerts, clock, rx }
    }

    fn advance(&self, secs: i64) {
        self.clock.0.fetch_add(secs * S, Ordering::SeqCst);
        self.alerts.tick();
    }

    fn push(&self, tenant: &str, deployment: &str, lines: &[(&str, Level, &str)]) {
        let records: Vec<LogRecord> = lines
            .iter()
            .map(|(step, level, msg)| LogRecord {
                step: (*step).into(),
                level: *level,
                message: (*msg).into(),
                ..LogRecord::default()
            })
            .collect();
        self.alerts
            .committed(&DeploymentId::new(tenant, deployment), &records);
    }

    fn state(&self, tenant: &str, deployment: &str) -> Option<String> {
        self.alerts
            .list(tenant)
            .into_iter()
            .find(|a| a.deployment == deployment)
            .map(|a| a.state)
    }

    /// Notices queued since the last call: (firing, deployment).
    fn notices(&mut self) -> Vec<(bool, String)> {
        let mut out = Vec::new();
        while let Ok(n) = self.rx.try_recv() {
            out.push((n.firing, n.labels["deployment"].clone()));
        }
        out
    }
}

const PANICS: &str = r#"
[[rules]]
name = "panics"
selector = { deployment = "build-*", step = "test*" }
match = { regex = "panicked at '([^']*)'" }
condition = { matches = { count = 2, window = "60s" } }
for = "10s"
repeatInterval = "5m"
labels = { severity = "page", where = "{{ $labels.deployment }}" }
annotations = { summary = "{{ $value }} panics in {{ $deployment }}, first: {{ $line }}" }
"#;

#[test]
fn a_rule_fires_after_for_and_resolves_when_its_window_empties() {
    let mut r = Rig::new("acme", PANICS);
    let panic = (
        "test",
        Level::Error,
        "thread 'main' panicked at 'boom', src/lib.rs:3",
    );
    r.push("acme", "build-1", &[panic]);
    assert_eq!(
        r.state("acme", "build-1"),
        None,
        "one match is below the count"
    );
    r.push("acme", "build-1", &[("test", Level::Info, "ok"), panic]);
    assert_eq!(r.state("acme", "build-1").as_deref(), Some("pending"));
    r.advance(5);
    assert_eq!(r.state("acme", "build-1").as_deref(), Some("pending"));
    assert!(r.notices().is_empty(), "nothing is sent while pending");
    r.advance(6);
    assert_eq!(r.state("acme", "build-1").as_deref(), Some("firing"));
    assert_eq!(r.notices(), vec![(true, "build-1".to_owned())]);
    let a = &r.alerts.list("acme")[0];
    assert_eq!(a.labels["alertname"], "panics");
    assert_eq!(a.labels["tenant"], "acme");
    assert_eq!(a.labels["severity"], "page");
    assert_eq!(a.labels["where"], "build-1");
    assert_eq!(
        a.annotations["summary"],
        "2 panics in build-1, first: thread 'main' panicked at 'boom', src/lib.rs:3"
    );
    // The window slides past both matches: resolved, and receivers hear it once.
    r.advance(60);
    assert_eq!(r.state("acme", "build-1").as_deref(), Some("resolved"));
    assert_eq!(r.notices(), vec![(false, "build-1".to_owned())]);
    // Listed as resolved for resolved_retention (15m), then gone.
    r.advance(15 * 60);
    assert_eq!(r.state("acme", "build-1"), None);
    assert!(r.alerts.series.lock().is_empty(), "idle series are dropped");
}

#[test]
fn the_selector_decides_which_lines_count() {
    let r = Rig::new("acme", PANICS);
    let panic = "thread 'main' panicked at 'x'";
    // Another deployment glob, another step: not counted.
    r.push("acme", "deploy-1", &[("test", Level::Error, panic); 3]);
    r.push("acme", "build-2", &[("lint", Level::Error, panic); 3]);
    assert!(r.alerts.list("acme").is_empty());
    r.push("acme", "build-2", &[("test-unit", Level::Error, panic); 2]);
    assert_eq!(r.state("acme", "build-2").as_deref(), Some("pending"));
}

#[test]
fn a_pending_alert_whose_condition_ends_before_for_never_fires() {
    let mut r = Rig::new("acme", PANICS);
    let panic = ("test", Level::Error, "panicked at 'x'");
    r.push("acme", "build-1", &[panic, panic]);
    r.advance(9);
    assert_eq!(r.state("acme", "build-1").as_deref(), Some("pending"));
    r.advance(61);
    assert_eq!(r.state("acme", "build-1"), None);
    assert!(r.notices().is_empty());
}

#[test]
fn cooldown_holds_a_refiring_alert_until_the_repeat_interval() {
    let mut r = Rig::new("acme", &PANICS.replace("for = \"10s\"", "for = \"0s\""));
    let panic = ("test", Level::Error, "panicked at 'x'");
    r.push("acme", "build-1", &[panic, panic]);
    assert_eq!(r.notices(), vec![(true, "build-1".to_owned())]);
    r.advance(61);
    assert_eq!(r.notices(), vec![(false, "build-1".to_owned())]);
    // Fires again 1 minute after the first notice: within the 5m cooldown.
    r.push("acme", "build-1", &[panic, panic]);
    assert_eq!(r.state("acme", "build-1").as_deref(), Some("firing"));
    assert!(r.notices().is_empty(), "held by the cooldown");
    // Still firing when the cooldown ends (kept alive by more panics): sent then.
    for _ in 0..4 {
        r.advance(50);
        r.push("acme", "build-1", &[panic, panic]);
    }
    assert!(
        r.notices().is_empty(),
        "still within 5m of the first notice"
    );
    r.advance(50);
    assert_eq!(r.notices(), vec![(true, "build-1".to_owned())]);
}

#[test]
fn a_firing_alert_is_repeated_every_repeat_interval_and_resent_to_alertmanagers() {
    let mut r = Rig::new("acme", &PANICS.replace("for = \"10s\"", "for = \"0s\""));
    let panic = ("test", Level::Error, "panicked at 'x'");
    r.push("acme", "build-1", &[panic, panic]);
    assert_eq!(r.notices().len(), 1);
    for _ in 0..6 {
        r.advance(50);
        r.push("acme", "build-1", &[panic, panic]);
    }
    // 300 s: one repeat to every receiver; the webhook gets no Alertmanager resends.
    assert_eq!(r.notices(), vec![(true, "build-1".to_owned())]);
}

#[test]
fn error_ratio_needs_its_minimum_volume() {
    let mut r = Rig::new(
        "acme",
        r#"
[[rules]]
name = "errors"
condition = { errorRatio = { above = 0.2, window = "60s", minLines = 10 } }
"#,
    );
    let err = ("build", Level::Error, "E: failed");
    let ok = ("build", Level::Info, "fine");
    r.push("acme", "d", &[err, err, err, ok]);
    assert_eq!(r.state("acme", "d"), None, "4 lines are below minLines");
    r.push("acme", "d", &[ok; 6]);
    // 3 / 10 = 0.3 > 0.2
    assert_eq!(r.state("acme", "d").as_deref(), Some("firing"));
    assert_eq!(r.alerts.list("acme")[0].value, 0.3);
    r.push("acme", "d", &[ok; 10]);
    r.alerts.tick();
    assert_eq!(r.state("acme", "d").as_deref(), Some("resolved"));
    assert_eq!(r.notices().len(), 2);
}

#[test]
fn silence_fires_on_a_stuck_deployment_and_ends_with_a_line_or_completion() {
    let mut r = Rig::new(
        "acme",
        r#"
[[rules]]
name = "stuck"
selector = { step = "deploy" }
condition = { silence = { for = "120s" } }
annotations = { summary = "{{ $deployment }} silent for {{ $value }}s" }
"#,
    );
    r.push("acme", "d1", &[("deploy", Level::Info, "rolling out")]);
    r.push("acme", "d2", &[("deploy", Level::Info, "rolling out")]);
    r.advance(100);
    r.push("acme", "d2", &[("deploy", Level::Info, "still going")]);
    r.advance(30);
    assert_eq!(r.state("acme", "d1").as_deref(), Some("firing"));
    assert_eq!(r.state("acme", "d2"), None, "d2 spoke 30 s ago");
    assert_eq!(
        r.alerts.list("acme")[0].annotations["summary"],
        "d1 silent for 130s"
    );
    r.push("acme", "d1", &[("deploy", Level::Info, "done waiting")]);
    assert_eq!(r.state("acme", "d1").as_deref(), Some("resolved"));
    r.advance(200);
    assert_eq!(r.state("acme", "d2").as_deref(), Some("firing"));
    r.alerts.completed(
        &DeploymentId::new("acme", "d2"),
        &Completion {
            status: Outcome::Succeeded,
            exit_code: 0,
            at: 0,
            last_seq: 3,
        },
    );
    assert_eq!(r.state("acme", "d2").as_deref(), Some("resolved"));
    let n = r.notices();
    assert_eq!(n.iter().filter(|(f, _)| *f).count(), 2);
    assert_eq!(n.iter().filter(|(f, _)| !*f).count(), 2);
}

#[test]
fn a_tenants_rule_never_sees_another_tenants_lines() {
    let mut r = Rig::new("acme", &PANICS.replace("for = \"10s\"", "for = \"0s\""));
    let panic = ("test", Level::Error, "panicked at 'x'");
    r.push("globex", "build-1", &[panic; 5]);
    r.advance(1);
    assert!(r.alerts.list("acme").is_empty());
    assert!(r.alerts.list("globex").is_empty());
    assert!(r.notices().is_empty());
}

#[test]
fn each_rule_tracks_at_most_max_series_deployments() {
    let cfg = AlertingConfig {
        max_series_per_rule: 3,
        ..AlertingConfig::default()
    };
    let r = Rig::with(
        "acme",
        &PANICS.replace("for = \"10s\"", "for = \"0s\""),
        cfg,
    );
    let panic = ("test", Level::Error, "panicked at 'x'");
    for i in 0..10 {
        r.push("acme", &format!("build-{i}"), &[panic, panic]);
    }
    assert_eq!(r.alerts.series.lock().len(), 3);
    assert_eq!(
        r.alerts
            .metrics
            .alert_series_dropped
            .with_label_values(&["acme", "panics"])
            .get(),
        7
    );
}

#[test]
fn a_long_first_line_is_cut_for_templates() {
    let r = Rig::new("acme", &PANICS.replace("for = \"10s\"", "for = \"0s\""));
    let long = format!("panicked at 'x' {}", "é".repeat(2000));
    r.push(
        "acme",
        "build-1",
        &[("test", Level::Error, long.as_str()); 2],
    );
    let summary = &r.alerts.list("acme")[0].annotations["summary"];
    assert!(summary.len() < 700, "{}", summary.len());
    assert!(summary.ends_with('…'));
}

#[test]
fn the_cooldown_outlives_the_resolved_listing() {
    let mut r = Rig::new(
        "acme",
        &PANICS
            .replace("for = \"10s\"", "for = \"0s\"")
            .replace("repeatInterval = \"5m\"", "repeatInterval = \"1h\""),
    );
    let panic = ("test", Level::Error, "panicked at 'x'");
    r.push("acme", "build-1", &[panic, panic]);
    assert_eq!(r.notices().len(), 1);
    r.advance(61); // resolved
    r.advance(16 * 60); // no longer listed
    assert_eq!(r.state("acme", "build-1"), None);
    // 20 minutes after the first notice: still within the hour, held.
    r.advance(2 * 60);
    r.push("acme", "build-1", &[panic, panic]);
    assert_eq!(r.state("acme", "build-1").as_deref(), Some("firing"));
    assert_eq!(
        r.notices(),
        vec![(false, "build-1".to_owned())],
        "only the earlier resolve"
    );
}

#[test]
fn a_redaction_drops_the_kept_line_and_a_deletion_the_series() {
    let r = Rig::new("acme", &PANICS.replace("for = \"10s\"", "for = \"0s\""));
    let panic = ("test", Level::Error, "panicked at 'token s3cr3t'");
    r.push("acme", "build-1", &[panic, panic]);
    let id = DeploymentId::new("acme", "build-1");
    assert!(r.alerts.list("acme")[0].annotations["summary"].contains("s3cr3t"));
    r.alerts.redacted(&id);
    assert!(!r.alerts.list("acme")[0].annotations["summary"].contains("s3cr3t"));
    r.alerts.forget(&id);
    assert!(r.alerts.list("acme").is_empty());
}
