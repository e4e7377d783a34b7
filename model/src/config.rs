//! The gateway's configuration file: the one contract between the operator, which
//! writes it (a ConfigMap per LogStream), and the gateway, which reads it (`--config`).
//!
//! ```text
//! LogStream ──operator builds──> Config ──toml::to_string──> store.toml / edge.toml
//!                                                                  │
//!            gateway: Config::validate <──toml::from_str (deny_unknown_fields)
//! ```
//!
//! Pure data and pure checks: reading the file (and loading the keys it names) is the
//! gateway's. Every field says its default; a missing field takes it, an unknown one is
//! refused by name. Serializing a `Config` and parsing it back gives the same `Config`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The scopes a token (or a ServiceAccount mapping) may carry.
pub const SCOPE_NAMES: [&str; 6] = [
    "logs:write",
    "logs:read",
    "logs:export",
    "logs:admin",
    "admin",
    "audit:write",
];

/// What this process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Store and edge in one process: the embedded default.
    #[default]
    All,
    /// Stores logs, serves ingest and `Tail.Subscribe` (and the HTTP API).
    Store,
    /// The viewer front: forwards HTTP (history, export, SSE, WebSocket) to `upstream`.
    Edge,
}

impl Role {
    /// Every role, in the order `--help` lists them.
    pub const ALL: [Role; 3] = [Role::All, Role::Store, Role::Edge];

    /// The name used in the file, on the command line and in `LOGSTREAM_ROLE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Store => "store",
            Role::Edge => "edge",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not `all`, `store` or `edge`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("role {0:?}: use all, store or edge")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// The gateway's configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// What this process serves. Default: `all`.
    pub role: Role,
    /// Role `edge` only: the store's HTTP base URL, e.g. `http://acme-store.ci.svc:8080`.
    /// Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Role `edge` only: the store's gRPC URL, where the edge holds one live
    /// `Tail.Subscribe` per followed deployment (all over one HTTP/2 connection), e.g.
    /// `http://acme-store.ci.svc:8081`. Default: `upstream`'s host on port 8081.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_grpc: Option<String>,
    /// Role `edge` only: bytes of recent lines kept per followed deployment and shared by
    /// its viewers; a viewer further behind catches up from the store's history.
    /// Default: 8 MiB.
    pub edge_window_bytes: usize,
    /// Role `edge` only: bytes all windows together may hold; with many followed
    /// deployments each window gets its share (at least 64 KiB), so an edge's memory
    /// does not grow with the number of deployments. Default: 256 MiB.
    pub edge_windows_total_bytes: usize,
    /// Seconds a viewer may go without taking what it is sent (a stalled reader, a full
    /// socket) before it is disconnected; its client resumes from its cursor. Default: 30.
    pub slow_viewer_timeout_secs: u64,
    /// HTTP listen address. Default: `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// gRPC listen address. Default: `127.0.0.1:8081`.
    pub grpc_listen: SocketAddr,
    /// Where logs, keys and the audit log live. Default: `./logstream-data`.
    pub data_dir: PathBuf,
    /// Largest accepted request body, after decompression. Default: 64 MiB.
    pub max_body_bytes: usize,
    /// Lines longer than this are split into marked parts. Default: 1 MiB.
    pub max_line_bytes: usize,
    /// Retention when a tenant has no override, e.g. `720h`. Default: `720h` (30 days).
    pub retention: String,
    /// Per-tenant retention overrides, e.g. `{ acme = "168h" }`. Default: none.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tenant_retention: BTreeMap<String, String>,
    /// How often retention runs. Default: `10m`.
    pub retention_interval: String,
    /// A deployment nobody completed that gets no new line for this long is completed
    /// as `timed_out` (its runner died), so followers do not wait forever. Default: `6h`.
    pub deployment_idle_timeout: String,
    /// Per-tenant idle timeout overrides, e.g. `{ acme = "2h" }`. Default: none.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tenant_deployment_idle_timeout: BTreeMap<String, String>,
    /// How long a read, export, stream open or admin action waits for its audit record
    /// to be durable before it is refused as `audit_unavailable` (retryable). Default: `5s`.
    pub audit_wait: String,
    /// Noise (rejected tokens, refused requests) is audited as one record per (action,
    /// client, reason) per this interval, with a count. Default: `10s`.
    pub audit_aggregate_interval: String,
    /// Audit records queued for the writer; when it is full (the disk is failing or too
    /// slow), requests wait `audit_wait` for room, then are refused. Default: 16384.
    pub audit_queue: usize,
    /// Live viewers per tenant across its deployments. Default: 10000.
    pub max_viewers_per_tenant: usize,
    /// Live viewers per deployment. Default: 10000.
    pub max_viewers_per_deployment: usize,
    /// Live streams one token may hold open at once (against runaway clients).
    /// Default: 64.
    pub max_streams_per_token: usize,
    /// Seconds a client has to send a complete HTTP/1 request head before it is
    /// disconnected (slowloris). Default: 30.
    pub header_read_timeout_secs: u64,
    /// Seconds between SSE heartbeats / WebSocket pings. Default: 15.
    pub heartbeat_secs: u64,
    /// Frames a live viewer may fall behind before it is switched to catch-up reads
    /// from the store. Default: 1024.
    pub viewer_queue: usize,
    /// HS256 signing key file (hex or raw bytes). Default: `<data_dir>/dev-signing-key`,
    /// generated on first start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key_file: Option<PathBuf>,
    /// Public keys accepted for RS256/ES256/EdDSA tokens, e.g.
    /// `[[public_keys]] file = "issuer.pem", alg = "RS256", kid = "k1"`. Default: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub public_keys: Vec<PublicKeyConfig>,
    /// A JSON Web Key Set file whose keys are accepted; re-read (at most every 30 s)
    /// when a token names an unknown `kid`. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL whose keys are accepted (an identity provider's), fetched on first use
    /// and re-fetched (at most every 30 s) when a token names an unknown `kid`.
    /// Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Issuers of Kubernetes ServiceAccount tokens (projected, audience `logstream`),
    /// e.g. `[[service_account_issuers]] issuer = "https://kubernetes.default.svc"`.
    /// Keys come from `jwks_url`, or from OIDC discovery at the issuer. Default: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service_account_issuers: Vec<SaIssuerConfig>,
    /// Which ServiceAccounts act for which tenant (what each LogStream allows), e.g.
    /// `[[service_accounts]] namespace = "ci", name = "*", tenant = "acme"`. Default: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<SaMappingConfig>,
    /// Accept HS256 tokens signed with the signing key (the dev default). Turn off in
    /// production when tokens come from an identity provider. Default: true.
    pub accept_hs256: bool,
    /// Expected `aud` claim, if any. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Expected `iss` claim, if any. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// zstd level of stored blocks. Default: 3.
    pub zstd_level: i32,
    /// File descriptors the store may hold open (two per open running deployment; the
    /// least recently used logs are closed and reopen on demand). Default: 0, derived
    /// from the process's `RLIMIT_NOFILE`: what is left after 256 for sockets and the
    /// rest, at least 64.
    pub max_open_files: usize,
    /// Redaction at ingest for tenants without an override. Default: built-ins, stars.
    pub redaction: RedactionConfig,
    /// Per-tenant redaction (what a tenant's LogStream asks for), e.g.
    /// `[tenant_redaction.acme] patterns = [{ name = "ticket", regex = "TICKET-[0-9]{6}" }]`.
    /// Default: none.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tenant_redaction: BTreeMap<String, RedactionConfig>,
    /// Quotas of every tenant without an override. Default: unlimited.
    pub quotas: QuotaLimits,
    /// Per-tenant quota overrides, e.g. `[tenant_quotas.acme] ingest_lines_per_sec = 5000`.
    /// Default: none.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tenant_quotas: BTreeMap<String, QuotaLimits>,
    /// Kafka mode (roles `store` and `all`): ingest is produced to the tenant's topic and
    /// the store replicas consume it in one consumer group. Default: none (one store
    /// holds every deployment; no broker needed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaConfig>,
    /// Every store replica's HTTP base URL (its `kafka.advertise_url`), e.g.
    /// `["http://acme-store-0.acme-store-replicas.ci.svc:8080", ...]`: edges route each
    /// deployment's requests and live streams to the replica that owns it, and replicas
    /// forward what they do not own. Default: none (one store).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub store_replicas: Vec<String>,
    /// The store rolls a deployment's active segment past this size: a sealed segment
    /// is what retention deletes and object storage takes. Default: 64 MiB.
    pub segment_bytes: u64,
    /// ... or past this age, so a long-running deployment's lines are sealed (and
    /// uploaded, with `[object_store]`) at least this often. Default: `1h`.
    pub segment_max_age: String,
    /// Object storage for sealed segments (roles `store` and `all`): each sealed segment
    /// is uploaded, verified, and its local copy kept only within `local_cache_bytes`.
    /// Default: none (every segment stays on local disk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_store: Option<ObjectStoreConfig>,
    /// The MCP server at `/mcp` (issue 22): who may reach it and how much one answer or
    /// one token may take.
    pub mcp: McpConfig,
    /// Log alert rules and receivers per tenant, in the shape of the LogStream's
    /// `spec.alerts` (camelCase keys), e.g. `[[tenant_alerts.acme.rules]] name = "panics"
    /// condition = { matches = { count = 1, window = "5m" } }`. Roles `store` and `all`
    /// evaluate them as lines are stored. Default: none.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tenant_alerts: BTreeMap<String, crate::alert::AlertsSpec>,
    /// How alerts are evaluated and delivered.
    pub alerting: AlertingConfig,
    /// How OTLP (`POST /v1/logs`, gRPC `LogsService/Export`) and Loki push requests
    /// name a line's deployment and step.
    pub compat: CompatConfig,
}

