//! What a `LogStream` should look like in the cluster: a pure function, no I/O.
//!
//! Every object carries the LogStream as its controller owner (so deleting the
//! LogStream deletes them, and `.owns()` watches bring drift back to reconcile), the
//! same `app.kubernetes.io/*` labels, and is applied whole with server-side apply.

use crate::Config;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSetSpec};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
    MetricIdentifier, MetricSpec, MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction,
    KeyToPath, LimitRange, LimitRangeItem, LimitRangeSpec, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceQuota,
    ResourceQuotaSpec, ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use logstream_crds::{Endpoints, KafkaSpec, LogStream, MaskStyle, ObjectStoreSpec};
use logstream_model::config as gateway;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

/// HTTP port of every gateway container and Service.
pub const HTTP_PORT: i32 = 8080;
/// gRPC port (ingest and `Tail.Subscribe`).
pub const GRPC_PORT: i32 = 8081;
/// Label naming the LogStream an object belongs to.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// Label naming the part of the gateway (`store`, `edge`).
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
const CONFIG_HASH: &str = "logstream.dev/config-hash";
const CONFIG_DIR: &str = "/etc/logstream";
const DATA_DIR: &str = "/data";
/// Where every gateway pod finds its ServiceAccount token and the cluster CA (the
/// kubelet's automount), used to fetch the ServiceAccount issuer's keys.
pub const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Where the signing key Secret is mounted in store and edge pods. Not under
/// `CONFIG_DIR`: a mount point inside a ConfigMap volume (always read-only) cannot be
/// created by the container runtime.
pub const KEY_DIR: &str = "/var/run/secrets/logstream";
/// The signing key's entry in its Secret, and its file name under [`KEY_DIR`].
pub const SIGNING_KEY: &str = "signing-key";
/// Where the Kafka client Secret (`spec.kafka.secretRef`) is mounted in store pods. A
/// sibling of [`KEY_DIR`], not inside it: that is a (read-only) Secret volume too.
pub const KAFKA_DIR: &str = "/var/run/secrets/logstream-kafka";
/// Entries of the Kafka client Secret, and their file names under [`KAFKA_DIR`]: the
/// SASL password, the CA of the brokers' certificates, the client certificate and key.
pub const KAFKA_PASSWORD: &str = "password";
pub const KAFKA_CA: &str = "ca.crt";
pub const KAFKA_CERT: &str = "tls.crt";
pub const KAFKA_KEY: &str = "tls.key";
/// Where the object storage Secret (`spec.objectStore.secretRef`) is mounted in store
/// pods (a sibling of [`KEY_DIR`] and [`KAFKA_DIR`], like them a Secret volume).
pub const OBJECT_STORE_DIR: &str = "/var/run/secrets/logstream-object-store";
/// The entry of that Secret holding the `NAME=value` credential lines, and its file
/// name under [`OBJECT_STORE_DIR`] (`[object_store] credentials_file`).
pub const OBJECT_STORE_CREDENTIALS: &str = "credentials";
/// Where alert receivers' URL Secrets (`spec.alerts.receivers[].*.urlSecret`) are
/// mounted in store pods: one directory per receiver, the URL in its file `url`.
pub const ALERT_RECEIVERS_DIR: &str = "/var/run/secrets/logstream-alert-receivers";

/// One object the operator owns, typed. Every kind is applied whole with server-side
/// apply, except [`Owned::Secret`].
#[derive(Clone, Debug, PartialEq)]
pub enum Owned {
    ConfigMap(ConfigMap),
    /// The HS256 signing key store and edges share (see [`signing_key_secret`]): built
    /// here without its data and only ever *created*, with a fresh random key
    /// ([`with_signing_key`]), when it does not exist. An existing one is never
    /// updated: replacing the key would invalidate every token signed with it.
    Secret(Secret),
    ServiceAccount(ServiceAccount),
    Service(Service),
    StatefulSet(StatefulSet),
    Deployment(Deployment),
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
    PodDisruptionBudget(PodDisruptionBudget),
    NetworkPolicy(NetworkPolicy),
    ResourceQuota(ResourceQuota),
    LimitRange(LimitRange),
}

