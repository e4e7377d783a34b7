//! The reconcile loop: apply `desired()`, write honest status, record Events.

use crate::Config;
use crate::desired::{self, InvalidSpec, Owned};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, PersistentVolumeClaim, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use logstream_crds::{AlertReceiverStatus, LogStream, LogStreamStatus};
use parking_lot::Mutex;
use prometheus::{HistogramVec, IntCounterVec, Registry};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Field manager of every apply.
pub const FIELD_MANAGER: &str = "logstream-operator";
/// Finalizer on every LogStream.
pub const FINALIZER: &str = "logstream.dev/cleanup";

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("applying {object}: {source}")]
    Apply {
        object: String,
        #[source]
        source: ApplyError,
    },
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    #[error("cleanup: {0}")]
    Cleanup(#[source] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

/// Why one owned object could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// The signing key Secret exists (made by hand, or emptied) without a key: the
    /// operator never writes into an existing one, so a person has to decide.
    #[error(
        "it has no `{}` entry; add one (e.g. `openssl rand -hex 32`) or delete the Secret \
         and the operator makes a new key (tokens signed with any earlier key stop working)",
        desired::SIGNING_KEY
    )]
    NoSigningKey,
}

/// Reconcile counters and durations, served on `/metrics`.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `process_*` (RSS, CPU, descriptors), unprefixed by convention.
    pub process: Registry,
    pub reconciles: IntCounterVec,
    pub duration: HistogramVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry =
            Registry::new_custom(Some("logstream_operator".into()), None).expect("registry");
        let reconciles = IntCounterVec::new(
            prometheus::Opts::new("reconciles_total", "Reconciles by outcome."),
            &["outcome"],
        )
        .expect("metric");
        let duration = HistogramVec::new(
            prometheus::HistogramOpts::new("reconcile_duration_seconds", "Reconcile duration."),
            &["outcome"],
        )
        .expect("metric");
        registry
            .register(Box::new(reconciles.clone()))
            .expect("register");
        registry
            .register(Box::new(duration.clone()))
            .expect("register");
        let process = Registry::new();
        #[cfg(target_os = "linux")]
        process
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("register");
        Metrics {
            registry,
            process,
            reconciles,
            duration,
        }
    }
}

impl Metrics {
    /// The text exposition, `process_*` included.
    pub fn render(&self) -> String {
        let families: Vec<_> = [&self.registry, &self.process]
            .iter()
            .flat_map(|r| r.gather())
            .collect();
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&families, &mut out)
            .expect("text encoding");
        out
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Consecutive failures per LogStream uid, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    http: reqwest::Client,
}

impl Context {
    pub fn new(client: Client, config: Config, reporter: Reporter) -> Arc<Context> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .expect("HTTP client");
        Context::with_http(client, config, reporter, http)
    }

    /// With the HTTP client that reads the stores' `/metrics` (tests pass one whose
    /// proxy stands in for the cluster's store Services).
    pub fn with_http(
        client: Client,
        config: Config,
        reporter: Reporter,
        http: reqwest::Client,
    ) -> Arc<Context> {
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics: Metrics::default(),
            failures: Mutex::new(HashMap::new()),
            http,
        })
    }

    async fn event(&self, ls: &LogStream, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &ls.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "recording an Event failed");
        }
    }
}

/// Runs the controller until SIGTERM (call after winning the leader election).
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let wc = watcher::Config::default().labels("app.kubernetes.io/managed-by=logstream-operator");
    Controller::new(
        Api::<LogStream>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<StatefulSet>::all(client.clone()), wc.clone())
    .owns(Api::<Deployment>::all(client.clone()), wc.clone())
    .owns(Api::<Service>::all(client.clone()), wc.clone())
    .owns(Api::<ConfigMap>::all(client.clone()), wc.clone())
    .owns(
        Api::<HorizontalPodAutoscaler>::all(client.clone()),
        wc.clone(),
    )
    .owns(Api::<NetworkPolicy>::all(client.clone()), wc.clone())
    .owns(Api::<PodDisruptionBudget>::all(client.clone()), wc.clone())
    .owns(Api::<ServiceAccount>::all(client.clone()), wc)
    // Not `.owns(Secret)`: watching Secrets means listing every Secret of the cluster
    // into this process (and RBAC to read them all). The signing key Secret is only
    // ever created (see `create_signing_key`), so there is no drift to repair; one
    // deleted by hand is made again at the next periodic reconcile.
    .shutdown_on_signal()
    .run(reconcile, error_policy, ctx)
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "reconcile stream");
        }
    })
    .await;
}

