//! `desired()` without a cluster: defaults, every spec field, upgrades that change only
//! what they should, and gateway configs the real gateway accepts.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use logstream_crds::LogStream;
use logstream_model::config::Config as GatewayConfig;
use logstream_operator::Config;
use logstream_operator::desired::{Owned, desired};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

fn sample(name: &str) -> LogStream {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../e2e/samples")
        .join(name);
    let mut ls: LogStream = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    ls.metadata.uid = Some("6a1c0c3e-0000-4000-8000-000000000001".into());
    ls.metadata.generation = Some(1);
    ls
}

/// Objects by `Kind/name`, as JSON.
fn by_name(objs: &[Owned]) -> BTreeMap<String, Value> {
    objs.iter().map(|o| (o.describe(), o.to_json())).collect()
}

fn get<T: serde::de::DeserializeOwned>(objs: &[Owned], key: &str) -> T {
    serde_json::from_value(
        by_name(objs)
            .remove(key)
            .unwrap_or_else(|| panic!("no {key}")),
    )
    .unwrap()
}

#[test]
fn defaults_of_a_minimal_logstream() {
    let ls = sample("minimal.yaml");
    let objs = desired(&ls, &Config::default()).unwrap();
    let names: Vec<String> = objs.iter().map(Owned::describe).collect();
    assert_eq!(
        names,
        [
            "ConfigMap/acme-gateway",
            "Secret/acme-signing-key",
            "ServiceAccount/acme-gateway",
            "Service/acme-store",
            "StatefulSet/acme-store",
            "Service/acme-edge",
            "Deployment/acme-edge",
            "HorizontalPodAutoscaler/acme-edge",
            "PodDisruptionBudget/acme-store",
            "PodDisruptionBudget/acme-edge",
            "NetworkPolicy/acme-store",
            "NetworkPolicy/acme-edge",
        ]
    );
    for o in by_name(&objs).values() {
        let m = &o["metadata"];
        assert_eq!(m["namespace"], "ci");
        assert_eq!(m["ownerReferences"][0]["kind"], "LogStream");
        assert_eq!(m["ownerReferences"][0]["controller"], true);
        assert_eq!(
            m["labels"]["app.kubernetes.io/managed-by"],
            "logstream-operator"
        );
        assert_eq!(m["labels"]["logstream.dev/tenant"], "acme");
    }
    let sts: StatefulSet = get(&objs, "StatefulSet/acme-store");
    let spec = sts.spec.unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.service_name.as_deref(), Some("acme-store"));
    let pvc = &spec.volume_claim_templates.unwrap()[0];
    let size = &pvc
        .spec
        .as_ref()
        .unwrap()
        .resources
        .as_ref()
        .unwrap()
        .requests
        .as_ref()
        .unwrap()["storage"];
    assert_eq!(size.0, "20Gi");
    let pod = spec.template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(Config::default().gateway_image.as_str())
    );
    assert_eq!(
        c.args.as_ref().unwrap(),
        &["serve", "--config", "/etc/logstream/store.toml"]
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));

    let edge: Deployment = get(&objs, "Deployment/acme-edge");
    assert_eq!(
        edge.spec.as_ref().unwrap().replicas,
        None,
        "the HPA owns replicas"
    );
    let hpa: HorizontalPodAutoscaler = get(&objs, "HorizontalPodAutoscaler/acme-edge");
    let h = hpa.spec.unwrap();
    assert_eq!((h.min_replicas, h.max_replicas), (Some(2), 10));
    let metrics = h.metrics.unwrap();
    assert_eq!(metrics.len(), 1);
    assert_eq!(
        metrics[0]
            .resource
            .as_ref()
            .unwrap()
            .target
            .average_utilization,
        Some(70)
    );

    let cm: ConfigMap = get(&objs, "ConfigMap/acme-gateway");
    let data = cm.data.unwrap();
    let store = gateway_config(&data["store.toml"]);
    assert_eq!(store.retention, "720h");
    assert!(store.redaction.builtins);
    assert_eq!(store.service_accounts.len(), 1, "the collector may push");
    assert_eq!(store.service_accounts[0].namespace, "logstream-system");
    assert_eq!(store.service_accounts[0].tenant, "acme");
    let edge = gateway_config(&data["edge.toml"]);
    assert_eq!(
        edge.upstream.as_deref(),
        Some("http://acme-store.ci.svc.cluster.local:8080")
    );
}

/// Parses and validates with the gateway's own configuration code.
fn gateway_config(toml_text: &str) -> GatewayConfig {
    let c: GatewayConfig = toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}\n{toml_text}"));
    c.validate()
        .unwrap_or_else(|e| panic!("{e:?}\n{toml_text}"));
    c
}

