//! The gateway core: everything the gateway does, in its own types, with no transport.
//! HTTP (`http.rs`) and gRPC (`grpc.rs`) are thin adapters over it; the wiring
//! (`server.rs`) starts them. The core imports neither axum nor tonic.
//!
//! ```text
//! transports ──> access (token -> Principal, scope, deployment id)
//!            ──> ingest (quota, redact, split, append, durable ack) ──> store ──> hub
//!            ──> read (filter, pages)                                       │
//!            ──> viewer (one session: history + live, heartbeats, expiry, shutdown)
//! ```

pub mod access;
pub mod error;
pub mod hotfix;
pub mod ingest;
pub mod links;
pub mod list;
pub mod read;
pub mod viewer;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::{DeploymentId, Store, StoreConfig, StoreHooks, SystemClock};

pub use error::{Error, ErrorKind, Result};

/// The gateway's state, shared by every transport and task.
pub struct Gateway {
    pub config: Config,
    pub store: Store,
    pub hub: Arc<Hub>,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    /// Live viewers per tenant and per deployment, for the limits.
    pub viewer_counts: Arc<Mutex<viewer::ViewerCounts>>,
    /// Flips to true at shutdown: live streams tell their viewers to reconnect.
    pub shutdown: watch::Receiver<bool>,
    /// The redactor of tenants without an override, shared by their deployments.
    pub redactor: Arc<logstream_model::redact::Redactor>,
    /// Per-tenant redactors (`tenant_redaction` in the config).
    pub tenant_redactors: HashMap<String, Arc<logstream_model::redact::Redactor>>,
    /// Per running deployment: registered secret values, `::add-mask::` values and PEM
    /// state. Held in memory only (never stored); dropped when the deployment completes.
    pub redaction:
        Mutex<HashMap<DeploymentId, Arc<Mutex<logstream_model::redact::StreamRedactor>>>>,
    /// The audit log writer.
    pub audit: crate::audit::Audit,
    /// Per-tenant quota book-keeping.
    pub quotas: crate::quota::Quotas,
    /// Kafka mode (`[kafka]`): the producer, the partitions this replica owns.
    pub kafka: Option<Arc<crate::kafka::Kafka>>,
    /// Kafka mode with `store_replicas`: who owns which partition.
    pub replicas: Option<Arc<crate::cluster::Replicas>>,
    /// Log alert rules, evaluated as lines are stored (`tenant_alerts`).
    pub alerts: Arc<crate::alerts::Alerts>,
}

impl Gateway {
    /// Records the audit event of a request about to be served and waits for what `need`
    /// says (taken by the writer, or durable): serve the request only on `Ok` (else it is
    /// refused, retryably, as `audit_unavailable`). `result` is `ok` or what is about to
    /// be done.
    #[allow(clippy::too_many_arguments)]
    pub async fn audit(
        &self,
        need: crate::audit::Need,
        action: &str,
        subject: &str,
        tenant: &str,
        deployment: &str,
        result: &str,
        client: Option<std::net::SocketAddr>,
    ) -> Result<()> {
        self.audit
            .require(
                event(action, subject, tenant, deployment, result, client),
                need,
            )
            .await
    }

    /// Records an audit event nobody waits for (a retention pass, a failure after the
    /// fact); never dropped.
    pub fn audit_later(
        &self,
        action: &str,
        subject: &str,
        tenant: &str,
        deployment: &str,
        result: &str,
    ) {
        self.audit
            .record(event(action, subject, tenant, deployment, result, None));
    }

    /// The redaction state of a deployment (created on first use).
    pub fn stream_redactor(
        &self,
        id: &DeploymentId,
    ) -> Arc<Mutex<logstream_model::redact::StreamRedactor>> {
        self.redaction
            .lock()
            .entry(id.clone())
            .or_insert_with(|| {
                let r = self
                    .tenant_redactors
                    .get(&id.tenant)
                    .unwrap_or(&self.redactor);
                Arc::new(Mutex::new(logstream_model::redact::StreamRedactor::new(
                    r.clone(),
                )))
            })
            .clone()
    }
}

fn event(
    action: &str,
    subject: &str,
    tenant: &str,
    deployment: &str,
    result: &str,
    client: Option<std::net::SocketAddr>,
) -> crate::audit::AuditEvent {
    crate::audit::AuditEvent {
        action: action.to_owned(),
        subject: subject.to_owned(),
        tenant: tenant.to_owned(),
        deployment: deployment.to_owned(),
        result: result.to_owned(),
        client: client.map(|c| c.ip().to_string()).unwrap_or_default(),
        count: None,
        via: String::new(),
    }
}

/// The descriptors the store may use: `configured`, or (0) what the soft
/// `RLIMIT_NOFILE` (as `/proc/self/limits` says; 1024 where it cannot be read) leaves
/// after 256 for sockets, the audit log and the rest; at least 64.
pub fn max_open_files(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .map(|v| v.parse::<usize>().unwrap_or(usize::MAX)) // "unlimited"
        })
        .unwrap_or(1024);
    soft.saturating_sub(256).max(64)
}

