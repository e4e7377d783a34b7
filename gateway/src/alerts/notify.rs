//! Delivery of alert notices to receivers: one queue and one task per receiver, so a
//! slow or failing receiver delays only itself.
//!
//! - Alertmanager: `POST <url>/api/v2/alerts`, a list of `{labels, annotations,
//!   startsAt, endsAt, generatorURL}` (what Prometheus and the Loki ruler send).
//! - webhook: Alertmanager's webhook payload, version 4.
//! - Slack: an incoming-webhook message with one attachment.
//!
//! Timeouts, connection errors, 5xx and 429 are retried with exponential backoff and
//! jitter (6 attempts, about 15 s); any other 4xx is not (the request itself is wrong,
//! and repeating it cannot help). Every outcome is counted per receiver and kept as its
//! status (`GET /v1/alerts`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use logstream_model::alert::{AlertsSpec, ReceiverKind};
use logstream_model::config::AlertingConfig;
use logstream_model::time::format_rfc3339;
use logstream_model::wire::AlertReceiver;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Notice;
use crate::metrics::Metrics;

/// Delivery attempts per notice.
pub const ATTEMPTS: u32 = 6;
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(8);

struct Receiver {
    tenant: String,
    name: String,
    kind: ReceiverKind,
    url: String,
    timeout: Duration,
    status: Mutex<AlertReceiver>,
    tx: mpsc::Sender<Notice>,
    /// Taken by the task that delivers (started by [`Notifier::start`]).
    rx: Mutex<Option<mpsc::Receiver<Notice>>>,
}

/// Every tenant's receivers and their queues.
pub struct Notifier {
    /// Per tenant, its receivers in the spec's order (rules name them by index).
    tenants: BTreeMap<String, Vec<Arc<Receiver>>>,
    external_url: String,
    metrics: Arc<Metrics>,
}

impl Notifier {
    /// Reads each receiver's URL (inline or from its file) and makes its queue.
    pub fn new(
        specs: &BTreeMap<String, AlertsSpec>,
        cfg: &AlertingConfig,
        external_url: String,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Notifier> {
        let mut tenants = BTreeMap::new();
        for (tenant, spec) in specs {
            let mut list = Vec::new();
            for r in &spec.receivers {
                let (kind, e) = r.target().ok_or_else(|| {
                    anyhow::anyhow!("tenant_alerts: {tenant}: receiver {}: set exactly one of alertmanager, webhook, slack", r.name)
                })?;
                let url = match (&e.url, &e.url_file) {
                    (Some(u), _) => u.clone(),
                    (None, Some(f)) => std::fs::read_to_string(f)
                        .map_err(|err| {
                            anyhow::anyhow!(
                                "tenant_alerts: {tenant}: receiver {}: reading urlFile {f}: {err}",
                                r.name
                            )
                        })?
                        .trim()
                        .to_owned(),
                    (None, None) => anyhow::bail!(
                        "tenant_alerts: {tenant}: receiver {}: set url or urlFile (urlSecret is the LogStream's form: the operator mounts the Secret and sets urlFile)",
                        r.name
                    ),
                };
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    anyhow::bail!(
                        "tenant_alerts: {tenant}: receiver {}: the URL is not http(s)",
                        r.name
                    );
                }
                let (tx, rx) = mpsc::channel(cfg.queue);
                list.push(Arc::new(Receiver {
                    tenant: tenant.clone(),
                    name: r.name.clone(),
                    kind,
                    url,
                    timeout: Duration::from_secs(e.timeout_secs),
                    status: Mutex::new(AlertReceiver {
                        name: r.name.clone(),
                        kind: kind.as_str().to_owned(),
                        ..AlertReceiver::default()
                    }),
                    tx,
                    rx: Mutex::new(Some(rx)),
                }));
            }
            tenants.insert(tenant.clone(), list);
        }
        Ok(Notifier {
            tenants,
            external_url,
            metrics,
        })
    }

    /// Starts one delivery task per receiver (once; later calls do nothing).
    pub fn start(&self) {
        let client = reqwest::Client::builder()
            .user_agent(concat!("logstream/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with default settings");
        for r in self.tenants.values().flatten() {
            let Some(rx) = r.rx.lock().take() else {
                continue;
            };
            tokio::spawn(run(
                r.clone(),
                rx,
                client.clone(),
                self.external_url.clone(),
                self.metrics.clone(),
            ));
        }
    }

    /// Queues `n` for its receivers; a full queue drops it (counted as failed).
    pub fn send(&self, n: Notice) {
        let Some(list) = self.tenants.get(&n.tenant) else {
            return;
        };
        for &i in &n.receivers {
            let Some(r) = list.get(i) else { continue };
            if n.alertmanager_only && r.kind != ReceiverKind::Alertmanager {
                continue;
            }
            if r.tx.try_send(n.clone()).is_err() {
                failed(
                    r,
                    &self.metrics,
                    "the queue is full: the receiver is too slow or down; this notice was dropped"
                        .into(),
                );
            }
        }
    }

    /// Takes the queue of `tenant`'s receiver `i` (tests read what it is sent).
    #[cfg(test)]
    pub(super) fn take_queue(&self, tenant: &str, i: usize) -> mpsc::Receiver<Notice> {
        self.tenants[tenant][i]
            .rx
            .lock()
            .take()
            .expect("not started")
    }

    /// The tenant's receivers and how delivery to them goes.
    pub fn status(&self, tenant: &str) -> Vec<AlertReceiver> {
        self.tenants
            .get(tenant)
            .map(|l| l.iter().map(|r| r.status.lock().clone()).collect())
            .unwrap_or_default()
    }
}

fn failed(r: &Receiver, metrics: &Metrics, why: String) {
    tracing::warn!(tenant = %r.tenant, receiver = %r.name, error = %why, "alert notification failed");
    metrics
        .alert_notifications
        .with_label_values(&[&r.tenant, &r.name, "failed"])
        .inc();
    let mut s = r.status.lock();
    s.failed += 1;
    s.last_error = Some(why);
    s.last_error_at = Some(format_rfc3339(now_ns()));
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

async fn run(
    r: Arc<Receiver>,
    mut rx: mpsc::Receiver<Notice>,
    client: reqwest::Client,
    external_url: String,
    metrics: Arc<Metrics>,
) {
    while let Some(n) = rx.recv().await {
        let (url, body) = request(&r, &n, &external_url);
        match deliver(&client, &url, &body, r.timeout).await {
            Ok(()) => {
                metrics
                    .alert_notifications
                    .with_label_values(&[&r.tenant, &r.name, "sent"])
                    .inc();
                let mut s = r.status.lock();
                s.sent += 1;
                s.last_sent_at = Some(format_rfc3339(now_ns()));
            }
            Err(why) => failed(&r, &metrics, why),
        }
    }
}

/// What a failure may say about where it went: scheme and host only. A receiver URL
/// can be a credential (a Slack webhook's path, `user:pass@`), and failures are shown to
/// every reader of the tenant's alerts and logged.
fn shown(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}", u.scheme(), u.host_str().unwrap_or("?")),
        Err(_) => "the receiver".into(),
    }
}