#[test]
fn every_field_of_the_full_sample_lands_where_it_should() {
    let ls = sample("full.yaml");
    let objs = desired(&ls, &Config::default()).unwrap();
    let sts: StatefulSet = get(&objs, "StatefulSet/payments-store");
    let spec = sts.spec.unwrap();
    assert_eq!(spec.replicas, Some(3));
    let pvc = spec.volume_claim_templates.unwrap().remove(0).spec.unwrap();
    assert_eq!(pvc.storage_class_name.as_deref(), Some("fast-ssd"));
    assert_eq!(
        pvc.resources.unwrap().requests.unwrap()["storage"].0,
        "100Gi"
    );
    let pod = spec.template.spec.unwrap();
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.example.com/logstream/gateway:0.1.0")
    );
    let res = pod.containers[0].resources.clone().unwrap();
    assert_eq!(res.limits.unwrap()["memory"].0, "4Gi");

    let hpa: HorizontalPodAutoscaler = get(&objs, "HorizontalPodAutoscaler/payments-edge");
    let h = hpa.spec.unwrap();
    assert_eq!((h.min_replicas, h.max_replicas), (Some(3), 30));
    let m = h.metrics.unwrap();
    assert_eq!(
        m[0].resource.as_ref().unwrap().target.average_utilization,
        Some(60)
    );
    let pods = m[1].pods.as_ref().unwrap();
    assert_eq!(pods.metric.name, "logstream_live_viewers");
    assert_eq!(pods.target.average_value.as_ref().unwrap().0, "2000");

    let cm: ConfigMap = get(&objs, "ConfigMap/payments-gateway");
    let store = gateway_config(&cm.data.unwrap()["store.toml"]);
    assert_eq!(store.retention, "2160h");
    assert_eq!(store.deployment_idle_timeout, "90m");
    assert_eq!(store.redaction.style, "label");
    let pats: Vec<_> = store
        .redaction
        .patterns
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(pats, ["ticket", "card"]);
    assert_eq!(store.quotas.ingest_lines_per_sec, 50_000);
    assert_eq!(store.quotas.ingest_bytes_per_sec, 20_000_000);
    assert_eq!(store.quotas.deployments_per_day, 5000);
    assert_eq!(store.quotas.max_stored_bytes, 200_000_000_000);
    assert_eq!(store.quotas.max_open_deployments, 2000);
    assert_eq!(store.max_viewers_per_tenant, 20_000);
    assert_eq!(store.max_viewers_per_deployment, 10_000);
    assert_eq!(store.issuer.as_deref(), Some("https://login.example.com"));
    assert_eq!(
        store.jwks_url.as_deref(),
        Some("https://login.example.com/.well-known/jwks.json")
    );
    assert_eq!(store.audience.as_deref(), Some("logstream"));
    let sa = &store.service_accounts[1];
    assert_eq!(
        (sa.namespace.as_str(), sa.name.as_str()),
        ("payments-ci", "ci-*")
    );
    assert_eq!(sa.scopes, ["logs:write", "logs:read"]);
    assert_eq!(
        store.service_account_issuers[0].issuer,
        Config::default().service_account_issuer
    );
    assert!(store.service_account_issuers[0].token_file.is_some());

    let q: ResourceQuota = get(&objs, "ResourceQuota/payments-quota");
    assert_eq!(q.spec.unwrap().hard.unwrap()["limits.cpu"].0, "16");
    assert!(by_name(&objs).contains_key("LimitRange/payments-quota"));

    // The store accepts traffic from edges, collectors, the operator and both selected
    // namespaces; nothing else.
    let np: NetworkPolicy = get(&objs, "NetworkPolicy/payments-store");
    let from = np.spec.unwrap().ingress.unwrap().remove(0).from.unwrap();
    assert_eq!(from.len(), 5);
    let namespaces: Vec<_> = from
        .iter()
        .filter_map(|p| {
            p.namespace_selector
                .as_ref()?
                .match_labels
                .as_ref()?
                .get("kubernetes.io/metadata.name")
                .cloned()
        })
        .collect();
    assert_eq!(
        namespaces,
        [
            "logstream-system",
            "logstream-system",
            "payments-ci",
            "payments-build"
        ]
    );
}

/// The store and edge configs of a LogStream, parsed and validated by the gateway's
/// own code.
fn configs(ls: &LogStream) -> (GatewayConfig, GatewayConfig) {
    let objs = desired(ls, &Config::default()).unwrap();
    let n = ls.metadata.name.clone().unwrap();
    let cm: ConfigMap = get(&objs, &format!("ConfigMap/{n}-gateway"));
    let data = cm.data.unwrap();
    (
        gateway_config(&data["store.toml"]),
        gateway_config(&data["edge.toml"]),
    )
}