/// `[compat]`: where OTLP log records and Loki push streams carry the deployment and
/// the step their lines belong to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompatConfig {
    /// OTLP attributes naming the deployment, in order of preference; each is looked up
    /// on the log record, then its scope, then its resource. A record with none of them
    /// is refused in the answer's partial success. Default:
    /// `["logstream.deployment", "cicd.pipeline.run.id"]`.
    pub otlp_deployment_attributes: Vec<String>,
    /// OTLP attributes naming the step, looked up like the deployment's; none = no step.
    /// Default: `["logstream.step", "cicd.pipeline.task.name"]`.
    pub otlp_step_attributes: Vec<String>,
    /// The Loki stream label naming the deployment. Default: `deployment`.
    pub loki_deployment_label: String,
    /// The Loki stream label naming the step. Default: `step`.
    pub loki_step_label: String,
}

impl Default for CompatConfig {
    fn default() -> Self {
        CompatConfig {
            otlp_deployment_attributes: vec![
                "logstream.deployment".into(),
                "cicd.pipeline.run.id".into(),
            ],
            otlp_step_attributes: vec!["logstream.step".into(), "cicd.pipeline.task.name".into()],
            loki_deployment_label: "deployment".into(),
            loki_step_label: "step".into(),
        }
    }
}

impl CompatConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, problem: &str| ConfigError {
            field,
            problem: problem.into(),
        };
        if self.otlp_deployment_attributes.is_empty()
            || self
                .otlp_deployment_attributes
                .iter()
                .any(|a| a.trim().is_empty())
        {
            return Err(bad(
                "compat.otlp_deployment_attributes",
                "name at least one attribute, none empty, e.g. [\"logstream.deployment\"]",
            ));
        }
        if self
            .otlp_step_attributes
            .iter()
            .any(|a| a.trim().is_empty())
        {
            return Err(bad(
                "compat.otlp_step_attributes",
                "an attribute name is empty",
            ));
        }
        for (field, label) in [
            ("compat.loki_deployment_label", &self.loki_deployment_label),
            ("compat.loki_step_label", &self.loki_step_label),
        ] {
            let ok = label
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(bad(
                    field,
                    "must be a Prometheus label name, e.g. \"deployment\"",
                ));
            }
        }
        if self.loki_deployment_label == self.loki_step_label {
            return Err(bad(
                "compat.loki_step_label",
                "must differ from compat.loki_deployment_label",
            ));
        }
        Ok(())
    }
}

/// `[alerting]`: evaluation and delivery of every tenant's alert rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// The URL alerts link back to (`externalURL` and `generatorURL` in notifications),
    /// e.g. `https://logs.example.com`. Default: `http://<listen>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_url: Option<String>,
    /// How often windows slide, `for` and silences are checked. Default: `1s`.
    pub evaluation_interval: String,
    /// A firing alert is re-sent to Alertmanager receivers this often (Alertmanager
    /// resolves an alert it stops hearing about). Default: `1m`.
    pub resend_interval: String,
    /// Resolved alerts stay listed by `GET /v1/alerts` this long. Default: `15m`.
    pub resolved_retention: String,
    /// Deployments one rule tracks at once (memory bound: about 1 KiB each); lines of
    /// further deployments are not evaluated by that rule until one ends, and
    /// `logstream_alert_series_dropped_total` counts them. Default: 10000.
    pub max_series_per_rule: usize,
    /// Notifications queued per receiver while it is slow or down; beyond it the oldest
    /// are dropped and counted as failed. Default: 1024.
    pub queue: usize,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        AlertingConfig {
            external_url: None,
            evaluation_interval: "1s".into(),
            resend_interval: "1m".into(),
            resolved_retention: "15m".into(),
            max_series_per_rule: 10_000,
            queue: 1024,
        }
    }
}

impl AlertingConfig {
    /// `evaluation_interval` (validated at start).
    pub fn evaluation_interval(&self) -> Duration {
        duration("alerting.evaluation_interval", &self.evaluation_interval)
            .unwrap_or(Duration::from_secs(1))
    }

    /// `resend_interval` (validated at start).
    pub fn resend_interval(&self) -> Duration {
        duration("alerting.resend_interval", &self.resend_interval)
            .unwrap_or(Duration::from_secs(60))
    }

