//! `LogStream` custom resource types (`logstream.dev/v1alpha1`).
//!
//! One `LogStream` per tenant: which pods the collectors pick up for it, how its logs are
//! redacted, kept and limited, and the shape of its gateway (store StatefulSet, edge
//! Deployment + HPA). The operator reconciles it; the collector selects pods with it;
//! the Helm chart ships the generated CRD, which is checked in as
//! `crds/logstream.dev_logstreams.yaml` (`logstream-operator crds` prints it, and a test
//! fails when the checked-in file is stale).
//!
//! Validation happens in three places, all from these types: the OpenAPI schema
//! (types, patterns, bounds, defaults), CEL rules (`x-kubernetes-validations`, for what
//! relates two fields), and [`LogStreamSpec::check`] for what neither can express (a
//! custom pattern must compile as a Rust regex) and for what the operator turns into
//! numbers itself (durations, the object store's cache size against the store volume),
//! so that `logstream-operator render`, which runs no CEL, refuses the same specs.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the LogStream resource.
pub const GROUP: &str = "logstream.dev";
/// The one served version.
pub const VERSION: &str = "v1alpha1";
/// Default label key naming a pod's deployment (pipeline run).
pub const DEFAULT_DEPLOYMENT_LABEL: &str = "logstream.dev/deployment";
/// Default label key naming a pod's step; without it the container name is the step.
pub const DEFAULT_STEP_LABEL: &str = "logstream.dev/step";
/// Default retention: 30 days.
pub const DEFAULT_RETENTION: &str = "720h";
/// Default prefix of the tenants' Kafka topics (`<prefix><tenant>`).
pub const DEFAULT_TOPIC_PREFIX: &str = "logstream.";
/// Default deployment idle timeout: 6 hours.
pub const DEFAULT_DEPLOYMENT_IDLE_TIMEOUT: &str = "6h";
/// Default local disk kept for copies of segments already in object storage (the
/// gateway's own default, 10 GiB).
pub const DEFAULT_LOCAL_CACHE_SIZE: &str = "10Gi";

/// A tenant's log stream: pod selection, redaction, retention, quotas and gateway shape.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "logstream.dev",
    version = "v1alpha1",
    kind = "LogStream",
    plural = "logstreams",
    shortname = "lstream",
    namespaced,
    status = "LogStreamStatus",
    printcolumn = r#"{"name":"Tenant","type":"string","jsonPath":".spec.tenant"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Viewers","type":"integer","jsonPath":".status.viewers"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = Rule::new("self.gateway.store.replicas == 1 || has(self.kafka)").message("spec.gateway.store.replicas above 1 needs spec.kafka: without Kafka one store replica holds every deployment of the tenant").reason(kube::core::Reason::FieldValueInvalid).field_path(".gateway.store.replicas"),
    validation = Rule::new("!has(self.objectStore) || !isQuantity(self.objectStore.localCacheSize) || !isQuantity(self.gateway.store.storageSize) || quantity(self.objectStore.localCacheSize).isLessThan(quantity(self.gateway.store.storageSize))").message(LOCAL_CACHE_TOO_BIG).reason(kube::core::Reason::FieldValueInvalid).field_path(".objectStore.localCacheSize")
)]
#[serde(rename_all = "camelCase")]
pub struct LogStreamSpec {
    /// Tenant id: lowercase letters, digits and `-`, 1-63 characters, unique in the
    /// cluster. Immutable.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.tenant is immutable: create a new LogStream for a new tenant"))]
    pub tenant: String,
    /// Which pods belong to this tenant.
    #[serde(default)]
    pub selector: PodSelection,
    /// Label keys naming a pod's deployment and step.
    #[serde(default)]
    pub labels: LabelKeys,
    /// How long logs are kept, as a duration (`720h`, `30d`, `90m`). Default `720h`.
    #[serde(default = "default_retention")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h|d))+$')").message("spec.retention must be a duration such as 720h, 30d or 1d12h"))]
    pub retention: String,
    /// A deployment nobody completes that gets no new line for this long is completed
    /// as `timed_out` (its runner died), so followers stop waiting. Default `6h`.
    #[serde(default = "default_deployment_idle_timeout")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h|d))+$')").message("spec.deploymentIdleTimeout must be a duration such as 6h, 90m or 1d"))]
    pub deployment_idle_timeout: String,
    /// Secret redaction before anything is stored.
    #[serde(default)]
    pub redaction: Redaction,
    /// Per-tenant limits. Absent fields are unlimited.
    #[serde(default)]
    pub quotas: Quotas,
    /// The tenant's gateway: store, edge, image and authentication.
    #[serde(default)]
    pub gateway: GatewaySpec,
    /// Kafka between ingest and the store replicas (optional; needed for more than one
    /// store replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSpec>,
    /// Object storage (S3, GCS, Azure Blob) for sealed segments: the store uploads them
    /// and its volume keeps only recent data plus a cache (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_store: Option<ObjectStoreSpec>,
    /// Put a ResourceQuota and LimitRange on this namespace sized for the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_quota: Option<NamespaceQuota>,
    /// Log alert rules and their receivers: the store evaluates each rule on the lines
    /// it stores (a pattern, an error ratio, or silence) and notifies Alertmanager, a
    /// webhook or Slack. Receiver URLs that are credentials (Slack) go in a Secret
    /// (`urlSecret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<logstream_model::alert::AlertsSpec>,
}

