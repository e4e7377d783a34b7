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
        })
    }
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

/// Parses a `kubectl get pods -o json` List (or a single Pod).
pub fn parse_pod_list(json: &[u8], sel: &Selection) -> Result<PodMap, String> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
    let items = match v.get("items") {
        Some(items) => items.as_array().cloned().unwrap_or_default(),
        None => vec![v],
    };
    let mut out = PodMap::new();
    for item in items {
        let pod: Pod = serde_json::from_value(item).map_err(|e| format!("not a Pod: {e}"))?;
        if let Some(info) = PodInfo::from_pod(&pod, sel) {
            out.insert(info.uid.clone(), info);
        }
    }
    Ok(out)
}

/// Watches this node's pods through the Kubernetes API (a `kube` runtime watcher with
/// the field selector `spec.nodeName=<node>`, so the API server filters) and calls
/// `publish` with the full map after every change. Returns when the watch stream ends.
pub async fn watch_node_pods(
    client: kube::Client,
    node: &str,
    sel: Selection,
    publish: impl Fn(PodMap),
) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};

    let api: kube::Api<Pod> = kube::Api::all(client);
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, wc).default_backoff());
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            // The store is swapped in at InitDone: publish then and on every change.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(_) => {
                let map: PodMap = reader
                    .state()
                    .iter()
                    .filter_map(|p| PodInfo::from_pod(p, &sel))
                    .map(|i| (i.uid.clone(), i))
                    .collect();
                publish(map);
            }
            Err(e) => tracing::warn!(error = %e, "watching pods failed; retrying with backoff"),
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
}