#[test]
fn kafka_mode_runs_every_store_replica_and_tells_store_and_edge_where_they_are() {
    let ls = sample("kafka.yaml");
    let objs = desired(&ls, &Config::default()).unwrap();
    let sts: StatefulSet = get(&objs, "StatefulSet/builds-store");
    assert_eq!(sts.spec.unwrap().replicas, Some(3));

    let replicas: Vec<String> = (0..3)
        .map(|i| format!("http://builds-store-{i}.builds-store.builds-ci.svc.cluster.local:8080"))
        .collect();
    let (store, edge) = configs(&ls);
    let k = store.kafka.expect("[kafka] in store.toml");
    assert_eq!(k.brokers, "my-cluster-kafka-bootstrap.kafka.svc:9092");
    assert_eq!(k.topic_prefix, "logstream.");
    assert_eq!(k.topic("builds"), "logstream.builds");
    assert_eq!(k.tenants, ["builds"]);
    assert_eq!(k.group, "logstream-builds-ci-builds");
    assert_eq!((k.partitions, k.replication_factor), (12, 3));
    assert!(k.create_topics);
    assert_eq!(
        k.topic_retention, store.retention,
        "the topic keeps what the store keeps"
    );
    assert_eq!(k.security_protocol, "plaintext");
    assert_eq!(
        k.advertise_url.as_deref(),
        Some("http://{hostname}.builds-store.builds-ci.svc.cluster.local:8080")
    );
    assert_eq!(
        k.advertise_grpc.as_deref(),
        Some("http://{hostname}.builds-store.builds-ci.svc.cluster.local:8081")
    );
    // What a replica advertises, with its pod name for `{hostname}`, is its entry in
    // the list every replica and edge routes by.
    for (i, url) in replicas.iter().enumerate() {
        let own = k
            .advertise_url
            .as_deref()
            .unwrap()
            .replace("{hostname}", &format!("builds-store-{i}"));
        assert_eq!(&own, url);
    }
    assert_eq!(
        (k.sasl_mechanism, k.sasl_username, k.sasl_password_file),
        (None, None, None)
    );
    assert_eq!(
        (k.ssl_ca_file, k.ssl_cert_file, k.ssl_key_file),
        (None, None, None)
    );
    assert_eq!(store.store_replicas, replicas);

    assert_eq!(edge.kafka, None, "edges do not consume Kafka");
    assert_eq!(edge.store_replicas, replicas);
    assert_eq!(
        edge.upstream.as_deref(),
        Some("http://builds-store.builds-ci.svc.cluster.local:8080"),
        "requests about no one deployment still go to the store Service"
    );

    // Plaintext: nothing to mount.
    let pod = get::<StatefulSet>(&objs, "StatefulSet/builds-store")
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    assert!(pod.volumes.unwrap().iter().all(|v| v.name != "kafka"));
}

#[test]
fn kafka_credentials_are_files_of_the_mounted_secret_for_the_protocol_that_reads_them() {
    use logstream_crds::{KafkaSecurityProtocol as P, SaslMechanism};
    use logstream_operator::desired::KAFKA_DIR;
    let file = |name: &str| Some(Path::new(KAFKA_DIR).join(name));

    // full.yaml: sasl_ssl, every Kafka field set.
    let ls = sample("full.yaml");
    let (store, _) = configs(&ls);
    let k = store.kafka.unwrap();
    assert_eq!(k.brokers, "kafka-0.kafka:9093,kafka-1.kafka:9093");
    assert_eq!(k.topic("payments"), "ci-logs.payments");
    assert_eq!((k.partitions, k.replication_factor), (24, 3));
    assert!(
        !k.create_topics,
        "the cluster's topic operator makes the topic"
    );
    assert_eq!(k.topic_retention, "2160h");
    assert_eq!(k.security_protocol, "sasl_ssl");
    assert_eq!(k.sasl_mechanism.as_deref(), Some("SCRAM-SHA-512"));
    assert_eq!(k.sasl_username.as_deref(), Some("logstream-payments"));
    assert_eq!(k.sasl_password_file, file("password"));
    assert_eq!(k.ssl_ca_file, file("ca.crt"));
    assert_eq!(k.ssl_cert_file, file("tls.crt"));
    assert_eq!(k.ssl_key_file, file("tls.key"));

    // Each protocol names only the files it reads.
    for (protocol, sasl, ssl) in [
        (P::SaslPlaintext, true, false),
        (P::Ssl, false, true),
        (P::SaslSsl, true, true),
        (P::Plaintext, false, false),
    ] {
        let mut ls = sample("full.yaml");
        let kafka = ls.spec.kafka.as_mut().unwrap();
        kafka.security_protocol = protocol;
        kafka.sasl_mechanism = Some(SaslMechanism::Plain);
        let (store, _) = configs(&ls);
        let k = store.kafka.unwrap();
        let when = |yes: bool, name: &str| if yes { file(name) } else { None };
        assert_eq!(k.security_protocol, protocol.as_str());
        assert_eq!(k.sasl_password_file, when(sasl, "password"), "{protocol:?}");
        assert_eq!(
            k.sasl_mechanism.as_deref(),
            sasl.then_some("PLAIN"),
            "{protocol:?}"
        );
        assert_eq!(k.ssl_ca_file, when(ssl, "ca.crt"), "{protocol:?}");
        assert_eq!(k.ssl_cert_file, when(ssl, "tls.crt"), "{protocol:?}");
        assert_eq!(k.ssl_key_file, when(ssl, "tls.key"), "{protocol:?}");
        let objs = desired(&ls, &Config::default()).unwrap();
        let sts: StatefulSet = get(&objs, "StatefulSet/payments-store");
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let mounted = pod.volumes.unwrap().iter().any(|v| v.name == "kafka");
        assert_eq!(
            mounted,
            sasl || ssl,
            "{protocol:?}: the Secret is mounted when read"
        );
    }

    // TLS without a Secret trusts the image's CA bundle: no files, nothing mounted.
    let mut ls = sample("full.yaml");
    let kafka = ls.spec.kafka.as_mut().unwrap();
    kafka.security_protocol = P::Ssl;
    kafka.secret_ref = None;
    let (store, _) = configs(&ls);
    let k = store.kafka.unwrap();
    assert_eq!((k.ssl_ca_file, k.ssl_cert_file), (None, None));
    let objs = desired(&ls, &Config::default()).unwrap();
    let sts: StatefulSet = get(&objs, "StatefulSet/payments-store");
    let pod = sts.spec.unwrap().template.spec.unwrap();
    assert!(pod.volumes.unwrap().iter().all(|v| v.name != "kafka"));
}