    /// `resolved_retention` (validated at start).
    pub fn resolved_retention(&self) -> Duration {
        duration("alerting.resolved_retention", &self.resolved_retention)
            .unwrap_or(Duration::from_secs(900))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        duration("alerting.evaluation_interval", &self.evaluation_interval)?;
        duration("alerting.resend_interval", &self.resend_interval)?;
        duration("alerting.resolved_retention", &self.resolved_retention)?;
        if let Some(u) = &self.external_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(ConfigError {
                field: "alerting.external_url",
                problem: format!("{u:?} is not an http(s) URL"),
            });
        }
        if self.max_series_per_rule == 0 {
            return Err(ConfigError {
                field: "alerting.max_series_per_rule",
                problem: "must be at least 1".into(),
            });
        }
        if self.queue == 0 {
            return Err(ConfigError {
                field: "alerting.queue",
                problem: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// `[mcp]`: the Model Context Protocol server at `/mcp` (and `kubectl logstream mcp`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpConfig {
    /// Serve `/mcp`. Default: true.
    pub enabled: bool,
    /// `Host` values `/mcp` answers (an entry without a port matches any port); any
    /// other host is refused (403 `host_not_allowed`), so DNS rebinding fails. Set the
    /// gateway's public name here to serve assistants over the network. Default:
    /// `["localhost", "127.0.0.1", "::1"]`.
    pub allowed_hosts: Vec<String>,
    /// Browser origins (`scheme://host:port`) allowed besides those whose host is in
    /// `allowed_hosts`; a request with another `Origin` is refused (403
    /// `origin_not_allowed`). Default: none.
    pub allowed_origins: Vec<String>,
    /// Lines a logs resource shows and `get_logs` returns when not asked. Default: 100.
    pub default_lines: usize,
    /// Most lines one `get_logs` or `search_logs` answer may ask for. Default: 1000.
    pub max_lines: usize,
    /// Most bytes of lines in one answer; a longer page stops early with a cursor to go
    /// on. Default: 262144 (256 KiB).
    pub max_result_bytes: usize,
    /// MCP sessions one token subject may hold open. Default: 8.
    pub max_sessions_per_token: usize,
    /// Tool calls and resource reads one token subject may have running at once.
    /// Default: 4.
    pub max_calls_per_token: usize,
    /// Longest `wait_for_completion` timeout. Default: `10m`.
    pub max_wait: String,
    /// A subscribed resource is announced as updated at most this often. Default: `1s`.
    pub notify_interval: String,
    /// A session with no request for this long is closed, freeing its slot of
    /// `max_sessions_per_token` (some clients never end their sessions). Default: `30m`.
    pub session_idle_timeout: String,
    /// Most deployments (newest first) one `search_logs` looks through. Default: 50.
    pub search_deployments: usize,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            enabled: true,
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            allowed_origins: Vec::new(),
            default_lines: 100,
            max_lines: 1000,
            max_result_bytes: 256 << 10,
            max_sessions_per_token: 8,
            max_calls_per_token: 4,
            max_wait: "10m".into(),
            notify_interval: "1s".into(),
            session_idle_timeout: "30m".into(),
            search_deployments: 50,
        }
    }
}

impl McpConfig {
    /// `max_wait` (validated at start).
    pub fn max_wait(&self) -> Duration {
        duration("mcp.max_wait", &self.max_wait).unwrap_or(Duration::from_secs(600))
    }

    /// `notify_interval` (validated at start).
    pub fn notify_interval(&self) -> Duration {
        duration("mcp.notify_interval", &self.notify_interval).unwrap_or(Duration::from_secs(1))
    }

    /// `session_idle_timeout` (validated at start).
    pub fn session_idle_timeout(&self) -> Duration {
        duration("mcp.session_idle_timeout", &self.session_idle_timeout)
            .unwrap_or(Duration::from_secs(1800))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, problem: &str| {
            Err(ConfigError {
                field,
                problem: problem.into(),
            })
        };
        duration("mcp.max_wait", &self.max_wait)?;
        duration("mcp.notify_interval", &self.notify_interval)?;
        duration("mcp.session_idle_timeout", &self.session_idle_timeout)?;
        if self.max_lines == 0 || self.max_lines > 5000 {
            return err(
                "mcp.max_lines",
                "must be between 1 and 5000 (a history page)",
            );
        }
        if self.default_lines == 0 || self.default_lines > self.max_lines {
            return err("mcp.default_lines", "must be between 1 and mcp.max_lines");
        }
        if self.max_result_bytes < 4096 {
            return err("mcp.max_result_bytes", "must be at least 4096");
        }
        if self.max_sessions_per_token == 0 {
            return err("mcp.max_sessions_per_token", "must be at least 1");
        }
        if self.max_calls_per_token == 0 {
            return err("mcp.max_calls_per_token", "must be at least 1");
        }
        if self.search_deployments == 0 || self.search_deployments > 1000 {
            return err("mcp.search_deployments", "must be between 1 and 1000");
        }
        if self
            .allowed_hosts
            .iter()
            .any(|h| h.trim().is_empty() || h.contains('/'))
        {
            return err(
                "mcp.allowed_hosts",
                "entries are host names or host:port, e.g. \"logs.example.com\"",
            );
        }
        if let Some(bad) = self.allowed_origins.iter().find(|o| {
            !(o.starts_with("http://") || o.starts_with("https://"))
                || o.trim_end_matches('/').matches('/').count() != 2
        }) {
            return Err(ConfigError {
                field: "mcp.allowed_origins",
                problem: format!(
                    "{bad:?}: use scheme://host[:port], e.g. \"https://ide.example.com\""
                ),
            });
        }
        Ok(())
    }
}

/// `[object_store]`: where sealed segments live for the retention period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectStoreConfig {
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` or
    /// `file:///absolute/path`. Required.
    pub url: String,
    /// Endpoint of an S3-compatible service (MinIO, Ceph, ...), e.g.
    /// `http://minio.storage.svc:9000` (path-style requests). Default: the provider's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3 region. Default: `AWS_REGION` from the environment, else `us-east-1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// A file of `NAME=value` lines with the provider's environment variable names
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `GOOGLE_SERVICE_ACCOUNT`,
    /// `AZURE_STORAGE_ACCOUNT_KEY`, ...), e.g. a mounted Secret. Default: credentials
    /// come from the environment (and the provider's instance credentials).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// Local disk kept for copies of uploaded segments; past it the least recently read
    /// are evicted (they stay readable from object storage). Segments not yet uploaded
    /// are never evicted. Default: 10 GiB.
    pub local_cache_bytes: u64,
    /// How often sealed segments are looked for and uploaded. Default: `10s`.
    pub upload_interval: String,
    /// How often objects that no manifest references (an upload cut short) are
    /// deleted. Default: `1h`.
    pub sweep_interval: String,
    /// An unreferenced object younger than this is left alone (its upload may still be
    /// running). Default: `1h`.
    pub orphan_grace: String,
    /// Timeout of one whole request to object storage, body included: it must cover
    /// moving one segment (`segment_bytes`; 64 MiB in 30 s needs 2.2 MB/s). Default:
    /// `30s`.
    pub request_timeout: String,
}

impl Default for ObjectStoreConfig {
    fn default() -> Self {
        ObjectStoreConfig {
            url: String::new(),
            endpoint: None,
            region: None,
            credentials_file: None,
            local_cache_bytes: 10 << 30,
            upload_interval: "10s".into(),
            sweep_interval: "1h".into(),
            orphan_grace: "1h".into(),
            request_timeout: "30s".into(),
        }
    }
}