/// Namespaces and pod labels a tenant's pods are selected by.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSelection {
    /// Namespaces to collect from; empty means the LogStream's own namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Pod labels; absent means pods carrying the deployment label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

/// Label keys that name a pod's deployment and step.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LabelKeys {
    /// Default `logstream.dev/deployment`.
    #[serde(default = "default_deployment_label")]
    #[schemars(length(min = 1, max = 317))]
    pub deployment: String,
    /// Default `logstream.dev/step`; pods without it use the container name.
    #[serde(default = "default_step_label")]
    #[schemars(length(min = 1, max = 317))]
    pub step: String,
}

impl Default for LabelKeys {
    fn default() -> Self {
        LabelKeys {
            deployment: default_deployment_label(),
            step: default_step_label(),
        }
    }
}

/// Redaction settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Redaction {
    /// Use the built-in detectors (cloud keys, tokens, JWTs, PEM keys, passwords in
    /// URLs and assignments). Default true.
    #[serde(default = "yes")]
    pub builtins: bool,
    /// `stars` keeps a public prefix and masks the rest; `label` writes
    /// `[REDACTED:detector]`. Default `stars`.
    #[serde(default)]
    pub style: MaskStyle,
    /// Custom named patterns; the whole match (or capture group 1) is masked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q.name == p.name))").message("spec.redaction.patterns: names must be unique"))]
    pub patterns: Vec<NamedPattern>,
}

impl Default for Redaction {
    fn default() -> Self {
        Redaction {
            builtins: true,
            style: MaskStyle::Stars,
            patterns: Vec::new(),
        }
    }
}

/// How a secret is masked.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MaskStyle {
    #[default]
    Stars,
    Label,
}

/// A custom redaction pattern.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamedPattern {
    /// Detector name shown in metrics and labels: `[a-z0-9_]{1,64}`.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-z0-9_]{1,64}$"))]
    pub name: String,
    /// Regular expression (RE2/Rust syntax), at most 1024 characters.
    #[schemars(length(min = 1, max = 1024))]
    pub regex: String,
}

/// Per-tenant quotas; absent means unlimited.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Quotas {
    /// Lines per second accepted at ingest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub ingest_lines_per_second: Option<u64>,
    /// Message bytes per second accepted at ingest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub ingest_bytes_per_second: Option<u64>,
    /// New deployments per rolling 24 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub deployments_per_day: Option<u64>,
    /// Stored bytes (compressed segments) the tenant may keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub storage_bytes: Option<u64>,
    /// Deployments not completed yet at once (a new one beyond is refused with 429).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub open_deployments: Option<u64>,
    /// Live viewers across all of the tenant's deployments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub viewers: Option<u32>,
    /// Live viewers of one deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub viewers_per_deployment: Option<u32>,
}

