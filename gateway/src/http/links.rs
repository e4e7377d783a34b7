//! Export links over HTTP (issue 24): creating one (`POST .../export-links`), and
//! downloading through one (`GET /v1/shared/{tenant}/{deployment}/export`, no token):
//! for a sealed deployment with a strong ETag, `Cache-Control: public, immutable` until
//! the expiry, `Range` (206/416) and `If-None-Match` (304). See `core::links`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use logstream_model::wire::{self, ErrorBody};

use super::{Auth, Format, render_export, stream_export};
use crate::audit::Need;
use crate::auth::Scope;
use crate::core::{Error, Gateway, Result, access, links, read};
use crate::store::DeploymentId;

fn now_secs() -> u64 {
    (read::now_ns() / 1_000_000_000).max(0) as u64
}

#[utoipa::path(post, path = "/v1/deployments/{id}/export-links", summary = "A signed link to download the export without a token, until it expires", params(("id" = String, Path)), request_body(content = wire::ExportLinkRequest, description = "Format, filters and lifetime (all optional; an empty body is the whole log as text for 24h)"), responses((status = 201, description = "The link", body = wire::ExportLink), (status = "default", description = "An error: its code says what was wrong and how to fix it", body = ErrorBody)))]
pub(super) async fn create(
    State(s): State<Arc<Gateway>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let lid = access::deployment(&p, &id, Scope::Export)?;
    let raw = super::read_body(&s, &headers, body).await?;
    let req: wire::ExportLinkRequest = if raw.iter().all(u8::is_ascii_whitespace) {
        wire::ExportLinkRequest::default()
    } else {
        json_body_from(&raw)?
    };
    let ttl = match &req.expires_in {
        None => links::DEFAULT_TTL,
        Some(d) => logstream_model::time::parse_duration(d)
            .filter(|n| *n > 0)
            .map(|n| Duration::from_nanos(n as u64))
            .filter(|d| (links::MIN_TTL..=links::MAX_TTL).contains(d))
            .ok_or_else(|| {
                Error::invalid(
                    "invalid_expires_in",
                    format!(
                        "expires_in {d:?} must be a duration from 1m to 168h (7 days), e.g. \"24h\""
                    ),
                )
            })?,
    };
    let mut params: Vec<(String, String)> = Vec::new();
    let format = req.format.clone().unwrap_or_else(|| "text".into());
    params.push(("format".into(), format.clone()));
    for (k, v) in [
        ("level", &req.level),
        ("step", &req.step),
        ("stream", &req.stream),
        ("since", &req.since),
        ("until", &req.until),
        ("q", &req.q),
    ] {
        if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
            // A relative time (`1h`) is fixed now: the link names the same lines at every
            // download (and its cached rendering stays right).
            let v = match k {
                "since" | "until" => logstream_model::time::parse_time(v, read::now_ns())
                    .map_or_else(|| v.clone(), logstream_model::time::format_rfc3339),
                _ => v.clone(),
            };
            params.push((k.into(), v));
        }
    }
    // The same checks a download makes, now, so a bad filter is a 400 here.
    let q: HashMap<String, String> = params.iter().cloned().collect();
    Format::from_query(&q)?;
    let mut allowed = read::FILTERS.to_vec();
    allowed.push("format");
    read::read_params(&q, &lid, &allowed)?;
    drop(s.existing_log(&lid).await?);
    let exp = now_secs() + ttl.as_secs();
    params.push(("exp".into(), exp.to_string()));
    params.push(("sub".into(), p.subject.clone()));
    let path = links::path(&lid);
    let query = links::sign(&s, &path, params);
    let expires_at = logstream_model::time::format_rfc3339(exp as i64 * 1_000_000_000);
    s.audit(
        Need::Durable,
        "export_link",
        &p.subject,
        &lid.tenant,
        &lid.deployment,
        &format!("created: format {format}, expires {expires_at}"),
        None,
    )
    .await?;
    let path = format!("{path}?{query}");
    let link = wire::ExportLink {
        url: format!("{}{path}", base_url(&s, &headers)),
        path,
        expires_at,
        format,
    };
    Ok((StatusCode::CREATED, axum::Json(link)).into_response())
}

fn json_body_from<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T> {
    serde_json::from_slice(raw).map_err(|e| {
        Error::invalid(
            "invalid_json",
            format!("expected {{\"format\",\"expires_in\",\"level\",\"step\",\"stream\",\"since\",\"until\",\"q\"}} (all optional): {e}"),
        )
    })
}

