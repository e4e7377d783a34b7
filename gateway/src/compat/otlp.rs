//! OpenTelemetry logs: OTLP/HTTP `POST /v1/logs` (protobuf or JSON, optionally gzip) and
//! OTLP/gRPC `opentelemetry.proto.collector.logs.v1.LogsService/Export`.
//!
//! Mapping (attribute names from `[compat]`): the deployment is the first of
//! `otlp_deployment_attributes` found on the log record, else its scope, else its
//! resource (default `logstream.deployment`, then the CI/CD convention
//! `cicd.pipeline.run.id`); the step likewise (`logstream.step`,
//! `cicd.pipeline.task.name`). The severity number gives the level (else the severity
//! text, else detection from the message); the body is the message (a structured body as
//! JSON; several lines become several lines); `log.iostream` = `stderr` gives the
//! stream; the time is `timeUnixNano`, else `observedTimeUnixNano`, else arrival. Every
//! other attribute of the record and its resource, the scope name and the trace and span
//! ids are kept in the line's metadata (bounded, redacted).
//!
//! Answers follow the OTLP specification: success is `ExportLogsServiceResponse` (with
//! `partial_success` naming the records refused, e.g. without a deployment: not to be
//! retried); a bad request is 400 / `INVALID_ARGUMENT` with a `google.rpc.Status` body; a
//! retryable refusal is 429 or 503 with `Retry-After` / `RESOURCE_EXHAUSTED` or
//! `UNAVAILABLE`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use logstream_model::config::CompatConfig;
use logstream_model::{Level, Stream};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use prost::Message;

use super::Mapped;
use crate::core::{Error, ErrorKind, Gateway};

/// `google.rpc.Status`, the body of an OTLP/HTTP error.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// Maps an export request to groups of lines by deployment.
pub fn map(cfg: &CompatConfig, req: ExportLogsServiceRequest, limit: usize) -> Mapped {
    let mut out = Mapped::with_limit(limit);
    for rl in req.resource_logs {
        let resource = rl.resource.map(|r| r.attributes).unwrap_or_default();
        for sl in rl.scope_logs {
            let (scope_name, scope_attrs) =
                sl.scope.map(|s| (s.name, s.attributes)).unwrap_or_default();
            // The resource's attributes and the scope name, bounded once per scope: never
            // copied whole into every record.
            let mut shared: Vec<(String, String)> = resource
                .iter()
                .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                .collect();
            if !scope_name.is_empty() {
                shared.push(("otel.scope.name".into(), scope_name.clone()));
            }
            let shared = super::bounded(shared);
            for rec in sl.log_records {
                let layers = [&rec.attributes[..], &scope_attrs, &resource];
                let Some((dep_attr, deployment)) = find(&layers, &cfg.otlp_deployment_attributes)
                else {
                    out.rejected.add(
                        1,
                        format!(
                            "a log record has no deployment: set one of the attributes {} on the record or its resource",
                            cfg.otlp_deployment_attributes.join(", ")
                        ),
                    );
                    continue;
                };
                let (step_attr, step) =
                    find(&layers, &cfg.otlp_step_attributes).unwrap_or(("", String::new()));
                let stream = match lookup(&rec.attributes, "log.iostream").as_deref() {
                    Some("stderr") => Stream::Stderr,
                    _ => Stream::Stdout,
                };
                let level = level_of(rec.severity_number, &rec.severity_text);
                let ts = [rec.time_unix_nano, rec.observed_time_unix_nano]
                    .into_iter()
                    .find(|t| *t != 0)
                    .and_then(|t| i64::try_from(t).ok())
                    .unwrap_or(0);
                let used = |k: &str| k == dep_attr || k == step_attr || k == "log.iostream";
                let mut meta: Vec<(String, String)> = rec
                    .attributes
                    .iter()
                    .filter(|kv| !used(&kv.key))
                    .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                    .collect();
                for (k, id) in [("trace_id", &rec.trace_id), ("span_id", &rec.span_id)] {
                    if id.iter().any(|b| *b != 0) {
                        meta.push((k.into(), id.iter().map(|b| format!("{b:02x}")).collect()));
                    }
                }
                if !rec.event_name.is_empty() {
                    meta.push(("event.name".into(), rec.event_name.clone()));
                }
                meta.extend(
                    shared
                        .iter()
                        .filter(|(k, _)| !used(k))
                        .map(|(k, v)| (k.clone(), v.clone())),
                );
                let metadata = super::bounded(meta);
                let message = match rec.body.as_ref() {
                    Some(b) => text(Some(b)),
                    None => rec.event_name.clone(),
                };
                out.push(
                    &deployment,
                    super::lines_of(&message, ts, &step, stream, level, &metadata),
                );
            }
        }
    }
    out
}

