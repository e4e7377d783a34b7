//! Reconcile against an in-process fake API server: create, become ready, idle, drift
//! repair, apply failure, invalid spec, delete with the finalizer, leader election, and
//! the object storage condition from the store replicas' `/metrics` (served on
//! 127.0.0.1 by a stand-in for the cluster's store Services).

mod fake_api;

use fake_api::FakeApi;
use http::Method;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use logstream_crds::LogStream;
use logstream_operator::Config;
use logstream_operator::controller::{self, Context, FIELD_MANAGER, FINALIZER};
use logstream_operator::leader::LeaderElection;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const LS: &str = "/apis/logstream.dev/v1alpha1/namespaces/ci/logstreams/acme";

fn setup(spec: Value) -> (Arc<Context>, FakeApi) {
    setup_with(spec, None)
}

/// A LogStream in the fake API; with `stores`, the operator reads the stores'
/// `/metrics` through that client (else it does not probe them).
fn setup_with(spec: Value, stores: Option<reqwest::Client>) -> (Arc<Context>, FakeApi) {
    let (client, fake) = FakeApi::start();
    let cfg = Config {
        probe_stores: stores.is_some(),
        ..Config::default()
    };
    let reporter = Reporter {
        controller: "logstream-operator".into(),
        instance: None,
    };
    let ctx = match stores {
        Some(http) => Context::with_http(client, cfg, reporter, http),
        None => Context::new(client, cfg, reporter),
    };
    fake.put(
        LS,
        json!({
            "apiVersion": "logstream.dev/v1alpha1", "kind": "LogStream",
            "metadata": {"name": "acme", "namespace": "ci", "uid": "ls-uid", "generation": 1},
            "spec": spec,
        }),
    );
    (ctx, fake)
}

fn current(fake: &FakeApi) -> Arc<LogStream> {
    Arc::new(serde_json::from_value(fake.get(LS).expect("the LogStream exists")).unwrap())
}

async fn reconcile(ctx: &Arc<Context>, fake: &FakeApi) -> Result<Action, controller::Error> {
    controller::reconcile(current(fake), ctx.clone()).await
}

fn condition(fake: &FakeApi, t: &str) -> (String, String, String) {
    let ls = fake.get(LS).unwrap();
    let c = ls["status"]["conditions"]
        .as_array()
        .unwrap_or_else(|| panic!("no conditions in {ls}"))
        .iter()
        .find(|c| c["type"] == t)
        .unwrap()
        .clone();
    let s = |k: &str| c[k].as_str().unwrap().to_owned();
    (s("status"), s("reason"), s("message"))
}

