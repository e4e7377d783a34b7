//! Loki push: `POST /loki/api/v1/push`, protobuf (`logproto.PushRequest`, snappy block
//! compressed, as Promtail, Alloy and Loki clients send it) or JSON (optionally gzip).
//!
//! Mapping (label names from `[compat]`): the stream label `deployment` names the
//! deployment, `step` the step; `level` (or `detected_level`, `severity`) the level,
//! else it is detected from the line; the other labels and an entry's structured
//! metadata are kept in the line's metadata (bounded, redacted). An entry of several
//! lines becomes several lines.
//!
//! Answers in Loki's form: 204 with no body when stored; an error is a plain-text
//! message with 400 (bad request; streams without a deployment label are refused after
//! the others are stored, as Loki refuses invalid streams), 401/403, 413, 415, 429 or 503
//! (with `Retry-After`: retryable, nothing stored).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use logstream_model::config::CompatConfig;
use logstream_model::{Level, Stream};
use prost::Message;
use serde::Deserialize;

use super::Mapped;
use crate::core::{Error, ErrorKind, Gateway};

// `logproto.PushRequest` (pkg/push/push.proto in Loki), the fields a push carries.

#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAdapter {
    /// Prometheus label syntax: `{job="ci", deployment="d-1"}`.
    #[prost(string, tag = "1")]
    pub labels: String,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
    #[prost(uint64, tag = "3")]
    pub hash: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
    #[prost(string, tag = "2")]
    pub line: String,
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPair>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPair {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// The JSON form: `{"streams":[{"stream":{label:value},"values":[["<unix ns>","line",
/// {structured metadata}?]]}]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonPush {
    streams: Vec<JsonStream>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonStream {
    #[serde(default)]
    stream: BTreeMap<String, String>,
    values: Vec<JsonEntry>,
}

#[derive(Deserialize)]
struct JsonEntry(
    String,
    String,
    #[serde(default)] Option<BTreeMap<String, String>>,
);

/// One entry, whatever the encoding.
struct Entry {
    ts: i64,
    line: String,
    structured: Vec<(String, String)>,
}

/// Parses Prometheus label syntax, `{a="x", b="y\"z"}` (`{}` is no labels).
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let bad = |why: &str| format!("labels {s:?}: {why}; write them as {{name=\"value\", ...}}");
    let inner = s
        .trim()
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or_else(|| bad("not in braces"))?;
    let mut out = BTreeMap::new();
    let mut rest = inner.trim_start();
    while !rest.is_empty() {
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(rest.len());
        let name = &rest[..name_end];
        if name.is_empty() {
            return Err(bad("a label name is missing"));
        }
        rest = rest[name_end..].trim_start();
        rest = rest
            .strip_prefix('=')
            .ok_or_else(|| bad("expected = after a label name"))?
            .trim_start();
        rest = rest
            .strip_prefix('"')
            .ok_or_else(|| bad("a label value must be quoted"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(bad("a quoted value does not end")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, c)) => value.push(c),
                    None => return Err(bad("a quoted value does not end")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        out.insert(name.to_owned(), value);
        rest = rest[end + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return Err(bad("expected , between labels"));
        }
    }
    Ok(out)
}

/// Maps one stream's entries into `out` (or counts them rejected).
fn map_stream(
    cfg: &CompatConfig,
    out: &mut Mapped,
    labels: &BTreeMap<String, String>,
    entries: Vec<Entry>,
) {
    let Some(deployment) = labels
        .get(&cfg.loki_deployment_label)
        .filter(|d| !d.is_empty())
    else {
        out.rejected.add(
            entries.len() as u64,
            format!(
                "a stream has no {:?} label; label each stream with the deployment its lines belong to",
                cfg.loki_deployment_label
            ),
        );
        return;
    };
    let step = labels.get(&cfg.loki_step_label).map_or("", String::as_str);
    let level = ["level", "detected_level", "severity"]
        .iter()
        .find_map(|k| labels.get(*k))
        .and_then(|l| Level::parse(l));
    let stream = match labels.get("stream").map(String::as_str) {
        Some("stderr") => Stream::Stderr,
        _ => Stream::Stdout,
    };
    // Bounded once per stream: never copied whole into every entry.
    let kept = super::bounded(
        labels
            .iter()
            .filter(|(k, _)| **k != cfg.loki_deployment_label && **k != cfg.loki_step_label)
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    for e in entries {
        let metadata = super::bounded(
            e.structured
                .into_iter()
                .chain(kept.iter().map(|(k, v)| (k.clone(), v.clone()))),
        );
        out.push(
            deployment,
            super::lines_of(&e.line, e.ts, step, stream, level, &metadata),
        );
    }
}

/// Maps a protobuf push.
pub fn map_proto(cfg: &CompatConfig, req: PushRequest, limit: usize) -> Result<Mapped, Error> {
    let mut out = Mapped::with_limit(limit);
    for s in req.streams {
        let labels = parse_labels(&s.labels).map_err(|e| Error::invalid("invalid_labels", e))?;
        let entries = s
            .entries
            .into_iter()
            .map(|e| Entry {
                ts: e.timestamp.map_or(0, |t| {
                    t.seconds
                        .checked_mul(1_000_000_000)
                        .and_then(|s| s.checked_add(i64::from(t.nanos)))
                        .unwrap_or(0)
                }),
                line: e.line,
                structured: e
                    .structured_metadata
                    .into_iter()
                    .map(|p| (p.name, p.value))
                    .collect(),
            })
            .collect();
        map_stream(cfg, &mut out, &labels, entries);
    }
    Ok(out)
}

fn map_json(cfg: &CompatConfig, req: JsonPush, limit: usize) -> Result<Mapped, Error> {
    let mut out = Mapped::with_limit(limit);
    for s in req.streams {
        let mut entries = Vec::with_capacity(s.values.len());
        for JsonEntry(ts, line, structured) in s.values {
            let ts = ts.parse::<i64>().map_err(|_| {
                Error::invalid(
                    "invalid_loki_push",
                    format!("timestamp {ts:?} is not Unix nanoseconds as a string, e.g. \"1700000000000000000\""),
                )
            })?;
            entries.push(Entry {
                ts,
                line,
                structured: structured.unwrap_or_default().into_iter().collect(),
            });
        }
        map_stream(cfg, &mut out, &s.stream, entries);
    }
    Ok(out)
}

/// `POST /loki/api/v1/push`.
#[utoipa::path(post, path = "/loki/api/v1/push", tag = "compat", summary = "Loki push: lines stored per deployment label", request_body(content((String = "application/x-protobuf"), (serde_json::Value = "application/json")), description = "A snappy-compressed logproto.PushRequest, or Loki's JSON push (gzip with Content-Encoding)"), responses((status = 204, description = "Stored"), (status = "default", description = "A plain-text `code: message`; 429/503 with Retry-After may be retried", content_type = "text/plain", body = String)))]
pub async fn push(State(s): State<Arc<Gateway>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    match push_inner(&s, &parts, body).await {
        Ok(r) => r,
        Err(e) => error(e),
    }
}

async fn push_inner(s: &Arc<Gateway>, parts: &Parts, body: Body) -> Result<Response, Error> {
    let p = crate::http::principal(s, parts).await?;
    crate::core::access::require(&p, crate::auth::Scope::Write)?;
    let ctype = crate::http::media_type(&parts.headers);
    let raw = crate::http::read_body(s, &parts.headers, body).await?;
    let mapped = match ctype.as_str() {
        "application/x-protobuf" | "application/protobuf" | "" => {
            let max = s.config.max_body_bytes;
            let bad = |e: String| {
                Error::invalid(
                    "invalid_loki_push",
                    format!("the body is not a snappy-compressed logproto.PushRequest: {e}"),
                )
            };
            let len = snap::raw::decompress_len(&raw).map_err(|e| bad(e.to_string()))?;
            if len > max {
                return Err(Error::new(
                    ErrorKind::TooLarge,
                    "body_too_large",
                    format!(
                        "the push decompresses to {len} bytes, over {max} (max_body_bytes); send smaller batches"
                    ),
                ));
            }
            let plain = snap::raw::Decoder::new()
                .decompress_vec(&raw)
                .map_err(|e| bad(e.to_string()))?;
            map_proto(
                &s.config.compat,
                PushRequest::decode(&plain[..]).map_err(|e| bad(e.to_string()))?,
                4 * max,
            )?
        }
        "application/json" => {
            let req: JsonPush = serde_json::from_slice(&raw).map_err(|e| {
                Error::invalid(
                    "invalid_loki_push",
                    format!("the body is not a Loki JSON push ({{\"streams\":[{{\"stream\":{{...}},\"values\":[[\"<unix ns>\",\"line\"]]}}]}}): {e}"),
                )
            })?;
            map_json(&s.config.compat, req, 4 * s.config.max_body_bytes)?
        }
        other => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "unsupported_media_type",
                format!(
                    "Content-Type {other:?} is not a Loki push; send application/x-protobuf (snappy) or application/json"
                ),
            ));
        }
    };
    let stored = super::store(s, &p, mapped).await?;
    if stored.rejected.items > 0 {
        return Err(Error::invalid(
            "entries_rejected",
            format!(
                "{} entries were not stored ({}); the others were",
                stored.rejected.items,
                stored.rejected.message()
            ),
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A Loki error: the status, a plain-text `code: message` body, `Retry-After` when
/// retryable.
fn error(e: Error) -> Response {
    let status = crate::http::status_of(e.kind);
    let mut resp = (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}: {}\n", e.code, e.message),
    )
        .into_response();
    if let Some(d) = e.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(d.as_secs().max(1)));
    }
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_with_escapes_and_refuse_bad_syntax() {
        let l = parse_labels(r#"{job="ci", deployment="d-1",msg="a \"q\" \\ b\n"}"#).unwrap();
        assert_eq!(l["job"], "ci");
        assert_eq!(l["deployment"], "d-1");
        assert_eq!(l["msg"], "a \"q\" \\ b\n");
        assert!(parse_labels("{}").unwrap().is_empty());
        for bad in [
            "job=\"x\"",
            "{job=x}",
            "{job=\"x}",
            "{=\"x\"}",
            "{a=\"1\" b=\"2\"}",
        ] {
            assert!(parse_labels(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn streams_map_to_deployment_step_level_and_metadata() {
        let cfg = CompatConfig::default();
        let req = PushRequest {
            streams: vec![
                StreamAdapter {
                    labels: r#"{deployment="d1", step="build", level="warn", job="ci"}"#.into(),
                    entries: vec![EntryAdapter {
                        timestamp: Some(Timestamp {
                            seconds: 1_700_000_000,
                            nanos: 5,
                        }),
                        line: "first\nsecond".into(),
                        structured_metadata: vec![LabelPair {
                            name: "trace_id".into(),
                            value: "abc".into(),
                        }],
                    }],
                    hash: 0,
                },
                StreamAdapter {
                    labels: r#"{job="orphan"}"#.into(),
                    entries: vec![EntryAdapter::default(), EntryAdapter::default()],
                    hash: 0,
                },
            ],
        };
        let m = map_proto(&cfg, req, 0).unwrap();
        assert_eq!(m.groups.len(), 1);
        let g = &m.groups[0];
        assert_eq!(g.deployment, "d1");
        assert_eq!(g.lines.len(), 2);
        let l = &g.lines[1];
        assert_eq!(l.message, "second");
        assert_eq!(l.step, "build");
        assert_eq!(l.level, Some(Level::Warn));
        assert_eq!(l.ts, 1_700_000_000_000_000_005);
        assert_eq!(l.metadata["job"], "ci");
        assert_eq!(l.metadata["trace_id"], "abc");
        assert!(!l.metadata.contains_key("deployment") && !l.metadata.contains_key("step"));
        assert_eq!(m.rejected.items, 2);
        assert!(m.rejected.message().contains("\"deployment\" label"));
    }

    #[test]
    fn json_pushes_take_string_nanoseconds_and_structured_metadata() {
        let cfg = CompatConfig {
            loki_deployment_label: "run".into(),
            ..CompatConfig::default()
        };
        let req: JsonPush = serde_json::from_str(
            r#"{"streams":[{"stream":{"run":"r-9"},"values":[["1700000000000000001","hello",{"pod":"p"}],["2","bye"]]}]}"#,
        )
        .unwrap();
        let m = map_json(&cfg, req, 0).unwrap();
        let lines = &m.groups[0].lines;
        assert_eq!(m.groups[0].deployment, "r-9");
        assert_eq!(
            (lines[0].ts, lines[0].metadata["pod"].as_str()),
            (1_700_000_000_000_000_001, "p")
        );
        assert_eq!(lines[1].message, "bye");
        let bad: JsonPush =
            serde_json::from_str(r#"{"streams":[{"stream":{"run":"r"},"values":[["soon","x"]]}]}"#)
                .unwrap();
        let e = map_json(&cfg, bad, 0).err().unwrap();
        assert_eq!(e.code, "invalid_loki_push");
    }
}
