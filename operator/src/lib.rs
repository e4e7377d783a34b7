//! The logstream operator: `LogStream` in, per-tenant gateway objects out.
//!
//! ```text
//! LogStream ──desired()──> StatefulSet(store) + Deployment(edge) + HPA + Services + ...
//!                 └──server-side apply──> API server ──status──> LogStream.status
//! ```
//!
//! [`desired::desired`] is pure and holds every decision; [`controller`] applies its
//! output with one field manager (all but the signing key Secret, which it only creates,
//! with a random key, when absent), keeps status honest, records Events and runs a
//! finalizer for what owner references cannot cover (the store PVCs); [`leader`] makes
//! sure only one replica reconciles.

pub mod controller;
pub mod desired;
pub mod leader;

use std::collections::BTreeMap;

/// Operator settings (flags of `logstream-operator run`).
#[derive(Clone, Debug)]
pub struct Config {
    /// Gateway image when a LogStream names none.
    pub gateway_image: String,
    /// Where the collector DaemonSet runs, and its ServiceAccount and pod labels (it may
    /// push for every tenant and reach every store).
    pub collector_namespace: String,
    pub collector_service_account: String,
    pub collector_labels: BTreeMap<String, String>,
    /// Where the operator runs and its pod labels (it reads the stores' /metrics).
    pub operator_namespace: String,
    pub operator_labels: BTreeMap<String, String>,
    /// `iss` of this cluster's ServiceAccount tokens.
    pub service_account_issuer: String,
    /// Its JWKS URL; default: OIDC discovery at the issuer.
    pub service_account_jwks_url: Option<String>,
    /// DNS suffix of Services.
    pub cluster_domain: String,
    /// Read the stores' /metrics for status: live viewers and, with object storage,
    /// the `ObjectStorage` condition.
    pub probe_stores: bool,
    /// Where Prometheus runs: the stores' NetworkPolicy admits it to their /metrics
    /// (the platform alerts read them). None: stores are not scraped.
    pub prometheus_namespace: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            gateway_image: format!("ghcr.io/logstream/gateway:{}", env!("CARGO_PKG_VERSION")),
            collector_namespace: "logstream-system".into(),
            collector_service_account: "logstream-collector".into(),
            collector_labels: BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "logstream-collector".to_owned(),
            )]),
            operator_namespace: "logstream-system".into(),
            operator_labels: BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "logstream-operator".to_owned(),
            )]),
            service_account_issuer: "https://kubernetes.default.svc.cluster.local".into(),
            service_account_jwks_url: Some("https://kubernetes.default.svc/openid/v1/jwks".into()),
            cluster_domain: "cluster.local".into(),
            probe_stores: true,
            prometheus_namespace: None,
        }
    }
}