fn applies(fake: &FakeApi) -> Vec<String> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method == Method::PATCH && r.content_type == "application/apply-patch+yaml")
        .map(|r| {
            assert!(
                r.query.contains(&format!("fieldManager={FIELD_MANAGER}")),
                "{}",
                r.query
            );
            assert!(r.query.contains("force=true"), "{}", r.query);
            format!(
                "{}/{}",
                r.body["kind"].as_str().unwrap(),
                r.body["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

fn status_writes(fake: &FakeApi) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == Method::PATCH && r.path.ends_with("/status"))
        .count()
}

#[tokio::test]
async fn create_then_ready_then_idle_then_drift_is_repaired() {
    let (ctx, fake) = setup(json!({"tenant": "acme"}));
    // First pass adds the finalizer and waits for the resulting change.
    assert_eq!(
        reconcile(&ctx, &fake).await.unwrap(),
        Action::await_change()
    );
    assert_eq!(
        fake.get(LS).unwrap()["metadata"]["finalizers"],
        json!([FINALIZER])
    );
    assert!(applies(&fake).is_empty());

    // Second pass applies everything; pods are not up yet.
    fake.clear_requests();
    let action = reconcile(&ctx, &fake).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    let applied = applies(&fake);
    assert_eq!(applied.len(), 11, "{applied:?}");
    assert_eq!(applied[0], "ConfigMap/acme-gateway");
    assert!(
        fake.get("/apis/apps/v1/namespaces/ci/statefulsets/acme-store")
            .is_some()
    );
    assert!(
        fake.get("/apis/autoscaling/v2/namespaces/ci/horizontalpodautoscalers/acme-edge")
            .is_some()
    );
    assert_eq!(condition(&fake, "Ready").0, "False");
    assert_eq!(condition(&fake, "Ready").1, "Waiting");
    assert_eq!(condition(&fake, "Progressing").0, "True");
    assert_eq!(condition(&fake, "Degraded").0, "False");
    let st = fake.get(LS).unwrap()["status"].clone();
    assert_eq!(st["observedGeneration"], 1);
    assert_eq!(
        st["endpoints"]["http"],
        "http://acme-edge.ci.svc.cluster.local:8080"
    );
    assert_eq!(
        st["endpoints"]["ingest"],
        "acme-store.ci.svc.cluster.local:8081"
    );
    assert!(
        fake.events().iter().any(|e| e.1 == "Created"),
        "{:?}",
        fake.events()
    );

    // Pods come up: Ready, with an Event.
    {
        let mut s = fake.0.lock();
        s.workload_status.insert(
            "StatefulSet".into(),
            json!({"replicas": 1, "readyReplicas": 1}),
        );
        s.workload_status.insert(
            "Deployment".into(),
            json!({"replicas": 2, "availableReplicas": 2}),
        );
    }
    let action = reconcile(&ctx, &fake).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert_eq!(
        condition(&fake, "Ready"),
        (
            "True".into(),
            "GatewayReady".into(),
            "1 store and 2 edge replicas ready".into()
        )
    );
    assert_eq!(condition(&fake, "Progressing").0, "False");
    assert!(
        fake.events()
            .iter()
            .any(|e| e.0 == "Normal" && e.1 == "Ready")
    );
    let ready_since =
        fake.get(LS).unwrap()["status"]["conditions"][0]["lastTransitionTime"].clone();

    // Nothing changed: objects are re-applied (cheap, idempotent) but status is not written.
    fake.clear_requests();
    reconcile(&ctx, &fake).await.unwrap();
    assert_eq!(status_writes(&fake), 0);
    assert_eq!(
        fake.get(LS).unwrap()["status"]["conditions"][0]["lastTransitionTime"],
        ready_since
    );

    // Someone edits the edge Deployment: the next reconcile (woken by `.owns()`) puts
    // the operator's fields back.
    let path = "/apis/apps/v1/namespaces/ci/deployments/acme-edge";
    let mut d = fake.get(path).unwrap();
    let want = d["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    d["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest".into();
    fake.put(path, d);
    reconcile(&ctx, &fake).await.unwrap();
    assert_eq!(
        fake.get(path).unwrap()["spec"]["template"]["spec"]["containers"][0]["image"],
        want
    );
    // Every metric docs/metrics.md lists for the operator (and process_*) is exported.
    let text = ctx.metrics.render();
    logstream_gateway::testkit::assert_documented_metrics_exported(&text, "operator", &[]);
}

#[tokio::test]
async fn an_apply_failure_is_degraded_with_an_event_and_retried_with_backoff() {
    let (ctx, fake) = setup(json!({"tenant": "acme"}));
    reconcile(&ctx, &fake).await.unwrap();
    fake.0
        .lock()
        .fail
        .push((Method::PATCH, "horizontalpodautoscalers".into(), 500));
    let err = reconcile(&ctx, &fake).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("HorizontalPodAutoscaler/acme-edge"),
        "{err}"
    );
    let (status, reason, message) = condition(&fake, "Degraded");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "ApplyFailed"));
    assert!(
        message.contains("HorizontalPodAutoscaler/acme-edge")
            && message.contains("injected failure"),
        "{message}"
    );
    assert_eq!(condition(&fake, "Ready").1, "ApplyFailed");
    assert!(
        fake.events()
            .iter()
            .any(|e| e.0 == "Warning" && e.1 == "ApplyFailed")
    );
    let ls = current(&fake);
    assert_eq!(
        controller::error_policy(ls.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        controller::error_policy(ls.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    assert_eq!(controller::backoff(30), Duration::from_secs(300), "capped");

    // The API recovers: Degraded clears, with an Event.
    fake.0.lock().fail.clear();
    reconcile(&ctx, &fake).await.unwrap();
    assert_eq!(condition(&fake, "Degraded").0, "False");
    assert!(fake.events().iter().any(|e| e.1 == "Recovered"));
    // Backoff starts over after a success.
    assert_eq!(
        controller::error_policy(ls, &err, ctx),
        Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn an_invalid_spec_applies_nothing_and_says_why() {
    let (ctx, fake) = setup(
        json!({"tenant": "acme", "redaction": {"patterns": [{"name": "t", "regex": "(oops"}]}}),
    );
    reconcile(&ctx, &fake).await.unwrap();
    fake.clear_requests();
    assert_eq!(
        reconcile(&ctx, &fake).await.unwrap(),
        Action::await_change()
    );
    assert!(applies(&fake).is_empty());
    let (status, reason, message) = condition(&fake, "Degraded");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "InvalidSpec"));
    assert!(
        message.contains("spec.redaction.patterns[0] (t)"),
        "{message}"
    );
    assert!(
        fake.events()
            .iter()
            .any(|e| e.0 == "Warning" && e.1 == "InvalidSpec")
    );
}

#[tokio::test]
async fn kafka_mode_runs_every_store_replica_and_is_ready_when_all_are() {
    let (ctx, fake) = setup(json!({
        "tenant": "acme",
        "gateway": {"store": {"replicas": 3}},
        "kafka": {"brokers": ["k:9092"]},
    }));
    reconcile(&ctx, &fake).await.unwrap();
    {
        let mut s = fake.0.lock();
        s.workload_status.insert(
            "StatefulSet".into(),
            json!({"replicas": 3, "readyReplicas": 2}),
        );
        s.workload_status.insert(
            "Deployment".into(),
            json!({"replicas": 2, "availableReplicas": 2}),
        );
    }
    reconcile(&ctx, &fake).await.unwrap();
    let sts = fake
        .get("/apis/apps/v1/namespaces/ci/statefulsets/acme-store")
        .unwrap();
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(condition(&fake, "Degraded").0, "False");
    let (ready, reason, message) = condition(&fake, "Ready");
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "Waiting"));
    assert!(message.contains("store 2/3 ready"), "{message}");

    fake.0.lock().workload_status.insert(
        "StatefulSet".into(),
        json!({"replicas": 3, "readyReplicas": 3}),
    );
    reconcile(&ctx, &fake).await.unwrap();
    assert_eq!(
        condition(&fake, "Ready"),
        (
            "True".into(),
            "GatewayReady".into(),
            "3 store and 2 edge replicas ready".into()
        )
    );
}

async fn delete_with(retain: bool) -> (FakeApi, bool) {
    let (ctx, fake) =
        setup(json!({"tenant": "acme", "gateway": {"store": {"retainDataOnDelete": retain}}}));
    reconcile(&ctx, &fake).await.unwrap();
    reconcile(&ctx, &fake).await.unwrap();
    let pvc = "/api/v1/namespaces/ci/persistentvolumeclaims/data-acme-store-0";
    fake.put(
        pvc,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "data-acme-store-0", "namespace": "ci",
                            "labels": {"app.kubernetes.io/instance": "acme", "app.kubernetes.io/component": "store"}}}),
    );
    let other = "/api/v1/namespaces/ci/persistentvolumeclaims/data-other-store-0";
    fake.put(
        other,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "data-other-store-0", "namespace": "ci",
                            "labels": {"app.kubernetes.io/instance": "other", "app.kubernetes.io/component": "store"}}}),
    );
    let mut ls = fake.get(LS).unwrap();
    ls["metadata"]["deletionTimestamp"] = "2026-11-23T10:00:00Z".into();
    fake.put(LS, ls);
    let deleting = current(&fake);
    controller::reconcile(deleting, ctx).await.unwrap();
    assert!(fake.get(LS).is_none(), "finalizer removed, object gone");
    assert!(
        fake.get(other).is_some(),
        "another LogStream's volume is never touched"
    );
    let kept = fake.get(pvc).is_some();
    (fake, kept)
}