/// Where links point: `alerting.external_url` when set, else the host the client asked
/// for (`X-Forwarded-Host` from an edge or an ingress, else `Host`) and
/// `X-Forwarded-Proto`.
fn base_url(s: &Gateway, headers: &HeaderMap) -> String {
    if let Some(u) = &s.config.alerting.external_url {
        return u.trim_end_matches('/').to_owned();
    }
    let host = ["x-forwarded-host", "host"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .map(|h| h.split(',').next().unwrap_or(h).trim())
        .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '@']))
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|p| *p == "https")
        .unwrap_or("http");
    format!("{scheme}://{host}")
}

#[utoipa::path(get, path = "/v1/shared/{tenant}/{deployment}/export", summary = "Download an export through a signed link (no token)", security(()), params(("tenant" = String, Path), ("deployment" = String, Path), ("format" = String, Query), ("exp" = u64, Query, description = "Expiry, Unix seconds (signed)"), ("sub" = String, Query, description = "The link's creator (signed)"), ("sig" = String, Query, description = "The signature"), ("Range" = Option<String>, Header, description = "bytes=A-B (sealed deployments)"), ("If-None-Match" = Option<String>, Header)), responses((status = 200, description = "The export", content((String = "text/plain"), (String = "application/x-ndjson"), (String = "text/csv"))), (status = 206, description = "The range asked for"), (status = 304, description = "Not modified"), (status = 416, description = "Range not satisfiable"), (status = "default", description = "An error (403 invalid_signature, link_expired)", body = ErrorBody)))]
pub(super) async fn download(
    State(s): State<Arc<Gateway>>,
    Path((tenant, deployment)): Path<(String, String)>,
    req: Request,
) -> Result<Response> {
    let params = links::verify(
        &s,
        req.uri().path(),
        req.uri().query().unwrap_or(""),
        now_secs(),
    )?;
    logstream_model::validate_deployment_id(&deployment)
        .map_err(|e| Error::invalid("invalid_deployment_id", e.to_string()))?;
    logstream_model::validate_tenant(&tenant)
        .map_err(|e| Error::invalid("invalid_tenant", e.to_string()))?;
    let lid = DeploymentId::new(tenant, deployment);
    let q: HashMap<String, String> = params.iter().cloned().collect();
    let mut allowed = read::FILTERS.to_vec();
    allowed.extend(["format", "exp", "sub"]);
    let rp = read::read_params(&q, &lid, &allowed)?;
    let format = Format::from_query(&q)?;
    let exp: u64 = q["exp"].parse().unwrap_or(0);
    let subject = format!("link:{}", q.get("sub").map_or("", String::as_str));
    let log = match s.existing_log(&lid).await {
        Ok(l) => l,
        Err(e) => {
            links::invalidate(&s, &lid);
            return Err(e);
        }
    };
    let headers = req.headers().clone();
    if log.completion().is_none() {
        // Still running: the export as it is now, not cacheable.
        s.audit(
            Need::Durable,
            "export",
            &subject,
            &lid.tenant,
            &lid.deployment,
            "ok: via link",
            None,
        )
        .await?;
        let mut resp = stream_export(log, lid, rp.filter, format, None, &headers);
        resp.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        );
        return Ok(resp);
    }
    // Sealed: one immutable rendering per format and filter.
    let mut key: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "exp" | "sub"))
        .cloned()
        .collect();
    key.sort();
    // The log's creation time too: a deployment id used again after a deletion or
    // retention is another log.
    key.push(("created".into(), log.stats().created_at.to_string()));
    let key = serde_urlencoded::to_string(key).unwrap_or_default();
    let (st, l2, filter) = (s.clone(), lid.clone(), rp.filter.clone());
    let cached = tokio::task::spawn_blocking(move || {
        links::cached(&st, &l2, &key, |w| {
            let mut failed = None;
            render_export(&log, &l2, &filter, format, None, |chunk, _| {
                match w.write_all(&chunk) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            })
            .map_err(std::io::Error::other)?;
            failed.map_or(Ok(()), Err)
        })
    })
    .await
    .map_err(Error::internal)?
    .map_err(Error::internal)?;

    let max_age = exp.saturating_sub(now_secs());
    let (ext, ctype) = format.file();
    let mut base = Response::builder()
        .header(header::ETAG, &cached.etag)
        .header(
            header::CACHE_CONTROL,
            format!("public, max-age={max_age}, immutable"),
        )
        .header(header::ACCEPT_RANGES, "bytes");
    if not_modified(&headers, &cached.etag) {
        s.audit(
            Need::Durable,
            "export",
            &subject,
            &lid.tenant,
            &lid.deployment,
            "not_modified: via link",
            None,
        )
        .await?;
        return Ok(base
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .expect("valid response"));
    }
    base = base.header(header::CONTENT_TYPE, ctype).header(
        header::CONTENT_DISPOSITION,
        format!("attachment; filename=\"{}.{ext}\"", lid.deployment),
    );
    let range = match range_of(&headers, &cached.etag, cached.len) {
        Ok(r) => r,
        Err(()) => {
            return Ok(base
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{}", cached.len))
                .body(Body::empty())
                .expect("valid response"));
        }
    };
    let (start, end) = range.unwrap_or((0, cached.len));
    s.audit(
        Need::Durable,
        "export",
        &subject,
        &lid.tenant,
        &lid.deployment,
        &if range.is_some() {
            format!("ok: via link, bytes {start}-{}", end.saturating_sub(1))
        } else {
            "ok: via link".to_owned()
        },
        None,
    )
    .await?;
    let mut f = tokio::fs::File::open(&cached.file)
        .await
        .map_err(Error::internal)?;
    if cached.temporary {
        // A rendering a redaction overtook: served to this request, kept for nobody.
        let _ = tokio::fs::remove_file(&cached.file).await;
    }
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    f.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(Error::internal)?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(f.take(end - start)));
    let resp = if range.is_some() {
        base.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{}", end - 1, cached.len),
        )
    } else {
        base.status(StatusCode::OK)
    };
    Ok(resp
        .header(header::CONTENT_LENGTH, end - start)
        .body(body)
        .expect("valid response"))
}