/// The tenant's gateway.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Gateway image; default: the operator's own `--gateway-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The store StatefulSet.
    #[serde(default)]
    pub store: StoreSpec,
    /// The edge Deployment and its HPA.
    #[serde(default)]
    pub edge: EdgeSpec,
    /// Who may push and view.
    #[serde(default)]
    pub auth: AuthSpec,
}

/// Store replicas: durable segment files on a PVC.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StoreSpec {
    /// Default 1. More than one needs `kafka`.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 64))]
    pub replicas: i32,
    /// PVC size per replica, a Kubernetes quantity. Default `20Gi`.
    #[serde(default = "default_storage_size")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("spec.gateway.store.storageSize must be a positive quantity such as 20Gi"))]
    pub storage_size: String,
    /// StorageClass of the PVC; default: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Resources of the store container; default: requests 250m CPU / 256Mi, limit 1Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Keep the store PVCs (the logs) when the LogStream is deleted. Default true; with
    /// false the operator's finalizer deletes them.
    #[serde(default = "yes")]
    pub retain_data_on_delete: bool,
}

impl Default for StoreSpec {
    fn default() -> Self {
        StoreSpec {
            replicas: 1,
            storage_size: default_storage_size(),
            storage_class_name: None,
            resources: None,
            retain_data_on_delete: true,
        }
    }
}

/// Edge replicas: stateless viewer fan-out, scaled by an HPA.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxReplicas >= self.minReplicas").message("spec.gateway.edge.maxReplicas must be at least minReplicas").field_path(".maxReplicas"))]
pub struct EdgeSpec {
    /// Default 2.
    #[serde(default = "two")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Default 10.
    #[serde(default = "ten")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Target average CPU utilisation in percent. Default 70.
    #[serde(default = "seventy")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: i32,
    /// Target live viewers per edge pod (the `logstream_live_viewers` pods metric, needs
    /// a metrics adapter); absent: CPU only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_viewers_per_pod: Option<i32>,
    /// Resources of the edge container; default: requests 100m CPU / 128Mi, limit 512Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for EdgeSpec {
    fn default() -> Self {
        EdgeSpec {
            min_replicas: 2,
            max_replicas: 10,
            target_cpu_utilization: 70,
            target_viewers_per_pod: None,
            resources: None,
        }
    }
}

/// Token verification for the tenant's gateway.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.issuer) || has(self.jwksUrl)").message("spec.gateway.auth.jwksUrl is required with issuer: give the issuer's JWKS URL").field_path(".jwksUrl"))]
pub struct AuthSpec {
    /// Issuer (`iss`) of user tokens, e.g. the company's OIDC provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://')").message("spec.gateway.auth.issuer must be an https:// URL"))]
    pub issuer: Option<String>,
    /// JWKS URL of that issuer; default: its OIDC discovery document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://')").message("spec.gateway.auth.jwksUrl must be an https:// URL"))]
    pub jwks_url: Option<String>,
    /// Expected `aud` of user tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// ServiceAccounts whose projected tokens (audience `logstream`) may push and read
    /// for this tenant. The collector's ServiceAccount is always allowed to push.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub service_accounts: Vec<AllowedServiceAccount>,
}

/// A ServiceAccount (or a glob over names in a namespace) acting for the tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AllowedServiceAccount {
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Name or glob (`ci-*`). Default `*`.
    #[serde(default = "star")]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Scopes granted: `logs:write`, `logs:read`. Default `[logs:write]`.
    #[serde(default = "write_scope")]
    #[schemars(length(min = 1, max = 2))]
    #[x_kube(validation = Rule::new("self.all(s, s in ['logs:write', 'logs:read'])").message("scopes must be logs:write or logs:read"))]
    pub scopes: Vec<String>,
}