/// The first of `names` set (not empty) on any layer, most specific layer first.
fn find<'a>(layers: &[&[KeyValue]], names: &'a [String]) -> Option<(&'a str, String)> {
    names.iter().find_map(|n| {
        layers
            .iter()
            .find_map(|attrs| lookup(attrs, n))
            .filter(|v| !v.is_empty())
            .map(|v| (n.as_str(), v))
    })
}

fn lookup(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| text(kv.value.as_ref()))
}

/// An attribute value or body as text: strings as they are, scalars printed, arrays and
/// maps as JSON, bytes as base64.
fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(other) => match json(other) {
            serde_json::Value::String(s) => s,
            j => j.to_string(),
        },
        None => String::new(),
    }
}

fn json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::StringValue(s) => J::String(s.clone()),
        Value::BoolValue(b) => J::Bool(*b),
        Value::IntValue(i) => J::from(*i),
        Value::DoubleValue(d) => serde_json::Number::from_f64(*d).map_or(J::Null, J::Number),
        Value::BytesValue(b) => J::String(logstream_model::b64::encode(
            b,
            logstream_model::b64::STANDARD,
        )),
        Value::ArrayValue(a) => J::Array(
            a.values
                .iter()
                .map(|v| v.value.as_ref().map_or(J::Null, json))
                .collect(),
        ),
        Value::KvlistValue(kv) => J::Object(
            kv.values
                .iter()
                .map(|kv| {
                    let v = kv.value.as_ref().and_then(|v| v.value.as_ref());
                    (kv.key.clone(), v.map_or(J::Null, json))
                })
                .collect(),
        ),
        Value::StringValueStrindex(_) => J::Null,
    }
}

/// The level of a severity number (OpenTelemetry's ranges: 1-4 trace, 5-8 debug, 9-12
/// info, 13-16 warn, 17-20 error, 21-24 fatal), else of the severity text.
pub fn level_of(number: i32, text: &str) -> Option<Level> {
    match number {
        1..=4 => Some(Level::Trace),
        5..=8 => Some(Level::Debug),
        9..=12 => Some(Level::Info),
        13..=16 => Some(Level::Warn),
        17..=20 => Some(Level::Error),
        21..=24 => Some(Level::Fatal),
        _ => Level::parse(text.trim()),
    }
}

fn answer(stored: super::Stored) -> ExportLogsServiceResponse {
    ExportLogsServiceResponse {
        partial_success: (stored.rejected.items > 0).then(|| ExportLogsPartialSuccess {
            rejected_log_records: stored.rejected.items as i64,
            error_message: stored.rejected.message(),
        }),
    }
}

// === HTTP ===

#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

/// `POST /v1/logs`.
#[utoipa::path(post, path = "/v1/logs", tag = "compat", summary = "OTLP/HTTP logs export (OpenTelemetry): lines stored per deployment attribute", request_body(content((String = "application/x-protobuf"), (serde_json::Value = "application/json")), description = "An ExportLogsServiceRequest in protobuf or OTLP/JSON (gzip with Content-Encoding)"), responses((status = 200, description = "Stored; partial_success names records refused (without a deployment, or refused by the store)", content((String = "application/x-protobuf"), (serde_json::Value = "application/json"))), (status = "default", description = "A google.rpc.Status in the request's encoding; 429/503 with Retry-After may be retried", content((String = "application/x-protobuf"), (serde_json::Value = "application/json")))))]
pub async fn http(State(s): State<Arc<Gateway>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let enc = match crate::http::media_type(&parts.headers).as_str() {
        "application/json" => Encoding::Json,
        // The specification's type; some clients send no type at all.
        "application/x-protobuf" | "application/protobuf" | "" => Encoding::Protobuf,
        other => {
            return error(
                Encoding::Json,
                Error::new(
                    ErrorKind::Unsupported,
                    "unsupported_media_type",
                    format!(
                        "Content-Type {other:?} is not OTLP; send application/x-protobuf or application/json"
                    ),
                ),
            );
        }
    };
    match export_http(&s, &parts, body, enc).await {
        Ok(r) => r,
        Err(e) => error(enc, e),
    }
}

