//! An in-process fake Kubernetes API server behind kube's `Client` (the `tower-test`
//! mock service): it keeps objects by path, answers GET/LIST/POST/PUT/DELETE, merge
//! and JSON patches, server-side apply (the applied object replaces the stored one,
//! keeping status and server fields) and status subresources, checks resourceVersion
//! on PUT (409 on conflict), and records every request. Failures can be injected per
//! path.

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

#[derive(Default)]
pub struct State {
    pub objects: BTreeMap<String, Value>,
    pub requests: Vec<Recorded>,
    /// (method, path substring, HTTP status) answered instead of the real thing.
    pub fail: Vec<(Method, String, u16)>,
    /// Status merged into StatefulSets/Deployments as they are applied.
    pub workload_status: BTreeMap<String, Value>,
    next_version: u64,
}

#[derive(Clone, Default)]
pub struct FakeApi(pub Arc<Mutex<State>>);

impl FakeApi {
    /// A client talking to a new fake API server.
    pub fn start() -> (kube::Client, FakeApi) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = FakeApi::default();
        let f = fake.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let resp = f.handle(req).await;
                send.send_response(resp);
            }
        });
        (kube::Client::new(service, "default"), fake)
    }

    pub fn put(&self, path: &str, mut obj: Value) {
        let mut s = self.0.lock();
        s.next_version += 1;
        obj["metadata"]["resourceVersion"] = s.next_version.to_string().into();
        s.objects.insert(path.to_owned(), obj);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.0.lock().objects.get(path).cloned()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.0.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.0.lock().requests.clear();
    }

    /// Events recorded so far: (type, reason, note).
    pub fn events(&self) -> Vec<(String, String, String)> {
        self.0
            .lock()
            .objects
            .iter()
            .filter(|(k, _)| k.starts_with("/apis/events.k8s.io/"))
            .map(|(_, e)| {
                (
                    e["type"].as_str().unwrap_or_default().to_owned(),
                    e["reason"].as_str().unwrap_or_default().to_owned(),
                    e["note"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = req.into_body().collect_bytes().await.expect("request body");
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .or_else(|_| serde_yaml::from_slice(&bytes))
                .expect("a JSON or YAML body")
        };
        let mut s = self.0.lock();
        s.requests.push(Recorded {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            body: body.clone(),
        });
        if let Some((_, _, code)) = s
            .fail
            .iter()
            .find(|(m, p, _)| *m == method && path.contains(p.as_str()))
        {
            let code = *code;
            return status(code, "InternalError", "injected failure");
        }
        let (object_path, sub) = match path.strip_suffix("/status") {
            Some(p) if s.objects.contains_key(p) => (p.to_owned(), "status"),
            _ => (path.clone(), ""),
        };
        match method {
            Method::GET => match s.objects.get(&object_path) {
                Some(o) => ok(o),
                None if is_collection(&path) => {
                    let selector = query_param(&query, "labelSelector");
                    let items: Vec<Value> = s
                        .objects
                        .iter()
                        .filter(|(k, _)| {
                            k.starts_with(&format!("{path}/")) && !k[path.len() + 1..].contains('/')
                        })
                        .map(|(_, v)| v.clone())
                        .filter(|v| matches_selector(v, selector.as_deref()))
                        .collect();
                    ok(
                        &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                    )
                }
                None => status(404, "NotFound", "not found"),
            },
            Method::POST => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| {
                        format!(
                            "{}{}",
                            body["metadata"]["generateName"].as_str().unwrap_or("obj-"),
                            s.requests.len()
                        )
                    });
                let p = format!("{path}/{name}");
                if s.objects.contains_key(&p) {
                    return status(409, "AlreadyExists", "already exists");
                }
                let mut o = body;
                o["metadata"]["name"] = name.into();
                s.next_version += 1;
                o["metadata"]["resourceVersion"] = s.next_version.to_string().into();
                s.objects.insert(p, o.clone());
                respond(201, &o)
            }
            Method::PUT => {
                let Some(old) = s.objects.get(&path) else {
                    return status(404, "NotFound", "not found");
                };
                if body["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"] {
                    return status(409, "Conflict", "the object has been modified");
                }
                let mut o = body;
                s.next_version += 1;
                o["metadata"]["resourceVersion"] = s.next_version.to_string().into();
                s.objects.insert(path, o.clone());
                ok(&o)
            }
            Method::DELETE => match s.objects.remove(&path) {
                Some(o) => ok(&o),
                None => status(404, "NotFound", "not found"),
            },
            Method::PATCH => {
                let existing = s.objects.get(&object_path).cloned();
                let mut o = match (content_type.as_str(), existing) {
                    ("application/apply-patch+yaml", old) => {
                        let mut o = body;
                        if let Some(old) = old {
                            o["status"] = old["status"].clone();
                            o["metadata"]["uid"] = old["metadata"]["uid"].clone();
                        } else {
                            o["metadata"]["uid"] = format!("uid-{}", s.requests.len()).into();
                        }
                        let kind = o["kind"].as_str().unwrap_or_default().to_owned();
                        if let Some(st) = s.workload_status.get(&kind) {
                            o["status"] = st.clone();
                        }
                        if o["status"].is_null() {
                            o.as_object_mut().unwrap().remove("status");
                        }
                        o
                    }
                    (_, None) => return status(404, "NotFound", "not found"),
                    ("application/merge-patch+json", Some(mut old)) => {
                        let patch = if sub == "status" {
                            json!({"status": body["status"]})
                        } else {
                            body
                        };
                        json_patch::merge(&mut old, &patch);
                        old
                    }
                    ("application/json-patch+json", Some(mut old)) => {
                        let patch: json_patch::Patch = serde_json::from_value(body).unwrap();
                        // The API server tests an absent field as null.
                        let absent = old["metadata"].get("finalizers").is_none();
                        if absent {
                            old["metadata"]["finalizers"] = Value::Null;
                        }
                        if json_patch::patch(&mut old, &patch).is_err() {
                            return status(422, "Invalid", "JSON patch test failed");
                        }
                        if old["metadata"]["finalizers"].is_null() {
                            old["metadata"]
                                .as_object_mut()
                                .unwrap()
                                .remove("finalizers");
                        }
                        old
                    }
                    (other, _) => panic!("unexpected patch type {other}"),
                };
                s.next_version += 1;
                o["metadata"]["resourceVersion"] = s.next_version.to_string().into();
                let deleting = !o["metadata"]["deletionTimestamp"].is_null();
                let no_finalizers = o["metadata"]["finalizers"]
                    .as_array()
                    .is_none_or(Vec::is_empty);
                if deleting && no_finalizers {
                    s.objects.remove(&object_path);
                } else {
                    s.objects.insert(object_path, o.clone());
                }
                ok(&o)
            }
            m => panic!("unexpected method {m}"),
        }
    }
}

fn is_collection(path: &str) -> bool {
    // .../namespaces/<ns>/<plural>, /api/v1/<plural>, /apis/<group>/<version>/<plural>
    let parts: Vec<_> = path.trim_matches('/').split('/').collect();
    let n = parts.len();
    (n >= 3 && parts[n - 3] == "namespaces")
        || (!parts.contains(&"namespaces")
            && ((parts[0] == "api" && n == 3) || (parts[0] == "apis" && n == 4)))
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            v.replace("%3D", "=")
                .replace("%2C", ",")
                .replace("%2F", "/")
        })
    })
}

fn matches_selector(obj: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector else { return true };
    sel.split(',').all(|kv| match kv.split_once('=') {
        Some((k, v)) => obj["metadata"]["labels"][k] == v,
        None => true,
    })
}

fn ok(v: &Value) -> Response<Body> {
    respond(200, v)
}

fn respond(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    respond(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}