/// Calls `$body` with `$o` bound to the typed object inside an [`Owned`].
#[macro_export]
macro_rules! with_owned {
    ($owned:expr, $o:ident => $body:expr) => {
        match $owned {
            $crate::desired::Owned::ConfigMap($o) => $body,
            $crate::desired::Owned::Secret($o) => $body,
            $crate::desired::Owned::ServiceAccount($o) => $body,
            $crate::desired::Owned::Service($o) => $body,
            $crate::desired::Owned::StatefulSet($o) => $body,
            $crate::desired::Owned::Deployment($o) => $body,
            $crate::desired::Owned::HorizontalPodAutoscaler($o) => $body,
            $crate::desired::Owned::PodDisruptionBudget($o) => $body,
            $crate::desired::Owned::NetworkPolicy($o) => $body,
            $crate::desired::Owned::ResourceQuota($o) => $body,
            $crate::desired::Owned::LimitRange($o) => $body,
        }
    };
}

impl Owned {
    /// `Kind/name`, for events and errors.
    pub fn describe(&self) -> String {
        with_owned!(self, o => format!("{}/{}", kind_of(o), o.name_any()))
    }

    /// The object as the JSON sent to the API server (with apiVersion and kind).
    pub fn to_json(&self) -> serde_json::Value {
        with_owned!(self, o => with_type_meta(o))
    }
}

fn kind_of<K: Resource<DynamicType = ()>>(_: &K) -> std::borrow::Cow<'static, str> {
    K::kind(&())
}

fn with_type_meta<K>(o: &K) -> serde_json::Value
where
    K: Resource<DynamicType = ()> + serde::Serialize,
{
    let mut v = serde_json::to_value(o).expect("k8s objects serialise");
    v["apiVersion"] = K::api_version(&()).into();
    v["kind"] = K::kind(&()).into();
    v
}

/// The spec cannot be turned into objects; the message names the field and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

/// Names of the objects of one LogStream.
pub struct Names {
    pub store: String,
    pub edge: String,
    pub config: String,
    pub service_account: String,
    /// The Secret holding the HS256 signing key.
    pub signing_key: String,
}

impl Names {
    pub fn of(ls: &LogStream) -> Names {
        let n = ls.name_any();
        Names {
            store: format!("{n}-store"),
            edge: format!("{n}-edge"),
            config: format!("{n}-gateway"),
            service_account: format!("{n}-gateway"),
            signing_key: format!("{n}-signing-key"),
        }
    }
}

/// Where the LogStream's gateway is reached (written to status).
pub fn endpoints(ls: &LogStream, cfg: &Config) -> Endpoints {
    let names = Names::of(ls);
    let ns = ls.namespace().unwrap_or_default();
    Endpoints {
        ingest: format!("{}:{GRPC_PORT}", store_host(ls, cfg)),
        http: format!(
            "http://{}.{ns}.svc.{}:{HTTP_PORT}",
            names.edge, cfg.cluster_domain
        ),
        service: names.edge,
        namespace: ns,
        port: "http".into(),
    }
}

/// The store Service's HTTP base URL (edges forward history and exports to it, the
/// operator reads its metrics).
pub fn store_url(ls: &LogStream, cfg: &Config) -> String {
    format!("http://{}:{HTTP_PORT}", store_host(ls, cfg))
}

/// The store Service's gRPC URL, where edges hold their `Tail.Subscribe` upstreams.
pub fn store_grpc_url(ls: &LogStream, cfg: &Config) -> String {
    format!("http://{}:{GRPC_PORT}", store_host(ls, cfg))
}

fn store_host(ls: &LogStream, cfg: &Config) -> String {
    let ns = ls.namespace().unwrap_or_default();
    format!("{}.{ns}.svc.{}", Names::of(ls).store, cfg.cluster_domain)
}

/// Every store replica's HTTP base URL through its own DNS name under the headless
/// store Service (`http://N-store-0.N-store.NS.svc.<domain>:8080`, ...). Only in Kafka
/// mode: without Kafka the one store is reached through the Service.
pub fn store_replica_urls(ls: &LogStream, cfg: &Config) -> Vec<String> {
    if ls.spec.kafka.is_none() {
        return Vec::new();
    }
    let store = Names::of(ls).store;
    (0..ls.spec.gateway.store.replicas)
        .map(|i| format!("http://{store}-{i}.{}:{HTTP_PORT}", store_host(ls, cfg)))
        .collect()
}