/// One reconcile of one LogStream.
pub async fn reconcile(ls: Arc<LogStream>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let ns = ls.namespace().unwrap_or_default();
    let api: Api<LogStream> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, ls, |event| async {
        match event {
            Finalizer::Apply(ls) => apply(&ls, &ctx).await,
            Finalizer::Cleanup(ls) => cleanup(&ls, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.reconciles.with_label_values(&[outcome]).inc();
    ctx.metrics
        .duration
        .with_label_values(&[outcome])
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Retries failed reconciles with exponential backoff (5 s doubling, at most 5 min).
pub fn error_policy(ls: Arc<LogStream>, error: &Error, ctx: Arc<Context>) -> Action {
    let n = {
        let mut f = ctx.failures.lock();
        let n = f.entry(ls.uid().unwrap_or_default()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(n);
    tracing::warn!(logstream = %ls.name_any(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The retry delay after `n` consecutive failures: 5 s doubling, at most 5 min, no
/// jitter (a reconcile is requeued for one object, there is no herd to spread).
pub fn backoff(n: u32) -> Duration {
    logstream_model::retry::backoff(
        n.saturating_sub(1),
        Duration::from_secs(5),
        Duration::from_secs(300),
        0.0,
    )
}

async fn apply(ls: &LogStream, ctx: &Context) -> Result<Action, Error> {
    let cfg = &ctx.config;
    let ns = ls.namespace().unwrap_or_default();
    let objects = match desired::desired(ls, cfg) {
        Ok(o) => o,
        Err(InvalidSpec(msg)) => {
            // Nothing to retry until the spec changes.
            let status = status_from(
                ls,
                None,
                Some(("InvalidSpec", msg.clone())),
                StoreReport::default(),
                cfg,
            );
            write_status(ls, ctx, status).await?;
            ctx.event(ls, EventType::Warning, "InvalidSpec", msg).await;
            return Ok(Action::await_change());
        }
    };
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let mut observed = Observed::default();
    for object in &objects {
        if let Err(source) = apply_one(&ctx.client, &ns, object, &pp, &mut observed).await {
            let what = object.describe();
            let msg = format!("applying {what} failed: {source}");
            let status = status_from(
                ls,
                Some(&observed),
                Some(("ApplyFailed", msg.clone())),
                StoreReport::default(),
                cfg,
            );
            // The apply error is what matters; a status write failing too is logged.
            if let Err(e) = write_status(ls, ctx, status).await {
                tracing::warn!(error = %e, "writing Degraded status failed");
            }
            ctx.event(ls, EventType::Warning, "ApplyFailed", msg).await;
            return Err(Error::Apply {
                object: what,
                source,
            });
        }
    }
    ctx.failures.lock().remove(&ls.uid().unwrap_or_default());
    let report = if cfg.probe_stores {
        probe_stores(ls, ctx).await
    } else {
        StoreReport::default()
    };
    let status = status_from(ls, Some(&observed), None, report, cfg);
    let settled = is_true(&status, "Ready") && !is_false(&status, OBJECT_STORAGE);
    write_status(ls, ctx, status).await?;
    // Until ready, owned-object watches (StatefulSet/Deployment status) wake us; the
    // periodic requeue refreshes viewers and object storage and repairs anything a
    // watch missed. Failing uploads are looked at again soon, to see them recover.
    Ok(Action::requeue(if settled {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(30)
    }))
}

/// Ready replicas seen in the apply responses.
#[derive(Default, Debug)]
pub struct Observed {
    pub store_ready: Option<i32>,
    pub store_wanted: Option<i32>,
    pub edge_available: Option<i32>,
}

async fn apply_one(
    client: &Client,
    ns: &str,
    object: &Owned,
    pp: &PatchParams,
    observed: &mut Observed,
) -> Result<(), ApplyError> {
    macro_rules! ssa {
        ($t:ty, $o:expr) => {{
            let api: Api<$t> = Api::namespaced(client.clone(), ns);
            api.patch(&$o.name_any(), pp, &Patch::Apply(object.to_json()))
                .await?
        }};
    }
    match object {
        Owned::ConfigMap(o) => drop(ssa!(ConfigMap, o)),
        Owned::Secret(o) => create_signing_key(client, ns, o).await?,
        Owned::ServiceAccount(o) => drop(ssa!(ServiceAccount, o)),
        Owned::Service(o) => drop(ssa!(Service, o)),
        Owned::StatefulSet(o) => {
            let got = ssa!(StatefulSet, o);
            observed.store_wanted = got.spec.as_ref().and_then(|s| s.replicas);
            observed.store_ready = Some(got.status.and_then(|s| s.ready_replicas).unwrap_or(0));
        }
        Owned::Deployment(o) => {
            let got = ssa!(Deployment, o);
            observed.edge_available =
                Some(got.status.and_then(|s| s.available_replicas).unwrap_or(0));
        }
        Owned::HorizontalPodAutoscaler(o) => drop(ssa!(HorizontalPodAutoscaler, o)),
        Owned::PodDisruptionBudget(o) => drop(ssa!(PodDisruptionBudget, o)),
        Owned::NetworkPolicy(o) => drop(ssa!(NetworkPolicy, o)),
        Owned::ResourceQuota(o) => drop(ssa!(ResourceQuota, o)),
        Owned::LimitRange(o) => drop(ssa!(LimitRange, o)),
    }
    Ok(())
}

/// Creates the signing key Secret with a fresh random key unless it exists; an existing
/// one is never changed, whoever made it. Not server-side apply: an apply without
/// `data` (which `desired()` cannot know) would remove the key this field manager
/// wrote, and re-sending the key means reading it back every reconcile. Needs only
/// `get` and `create` on Secrets.
async fn create_signing_key(client: &Client, ns: &str, secret: &Secret) -> Result<(), ApplyError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    if let Some(existing) = api.get_opt(&secret.name_any()).await? {
        let has_key = existing
            .data
            .as_ref()
            .and_then(|d| d.get(desired::SIGNING_KEY))
            .is_some_and(|k| !k.0.is_empty());
        return if has_key {
            Ok(())
        } else {
            Err(ApplyError::NoSigningKey)
        };
    }
    let fresh = desired::with_signing_key(secret.clone(), rand::random());
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.create(&pp, &fresh).await {
        Ok(_) => Ok(()),
        // Created between our get and create (a former leader finishing its last
        // reconcile): the first key stands, ours is dropped.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Condition type that says how offloading to object storage goes (only with
/// `spec.objectStore`).
pub const OBJECT_STORAGE: &str = "ObjectStorage";

/// Condition type that says whether alert notices reach their receivers (only with
/// `spec.alerts.receivers`).
pub const ALERT_DELIVERY: &str = "AlertDelivery";

/// What the store replicas' `/metrics` said at this reconcile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreReport {
    /// `logstream_live_viewers` summed over the replicas that answered.
    pub viewers: Option<i64>,
    /// The offload gauges, over the replicas that export them (none answered: `None`).
    pub offload: Option<Offload>,
    /// `logstream_alert_notifications_total` per receiver, summed over the replicas
    /// that answered (none answered: `None`).
    pub alert_receivers: Option<Vec<AlertReceiverStatus>>,
}

/// The object storage gauges of the store replicas: how many export them and how many
/// report each problem (a replica's gauge is 1 or 0; the condition takes the worst).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    pub replicas: usize,
    /// `logstream_offload_failing` is 1: uploads to object storage fail.
    pub failing: usize,
    /// `logstream_offload_budget_exceeded` is 1: local copies exceed
    /// `local_cache_bytes` because uploads do not keep up.
    pub over_budget: usize,
}

/// The status a reconcile observed. `problem` is a Degraded (reason, message).
pub fn status_from(
    ls: &LogStream,
    observed: Option<&Observed>,
    problem: Option<(&str, String)>,
    report: StoreReport,
    cfg: &Config,
) -> LogStreamStatus {
    let (store_ready, store_wanted, edge_available) = observed
        .map(|o| {
            (
                o.store_ready.unwrap_or(0),
                o.store_wanted.unwrap_or(1),
                o.edge_available.unwrap_or(0),
            )
        })
        .unwrap_or((0, 1, 0));
    let applied = observed.is_some() && !matches!(problem, Some(("ApplyFailed", _)));
    let invalid = observed.is_none();
    let up = applied && store_ready >= store_wanted && edge_available >= 1;
    let (ready, ready_reason, ready_msg) = if invalid {
        (
            "False",
            "InvalidSpec",
            problem.as_ref().map(|p| p.1.clone()).unwrap_or_default(),
        )
    } else if !applied {
        (
            "False",
            "ApplyFailed",
            "owned objects could not be applied; see Degraded".into(),
        )
    } else if up {
        (
            "True",
            "GatewayReady",
            format!("{store_ready} store and {edge_available} edge replicas ready"),
        )
    } else {
        (
            "False",
            "Waiting",
            format!(
                "store {store_ready}/{store_wanted} ready, edge {edge_available} available (need at least 1)"
            ),
        )
    };
    let progressing = if applied && !up {
        (
            "True",
            "RollingOut",
            "waiting for store and edge pods".to_owned(),
        )
    } else {
        ("False", "Stable", "nothing rolling out".to_owned())
    };
    let degraded = match &problem {
        Some((reason, msg)) => ("True", *reason, msg.clone()),
        None => ("False", "AsExpected", "no problems".to_owned()),
    };
    let generation = ls.metadata.generation;
    let old = ls.status.as_ref();
    let conditions = [
        ("Ready", ready, ready_reason, ready_msg),
        ("Progressing", progressing.0, progressing.1, progressing.2),
        ("Degraded", degraded.0, degraded.1, degraded.2),
    ]
    .into_iter()
    .chain(
        object_storage_condition(ls, report.offload)
            .map(|(status, reason, message)| (OBJECT_STORAGE, status, reason, message)),
    )
    .chain(
        alert_delivery_condition(ls, report.alert_receivers.as_deref())
            .map(|(status, reason, message)| (ALERT_DELIVERY, status, reason, message)),
    )
    .map(|(type_, status, reason, message)| {
        // Keep lastTransitionTime unless the status flipped.
        let last = old
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| Time(Timestamp::now()));
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: last,
        }
    })
    .collect();
    LogStreamStatus {
        observed_generation: generation,
        conditions,
        endpoints: (!invalid).then(|| desired::endpoints(ls, cfg)),
        viewers: report.viewers.or_else(|| old.and_then(|s| s.viewers)),
        store_ready_replicas: (!invalid).then_some(store_ready),
        edge_ready_replicas: (!invalid).then_some(edge_available),
        alert_receivers: report
            .alert_receivers
            .clone()
            .or_else(|| old.map(|s| s.alert_receivers.clone()))
            .unwrap_or_default(),
    }
}

/// `ObjectStorage` as (status, reason, message) when the LogStream offloads: `True`
/// while every replica uploads, `False` with what to check when one fails or falls
/// behind, `Unknown` when no replica reported.
fn object_storage_condition(
    ls: &LogStream,
    offload: Option<Offload>,
) -> Option<(&'static str, &'static str, String)> {
    let spec = ls.spec.object_store.as_ref()?;
    let url = &spec.url;
    let Some(o) = offload else {
        return Some((
            "Unknown",
            "NotReported",
            "no store replica reported its offload gauges (logstream_offload_failing, \
             logstream_offload_budget_exceeded on /metrics) yet"
                .into(),
        ));
    };
    let of = |n: usize| format!("{n} of {} store replica(s)", o.replicas);
    // What an upload needs, in the order to check it.
    let credentials = match &spec.secret_ref {
        Some(s) => format!("the credentials in Secret {s} (entry `credentials`)"),
        None => "the store pods' own cloud identity (no secretRef is set)".into(),
    };
    let endpoint = spec
        .endpoint
        .as_ref()
        .map(|e| format!(", that the endpoint {e} is reachable from the store pods"))
        .unwrap_or_default();
    let bucket = bucket_of(url);
    let checks = format!(
        "check {credentials}{endpoint}, and that the bucket {bucket} exists and those \
         credentials may write to it; the store's log names the failing request"
    );
    Some(if o.failing > 0 {
        let behind = if o.over_budget > 0 {
            format!(
                "; local copies exceed localCacheSize ({}) on {}",
                spec.local_cache_size,
                of(o.over_budget)
            )
        } else {
            String::new()
        };
        (
            "False",
            "UploadFailing",
            format!(
                "uploads to {url} fail on {}{behind}: {checks}",
                of(o.failing)
            ),
        )
    } else if o.over_budget > 0 {
        (
            "False",
            "DiskBudgetExceeded",
            format!(
                "local copies of segments exceed localCacheSize ({}) on {}: uploads to \
                 {url} do not keep up, so the store volume fills with segments not \
                 uploaded yet; {checks}, and the store's upload bandwidth",
                spec.local_cache_size,
                of(o.over_budget)
            ),
        )
    } else {
        (
            "True",
            "Offloading",
            format!("{} upload sealed segments to {url}", of(o.replicas)),
        )
    })
}

/// The bucket (or container, or directory) of an object store URL.
fn bucket_of(url: &str) -> &str {
    match url.split_once("://") {
        Some(("file", path)) => path,
        Some((_, rest)) => rest.split('/').next().unwrap_or(rest),
        None => url,
    }
}

fn is_true(s: &LogStreamStatus, type_: &str) -> bool {
    s.conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

fn is_false(s: &LogStreamStatus, type_: &str) -> bool {
    s.conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "False")
}

/// Writes status when it differs from what the object has (times of unchanged
/// conditions are kept, so an idle reconcile writes nothing), and records an Event
/// when Ready, Degraded or ObjectStorage flips.
async fn write_status(ls: &LogStream, ctx: &Context, status: LogStreamStatus) -> Result<(), Error> {
    let old = ls.status.clone().unwrap_or_default();
    if old == status {
        return Ok(());
    }
    let api: Api<LogStream> =
        Api::namespaced(ctx.client.clone(), &ls.namespace().unwrap_or_default());
    let patch = serde_json::json!({ "status": status });
    api.patch_status(
        &ls.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(Error::Status)?;
    let cond = |s: &LogStreamStatus, t: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.clone(), c.message.clone()))
    };
    let (ready_was, ready_now) = (cond(&old, "Ready"), cond(&status, "Ready"));
    let (degraded_was, degraded_now) = (cond(&old, "Degraded"), cond(&status, "Degraded"));
    let is = |c: &Option<(String, String)>, v: &str| c.as_ref().is_some_and(|c| c.0 == v);
    if let Some((_, msg)) = &ready_now {
        if is(&ready_now, "True") && !is(&ready_was, "True") {
            ctx.event(ls, EventType::Normal, "Ready", msg.clone()).await;
        } else if is(&ready_was, "True") && !is(&ready_now, "True") {
            ctx.event(ls, EventType::Warning, "NotReady", msg.clone())
                .await;
        }
    }
    // ApplyFailed and InvalidSpec record their own Event at every failure.
    let degraded_reason = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| c.reason.clone())
        .unwrap_or_default();
    if is(&degraded_now, "True")
        && !is(&degraded_was, "True")
        && !matches!(degraded_reason.as_str(), "ApplyFailed" | "InvalidSpec")
    {
        let msg = degraded_now
            .as_ref()
            .map(|d| d.1.clone())
            .unwrap_or_default();
        ctx.event(ls, EventType::Warning, &degraded_reason, msg)
            .await;
    }
    if is(&degraded_was, "True") && is(&degraded_now, "False") {
        ctx.event(
            ls,
            EventType::Normal,
            "Recovered",
            "no longer degraded".into(),
        )
        .await;
    }
    // Object storage going wrong (or wrong another way) and coming back.
    let storage = |s: &LogStreamStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == OBJECT_STORAGE)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    match (storage(&old), storage(&status)) {
        (was, Some((now, reason, msg)))
            if now == "False" && was.as_ref().is_none_or(|w| w.0 != "False" || w.1 != reason) =>
        {
            ctx.event(ls, EventType::Warning, &reason, msg).await;
        }
        (Some((was, _, _)), Some((now, reason, msg))) if was == "False" && now == "True" => {
            ctx.event(ls, EventType::Normal, &reason, msg).await;
        }
        _ => {}
    }
    if ready_was.is_none() && !is(&degraded_now, "True") {
        let note = format!(
            "applied the gateway objects; reachable at {}",
            status
                .endpoints
                .as_ref()
                .map(|e| e.http.as_str())
                .unwrap_or("(pending)")
        );
        ctx.event(ls, EventType::Normal, "Created", note).await;
    }
    Ok(())
}

/// Reads `/metrics` of the store pods: the store Service, or in Kafka mode each
/// replica. Live viewers are summed (the stores serve every viewer the edges forward);
/// with object storage, the offload gauges are counted per replica.
async fn probe_stores(ls: &LogStream, ctx: &Context) -> StoreReport {
    let mut stores = desired::store_replica_urls(ls, &ctx.config);
    if stores.is_empty() {
        stores.push(desired::store_url(ls, &ctx.config));
    }
    let probes = stores.iter().map(|store| async move {
        let url = format!("{store}/metrics");
        let response = ctx.http.get(&url).send().await.ok()?;
        response.error_for_status().ok()?.text().await.ok()
    });
    let pages: Vec<String> = futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect();
    let mut report = store_report(&pages, ls.spec.object_store.is_some());
    if pages.len() < stores.len() {
        // Sums over some replicas would make the missing ones' failures look new at the
        // next complete round: alert delivery is judged on complete rounds only.
        report.alert_receivers = None;
    }
    report
}

/// What the `/metrics` pages of the store replicas that answered add up to.
fn store_report(pages: &[String], object_store: bool) -> StoreReport {
    let viewers = pages
        .iter()
        .filter_map(|p| parse_gauge(p, "logstream_live_viewers"))
        .reduce(|a, b| a + b);
    let offload = object_store
        .then(|| {
            pages
                .iter()
                .filter_map(|p| {
                    let failing = parse_gauge(p, "logstream_offload_failing")?;
                    let over = parse_gauge(p, "logstream_offload_budget_exceeded")?;
                    Some((failing > 0, over > 0))
                })
                .fold(Offload::default(), |acc, (failing, over)| Offload {
                    replicas: acc.replicas + 1,
                    failing: acc.failing + usize::from(failing),
                    over_budget: acc.over_budget + usize::from(over),
                })
        })
        .filter(|o| o.replicas > 0);
    let alert_receivers = (!pages.is_empty()).then(|| alert_receivers(pages));
    StoreReport {
        viewers,
        offload,
        alert_receivers,
    }
}

/// Sums `logstream_alert_notifications_total{receiver,result,tenant}` per receiver.
fn alert_receivers(pages: &[String]) -> Vec<AlertReceiverStatus> {
    let mut out: Vec<AlertReceiverStatus> = Vec::new();
    for line in pages.iter().flat_map(|p| p.lines()) {
        let Some(rest) = line.strip_prefix("logstream_alert_notifications_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == name).then(|| v.trim().trim_matches('"').to_owned())
            })
        };
        let (Some(receiver), Some(result), Ok(n)) = (
            label("receiver"),
            label("result"),
            value.trim().parse::<f64>(),
        ) else {
            continue;
        };
        let i = match out.iter().position(|r| r.name == receiver) {
            Some(i) => i,
            None => {
                out.push(AlertReceiverStatus {
                    name: receiver,
                    ..AlertReceiverStatus::default()
                });
                out.len() - 1
            }
        };
        match result.as_str() {
            "sent" => out[i].sent += n as u64,
            "failed" => out[i].failed += n as u64,
            _ => {}
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// `AlertDelivery` as (status, reason, message) when the LogStream has receivers:
/// `False` naming the receivers whose failures grew since the last status, `True`
/// otherwise, `Unknown` when no replica reported.
fn alert_delivery_condition(
    ls: &LogStream,
    now: Option<&[AlertReceiverStatus]>,
) -> Option<(&'static str, &'static str, String)> {
    let receivers = &ls.spec.alerts.as_ref()?.receivers;
    if receivers.is_empty() {
        return None;
    }
    let Some(now) = now else {
        return Some((
            "Unknown",
            "NotReported",
            "not every store replica reported alert delivery (logstream_alert_notifications_total on /metrics) this time".into(),
        ));
    };
    let before = ls
        .status
        .as_ref()
        .map(|s| s.alert_receivers.as_slice())
        .unwrap_or(&[]);
    let failing: Vec<String> = now
        .iter()
        .filter(|r| {
            let was = before
                .iter()
                .find(|b| b.name == r.name)
                .map_or(0, |b| b.failed);
            r.failed > was
        })
        .map(|r| r.name.clone())
        .collect();
    Some(match failing.is_empty() {
        true => (
            "True",
            "Delivering",
            "no alert notice failed since the last check".into(),
        ),
        false => (
            "False",
            "DeliveryFailing",
            format!(
                "alert notices to {} failed since the last check (see GET /v1/alerts for the receivers' last errors, and the receiver URLs in spec.alerts.receivers)",
                failing.join(", ")
            ),
        ),
    })
}

/// The value of an unlabelled gauge in Prometheus text format.
pub fn parse_gauge(text: &str, name: &str) -> Option<i64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|v| v as i64)
}

/// What owner references cannot do: PVCs made from the StatefulSet's claim templates
/// are not owned by the LogStream. They are kept (the default) or deleted.
async fn cleanup(ls: &LogStream, ctx: &Context) -> Result<Action, Error> {
    let ns = ls.namespace().unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = format!(
        "{}={},{}=store",
        desired::INSTANCE_LABEL,
        ls.name_any(),
        desired::COMPONENT_LABEL
    );
    let list = pvcs
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::Cleanup)?;
    let names: Vec<String> = list.items.iter().map(|p| p.name_any()).collect();
    if names.is_empty() {
        return Ok(Action::await_change());
    }
    if ls.spec.gateway.store.retain_data_on_delete {
        let note = format!(
            "kept {} store volume(s) with the tenant's logs ({}); delete them with `kubectl -n {ns} delete pvc -l {selector}`",
            names.len(),
            names.join(", ")
        );
        ctx.event(ls, EventType::Normal, "DataRetained", note).await;
    } else {
        for name in &names {
            match pvcs.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(Error::Cleanup(e)),
            }
        }
        let note = format!(
            "deleted {} store volume(s): {}",
            names.len(),
            names.join(", ")
        );
        ctx.event(ls, EventType::Normal, "DataDeleted", note).await;
    }
    Ok(Action::await_change())
}