#[tokio::test]
async fn delete_keeps_the_logs_by_default_and_says_how_to_remove_them() {
    let (fake, kept) = delete_with(true).await;
    assert!(kept);
    let ev = fake
        .events()
        .into_iter()
        .find(|e| e.1 == "DataRetained")
        .expect("DataRetained event");
    assert!(
        ev.2.contains("data-acme-store-0") && ev.2.contains("kubectl -n ci delete pvc"),
        "{}",
        ev.2
    );
}

#[tokio::test]
async fn delete_removes_the_logs_when_asked() {
    let (fake, kept) = delete_with(false).await;
    assert!(!kept);
    assert!(fake.events().iter().any(|e| e.1 == "DataDeleted"));
}

#[tokio::test]
async fn only_one_candidate_holds_the_lease_until_it_expires() {
    let (client, fake) = FakeApi::start();
    let a = LeaderElection::new(
        client.clone(),
        "logstream-system",
        "logstream-operator",
        "a",
    );
    let b = LeaderElection::new(client, "logstream-system", "logstream-operator", "b");
    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "a creates the Lease"
    );
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "b waits while a renews"
    );
    assert!(a.try_acquire_or_renew().await.unwrap(), "a renews");
    let path = "/apis/coordination.k8s.io/v1/namespaces/logstream-system/leases/logstream-operator";
    // a stops renewing: after the lease duration b takes over.
    let mut lease = fake.get(path).unwrap();
    lease["spec"]["renewTime"] = "2020-01-01T00:00:00.000000Z".into();
    fake.put(path, lease);
    assert!(
        b.try_acquire_or_renew().await.unwrap(),
        "b takes the expired Lease"
    );
    let lease = fake.get(path).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    assert!(
        !a.try_acquire_or_renew().await.unwrap(),
        "a is no longer leader"
    );
}