/// Kafka between ingest and the store replicas: ingest produces each batch to the
/// tenant's topic `<topicPrefix><tenant>`, and the store replicas consume it in one
/// consumer group (partitions are the shards).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.securityProtocol) && self.securityProtocol in ['sasl_plaintext', 'sasl_ssl']) || has(self.saslMechanism)").message("spec.kafka.saslMechanism is required with a sasl_* securityProtocol: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512").field_path(".saslMechanism"),
    validation = Rule::new("!(has(self.securityProtocol) && self.securityProtocol in ['sasl_plaintext', 'sasl_ssl']) || has(self.saslUsername)").message("spec.kafka.saslUsername is required with a sasl_* securityProtocol").field_path(".saslUsername"),
    validation = Rule::new("!(has(self.securityProtocol) && self.securityProtocol in ['sasl_plaintext', 'sasl_ssl']) || has(self.secretRef)").message("spec.kafka.secretRef is required with a sasl_* securityProtocol: name a Secret whose `password` key holds the SASL password").field_path(".secretRef")
)]
pub struct KafkaSpec {
    /// Bootstrap brokers, `host:port`.
    #[schemars(
        length(min = 1, max = 64),
        inner(length(min = 3, max = 253), regex(pattern = r"^[^,\s]+:[0-9]{1,5}$"))
    )]
    pub brokers: Vec<String>,
    /// A tenant's topic is `<topicPrefix><tenant>` (Kafka topic names take letters,
    /// digits, `.`, `_` and `-`). Default `logstream.`.
    #[serde(default = "default_topic_prefix")]
    #[schemars(length(max = 186), regex(pattern = r"^[a-zA-Z0-9._-]*$"))]
    pub topic_prefix: String,
    /// Partitions of the tenant's topic: the most store replicas that share the
    /// tenant's deployments. Default 12.
    #[serde(default = "twelve")]
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: i32,
    /// Replication factor of the tenant's topic. Default 3.
    #[serde(default = "three")]
    #[schemars(range(min = 1, max = 16))]
    pub replication_factor: i32,
    /// The store creates a missing topic with `partitions`, `replicationFactor` and a
    /// retention of the LogStream's `retention` (at least). With false the cluster's
    /// topic operator (e.g. a Strimzi KafkaTopic) creates it, and a missing topic fails
    /// the store's readiness with a message naming it. Default true.
    #[serde(default = "yes")]
    pub create_topics: bool,
    /// How the gateway talks to the brokers. Default `plaintext`.
    #[serde(default)]
    pub security_protocol: KafkaSecurityProtocol,
    /// SASL mechanism; required with a `sasl_*` protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name; required with a `sasl_*` protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub sasl_username: Option<String>,
    /// Secret in the LogStream's namespace with the client credentials, mounted
    /// read-only in the store pods: `password` (the SASL password, with a `sasl_*`
    /// protocol), `ca.crt` (the CA that signs the brokers' certificates, with `ssl` or
    /// `sasl_ssl`) and, for mutual TLS, `tls.crt` and `tls.key`. Required with a
    /// `sasl_*` protocol; without it `ssl` trusts the image's CA bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_ref: Option<String>,
}

/// `security.protocol` of the Kafka clients.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KafkaSecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl KafkaSecurityProtocol {
    /// The name in the gateway config (and librdkafka's).
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaSecurityProtocol::Plaintext => "plaintext",
            KafkaSecurityProtocol::Ssl => "ssl",
            KafkaSecurityProtocol::SaslPlaintext => "sasl_plaintext",
            KafkaSecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    /// Authenticates with SASL (user name and password).
    pub fn is_sasl(self) -> bool {
        matches!(
            self,
            KafkaSecurityProtocol::SaslPlaintext | KafkaSecurityProtocol::SaslSsl
        )
    }

    /// Encrypts with TLS.
    pub fn is_ssl(self) -> bool {
        matches!(
            self,
            KafkaSecurityProtocol::Ssl | KafkaSecurityProtocol::SaslSsl
        )
    }
}