async fn export_http(
    s: &Arc<Gateway>,
    parts: &Parts,
    body: Body,
    enc: Encoding,
) -> Result<Response, Error> {
    let p = crate::http::principal(s, parts).await?;
    crate::core::access::require(&p, crate::auth::Scope::Write)?;
    let raw = crate::http::read_body(s, &parts.headers, body).await?;
    let req = match enc {
        Encoding::Protobuf => ExportLogsServiceRequest::decode(&raw[..]).map_err(|e| {
            Error::invalid(
                "invalid_otlp",
                format!("the body is not an OTLP ExportLogsServiceRequest in protobuf: {e}"),
            )
        })?,
        Encoding::Json => serde_json::from_slice(&raw).map_err(|e| {
            Error::invalid(
                "invalid_otlp",
                format!("the body is not an OTLP ExportLogsServiceRequest in JSON: {e}"),
            )
        })?,
    };
    let limit = 4 * s.config.max_body_bytes;
    let stored = super::store(s, &p, map(&s.config.compat, req, limit)).await?;
    let reply = answer(stored);
    Ok(match enc {
        Encoding::Protobuf => (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            reply.encode_to_vec(),
        )
            .into_response(),
        Encoding::Json => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&reply).unwrap_or_default(),
        )
            .into_response(),
    })
}

/// An OTLP/HTTP error: the HTTP status of the core error, a `google.rpc.Status` body in
/// the request's encoding (code: the gRPC code), `Retry-After` when retryable.
fn error(enc: Encoding, e: Error) -> Response {
    let http = crate::http::status_of(e.kind);
    let grpc = crate::grpc::status(e.clone());
    let body = RpcStatus {
        code: grpc.code() as i32,
        message: format!("{}: {}", e.code, e.message),
    };
    let mut resp = match enc {
        Encoding::Protobuf => (
            http,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            body.encode_to_vec(),
        )
            .into_response(),
        Encoding::Json => (
            http,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&body).unwrap_or_default(),
        )
            .into_response(),
    };
    if let Some(d) = e.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(d.as_secs().max(1)));
    }
    if http == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

// === gRPC ===

/// The OTLP `LogsService` on the gRPC port.
#[derive(Clone)]
pub struct Grpc(pub Arc<Gateway>);