#[tokio::test]
async fn a_concurrent_lease_write_loses_cleanly() {
    let (client, fake) = FakeApi::start();
    let a = LeaderElection::new(client, "ns", "l", "a");
    assert!(a.try_acquire_or_renew().await.unwrap());
    // Every replace now conflicts (another writer got there first).
    fake.0
        .lock()
        .fail
        .push((Method::PUT, "/leases/l".into(), 409));
    assert!(!a.try_acquire_or_renew().await.unwrap());
}

#[tokio::test]
async fn a_spec_change_updates_only_its_objects_and_the_observed_generation() {
    let (ctx, fake) = setup(json!({"tenant": "acme"}));
    reconcile(&ctx, &fake).await.unwrap();
    reconcile(&ctx, &fake).await.unwrap();
    let hpa = "/apis/autoscaling/v2/namespaces/ci/horizontalpodautoscalers/acme-edge";
    let cm = "/api/v1/namespaces/ci/configmaps/acme-gateway";
    let cm_before = fake.get(cm).unwrap()["data"].clone();
    assert_eq!(fake.get(hpa).unwrap()["spec"]["maxReplicas"], 10);

    let mut ls = fake.get(LS).unwrap();
    ls["spec"]["gateway"] = json!({"edge": {"maxReplicas": 25}});
    ls["metadata"]["generation"] = 2.into();
    fake.put(LS, ls);
    reconcile(&ctx, &fake).await.unwrap();
    assert_eq!(fake.get(hpa).unwrap()["spec"]["maxReplicas"], 25);
    assert_eq!(
        fake.get(cm).unwrap()["data"],
        cm_before,
        "the gateway config did not change"
    );
    let st = fake.get(LS).unwrap()["status"].clone();
    assert_eq!(st["observedGeneration"], 2);
    assert!(
        st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["observedGeneration"] == 2)
    );
}

const KEY_SECRET: &str = "/api/v1/namespaces/ci/secrets/acme-signing-key";

/// The signing key as stored: the Secret's `signing-key` entry, decoded.
fn signing_key(fake: &FakeApi) -> String {
    use k8s_openapi::api::core::v1::Secret;
    let secret: Secret =
        serde_json::from_value(fake.get(KEY_SECRET).expect("the signing key Secret")).unwrap();
    let key = secret.data.unwrap().remove("signing-key").unwrap().0;
    String::from_utf8(key).unwrap()
}