#[test]
fn without_kafka_one_store_and_no_kafka_keys() {
    for name in ["minimal.yaml", "single-edge.yaml"] {
        let ls = sample(name);
        let n = ls.metadata.name.clone().unwrap();
        let objs = desired(&ls, &Config::default()).unwrap();
        let sts: StatefulSet = get(&objs, &format!("StatefulSet/{n}-store"));
        assert_eq!(sts.spec.unwrap().replicas, Some(1), "{name}");
        let cm: ConfigMap = get(&objs, &format!("ConfigMap/{n}-gateway"));
        for (file, text) in cm.data.unwrap() {
            assert!(
                !text.contains("kafka") && !text.contains("store_replicas"),
                "{name} {file}:\n{text}"
            );
        }
        let np: NetworkPolicy = get(&objs, &format!("NetworkPolicy/{n}-store"));
        assert_eq!(np.spec.unwrap().ingress.unwrap().len(), 1, "{name}");
    }
}

/// The pod spec of a LogStream's store StatefulSet.
fn store_pod(objs: &[Owned], n: &str) -> k8s_openapi::api::core::v1::PodSpec {
    get::<StatefulSet>(objs, &format!("StatefulSet/{n}-store"))
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
}

#[test]
fn object_store_goes_to_the_store_config_with_its_credentials_mounted() {
    use logstream_operator::desired::OBJECT_STORE_DIR;
    let ls = sample("object-store.yaml");
    let (store, edge) = configs(&ls);
    let o = store.object_store.expect("[object_store] in store.toml");
    assert_eq!(o.url, "s3://ci-logs/releases");
    assert_eq!(o.endpoint.as_deref(), Some("http://minio.storage.svc:9000"));
    assert_eq!(o.region.as_deref(), Some("us-east-1"));
    assert_eq!(
        o.credentials_file,
        Some(Path::new(OBJECT_STORE_DIR).join("credentials"))
    );
    assert_eq!(o.local_cache_bytes, 20 << 30, "localCacheSize: 20Gi");
    assert_eq!(o.upload_interval, "30s");
    let defaults = logstream_model::config::ObjectStoreConfig::default();
    assert_eq!(
        (o.sweep_interval, o.orphan_grace, o.request_timeout),
        (
            defaults.sweep_interval,
            defaults.orphan_grace,
            defaults.request_timeout
        ),
        "what the LogStream leaves out is the gateway's default"
    );
    assert_eq!(edge.object_store, None, "edges store nothing");

    let objs = desired(&ls, &Config::default()).unwrap();
    let pod = store_pod(&objs, "releases");
    let volume = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "object-store")
        .expect("the object storage Secret as a volume");
    let secret = volume.secret.unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("logs-bucket"));
    assert_eq!(secret.default_mode, Some(0o440));
    let mount = pod.containers[0]
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .find(|m| m.name == "object-store")
        .unwrap();
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        (OBJECT_STORE_DIR, Some(true))
    );
    let edge = get::<Deployment>(&objs, "Deployment/releases-edge")
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    assert!(
        edge.volumes
            .unwrap()
            .iter()
            .all(|v| v.name != "object-store"),
        "edges do not read the bucket"
    );

    // full.yaml: Google Cloud Storage next to Kafka, every interval set; each replica
    // gets the same [object_store].
    let ls = sample("full.yaml");
    let (store, _) = configs(&ls);
    let o = store.object_store.unwrap();
    assert_eq!(o.url, "gs://payments-ci-logs/logstream");
    assert_eq!((o.endpoint, o.region), (None, None));
    assert_eq!(o.local_cache_bytes, 40 << 30);
    assert_eq!(
        (
            o.upload_interval.as_str(),
            o.sweep_interval.as_str(),
            o.orphan_grace.as_str()
        ),
        ("5s", "30m", "2h")
    );
    assert!(store.kafka.is_some());

    // Without a Secret, the pods' own identity: no file, nothing mounted.
    let mut ls = sample("object-store.yaml");
    ls.spec.object_store.as_mut().unwrap().secret_ref = None;
    let (store, _) = configs(&ls);
    assert_eq!(store.object_store.unwrap().credentials_file, None);
    let pod = store_pod(&desired(&ls, &Config::default()).unwrap(), "releases");
    assert!(!mounts_object_store(pod));
}

/// Whether the store pod has the object storage Secret's volume.
fn mounts_object_store(pod: k8s_openapi::api::core::v1::PodSpec) -> bool {
    pod.volumes
        .unwrap_or_default()
        .iter()
        .any(|v| v.name == "object-store")
}

#[test]
fn without_object_store_no_object_store_keys() {
    for name in ["minimal.yaml", "single-edge.yaml", "kafka.yaml"] {
        let ls = sample(name);
        let n = ls.metadata.name.clone().unwrap();
        let objs = desired(&ls, &Config::default()).unwrap();
        let cm: ConfigMap = get(&objs, &format!("ConfigMap/{n}-gateway"));
        for (file, text) in cm.data.unwrap() {
            assert!(!text.contains("object_store"), "{name} {file}:\n{text}");
        }
        assert!(!mounts_object_store(store_pod(&objs, &n)), "{name}");
    }
}

