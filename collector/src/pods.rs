//! Pod metadata: which deployment and step a container's log belongs to, and whether
//! the pod has finished. From the Kubernetes API (a watcher on this node's pods) or from
//! a file holding what `kubectl get pods -o json` prints (no cluster needed).

use k8s_openapi::api::core::v1::Pod;
use std::collections::HashMap;

/// What the collector needs to know about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `None`: the pod is not selected (no deployment label); its logs are skipped.
    pub deployment: Option<String>,
    /// The step label, if any (else the container name is the step).
    pub step: Option<String>,
    /// `Some((status, exit_code))` once every container has terminated.
    pub finished: Option<(String, i32)>,
    /// The tenant gateway's gRPC endpoint from the pod's LogStream; `None`: the
    /// collector's `--gateway`.
    pub gateway: Option<String>,
    /// Whether its end completes the deployment (annotation `logstream.dev/complete`).
    pub complete: CompletePolicy,
}

/// The annotation that says whether a finished pod completes its deployment: a pipeline
/// of several pods (one per stage) keeps its deployment open across its stages.
pub const COMPLETE_ANNOTATION: &str = "logstream.dev/complete";

/// What a finished pod does to its deployment, as `kubectl logstream run`'s
/// `--complete` / default / `--no-complete` do for a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompletePolicy {
    /// `always` (the default; a pod is the whole pipeline): completes it with the pod's
    /// status and exit code.
    #[default]
    Always,
    /// `on-failure` (a stage before the last): a failure ends the pipeline, a success
    /// leaves it open for the next stage.
    OnFailure,
    /// `never` (a stage allowed to fail): never completes it.
    Never,
}

impl CompletePolicy {
    /// The annotation's value; anything else is refused with the values it may take.
    pub fn parse(v: &str) -> Result<CompletePolicy, String> {
        match v {
            "always" => Ok(CompletePolicy::Always),
            "on-failure" => Ok(CompletePolicy::OnFailure),
            "never" => Ok(CompletePolicy::Never),
            _ => Err(format!(
                "annotation {COMPLETE_ANNOTATION}={v:?}: use always, on-failure or never"
            )),
        }
    }

    /// Whether a pod that ended with `status` completes its deployment.
    pub fn completes(self, status: &str) -> bool {
        match self {
            CompletePolicy::Always => true,
            CompletePolicy::OnFailure => status != "succeeded",
            CompletePolicy::Never => false,
        }
    }
}

/// Label keys that select pods and name their deployment and step.
#[derive(Debug, Clone)]
pub struct Selection {
    pub deployment_label: String,
    pub step_label: String,
}

impl Default for Selection {
    fn default() -> Self {
        Selection {
            deployment_label: "logstream.dev/deployment".into(),
            step_label: "logstream.dev/step".into(),
        }
    }
}

impl PodInfo {
    /// Reads a Pod object. A deployment label that is not a valid id leaves the pod
    /// unselected (and is reported by the caller).
    pub fn from_pod(pod: &Pod, sel: &Selection) -> Option<PodInfo> {
        let meta = &pod.metadata;
        let labels = meta.labels.clone().unwrap_or_default();
        let deployment = labels
            .get(&sel.deployment_label)
            .filter(|d| logstream_model::validate_deployment_id(d).is_ok())
            .cloned();
        Some(PodInfo {
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            uid: meta.uid.clone()?,
            deployment,
            step: labels.get(&sel.step_label).cloned(),
            finished: finished(pod),
            gateway: None,
            complete: complete_policy(meta),
        })
    }
}

/// The pod's [`CompletePolicy`]; a value it cannot take is reported and read as the
/// default (completing, as before the annotation existed).
fn complete_policy(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> CompletePolicy {
    let Some(v) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(COMPLETE_ANNOTATION))
    else {
        return CompletePolicy::default();
    };
    CompletePolicy::parse(v).unwrap_or_else(|e| {
        tracing::warn!(
            pod = meta.name.as_deref().unwrap_or_default(),
            "{e}; the pod completes its deployment"
        );
        CompletePolicy::default()
    })
}

