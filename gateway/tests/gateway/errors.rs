//! Every error path answers with a status and a JSON error body; probes, metrics, and an
//! OpenAPI document that lists every route.

use std::collections::HashMap;

use logstream_gateway::auth::Scope;
use logstream_gateway::testkit::{TestGateway, client, lines};
use serde_json::Value;

#[tokio::test]
async fn every_error_path_answers_with_a_status_and_a_json_body() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(tmp.path(), |c| {
        c.max_body_bytes = 4096;
        c.max_line_bytes = 1024;
    })
    .await;
    let token = gw.rw();
    let reader = gw.token("acme", &[Scope::Read]);
    let other = gw.token("beta", &[Scope::Read, Scope::Write, Scope::Export]);
    gw.push(&token, "known", &lines("x", 0..3)).await;
    let foreign_cursor = gw.push(&other, "known", &lines("y", 0..3)).await["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = client();
    let post = |path: &str, token: &str, ctype: &str, body: Vec<u8>| {
        c.post(format!("{}{path}", gw.http))
            .bearer_auth(token)
            .header("content-type", ctype)
            .body(body)
    };
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            post(
                "/v1/deployments/..%2Fx/logs",
                &token,
                "text/plain",
                b"a".to_vec(),
            ),
            400,
            "invalid_deployment_id",
        ),
        (
            post(
                "/v1/deployments/-bad/logs",
                &token,
                "text/plain",
                b"a".to_vec(),
            ),
            400,
            "invalid_deployment_id",
        ),
        (
            post(
                &format!("/v1/deployments/{}/logs", "x".repeat(200)),
                &token,
                "text/plain",
                b"a".to_vec(),
            ),
            400,
            "invalid_deployment_id",
        ),
        (
            post(
                "/v1/deployments/d/logs",
                &token,
                "application/x-ndjson",
                b"{\"message\":\"ok\"}\n{not json}\n".to_vec(),
            ),
            400,
            "invalid_json",
        ),
        (
            post(
                "/v1/deployments/d/logs",
                &token,
                "application/x-ndjson",
                b"{\"msg\":\"no message\"}\n".to_vec(),
            ),
            400,
            "invalid_line",
        ),
        (
            post(
                "/v1/deployments/d/logs",
                &token,
                "application/x-ndjson",
                b"{\"message\":\"x\",\"stream\":\"stdin\"}\n".to_vec(),
            ),
            400,
            "invalid_line",
        ),
        (
            post(
                "/v1/deployments/d/logs",
                &token,
                "text/plain",
                vec![b'a'; 5000],
            ),
            413,
            "body_too_large",
        ),
        (
            post("/v1/deployments/d/logs", &token, "image/png", b"a".to_vec()),
            415,
            "unsupported_media_type",
        ),
        (
            post(
                "/v1/deployments/d/logs",
                &token,
                "text/plain",
                b"a".to_vec(),
            )
            .header("content-encoding", "gzip"),
            400,
            "bad_gzip",
        ),
        (
            post(
                "/v1/deployments/d/logs",
                &reader,
                "text/plain",
                b"a".to_vec(),
            ),
            403,
            "missing_scope",
        ),
        (
            post(
                "/v1/deployments/d/logs",
                "garbage",
                "text/plain",
                b"a".to_vec(),
            ),
            401,
            "unauthorized",
        ),
        (
            c.post(format!("{}/v1/deployments/d/logs", gw.http))
                .body("a"),
            401,
            "unauthorized",
        ),
        (
            post(
                "/v1/deployments/d/complete",
                &token,
                "application/json",
                b"{\"status\":\"maybe\"}".to_vec(),
            ),
            400,
            "invalid_status",
        ),
        (
            c.get(format!("{}/v1/deployments/missing", gw.http))
                .bearer_auth(&token),
            404,
            "deployment_not_found",
        ),
        (
            c.get(format!("{}/v1/deployments/known/logs?cursor=abc", gw.http))
                .bearer_auth(&token),
            400,
            "invalid_cursor",
        ),
        (
            c.get(format!(
                "{}/v1/deployments/known/logs?cursor={foreign_cursor}",
                gw.http
            ))
            .bearer_auth(&token),
            400,
            "invalid_cursor",
        ),
        (
            c.get(format!("{}/v1/deployments/known/logs?limit=0", gw.http))
                .bearer_auth(&token),
            400,
            "invalid_limit",
        ),
        (
            c.get(format!("{}/v1/deployments/known/logs?levle=warn", gw.http))
                .bearer_auth(&token),
            400,
            "unknown_parameter",
        ),
        (
            c.get(format!("{}/v1/deployments/known/logs?level=loud", gw.http))
                .bearer_auth(&token),
            400,
            "invalid_filter",
        ),
        (
            c.get(format!("{}/v1/deployments/known/logs?q=(", gw.http))
                .bearer_auth(&token),
            400,
            "invalid_filter",
        ),
        (
            c.get(format!(
                "{}/v1/deployments/known/logs?access_token={token}",
                gw.http
            )),
            400,
            "access_token_not_allowed",
        ),
        (
            c.get(format!("{}/v1/deployments/known/stream", gw.http))
                .bearer_auth(&token),
            406,
            "not_acceptable",
        ),
        (
            c.get(format!("{}/v1/deployments/known/stream", gw.http))
                .bearer_auth(&token)
                .header("accept", "text/event-stream")
                .header("last-event-id", "zzz"),
            400,
            "invalid_cursor",
        ),
        (
            c.get(format!(
                "{}/v1/deployments/known/export?format=pdf",
                gw.http
            ))
            .bearer_auth(&token),
            400,
            "invalid_format",
        ),
        (
            c.get(format!("{}/v1/deployments/known/export", gw.http))
                .bearer_auth(&reader),
            403,
            "missing_scope",
        ),
        (
            c.get(format!("{}/v2/nothing", gw.http)),
            404,
            "no_such_route",
        ),
    ];
    for (i, (req, status, code)) in cases.into_iter().enumerate() {
        let r = req.send().await.unwrap();
        let got = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (got, body["error"]["code"].as_str().unwrap_or("<none>")),
            (status, code),
            "case {i}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.len() > 10),
            "case {i}: message explains: {body}"
        );
    }
    // The malformed line is named by number.
    let r = post(
        "/v1/deployments/d/logs",
        &token,
        "application/x-ndjson",
        b"{\"message\":\"ok\"}\n{not json}\n".to_vec(),
    )
    .send()
    .await
    .unwrap();
    assert!(r.text().await.unwrap().contains("line 2"));
    // A completed deployment refuses more lines with 409, and nothing stored changed.
    gw.complete(&token, "known", "succeeded", 0).await;
    let r = post(
        "/v1/deployments/known/logs",
        &token,
        "text/plain",
        b"late".to_vec(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 409);
    let (_, page) = gw.get_json(&token, "/v1/deployments/known/logs").await;
    assert_eq!(page["lines"].as_array().unwrap().len(), 3);
    // Nothing of the refused requests was stored.
    assert_eq!(gw.get_json(&token, "/v1/deployments/d").await.0, 404);
}

#[tokio::test]
async fn probes_metrics_and_openapi_documents_every_route() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    gw.push(&token, "m", &lines("x", 0..7)).await;
    let c = client();
    assert_eq!(
        c.get(format!("{}/healthz", gw.http))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{}/readyz", gw.http))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let m = c
        .get(format!("{}/metrics", gw.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "logstream_ingest_lines_total 7",
        "logstream_ack_latency_seconds_bucket",
        "logstream_live_viewers",
        "logstream_lagging_viewers_total",
        "logstream_store_bytes",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
    let doc: Value = c
        .get(format!("{}/openapi.json", gw.http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let src = include_str!("../../src/http/mod.rs");
    let mut routes = HashMap::new();
    for line in src
        .lines()
        .filter(|l| l.trim_start().starts_with(".route(\""))
    {
        let path = line.split('"').nth(1).unwrap();
        routes.insert(path.to_owned(), ());
    }
    assert!(routes.len() >= 10);
    for path in routes.keys() {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} is not in /openapi.json"
        );
    }
}
