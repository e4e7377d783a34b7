//! `/openapi.json` is derived from the handlers and the wire types; this checks it
//! against what is really served: every routed path and method is documented (and
//! nothing else), and real answers validate against the documented schemas, with no
//! undocumented field.

use std::collections::{BTreeMap, BTreeSet};

use logstream_gateway::auth::Scope;
use logstream_gateway::testkit::{TestGateway, client, lines};
use serde_json::{Value, json};

/// `(path, methods)` of every `.route(..)` in the HTTP router's source.
fn routed() -> BTreeMap<String, BTreeSet<String>> {
    let src = include_str!("../../src/http/mod.rs");
    // One line per call, however rustfmt wrapped it.
    let flat: String = src.lines().map(str::trim).collect::<Vec<_>>().join("");
    let mut out = BTreeMap::new();
    for call in flat.split(".route(\"").skip(1) {
        let (path, rest) = call.split_once('"').unwrap();
        let handlers = rest
            .split(".route(")
            .next()
            .unwrap()
            .split(".merge(")
            .next()
            .unwrap();
        let methods = ["get", "post", "put", "delete", "patch"]
            .into_iter()
            .filter(|m| handlers.contains(&format!("{m}(")))
            .map(str::to_owned)
            .collect();
        out.insert(path.to_owned(), methods);
    }
    out
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap();
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => schema,
    }
}

/// Checks `value` against `schema` (the subset utoipa emits: type, properties,
/// required, items, additionalProperties, oneOf/anyOf/allOf); an object field the
/// schema does not name is an error too.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            return options
                .iter()
                .find(|s| check(doc, s, value, at).is_ok())
                .map(|_| ())
                .ok_or_else(|| format!("{at}: {value} matches none of {key}"));
        }
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            check(doc, s, value, at)?;
        }
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "null" => value.is_null(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            _ => false,
        });
        if !ok {
            return Err(format!("{at}: {value} is not {types:?}"));
        }
    }
    if let Some(obj) = value.as_object() {
        let props = schema["properties"].as_object();
        for r in schema["required"].as_array().into_iter().flatten() {
            let r = r.as_str().unwrap();
            if !obj.contains_key(r) {
                return Err(format!("{at}: required {r:?} missing"));
            }
        }
        for (k, v) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => check(doc, s, v, &format!("{at}.{k}"))?,
                None => match schema.get("additionalProperties") {
                    Some(s) if s.is_object() => check(doc, s, v, &format!("{at}.{k}"))?,
                    Some(Value::Bool(true)) => {}
                    _ if props.is_none() => {}
                    _ => return Err(format!("{at}: field {k:?} is not documented")),
                },
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            check(doc, items, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

fn response_schema<'a>(doc: &'a Value, path: &str, method: &str, status: &str) -> &'a Value {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not documented");
    let resp = &op["responses"][status];
    let resp = if resp.is_null() {
        &op["responses"]["default"]
    } else {
        resp
    };
    let schema = &resp["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status}: no JSON schema"
    );
    schema
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_matches_the_served_routes_and_bodies() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    let admin = gw.token("acme", &[Scope::Admin]);
    let doc: Value = client()
        .get(format!("{}/openapi.json", gw.http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));

    let routes = routed();
    assert!(routes.len() >= 12, "{routes:?}");
    let documented: BTreeMap<String, BTreeSet<String>> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(p, ops)| {
            (
                p.clone(),
                ops.as_object().unwrap().keys().cloned().collect(),
            )
        })
        .collect();
    assert_eq!(routes, documented, "routes (left) vs /openapi.json (right)");

    // Real answers against the documented schemas.
    let c = client();
    let url = |p: &str| format!("{}{p}", gw.http);
    let mut answers: Vec<(&str, &str, &str, Value)> = Vec::new();
    let ack = c
        .post(url("/v1/deployments/o/logs"))
        .bearer_auth(&token)
        .header("content-type", "application/x-ndjson")
        .body(
            json!({"message": "password=hunter2hunter2 done", "level": "warn", "step": "s"})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(ack.status(), 200);
    answers.push((
        "/v1/deployments/{id}/logs",
        "post",
        "200",
        ack.json().await.unwrap(),
    ));
    gw.push(&token, "o", &lines("x", 0..3)).await;
    let secrets = c
        .post(url("/v1/deployments/o/secrets"))
        .bearer_auth(&token)
        .json(&json!({"values": ["abcdef"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(secrets.status(), 200);
    answers.push((
        "/v1/deployments/{id}/secrets",
        "post",
        "200",
        secrets.json().await.unwrap(),
    ));
    for (path, real) in [
        ("/v1/deployments", "/v1/deployments".to_owned()),
        ("/v1/deployments/{id}", "/v1/deployments/o".to_owned()),
        (
            "/v1/deployments/{id}/logs",
            "/v1/deployments/o/logs?limit=2".to_owned(),
        ),
        ("/v1/deployments/{id}", "/v1/deployments/missing".to_owned()),
        (
            "/v1/deployments/{id}/logs",
            "/v1/deployments/o/logs?bogus=1".to_owned(),
        ),
    ] {
        let (status, body) = gw.get_json(&token, &real).await;
        answers.push((
            path,
            "get",
            if status == 200 { "200" } else { "default" },
            body,
        ));
    }
    let done = c
        .post(url("/v1/deployments/o/complete"))
        .bearer_auth(&token)
        .json(&json!({"status": "failed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    answers.push((
        "/v1/deployments/{id}/complete",
        "post",
        "200",
        done.json().await.unwrap(),
    ));
    let (status, audit) = gw.get_json(&admin, "/v1/audit?limit=5").await;
    assert_eq!(status, 200, "{audit}");
    answers.push(("/v1/audit", "get", "200", audit));
    for (path, method, status, body) in &answers {
        let schema = response_schema(&doc, path, method, status);
        if let Err(e) = check(&doc, schema, body, &format!("{method} {path} {status}")) {
            panic!("{e}\nanswer: {body}");
        }
    }
    // The check itself refuses a drifted body.
    let schema = response_schema(&doc, "/v1/deployments", "get", "200");
    assert!(check(&doc, schema, &json!({"deployments": [{"id": 1}]}), "x").is_err());
    assert!(check(&doc, schema, &json!({"deployments": [], "extra": 1}), "x").is_err());
    gw.shutdown().await;
}
