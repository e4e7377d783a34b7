//! The gateway as clients see it: a real server on 127.0.0.1:0 and real clients (reqwest
//! with an SSE parser, tokio-tungstenite, the generated tonic client).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use logstream_gateway::auth::Scope;
use logstream_gateway::config::Config;
use logstream_gateway::server;
use logstream_proto::v1 as pb;
use serde_json::{Value, json};

struct Gateway {
    http: String,
    grpc: String,
    state: Arc<logstream_gateway::core::Gateway>,
    running: server::Running,
}

impl Gateway {
    async fn start(dir: &Path) -> Gateway {
        Gateway::start_with(dir, |_| {}).await
    }

    async fn start_with(dir: &Path, tweak: impl FnOnce(&mut Config)) -> Gateway {
        let mut config = Config::loopback(dir);
        tweak(&mut config);
        let running = server::Running::start(config).await.unwrap();
        Gateway {
            http: running.http.clone(),
            grpc: running.grpc.clone(),
            state: running.state.clone(),
            running,
        }
    }

    fn token(&self, tenant: &str, scopes: &[Scope]) -> String {
        self.state
            .auth
            .mint("test", tenant, scopes, Duration::from_secs(3600), None)
    }

    fn rw(&self) -> String {
        self.token("acme", &[Scope::Read, Scope::Write, Scope::Export])
    }