impl ObjectStoreConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, problem: String| Err(ConfigError { field, problem });
        let url = self.url.trim();
        let scheme = url.split_once("://").map(|(s, _)| s);
        match scheme {
            Some("s3" | "gs" | "az") => {
                let rest = &url[url.find("://").unwrap_or(0) + 3..];
                if rest.split('/').next().unwrap_or("").is_empty() {
                    return err(
                        "object_store.url",
                        format!("{url:?} names no bucket; use e.g. s3://my-bucket/logstream"),
                    );
                }
            }
            Some("file") => {
                if !url["file://".len()..].starts_with('/') {
                    return err(
                        "object_store.url",
                        format!(
                            "{url:?}: a file URL takes an absolute path, e.g. file:///var/lib/logstream-objects"
                        ),
                    );
                }
            }
            _ => {
                return err(
                    "object_store.url",
                    format!(
                        "{url:?}: use s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or file:///path"
                    ),
                );
            }
        }
        if let Some(e) = &self.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return err(
                "object_store.endpoint",
                format!("{e:?} must be an http:// or https:// URL"),
            );
        }
        if self.endpoint.is_some() && scheme != Some("s3") {
            return err(
                "object_store.endpoint",
                "an endpoint goes with an s3:// URL (an S3-compatible service)".into(),
            );
        }
        if self.local_cache_bytes == 0 {
            return err(
                "object_store.local_cache_bytes",
                "must be positive (segments are written locally before they are uploaded)".into(),
            );
        }
        duration("object_store.upload_interval", &self.upload_interval)?;
        duration("object_store.sweep_interval", &self.sweep_interval)?;
        duration("object_store.orphan_grace", &self.orphan_grace)?;
        duration("object_store.request_timeout", &self.request_timeout)?;
        Ok(())
    }

    pub fn upload_interval(&self) -> Duration {
        duration("object_store.upload_interval", &self.upload_interval)
            .unwrap_or(Duration::from_secs(10))
    }

    pub fn sweep_interval(&self) -> Duration {
        duration("object_store.sweep_interval", &self.sweep_interval)
            .unwrap_or(Duration::from_secs(3600))
    }

    pub fn orphan_grace(&self) -> Duration {
        duration("object_store.orphan_grace", &self.orphan_grace)
            .unwrap_or(Duration::from_secs(3600))
    }

    pub fn request_timeout(&self) -> Duration {
        duration("object_store.request_timeout", &self.request_timeout)
            .unwrap_or(Duration::from_secs(30))
    }
}

/// `[kafka]`: the tenant topics between ingest and the store replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port` separated by commas. Required.
    pub brokers: String,
    /// A tenant's topic is `<topic_prefix><tenant>`. Default: `logstream.`.
    pub topic_prefix: String,
    /// The tenants whose topics this store consumes (and the only ones it takes ingest
    /// for). Required.
    pub tenants: Vec<String>,
    /// The consumer group of the store replicas. Default: `logstream-store`.
    pub group: String,
    /// Partitions of a topic this gateway creates (`create_topics`). Default: 12.
    pub partitions: i32,
    /// Replication factor of a topic this gateway creates. Default: 3.
    pub replication_factor: i32,
    /// Create a missing tenant topic at start (else a missing topic is an error naming
    /// it). Default: true.
    pub create_topics: bool,
    /// Retention of a created topic; at least the store's retention, since a replica
    /// that takes a partition over rebuilds it from the topic. Default: `720h`.
    pub topic_retention: String,
    /// Producer compression: `none`, `gzip`, `snappy`, `lz4` or `zstd`. Default: `zstd`.
    pub compression: String,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`. Default: `plaintext`.
    pub security_protocol: String,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (with a `sasl_*` protocol).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sasl_username: Option<String>,
    /// File holding the SASL password (a mounted Secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sasl_password_file: Option<PathBuf>,
    /// CA bundle that signs the brokers' certificates (with an `ssl` protocol).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_key_file: Option<PathBuf>,
    /// How long ingest waits for the brokers to acknowledge a batch before answering
    /// `unavailable` (retryable). Default: `30s`.
    pub produce_timeout: String,
    /// How long ingest then waits for the owning store to assign the batch its seqs
    /// (the answer's `first_seq`, `last_seq`, `cursor`); after it the answer says
    /// `"applied": false` (the batch is durable in Kafka either way). Default: `5s`.
    pub apply_wait: String,
    /// This replica's HTTP base URL as peers and edges reach it; `{hostname}` is
    /// replaced by the host name. Default: `http://<listen>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_url: Option<String>,
    /// This replica's gRPC URL (edges' live upstreams); `{hostname}` as above. Default:
    /// `advertise_url`'s host on `grpc_listen`'s port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_grpc: Option<String>,
    /// Further librdkafka properties, e.g. `{ "session.timeout.ms" = "10000" }`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            topic_prefix: "logstream.".into(),
            tenants: Vec::new(),
            group: "logstream-store".into(),
            partitions: 12,
            replication_factor: 3,
            create_topics: true,
            topic_retention: "720h".into(),
            compression: "zstd".into(),
            security_protocol: "plaintext".into(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password_file: None,
            ssl_ca_file: None,
            ssl_cert_file: None,
            ssl_key_file: None,
            produce_timeout: "30s".into(),
            apply_wait: "5s".into(),
            advertise_url: None,
            advertise_grpc: None,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, problem: String| Err(ConfigError { field, problem });
        if self.brokers.trim().is_empty() {
            return err(
                "kafka.brokers",
                "set the bootstrap brokers, e.g. brokers = \"kafka-0:9092,kafka-1:9092\"".into(),
            );
        }
        if self.tenants.is_empty() {
            return err(
                "kafka.tenants",
                "name the tenants whose topics this store consumes, e.g. tenants = [\"acme\"]"
                    .into(),
            );
        }
        for t in &self.tenants {
            crate::validate_tenant(t).map_err(|e| ConfigError {
                field: "kafka.tenants",
                problem: e.to_string(),
            })?;
        }
        let legal = |s: &str| {
            !s.is_empty()
                && s.len() <= 200
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        };
        if !legal(&format!("{}x", self.topic_prefix)) {
            return err(
                "kafka.topic_prefix",
                format!(
                    "{:?}: a Kafka topic name takes letters, digits, '.', '_' and '-'",
                    self.topic_prefix
                ),
            );
        }
        if self.group.trim().is_empty() {
            return err("kafka.group", "must not be empty".into());
        }
        if !(1..=10_000).contains(&self.partitions) {
            return err("kafka.partitions", "must be between 1 and 10000".into());
        }
        if !(1..=16).contains(&self.replication_factor) {
            return err(
                "kafka.replication_factor",
                "must be between 1 and 16".into(),
            );
        }
        if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&self.compression.as_str()) {
            return err(
                "kafka.compression",
                format!(
                    "{:?}: use none, gzip, snappy, lz4 or zstd",
                    self.compression
                ),
            );
        }
        let protocol = self.security_protocol.to_ascii_lowercase();
        if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&protocol.as_str()) {
            return err(
                "kafka.security_protocol",
                format!(
                    "{:?}: use plaintext, ssl, sasl_plaintext or sasl_ssl",
                    self.security_protocol
                ),
            );
        }
        if protocol.starts_with("sasl") {
            match self.sasl_mechanism.as_deref() {
                Some("PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") => {}
                other => {
                    return err(
                        "kafka.sasl_mechanism",
                        format!(
                            "{other:?}: with {protocol} use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
                        ),
                    );
                }
            }
            if self.sasl_username.as_deref().unwrap_or("").is_empty()
                || self.sasl_password_file.is_none()
            {
                return err(
                    "kafka.sasl_username",
                    format!("{protocol} needs sasl_username and sasl_password_file"),
                );
            }
        }
        duration("kafka.topic_retention", &self.topic_retention)?;
        duration("kafka.produce_timeout", &self.produce_timeout)?;
        duration("kafka.apply_wait", &self.apply_wait)?;
        for (field, url) in [
            ("kafka.advertise_url", &self.advertise_url),
            ("kafka.advertise_grpc", &self.advertise_grpc),
        ] {
            if let Some(u) = url
                && !u.starts_with("http://")
            {
                return err(field, format!("{u:?} must be http://host:port"));
            }
        }
        Ok(())
    }

    /// How long ingest waits for the brokers' acknowledgement.
    pub fn produce_timeout(&self) -> Duration {
        duration("kafka.produce_timeout", &self.produce_timeout).unwrap_or(Duration::from_secs(30))
    }

    /// How long ingest waits for the owning store to apply a batch.
    pub fn apply_wait(&self) -> Duration {
        duration("kafka.apply_wait", &self.apply_wait).unwrap_or(Duration::from_secs(5))
    }

    /// Topic retention in milliseconds.
    pub fn topic_retention_ms(&self) -> u128 {
        duration("kafka.topic_retention", &self.topic_retention)
            .unwrap_or(Duration::from_secs(30 * 86_400))
            .as_millis()
    }

    /// The topic of `tenant`.
    pub fn topic(&self, tenant: &str) -> String {
        format!("{}{tenant}", self.topic_prefix)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            role: Role::All,
            upstream: None,
            upstream_grpc: None,
            edge_window_bytes: 8 << 20,
            edge_windows_total_bytes: 256 << 20,
            slow_viewer_timeout_secs: 30,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            data_dir: PathBuf::from("logstream-data"),
            max_body_bytes: 64 << 20,
            max_line_bytes: 1 << 20,
            retention: "720h".into(),
            tenant_retention: BTreeMap::new(),
            retention_interval: "10m".into(),
            deployment_idle_timeout: "6h".into(),
            tenant_deployment_idle_timeout: BTreeMap::new(),
            audit_wait: "5s".into(),
            audit_aggregate_interval: "10s".into(),
            audit_queue: 16_384,
            max_viewers_per_tenant: 10_000,
            max_viewers_per_deployment: 10_000,
            max_streams_per_token: 64,
            header_read_timeout_secs: 30,
            heartbeat_secs: 15,
            viewer_queue: 1024,
            signing_key_file: None,
            public_keys: Vec::new(),
            jwks_file: None,
            accept_hs256: true,
            jwks_url: None,
            service_account_issuers: Vec::new(),
            service_accounts: Vec::new(),
            audience: None,
            issuer: None,
            zstd_level: 3,
            max_open_files: 0,
            redaction: RedactionConfig::default(),
            tenant_redaction: BTreeMap::new(),
            quotas: QuotaLimits::default(),
            tenant_quotas: BTreeMap::new(),
            kafka: None,
            object_store: None,
            segment_bytes: 64 << 20,
            segment_max_age: "1h".into(),
            store_replicas: Vec::new(),
            mcp: McpConfig::default(),
            tenant_alerts: BTreeMap::new(),
            alerting: AlertingConfig::default(),
            compat: CompatConfig::default(),
        }
    }
}