/// Everything the LogStream should own, in apply order (config before the pods that
/// mount it).
pub fn desired(ls: &LogStream, cfg: &Config) -> Result<Vec<Owned>, InvalidSpec> {
    ls.spec.check().map_err(InvalidSpec)?;
    if ls.namespace().is_none() {
        return Err(InvalidSpec("the LogStream has no namespace".into()));
    }
    let names = Names::of(ls);
    let spec = &ls.spec;
    let image = spec
        .gateway
        .image
        .clone()
        .unwrap_or_else(|| cfg.gateway_image.clone());

    let store_toml = render(&store_config(ls, cfg));
    let edge_toml = render(&edge_config(ls, cfg));
    let store_hash = short_hash(&store_toml);
    let edge_hash = short_hash(&edge_toml);

    let mut out = vec![Owned::ConfigMap(ConfigMap {
        metadata: meta(ls, &names.config, None),
        data: Some(BTreeMap::from([
            ("store.toml".to_owned(), store_toml),
            ("edge.toml".to_owned(), edge_toml),
        ])),
        ..Default::default()
    })];
    out.push(Owned::Secret(signing_key_secret(ls, &names)));

    out.push(Owned::ServiceAccount(ServiceAccount {
        metadata: meta(ls, &names.service_account, None),
        // Store and edges both verify ServiceAccount tokens, so both fetch the cluster's
        // ServiceAccount issuer keys with this token (granted to every ServiceAccount by
        // system:service-account-issuer-discovery) and the CA mounted beside it.
        automount_service_account_token: Some(true),
        ..Default::default()
    }));

    // Store: headless Service for the StatefulSet's stable names, ingest and history.
    out.push(Owned::Service(Service {
        metadata: meta(ls, &names.store, Some("store")),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(ls, "store")),
            ports: Some(vec![port("http", HTTP_PORT), port("grpc", GRPC_PORT)]),
            publish_not_ready_addresses: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }));

    let store_resources = spec
        .gateway
        .store
        .resources
        .clone()
        .unwrap_or_else(|| resources("250m", "256Mi", "1Gi"));
    let mut store_pod = pod_spec(
        &names,
        &image,
        "store",
        store_resources,
        vec![VolumeMount {
            name: "data".into(),
            mount_path: DATA_DIR.into(),
            ..Default::default()
        }],
    );
    store_pod.containers[0].ports = Some(vec![
        container_port("http", HTTP_PORT),
        container_port("grpc", GRPC_PORT),
    ]);
    store_pod.termination_grace_period_seconds = Some(60);
    if let Some(secret) = kafka_secret(ls) {
        store_pod.containers[0]
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: "kafka".into(),
                mount_path: KAFKA_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            });
        store_pod.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: "kafka".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.to_owned()),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    for (i, (receiver, secret)) in alert_url_secrets(ls).into_iter().enumerate() {
        let volume = format!("alert-receiver-{i}");
        store_pod.containers[0]
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: volume.clone(),
                mount_path: format!("{ALERT_RECEIVERS_DIR}/{receiver}"),
                read_only: Some(true),
                ..Default::default()
            });
        store_pod.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: volume,
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                items: Some(vec![KeyToPath {
                    key: secret.key.clone(),
                    path: "url".into(),
                    mode: None,
                }]),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Some(secret) = spec
        .object_store
        .as_ref()
        .and_then(|o| o.secret_ref.as_deref())
    {
        store_pod.containers[0]
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: "object-store".into(),
                mount_path: OBJECT_STORE_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            });
        store_pod.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: "object-store".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.to_owned()),
                // Only the entry the config names: a Secret without it keeps the pod
                // from starting, with the missing key in its events.
                items: Some(vec![KeyToPath {
                    key: OBJECT_STORE_CREDENTIALS.into(),
                    path: OBJECT_STORE_CREDENTIALS.into(),
                    mode: None,
                }]),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    out.push(Owned::StatefulSet(StatefulSet {
        metadata: meta(ls, &names.store, Some("store")),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.gateway.store.replicas),
            service_name: Some(names.store.clone()),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(ls, "store")),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(pod_meta(ls, "store", &store_hash)),
                spec: Some(store_pod),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    labels: Some(selector_labels(ls, "store")),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: spec.gateway.store.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_owned(),
                            Quantity(spec.gateway.store.storage_size.clone()),
                        )])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            // Logs outlive a deleted LogStream or a scale-down unless the finalizer is
            // told otherwise (spec.gateway.store.retainDataOnDelete).
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            ..Default::default()
        }),
        ..Default::default()
    }));

    // Edge: stateless viewer front, scaled by the HPA (which owns `replicas`).
    out.push(Owned::Service(Service {
        metadata: meta(ls, &names.edge, Some("edge")),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(ls, "edge")),
            ports: Some(vec![port("http", HTTP_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }));
    let edge_resources = spec
        .gateway
        .edge
        .resources
        .clone()
        .unwrap_or_else(|| resources("100m", "128Mi", "512Mi"));
    // Edges authenticate viewers themselves (`auth_settings`), ServiceAccount tokens
    // included, so they keep the ServiceAccount's automounted token like the store.
    let mut edge_pod = pod_spec(&names, &image, "edge", edge_resources, Vec::new());
    edge_pod.containers[0].ports = Some(vec![container_port("http", HTTP_PORT)]);
    out.push(Owned::Deployment(Deployment {
        metadata: meta(ls, &names.edge, Some("edge")),
        spec: Some(DeploymentSpec {
            selector: LabelSelector {
                match_labels: Some(selector_labels(ls, "edge")),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(pod_meta(ls, "edge", &edge_hash)),
                spec: Some(edge_pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    }));
    out.push(Owned::HorizontalPodAutoscaler(hpa(ls, &names)));

    for component in ["store", "edge"] {
        out.push(Owned::PodDisruptionBudget(PodDisruptionBudget {
            metadata: meta(
                ls,
                &format!("{}-{component}", ls.name_any()),
                Some(component),
            ),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(selector_labels(ls, component)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }));
    }
    out.extend(
        network_policies(ls, cfg, &names)
            .into_iter()
            .map(Owned::NetworkPolicy),
    );

    if let Some(q) = &spec.namespace_quota {
        let name = format!("{}-quota", ls.name_any());
        out.push(Owned::ResourceQuota(ResourceQuota {
            metadata: meta(ls, &name, None),
            spec: Some(ResourceQuotaSpec {
                hard: Some(BTreeMap::from([
                    ("limits.cpu".to_owned(), Quantity(q.cpu.clone())),
                    ("limits.memory".to_owned(), Quantity(q.memory.clone())),
                    ("requests.storage".to_owned(), Quantity(q.storage.clone())),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        }));
        // With a quota on limits, every container needs limits: give defaults.
        out.push(Owned::LimitRange(LimitRange {
            metadata: meta(ls, &name, None),
            spec: Some(LimitRangeSpec {
                limits: vec![LimitRangeItem {
                    type_: "Container".into(),
                    default: Some(quantities(&[("cpu", "500m"), ("memory", "512Mi")])),
                    default_request: Some(quantities(&[("cpu", "100m"), ("memory", "128Mi")])),
                    ..Default::default()
                }],
            }),
        }));
    }
    Ok(out)
}

fn hpa(ls: &LogStream, names: &Names) -> HorizontalPodAutoscaler {
    let edge = &ls.spec.gateway.edge;
    let mut metrics = vec![MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: "cpu".into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(edge.target_cpu_utilization),
                ..Default::default()
            },
        }),
        ..Default::default()
    }];
    if let Some(v) = edge.target_viewers_per_pod {
        metrics.push(MetricSpec {
            type_: "Pods".into(),
            pods: Some(PodsMetricSource {
                metric: MetricIdentifier {
                    name: "logstream_live_viewers".into(),
                    selector: None,
                },
                target: MetricTarget {
                    type_: "AverageValue".into(),
                    average_value: Some(Quantity(v.to_string())),
                    ..Default::default()
                },
            }),
            ..Default::default()
        });
    }
    HorizontalPodAutoscaler {
        metadata: meta(ls, &names.edge, Some("edge")),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: names.edge.clone(),
            },
            min_replicas: Some(edge.min_replicas),
            max_replicas: edge.max_replicas,
            metrics: Some(metrics),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Stores accept traffic only from their edges (HTTP for history and exports, gRPC for
/// the `Tail.Subscribe` upstreams of live viewers: one rule admits both ports), the node
/// collectors, the operator and (for direct pushes) the tenant's selected namespaces; in
/// Kafka mode also from each other on HTTP (a replica forwards what it does not own).
/// Edges accept viewers from anywhere. Ingress only: egress (to the brokers among
/// others) is left to the cluster's own policies.
fn network_policies(ls: &LogStream, cfg: &Config, names: &Names) -> Vec<NetworkPolicy> {
    let mut from = vec![
        NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(ls, "edge")),
                ..Default::default()
            }),
            ..Default::default()
        },
        NetworkPolicyPeer {
            namespace_selector: Some(namespace_is(&cfg.collector_namespace)),
            pod_selector: Some(LabelSelector {
                match_labels: Some(cfg.collector_labels.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        // The operator reads viewer counts from the stores' /metrics.
        NetworkPolicyPeer {
            namespace_selector: Some(namespace_is(&cfg.operator_namespace)),
            pod_selector: Some(LabelSelector {
                match_labels: Some(cfg.operator_labels.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    for ns in &ls.spec.selector.namespaces {
        from.push(NetworkPolicyPeer {
            namespace_selector: Some(namespace_is(ns)),
            ..Default::default()
        });
    }
    let tcp = |p: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let mut store_ingress = vec![NetworkPolicyIngressRule {
        from: Some(from),
        ports: Some(vec![tcp(HTTP_PORT), tcp(GRPC_PORT)]),
    }];
    if let Some(ns) = &cfg.prometheus_namespace {
        // Prometheus reads /metrics (the platform alerts), on the HTTP port only.
        store_ingress.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(namespace_is(ns)),
                ..Default::default()
            }]),
            ports: Some(vec![tcp(HTTP_PORT)]),
        });
    }
    if ls.spec.kafka.is_some() {
        store_ingress.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(selector_labels(ls, "store")),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ports: Some(vec![tcp(HTTP_PORT)]),
        });
    }
    vec![
        NetworkPolicy {
            metadata: meta(ls, &names.store, Some("store")),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(selector_labels(ls, "store")),
                    ..Default::default()
                }),
                policy_types: Some(vec!["Ingress".into()]),
                ingress: Some(store_ingress),
                ..Default::default()
            }),
        },
        NetworkPolicy {
            metadata: meta(ls, &names.edge, Some("edge")),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(selector_labels(ls, "edge")),
                    ..Default::default()
                }),
                policy_types: Some(vec!["Ingress".into()]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![tcp(HTTP_PORT)]),
                }]),
                ..Default::default()
            }),
        },
    ]
}