fn secret_creates(fake: &FakeApi) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == Method::POST && r.path == "/api/v1/namespaces/ci/secrets")
        .count()
}

/// The pod template of a workload, from the fake API.
fn pod_template(fake: &FakeApi, path: &str) -> Value {
    fake.get(path).unwrap()["spec"]["template"]["spec"].clone()
}

#[tokio::test]
async fn the_signing_key_is_created_once_kept_and_mounted_where_both_configs_read_it() {
    let (ctx, fake) = setup(json!({"tenant": "acme"}));
    reconcile(&ctx, &fake).await.unwrap();
    reconcile(&ctx, &fake).await.unwrap();
    assert_eq!(secret_creates(&fake), 1);
    let key = signing_key(&fake);
    assert_eq!(key.len(), 64, "32 random bytes as hex: {key}");
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
    let secret = fake.get(KEY_SECRET).unwrap();
    assert_eq!(secret["immutable"], true);
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["kind"],
        "LogStream"
    );
    assert_eq!(secret["metadata"]["ownerReferences"][0]["uid"], "ls-uid");
    assert!(
        !applies(&fake).iter().any(|a| a.starts_with("Secret/")),
        "never server-side applied: an apply without data would drop the key"
    );

    // Later reconciles (a restart of the operator, a spec change) keep the same key.
    fake.clear_requests();
    let mut ls = fake.get(LS).unwrap();
    ls["spec"]["quotas"] = json!({"viewers": 50});
    ls["metadata"]["generation"] = 2.into();
    fake.put(LS, ls);
    reconcile(&ctx, &fake).await.unwrap();
    reconcile(&ctx, &fake).await.unwrap();
    assert_eq!(secret_creates(&fake), 0);
    assert_eq!(signing_key(&fake), key);

    // Both pods mount it read-only, and both configs name the mounted file.
    let cm = fake
        .get("/api/v1/namespaces/ci/configmaps/acme-gateway")
        .unwrap();
    for (workload, file) in [
        (
            "/apis/apps/v1/namespaces/ci/statefulsets/acme-store",
            "store.toml",
        ),
        (
            "/apis/apps/v1/namespaces/ci/deployments/acme-edge",
            "edge.toml",
        ),
    ] {
        let pod = pod_template(&fake, workload);
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["secret"]["secretName"] == "acme-signing-key")
            .unwrap_or_else(|| panic!("{workload}: no signing key volume in {pod}"))
            .clone();
        let mount = pod["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume["name"])
            .unwrap_or_else(|| panic!("{workload}: the signing key volume is not mounted"))
            .clone();
        assert_eq!(mount["readOnly"], true, "{workload}");
        let config: logstream_model::config::Config =
            toml::from_str(cm["data"][file].as_str().unwrap()).unwrap();
        assert_eq!(
            config.signing_key_file.unwrap(),
            std::path::Path::new(mount["mountPath"].as_str().unwrap()).join("signing-key"),
            "{file}"
        );
    }
}

#[tokio::test]
async fn a_signing_key_deleted_by_hand_comes_back_new_and_one_brought_by_an_admin_is_kept() {
    let (ctx, fake) = setup(json!({"tenant": "acme"}));
    reconcile(&ctx, &fake).await.unwrap();
    reconcile(&ctx, &fake).await.unwrap();
    let first = signing_key(&fake);

    // Deleting the Secret is how the key is rotated: the next reconcile makes another.
    fake.0.lock().objects.remove(KEY_SECRET);
    reconcile(&ctx, &fake).await.unwrap();
    let second = signing_key(&fake);
    assert_ne!(second, first, "a fresh random key");

    // A Secret made before the LogStream (the admin's own key) is used as it is.
    let (ctx, fake) = setup(json!({"tenant": "acme"}));
    let own = "6f776e2d6b65792d6f662d7468652d61646d696e";
    fake.put(
        KEY_SECRET,
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "acme-signing-key", "namespace": "ci"},
               "data": {"signing-key": base64(own)}}),
    );
    reconcile(&ctx, &fake).await.unwrap();
    reconcile(&ctx, &fake).await.unwrap();
    assert_eq!(secret_creates(&fake), 0);
    assert_eq!(signing_key(&fake), own);
    assert_eq!(condition(&fake, "Degraded").0, "False");
}