/// How lines are redacted at ingest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    /// Use the built-in detectors (AWS, GitHub, Slack, JWT, PEM, passwords, ...).
    /// Default: true.
    pub builtins: bool,
    /// `stars` (keep the public prefix such as `AKIA`, then one `*` per character) or
    /// `label` (`[REDACTED:detector]`). Default: `stars`.
    pub style: String,
    /// Named custom patterns; the whole match (or group 1) is masked. Default: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<NamedPattern>,
}

impl Default for RedactionConfig {
    fn default() -> Self {
        RedactionConfig {
            builtins: true,
            style: "stars".into(),
            patterns: Vec::new(),
        }
    }
}

/// A custom redaction pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPattern {
    /// Detector name in `redaction_state` and metrics: `[a-z0-9_]{1,64}`.
    pub name: String,
    /// Regular expression (Rust `regex` syntax, compiled size at most 1 MiB).
    pub regex: String,
}

impl RedactionConfig {
    /// Compiles the configuration; the error names the bad pattern.
    pub fn build(&self) -> Result<crate::redact::Redactor, String> {
        use crate::redact::{MaskStyle, Redactor};
        let style = match self.style.as_str() {
            "stars" => MaskStyle::Stars,
            "label" => MaskStyle::Label,
            other => return Err(format!("style {other:?} must be stars or label")),
        };
        let patterns: Vec<(String, String)> = self
            .patterns
            .iter()
            .map(|p| (p.name.clone(), p.regex.clone()))
            .collect();
        Redactor::new(self.builtins, &patterns, style).map_err(|e| e.to_string())
    }
}

/// An issuer of ServiceAccount tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaIssuerConfig {
    /// The `iss` claim of its tokens.
    pub issuer: String,
    /// The `aud` its tokens must carry. Default: `logstream`.
    #[serde(default = "default_sa_audience")]
    pub audience: String,
    /// Where its JWKS is; default: OIDC discovery at `<issuer>/.well-known/openid-configuration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// PEM CA bundle to trust for the issuer (the cluster CA in-cluster). Default: the
    /// system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A bearer token file sent when fetching the discovery document and keys (the
    /// pod's own ServiceAccount token in-cluster, where the API server serves them only
    /// to authenticated callers); re-read on every fetch. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

fn default_sa_audience() -> String {
    "logstream".into()
}

/// ServiceAccounts of a namespace acting for a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaMappingConfig {
    /// The ServiceAccounts' namespace.
    pub namespace: String,
    /// Glob over ServiceAccount names. Default: `*`.
    #[serde(default = "default_sa_name")]
    pub name: String,
    /// The tenant they act for.
    pub tenant: String,
    /// Scopes they get, from [`SCOPE_NAMES`]. Default: `["logs:write"]` (collectors and
    /// CI pods push).
    #[serde(default = "default_sa_scopes")]
    pub scopes: Vec<String>,
}

fn default_sa_name() -> String {
    "*".into()
}

fn default_sa_scopes() -> Vec<String> {
    vec!["logs:write".into()]
}

/// One accepted public key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    /// PEM file of the public key.
    pub file: PathBuf,
    /// `RS256`, `RS384`, `RS512`, `PS256`, `ES256`, `ES384` or `EdDSA`.
    pub alg: String,
    /// Key id tokens must name (optional). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

/// Limits of one tenant; 0 means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaLimits {
    /// Lines per second accepted at ingest. Default: 0 (unlimited).
    pub ingest_lines_per_sec: u64,
    /// Message bytes per second accepted at ingest. Default: 0 (unlimited).
    pub ingest_bytes_per_sec: u64,
    /// New deployments per rolling 24 hours. Default: 0 (unlimited).
    pub deployments_per_day: u64,
    /// Bytes of segment files the tenant may keep. Default: 0 (unlimited).
    pub max_stored_bytes: u64,
    /// Deployments not completed yet the tenant may have at once (a new one beyond is
    /// refused with 429 naming this quota). Default: 0 (unlimited).
    #[serde(default)]
    pub max_open_deployments: u64,
}

/// A configuration value that does not make sense, named.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {field}: {problem}")]
pub struct ConfigError {
    pub field: &'static str,
    pub problem: String,
}

fn duration(field: &'static str, s: &str) -> Result<Duration, ConfigError> {
    crate::time::parse_duration(s)
        .filter(|n| *n > 0)
        .map(|n| Duration::from_nanos(n as u64))
        .ok_or_else(|| ConfigError {
            field,
            problem: format!("{s:?} is not a duration; use e.g. 720h, 30m, 90s"),
        })
}

impl Config {
    /// Defaults with both listeners on free loopback ports and data in `data_dir`: an
    /// embedded gateway for tests, benchmarks and local tools.
    pub fn loopback(data_dir: &std::path::Path) -> Config {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Config {
            data_dir: data_dir.to_owned(),
            listen: any,
            grpc_listen: any,
            ..Config::default()
        }
    }