/// `Some((status, exit_code))` when all containers terminated: `succeeded` with 0 when
/// every exit code was 0, else `failed` with the first non-zero code.
fn finished(pod: &Pod) -> Option<(String, i32)> {
    let status = pod.status.as_ref()?;
    let phase = status.phase.as_deref().unwrap_or_default();
    let containers = status.container_statuses.as_ref()?;
    let want = pod.spec.as_ref().map_or(0, |s| s.containers.len());
    if containers.is_empty() || containers.len() < want {
        return None;
    }
    let mut codes = Vec::new();
    for c in containers {
        let t = c.state.as_ref()?.terminated.as_ref()?;
        codes.push(t.exit_code);
    }
    // A restarting container (restartPolicy Always/OnFailure) is not finished unless
    // the pod says so.
    if !matches!(phase, "Succeeded" | "Failed") && codes.iter().any(|c| *c != 0) {
        return None;
    }
    match codes.iter().find(|c| **c != 0) {
        None => Some(("succeeded".into(), 0)),
        Some(c) => Some(("failed".into(), *c)),
    }
}

/// Pods by uid.
pub type PodMap = HashMap<String, PodInfo>;

/// Whether `labels` satisfy a Kubernetes label selector.
pub fn selector_matches(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expr = sel.match_expressions.iter().flatten().all(|e| {
        let have = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    by_labels && by_expr
}

/// Which tenant a pod belongs to. With no LogStreams known, the collector's own label
/// keys and `--gateway` apply. With LogStreams, the first (by namespace/name) whose
/// namespaces and pod selector match and whose deployment label the pod carries
/// decides the deployment, the step label and the gateway (its `status.endpoints`);
/// a pod no LogStream selects is skipped, as is one whose LogStream has no endpoint yet.
pub fn pod_info(
    pod: &Pod,
    sel: &Selection,
    logstreams: &[logstream_crds::LogStream],
) -> Option<PodInfo> {
    let base = PodInfo::from_pod(pod, sel)?;
    if logstreams.is_empty() {
        return Some(base);
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let mut sorted: Vec<&logstream_crds::LogStream> = logstreams.iter().collect();
    sorted.sort_by_key(|l| (l.metadata.namespace.clone(), l.metadata.name.clone()));
    for ls in sorted {
        let spec = &ls.spec;
        let own_ns = ls.metadata.namespace.clone().unwrap_or_default();
        let in_ns = if spec.selector.namespaces.is_empty() {
            base.namespace == own_ns
        } else {
            spec.selector.namespaces.contains(&base.namespace)
        };
        if !in_ns
            || spec
                .selector
                .pod_selector
                .as_ref()
                .is_some_and(|s| !selector_matches(s, &labels))
        {
            continue;
        }
        let Some(dep) = labels
            .get(&spec.labels.deployment)
            .filter(|d| logstream_model::validate_deployment_id(d).is_ok())
        else {
            continue;
        };
        let Some(ingest) = ls
            .status
            .as_ref()
            .and_then(|s| s.endpoints.as_ref())
            .map(|e| e.ingest.clone())
        else {
            continue;
        };
        return Some(PodInfo {
            deployment: Some(dep.clone()),
            step: labels.get(&spec.labels.step).cloned(),
            gateway: Some(format!("http://{ingest}")),
            ..base
        });
    }
    Some(PodInfo {
        deployment: None,
        ..base
    })
}

/// The pod map for a set of pods and LogStreams.
pub fn build_map(
    pods: &[Pod],
    sel: &Selection,
    logstreams: &[logstream_crds::LogStream],
) -> PodMap {
    pods.iter()
        .filter_map(|p| pod_info(p, sel, logstreams))
        .map(|i| (i.uid.clone(), i))
        .collect()
}

/// Parses `kubectl get logstreams -A -o json` (a List) for `--logstreams FILE`.
pub fn parse_logstream_list(json: &[u8]) -> Result<Vec<logstream_crds::LogStream>, String> {
    parse_list(json, "LogStream")
}

/// Parses a `kubectl get pods -o json` List (or a single Pod).
pub fn parse_pod_list(json: &[u8]) -> Result<Vec<Pod>, String> {
    parse_list(json, "Pod")
}

/// The items of a `kubectl get ... -o json` List (or the one object it holds).
fn parse_list<T: serde::de::DeserializeOwned>(json: &[u8], kind: &str) -> Result<Vec<T>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
    let items = match v.get("items") {
        Some(items) => items.as_array().cloned().unwrap_or_default(),
        None => vec![v],
    };
    items
        .into_iter()
        .map(|i| serde_json::from_value(i).map_err(|e| format!("not a {kind}: {e}")))
        .collect()
}

/// Watches this node's pods through the Kubernetes API (a `kube` runtime watcher with
/// the field selector `spec.nodeName=<node>`, so the API server filters) and, with
/// `logstreams`, every LogStream (tenant selection and gateways); calls `publish` with
/// the full map after every change, once both have been listed. Returns when the
/// streams end.
pub async fn watch_node_pods(
    client: kube::Client,
    node: &str,
    sel: Selection,
    logstreams: bool,
    publish: impl Fn(PodMap),
) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};

    enum Tick {
        Pods(bool),
        LogStreams(bool),
        Failed(String),
    }
    fn tick<K>(ev: Result<watcher::Event<K>, watcher::Error>, f: fn(bool) -> Tick) -> Tick {
        match ev {
            // A store is swapped in at InitDone: publish then and on every change.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => f(false),
            Ok(_) => f(true),
            Err(e) => Tick::Failed(e.to_string()),
        }
    }
    let pods_api: kube::Api<Pod> = kube::Api::all(client.clone());
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let (pods, pods_writer) = reflector::store();
    let pod_ticks = reflector(pods_writer, watcher(pods_api, wc).default_backoff())
        .map(|e| tick(e, Tick::Pods))
        .boxed();
    let (lss, ls_writer) = reflector::store::<logstream_crds::LogStream>();
    let ls_ticks = if logstreams {
        let api: kube::Api<logstream_crds::LogStream> = kube::Api::all(client);
        reflector(
            ls_writer,
            watcher(api, watcher::Config::default()).default_backoff(),
        )
        .map(|e| tick(e, Tick::LogStreams))
        .boxed()
    } else {
        futures::stream::pending().boxed()
    };
    let mut ticks = futures::stream::select(pod_ticks, ls_ticks);
    let (mut pods_ready, mut ls_ready) = (false, !logstreams);
    while let Some(t) = ticks.next().await {
        match t {
            Tick::Pods(ready) => pods_ready |= ready,
            Tick::LogStreams(ready) => ls_ready |= ready,
            Tick::Failed(e) => {
                tracing::warn!(error = %e, "watching pods or LogStreams failed; retrying with backoff");
                continue;
            }
        }
        if pods_ready && ls_ready {
            let p: Vec<Pod> = pods.state().iter().map(|p| (**p).clone()).collect();
            let l: Vec<logstream_crds::LogStream> =
                lss.state().iter().map(|l| (**l).clone()).collect();
            publish(build_map(&p, &sel, &l));
        }
    }
}

