//! Log alerts (issue 23) from outside: rules in the config fire on pushed lines, every
//! kind of receiver gets its payload over real HTTP (a recording server here), 5xx is
//! retried and 4xx is not, `GET /v1/alerts` is tenant-scoped, metrics count. A real
//! Alertmanager is run against the binary by `e2e/alerts`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use logstream_gateway::auth::Scope;
use logstream_gateway::testkit::{TestGateway, client, loopback_listener};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// A receiver that records every request per path and answers each path from a plan
/// (a list of statuses, the last one repeated).
#[derive(Clone, Default)]
struct Recorder {
    got: Arc<Mutex<HashMap<String, Vec<Value>>>>,
    plan: Arc<HashMap<String, Vec<u16>>>,
    notify: Arc<tokio::sync::Notify>,
}

impl Recorder {
    async fn start(plan: &[(&str, &[u16])]) -> (Recorder, String) {
        let rec = Recorder {
            plan: Arc::new(
                plan.iter()
                    .map(|(p, s)| ((*p).to_owned(), s.to_vec()))
                    .collect(),
            ),
            ..Recorder::default()
        };
        async fn take(
            State(r): State<Recorder>,
            Path(path): Path<String>,
            body: axum::Json<Value>,
        ) -> StatusCode {
            let n = {
                let mut got = r.got.lock();
                let list = got.entry(path.clone()).or_default();
                list.push(body.0);
                list.len()
            };
            r.notify.notify_waiters();
            let plan = r.plan.get(&path).cloned().unwrap_or_else(|| vec![200]);
            let status = plan.get(n - 1).or(plan.last()).copied().unwrap_or(200);
            StatusCode::from_u16(status).unwrap()
        }
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(take))
            .with_state(rec.clone());
        let listener = loopback_listener().await;
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (rec, base)
    }

    fn requests(&self, path: &str) -> Vec<Value> {
        self.got.lock().get(path).cloned().unwrap_or_default()
    }

    /// Waits until `path` has received `n` requests (10 s at most).
    async fn wait_for(&self, path: &str, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.notify.notified();
            let got = self.requests(path);
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::timeout_at(deadline, notified).await.is_ok(),
                "{path}: {} requests, waited for {n}",
                got.len()
            );
        }
    }
}

fn rules(base: &str) -> String {
    format!(
        r#"
[[receivers]]
name = "hook"
webhook = {{ url = "{base}/hook" }}
[[receivers]]
name = "chat"
slack = {{ url = "{base}/slack" }}
[[receivers]]
name = "am"
alertmanager = {{ url = "{base}/am" }}
[[receivers]]
name = "flaky"
webhook = {{ url = "{base}/flaky" }}
[[receivers]]
name = "refusing"
webhook = {{ url = "{base}/refusing" }}

[[rules]]
name = "disk-full"
selector = {{ deployment = "build-*" }}
match = {{ contains = "No space left on device" }}
condition = {{ matches = {{ count = 1, window = "2s" }} }}
labels = {{ severity = "critical" }}
annotations = {{ summary = "{{{{ $labels.deployment }}}}: {{{{ $line }}}}" }}
"#
    )
}

async fn gateway(dir: &std::path::Path, base: &str) -> TestGateway {
    let spec = toml::from_str(&rules(base)).unwrap();
    TestGateway::start_with(dir, |c| {
        c.tenant_alerts.insert("acme".into(), spec);
        c.alerting.evaluation_interval = "100ms".into();
        c.alerting.external_url = Some("https://logs.example".into());
    })
    .await
}

