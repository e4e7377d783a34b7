//! Live viewers over SSE and WebSocket: resume by Last-Event-ID or cursor, joining
//! mid-ingest across the history/live boundary, replay of finished deployments,
//! heartbeats, slow viewers caught up from the store, reconnect on shutdown, and the
//! per-deployment and per-token viewer limits.

use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use logstream_gateway::auth::Scope;
use logstream_gateway::testkit::{TestGateway, lines, seqs};
use serde_json::Value;

use crate::{read_sse, sse_request};

/// Pushes `batches` batches of `per_batch` lines to `id` in the background, then
/// completes it with `outcome`.
fn spawn_producer(
    gw: &Arc<TestGateway>,
    token: &str,
    id: &'static str,
    batches: usize,
    per_batch: usize,
    outcome: (&'static str, i32),
) -> tokio::task::JoinHandle<()> {
    let (gw, token) = (gw.clone(), token.to_owned());
    tokio::spawn(async move {
        for b in 0..batches {
            gw.push(&token, id, &lines(&format!("batch {b}"), 0..per_batch))
                .await;
        }
        gw.complete(&token, id, outcome.0, outcome.1).await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resume_by_last_event_id_after_a_drop_under_load_has_no_gap_or_dup() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Arc::new(TestGateway::start(tmp.path()).await);
    let token = gw.rw();
    gw.push(&token, "d1", &lines("warmup", 0..10)).await;
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
    let gw = Arc::new(TestGateway::start(tmp.path()).await);
    let token = gw.rw();
    gw.push(&token, "d", &lines("first", 0..5)).await;
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
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    gw.push(&token, "ws", &lines("l", 0..50)).await;
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
    gw.push(&token, "ws", &lines("m", 0..10)).await;
    gw.complete(&token, "ws", "succeeded", 0).await;
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
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    gw.push(&token, "done", &lines("x", 0..30)).await;
    gw.complete(&token, "done", "cancelled", 130).await;
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
async fn shutdown_tells_live_viewers_to_reconnect() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    gw.push(&token, "s", &lines("x", 0..3)).await;
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
    let gw = TestGateway::start_with(tmp.path(), |c| c.max_viewers_per_deployment = 2).await;
    let token = gw.rw();
    gw.push(&token, "v", &lines("x", 0..1)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_viewers_each_receive_every_line_of_a_steady_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let gw =
        Arc::new(TestGateway::start_with(tmp.path(), |c| c.max_streams_per_token = 1000).await);
    let token = gw.rw();
    gw.push(&token, "fan", &lines("start", 0..1)).await;
    let mut viewers = Vec::new();
    for _ in 0..200 {
        let (gw, token) = (gw.clone(), token.clone());
        viewers.push(tokio::spawn(async move {
            read_sse(&gw, &token, "fan", "", None, None).await
        }));
    }
    for b in 0..100 {
        gw.push(&token, "fan", &lines(&format!("b{b}"), 0..10))
            .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.complete(&token, "fan", "succeeded", 0).await;
    for v in viewers {
        let (got, _, end) = v.await.unwrap();
        assert_eq!(seqs(&got), (1..=1001).collect::<Vec<_>>());
        assert!(end.is_some());
    }
}

#[tokio::test]
async fn idle_sse_streams_get_heartbeat_comments() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(tmp.path(), |c| c.heartbeat_secs = 1).await;
    let token = gw.rw();
    gw.push(&token, "hb", &lines("x", 0..1)).await;
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
    let gw = TestGateway::start_with(tmp.path(), |c| c.viewer_queue = 16).await;
    let token = gw.rw();
    gw.push(&token, "lag", &lines("first", 0..1)).await;
    let resp = sse_request(&gw, &token, "lag", "").send().await.unwrap();
    // Do not read while 600 commits of 10 x 4 KiB lines (24 MiB) go by: far more than
    // the 16 frames the broadcast keeps plus what loopback socket buffers hold.
    let big = "z".repeat(4096);
    for b in 0..600 {
        gw.push(
            &token,
            "lag",
            &(0..10)
                .map(|i| format!("{b}/{i} {big}"))
                .collect::<Vec<_>>(),
        )
        .await;
    }
    gw.complete(&token, "lag", "succeeded", 0).await;
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
    let gw = TestGateway::start_with(tmp.path(), |c| c.max_streams_per_token = 2).await;
    let token = gw.rw();
    let other = gw.token("acme", &[Scope::Read]);
    gw.push(&token, "t", &lines("x", 0..1)).await;
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

/// A deployment whose runner died: nobody completes it. After its tenant's idle
/// timeout with no new line it is completed as `timed_out`, its viewers get `end` and
/// later lines are refused; deployments still getting lines, and other tenants' (with a
/// longer timeout), run on; one left open across a restart times out after it too.
#[tokio::test]
async fn a_deployment_nobody_completes_times_out_and_its_viewers_end() {
    let tmp = tempfile::tempdir().unwrap();
    let config = |c: &mut logstream_gateway::config::Config| {
        c.deployment_idle_timeout = "1h".into();
        c.tenant_deployment_idle_timeout
            .insert("acme".into(), "3s".into());
    };
    let gw = Arc::new(TestGateway::start_with(tmp.path(), config).await);
    let token = gw.rw();
    let beta = gw.token("beta", &[Scope::Read, Scope::Write]);
    // The timeout counts from the last write: take the clock before it.
    let started = std::time::Instant::now();
    gw.push(&token, "abandoned", &lines("x", 0..3)).await;
    gw.push(&beta, "abandoned", &lines("y", 0..3)).await;
    let mut events =
        logstream_gateway::testkit::sse_events(&gw.http, &token, "abandoned", "").await;
    // A runner that keeps writing keeps its deployment open.
    let busy = {
        let (gw, token) = (gw.clone(), token.clone());
        tokio::spawn(async move {
            for i in 0.. {
                gw.push(&token, "busy", &lines(&format!("tick {i}"), 0..1))
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(ev) = events.next().await {
            if ev.event == "end" {
                return serde_json::from_str::<Value>(&ev.data).unwrap();
            }
        }
        panic!("the stream closed without an end event");
    })
    .await
    .expect("the abandoned deployment times out");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "not before its timeout"
    );
    assert_eq!(end["status"], "timed_out");
    assert_eq!(end["last_seq"], 3);
    let (_, d) = gw.get_json(&token, "/v1/deployments/abandoned").await;
    assert_eq!(
        (d["status"].as_str(), d["exit_code"].as_i64()),
        (Some("timed_out"), Some(1))
    );
    let (_, d) = gw.get_json(&token, "/v1/deployments/busy").await;
    assert_eq!(d["status"], "running", "lines keep a deployment open");
    busy.abort();
    let _ = busy.await;
    drop(events);
    let (_, d) = gw.get_json(&beta, "/v1/deployments/abandoned").await;
    assert_eq!(d["status"], "running", "beta's timeout is an hour");
    assert_eq!(
        gw.metric("logstream_deployments_timed_out_total").await,
        Some(1.0)
    );
    let late = logstream_gateway::testkit::client()
        .post(format!("{}/v1/deployments/abandoned/logs", gw.http))
        .bearer_auth(&token)
        .header("content-type", "application/x-ndjson")
        .body("{\"message\":\"late\"}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), 409);
    let body: Value = late.json().await.unwrap();
    assert_eq!(body["error"]["code"], "deployment_completed");

    // Left open while the gateway is down: found at start (nobody reads it) and timed
    // out from its last line, not from the restart; so is `busy`, now quiet too (the new
    // process counts both).
    gw.push(&token, "left", &lines("z", 0..2)).await;
    Arc::into_inner(gw).unwrap().shutdown().await;
    let gw = TestGateway::start_with(tmp.path(), config).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while gw.metric("logstream_deployments_timed_out_total").await != Some(2.0) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the deployment left open times out after a restart");
    let (_, d) = gw.get_json(&token, "/v1/deployments/left").await;
    assert_eq!(d["status"], "timed_out");
    let (_, d) = gw.get_json(&beta, "/v1/deployments/abandoned").await;
    assert_eq!(d["status"], "running");
}

/// `?wait=true` on a deployment with no line yet: the stream opens with `waiting` and
/// heartbeats, and turns into the deployment's stream at its first line (from seq 1).
/// A bad value is refused by name.
#[tokio::test]
async fn a_stream_with_wait_true_waits_for_the_first_line() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(tmp.path(), |c| c.heartbeat_secs = 1).await;
    let token = gw.rw();
    let mut events =
        logstream_gateway::testkit::sse_events(&gw.http, &token, "later", "?wait=true").await;
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("an event within 20 s")
            .expect("the stream stays open")
    };
    assert_eq!(next().await.event, "waiting");
    gw.push(&token, "later", &lines("x", 0..3)).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let ev = next().await;
        if ev.event == "line" {
            got.push(serde_json::from_str::<Value>(&ev.data).unwrap());
        }
    }
    assert_eq!(seqs(&got), vec![1, 2, 3]);
    gw.complete(&token, "later", "succeeded", 0).await;
    loop {
        if next().await.event == "end" {
            break;
        }
    }
    let (status, body) = gw
        .get_json(&token, "/v1/deployments/later/stream?wait=yes")
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_wait"))
    );
}