/// The cache lives on the store volume beside the segments not uploaded yet: a cache
/// as large as the volume (the 10Gi default on a 5Gi volume included) is refused
/// before anything is applied, and so is a size the operator cannot read.
#[test]
fn a_local_cache_that_does_not_fit_the_store_volume_is_refused() {
    let mut ls = sample("object-store.yaml");
    ls.spec.gateway.store.storage_size = "20Gi".into();
    let e = desired(&ls, &Config::default()).unwrap_err().to_string();
    assert!(
        e.contains(
            "spec.objectStore.localCacheSize must be smaller than spec.gateway.store.storageSize"
        ) && e.contains("localCacheSize 20Gi, storageSize 20Gi"),
        "{e}"
    );
    ls.spec.object_store.as_mut().unwrap().local_cache_size = "19.5Gi".into();
    desired(&ls, &Config::default()).expect("a cache smaller than the volume");

    let mut ls = sample("single-edge.yaml");
    ls.spec.object_store = sample("object-store.yaml").spec.object_store;
    ls.spec.object_store.as_mut().unwrap().local_cache_size =
        logstream_crds::DEFAULT_LOCAL_CACHE_SIZE.into();
    let e = desired(&ls, &Config::default()).unwrap_err().to_string();
    assert!(e.contains("storageSize 5Gi"), "{e}");

    let mut ls = sample("object-store.yaml");
    ls.spec.object_store.as_mut().unwrap().local_cache_size = "10GB".into();
    let e = desired(&ls, &Config::default()).unwrap_err().to_string();
    assert!(
        e.contains("spec.objectStore.localCacheSize \"10GB\""),
        "{e}"
    );

    let mut ls = sample("object-store.yaml");
    ls.spec.object_store.as_mut().unwrap().orphan_grace = Some("0h".into());
    let e = desired(&ls, &Config::default()).unwrap_err().to_string();
    assert!(e.contains("spec.objectStore.orphanGrace"), "{e}");
}