fn namespace_is(ns: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_owned(),
            ns.to_owned(),
        )])),
        ..Default::default()
    }
}

fn pod_spec(
    names: &Names,
    image: &str,
    component: &str,
    resources: ResourceRequirements,
    mut mounts: Vec<VolumeMount>,
) -> PodSpec {
    mounts.push(VolumeMount {
        name: "config".into(),
        mount_path: CONFIG_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    });
    mounts.push(VolumeMount {
        name: SIGNING_KEY.into(),
        mount_path: KEY_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    });
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        ..Default::default()
    };
    PodSpec {
        service_account_name: Some(names.service_account.clone()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            fs_group: Some(65532),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        containers: vec![Container {
            name: "gateway".into(),
            image: Some(image.into()),
            args: Some(vec![
                "serve".into(),
                "--config".into(),
                format!("{CONFIG_DIR}/{component}.toml"),
            ]),
            env: Some(vec![k8s_openapi::api::core::v1::EnvVar {
                name: "RUST_LOG".into(),
                value: Some("info".into()),
                ..Default::default()
            }]),
            resources: Some(resources),
            readiness_probe: Some(probe("/readyz", 5)),
            liveness_probe: Some(Probe {
                failure_threshold: Some(6),
                ..probe("/healthz", 10)
            }),
            volume_mounts: Some(mounts),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }],
        volumes: Some(vec![
            Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: names.config.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: SIGNING_KEY.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(names.signing_key.clone()),
                    // Readable by the gateway's group (fsGroup) only, not by others.
                    default_mode: Some(0o440),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        app_protocol: Some(
            if name == "grpc" {
                "kubernetes.io/h2c"
            } else {
                "http"
            }
            .into(),
        ),
        ..Default::default()
    }
}

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
        .collect()
}

fn resources(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(quantities(&[("cpu", cpu), ("memory", memory)])),
        limits: Some(quantities(&[("memory", memory_limit)])),
        ..Default::default()
    }
}