/// `sasl.mechanism` of the Kafka clients.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The name in the gateway config (and librdkafka's).
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Why a cache size that does not fit the store volume is refused (CEL and
/// [`LogStreamSpec::check`] say the same).
const LOCAL_CACHE_TOO_BIG: &str = "spec.objectStore.localCacheSize must be smaller than spec.gateway.store.storageSize: the store volume also holds the segments not uploaded yet (localCacheSize defaults to 10Gi; lower it or grow storageSize)";

/// Object storage for sealed segments. The store uploads each sealed segment, verifies
/// it, and then keeps a local copy only while it fits in `localCacheSize` (the least
/// recently read are evicted and read back from the bucket when asked for). The store
/// volume then holds the recent, not yet uploaded data plus that cache; the bucket
/// holds everything for the LogStream's `retention`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.endpoint) || self.url.startsWith('s3://')").message("spec.objectStore.endpoint goes only with an s3:// url (an S3-compatible service such as MinIO or Ceph); gs:// and az:// use their provider's endpoint").reason(kube::core::Reason::FieldValueInvalid).field_path(".endpoint")
)]
pub struct ObjectStoreSpec {
    /// Where the segments go: `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix`, or `file:///absolute/path` (a directory the store
    /// container can write, for tests). Give each LogStream its own prefix.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.matches('^(s3|gs|az)://[^/ ]+(/[^ ]*)?$') || self.matches('^file:///[^ ]*$')").message("spec.objectStore.url must be s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or file:///absolute/path (a bucket name, no spaces)"))]
    pub url: String,
    /// Endpoint of an S3-compatible service, e.g. `http://minio.storage.svc:9000`
    /// (path-style requests). Only with an `s3://` url; default: AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("spec.objectStore.endpoint must be an http:// or https:// URL such as http://minio.storage.svc:9000"))]
    pub endpoint: Option<String>,
    /// S3 region, e.g. `eu-west-1`. Default `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
    /// Secret in the LogStream's namespace whose `credentials` entry holds `NAME=value`
    /// lines with the provider's variable names (`AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY`; `GOOGLE_SERVICE_ACCOUNT_KEY`; `AZURE_STORAGE_ACCOUNT_NAME`
    /// and `AZURE_STORAGE_ACCOUNT_KEY`), mounted read-only in the store pods. Absent:
    /// the pods' own identity (e.g. IRSA or Workload Identity through the environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_ref: Option<String>,
    /// Local disk for copies of segments already uploaded, a Kubernetes quantity; past
    /// it the least recently read copies are evicted. Must be smaller than
    /// `spec.gateway.store.storageSize`. Default `10Gi`.
    #[serde(default = "default_local_cache_size")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("spec.objectStore.localCacheSize must be a positive quantity such as 10Gi"))]
    pub local_cache_size: String,
    /// How often sealed segments are looked for and uploaded. Default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h|d))+$')").message("spec.objectStore.uploadInterval must be a duration such as 10s or 1m"))]
    pub upload_interval: Option<String>,
    /// How often objects that no segment list refers to (an upload cut short) are
    /// deleted. Default `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h|d))+$')").message("spec.objectStore.sweepInterval must be a duration such as 1h or 30m"))]
    pub sweep_interval: Option<String>,
    /// An object no segment list refers to is deleted only when older than this (its
    /// upload may still be running). Default `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h|d))+$')").message("spec.objectStore.orphanGrace must be a duration such as 1h or 2h"))]
    pub orphan_grace: Option<String>,
}

/// A ResourceQuota and LimitRange for the LogStream's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceQuota {
    /// Total CPU limits in the namespace, e.g. `8`.
    pub cpu: String,
    /// Total memory limits, e.g. `16Gi`.
    pub memory: String,
    /// Total PVC storage requests, e.g. `200Gi`.
    pub storage: String,
}

/// What the operator observed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LogStreamStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Where to reach the tenant's gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
    /// Live viewers across the tenant's edges (as last reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub viewers: Option<i64>,
    /// Ready store and edge replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_ready_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_ready_replicas: Option<i32>,
    /// Alert notices per receiver (`spec.alerts.receivers`), summed over the store
    /// replicas since they started: delivered and given up on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alert_receivers: Vec<AlertReceiverStatus>,
}

