//! OTLP (HTTP protobuf and JSON, gzip; gRPC) and Loki push (protobuf + snappy, JSON,
//! gzip): lines land once, in order, per deployment, redacted, with metadata; refusals
//! come back in each protocol's form. (The real clients, the OpenTelemetry Python SDK and
//! winston-loki, are driven by e2e/compat.)

use std::io::Write;

use logstream_gateway::auth::Scope;
use logstream_gateway::compat::loki;
use logstream_gateway::testkit::{TestGateway, client};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse, logs_service_client::LogsServiceClient,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::json;

/// `google.rpc.Status` as an OTLP client decodes an error body.
#[derive(Clone, PartialEq, prost::Message)]
struct Status {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

const GHP: &str = "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789";

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// One resource (`deployment` on it when given) with `records` of (deployment attribute
/// or "", body, severity number).
fn export(deployment: Option<&str>, records: &[(&str, &str, i32)]) -> ExportLogsServiceRequest {
    let mut resource = vec![kv("service.name", "ci-runner")];
    if let Some(d) = deployment {
        resource.push(kv("logstream.deployment", d));
    }
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records
                    .iter()
                    .map(|(dep, body, sev)| LogRecord {
                        attributes: if dep.is_empty() {
                            vec![kv("logstream.step", "build")]
                        } else {
                            vec![
                                kv("logstream.deployment", dep),
                                kv("logstream.step", "test"),
                            ]
                        },
                        severity_number: *sev,
                        body: Some(AnyValue {
                            value: Some(Value::StringValue((*body).into())),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn messages(lines: &[serde_json::Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn otlp_http_protobuf_and_json_store_lines_in_order_with_partial_success() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    let req = export(
        Some("otel-a"),
        &[
            ("", "compiling", 9),
            ("otel-b", "other deployment", 13),
            ("", &format!("token {GHP} leaked"), 17),
            ("", "multi\nline", 0),
        ],
    );
    let r = client()
        .post(format!("{}/v1/logs", gw.http))
        .bearer_auth(&token)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(gzip(&req.encode_to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-protobuf");
    let reply = ExportLogsServiceResponse::decode(r.bytes().await.unwrap()).unwrap();
    assert_eq!(
        reply.partial_success, None,
        "all stored: no partial success"
    );

    let a = gw.read_all(&token, "otel-a").await;
    assert_eq!(messages(&a)[0], "compiling");
    assert!(
        a[1]["message"]
            .as_str()
            .unwrap()
            .starts_with("token ghp_***")
    );
    assert_eq!(&messages(&a)[2..], ["multi", "line"]);
    assert!(!a.iter().any(|l| l.to_string().contains(GHP)));
    assert_eq!(a[0]["step"], "build");
    assert_eq!(a[0]["level"], "info");
    assert_eq!(a[1]["level"], "error");
    assert_eq!(a[0]["metadata"]["service.name"], "ci-runner");
    assert!(a[0]["metadata"].get("logstream.deployment").is_none());
    let b = gw.read_all(&token, "otel-b").await;
    assert_eq!(messages(&b), ["other deployment"]);
    assert_eq!(
        (b[0]["step"].as_str(), b[0]["level"].as_str()),
        (Some("test"), Some("warn"))
    );

    // JSON, as the OTLP/JSON exporters send it (string nanoseconds, integer enums); one
    // record without a deployment is refused in the partial success, the rest stored.
    let body = json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "cicd.pipeline.run.id", "value": {"intValue": "4242"}}]},
        "scopeLogs": [{"scope": {"name": "py"}, "logRecords": [
            {"timeUnixNano": "1700000000000000000", "severityNumber": 5, "body": {"stringValue": "first"},
             "attributes": [{"key": "cicd.pipeline.task.name", "value": {"stringValue": "deploy"}}],
             "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174"},
            {"body": {"kvlistValue": {"values": [{"key": "k", "value": {"boolValue": true}}]}}}
        ]}]
    }, {
        "scopeLogs": [{"logRecords": [{"body": {"stringValue": "nowhere"}}]}]
    }]});
    let r = client()
        .post(format!("{}/v1/logs", gw.http))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let reply: serde_json::Value = r.json().await.unwrap();
    let partial = &reply["partialSuccess"];
    assert_eq!(
        partial["rejectedLogRecords"].to_string().trim_matches('"'),
        "1"
    );
    assert!(
        partial["errorMessage"]
            .as_str()
            .unwrap()
            .contains("logstream.deployment"),
        "{reply}"
    );
    let lines = gw.read_all(&token, "4242").await;
    assert_eq!(messages(&lines), ["first", r#"{"k":true}"#]);
    assert_eq!(lines[0]["step"], "deploy");
    assert_eq!(lines[0]["level"], "debug");
    assert_eq!(lines[0]["ts"], "2023-11-14T22:13:20.000000000Z");
    assert_eq!(
        lines[0]["metadata"]["trace_id"],
        "5b8efff798038103d269b633813fc60c"
    );
    assert_eq!(lines[0]["metadata"]["otel.scope.name"], "py");
    gw.shutdown().await;
}

#[tokio::test]
async fn otlp_http_errors_are_rpc_statuses_with_the_right_http_status() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(tmp.path(), |c| {
        c.quotas.ingest_lines_per_sec = 5;
    })
    .await;
    let token = gw.rw();
    let post = |ctype: &'static str, body: Vec<u8>, token: Option<String>| {
        let mut r = client()
            .post(format!("{}/v1/logs", gw.http))
            .header("content-type", ctype)
            .body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    // Not protobuf: 400, a google.rpc.Status in protobuf with INVALID_ARGUMENT (3).
    let r = post(
        "application/x-protobuf",
        b"\xff\xff\xff".to_vec(),
        Some(token.clone()),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let st = Status::decode(r.bytes().await.unwrap()).unwrap();
    assert_eq!(st.code, 3, "INVALID_ARGUMENT");
    assert!(st.message.starts_with("invalid_otlp"), "{}", st.message);
    // JSON that is not a request: a JSON status.
    let r = post("application/json", b"[1,2]".to_vec(), Some(token.clone()))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let st: serde_json::Value = r.json().await.unwrap();
    assert_eq!(st["code"], 3);
    assert!(st["message"].as_str().unwrap().contains("invalid_otlp"));
    // No token, a read-only token, another media type.
    let body = export(Some("q"), &[("", "x", 0)]).encode_to_vec();
    let r = post("application/x-protobuf", body.clone(), None)
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let ro = gw.token("acme", &[Scope::Read]);
    let r = post("application/x-protobuf", body.clone(), Some(ro))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = post("text/plain", body.clone(), Some(token.clone()))
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // Over the quota: 429 with Retry-After (retryable), nothing of that request stored.
    let many: Vec<(&str, &str, i32)> = (0..50).map(|_| ("", "flood", 0)).collect();
    let mut stored = 0;
    let refused = loop {
        let r = post(
            "application/x-protobuf",
            export(Some("q"), &many).encode_to_vec(),
            Some(token.clone()),
        )
        .await
        .unwrap();
        match r.status().as_u16() {
            200 => stored += 50,
            _ => break r,
        }
        assert!(stored < 5000, "the quota never refused");
    };
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let st = Status::decode(refused.bytes().await.unwrap()).unwrap();
    assert_eq!(st.code, 8, "RESOURCE_EXHAUSTED");
    assert!(st.message.starts_with("quota_exceeded"), "{}", st.message);
    assert_eq!(gw.read_all(&token, "q").await.len(), stored);
    gw.shutdown().await;
}

#[tokio::test]
async fn otlp_grpc_export_stores_and_refuses_with_grpc_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    let mut c = LogsServiceClient::new(gw.grpc_channel().await)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let req = |t: Option<&str>, r: ExportLogsServiceRequest| {
        let mut req = tonic::Request::new(r);
        if let Some(t) = t {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req
    };
    let reply = c
        .export(req(
            Some(&token),
            export(Some("g-otel"), &[("", "one", 9), ("", "two", 9)]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.partial_success, None);
    let reply = c
        .export(req(Some(&token), export(None, &[("", "orphan", 9)])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.partial_success.unwrap().rejected_log_records, 1);
    assert_eq!(
        messages(&gw.read_all(&token, "g-otel").await),
        ["one", "two"]
    );

    let e = c
        .export(req(None, export(Some("g-otel"), &[("", "x", 0)])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let ro = gw.token("acme", &[Scope::Read]);
    let e = c
        .export(req(Some(&ro), export(Some("g-otel"), &[("", "x", 0)])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // A completed deployment refuses more lines: a final error, reported per record.
    gw.complete(&token, "g-otel", "succeeded", 0).await;
    let reply = c
        .export(req(
            Some(&token),
            export(Some("g-otel"), &[("", "late", 0)]),
        ))
        .await
        .unwrap()
        .into_inner();
    let p = reply.partial_success.unwrap();
    assert_eq!(p.rejected_log_records, 1);
    assert!(
        p.error_message.contains("deployment_completed"),
        "{}",
        p.error_message
    );
    gw.shutdown().await;
}

fn loki_proto(streams: Vec<(&str, Vec<&str>)>) -> Vec<u8> {
    let req = loki::PushRequest {
        streams: streams
            .into_iter()
            .map(|(labels, lines)| loki::StreamAdapter {
                labels: labels.into(),
                entries: lines
                    .into_iter()
                    .enumerate()
                    .map(|(i, l)| loki::EntryAdapter {
                        timestamp: Some(loki::Timestamp {
                            seconds: 1_700_000_000 + i as i64,
                            nanos: 0,
                        }),
                        line: l.into(),
                        structured_metadata: vec![],
                    })
                    .collect(),
                hash: 0,
            })
            .collect(),
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap()
}

#[tokio::test]
async fn loki_push_in_protobuf_and_json_and_its_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    let push = |ctype: &'static str, body: Vec<u8>, gz: bool| {
        let mut r = client()
            .post(format!("{}/loki/api/v1/push", gw.http))
            .bearer_auth(&token)
            .header("content-type", ctype);
        if gz {
            r = r.header("content-encoding", "gzip");
        }
        r.body(body).send()
    };
    let r = push(
        "application/x-protobuf",
        loki_proto(vec![
            (
                r#"{deployment="lk", step="build", job="ci"}"#,
                vec!["one", &format!("secret {GHP}")],
            ),
            (
                r#"{deployment="lk", step="test", level="error"}"#,
                vec!["two"],
            ),
        ]),
        false,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 204, "{:?}", r.text().await);
    let body = json!({"streams": [{"stream": {"deployment": "lk", "step": "test"},
        "values": [["1700000005000000000", "three", {"pod": "runner-1"}]]}]});
    let r = push("application/json", gzip(body.to_string().as_bytes()), true)
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let lines = gw.read_all(&token, "lk").await;
    assert_eq!(messages(&lines)[0], "one");
    assert!(
        lines[1]["message"]
            .as_str()
            .unwrap()
            .starts_with("secret ghp_***")
    );
    assert_eq!(&messages(&lines)[2..], ["two", "three"]);
    assert!(!lines.iter().any(|l| l.to_string().contains(GHP)));
    assert_eq!(lines[0]["metadata"]["job"], "ci");
    assert_eq!(lines[2]["level"], "error");
    assert_eq!(lines[3]["metadata"]["pod"], "runner-1");
    assert_eq!(lines[3]["ts"], "2023-11-14T22:13:25.000000000Z");

    // A stream without the deployment label: 400 in Loki's plain-text form, the others
    // stored.
    let r = push(
        "application/x-protobuf",
        loki_proto(vec![
            (r#"{job="x"}"#, vec!["lost"]),
            (r#"{deployment="lk2"}"#, vec!["kept"]),
        ]),
        false,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    assert!(text.contains("\"deployment\" label"), "{text}");
    assert_eq!(messages(&gw.read_all(&token, "lk2").await), ["kept"]);
    // Bad labels, bad snappy, bad JSON, another media type.
    for (ctype, body, want) in [
        (
            "application/x-protobuf",
            loki_proto(vec![("{deployment=lk}", vec!["x"])]),
            "invalid_labels",
        ),
        (
            "application/x-protobuf",
            b"not snappy".to_vec(),
            "invalid_loki_push",
        ),
        (
            "application/json",
            b"{\"streams\":1}".to_vec(),
            "invalid_loki_push",
        ),
        ("text/csv", b"a,b".to_vec(), "unsupported_media_type"),
    ] {
        let r = push(ctype, body, false).await.unwrap();
        assert!(r.status().is_client_error());
        let text = r.text().await.unwrap();
        assert!(text.starts_with(want), "{text}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_small_request_that_would_expand_without_bound_is_refused_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(tmp.path(), |c| {
        c.max_body_bytes = 256 << 10;
        c.max_line_bytes = 64 << 10;
    })
    .await;
    let token = gw.rw();
    // 32 resource attributes of 1 KiB, shared by 64 empty records: a 35 KiB body whose
    // lines would carry 2 MiB of metadata (over 4 x max_body_bytes).
    let mut req = export(Some("amp"), &vec![("", "", 0); 64]);
    let attrs = &mut req.resource_logs[0].resource.as_mut().unwrap().attributes;
    attrs.extend((0..32).map(|i| kv(&format!("k{i:02}"), &"v".repeat(1024))));
    let body = req.encode_to_vec();
    assert!(body.len() < 40 << 10);
    let r = client()
        .post(format!("{}/v1/logs", gw.http))
        .bearer_auth(&token)
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let st = Status::decode(r.bytes().await.unwrap()).unwrap();
    assert!(st.message.starts_with("body_too_large"), "{}", st.message);
    let (status, _) = gw.get_json(&token, "/v1/deployments/amp").await;
    assert_eq!(status, 404, "nothing stored");
    // A Loki push without a Content-Type is protobuf, as Loki reads it.
    let r = client()
        .post(format!("{}/loki/api/v1/push", gw.http))
        .bearer_auth(&token)
        .body(loki_proto(vec![(r#"{deployment="untyped"}"#, vec!["x"])]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    gw.shutdown().await;
}