    async fn shutdown(self) {
        tokio::time::timeout(Duration::from_secs(10), self.running.shutdown())
            .await
            .expect("graceful shutdown in time")
            .unwrap();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().gzip(false).build().unwrap()
}

async fn push(gw: &Gateway, token: &str, id: &str, lines: &[String]) -> Value {
    let body: String = lines
        .iter()
        .map(|l| json!({"message": l, "step": "build"}).to_string() + "\n")
        .collect();
    let r = client()
        .post(format!("{}/v1/deployments/{id}/logs", gw.http))
        .bearer_auth(token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    r.json().await.unwrap()
}

async fn complete(gw: &Gateway, token: &str, id: &str, status: &str, code: i32) {
    let r = client()
        .post(format!("{}/v1/deployments/{id}/complete", gw.http))
        .bearer_auth(token)
        .json(&json!({"status": status, "exit_code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

async fn get_json(gw: &Gateway, token: &str, path: &str) -> (u16, Value) {
    let r = client()
        .get(format!("{}{path}", gw.http))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn lines(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix} {i}")).collect()
}

/// A GET asking for `id`'s live stream as Server-Sent Events.
fn sse_request(
    gw: &Gateway,
    token: impl std::fmt::Display,
    id: &str,
    query: &str,
) -> reqwest::RequestBuilder {
    client()
        .get(format!("{}/v1/deployments/{id}/stream{query}", gw.http))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
}

/// Reads SSE events until `end` (or until `stop_after` line events), returning the line
/// JSONs, the last event id, and whether `end` came.
async fn read_sse(
    gw: &Gateway,
    token: &str,
    id: &str,
    query: &str,
    last_event_id: Option<&str>,
    stop_after: Option<usize>,
) -> (Vec<Value>, Option<String>, Option<Value>) {
    let mut req = sse_request(gw, token, id, query);
    if let Some(l) = last_event_id {
        req = req.header("last-event-id", l);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let mut events = resp.bytes_stream().eventsource();
    let mut got = Vec::new();
    let mut last = last_event_id.map(str::to_owned);
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .expect("an SSE event within 20 s")
    {
        let ev = ev.unwrap();
        match ev.event.as_str() {
            "line" => {
                last = Some(ev.id.clone());
                got.push(serde_json::from_str(&ev.data).unwrap());
                if stop_after.is_some_and(|n| got.len() >= n) {
                    return (got, last, None);
                }
            }
            "end" => return (got, last, Some(serde_json::from_str(&ev.data).unwrap())),
            other => panic!("unexpected event {other}: {}", ev.data),
        }
    }
    (got, last, None)
}

/// Pushes `batches` batches of `per_batch` lines to `id` in the background, then
/// completes it with `outcome`.
fn spawn_producer(
    gw: &Arc<Gateway>,
    token: &str,
    id: &'static str,
    batches: usize,
    per_batch: usize,
    outcome: (&'static str, i32),
) -> tokio::task::JoinHandle<()> {
    let (gw, token) = (gw.clone(), token.to_owned());
    tokio::spawn(async move {
        for b in 0..batches {
            push(&gw, &token, id, &lines(&format!("batch {b}"), 0..per_batch)).await;
        }
        complete(&gw, &token, id, outcome.0, outcome.1).await;
    })
}

fn seqs(v: &[Value]) -> Vec<u64> {
    v.iter().map(|l| l["seq"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resume_by_last_event_id_after_a_drop_under_load_has_no_gap_or_dup() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Arc::new(Gateway::start(tmp.path()).await);
    let token = gw.rw();
    push(&gw, &token, "d1", &lines("warmup", 0..10)).await;
    let writer = spawn_producer(&gw, &token, "d1", 100, 20, ("succeeded", 0));
    let mut all = Vec::new();
    let mut last: Option<String> = None;
    let mut end = None;
    for round in 0.. {
        // Drop the connection after a few hundred lines, resume with Last-Event-ID.
        let (got, l, e) = read_sse(
            &gw,
            &token,
            "d1",
            "",
            last.as_deref(),
            Some(150 + round * 7),
        )
        .await;
        all.extend(got);
        last = l;
        if e.is_some() {
            end = e;
            break;
        }
        if all.len() >= 2010 {
            let (got, _, e) = read_sse(&gw, &token, "d1", "", last.as_deref(), None).await;
            all.extend(got);
            end = e;
            break;
        }
    }
    writer.await.unwrap();
    assert_eq!(seqs(&all), (1..=2010).collect::<Vec<_>>());
    assert_eq!(end.unwrap()["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_joining_during_ingest_get_every_line_exactly_once_across_the_history_live_boundary()
 {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Arc::new(Gateway::start(tmp.path()).await);
    let token = gw.rw();
    push(&gw, &token, "d", &lines("first", 0..5)).await;
    let writer = spawn_producer(&gw, &token, "d", 60, 10, ("failed", 3));
    let mut viewers = Vec::new();
    for i in 0..12 {
        let (gw, token) = (gw.clone(), token.clone());
        viewers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 15)).await;
            read_sse(&gw, &token, "d", "", None, None).await
        }));
    }
    writer.await.unwrap();
    for v in viewers {
        let (got, _, end) = v.await.unwrap();
        assert_eq!(seqs(&got), (1..=605).collect::<Vec<_>>());
        assert_eq!(end.unwrap()["exit_code"], 3);
    }
}

#[tokio::test]
async fn websocket_viewer_resumes_by_cursor_and_receives_end() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start(tmp.path()).await;
    let token = gw.rw();
    push(&gw, &token, "ws", &lines("l", 0..50)).await;
    let url = format!(
        "{}/v1/deployments/ws/stream?level=unknown",
        gw.http.replace("http", "ws")
    );
    let connect = |url: String| {
        let token = token.clone();
        async move {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut req = url.into_client_request().unwrap();
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            tokio_tungstenite::connect_async(req).await.unwrap().0
        }
    };
    let mut ws = connect(url.clone()).await;
    let mut got = Vec::new();
    while got.len() < 20 {
        let msg = ws.next().await.unwrap().unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["type"], "lines");
            got.extend(v["lines"].as_array().unwrap().iter().cloned());
        }
    }
    ws.close(None).await.unwrap();
    let cursor = got.last().unwrap()["cursor"].as_str().unwrap().to_owned();
    let resumed_from = got.last().unwrap()["seq"].as_u64().unwrap();
    push(&gw, &token, "ws", &lines("m", 0..10)).await;
    complete(&gw, &token, "ws", "succeeded", 0).await;
    let mut ws = connect(format!("{url}&cursor={cursor}")).await;
    let mut rest = Vec::new();
    let mut end = None;
    while let Some(Ok(msg)) = ws.next().await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            match v["type"].as_str().unwrap() {
                "lines" => rest.extend(v["lines"].as_array().unwrap().iter().cloned()),
                "end" => end = Some(v),
                t => panic!("{t}"),
            }
        }
    }
    assert_eq!(seqs(&rest), ((resumed_from + 1)..=60).collect::<Vec<_>>());
    assert_eq!(end.unwrap()["status"], "succeeded");
}

#[tokio::test]
async fn finished_deployments_replay_and_end_and_tail_gives_the_last_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start(tmp.path()).await;
    let token = gw.rw();
    push(&gw, &token, "done", &lines("x", 0..30)).await;
    complete(&gw, &token, "done", "cancelled", 130).await;
    let (got, _, end) = read_sse(&gw, &token, "done", "", None, None).await;
    assert_eq!(got.len(), 30);
    assert_eq!(end.unwrap()["status"], "cancelled");
    let (got, _, _) = read_sse(&gw, &token, "done", "?tail=5", None, None).await;
    assert_eq!(seqs(&got), vec![26, 27, 28, 29, 30]);
    let (got, _, _) = read_sse(&gw, &token, "done", "?q=x%202%5B0-9%5D", None, None).await;
    assert_eq!(
        got.iter()
            .map(|l| l["message"].as_str().unwrap())
            .collect::<Vec<_>>(),
        (20..30).map(|i| format!("x {i}")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn history_pages_never_skip_or_repeat_in_both_directions() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start(tmp.path()).await;
    let token = gw.rw();
    let mut body = String::new();
    for i in 0..300 {
        let level = ["info", "warn", "error"][i % 3];
        let step = ["build", "test"][i % 2];
        body += &(json!({"message": format!("m{i}"), "level": level, "step": step, "stream": if i % 5 == 0 { "stderr" } else { "stdout" }}).to_string() + "\n");
    }
    let r = client()
        .post(format!("{}/v1/deployments/h/logs", gw.http))
        .bearer_auth(&token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for (query, want) in [
        ("", (1..=300).collect::<Vec<u64>>()),
        (
            "&level=warn%2B&step=test",
            (1..=300)
                .filter(|s| (s - 1) % 3 != 0 && (s - 1) % 2 == 1)
                .collect(),
        ),
        (
            "&stream=stderr",
            (1..=300).filter(|s| (s - 1) % 5 == 0).collect(),
        ),
    ] {
        for direction in ["forward", "backward"] {
            let mut got = Vec::new();
            let mut cursor = String::new();
            loop {
                let (status, page) = get_json(&gw, &token, &format!("/v1/deployments/h/logs?limit=7&direction={direction}&cursor={cursor}{query}")).await;
                assert_eq!(status, 200, "{page}");
                got.extend(seqs(page["lines"].as_array().unwrap()));
                cursor = page["next_cursor"].as_str().unwrap().to_owned();
                if page["lines"].as_array().unwrap().is_empty() {
                    break;
                }
            }
            if direction == "backward" {
                got.reverse();
            }
            assert_eq!(got, want, "{direction} {query}");
        }
    }
}

#[tokio::test]
async fn export_formats_round_trip_and_gzip_when_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start(tmp.path()).await;
    let token = gw.rw();
    let msgs = vec![
        "plain".to_owned(),
        "with, comma".into(),
        "with \"quotes\"".into(),
        "ünïcødé ✓".into(),
    ];
    push(&gw, &token, "ex", &msgs).await;
    let get = |format: &'static str, gzip: bool| {
        let (gw_http, token) = (gw.http.clone(), token.clone());
        async move {
            let mut req = client()
                .get(format!(
                    "{gw_http}/v1/deployments/ex/export?format={format}"
                ))
                .bearer_auth(token);
            if gzip {
                req = req.header("accept-encoding", "gzip");
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert!(
                r.headers()["content-disposition"]
                    .to_str()
                    .unwrap()
                    .contains("ex.")
            );
            let enc = r
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = r.bytes().await.unwrap().to_vec();
            if gzip {
                assert_eq!(enc.as_deref(), Some("gzip"));
                let mut out = String::new();
                std::io::Read::read_to_string(
                    &mut flate2::read::GzDecoder::new(&body[..]),
                    &mut out,
                )
                .unwrap();
                out
            } else {
                String::from_utf8(body).unwrap()
            }
        }
    };
    let nd = get("ndjson", false).await;
    let (_, hist) = get_json(&gw, &token, "/v1/deployments/ex/logs").await;
    let exported: Vec<Value> = nd
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(&exported, hist["lines"].as_array().unwrap());
    assert_eq!(get("ndjson", true).await, nd);
    let csv = get("csv", false).await;
    let mut rdr = csv.split("\r\n");
    assert_eq!(rdr.next(), Some("seq,ts,step,stream,level,message"));
    assert!(csv.contains("\"with, comma\"") && csv.contains("\"with \"\"quotes\"\"\""));
    let text = get("text", true).await;
    let got: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
    assert_eq!(got, msgs);
}

#[tokio::test]
async fn every_error_path_answers_with_a_status_and_a_json_body() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(tmp.path(), |c| {
        c.max_body_bytes = 4096;
        c.max_line_bytes = 1024;
    })
    .await;
    let token = gw.rw();
    let reader = gw.token("acme", &[Scope::Read]);
    let other = gw.token("beta", &[Scope::Read, Scope::Write, Scope::Export]);
    push(&gw, &token, "known", &lines("x", 0..3)).await;
    let foreign_cursor = push(&gw, &other, "known", &lines("y", 0..3)).await["cursor"]
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
    complete(&gw, &token, "known", "succeeded", 0).await;
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
    let (_, page) = get_json(&gw, &token, "/v1/deployments/known/logs").await;
    assert_eq!(page["lines"].as_array().unwrap().len(), 3);
    // Nothing of the refused requests was stored.
    assert_eq!(get_json(&gw, &token, "/v1/deployments/d").await.0, 404);
}

#[tokio::test]
async fn tenants_see_only_their_own_deployments() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start(tmp.path()).await;
    let a = gw.rw();
    let b = gw.token("beta", &[Scope::Read, Scope::Write, Scope::Export]);
    push(&gw, &a, "shared-name", &lines("secret of acme", 0..2)).await;
    let (status, _) = get_json(&gw, &b, "/v1/deployments/shared-name").await;
    assert_eq!(status, 404, "another tenant's deployment looks missing");
    let (_, list) = get_json(&gw, &b, "/v1/deployments").await;
    assert_eq!(list["deployments"].as_array().unwrap().len(), 0);
    push(&gw, &b, "shared-name", &lines("beta's own", 0..1)).await;
    let (_, page) = get_json(&gw, &b, "/v1/deployments/shared-name/logs").await;
    assert_eq!(
        page["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["message"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["beta's own 0"]
    );
    let limited = gw.state.auth.mint(
        "t",
        "acme",
        &[Scope::Read],
        Duration::from_secs(60),
        Some(vec!["other-*".into()]),
    );
    assert_eq!(
        get_json(&gw, &limited, "/v1/deployments/shared-name/logs")
            .await
            .0,
        404,
        "outside the token's deployment globs"
    );
}

#[tokio::test]
async fn long_lines_are_split_with_markers_and_gzip_bodies_are_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(tmp.path(), |c| c.max_line_bytes = 1024).await;
    let token = gw.rw();
    let long = "y".repeat(2500);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, format!("short\n{long}\n").as_bytes()).unwrap();
    let r = client()
        .post(format!("{}/v1/deployments/g/logs?step=compile", gw.http))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .header("content-encoding", "gzip")
        .body(enc.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, page) = get_json(&gw, &token, "/v1/deployments/g/logs").await;
    let lines = page["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["step"], "compile");
    let parts: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l["metadata"]["split"].as_str().unwrap())
        .collect();
    assert_eq!(parts, vec!["1/3", "2/3", "3/3"]);
    let joined: String = lines[1..]
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(joined, long);
}

#[tokio::test]
async fn retried_http_batches_are_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start(tmp.path()).await;
    let token = gw.rw();
    let send = |batch: u64| {
        client()
            .post(format!("{}/v1/deployments/r/logs", gw.http))
            .bearer_auth(&token)
            .header("content-type", "text/plain")
            .header("logstream-source", "agent-1")
            .header("logstream-batch", batch.to_string())
            .body("a\nb\n")
            .send()
    };
    let first: Value = send(1).await.unwrap().json().await.unwrap();
    let again: Value = send(1).await.unwrap().json().await.unwrap();
    assert_eq!(
        (
            first["accepted"].as_u64(),
            again["accepted"].as_u64(),
            again["duplicate"].as_bool()
        ),
        (Some(2), Some(0), Some(true))
    );
    assert_eq!(again["last_seq"], first["last_seq"]);
    let (_, page) = get_json(&gw, &token, "/v1/deployments/r/logs").await;
    assert_eq!(page["lines"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn lines_survive_a_restart_between_ingest_and_read() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start(tmp.path()).await;
    let token = gw.rw();
    let cursor = push(&gw, &token, "rs", &lines("before", 0..100)).await["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    gw.shutdown().await;
    let gw = Gateway::start(tmp.path()).await;
    let (status, page) = get_json(&gw, &token, "/v1/deployments/rs/logs").await;
    assert_eq!(
        status, 200,
        "the token from before the restart still works (same key)"
    );
    assert_eq!(page["lines"].as_array().unwrap().len(), 100);
    push(&gw, &token, "rs", &lines("after", 0..5)).await;
    let (_, page) = get_json(
        &gw,
        &token,
        &format!("/v1/deployments/rs/logs?cursor={cursor}"),
    )
    .await;
    assert_eq!(
        seqs(page["lines"].as_array().unwrap()),
        (101..=105).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn shutdown_tells_live_viewers_to_reconnect() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start(tmp.path()).await;
    let token = gw.rw();
    push(&gw, &token, "s", &lines("x", 0..3)).await;
    let resp = sse_request(&gw, &token, "s", "").send().await.unwrap();
    let mut events = resp.bytes_stream().eventsource();
    for _ in 0..3 {
        assert_eq!(events.next().await.unwrap().unwrap().event, "line");
    }
    let stop = tokio::spawn(gw.shutdown());
    let ev = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.event, "reconnect");
    stop.await.unwrap();
}

#[tokio::test]
async fn viewer_limit_answers_429_with_retry_after() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(tmp.path(), |c| c.max_viewers_per_deployment = 2).await;
    let token = gw.rw();
    push(&gw, &token, "v", &lines("x", 0..1)).await;
    let open = || sse_request(&gw, &token, "v", "").send();
    let a = open().await.unwrap();
    let b = open().await.unwrap();
    let c = open().await.unwrap();
    assert_eq!(
        (
            a.status().as_u16(),
            b.status().as_u16(),
            c.status().as_u16()
        ),
        (200, 200, 429)
    );
    assert!(c.headers().contains_key("retry-after"));
    assert_eq!(
        c.json::<Value>().await.unwrap()["error"]["code"],
        "viewers_per_deployment"
    );
    drop(a);
    // The slot frees once the server notices the viewer left.
    let mut status = 0;
    for _ in 0..100 {
        status = open().await.unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);
}

#[tokio::test]
async fn grpc_push_acks_durably_dedups_and_tail_subscribes_from_a_cursor() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start(tmp.path()).await;
    let token = gw.rw();
    let channel = tonic::transport::Endpoint::from_shared(gw.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let auth = format!("Bearer {token}");
    let with_auth = move |mut req: tonic::Request<()>| {
        req.metadata_mut()
            .insert("authorization", auth.parse().unwrap());
        Ok(req)
    };
    let mut ingest =
        pb::ingest_client::IngestClient::with_interceptor(channel.clone(), with_auth.clone())
            .send_compressed(tonic::codec::CompressionEncoding::Zstd)
            .accept_compressed(tonic::codec::CompressionEncoding::Zstd);
    let batch = |id: u64, n: usize| pb::PushRequest {
        deployment: "g".into(),
        source: "node-1".into(),
        batch_id: id,
        lines: (0..n)
            .map(|i| pb::Line {
                message: format!("b{id} l{i}"),
                step: "s".into(),
                ..Default::default()
            })
            .collect(),
    };
    let reqs = futures::stream::iter(vec![batch(1, 10), batch(2, 5), batch(2, 5), batch(3, 1)]);
    let mut acks = ingest.push(reqs).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(a) = acks.message().await.unwrap() {
        got.push((a.batch_id, a.accepted, a.last_seq, a.duplicate));
    }
    assert_eq!(
        got,
        vec![
            (1, 10, 10, false),
            (2, 5, 15, false),
            (2, 0, 15, true),
            (3, 1, 16, false)
        ]
    );
    let (_, page) = get_json(&gw, &token, "/v1/deployments/g/logs").await;
    let cursor_after_10 = page["lines"][9]["cursor"].as_str().unwrap().to_owned();
    ingest
        .complete(pb::CompleteRequest {
            deployment: "g".into(),
            status: "succeeded".into(),
            exit_code: Some(0),
        })
        .await
        .unwrap();

    let mut tail = pb::tail_client::TailClient::with_interceptor(channel, with_auth);
    let mut sub = tail
        .subscribe(pb::SubscribeRequest {
            deployment: "g".into(),
            cursor: cursor_after_10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    let mut end = None;
    while let Some(m) = sub.message().await.unwrap() {
        match m.event.unwrap() {
            pb::subscribe_response::Event::Lines(b) => seqs.extend(b.lines.iter().map(|l| l.seq)),
            pb::subscribe_response::Event::End(e) => end = Some(e),
        }
    }
    assert_eq!(seqs, (11..=16).collect::<Vec<_>>());
    assert_eq!(end.unwrap().status, "succeeded");
    let bad = tail
        .subscribe(pb::SubscribeRequest {
            deployment: "g".into(),
            cursor: "bogus".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn grpc_without_a_valid_token_is_unauthenticated() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start(tmp.path()).await;
    let channel = tonic::transport::Endpoint::from_shared(gw.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut ingest = pb::ingest_client::IngestClient::new(channel);
    let err = ingest
        .complete(pb::CompleteRequest {
            deployment: "x".into(),
            status: "succeeded".into(),
            exit_code: Some(0),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn probes_metrics_and_openapi_documents_every_route() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start(tmp.path()).await;
    let token = gw.rw();
    push(&gw, &token, "m", &lines("x", 0..7)).await;
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
    let src = include_str!("../src/http.rs");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_viewers_each_receive_every_line_of_a_steady_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Arc::new(Gateway::start_with(tmp.path(), |c| c.max_streams_per_token = 1000).await);
    let token = gw.rw();
    push(&gw, &token, "fan", &lines("start", 0..1)).await;
    let mut viewers = Vec::new();
    for _ in 0..200 {
        let (gw, token) = (gw.clone(), token.clone());
        viewers.push(tokio::spawn(async move {
            read_sse(&gw, &token, "fan", "", None, None).await
        }));
    }
    for b in 0..100 {
        push(&gw, &token, "fan", &lines(&format!("b{b}"), 0..10)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    complete(&gw, &token, "fan", "succeeded", 0).await;
    for v in viewers {
        let (got, _, end) = v.await.unwrap();
        assert_eq!(seqs(&got), (1..=1001).collect::<Vec<_>>());
        assert!(end.is_some());
    }
}

#[tokio::test]
async fn secrets_never_reach_the_store_and_registered_values_are_masked() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start(tmp.path()).await;
    let token = gw.rw();
    let ghp = "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789";
    push(
        &gw,
        &token,
        "sec",
        &[
            format!("export GITHUB_TOKEN={ghp}"),
            "::add-mask::hunter2-value".into(),
            "echo hunter2-value".into(),
        ],
    )
    .await;
    let r = client()
        .post(format!("{}/v1/deployments/sec/secrets", gw.http))
        .bearer_auth(&token)
        .json(&json!({"values": ["registered-by-api"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    push(
        &gw,
        &token,
        "sec",
        &["token registered-by-api in use".to_owned()],
    )
    .await;
    let short = client()
        .post(format!("{}/v1/deployments/sec/secrets", gw.http))
        .bearer_auth(&token)
        .json(&json!({"values": ["ab"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(short.status(), 400);
    let (_, page) = get_json(&gw, &token, "/v1/deployments/sec/logs").await;
    let msgs: Vec<&str> = page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        msgs,
        vec![
            "export GITHUB_TOKEN=****************************************",
            "::add-mask::***",
            "echo *************",
            "token ***************** in use"
        ]
    );
    assert_eq!(page["lines"][0]["redaction"]["github_token"], 1);
    // Not in the segment files either.
    let mut stored = Vec::new();
    for e in walk(tmp.path()) {
        stored.extend(std::fs::read(e).unwrap());
    }
    for secret in [ghp.as_bytes(), b"hunter2-value", b"registered-by-api"] {
        assert!(
            !stored.windows(secret.len()).any(|w| w == secret),
            "{} found on disk",
            String::from_utf8_lossy(secret)
        );
    }
    let m = client()
        .get(format!("{}/metrics", gw.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("logstream_redactions_total{detector=\"github_token\"} 1"),
        "{m}"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn reads_streams_exports_and_rejections_land_in_the_tenants_audit_log() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start(tmp.path()).await;
    let token = gw.rw();
    push(&gw, &token, "aud", &lines("x", 0..3)).await;
    get_json(&gw, &token, "/v1/deployments/aud/logs").await;
    client()
        .get(format!("{}/v1/deployments/aud/export", gw.http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    complete(&gw, &token, "aud", "succeeded", 0).await;
    read_sse(&gw, &token, "aud", "", None, None).await;
    assert_eq!(
        get_json(&gw, "forged.token.value", "/v1/deployments")
            .await
            .0,
        401
    );
    let beta_admin = gw.token("beta", &[Scope::Admin]);
    get_json(&gw, &beta_admin, "/v1/deployments").await;
    let admin = gw.token("acme", &[Scope::Admin]);
    // `stream_close` is written when the server notices the viewer left: await it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        gw.state.audit.flush().await;
        let (_, closed) = get_json(&gw, &admin, "/v1/audit?action=stream_close").await;
        if !closed["events"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no stream_close event"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        get_json(&gw, &token, "/v1/audit").await.0,
        403,
        "logs:* scopes do not read the audit log"
    );
    let (status, page) = get_json(&gw, &admin, "/v1/audit?limit=100").await;
    assert_eq!(status, 200, "{page}");
    let actions: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for want in ["read", "export", "complete", "stream_open"] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    assert!(
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["tenant"] == "acme"),
        "only acme's events: {page}"
    );
    let (_, only) = get_json(&gw, &admin, "/v1/audit?action=export").await;
    assert_eq!(only["events"].as_array().unwrap().len(), 1);
    assert_eq!(only["events"][0]["subject"], "test");
    // The rejection has no tenant: it is in the log (verified below), not in any tenant's view.
    let store_dir = tmp.path().join("store/system/audit");
    let report = logstream_gateway::store::verify_dir(&store_dir).unwrap();
    assert!(report.is_clean() && report.lines >= 8, "{report:?}");
    let raw: Vec<u8> = walk(&store_dir)
        .into_iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(!raw.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_gets_429s_and_the_other_tenant_is_unaffected() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Arc::new(
        Gateway::start_with(tmp.path(), |c| {
            c.tenant_quotas.insert(
                "noisy".into(),
                logstream_gateway::quota::QuotaLimits {
                    ingest_lines_per_sec: 500,
                    ..Default::default()
                },
            );
        })
        .await,
    );
    let noisy = gw.token("noisy", &[Scope::Read, Scope::Write]);
    let calm = gw.token("calm", &[Scope::Read, Scope::Write]);
    let flood = {
        let (gw, noisy) = (gw.clone(), noisy.clone());
        tokio::spawn(async move {
            let (mut accepted, mut refused) = (0u64, 0u64);
            for _ in 0..60 {
                let body: String = (0..100)
                    .map(|i| json!({"message": format!("n{i}")}).to_string() + "\n")
                    .collect();
                let r = client()
                    .post(format!("{}/v1/deployments/flood/logs", gw.http))
                    .bearer_auth(&noisy)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    200 => {
                        accepted += r.json::<Value>().await.unwrap()["accepted"]
                            .as_u64()
                            .unwrap()
                    }
                    429 => {
                        assert!(r.headers().contains_key("retry-after"));
                        let e: Value = r.json().await.unwrap();
                        assert_eq!(e["error"]["code"], "quota_exceeded");
                        assert!(
                            e["error"]["message"]
                                .as_str()
                                .unwrap()
                                .contains("ingest_lines_per_sec")
                        );
                        refused += 1;
                    }
                    s => panic!("unexpected {s}"),
                }
            }
            (accepted, refused)
        })
    };
    for i in 0..20 {
        let r = push(&gw, &calm, "steady", &lines(&format!("c{i}"), 0..100)).await;
        assert_eq!(r["accepted"], 100, "the calm tenant is never refused");
    }
    let (accepted, refused) = flood.await.unwrap();
    assert!(refused > 0, "the flood was limited");
    assert!(accepted >= 500, "a full bucket's worth got through");
    let (_, d) = get_json(&gw, &noisy, "/v1/deployments/flood").await;
    assert_eq!(
        d["lines"].as_u64().unwrap(),
        accepted,
        "every accepted line is stored, nothing else"
    );
    let (_, d) = get_json(&gw, &calm, "/v1/deployments/steady").await;
    assert_eq!(d["lines"], 2000);
}

#[tokio::test]
async fn tenants_get_their_own_redaction_patterns_and_style() {
    use logstream_gateway::config::{NamedPattern, RedactionConfig};
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(tmp.path(), |c| {
        c.tenant_redaction.insert(
            "acme".into(),
            RedactionConfig {
                style: "label".into(),
                patterns: vec![NamedPattern {
                    name: "ticket".into(),
                    regex: "TICKET-[0-9]{6}".into(),
                }],
                ..RedactionConfig::default()
            },
        );
    })
    .await;
    let acme = gw.rw();
    let beta = gw.token("beta", &[Scope::Read, Scope::Write]);
    let line = "closing TICKET-123456 with AKIAIOSFODNN7EXAMPLE".to_owned();
    push(&gw, &acme, "r", std::slice::from_ref(&line)).await;
    push(&gw, &beta, "r", &[line]).await;
    let (_, a) = get_json(&gw, &acme, "/v1/deployments/r/logs").await;
    let (_, b) = get_json(&gw, &beta, "/v1/deployments/r/logs").await;
    assert_eq!(
        a["lines"][0]["message"],
        "closing [REDACTED:ticket] with AKIA[REDACTED:aws_access_key_id]"
    );
    assert_eq!(
        b["lines"][0]["message"],
        "closing TICKET-123456 with AKIA****************"
    );
}

#[test]
fn a_bad_custom_pattern_is_refused_at_start_naming_it() {
    use logstream_gateway::config::{NamedPattern, RedactionConfig};
    let mut c = Config::default();
    c.tenant_redaction.insert(
        "acme".into(),
        RedactionConfig {
            patterns: vec![NamedPattern {
                name: "broken".into(),
                regex: "(".into(),
            }],
            ..RedactionConfig::default()
        },
    );
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.contains("tenant_redaction") && err.contains("broken"),
        "{err}"
    );
}

#[tokio::test]
async fn idle_sse_streams_get_heartbeat_comments() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(tmp.path(), |c| c.heartbeat_secs = 1).await;
    let token = gw.rw();
    push(&gw, &token, "hb", &lines("x", 0..1)).await;
    let resp = sse_request(&gw, &token, "hb", "").send().await.unwrap();
    let mut body = resp.bytes_stream();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("\n: hb\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("a heartbeat within 5 s")
            .unwrap()
            .unwrap();
        seen.extend_from_slice(&chunk);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_stops_reading_is_caught_up_from_the_store_without_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(tmp.path(), |c| c.viewer_queue = 16).await;
    let token = gw.rw();
    push(&gw, &token, "lag", &lines("first", 0..1)).await;
    let resp = sse_request(&gw, &token, "lag", "").send().await.unwrap();
    // Do not read while 600 commits of 10 x 4 KiB lines (24 MiB) go by: far more than
    // the 16 frames the broadcast keeps plus what loopback socket buffers hold.
    let big = "z".repeat(4096);
    for b in 0..600 {
        push(
            &gw,
            &token,
            "lag",
            &(0..10)
                .map(|i| format!("{b}/{i} {big}"))
                .collect::<Vec<_>>(),
        )
        .await;
    }
    complete(&gw, &token, "lag", "succeeded", 0).await;
    let mut events = resp.bytes_stream().eventsource();
    let mut got = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .unwrap()
    {
        let ev = ev.unwrap();
        if ev.event == "end" {
            break;
        }
        got.push(
            serde_json::from_str::<Value>(&ev.data).unwrap()["seq"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(got, (1..=6001).collect::<Vec<_>>());
    assert!(
        gw.state.metrics.lagging_viewers.get() > 0,
        "the viewer lagged and was caught up from the store"
    );
}

#[tokio::test]
async fn one_token_may_hold_only_so_many_streams() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(tmp.path(), |c| c.max_streams_per_token = 2).await;
    let token = gw.rw();
    let other = gw.token("acme", &[Scope::Read]);
    push(&gw, &token, "t", &lines("x", 0..1)).await;
    let open = |t: String| sse_request(&gw, t, "t", "").send();
    let (a, b, c) = (
        open(token.clone()).await.unwrap(),
        open(token.clone()).await.unwrap(),
        open(token.clone()).await.unwrap(),
    );
    assert_eq!(
        (
            a.status().as_u16(),
            b.status().as_u16(),
            c.status().as_u16()
        ),
        (200, 200, 429)
    );
    assert_eq!(
        c.json::<Value>().await.unwrap()["error"]["code"],
        "streams_per_token"
    );
    assert_eq!(
        open(other).await.unwrap().status(),
        200,
        "another token is not affected"
    );
}