#[tokio::test]
async fn a_signing_key_secret_without_a_key_is_degraded_and_left_alone() {
    let (ctx, fake) = setup(json!({"tenant": "acme"}));
    let empty = json!({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "acme-signing-key", "namespace": "ci"},
                       "data": {"key": base64("wrong entry")}});
    fake.put(KEY_SECRET, empty);
    reconcile(&ctx, &fake).await.unwrap();
    let err = reconcile(&ctx, &fake).await.unwrap_err();
    assert!(err.to_string().contains("Secret/acme-signing-key"), "{err}");
    let (status, reason, message) = condition(&fake, "Degraded");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "ApplyFailed"));
    assert!(message.contains("no `signing-key` entry"), "{message}");
    assert_eq!(secret_creates(&fake), 0);
    assert_eq!(
        fake.get(KEY_SECRET).unwrap()["data"],
        json!({"key": base64("wrong entry")}),
        "never written into"
    );
}

fn base64(s: &str) -> String {
    // Through k8s-openapi's own ByteString, the encoding the API server uses.
    serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec()))
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

/// The store replicas' `/metrics` as the operator reads them: an HTTP proxy on
/// 127.0.0.1 that answers for the store hosts (the cluster DNS names the operator
/// builds) with the page each has been given; a host without a page is down (502).
#[derive(Clone, Default)]
struct FakeStores(Arc<parking_lot::Mutex<std::collections::BTreeMap<String, String>>>);

impl FakeStores {
    /// The stand-in, and an HTTP client that reaches the store hosts through it.
    async fn start() -> (FakeStores, reqwest::Client) {
        use axum::http::{HeaderMap, StatusCode, Uri};
        let stores = FakeStores::default();
        let pages = stores.0.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let pages = pages.clone();
            async move {
                // A proxied request carries the absolute URL; Host says the same.
                let host = uri.host().map(str::to_owned).or_else(|| {
                    let h = headers.get("host")?.to_str().ok()?;
                    Some(h.split(':').next()?.to_owned())
                });
                let page = host.and_then(|h| pages.lock().get(&h).cloned());
                match (uri.path(), page) {
                    ("/metrics", Some(page)) => (StatusCode::OK, page),
                    _ => (StatusCode::BAD_GATEWAY, "no such store".to_owned()),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::builder()
            .proxy(reqwest::Proxy::http(proxy).unwrap())
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        (stores, http)
    }

    /// Store replica `i` of LogStream acme in ci exports these gauges (as the gateway
    /// writes them, among its other metrics).
    fn set(&self, i: usize, viewers: i64, failing: u8, over_budget: u8) {
        let page = format!(
            "# HELP logstream_live_viewers Live viewers.\n\
             # TYPE logstream_live_viewers gauge\n\
             logstream_live_viewers {viewers}\n\
             logstream_ingest_lines_total{{tenant=\"acme\"}} 120\n\
             # TYPE logstream_offload_failing gauge\n\
             logstream_offload_failing {failing}\n\
             # TYPE logstream_offload_budget_exceeded gauge\n\
             logstream_offload_budget_exceeded {over_budget}\n"
        );
        self.0.lock().insert(
            format!("acme-store-{i}.acme-store.ci.svc.cluster.local"),
            page,
        );
    }

    /// Store replica `i` (one replica: the Service's name) exports this page.
    fn set_page(&self, host: &str, page: String) {
        self.0.lock().insert(host.to_owned(), page);
    }
}

#[tokio::test]
async fn alert_delivery_is_summed_per_receiver_and_failures_show_in_the_status() {
    let (stores, http) = FakeStores::start().await;
    let (ctx, fake) = setup_with(
        json!({
            "tenant": "acme",
            "alerts": {
                "receivers": [
                    {"name": "am", "alertmanager": {"url": "http://alertmanager.monitoring:9093"}},
                    {"name": "chat", "slack": {"urlSecret": {"name": "slack-hook", "key": "url"}}},
                ],
                "rules": [{"name": "panics", "match": {"contains": "panicked at"},
                           "condition": {"matches": {"count": 1, "window": "5m"}}}],
            },
        }),
        Some(http),
    );
    reconcile(&ctx, &fake).await.unwrap();
    let page = |sent: u64, failed: u64| {
        format!(
            "# TYPE logstream_alert_notifications_total counter\n\
             logstream_alert_notifications_total{{receiver=\"am\",result=\"sent\",tenant=\"acme\"}} {sent}\n\
             logstream_alert_notifications_total{{receiver=\"chat\",result=\"failed\",tenant=\"acme\"}} {failed}\n\
             logstream_alert_notifications_total{{receiver=\"chat\",result=\"sent\",tenant=\"acme\"}} 1\n\
             logstream_live_viewers 0\n"
        )
    };
    let host = "acme-store.ci.svc.cluster.local";
    stores.set_page(host, page(3, 0));
    reconcile(&ctx, &fake).await.unwrap();
    let ls = fake.get(LS).unwrap();
    assert_eq!(
        ls["status"]["alertReceivers"],
        json!([{"name": "am", "sent": 3, "failed": 0}, {"name": "chat", "sent": 1, "failed": 0}])
    );
    assert_eq!(condition(&fake, "AlertDelivery").0, "True");

    // Two notices to Slack fail: the condition names the receiver.
    stores.set_page(host, page(4, 2));
    reconcile(&ctx, &fake).await.unwrap();
    let (status, reason, message) = condition(&fake, "AlertDelivery");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "DeliveryFailing")
    );
    assert!(message.contains("to chat failed"), "{message}");
    assert_eq!(
        fake.get(LS).unwrap()["status"]["alertReceivers"][1]["failed"],
        2
    );

