//! Gateway configuration: a TOML file (`--config`), then flags and `LOGSTREAM_*`
//! environment variables on top. Validated at start with a message naming the field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// What this process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
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

/// The gateway's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// What this process serves. Default: `all`.
    pub role: Role,
    /// Role `edge` only: the store's HTTP base URL, e.g. `http://acme-store.ci.svc:8080`.
    /// Default: none.
    pub upstream: Option<String>,
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
    pub tenant_retention: BTreeMap<String, String>,
    /// How often retention runs. Default: `10m`.
    pub retention_interval: String,
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
    pub signing_key_file: Option<PathBuf>,
    /// Public keys accepted for RS256/ES256/EdDSA tokens, e.g.
    /// `[[public_keys]] file = "issuer.pem", alg = "RS256", kid = "k1"`. Default: none.
    pub public_keys: Vec<PublicKeyConfig>,
    /// A JSON Web Key Set file whose keys are accepted; re-read (at most every 30 s)
    /// when a token names an unknown `kid`. Default: none.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL whose keys are accepted (an identity provider's), fetched on first use
    /// and re-fetched (at most every 30 s) when a token names an unknown `kid`.
    /// Default: none.
    pub jwks_url: Option<String>,
    /// Issuers of Kubernetes ServiceAccount tokens (projected, audience `logstream`),
    /// e.g. `[[service_account_issuers]] issuer = "https://kubernetes.default.svc"`.
    /// Keys come from `jwks_url`, or from OIDC discovery at the issuer. Default: none.
    pub service_account_issuers: Vec<SaIssuerConfig>,
    /// Which ServiceAccounts act for which tenant (what each LogStream allows), e.g.
    /// `[[service_accounts]] namespace = "ci", name = "*", tenant = "acme"`. Default: none.
    pub service_accounts: Vec<SaMappingConfig>,
    /// Accept HS256 tokens signed with the signing key (the dev default). Turn off in
    /// production when tokens come from an identity provider. Default: true.
    pub accept_hs256: bool,
    /// Expected `aud` claim, if any. Default: none.
    pub audience: Option<String>,
    /// Expected `iss` claim, if any. Default: none.
    pub issuer: Option<String>,
    /// zstd level of stored blocks. Default: 3.
    pub zstd_level: i32,
    /// Redaction at ingest for tenants without an override. Default: built-ins, stars.
    pub redaction: RedactionConfig,
    /// Per-tenant redaction (what a tenant's LogStream asks for), e.g.
    /// `[tenant_redaction.acme] patterns = [{ name = "ticket", regex = "TICKET-[0-9]{6}" }]`.
    /// Default: none.
    pub tenant_redaction: BTreeMap<String, RedactionConfig>,
    /// Quotas of every tenant without an override. Default: unlimited.
    pub quotas: crate::quota::QuotaLimits,
    /// Per-tenant quota overrides, e.g. `[tenant_quotas.acme] ingest_lines_per_sec = 5000`.
    /// Default: none.
    pub tenant_quotas: BTreeMap<String, crate::quota::QuotaLimits>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            role: Role::All,
            upstream: None,
            listen: "127.0.0.1:8080".parse().expect("literal"),
            grpc_listen: "127.0.0.1:8081".parse().expect("literal"),
            data_dir: PathBuf::from("logstream-data"),
            max_body_bytes: 64 << 20,
            max_line_bytes: 1 << 20,
            retention: "720h".into(),
            tenant_retention: BTreeMap::new(),
            retention_interval: "10m".into(),
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
            redaction: RedactionConfig::default(),
            tenant_redaction: BTreeMap::new(),
            quotas: crate::quota::QuotaLimits::default(),
            tenant_quotas: BTreeMap::new(),
        }
    }
}

/// How lines are redacted at ingest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    /// Use the built-in detectors (AWS, GitHub, Slack, JWT, PEM, passwords, ...).
    /// Default: true.
    pub builtins: bool,
    /// `stars` (keep the public prefix such as `AKIA`, then one `*` per character) or
    /// `label` (`[REDACTED:detector]`). Default: `stars`.
    pub style: String,
    /// Named custom patterns; the whole match (or group 1) is masked. Default: none.
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPattern {
    /// Detector name in `redaction_state` and metrics: `[a-z0-9_]{1,64}`.
    pub name: String,
    /// Regular expression (Rust `regex` syntax, compiled size at most 1 MiB).
    pub regex: String,
}

