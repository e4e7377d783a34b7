//! The deployments listing (from the catalog): newest first in pages, filters, a token
//! restricted to some deployments sees only those; the change feed; the open
//! deployments quota.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use logstream_gateway::auth::Scope;
use logstream_gateway::testkit::{TestGateway, client, lines};
use serde_json::Value;

async fn page(gw: &TestGateway, token: &str, query: &str) -> Value {
    let (status, body) = gw.get_json(token, &format!("/v1/deployments{query}")).await;
    assert_eq!(status, 200, "{query}: {body}");
    body
}

#[tokio::test]
async fn the_listing_pages_newest_first_filters_and_hides_what_a_token_may_not_see() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    for i in 0..25 {
        gw.push(&token, &format!("job-{i:02}"), &lines("x", 0..2))
            .await;
    }
    for i in (0..25).step_by(5) {
        gw.complete(&token, &format!("job-{i:02}"), "failed", 2)
            .await;
    }
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let p = page(&gw, &token, &format!("?limit=4&cursor={cursor}")).await;
        let got = p["deployments"].as_array().unwrap();
        assert!(got.len() <= 4);
        ids.extend(got.iter().map(|d| d["id"].as_str().unwrap().to_owned()));
        match p["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    let want: Vec<String> = (0..25).rev().map(|i| format!("job-{i:02}")).collect();
    assert_eq!(ids, want, "newest first, each once");
    let failed = page(&gw, &token, "?status=failed").await;
    let failed: Vec<&str> = failed["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["job-20", "job-15", "job-10", "job-05", "job-00"]);
    let p = page(&gw, &token, "?q=JOB-1&status=running").await;
    assert_eq!(p["deployments"].as_array().unwrap().len(), 8);
    let d = &page(&gw, &token, "?limit=1").await["deployments"][0];
    assert_eq!(
        (d["lines"].as_u64(), d["status"].as_str()),
        (Some(2), Some("running"))
    );
    assert!(d["updated_at"].is_string());
    // A token for some deployments lists only those.
    let narrow = gw.state.auth.mint(
        "ci",
        "acme",
        &[Scope::Read],
        Duration::from_secs(60),
        Some(vec!["job-0*".into()]),
    );
    let p = page(&gw, &narrow, "").await;
    let seen: HashSet<&str> = p["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(seen.len(), 10);
    assert!(seen.iter().all(|id| id.starts_with("job-0")));
    // Bad parameters name themselves.
    for (q, code) in [
        ("?limit=5000", "invalid_limit"),
        ("?cursor=nope", "invalid_cursor"),
        ("?status=done", "invalid_status"),
        ("?order=asc", "unknown_parameter"),
    ] {
        let (status, body) = gw.get_json(&token, &format!("/v1/deployments{q}")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some(code)),
            "{q}"
        );
    }
}

#[tokio::test]
async fn the_change_feed_tells_creations_progress_and_completions() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    let resp = client()
        .get(format!("{}/v1/deployments/events", gw.http))
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut events = Box::pin(eventsource_stream::Eventsource::eventsource(
        resp.bytes_stream(),
    ));
    let mut next = async || loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("a change within 20 s")
            .expect("the feed stays open")
            .unwrap();
        if !ev.event.is_empty() && ev.event != "message" {
            return (ev.event, serde_json::from_str::<Value>(&ev.data).unwrap());
        }
    };
    gw.push(&token, "watched", &lines("a", 0..1)).await;
    let (e, d) = next().await;
    assert_eq!((e.as_str(), d["id"].as_str()), ("created", Some("watched")));
    gw.push(&token, "watched", &lines("b", 0..3)).await;
    // Progress comes at most once a second per deployment, with the counts then.
    loop {
        let (e, d) = next().await;
        assert_eq!(e, "updated");
        if d["lines"] == 4 {
            break;
        }
    }
    gw.complete(&token, "watched", "succeeded", 0).await;
    let (e, d) = next().await;
    assert_eq!(
        (e.as_str(), d["status"].as_str()),
        ("completed", Some("succeeded"))
    );
    // Another tenant's changes never show.
    let beta = gw.token("beta", &[Scope::Read, Scope::Write]);
    gw.push(&beta, "theirs", &lines("c", 0..1)).await;
    gw.push(&token, "mine", &lines("d", 0..1)).await;
    let (_, d) = next().await;
    assert_eq!(d["id"], "mine");
}

#[tokio::test]
async fn a_tenant_at_its_open_deployments_quota_gets_429_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(tmp.path(), |c| {
        c.quotas.max_open_deployments = 2;
    })
    .await;
    let token = gw.rw();
    gw.push(&token, "a", &lines("x", 0..1)).await;
    gw.push(&token, "b", &lines("x", 0..1)).await;
    let r = client()
        .post(format!("{}/v1/deployments/c/logs", gw.http))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("x\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_open_deployments")
    );
    // Open ones still take lines; completing one makes room.
    gw.push(&token, "a", &lines("y", 0..1)).await;
    gw.complete(&token, "a", "succeeded", 0).await;
    gw.push(&token, "c", &lines("x", 0..1)).await;
}