    // No new failure since: True again.
    stores.set_page(host, page(5, 2));
    reconcile(&ctx, &fake).await.unwrap();
    assert_eq!(condition(&fake, "AlertDelivery").0, "True");

    // The Slack URL is a mounted Secret the store reads as a file.
    let sts = fake
        .get("/apis/apps/v1/namespaces/ci/statefulsets/acme-store")
        .unwrap();
    let pod = &sts["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"] == "slack-hook")
        .expect("the Secret's volume");
    assert_eq!(
        volume["secret"]["items"],
        json!([{"key": "url", "path": "url"}])
    );
}

/// The ObjectStorage condition: (status, reason, message), `None` when absent.
fn object_storage(fake: &FakeApi) -> Option<(String, String, String)> {
    let ls = fake.get(LS).unwrap();
    let has = ls["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "ObjectStorage"));
    has.then(|| condition(fake, "ObjectStorage"))
}

fn has_event(fake: &FakeApi, type_: &str, reason: &str) -> bool {
    fake.events().iter().any(|e| e.0 == type_ && e.1 == reason)
}

#[tokio::test]
async fn object_storage_condition_follows_the_store_replicas_offload_gauges() {
    let (stores, http) = FakeStores::start().await;
    let (ctx, fake) = setup_with(
        json!({
            "tenant": "acme",
            "gateway": {"store": {"replicas": 2}},
            "kafka": {"brokers": ["k:9092"]},
            "objectStore": {
                "url": "s3://ci-logs/acme",
                "endpoint": "http://minio.storage.svc:9000",
                "secretRef": "logs-bucket",
                "localCacheSize": "5Gi",
            },
        }),
        Some(http),
    );
    reconcile(&ctx, &fake).await.unwrap();
    {
        let mut s = fake.0.lock();
        s.workload_status.insert(
            "StatefulSet".into(),
            json!({"replicas": 2, "readyReplicas": 2}),
        );
        s.workload_status.insert(
            "Deployment".into(),
            json!({"replicas": 2, "availableReplicas": 2}),
        );
    }

    // No replica answers yet: nothing is known.
    reconcile(&ctx, &fake).await.unwrap();
    let (status, reason, _) = object_storage(&fake).expect("an ObjectStorage condition");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("Unknown", "NotReported")
    );

    // Both replicas upload: True, and the usual long requeue once Ready.
    stores.set(0, 3, 0, 0);
    stores.set(1, 4, 0, 0);
    let action = reconcile(&ctx, &fake).await.unwrap();
    assert_eq!(condition(&fake, "Ready").0, "True");
    assert_eq!(
        object_storage(&fake).unwrap(),
        (
            "True".into(),
            "Offloading".into(),
            "2 of 2 store replica(s) upload sealed segments to s3://ci-logs/acme".into()
        )
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert_eq!(fake.get(LS).unwrap()["status"]["viewers"], 7, "summed");

    // One replica's uploads fail: False with what to check, a Warning, looked at
    // again soon.
    stores.set(1, 4, 1, 0);
    let action = reconcile(&ctx, &fake).await.unwrap();
    let (status, reason, message) = object_storage(&fake).unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "UploadFailing")
    );
    for what in [
        "uploads to s3://ci-logs/acme fail on 1 of 2 store replica(s)",
        "Secret logs-bucket (entry `credentials`)",
        "the endpoint http://minio.storage.svc:9000",
        "the bucket ci-logs exists",
    ] {
        assert!(message.contains(what), "{what:?} in {message}");
    }
    assert!(
        has_event(&fake, "Warning", "UploadFailing"),
        "{:?}",
        fake.events()
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    assert_eq!(
        condition(&fake, "Ready").0,
        "True",
        "the gateway still serves"
    );

    // Failing and now past the cache budget: failing uploads are the cause to name.
    stores.set(1, 4, 1, 1);
    reconcile(&ctx, &fake).await.unwrap();
    let (_, reason, message) = object_storage(&fake).unwrap();
    assert_eq!(reason, "UploadFailing");
    assert!(
        message.contains("local copies exceed localCacheSize (5Gi) on 1 of 2"),
        "{message}"
    );

    // Uploads work but do not keep up: the disk budget.
    stores.set(1, 4, 0, 1);
    reconcile(&ctx, &fake).await.unwrap();
    let (status, reason, message) = object_storage(&fake).unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "DiskBudgetExceeded")
    );
    assert!(
        message.contains("exceed localCacheSize (5Gi) on 1 of 2 store replica(s)")
            && message.contains("do not keep up")
            && message.contains("Secret logs-bucket"),
        "{message}"
    );
    assert!(has_event(&fake, "Warning", "DiskBudgetExceeded"));

    // Back to normal: True, with a Normal Event.
    stores.set(1, 4, 0, 0);
    reconcile(&ctx, &fake).await.unwrap();
    assert_eq!(object_storage(&fake).unwrap().1, "Offloading");
    assert!(
        has_event(&fake, "Normal", "Offloading"),
        "{:?}",
        fake.events()
    );

    // Without spec.objectStore there is no such condition.
    let mut ls = fake.get(LS).unwrap();
    ls["spec"].as_object_mut().unwrap().remove("objectStore");
    ls["metadata"]["generation"] = 2.into();
    fake.put(LS, ls);
    reconcile(&ctx, &fake).await.unwrap();
    assert_eq!(object_storage(&fake), None);
}

#[tokio::test]
async fn a_local_cache_that_fills_the_store_volume_is_an_invalid_spec_with_an_event() {
    let (ctx, fake) = setup(json!({
        "tenant": "acme",
        "gateway": {"store": {"storageSize": "5Gi"}},
        "objectStore": {"url": "s3://ci-logs/acme", "localCacheSize": "10Gi"},
    }));
    reconcile(&ctx, &fake).await.unwrap();
    fake.clear_requests();
    assert_eq!(
        reconcile(&ctx, &fake).await.unwrap(),
        Action::await_change()
    );
    assert!(applies(&fake).is_empty(), "nothing applied");
    let (status, reason, message) = condition(&fake, "Degraded");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "InvalidSpec"));
    assert!(
        message.contains(
            "spec.objectStore.localCacheSize must be smaller than spec.gateway.store.storageSize"
        ) && message.contains("(localCacheSize 10Gi, storageSize 5Gi)"),
        "{message}"
    );
    assert!(has_event(&fake, "Warning", "InvalidSpec"));
}