impl RedactionConfig {
    /// Compiles the configuration; the error names the bad pattern.
    pub fn build(&self) -> Result<logstream_model::redact::Redactor, String> {
        use logstream_model::redact::{MaskStyle, Redactor};
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaIssuerConfig {
    /// The `iss` claim of its tokens.
    pub issuer: String,
    /// The `aud` its tokens must carry. Default: `logstream`.
    #[serde(default = "default_sa_audience")]
    pub audience: String,
    /// Where its JWKS is; default: OIDC discovery at `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// PEM CA bundle to trust for the issuer (the cluster CA in-cluster). Default: the
    /// system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A bearer token file sent when fetching the discovery document and keys (the
    /// pod's own ServiceAccount token in-cluster, where the API server serves them only
    /// to authenticated callers); re-read on every fetch. Default: none.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

fn default_sa_audience() -> String {
    "logstream".into()
}

/// ServiceAccounts of a namespace acting for a tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaMappingConfig {
    pub namespace: String,
    /// Glob over ServiceAccount names. Default: `*`.
    #[serde(default = "default_sa_name")]
    pub name: String,
    pub tenant: String,
    /// Default: `["logs:write"]` (collectors and CI pods push).
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    /// PEM file of the public key.
    pub file: PathBuf,
    /// `RS256`, `RS384`, `RS512`, `PS256`, `ES256`, `ES384` or `EdDSA`.
    pub alg: String,
    /// Key id tokens must name (optional).
    #[serde(default)]
    pub kid: Option<String>,
}

/// A configuration value that does not make sense, named.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {field}: {problem}")]
pub struct ConfigError {
    pub field: &'static str,
    pub problem: String,
}

fn duration(field: &'static str, s: &str) -> Result<Duration, ConfigError> {
    logstream_model::time::parse_duration(s)
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
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        Config {
            data_dir: data_dir.to_owned(),
            listen: any,
            grpc_listen: any,
            ..Config::default()
        }
    }

    /// Reads a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            field: "--config",
            problem: format!("{}: {e}", path.display()),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError {
            field: "--config",
            problem: format!("{}: {e}", path.display()),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        duration("retention", &self.retention)?;
        duration("retention_interval", &self.retention_interval)?;
        for (tenant, r) in &self.tenant_retention {
            logstream_model::validate_tenant(tenant).map_err(|e| ConfigError {
                field: "tenant_retention",
                problem: e.to_string(),
            })?;
            duration("tenant_retention", r)?;
        }
        self.redaction.build().map_err(|problem| ConfigError {
            field: "redaction",
            problem,
        })?;
        for (tenant, r) in &self.tenant_redaction {
            logstream_model::validate_tenant(tenant).map_err(|e| ConfigError {
                field: "tenant_redaction",
                problem: e.to_string(),
            })?;
            r.build().map_err(|problem| ConfigError {
                field: "tenant_redaction",
                problem: format!("{tenant}: {problem}"),
            })?;
        }
        for m in &self.service_accounts {
            logstream_model::validate_tenant(&m.tenant).map_err(|e| ConfigError {
                field: "service_accounts",
                problem: e.to_string(),
            })?;
            if let Some(bad) = m
                .scopes
                .iter()
                .find(|s| crate::auth::Scope::parse(s).is_none())
            {
                return Err(ConfigError {
                    field: "service_accounts",
                    problem: format!(
                        "scope {bad:?}: use logs:write, logs:read, logs:export or admin"
                    ),
                });
            }
        }
        for tenant in self.tenant_quotas.keys() {
            logstream_model::validate_tenant(tenant).map_err(|e| ConfigError {
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
        Ok(())
    }

    /// Retention of `tenant`.
    pub fn retention_for(&self, tenant: &str) -> Duration {
        let s = self.tenant_retention.get(tenant).unwrap_or(&self.retention);
        duration("retention", s).unwrap_or(Duration::from_secs(30 * 86_400))
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
        let c: Config = toml::from_str("retention = \"forever\"").unwrap();
        assert_eq!(c.validate().unwrap_err().field, "retention");
        let c: Config = toml::from_str("[tenant_retention]\nacme = \"24h\"").unwrap();
        c.validate().unwrap();
        assert_eq!(c.retention_for("acme"), Duration::from_secs(86_400));
        assert_eq!(c.retention_for("other"), Duration::from_secs(720 * 3600));
    }
}