impl Gateway {
    /// Opens the store under `config.data_dir` and loads (or creates) the signing key.
    pub fn open(config: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<Arc<Gateway>> {
        config.validate()?;
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(config.viewer_queue, metrics.clone()));
        let clock: Arc<dyn crate::store::Clock> = Arc::new(SystemClock);
        let alerts = Arc::new(crate::alerts::Alerts::new(
            &config.tenant_alerts,
            &config.alerting,
            config
                .alerting
                .external_url
                .clone()
                .unwrap_or_else(|| format!("http://{}", config.listen)),
            clock.clone(),
            metrics.clone(),
        )?);
        let listener: Arc<dyn crate::store::CommitListener> = match alerts.is_empty() {
            true => hub.clone(),
            false => Arc::new(crate::alerts::Listeners(vec![hub.clone(), alerts.clone()])),
        };
        let hooks = StoreHooks {
            clock,
            listener,
            catalog_listener: hub.clone(),
            observer: metrics.clone(),
            faults: Default::default(),
            remote: match &config.object_store {
                Some(o) => Some(Arc::new(crate::objstore::ObjectStorage::open(o)?)),
                None => None,
            },
            // A replica taking a partition over adopts its logs' uploaded segments.
            adopt_remote: config.kafka.is_some(),
        };
        let store_cfg = StoreConfig {
            zstd_level: config.zstd_level,
            segment_bytes: config.segment_bytes,
            segment_age: config.segment_max_age(),
            max_open_logs: max_open_files(config.max_open_files) / 2,
            ..StoreConfig::default()
        };
        let store = Store::open(config.data_dir.join("store"), store_cfg, hooks)?;
        let auth = crate::auth::from_config(&config, true)?;
        let audit = crate::audit::Audit::start(
            &store,
            metrics.clone(),
            config.audit_wait(),
            config.audit_aggregate_interval(),
            config.audit_queue,
        )?;
        let redactor = Arc::new(
            config
                .redaction
                .build()
                .map_err(|e| anyhow::anyhow!("invalid configuration: redaction: {e}"))?,
        );
        let mut tenant_redactors = HashMap::new();
        for (tenant, r) in &config.tenant_redaction {
            let built = r.build().map_err(|e| {
                anyhow::anyhow!("invalid configuration: tenant_redaction: {tenant}: {e}")
            })?;
            tenant_redactors.insert(tenant.clone(), Arc::new(built));
        }
        let quotas = crate::quota::Quotas::new(
            config.quotas,
            config.tenant_quotas.clone().into_iter().collect(),
        );
        let kafka = match &config.kafka {
            Some(k) => Some(Arc::new(crate::kafka::Kafka::connect(
                k,
                &config.data_dir,
                config.listen,
                config.grpc_listen,
            )?)),
            None => None,
        };
        let replicas = match config.store_replicas.is_empty() {
            true => None,
            false => Some(Arc::new(crate::cluster::Replicas::new(
                &config.store_replicas,
            )?)),
        };
        if let Some(k) = &kafka {
            alerts.serve_only_owned(k.clone());
        }
        Ok(Arc::new(Gateway {
            audit,
            quotas,
            kafka,
            replicas,
            alerts,
            config,
            store,
            hub,
            auth,
            metrics,
            viewer_counts: Arc::default(),
            shutdown,
            redactor,
            tenant_redactors,
            redaction: Mutex::new(HashMap::new()),
        }))
    }
}

/// The gateway's shape, checked: the core speaks in its own types (no axum, no tonic, no
/// transport module), and the transports do not import each other.
#[cfg(test)]
mod boundaries {
    use std::path::Path;

    fn sources(dir: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(sources(&path));
            } else if path.extension().is_some_and(|e| e == "rs") {
                let mut text = std::fs::read_to_string(&path).unwrap();
                // Not this test's own list of banned names.
                if let Some(i) = text.find("mod boundaries {") {
                    text.truncate(i);
                }
                out.push((path.display().to_string(), text));
            }
        }
        out
    }

    fn uses(text: &str, needle: &str) -> bool {
        text.lines()
            .map(str::trim_start)
            .filter(|l| !l.starts_with("//"))
            .any(|l| l.contains(needle))
    }

    #[test]
    fn the_core_imports_no_transport() {
        let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
        let files = sources(&core);
        assert!(files.len() >= 5, "found the core's files: {}", files.len());
        for (path, text) in files {
            for banned in [
                "axum",
                "tonic",
                "hyper",
                "crate::http",
                "crate::grpc",
                "crate::server",
            ] {
                assert!(!uses(&text, banned), "{path} uses {banned}");
            }
        }
    }

    #[test]
    fn the_transports_do_not_import_each_other() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let http = std::fs::read_to_string(src.join("http/mod.rs")).unwrap();
        let grpc = std::fs::read_to_string(src.join("grpc.rs")).unwrap();
        assert!(!uses(&http, "crate::grpc"), "http/ imports grpc");
        assert!(!uses(&grpc, "crate::http"), "grpc.rs imports http");
        assert!(!uses(&grpc, "axum"), "grpc.rs uses axum");
    }
}