/// One alert receiver's delivery counts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AlertReceiverStatus {
    pub name: String,
    pub sent: u64,
    pub failed: u64,
}

/// Service addresses of a tenant's gateway.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// gRPC ingest, e.g. `acme-edge.ci.svc:8081`.
    pub ingest: String,
    /// HTTP API for viewers and HTTPS push, e.g. `http://acme-edge.ci.svc:8080`.
    pub http: String,
    /// Edge Service name and namespace (for the API server's service proxy).
    pub service: String,
    pub namespace: String,
    /// HTTP port name on the Service.
    pub port: String,
}

impl LogStreamSpec {
    /// Checks that neither the schema nor CEL can express: durations parse and custom
    /// patterns compile. The message names the field and the fix.
    pub fn check(&self) -> Result<(), String> {
        match logstream_model::time::parse_duration(&self.retention) {
            Some(n) if n > 0 => {}
            _ => {
                return Err(format!(
                    "spec.retention {:?} is not a positive duration; use e.g. 720h or 30d",
                    self.retention
                ));
            }
        }
        match logstream_model::time::parse_duration(&self.deployment_idle_timeout) {
            Some(n) if n > 0 => {}
            _ => {
                return Err(format!(
                    "spec.deploymentIdleTimeout {:?} is not a positive duration; use e.g. 6h or 90m",
                    self.deployment_idle_timeout
                ));
            }
        }
        if let Some(o) = &self.object_store {
            o.check(&self.gateway.store)?;
        }
        if let Some(a) = &self.alerts {
            a.validate().map_err(|e| format!("spec.alerts.{e}"))?;
            if let Some(r) = a
                .receivers
                .iter()
                .find(|r| r.target().is_some_and(|(_, e)| e.url_file.is_some()))
            {
                return Err(format!(
                    "spec.alerts.receivers ({}): urlFile names a file in the gateway's container; in a LogStream use url or urlSecret",
                    r.name
                ));
            }
        }
        for (i, p) in self.redaction.patterns.iter().enumerate() {
            regex::RegexBuilder::new(&p.regex)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| {
                    format!(
                        "spec.redaction.patterns[{i}] ({}): the regex does not compile: {e}",
                        p.name
                    )
                })?;
        }
        Ok(())
    }
}

impl ObjectStoreSpec {
    /// The durations parse, and the cache is a size smaller than the store volume (the
    /// volume also holds what is not uploaded yet).
    fn check(&self, store: &StoreSpec) -> Result<(), String> {
        for (field, value) in [
            ("uploadInterval", &self.upload_interval),
            ("sweepInterval", &self.sweep_interval),
            ("orphanGrace", &self.orphan_grace),
        ] {
            if let Some(v) = value
                && logstream_model::time::parse_duration(v).is_none_or(|n| n <= 0)
            {
                return Err(format!(
                    "spec.objectStore.{field} {v:?} is not a positive duration; use e.g. 10s, 1h or 90m"
                ));
            }
        }
        let cache = self.local_cache_bytes()?;
        let volume = quantity_bytes(&store.storage_size).ok_or_else(|| {
            format!(
                "spec.gateway.store.storageSize {:?} is not a quantity; use e.g. 20Gi",
                store.storage_size
            )
        })?;
        if cache >= volume {
            return Err(format!(
                "{LOCAL_CACHE_TOO_BIG} (localCacheSize {}, storageSize {})",
                self.local_cache_size, store.storage_size
            ));
        }
        Ok(())
    }

    /// `localCacheSize` in bytes.
    pub fn local_cache_bytes(&self) -> Result<u64, String> {
        quantity_bytes(&self.local_cache_size)
            .filter(|b| *b > 0)
            .ok_or_else(|| {
                format!(
                    "spec.objectStore.localCacheSize {:?} is not a positive quantity; use e.g. 10Gi",
                    self.local_cache_size
                )
            })
    }
}