/// `If-None-Match` names this ETag (weak comparison, as RFC 9110 says for it) or `*`.
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.trim_start_matches("W/") == etag)
}

/// The one byte range asked for, `[start, end)`: `Ok(None)` for the whole file (no
/// `Range`, a stale `If-Range`, several ranges or one that is not understood: RFC 9110
/// lets a server ignore them), `Err` when it is unsatisfiable (416).
fn range_of(
    headers: &HeaderMap,
    etag: &str,
    len: u64,
) -> std::result::Result<Option<(u64, u64)>, ()> {
    let Some(r) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if let Some(ir) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok())
        && ir.trim() != etag
    {
        return Ok(None);
    }
    let Some(spec) = r.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match b.parse::<u64>() {
            Ok(0) => return Err(()),
            Ok(n) => (len.saturating_sub(n), len),
            Err(_) => return Ok(None),
        },
        (false, _) => {
            let Ok(start) = a.parse::<u64>() else {
                return Ok(None);
            };
            let end = if b.is_empty() {
                len
            } else {
                match b.parse::<u64>() {
                    Ok(e) if e >= start => e.saturating_add(1).min(len),
                    _ => return Ok(None),
                }
            };
            (start, end)
        }
        (true, true) => return Ok(None),
    };
    if parsed.0 >= len {
        return Err(());
    }
    Ok(Some(parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        let e = "\"t\"";
        assert_eq!(range_of(&h(&[]), e, 100), Ok(None));
        assert_eq!(
            range_of(&h(&[("range", "bytes=0-9")]), e, 100),
            Ok(Some((0, 10)))
        );
        assert_eq!(
            range_of(&h(&[("range", "bytes=90-")]), e, 100),
            Ok(Some((90, 100)))
        );
        assert_eq!(
            range_of(&h(&[("range", "bytes=-10")]), e, 100),
            Ok(Some((90, 100)))
        );
        assert_eq!(
            range_of(&h(&[("range", "bytes=-500")]), e, 100),
            Ok(Some((0, 100)))
        );
        assert_eq!(
            range_of(&h(&[("range", "bytes=50-5000")]), e, 100),
            Ok(Some((50, 100)))
        );
        assert_eq!(range_of(&h(&[("range", "bytes=100-")]), e, 100), Err(()));
        let huge = h(&[("range", "bytes=1-18446744073709551615")]);
        assert_eq!(range_of(&huge, e, 100), Ok(Some((1, 100))));
        assert_eq!(range_of(&h(&[("range", "bytes=-0")]), e, 100), Err(()));
        for ignored in ["bytes=0-1,5-6", "items=0-1", "bytes=9-2", "bytes=x-"] {
            assert_eq!(
                range_of(&h(&[("range", ignored)]), e, 100),
                Ok(None),
                "{ignored}"
            );
        }
        let stale = h(&[("range", "bytes=0-9"), ("if-range", "\"old\"")]);
        assert_eq!(range_of(&stale, e, 100), Ok(None));
        let fresh = h(&[("range", "bytes=0-9"), ("if-range", e)]);
        assert_eq!(range_of(&fresh, e, 100), Ok(Some((0, 10))));
    }

    #[test]
    fn if_none_match_takes_lists_weak_tags_and_star() {
        let e = "\"abc\"";
        assert!(not_modified(&h(&[("if-none-match", "\"x\", \"abc\"")]), e));
        assert!(not_modified(&h(&[("if-none-match", "W/\"abc\"")]), e));
        assert!(not_modified(&h(&[("if-none-match", "*")]), e));
        assert!(!not_modified(&h(&[("if-none-match", "\"abd\"")]), e));
        assert!(!not_modified(&h(&[]), e));
    }
}