/// Splits a `/var/log/pods` directory name `<namespace>_<pod>_<uid>`.
pub fn parse_pod_dir(name: &str) -> Option<(&str, &str, &str)> {
    let (rest, uid) = name.rsplit_once('_')?;
    let (ns, pod) = rest.split_once('_')?;
    (!ns.is_empty() && !pod.is_empty() && !uid.is_empty()).then_some((ns, pod, uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(labels: serde_json::Value, statuses: serde_json::Value, phase: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ci", "uid": "u1", "labels": labels},
            "spec": {"containers": [{"name": "build"}, {"name": "test"}]},
            "status": {"phase": phase, "containerStatuses": statuses},
        }))
        .unwrap()
    }

    fn term(name: &str, code: i32) -> serde_json::Value {
        serde_json::json!({"name": name, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code}}})
    }

    fn running(name: &str) -> serde_json::Value {
        serde_json::json!({"name": name, "image": "x", "imageID": "", "ready": true, "restartCount": 0,
            "state": {"running": {}}})
    }

    #[test]
    fn selection_steps_and_completion() {
        let sel = Selection::default();
        let labels =
            serde_json::json!({"logstream.dev/deployment": "run-42", "logstream.dev/step": "ci"});
        let p = PodInfo::from_pod(
            &pod(
                labels.clone(),
                serde_json::json!([running("build"), term("test", 0)]),
                "Running",
            ),
            &sel,
        )
        .unwrap();
        assert_eq!(p.deployment.as_deref(), Some("run-42"));
        assert_eq!(p.step.as_deref(), Some("ci"));
        assert_eq!(p.finished, None, "one container still runs");
        let p = PodInfo::from_pod(
            &pod(
                labels.clone(),
                serde_json::json!([term("build", 0), term("test", 0)]),
                "Succeeded",
            ),
            &sel,
        )
        .unwrap();
        assert_eq!(p.finished, Some(("succeeded".into(), 0)));
        let p = PodInfo::from_pod(
            &pod(
                labels,
                serde_json::json!([term("build", 0), term("test", 3)]),
                "Failed",
            ),
            &sel,
        )
        .unwrap();
        assert_eq!(p.finished, Some(("failed".into(), 3)));
        let p = PodInfo::from_pod(
            &pod(
                serde_json::json!({"app": "x"}),
                serde_json::json!([]),
                "Running",
            ),
            &sel,
        )
        .unwrap();
        assert_eq!(p.deployment, None, "unselected");
        let p = PodInfo::from_pod(
            &pod(
                serde_json::json!({"logstream.dev/deployment": "bad id!"}),
                serde_json::json!([]),
                "Running",
            ),
            &sel,
        )
        .unwrap();
        assert_eq!(p.deployment, None, "an invalid id is not selected");
    }

    #[test]
    fn pod_dirs() {
        assert_eq!(
            parse_pod_dir("ci_build-7_0a1b"),
            Some(("ci", "build-7", "0a1b"))
        );
        assert_eq!(parse_pod_dir("nounderscore"), None);
    }

    #[test]
    fn the_complete_annotation_says_which_endings_complete_the_deployment() {
        use CompletePolicy::*;
        let cases = [
            (Always, "succeeded", true),
            (Always, "failed", true),
            (OnFailure, "succeeded", false),
            (OnFailure, "failed", true),
            (Never, "failed", false),
        ];
        for (p, status, completes) in cases {
            assert_eq!(p.completes(status), completes, "{p:?} {status}");
        }
        assert_eq!(CompletePolicy::parse("on-failure"), Ok(OnFailure));
        let e = CompletePolicy::parse("sometimes").unwrap_err();
        assert!(e.contains("use always, on-failure or never"), "{e}");
        let mut p = pod(
            serde_json::json!({"logstream.dev/deployment": "run-42"}),
            serde_json::json!([term("build", 0)]),
            "Succeeded",
        );
        let sel = Selection::default();
        assert_eq!(PodInfo::from_pod(&p, &sel).unwrap().complete, Always);
        p.metadata.annotations =
            Some([(COMPLETE_ANNOTATION.to_owned(), "never".to_owned())].into());
        assert_eq!(PodInfo::from_pod(&p, &sel).unwrap().complete, Never);
        p.metadata.annotations =
            Some([(COMPLETE_ANNOTATION.to_owned(), "bogus".to_owned())].into());
        assert_eq!(PodInfo::from_pod(&p, &sel).unwrap().complete, Always);
    }
}