/// A Kubernetes quantity (`10Gi`, `500M`, `1.5Ti`, `1e9`, `2048`) as a number of bytes,
/// rounded up as the API server rounds memory and storage; `None` for what is not a
/// quantity, a negative one, or one past `u64`.
///
/// Grammar (`k8s.io/apimachinery/pkg/api/resource`): `[+]<digits>[.<digits>]<suffix>`
/// with suffix one of `Ki Mi Gi Ti Pi Ei` (powers of 1024), `m k M G T P E` (powers of
/// 1000, `m` is a thousandth) or `e<int>`/`E<int>` (a power of ten), or none.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.strip_prefix('+').unwrap_or(q);
    let number_len = q
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, suffix) = q.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') || fraction.len() > 18 {
        return None;
    }
    let digits: u128 = format!("{whole}{fraction}").parse().ok()?;
    let mut denominator = 10u128.pow(u32::try_from(fraction.len()).ok()?);
    let multiplier: u128 = match suffix {
        "" => 1,
        "m" => {
            denominator *= 1000;
            1
        }
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        exponent => {
            let e: i32 = exponent.strip_prefix(['e', 'E'])?.parse().ok()?;
            let power = 10u128.checked_pow(e.unsigned_abs())?;
            if e < 0 {
                denominator = denominator.checked_mul(power)?;
                1
            } else {
                power
            }
        }
    };
    u64::try_from(digits.checked_mul(multiplier)?.div_ceil(denominator)).ok()
}

/// The CRD as YAML, exactly as checked in and shipped by the chart.
pub fn crd_yaml() -> String {
    let crd = LogStream::crd();
    format!(
        "# Generated by `logstream-operator crds` from crds/src/lib.rs. Do not edit.\n---\n{}",
        serde_yaml::to_string(&crd).expect("a CRD serialises")
    )
}

fn default_retention() -> String {
    DEFAULT_RETENTION.into()
}
fn default_deployment_idle_timeout() -> String {
    DEFAULT_DEPLOYMENT_IDLE_TIMEOUT.into()
}
fn default_deployment_label() -> String {
    DEFAULT_DEPLOYMENT_LABEL.into()
}
fn default_step_label() -> String {
    DEFAULT_STEP_LABEL.into()
}
fn default_topic_prefix() -> String {
    DEFAULT_TOPIC_PREFIX.into()
}
fn default_local_cache_size() -> String {
    DEFAULT_LOCAL_CACHE_SIZE.into()
}
fn default_storage_size() -> String {
    "20Gi".into()
}
fn star() -> String {
    "*".into()
}
fn write_scope() -> Vec<String> {
    vec!["logs:write".into()]
}
fn yes() -> bool {
    true
}
fn one() -> i32 {
    1
}
fn two() -> i32 {
    2
}
fn three() -> i32 {
    3
}
fn twelve() -> i32 {
    12
}
fn ten() -> i32 {
    10
}
fn seventy() -> i32 {
    70
}

#[cfg(test)]
mod tests {
    use super::quantity_bytes;

    #[test]
    fn quantities_are_read_as_the_api_server_reads_them() {
        for (q, bytes) in [
            ("10Gi", Some(10u64 << 30)),
            ("20Gi", Some(20 << 30)),
            ("512Mi", Some(512 << 20)),
            ("1.5Ti", Some(3 << 39)),
            ("1Ki", Some(1024)),
            ("2048", Some(2048)),
            ("+7", Some(7)),
            ("500M", Some(500_000_000)),
            ("1.5G", Some(1_500_000_000)),
            ("1k", Some(1000)),
            ("1e9", Some(1_000_000_000)),
            ("1E3", Some(1000)),
            ("15e-1", Some(2)),
            ("1500m", Some(2)),
            (".5Ki", Some(512)),
            ("1E", Some(1_000_000_000_000_000_000)),
            ("0", Some(0)),
            ("16Ei", None),
            ("-1Gi", None),
            ("lots", None),
            ("", None),
            ("1GB", None),
            ("1.2.3", None),
            ("Gi", None),
            ("1e", None),
        ] {
            assert_eq!(quantity_bytes(q), bytes, "{q:?}");
        }
    }
}