impl Grpc {
    pub fn server(state: Arc<Gateway>) -> LogsServiceServer<Grpc> {
        use tonic::codec::CompressionEncoding as E;
        let max = state.config.max_body_bytes;
        LogsServiceServer::new(Grpc(state))
            .accept_compressed(E::Gzip)
            .accept_compressed(E::Zstd)
            .max_decoding_message_size(max)
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let p = crate::grpc::principal(&self.0, &req).await?;
        crate::core::access::require(&p, crate::auth::Scope::Write).map_err(crate::grpc::status)?;
        let mapped = map(
            &self.0.config.compat,
            req.into_inner(),
            4 * self.0.config.max_body_bytes,
        );
        let stored = super::store(&self.0, &p, mapped).await.map_err(|e| {
            // OTLP exporters retry RESOURCE_EXHAUSTED only with a RetryInfo detail, and
            // UNAVAILABLE always: a retryable refusal (a quota) is UNAVAILABLE here, with
            // the contract's code and `retry-after` in the metadata as everywhere.
            let retryable = e.retryable();
            let st = crate::grpc::status(e);
            if retryable && st.code() != tonic::Code::Unavailable {
                let md = st.metadata().clone();
                tonic::Status::with_metadata(tonic::Code::Unavailable, st.message(), md)
            } else {
                st
            }
        })?;
        Ok(tonic::Response::new(answer(stored)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValueList};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn map_all(cfg: &CompatConfig, req: ExportLogsServiceRequest) -> Mapped {
        map(cfg, req, 0)
    }

    fn kv(k: &str, v: Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn s(v: &str) -> Value {
        Value::StringValue(v.into())
    }

    fn request(resource: Vec<KeyValue>, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "app.logger".into(),
                        ..Default::default()
                    }),
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn record(attrs: Vec<KeyValue>, body: Value) -> LogRecord {
        LogRecord {
            attributes: attrs,
            body: Some(AnyValue { value: Some(body) }),
            ..Default::default()
        }
    }

    #[test]
    fn the_record_attribute_wins_over_the_resource_and_ci_conventions_are_the_fallback() {
        let cfg = CompatConfig::default();
        let req = request(
            vec![
                kv("logstream.deployment", s("from-resource")),
                kv("service.name", s("api")),
                kv("cicd.pipeline.task.name", s("build")),
            ],
            vec![
                record(vec![kv("logstream.deployment", s("from-record"))], s("a")),
                record(vec![], s("b")),
                record(vec![kv("http.status", Value::IntValue(500))], s("c")),
            ],
        );
        let m = map_all(&cfg, req);
        let deps: Vec<_> = m.groups.iter().map(|g| g.deployment.as_str()).collect();
        assert_eq!(deps, ["from-record", "from-resource"]);
        let b = &m.groups[1].lines[0];
        assert_eq!(b.step, "build");
        assert_eq!(b.metadata["service.name"], "api");
        assert_eq!(b.metadata["otel.scope.name"], "app.logger");
        assert!(!b.metadata.contains_key("logstream.deployment"));
        assert!(!b.metadata.contains_key("cicd.pipeline.task.name"));
        assert_eq!(m.groups[1].lines[1].metadata["http.status"], "500");

        // Only the CI/CD conventions: a numeric run id is a deployment id.
        let req = request(
            vec![kv("cicd.pipeline.run.id", Value::IntValue(8812))],
            vec![record(
                vec![kv("cicd.pipeline.task.name", s("test"))],
                s("x"),
            )],
        );
        let m = map_all(&cfg, req);
        assert_eq!(m.groups[0].deployment, "8812");
        assert_eq!(m.groups[0].lines[0].step, "test");
    }

    #[test]
    fn records_without_a_deployment_are_rejected_with_the_attribute_names() {
        let cfg = CompatConfig::default();
        let m = map_all(
            &cfg,
            request(
                vec![],
                vec![
                    record(vec![], s("lost")),
                    record(vec![kv("logstream.deployment", s(""))], s("empty")),
                ],
            ),
        );
        assert!(m.groups.is_empty());
        assert_eq!(m.rejected.items, 2);
        assert!(
            m.rejected
                .message()
                .contains("logstream.deployment, cicd.pipeline.run.id")
        );
    }

    #[test]
    fn severity_body_stream_time_and_ids_map_to_the_line() {
        let cfg = CompatConfig::default();
        let mut r = record(
            vec![
                kv("logstream.deployment", s("d")),
                kv("log.iostream", s("stderr")),
            ],
            Value::KvlistValue(KeyValueList {
                values: vec![kv("msg", s("boom")), kv("n", Value::IntValue(3))],
            }),
        );
        r.severity_number = 17;
        r.observed_time_unix_nano = 1_700_000_000_000_000_000;
        r.trace_id = vec![0xab; 16];
        r.span_id = vec![0; 8];
        let mut multi = record(vec![kv("logstream.deployment", s("d"))], s("one\ntwo\n"));
        multi.severity_text = "WARN".into();
        multi.time_unix_nano = 5;
        let m = map_all(&cfg, request(vec![], vec![r, multi]));
        let lines = &m.groups[0].lines;
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].message, r#"{"msg":"boom","n":3}"#);
        assert_eq!(lines[0].level, Some(Level::Error));
        assert_eq!(lines[0].stream, Stream::Stderr);
        assert_eq!(lines[0].ts, 1_700_000_000_000_000_000);
        assert_eq!(lines[0].metadata["trace_id"], "ab".repeat(16));
        assert!(
            !lines[0].metadata.contains_key("span_id"),
            "an all-zero id is no id"
        );
        assert_eq!(
            (lines[1].message.as_str(), lines[2].message.as_str()),
            ("one", "two")
        );
        assert_eq!(lines[2].level, Some(Level::Warn));
        assert_eq!(lines[2].ts, 5);
        assert_eq!(m.groups[0].items, 2);
    }

    #[test]
    fn configured_attribute_names_replace_the_defaults() {
        let cfg = CompatConfig {
            otlp_deployment_attributes: vec!["build.id".into()],
            otlp_step_attributes: vec!["job".into()],
            ..CompatConfig::default()
        };
        let m = map_all(
            &cfg,
            request(
                vec![kv("logstream.deployment", s("ignored"))],
                vec![record(
                    vec![kv("build.id", s("b-7")), kv("job", s("lint"))],
                    s("x"),
                )],
            ),
        );
        assert_eq!(m.groups[0].deployment, "b-7");
        assert_eq!(m.groups[0].lines[0].step, "lint");
        assert_eq!(
            m.groups[0].lines[0].metadata["logstream.deployment"],
            "ignored"
        );
    }

    #[test]
    fn severity_numbers_follow_the_opentelemetry_ranges() {
        let want = [
            (1, Some(Level::Trace)),
            (4, Some(Level::Trace)),
            (5, Some(Level::Debug)),
            (9, Some(Level::Info)),
            (13, Some(Level::Warn)),
            (16, Some(Level::Warn)),
            (17, Some(Level::Error)),
            (21, Some(Level::Fatal)),
            (24, Some(Level::Fatal)),
        ];
        for (n, l) in want {
            assert_eq!(level_of(n, ""), l, "{n}");
        }
        assert_eq!(level_of(0, "error"), Some(Level::Error));
        assert_eq!(level_of(0, ""), None);
    }
}