#[tokio::test]
async fn a_rule_notifies_every_kind_of_receiver_and_resolves() {
    let (rec, base) = Recorder::start(&[("flaky", &[503, 502, 200]), ("refusing", &[400])]).await;
    let tmp = tempfile::tempdir().unwrap();
    let gw = gateway(tmp.path(), &base).await;
    let token = gw.rw();
    // A secret on the matching line is masked before the rule sees it.
    gw.push(
        &token,
        "build-7",
        &["cp: write error: No space left on device (token ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8)".into()],
    )
    .await;

    let hook = rec.wait_for("hook", 1).await;
    let h = &hook[0];
    assert_eq!(h["version"], "4");
    assert_eq!(h["status"], "firing");
    assert_eq!(h["receiver"], "hook");
    assert_eq!(h["externalURL"], "https://logs.example");
    assert_eq!(
        h["groupLabels"],
        json!({"alertname": "disk-full", "deployment": "build-7"})
    );
    assert_eq!(h["commonLabels"]["severity"], "critical");
    assert!(
        h["groupKey"]
            .as_str()
            .unwrap()
            .contains("alertname=\"disk-full\"")
    );
    let a = &h["alerts"][0];
    assert_eq!(a["status"], "firing");
    assert_eq!(a["labels"]["tenant"], "acme");
    assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(
        a["generatorURL"],
        "https://logs.example/deployments/build-7"
    );
    assert_eq!(a["fingerprint"].as_str().unwrap().len(), 16);
    let summary = a["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("build-7: cp: write error: No space left"),
        "{summary}"
    );
    assert!(
        !summary.contains("A1b2C3d4E5f6G7h8I9j0"),
        "the line is redacted: {summary}"
    );

    let slack = rec.wait_for("slack", 1).await;
    assert_eq!(slack[0]["text"], "[FIRING] disk-full: build-7");
    assert_eq!(slack[0]["attachments"][0]["color"], "danger");

    let am = rec.wait_for("am/api/v2/alerts", 1).await;
    let alert = &am[0][0];
    assert_eq!(alert["labels"]["alertname"], "disk-full");
    assert!(alert["startsAt"].as_str().unwrap() < alert["endsAt"].as_str().unwrap());

    // 503, 502, then taken: three requests, one delivery.
    assert_eq!(rec.wait_for("flaky", 3).await.len(), 3);
    // A 400 is never retried: one request, counted as failed.
    rec.wait_for("refusing", 1).await;

    let (status, body) = gw.get_json(&token, "/v1/alerts").await;
    assert_eq!(status, 200, "{body}");
    let alerts = body["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{body}");
    assert_eq!(alerts[0]["rule"], "disk-full");
    assert_eq!(alerts[0]["deployment"], "build-7");
    assert_eq!(alerts[0]["state"], "firing");
    assert_eq!(alerts[0]["value"], 1.0);
    assert!(alerts[0]["since"].as_str().unwrap().ends_with('Z'));
    let receiver = |name: &str| {
        body["receivers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap()
    };
    let refusing = receiver("refusing");
    assert_eq!(refusing["failed"], 1, "{refusing}");
    assert!(
        refusing["last_error"].as_str().unwrap().contains("400"),
        "{refusing}"
    );
    // Where it went is shown as scheme and host only: a receiver URL can be a credential.
    assert!(
        !refusing["last_error"]
            .as_str()
            .unwrap()
            .contains("/refusing"),
        "{refusing}"
    );
    assert_eq!(receiver("flaky")["sent"], 1);
    assert_eq!(receiver("hook")["kind"], "webhook");

    // Another tenant sees none of it; a token limited to other deployments neither.
    let other = gw.token("globex", &[Scope::Read]);
    let (_, body) = gw.get_json(&other, "/v1/alerts").await;
    assert_eq!(body["alerts"], json!([]));
    assert_eq!(body["receivers"], json!([]));

    // The 2 s window empties: resolved, with endsAt.
    let hook = rec.wait_for("hook", 2).await;
    assert_eq!(hook[1]["status"], "resolved");
    assert_ne!(hook[1]["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    let (_, body) = gw.get_json(&token, "/v1/alerts?state=resolved").await;
    assert_eq!(body["alerts"][0]["state"], "resolved", "{body}");
    let (_, body) = gw.get_json(&token, "/v1/alerts?state=firing").await;
    assert_eq!(body["alerts"], json!([]));

    // The refusing receiver was still asked only once per notice (2 notices).
    assert_eq!(rec.requests("refusing").len(), 2);
    assert_eq!(
        gw.metric("logstream_alert_notifications_total{receiver=\"refusing\",result=\"failed\",tenant=\"acme\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(
        gw.metric("logstream_alert_rule_matches_total{rule=\"disk-full\",tenant=\"acme\"}")
            .await,
        Some(1.0)
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_alert_queries_are_refused_by_name() {
    let (_rec, base) = Recorder::start(&[]).await;
    let tmp = tempfile::tempdir().unwrap();
    let gw = gateway(tmp.path(), &base).await;
    let token = gw.rw();
    for (q, want) in [
        ("?state=burning", "state \\\"burning\\\""),
        ("?limit=3", "unknown parameter \\\"limit\\\""),
    ] {
        let r = client()
            .get(format!("{}/v1/alerts{q}", gw.http))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let text = r.text().await.unwrap();
        assert!(text.contains(want), "{text}");
    }
    let (status, _) = gw.get_json("nonsense", "/v1/alerts").await;
    assert_eq!(status, 401);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_bad_rule_stops_the_gateway_at_start_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = logstream_gateway::config::Config::loopback(tmp.path());
    let mut spec: logstream_model::alert::AlertsSpec =
        toml::from_str(&rules("http://127.0.0.1:9")).unwrap();
    spec.rules[0].line_match.as_mut().unwrap().contains = None;
    spec.rules[0].line_match.as_mut().unwrap().regex = Some("(unclosed".into());
    config.tenant_alerts.insert("acme".into(), spec);
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("tenant_alerts") && err.contains("acme.rules[0].match.regex"),
        "{err}"
    );
}