/// Which objects differ between two LogStreams.
fn changed(a: &LogStream, b: &LogStream) -> Vec<String> {
    let (x, y) = (
        by_name(&desired(a, &Config::default()).unwrap()),
        by_name(&desired(b, &Config::default()).unwrap()),
    );
    let mut keys: Vec<_> = x.keys().chain(y.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().filter(|k| x.get(k) != y.get(k)).collect()
}

#[test]
fn upgrades_change_only_what_they_should() {
    let base = sample("minimal.yaml");
    assert!(
        changed(&base, &base.clone()).is_empty(),
        "desired() is deterministic"
    );

    let mut b = base.clone();
    b.spec.gateway.edge.max_replicas = 20;
    assert_eq!(changed(&base, &b), ["HorizontalPodAutoscaler/acme-edge"]);

    // Config changes roll the pods that read them (the config hash in the template).
    let mut b = base.clone();
    b.spec
        .redaction
        .patterns
        .push(logstream_crds::NamedPattern {
            name: "t".into(),
            regex: "T-[0-9]+".into(),
        });
    assert_eq!(
        changed(&base, &b),
        ["ConfigMap/acme-gateway", "StatefulSet/acme-store"]
    );

    let mut b = base.clone();
    b.spec.gateway.image = Some("example.com/gw:2".into());
    assert_eq!(
        changed(&base, &b),
        ["Deployment/acme-edge", "StatefulSet/acme-store"]
    );

    let mut b = base.clone();
    b.spec.selector.namespaces = vec!["builds".into()];
    assert_eq!(changed(&base, &b), ["NetworkPolicy/acme-store"]);

    // Kafka mode: both configs (the edge learns the store replicas) and the store
    // replicas' access to each other.
    let mut b = base.clone();
    b.spec.kafka = sample("kafka.yaml").spec.kafka;
    assert_eq!(
        changed(&base, &b),
        [
            "ConfigMap/acme-gateway",
            "Deployment/acme-edge",
            "NetworkPolicy/acme-store",
            "StatefulSet/acme-store"
        ]
    );

    // Object storage: only the store reads it (its config and its Secret mount).
    let mut b = base.clone();
    b.spec.object_store = sample("object-store.yaml").spec.object_store;
    b.spec.gateway.store.storage_size = "50Gi".into();
    let mut c = base.clone();
    c.spec.gateway.store.storage_size = "50Gi".into();
    assert_eq!(
        changed(&c, &b),
        ["ConfigMap/acme-gateway", "StatefulSet/acme-store"]
    );

    let mut b = base.clone();
    b.spec.namespace_quota = Some(logstream_crds::NamespaceQuota {
        cpu: "4".into(),
        memory: "8Gi".into(),
        storage: "100Gi".into(),
    });
    assert_eq!(
        changed(&base, &b),
        ["LimitRange/acme-quota", "ResourceQuota/acme-quota"]
    );

    // Authentication and viewer limits are in both configs: both roles roll.
    let mut b = base.clone();
    b.spec.quotas.viewers_per_deployment = Some(50);
    assert_eq!(
        changed(&base, &b),
        [
            "ConfigMap/acme-gateway",
            "Deployment/acme-edge",
            "StatefulSet/acme-store"
        ]
    );
    let mut b = base.clone();
    b.spec.gateway.auth.audience = Some("logs".into());
    assert_eq!(
        changed(&base, &b),
        [
            "ConfigMap/acme-gateway",
            "Deployment/acme-edge",
            "StatefulSet/acme-store"
        ]
    );
}

#[test]
fn an_invalid_spec_is_refused_with_the_field_named() {
    let mut ls = sample("minimal.yaml");
    ls.spec
        .redaction
        .patterns
        .push(logstream_crds::NamedPattern {
            name: "x".into(),
            regex: "(".into(),
        });
    let e = desired(&ls, &Config::default()).unwrap_err().to_string();
    assert!(e.contains("spec.redaction.patterns[0] (x)"), "{e}");
    let mut ls = sample("minimal.yaml");
    ls.spec.retention = "0h".into();
    let e = desired(&ls, &Config::default()).unwrap_err().to_string();
    assert!(e.contains("spec.retention"), "{e}");
    let mut ls = sample("minimal.yaml");
    ls.spec.deployment_idle_timeout = "soon".into();
    let e = desired(&ls, &Config::default()).unwrap_err().to_string();
    assert!(e.contains("spec.deploymentIdleTimeout"), "{e}");
}

#[test]
fn rendered_gateway_configs_parse_with_the_gateways_own_type_and_validate() {
    use logstream_model::config::Role;
    use logstream_operator::desired::{edge_config, store_config};
    for name in [
        "minimal.yaml",
        "full.yaml",
        "single-edge.yaml",
        "kafka.yaml",
        "object-store.yaml",
    ] {
        let ls = sample(name);
        let cfg = Config::default();
        let objs = desired(&ls, &cfg).unwrap();
        let cm: ConfigMap = get(
            &objs,
            &format!("ConfigMap/{}-gateway", ls.metadata.name.as_deref().unwrap()),
        );
        let data = cm.data.unwrap();
        for (file, role, built) in [
            ("store.toml", Role::Store, store_config(&ls, &cfg)),
            ("edge.toml", Role::Edge, edge_config(&ls, &cfg)),
        ] {
            let text = &data[file];
            // deny_unknown_fields: a key the gateway does not know fails here.
            let parsed: GatewayConfig =
                toml::from_str(text).unwrap_or_else(|e| panic!("{name} {file}: {e}\n{text}"));
            parsed
                .validate()
                .unwrap_or_else(|e| panic!("{name} {file}: {e}\n{text}"));
            assert_eq!(parsed.role, role, "{name} {file}");
            assert_eq!(
                parsed, built,
                "{name} {file} parses back to what the operator built\n{text}"
            );
        }
    }
}

/// The fields store and edge must agree on for a token to mean the same at both.
fn auth_of(c: &GatewayConfig) -> impl PartialEq + std::fmt::Debug {
    (
        (
            c.signing_key_file.clone(),
            c.accept_hs256,
            c.public_keys.clone(),
            c.jwks_file.clone(),
            c.jwks_url.clone(),
            c.issuer.clone(),
            c.audience.clone(),
        ),
        (
            c.service_account_issuers.clone(),
            c.service_accounts.clone(),
            c.max_viewers_per_tenant,
            c.max_viewers_per_deployment,
            c.max_streams_per_token,
        ),
    )
}

#[test]
fn store_and_edge_authenticate_alike_and_edges_follow_the_store_over_grpc() {
    for (name, ns) in [("minimal.yaml", "ci"), ("full.yaml", "payments-ci")] {
        let ls = sample(name);
        let n = ls.metadata.name.clone().unwrap();
        let objs = desired(&ls, &Config::default()).unwrap();
        let cm: ConfigMap = get(&objs, &format!("ConfigMap/{n}-gateway"));
        let data = cm.data.unwrap();
        let (store, edge) = (
            gateway_config(&data["store.toml"]),
            gateway_config(&data["edge.toml"]),
        );
        assert_eq!(auth_of(&store), auth_of(&edge), "{name}");
        assert_eq!(
            edge.upstream_grpc.as_deref(),
            Some(format!("http://{n}-store.{ns}.svc.cluster.local:8081").as_str()),
            "{name}"
        );
        assert_eq!(
            edge.upstream.as_deref(),
            Some(format!("http://{n}-store.{ns}.svc.cluster.local:8080").as_str()),
            "{name}"
        );
    }
    // What the LogStream sets reaches the edge too, not only the defaults.
    let ls = sample("full.yaml");
    let edge = logstream_operator::desired::edge_config(&ls, &Config::default());
    assert_eq!(edge.issuer.as_deref(), Some("https://login.example.com"));
    assert_eq!(edge.audience.as_deref(), Some("logstream"));
    assert_eq!(edge.max_viewers_per_deployment, 10_000);
    assert_eq!(edge.max_viewers_per_tenant, 20_000);
    assert_eq!(edge.service_accounts[1].namespace, "payments-ci");
}

/// The signing key Secret without data (the apply layer makes the key), and the
/// format the key gets.
#[test]
fn the_signing_key_secret_is_built_without_a_key_and_filled_with_hex() {
    use k8s_openapi::api::core::v1::Secret;
    use logstream_operator::desired::{SIGNING_KEY, with_signing_key};
    let objs = desired(&sample("minimal.yaml"), &Config::default()).unwrap();
    let secret: Secret = get(&objs, "Secret/acme-signing-key");
    assert_eq!(secret.data, None, "desired() never carries the key");
    assert_eq!(secret.string_data, None);
    assert_eq!(secret.immutable, Some(true));
    let filled = with_signing_key(secret, [0xab; 32]);
    let key = &filled.data.unwrap()[SIGNING_KEY].0;
    assert_eq!(key, "ab".repeat(32).as_bytes());
}

/// Every file a rendered config names is there in the pod that reads it: the signing
/// key from its Secret, the ServiceAccount token and CA from the kubelet's automount.
#[test]
fn every_file_a_gateway_config_names_is_mounted_in_its_pod() {
    use k8s_openapi::api::core::v1::{PodSpec, ServiceAccount};
    use logstream_operator::desired::SA_DIR;
    for name in [
        "minimal.yaml",
        "full.yaml",
        "single-edge.yaml",
        "kafka.yaml",
        "object-store.yaml",
    ] {
        let ls = sample(name);
        let n = ls.metadata.name.clone().unwrap();
        let objs = desired(&ls, &Config::default()).unwrap();
        let cm: ConfigMap = get(&objs, &format!("ConfigMap/{n}-gateway"));
        let data = cm.data.unwrap();
        let sa: ServiceAccount = get(&objs, &format!("ServiceAccount/{n}-gateway"));
        let sts: StatefulSet = get(&objs, &format!("StatefulSet/{n}-store"));
        let edge: Deployment = get(&objs, &format!("Deployment/{n}-edge"));
        let pods: [(&str, PodSpec); 2] = [
            ("store.toml", sts.spec.unwrap().template.spec.unwrap()),
            ("edge.toml", edge.spec.unwrap().template.spec.unwrap()),
        ];
        for (file, pod) in pods {
            let config = gateway_config(&data[file]);
            let mounts = pod.containers[0].volume_mounts.clone().unwrap();
            let volumes = pod.volumes.clone().unwrap();

            // The signing key: a read-only mount of the LogStream's Secret.
            let key = config.signing_key_file.clone().expect("a signing key file");
            let key_mount = mounts
                .iter()
                .find(|m| key.parent() == Some(Path::new(&m.mount_path)))
                .unwrap_or_else(|| panic!("{name} {file}: nothing mounted at {key:?}"));
            assert_eq!(key_mount.read_only, Some(true), "{name} {file}");
            let volume = volumes.iter().find(|v| v.name == key_mount.name).unwrap();
            let secret = volume.secret.as_ref().expect("a Secret volume");
            assert_eq!(
                secret.secret_name.as_deref(),
                Some(format!("{n}-signing-key").as_str()),
                "{name} {file}"
            );
            assert_eq!(
                key.file_name().unwrap(),
                logstream_operator::desired::SIGNING_KEY,
                "the file is the Secret's entry"
            );

            // ServiceAccount token and CA: the automount, not turned off for this pod.
            let sa_files = config
                .service_account_issuers
                .iter()
                .flat_map(|i| [i.ca_file.clone(), i.token_file.clone()])
                .flatten()
                .collect::<Vec<_>>();
            assert!(!sa_files.is_empty(), "{name} {file}");
            for f in sa_files {
                assert!(f.starts_with(SA_DIR), "{name} {file}: {f:?}");
                assert_ne!(
                    pod.automount_service_account_token,
                    Some(false),
                    "{name} {file} reads {f:?}"
                );
                assert_eq!(sa.automount_service_account_token, Some(true));
                assert_eq!(
                    pod.service_account_name.as_deref(),
                    Some(format!("{n}-gateway").as_str())
                );
            }

            // Kafka credentials: entries of spec.kafka.secretRef, mounted read-only.
            let kafka_files = config
                .kafka
                .iter()
                .flat_map(|k| {
                    [
                        k.sasl_password_file.clone(),
                        k.ssl_ca_file.clone(),
                        k.ssl_cert_file.clone(),
                        k.ssl_key_file.clone(),
                    ]
                })
                .flatten()
                .collect::<Vec<_>>();
            // Object storage credentials: the `credentials` entry of
            // spec.objectStore.secretRef, mounted read-only.
            if let Some(f) = config
                .object_store
                .as_ref()
                .and_then(|o| o.credentials_file.clone())
            {
                let m = mounts
                    .iter()
                    .find(|m| f.parent() == Some(Path::new(&m.mount_path)))
                    .unwrap_or_else(|| panic!("{name} {file}: nothing mounted at {f:?}"));
                assert_eq!(m.read_only, Some(true), "{name} {file}");
                let secret = volumes
                    .iter()
                    .find(|v| v.name == m.name)
                    .and_then(|v| v.secret.clone())
                    .expect("a Secret volume");
                assert_eq!(
                    secret.secret_name.as_deref(),
                    ls.spec
                        .object_store
                        .as_ref()
                        .and_then(|o| o.secret_ref.as_deref()),
                    "{name} {file}"
                );
                let entry = f.file_name().unwrap().to_str().unwrap();
                let items = secret.items.unwrap_or_default();
                assert!(
                    items.iter().any(|i| i.key == entry && i.path == entry),
                    "{name} {file}: {f:?} is the Secret's {entry} entry: {items:?}"
                );
            }
            for f in kafka_files {
                let m = mounts
                    .iter()
                    .find(|m| f.parent() == Some(Path::new(&m.mount_path)))
                    .unwrap_or_else(|| panic!("{name} {file}: nothing mounted at {f:?}"));
                assert_eq!(m.read_only, Some(true), "{name} {file}");
                let volume = volumes.iter().find(|v| v.name == m.name).unwrap();
                assert_eq!(
                    volume
                        .secret
                        .as_ref()
                        .and_then(|s| s.secret_name.as_deref()),
                    ls.spec.kafka.as_ref().and_then(|k| k.secret_ref.as_deref()),
                    "{name} {file}"
                );
                assert!(
                    ["password", "ca.crt", "tls.crt", "tls.key"]
                        .contains(&f.file_name().unwrap().to_str().unwrap()),
                    "{name} {file}: {f:?} is an entry of the Secret"
                );
            }
        }
    }
}

/// The ports of the store's NetworkPolicy that admit pods labelled `labels` from the
/// LogStream's own namespace.
fn store_ports_admitting(objs: &[Owned], n: &str, labels: &BTreeMap<String, String>) -> Vec<i32> {
    let np: NetworkPolicy = get(objs, &format!("NetworkPolicy/{n}-store"));
    let mut ports: Vec<i32> = np
        .spec
        .unwrap()
        .ingress
        .unwrap()
        .into_iter()
        .filter(|rule| {
            rule.from.iter().flatten().any(|peer| {
                // Same namespace (no namespaceSelector), a pod selector the pods'
                // labels satisfy.
                peer.namespace_selector.is_none()
                    && peer.pod_selector.as_ref().is_some_and(|s| {
                        s.match_expressions.is_none()
                            && s.match_labels
                                .iter()
                                .flatten()
                                .all(|(k, v)| labels.get(k) == Some(v))
                    })
            })
        })
        .flat_map(|rule| rule.ports.unwrap_or_default())
        .map(|p| match p.port {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p)) => p,
            other => panic!("{n}: a named or missing port {other:?}"),
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Edges follow live deployments over the store's gRPC port and read history over
/// HTTP: the store's NetworkPolicy must admit the edge pods on both.
#[test]
fn edges_reach_the_store_on_http_and_grpc() {
    for name in ["minimal.yaml", "full.yaml", "kafka.yaml"] {
        let ls = sample(name);
        let n = ls.metadata.name.clone().unwrap();
        let objs = desired(&ls, &Config::default()).unwrap();
        let edge: Deployment = get(&objs, &format!("Deployment/{n}-edge"));
        let edge_labels = edge
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .labels
            .unwrap();
        assert_eq!(
            store_ports_admitting(&objs, &n, &edge_labels),
            [8080, 8081],
            "{name}"
        );
    }
}

/// In Kafka mode a store replica forwards what it does not own to the replica that
/// does, over HTTP: the store's NetworkPolicy admits the store pods on it. Without
/// Kafka there is one store and no such rule.
#[test]
fn store_replicas_reach_each_other_on_http_in_kafka_mode() {
    for (name, want) in [
        ("kafka.yaml", vec![8080]),
        ("full.yaml", vec![8080]),
        ("minimal.yaml", vec![]),
    ] {
        let ls = sample(name);
        let n = ls.metadata.name.clone().unwrap();
        let objs = desired(&ls, &Config::default()).unwrap();
        let sts: StatefulSet = get(&objs, &format!("StatefulSet/{n}-store"));
        let store_labels = sts.spec.unwrap().template.metadata.unwrap().labels.unwrap();
        assert_eq!(
            store_ports_admitting(&objs, &n, &store_labels),
            want,
            "{name}"
        );
    }
}

/// With `--prometheus-namespace`, Prometheus reaches the stores' /metrics (what the
/// platform alerts read) on the HTTP port only; without it, no rule admits it.
#[test]
fn prometheus_reaches_the_stores_metrics_only_when_named() {
    let ls = sample("minimal.yaml");
    let rule_for = |cfg: &Config| {
        let objs = desired(&ls, cfg).unwrap();
        let np: NetworkPolicy = get(&objs, "NetworkPolicy/acme-store");
        np.spec.unwrap().ingress.unwrap().into_iter().find(|r| {
            r.from.iter().flatten().any(|p| {
                p.pod_selector.is_none()
                    && p.namespace_selector.as_ref().is_some_and(|s| {
                        s.match_labels
                            .as_ref()
                            .and_then(|m| m.get("kubernetes.io/metadata.name"))
                            == Some(&"monitoring".to_owned())
                    })
            })
        })
    };
    assert!(rule_for(&Config::default()).is_none());
    let cfg = Config {
        prometheus_namespace: Some("monitoring".into()),
        ..Config::default()
    };
    let rule = rule_for(&cfg).expect("a rule for the monitoring namespace");
    let ports: Vec<_> = rule.ports.unwrap().into_iter().map(|p| p.port).collect();
    assert_eq!(
        ports,
        [Some(
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080)
        )]
    );
}