/// Labels on every object of this LogStream.
pub fn common_labels(ls: &LogStream) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "logstream-gateway".to_owned(),
        ),
        (INSTANCE_LABEL.to_owned(), ls.name_any()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "logstream-operator".to_owned(),
        ),
        ("logstream.dev/tenant".to_owned(), ls.spec.tenant.clone()),
    ])
}

fn selector_labels(ls: &LogStream, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "logstream-gateway".to_owned(),
        ),
        (INSTANCE_LABEL.to_owned(), ls.name_any()),
        (COMPONENT_LABEL.to_owned(), component.to_owned()),
    ])
}

fn meta(ls: &LogStream, name: &str, component: Option<&str>) -> ObjectMeta {
    let mut labels = common_labels(ls);
    if let Some(c) = component {
        labels.insert(COMPONENT_LABEL.to_owned(), c.to_owned());
    }
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: ls.namespace(),
        labels: Some(labels),
        owner_references: ls.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

fn pod_meta(ls: &LogStream, component: &str, config_hash: &str) -> ObjectMeta {
    let mut labels = common_labels(ls);
    labels.insert(COMPONENT_LABEL.to_owned(), component.to_owned());
    ObjectMeta {
        labels: Some(labels),
        // A config change rolls the pods.
        annotations: Some(BTreeMap::from([(
            CONFIG_HASH.to_owned(),
            config_hash.to_owned(),
        )])),
        ..Default::default()
    }
}

fn short_hash(s: &str) -> String {
    blake3::hash(s.as_bytes()).to_hex()[..16].to_owned()
}

/// The Secret holding the HS256 key that store and edges share: the store signs and
/// verifies tokens with it (`logstream-gateway token` mints them from the same file),
/// edges verify viewers' tokens and sign their own upstream `Tail.Subscribe` calls.
/// Returned without data: a pure function cannot make a random key, and the key must
/// never change once made, so the apply layer creates the Secret with
/// [`with_signing_key`] only when it does not exist. `immutable` makes the API server
/// refuse any edit of the key; rotating it means deleting the Secret (a new one is
/// made at the next reconcile) and restarting the gateway pods, which read the key at
/// start. An administrator may create the Secret first to bring their own key.
pub fn signing_key_secret(ls: &LogStream, names: &Names) -> Secret {
    Secret {
        metadata: meta(ls, &names.signing_key, None),
        type_: Some("Opaque".into()),
        immutable: Some(true),
        ..Default::default()
    }
}

/// `secret` with `random` as its signing key: 32 bytes written as 64 lowercase hex
/// characters, the format `logstream-gateway` generates itself (the file's bytes are
/// the HMAC key, so the same text must reach every reader).
pub fn with_signing_key(mut secret: Secret, random: [u8; 32]) -> Secret {
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    secret.data = Some(BTreeMap::from([(
        SIGNING_KEY.to_owned(),
        ByteString(hex.into_bytes()),
    )]));
    secret
}

/// The store's gateway configuration (read by `logstream-gateway serve --config`).
/// `desired()` checks the spec first; on an unchecked one a cache size that is not a
/// quantity falls back to the gateway's default.
pub fn store_config(ls: &LogStream, cfg: &Config) -> gateway::Config {
    let spec = &ls.spec;
    let q = &spec.quotas;
    // TOML integers are i64: a larger quota is as good as unlimited.
    let quota = |v: Option<u64>| v.map_or(0, |v| v.min(i64::MAX as u64));
    gateway::Config {
        role: gateway::Role::Store,
        listen: any_address(HTTP_PORT),
        grpc_listen: any_address(GRPC_PORT),
        data_dir: DATA_DIR.into(),
        retention: spec.retention.clone(),
        deployment_idle_timeout: spec.deployment_idle_timeout.clone(),
        redaction: gateway::RedactionConfig {
            builtins: spec.redaction.builtins,
            style: match spec.redaction.style {
                MaskStyle::Stars => "stars",
                MaskStyle::Label => "label",
            }
            .into(),
            patterns: spec
                .redaction
                .patterns
                .iter()
                .map(|p| gateway::NamedPattern {
                    name: p.name.clone(),
                    regex: p.regex.clone(),
                })
                .collect(),
        },
        quotas: gateway::QuotaLimits {
            ingest_lines_per_sec: quota(q.ingest_lines_per_second),
            ingest_bytes_per_sec: quota(q.ingest_bytes_per_second),
            deployments_per_day: quota(q.deployments_per_day),
            max_stored_bytes: quota(q.storage_bytes),
            max_open_deployments: quota(q.open_deployments),
        },
        kafka: spec.kafka.as_ref().map(|k| kafka_config(ls, k, cfg)),
        object_store: spec.object_store.as_ref().map(object_store_config),
        store_replicas: store_replica_urls(ls, cfg),
        tenant_alerts: alerts_config(ls),
        ..auth_settings(ls, cfg)
    }
}

/// Receivers whose URL is in a Secret: (receiver name, the Secret's key).
fn alert_url_secrets(ls: &LogStream) -> Vec<(&str, &logstream_model::alert::SecretKey)> {
    ls.spec
        .alerts
        .iter()
        .flat_map(|a| &a.receivers)
        .filter_map(|r| Some((r.name.as_str(), r.target()?.1.url_secret.as_ref()?)))
        .collect()
}

/// The tenant's alerts as the gateway reads them: a receiver's `urlSecret` becomes the
/// file of its mounted Secret.
fn alerts_config(ls: &LogStream) -> BTreeMap<String, logstream_model::alert::AlertsSpec> {
    let Some(alerts) = &ls.spec.alerts else {
        return BTreeMap::new();
    };
    let mut alerts = alerts.clone();
    for r in &mut alerts.receivers {
        let name = r.name.clone();
        for e in [&mut r.alertmanager, &mut r.webhook, &mut r.slack]
            .into_iter()
            .flatten()
        {
            if e.url_secret.take().is_some() {
                e.url_file = Some(format!("{ALERT_RECEIVERS_DIR}/{name}/url"));
            }
        }
    }
    BTreeMap::from([(ls.spec.tenant.clone(), alerts)])
}

/// The store's `[object_store]`: the bucket, the credentials as the file of the mounted
/// Secret, the cache size in bytes and the intervals the LogStream sets (the gateway's
/// defaults otherwise). Every store replica gets the same: they share the prefix.
fn object_store_config(o: &ObjectStoreSpec) -> gateway::ObjectStoreConfig {
    let defaults = gateway::ObjectStoreConfig::default();
    gateway::ObjectStoreConfig {
        url: o.url.clone(),
        endpoint: o.endpoint.clone(),
        region: o.region.clone(),
        credentials_file: o
            .secret_ref
            .as_ref()
            .map(|_| Path::new(OBJECT_STORE_DIR).join(OBJECT_STORE_CREDENTIALS)),
        // TOML integers are i64.
        local_cache_bytes: o
            .local_cache_bytes()
            .map_or(defaults.local_cache_bytes, |b| b.min(i64::MAX as u64)),
        upload_interval: o
            .upload_interval
            .clone()
            .unwrap_or(defaults.upload_interval.clone()),
        sweep_interval: o
            .sweep_interval
            .clone()
            .unwrap_or(defaults.sweep_interval.clone()),
        orphan_grace: o
            .orphan_grace
            .clone()
            .unwrap_or(defaults.orphan_grace.clone()),
        ..defaults
    }
}

/// The store's `[kafka]`: the tenant's topic and how it is created, the replicas'
/// consumer group, how this replica is reached (`{hostname}` is the pod name, which the
/// gateway expands at start) and the credentials as files of the mounted Secret. A
/// replica that takes a partition over rebuilds it from the topic, so the topic keeps
/// the LogStream's retention.
fn kafka_config(ls: &LogStream, k: &KafkaSpec, cfg: &Config) -> gateway::KafkaConfig {
    let protocol = k.security_protocol;
    let file = |needed: bool, key: &str| {
        kafka_secret(ls)
            .filter(|_| needed)
            .map(|_| Path::new(KAFKA_DIR).join(key))
    };
    let sasl = protocol.is_sasl();
    let ssl = protocol.is_ssl();
    let host = format!("{{hostname}}.{}", store_host(ls, cfg));
    gateway::KafkaConfig {
        brokers: k.brokers.join(","),
        topic_prefix: k.topic_prefix.clone(),
        tenants: vec![ls.spec.tenant.clone()],
        group: format!(
            "logstream-{}-{}",
            ls.namespace().unwrap_or_default(),
            ls.name_any()
        ),
        partitions: k.partitions,
        replication_factor: k.replication_factor,
        create_topics: k.create_topics,
        topic_retention: ls.spec.retention.clone(),
        security_protocol: protocol.as_str().into(),
        sasl_mechanism: k.sasl_mechanism.filter(|_| sasl).map(|m| m.as_str().into()),
        sasl_username: k.sasl_username.clone().filter(|_| sasl),
        sasl_password_file: file(sasl, KAFKA_PASSWORD),
        ssl_ca_file: file(ssl, KAFKA_CA),
        ssl_cert_file: file(ssl, KAFKA_CERT),
        ssl_key_file: file(ssl, KAFKA_KEY),
        advertise_url: Some(format!("http://{host}:{HTTP_PORT}")),
        advertise_grpc: Some(format!("http://{host}:{GRPC_PORT}")),
        ..gateway::KafkaConfig::default()
    }
}

/// The Kafka client Secret the store pods mount: `spec.kafka.secretRef` when the
/// security protocol reads a file from it (SASL's password, TLS's CA and client keys).
fn kafka_secret(ls: &LogStream) -> Option<&str> {
    let k = ls.spec.kafka.as_ref()?;
    if k.security_protocol.is_sasl() || k.security_protocol.is_ssl() {
        k.secret_ref.as_deref()
    } else {
        None
    }
}

/// The edge's gateway configuration: a viewer front that authenticates viewers itself
/// and follows the store over gRPC (history and exports still go to `upstream`). In
/// Kafka mode it also knows every store replica, to reach the one that owns a
/// deployment.
pub fn edge_config(ls: &LogStream, cfg: &Config) -> gateway::Config {
    gateway::Config {
        role: gateway::Role::Edge,
        listen: any_address(HTTP_PORT),
        upstream: Some(store_url(ls, cfg)),
        upstream_grpc: Some(store_grpc_url(ls, cfg)),
        store_replicas: store_replica_urls(ls, cfg),
        ..auth_settings(ls, cfg)
    }
}

/// What store and edges must agree on, on top of the gateway's defaults: who may read
/// or push (the shared HS256 key, the identity provider, the ServiceAccount issuer and
/// mappings) and how many viewers a tenant and a deployment get. Both configs start
/// from this one function, so a token the store accepts is never refused by an edge or
/// the other way round. The viewer limits apply per process: each edge enforces them
/// for the viewers it holds.
fn auth_settings(ls: &LogStream, cfg: &Config) -> gateway::Config {
    let spec = &ls.spec;
    let auth = &spec.gateway.auth;
    let q = &spec.quotas;
    let defaults = gateway::Config::default();
    let viewers = |v: Option<u32>, default: usize| {
        v.map_or(default, |v| usize::try_from(v).unwrap_or(usize::MAX))
    };

    // ServiceAccount tokens of this cluster: the collectors always push; the
    // LogStream names who else may push or read.
    let mut service_accounts = vec![gateway::SaMappingConfig {
        namespace: cfg.collector_namespace.clone(),
        name: cfg.collector_service_account.clone(),
        tenant: spec.tenant.clone(),
        scopes: vec!["logs:write".to_owned()],
    }];
    service_accounts.extend(
        auth.service_accounts
            .iter()
            .map(|a| gateway::SaMappingConfig {
                namespace: a.namespace.clone(),
                name: a.name.clone(),
                tenant: spec.tenant.clone(),
                scopes: a.scopes.clone(),
            }),
    );

    gateway::Config {
        signing_key_file: Some(format!("{KEY_DIR}/{SIGNING_KEY}").into()),
        max_viewers_per_tenant: viewers(q.viewers, defaults.max_viewers_per_tenant),
        max_viewers_per_deployment: viewers(
            q.viewers_per_deployment,
            defaults.max_viewers_per_deployment,
        ),
        issuer: auth.issuer.clone(),
        jwks_url: auth.jwks_url.clone(),
        audience: auth.audience.clone(),
        // The API server serves the issuer's keys to authenticated callers only: the
        // pod's own token and the cluster CA (automounted in every gateway pod).
        service_account_issuers: vec![gateway::SaIssuerConfig {
            issuer: cfg.service_account_issuer.clone(),
            audience: "logstream".into(),
            jwks_url: cfg.service_account_jwks_url.clone(),
            ca_file: Some(format!("{SA_DIR}/ca.crt").into()),
            token_file: Some(format!("{SA_DIR}/token").into()),
        }],
        service_accounts,
        ..defaults
    }
}

/// `0.0.0.0:<port>`.
fn any_address(port: i32) -> SocketAddr {
    let port = u16::try_from(port).expect("HTTP_PORT and GRPC_PORT are ports");
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
}

/// The file the gateway reads: `c` as TOML, without the top-level keys that equal the
/// gateway's defaults (the gateway fills them in, so the file parses back to `c`). Short
/// files, and a gateway image older than this operator only sees keys the LogStream
/// actually set.
pub fn render(c: &gateway::Config) -> String {
    // Cannot fail: every field is a string, bool, table or an integer within i64 (the
    // quotas are capped above; counts and sizes are far below), every path is UTF-8.
    let table = |c: &gateway::Config| {
        toml::Table::try_from(c).expect("a gateway config serialises to a TOML table")
    };
    let defaults = table(&gateway::Config::default());
    let mut t = table(c);
    t.retain(|key, value| defaults.get(key) != Some(value));
    toml::to_string(&t).expect("a TOML table serialises")
}