/// Posts `body` until it is taken, a 4xx (other than 429) refuses it, or the attempts
/// are used up.
async fn deliver(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
    timeout: Duration,
) -> Result<(), String> {
    let mut last = String::new();
    let host = shown(url);
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            let jitter: f64 = rand::random();
            tokio::time::sleep(logstream_model::retry::backoff(
                attempt - 1,
                BACKOFF_BASE,
                BACKOFF_CAP,
                jitter,
            ))
            .await;
        }
        match client.post(url).timeout(timeout).json(body).send().await {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => {
                let status = resp.status();
                let text: String = resp
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect();
                last = format!("{host} answered {status}: {}", text.trim());
                if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
                    return Err(format!("{last} (not retried: the request was refused)"));
                }
            }
            Err(e) if e.is_timeout() => last = format!("{host}: no answer within {timeout:?}"),
            Err(e) => last = format!("{host}: {}", e.without_url()),
        }
    }
    Err(format!("{last} (gave up after {ATTEMPTS} attempts)"))
}

/// The URL and JSON body of one notice for receiver `r`.
fn request(r: &Receiver, n: &Notice, external_url: &str) -> (String, Value) {
    let status = if n.firing { "firing" } else { "resolved" };
    match r.kind {
        ReceiverKind::Alertmanager => (
            format!("{}/api/v2/alerts", r.url.trim_end_matches('/')),
            json!([{
                "labels": n.labels,
                "annotations": n.annotations,
                "startsAt": format_rfc3339(n.starts_at),
                "endsAt": format_rfc3339(n.ends_at),
                "generatorURL": n.generator_url,
            }]),
        ),
        ReceiverKind::Webhook => {
            let group: BTreeMap<&str, &str> = n
                .labels
                .iter()
                .filter(|(k, _)| ["alertname", "deployment"].contains(&k.as_str()))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let group_key = format!(
                "{{}}:{{{}}}",
                group
                    .iter()
                    .map(|(k, v)| format!("{k}={v:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            (
                r.url.clone(),
                json!({
                    "version": "4",
                    "groupKey": group_key,
                    "truncatedAlerts": 0,
                    "status": status,
                    "receiver": r.name,
                    "groupLabels": group,
                    "commonLabels": n.labels,
                    "commonAnnotations": n.annotations,
                    "externalURL": external_url,
                    "alerts": [{
                        "status": status,
                        "labels": n.labels,
                        "annotations": n.annotations,
                        "startsAt": format_rfc3339(n.starts_at),
                        // Alertmanager's zero time for an alert still firing.
                        "endsAt": if n.firing { "0001-01-01T00:00:00Z".to_owned() } else { format_rfc3339(n.ends_at) },
                        "generatorURL": n.generator_url,
                        "fingerprint": fingerprint(&n.labels),
                    }],
                }),
            )
        }
        ReceiverKind::Slack => {
            let name = n.labels.get("alertname").map(String::as_str).unwrap_or("");
            let deployment = n.labels.get("deployment").map(String::as_str).unwrap_or("");
            let text = n
                .annotations
                .get("summary")
                .or_else(|| n.annotations.get("description"))
                .cloned()
                .unwrap_or_default();
            let fields: Vec<Value> = n
                .labels
                .iter()
                .filter(|(k, _)| k.as_str() != "alertname")
                .map(|(k, v)| json!({"title": k, "value": v, "short": true}))
                .collect();
            (
                r.url.clone(),
                json!({
                    "text": format!("[{}] {name}: {deployment}", status.to_uppercase()),
                    "attachments": [{
                        "color": if n.firing { "danger" } else { "good" },
                        "title": format!("{name} ({deployment})"),
                        "title_link": n.generator_url,
                        "text": text,
                        "fields": fields,
                        "ts": n.starts_at / 1_000_000_000,
                    }],
                }),
            )
        }
    }
}

/// Alertmanager's fingerprint of a label set: FNV-1a 64 over the sorted names and
/// values, each followed by 0xff.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}
