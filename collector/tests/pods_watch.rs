//! Pod discovery and selection against an in-process fake Kubernetes API (kube's
//! `tower-test` mock service): the collector lists and watches only its node's pods
//! (field selector), selects them by label, and sees completion from a watch event.

use http::{Request, Response};
use kube::client::Body;
use logstream_collector::pods::{Selection, watch_node_pods};
use serde_json::json;

fn pod(
    name: &str,
    labels: serde_json::Value,
    state: serde_json::Value,
    phase: &str,
) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ci", "uid": format!("uid-{name}"), "resourceVersion": "5", "labels": labels},
        "spec": {"nodeName": "node-a", "containers": [{"name": "main"}]},
        "status": {"phase": phase, "containerStatuses": [
            {"name": "main", "image": "x", "imageID": "", "ready": true, "restartCount": 0, "state": state}]},
    })
}

fn respond(body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn node_pods_are_listed_and_watched_by_field_selector_and_selected_by_label() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        watch_node_pods(client, "node-a", Selection::default(), false, move |m| {
            let _ = tx.send(m);
        })
        .await;
    });

    let selected = json!({"logstream.dev/deployment": "run-7", "logstream.dev/step": "build"});
    let (req, send) = handle.next_request().await.expect("a list request");
    assert_eq!(req.uri().path(), "/api/v1/pods");
    let q = req.uri().query().unwrap_or_default().to_owned();
    assert!(q.contains("fieldSelector=spec.nodeName%3Dnode-a"), "{q}");
    assert!(!q.contains("watch=true"), "{q}");
    send.send_response(respond(
        serde_json::to_vec(&json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "10"},
            "items": [
                pod("a", selected.clone(), json!({"running": {}}), "Running"),
                pod("b", json!({"app": "web"}), json!({"running": {}}), "Running"),
            ]
        }))
        .unwrap(),
    ));

    let first = rx.recv().await.expect("the listed pods");
    assert_eq!(first.len(), 2);
    let a = &first["uid-a"];
    assert_eq!(a.deployment.as_deref(), Some("run-7"));
    assert_eq!(a.step.as_deref(), Some("build"));
    assert_eq!(a.finished, None);
    assert_eq!(
        first["uid-b"].deployment, None,
        "no deployment label: not selected"
    );

    let (req, send) = handle.next_request().await.expect("a watch request");
    let q = req.uri().query().unwrap_or_default().to_owned();
    assert!(
        q.contains("watch=true") && q.contains("fieldSelector=spec.nodeName%3Dnode-a"),
        "{q}"
    );
    assert!(
        q.contains("resourceVersion=10"),
        "the watch continues from the list: {q}"
    );
    let mut body = serde_json::to_vec(&json!({
        "type": "MODIFIED",
        "object": pod("a", selected, json!({"terminated": {"exitCode": 3}}), "Failed"),
    }))
    .unwrap();
    body.push(b'\n');
    send.send_response(respond(body));

    let second = rx.recv().await.expect("the change");
    assert_eq!(second["uid-a"].finished, Some(("failed".to_owned(), 3)));
}