    /// Checks every value the file format cannot: durations, tenants, patterns, scopes,
    /// ranges, and that `upstream` goes with role `edge`. The error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        duration("retention", &self.retention)?;
        self.mcp.validate()?;
        self.compat.validate()?;
        self.alerting.validate()?;
        for (tenant, a) in &self.tenant_alerts {
            crate::validate_tenant(tenant).map_err(|e| ConfigError {
                field: "tenant_alerts",
                problem: e.to_string(),
            })?;
            a.validate().map_err(|e| ConfigError {
                field: "tenant_alerts",
                problem: format!("{tenant}.{e}"),
            })?;
        }
        duration("retention_interval", &self.retention_interval)?;
        for (tenant, r) in &self.tenant_retention {
            crate::validate_tenant(tenant).map_err(|e| ConfigError {
                field: "tenant_retention",
                problem: e.to_string(),
            })?;
            duration("tenant_retention", r)?;
        }
        duration("deployment_idle_timeout", &self.deployment_idle_timeout)?;
        duration("audit_wait", &self.audit_wait)?;
        duration("audit_aggregate_interval", &self.audit_aggregate_interval)?;
        if self.audit_queue == 0 {
            return Err(ConfigError {
                field: "audit_queue",
                problem: "must be at least 1".into(),
            });
        }
        for (tenant, t) in &self.tenant_deployment_idle_timeout {
            crate::validate_tenant(tenant).map_err(|e| ConfigError {
                field: "tenant_deployment_idle_timeout",
                problem: e.to_string(),
            })?;
            duration("tenant_deployment_idle_timeout", t)?;
        }
        self.redaction.build().map_err(|problem| ConfigError {
            field: "redaction",
            problem,
        })?;
        for (tenant, r) in &self.tenant_redaction {
            crate::validate_tenant(tenant).map_err(|e| ConfigError {
                field: "tenant_redaction",
                problem: e.to_string(),
            })?;
            r.build().map_err(|problem| ConfigError {
                field: "tenant_redaction",
                problem: format!("{tenant}: {problem}"),
            })?;
        }
        for m in &self.service_accounts {
            crate::validate_tenant(&m.tenant).map_err(|e| ConfigError {
                field: "service_accounts",
                problem: e.to_string(),
            })?;
            if let Some(bad) = m.scopes.iter().find(|s| !SCOPE_NAMES.contains(&s.as_str())) {
                return Err(ConfigError {
                    field: "service_accounts",
                    problem: format!(
                        "scope {bad:?}: use logs:write, logs:read, logs:export, logs:admin or admin"
                    ),
                });
            }
        }
        for tenant in self.tenant_quotas.keys() {
            crate::validate_tenant(tenant).map_err(|e| ConfigError {
                field: "tenant_quotas",
                problem: e.to_string(),
            })?;
        }
        if self.max_line_bytes < 1024 {
            return Err(ConfigError {
                field: "max_line_bytes",
                problem: "must be at least 1024".into(),
            });
        }
        if self.max_body_bytes < self.max_line_bytes {
            return Err(ConfigError {
                field: "max_body_bytes",
                problem: "must be at least max_line_bytes".into(),
            });
        }
        if self.heartbeat_secs == 0 || self.heartbeat_secs > 300 {
            return Err(ConfigError {
                field: "heartbeat_secs",
                problem: "must be between 1 and 300".into(),
            });
        }
        if self.header_read_timeout_secs == 0 || self.header_read_timeout_secs > 600 {
            return Err(ConfigError {
                field: "header_read_timeout_secs",
                problem: "must be between 1 and 600".into(),
            });
        }
        if self.viewer_queue < 16 {
            return Err(ConfigError {
                field: "viewer_queue",
                problem: "must be at least 16".into(),
            });
        }
        if !(1..=19).contains(&self.zstd_level) {
            return Err(ConfigError {
                field: "zstd_level",
                problem: "must be between 1 and 19".into(),
            });
        }
        match (self.role, &self.upstream) {
            (Role::Edge, None) => {
                return Err(ConfigError {
                    field: "upstream",
                    problem: "role `edge` forwards to a store: set upstream = \"http://<store-service>:8080\"".into(),
                });
            }
            (Role::Edge, Some(_)) if self.edge_window_bytes < 64 << 10 => {
                return Err(ConfigError {
                    field: "edge_window_bytes",
                    problem: "must be at least 65536 (64 KiB)".into(),
                });
            }
            (Role::All | Role::Store, Some(_)) => {
                return Err(ConfigError {
                    field: "upstream",
                    problem:
                        "only role `edge` forwards to an upstream; remove it or set role = \"edge\""
                            .into(),
                });
            }
            _ => {}
        }
        if let Some(k) = &self.kafka {
            if self.role == Role::Edge {
                return Err(ConfigError {
                    field: "kafka",
                    problem: "edges do not consume Kafka: they route to the store replicas (store_replicas); remove [kafka] or set role = \"store\"".into(),
                });
            }
            k.validate()?;
            // A replica that takes a partition over rebuilds it from the topic: the
            // topic must keep what the store keeps.
            let kept = k.tenants.iter().map(|t| self.retention_for(t)).max();
            let topic = Duration::from_millis(k.topic_retention_ms() as u64);
            if kept.is_some_and(|r| topic < r) {
                return Err(ConfigError {
                    field: "kafka.topic_retention",
                    problem: format!(
                        "{} is shorter than the store's retention of these tenants: a replica that takes a partition over rebuilds it from the topic, so the topic must keep at least as long",
                        k.topic_retention
                    ),
                });
            }
        }
        for u in &self.store_replicas {
            if !u.starts_with("http://") || u.len() <= "http://".len() {
                return Err(ConfigError {
                    field: "store_replicas",
                    problem: format!("{u:?} must be http://host:port"),
                });
            }
        }
        if let Some(k) = &self.kafka
            && !self.store_replicas.is_empty()
            && k.advertise_url.is_none()
        {
            return Err(ConfigError {
                field: "kafka.advertise_url",
                problem: "with store_replicas, say how the others reach this replica: its entry in store_replicas, e.g. advertise_url = \"http://{hostname}.acme-store.ci.svc:8080\"".into(),
            });
        }
        if self.segment_bytes < 4096 {
            return Err(ConfigError {
                field: "segment_bytes",
                problem: "must be at least 4096".into(),
            });
        }
        duration("segment_max_age", &self.segment_max_age)?;
        if let Some(o) = &self.object_store {
            if self.role == Role::Edge {
                return Err(ConfigError {
                    field: "object_store",
                    problem: "edges store nothing: remove [object_store] or set role = \"store\""
                        .into(),
                });
            }
            o.validate()?;
        }
        if !self.store_replicas.is_empty() && self.role != Role::Edge && self.kafka.is_none() {
            return Err(ConfigError {
                field: "store_replicas",
                problem: "store replicas share a tenant only through Kafka: add [kafka] or remove store_replicas".into(),
            });
        }
        Ok(())
    }

    /// How old the active segment may get before it is sealed.
    pub fn segment_max_age(&self) -> Duration {
        duration("segment_max_age", &self.segment_max_age).unwrap_or(Duration::from_secs(3600))
    }

    /// Retention of `tenant`.
    pub fn retention_for(&self, tenant: &str) -> Duration {
        let s = self.tenant_retention.get(tenant).unwrap_or(&self.retention);
        duration("retention", s).unwrap_or(Duration::from_secs(30 * 86_400))
    }

    /// How long a served request waits for its audit record.
    pub fn audit_wait(&self) -> Duration {
        duration("audit_wait", &self.audit_wait).unwrap_or(Duration::from_secs(5))
    }

    /// The interval over which audit noise is aggregated.
    pub fn audit_aggregate_interval(&self) -> Duration {
        duration("audit_aggregate_interval", &self.audit_aggregate_interval)
            .unwrap_or(Duration::from_secs(10))
    }

    /// How long a deployment of `tenant` may go without a line before it times out.
    pub fn deployment_idle_timeout_for(&self, tenant: &str) -> Duration {
        let s = self
            .tenant_deployment_idle_timeout
            .get(tenant)
            .unwrap_or(&self.deployment_idle_timeout);
        duration("deployment_idle_timeout", s).unwrap_or(Duration::from_secs(6 * 3600))
    }

    /// The shortest idle timeout of any tenant (how often idle deployments are looked for
    /// follows from it).
    pub fn shortest_deployment_idle_timeout(&self) -> Duration {
        std::iter::once(&self.deployment_idle_timeout)
            .chain(self.tenant_deployment_idle_timeout.values())
            .filter_map(|s| duration("deployment_idle_timeout", s).ok())
            .min()
            .unwrap_or(Duration::from_secs(6 * 3600))
    }

    pub fn retention_interval(&self) -> Duration {
        duration("retention_interval", &self.retention_interval).unwrap_or(Duration::from_secs(600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_bad_values_are_refused_by_name() {
        assert!(
            toml::from_str::<Config>("listn = \"x\"")
                .unwrap_err()
                .to_string()
                .contains("listn")
        );
        assert!(
            toml::from_str::<Config>("[quotas]\ningest_lines = 5")
                .unwrap_err()
                .to_string()
                .contains("ingest_lines")
        );
        let c: Config = toml::from_str("retention = \"forever\"").unwrap();
        assert_eq!(c.validate().unwrap_err().field, "retention");
        let c: Config = toml::from_str("[tenant_retention]\nacme = \"24h\"").unwrap();
        c.validate().unwrap();
        assert_eq!(c.retention_for("acme"), Duration::from_secs(86_400));
        assert_eq!(c.retention_for("other"), Duration::from_secs(720 * 3600));
        let c: Config = toml::from_str("deployment_idle_timeout = \"0s\"").unwrap();
        assert_eq!(c.validate().unwrap_err().field, "deployment_idle_timeout");
        let c: Config = toml::from_str(
            "deployment_idle_timeout = \"2h\"\n[tenant_deployment_idle_timeout]\nacme = \"90s\"",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.deployment_idle_timeout_for("acme"),
            Duration::from_secs(90)
        );
        assert_eq!(
            c.deployment_idle_timeout_for("other"),
            Duration::from_secs(7200)
        );
        assert_eq!(
            c.shortest_deployment_idle_timeout(),
            Duration::from_secs(90)
        );
        assert_eq!(
            Config::default().deployment_idle_timeout_for("x"),
            Duration::from_secs(6 * 3600)
        );
        let c: Config = toml::from_str(
            "[[service_accounts]]\nnamespace = \"ci\"\ntenant = \"acme\"\nscopes = [\"logs:wrte\"]",
        )
        .unwrap();
        assert_eq!(c.validate().unwrap_err().field, "service_accounts");
        for (toml, field) in [
            (
                "[compat]\notlp_deployment_attributes = []",
                "compat.otlp_deployment_attributes",
            ),
            (
                "[compat]\notlp_deployment_attributes = [\" \"]",
                "compat.otlp_deployment_attributes",
            ),
            (
                "[compat]\notlp_step_attributes = [\"\"]",
                "compat.otlp_step_attributes",
            ),
            (
                "[compat]\nloki_deployment_label = \"run-id\"",
                "compat.loki_deployment_label",
            ),
            (
                "[compat]\nloki_step_label = \"1st\"",
                "compat.loki_step_label",
            ),
            (
                "[compat]\nloki_step_label = \"deployment\"",
                "compat.loki_step_label",
            ),
        ] {
            let c: Config = toml::from_str(toml).unwrap();
            assert_eq!(c.validate().unwrap_err().field, field, "{toml}");
        }
    }

    #[test]
    fn an_empty_file_is_the_default_config() {
        assert_eq!(toml::from_str::<Config>("").unwrap(), Config::default());
        Config::default().validate().unwrap();
    }

    /// A config with every field away from its default (and every optional part set).
    fn everything_set() -> Config {
        let redaction = RedactionConfig {
            builtins: false,
            style: "label".into(),
            patterns: vec![NamedPattern {
                name: "ticket".into(),
                regex: "TICKET-[0-9]{6}".into(),
            }],
        };
        let quotas = QuotaLimits {
            ingest_lines_per_sec: 5000,
            ingest_bytes_per_sec: 1 << 20,
            deployments_per_day: 100,
            max_stored_bytes: i64::MAX as u64,
            max_open_deployments: 500,
        };
        Config {
            role: Role::Store,
            upstream: None,
            upstream_grpc: None,
            edge_window_bytes: 1 << 20,
            edge_windows_total_bytes: 64 << 20,
            slow_viewer_timeout_secs: 10,
            listen: "0.0.0.0:9080".parse().unwrap(),
            grpc_listen: "[::1]:9081".parse().unwrap(),
            data_dir: "/data".into(),
            max_body_bytes: 8 << 20,
            max_line_bytes: 4096,
            retention: "168h".into(),
            tenant_retention: BTreeMap::from([("acme".into(), "24h".into())]),
            retention_interval: "1m".into(),
            deployment_idle_timeout: "2h".into(),
            tenant_deployment_idle_timeout: BTreeMap::from([("acme".into(), "30m".into())]),
            audit_wait: "2s".into(),
            audit_aggregate_interval: "1m".into(),
            audit_queue: 1024,
            max_viewers_per_tenant: 7,
            max_viewers_per_deployment: 3,
            max_streams_per_token: 2,
            header_read_timeout_secs: 5,
            heartbeat_secs: 1,
            viewer_queue: 16,
            signing_key_file: Some("/data/signing-key".into()),
            public_keys: vec![
                PublicKeyConfig {
                    file: "/keys/a.pem".into(),
                    alg: "RS256".into(),
                    kid: Some("k1".into()),
                },
                PublicKeyConfig {
                    file: "/keys/b.pem".into(),
                    alg: "EdDSA".into(),
                    kid: None,
                },
            ],
            jwks_file: Some("/keys/jwks.json".into()),
            jwks_url: Some("https://login.example.com/jwks".into()),
            service_account_issuers: vec![SaIssuerConfig {
                issuer: "https://kubernetes.default.svc".into(),
                audience: "other".into(),
                jwks_url: Some("https://kubernetes.default.svc/openid/v1/jwks".into()),
                ca_file: Some("/sa/ca.crt".into()),
                token_file: None,
            }],
            service_accounts: vec![SaMappingConfig {
                namespace: "ci".into(),
                name: "ci-*".into(),
                tenant: "acme".into(),
                scopes: vec!["logs:write".into(), "admin".into()],
            }],
            accept_hs256: false,
            audience: Some("logstream".into()),
            issuer: Some("https://login.example.com".into()),
            zstd_level: 19,
            max_open_files: 4096,
            redaction: redaction.clone(),
            tenant_redaction: BTreeMap::from([
                ("acme".into(), redaction),
                ("beta".into(), RedactionConfig::default()),
            ]),
            quotas,
            tenant_quotas: BTreeMap::from([("acme".into(), QuotaLimits::default())]),
            kafka: Some(KafkaConfig {
                brokers: "kafka-0:9093,kafka-1:9093".into(),
                topic_prefix: "ci.logs.".into(),
                tenants: vec!["acme".into(), "beta".into()],
                group: "logstream-ci".into(),
                partitions: 24,
                replication_factor: 2,
                create_topics: false,
                topic_retention: "168h".into(),
                compression: "lz4".into(),
                security_protocol: "sasl_ssl".into(),
                sasl_mechanism: Some("SCRAM-SHA-512".into()),
                sasl_username: Some("logstream".into()),
                sasl_password_file: Some("/kafka/password".into()),
                ssl_ca_file: Some("/kafka/ca.crt".into()),
                ssl_cert_file: Some("/kafka/tls.crt".into()),
                ssl_key_file: Some("/kafka/tls.key".into()),
                produce_timeout: "10s".into(),
                apply_wait: "2s".into(),
                advertise_url: Some("http://{hostname}.acme-store.ci.svc:9080".into()),
                advertise_grpc: Some("http://{hostname}.acme-store.ci.svc:9081".into()),
                properties: BTreeMap::from([("fetch.max.bytes".into(), "1048576".into())]),
            }),
            store_replicas: vec![
                "http://acme-store-0.acme-store.ci.svc:9080".into(),
                "http://acme-store-1.acme-store.ci.svc:9080".into(),
            ],
            segment_bytes: 16 << 20,
            segment_max_age: "30m".into(),
            mcp: McpConfig {
                enabled: false,
                allowed_hosts: vec!["logs.example.com".into()],
                allowed_origins: vec!["https://ide.example.com".into()],
                default_lines: 50,
                max_lines: 500,
                max_result_bytes: 65536,
                max_sessions_per_token: 2,
                max_calls_per_token: 1,
                max_wait: "5m".into(),
                notify_interval: "2s".into(),
                session_idle_timeout: "10m".into(),
                search_deployments: 20,
            },
            tenant_alerts: BTreeMap::from([(
                "acme".into(),
                toml::from_str(
                    r#"
                    [[receivers]]
                    name = "slack"
                    slack = { urlFile = "/etc/logstream/receivers/slack/url" }
                    [[rules]]
                    name = "stuck"
                    selector = { deployment = "deploy-*", step = "rollout" }
                    condition = { silence = { for = "10m" } }
                    for = "1m"
                    annotations = { summary = "{{ $deployment }} is silent" }
                    repeatInterval = "30m"
                    "#,
                )
                .unwrap(),
            )]),
            alerting: AlertingConfig {
                external_url: Some("https://logs.example.com".into()),
                evaluation_interval: "2s".into(),
                resend_interval: "30s".into(),
                resolved_retention: "5m".into(),
                max_series_per_rule: 100,
                queue: 64,
            },
            compat: CompatConfig {
                otlp_deployment_attributes: vec!["build.id".into()],
                otlp_step_attributes: vec![],
                loki_deployment_label: "run".into(),
                loki_step_label: "job".into(),
            },
            object_store: Some(ObjectStoreConfig {
                url: "s3://ci-logs/acme".into(),
                endpoint: Some("https://minio.storage.svc:9000".into()),
                region: Some("eu-west-1".into()),
                credentials_file: Some(
                    "/var/run/secrets/logstream-object-store/credentials".into(),
                ),
                local_cache_bytes: 5 << 30,
                upload_interval: "5s".into(),
                sweep_interval: "30m".into(),
                orphan_grace: "2h".into(),
                request_timeout: "20s".into(),
            }),
        }
    }

    #[test]
    fn object_store_settings_are_checked_by_name() {
        let bad = |text: &str| {
            let c: Config = toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            c.validate().unwrap_err().field
        };
        let ok: Config = toml::from_str("[object_store]\nurl = \"s3://b/p\"").unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.object_store.unwrap().local_cache_bytes, 10 << 30);
        assert_eq!(bad("[object_store]\n"), "object_store.url");
        assert_eq!(bad("[object_store]\nurl = \"s3:///p\""), "object_store.url");
        assert_eq!(
            bad("[object_store]\nurl = \"ftp://b/p\""),
            "object_store.url"
        );
        assert_eq!(
            bad("[object_store]\nurl = \"file://rel\""),
            "object_store.url"
        );
        assert_eq!(
            bad("[object_store]\nurl = \"gs://b\"\nendpoint = \"http://x\""),
            "object_store.endpoint"
        );
        assert_eq!(
            bad("[object_store]\nurl = \"s3://b\"\nendpoint = \"x:9000\""),
            "object_store.endpoint"
        );
        assert_eq!(
            bad("[object_store]\nurl = \"s3://b\"\nlocal_cache_bytes = 0"),
            "object_store.local_cache_bytes"
        );
        assert_eq!(
            bad("[object_store]\nurl = \"s3://b\"\nupload_interval = \"soon\""),
            "object_store.upload_interval"
        );
        assert_eq!(
            bad("role = \"edge\"\nupstream = \"http://s:8080\"\n[object_store]\nurl = \"s3://b\""),
            "object_store"
        );
    }

    #[test]
    fn kafka_settings_are_checked_by_name() {
        let bad = |text: &str| {
            let c: Config = toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            c.validate().unwrap_err().field
        };
        let base = "[kafka]\nbrokers = \"k:9092\"\ntenants = [\"acme\"]\n";
        let c: Config = toml::from_str(base).unwrap();
        c.validate().unwrap();
        assert_eq!(c.kafka.as_ref().unwrap().topic("acme"), "logstream.acme");
        assert_eq!(bad("[kafka]\ntenants = [\"acme\"]"), "kafka.brokers");
        assert_eq!(bad("[kafka]\nbrokers = \"k:9092\""), "kafka.tenants");
        assert_eq!(
            bad(&format!("{base}topic_prefix = \"a/b\"")),
            "kafka.topic_prefix"
        );
        assert_eq!(bad(&format!("{base}partitions = 0")), "kafka.partitions");
        assert_eq!(
            bad(&format!("{base}compression = \"brotli\"")),
            "kafka.compression"
        );
        assert_eq!(
            bad(&format!("{base}security_protocol = \"tls\"")),
            "kafka.security_protocol"
        );
        assert_eq!(
            bad(&format!("{base}security_protocol = \"sasl_ssl\"")),
            "kafka.sasl_mechanism"
        );
        assert_eq!(
            bad(&format!(
                "{base}security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\""
            )),
            "kafka.sasl_username"
        );
        assert_eq!(
            bad(&format!("{base}produce_timeout = \"soon\"")),
            "kafka.produce_timeout"
        );
        assert_eq!(
            bad(&format!("{base}advertise_url = \"store-0:8080\"")),
            "kafka.advertise_url"
        );
        assert_eq!(
            bad(&format!(
                "role = \"edge\"\nupstream = \"http://s:8080\"\n{base}"
            )),
            "kafka"
        );
        assert_eq!(
            bad("store_replicas = [\"http://a:8080\"]"),
            "store_replicas"
        );
        assert_eq!(
            bad(&format!(
                "store_replicas = [\"a:8080\"]\n{base}advertise_url = \"http://a:8080\""
            )),
            "store_replicas"
        );
    }

    #[test]
    fn serializing_and_parsing_back_gives_the_same_config() {
        let edge = Config {
            role: Role::Edge,
            upstream: Some("http://acme-store.ci.svc:8080".into()),
            ..Config::default()
        };
        for c in [
            Config::default(),
            Config::loopback("/tmp/x".as_ref()),
            edge,
            everything_set(),
        ] {
            c.validate().unwrap();
            let text = toml::to_string(&c).unwrap();
            let back: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(back, c, "{text}");
        }
    }

    #[test]
    fn unset_options_and_empty_maps_are_left_out_of_the_file() {
        let text = toml::to_string(&Config::default()).unwrap();
        for key in [
            "upstream",
            "signing_key_file",
            "public_keys",
            "jwks",
            "issuer",
            "audience",
            "service_account",
            "tenant_",
            "patterns",
        ] {
            assert!(!text.contains(key), "{key} in\n{text}");
        }
    }

    #[test]
    fn roles_parse_from_their_names_only() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
            assert_eq!(r.to_string(), r.as_str());
        }
        assert_eq!("Edge".parse::<Role>(), Err(UnknownRole("Edge".into())));
    }
}
