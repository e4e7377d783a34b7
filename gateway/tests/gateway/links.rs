//! Export links (no token, signed, expiring; ETag, Range, 304 on sealed deployments) and
//! bookmarks (named cursors per subject).

use std::time::Duration;

use logstream_gateway::auth::Scope;
use logstream_gateway::core::links;
use logstream_gateway::store::DeploymentId;
use logstream_gateway::testkit::{TestGateway, client, lines};
use serde_json::{Value, json};

async fn link(gw: &TestGateway, token: &str, id: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(format!("{}/v1/deployments/{id}/export-links", gw.http))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = client().get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn a_sealed_export_link_is_cacheable_resumable_and_tamper_proof() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    gw.push(&token, "rel", &lines("line", 0..3000)).await;
    gw.complete(&token, "rel", "succeeded", 0).await;
    let (status, l) = link(
        &gw,
        &token,
        "rel",
        json!({"format": "ndjson", "expires_in": "2h"}),
    )
    .await;
    assert_eq!(status, 201, "{l}");
    let url = l["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&gw.http) && url.contains("/v1/shared/acme/rel/export?"),
        "{url}"
    );

    // No Authorization; the same bytes as the authenticated export.
    let full = get(&url, &[]).await;
    assert_eq!(full.status(), 200);
    let h = full.headers().clone();
    let etag = h["etag"].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/"),
        "strong: {etag}"
    );
    let cc = h["cache-control"].to_str().unwrap();
    let max_age: u64 = cc
        .split(", ")
        .find_map(|p| p.strip_prefix("max-age="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        cc.starts_with("public") && cc.ends_with("immutable"),
        "{cc}"
    );
    assert!((7000..=7200).contains(&max_age), "{cc}");
    assert_eq!(h["accept-ranges"], "bytes");
    let body = full.bytes().await.unwrap();
    let direct = client()
        .get(format!(
            "{}/v1/deployments/rel/export?format=ndjson",
            gw.http
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body, direct);
    assert_eq!(
        h["content-length"].to_str().unwrap(),
        body.len().to_string()
    );

    // A download resumed by Range is byte-identical; revalidation is 304.
    let cut = body.len() / 3;
    let first = get(&url, &[("range", &format!("bytes=0-{}", cut - 1))]).await;
    assert_eq!(first.status(), 206);
    assert_eq!(
        first.headers()["content-range"],
        format!("bytes 0-{}/{}", cut - 1, body.len()).as_str()
    );
    let mut joined = first.bytes().await.unwrap().to_vec();
    let rest = get(
        &url,
        &[("range", &format!("bytes={cut}-")), ("if-range", &etag)],
    )
    .await;
    assert_eq!(rest.status(), 206);
    joined.extend_from_slice(&rest.bytes().await.unwrap());
    assert_eq!(joined, body);
    let r = get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    let r = get(&url, &[("range", &format!("bytes={}-", body.len()))]).await;
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", body.len()).as_str()
    );

    // Altered or incomplete: 403.
    for bad in [
        url.replace("format=ndjson", "format=text"),
        url.replace("/rel/", "/other/"),
        url.replace("/acme/", "/evil/"),
        url.split("&sig=").next().unwrap().to_owned(),
        format!("{url}0"),
        format!("{url}&level=error"),
    ] {
        let r = get(&bad, &[]).await;
        assert_eq!(r.status(), 403, "{bad}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "invalid_signature", "{bad}");
    }
    // Expired (signed with the gateway's key, in the past): 403 link_expired.
    let id = DeploymentId::new("acme", "rel");
    let path = links::path(&id);
    let q = links::sign(
        &gw.state,
        &path,
        vec![
            ("format".into(), "text".into()),
            ("exp".into(), "1000".into()),
            ("sub".into(), "test".into()),
        ],
    );
    let r = get(&format!("{}{path}?{q}", gw.http), &[]).await;
    assert_eq!(r.status(), 403);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "link_expired");

    // A hotfix redaction changes the content, so the ETag; the old one no longer matches.
    let admin = gw.token("acme", &[Scope::Read, Scope::LogsAdmin]);
    let r = client()
        .post(format!("{}/v1/deployments/rel/redactions", gw.http))
        .bearer_auth(&admin)
        .json(&json!({"match": "line 1\\d\\d\\b", "reason": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let after = get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(after.status(), 200, "the redacted export is new content");
    assert_ne!(after.headers()["etag"].to_str().unwrap(), etag);
    let text = String::from_utf8(after.bytes().await.unwrap().to_vec()).unwrap();
    assert!(!text.contains("\"line 150\"") && text.contains("REDACTED"));

    // Creation and downloads are audited.
    let audit = gw.token("acme", &[Scope::Admin]);
    let (_, page) = gw.get_json(&audit, "/v1/audit?action=export_link").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1, "{page}");
    let (_, page) = gw
        .get_json(&audit, "/v1/audit?action=export&deployment=rel&limit=100")
        .await;
    let via_link = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["subject"] == "link:test")
        .count();
    assert_eq!(via_link, 5, "{page}");
    gw.shutdown().await;
}

#[tokio::test]
async fn export_links_refuse_bad_requests_and_stream_running_deployments_uncached() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    gw.push(&token, "run", &lines("l", 0..10)).await;
    for (body, code) in [
        (json!({"expires_in": "30d"}), "invalid_expires_in"),
        (json!({"expires_in": "10s"}), "invalid_expires_in"),
        (json!({"format": "xml"}), "invalid_format"),
        (json!({"level": "loud"}), "invalid_filter"),
        (json!({"formats": "csv"}), "invalid_json"),
    ] {
        let (status, e) = link(&gw, &token, "run", body.clone()).await;
        assert_eq!(status, 400, "{body}: {e}");
        assert_eq!(e["error"]["code"], code, "{body}: {e}");
    }
    let (status, _) = link(&gw, &token, "missing", json!({})).await;
    assert_eq!(status, 404);
    let ro = gw.token("acme", &[Scope::Read]);
    let (status, e) = link(&gw, &ro, "run", json!({})).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (403, Some("missing_scope"))
    );

    // An empty body: the whole log as text; a running deployment is not cacheable.
    let r = client()
        .post(format!("{}/v1/deployments/run/export-links", gw.http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let l: Value = r.json().await.unwrap();
    assert_eq!(l["format"], "text");
    let r = get(l["url"].as_str().unwrap(), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "private, no-store");
    assert!(r.headers().get("etag").is_none());
    assert_eq!(r.text().await.unwrap().lines().count(), 10);
    gw.shutdown().await;
}

#[tokio::test]
async fn bookmarks_are_per_subject_and_go_with_the_deployment() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    gw.push(&token, "bk", &lines("l", 0..20)).await;
    let all = gw.read_all(&token, "bk").await;
    let cursor = all[4]["cursor"].as_str().unwrap();
    let put = |tok: String, name: &str, body: Value| {
        client()
            .put(format!("{}/v1/deployments/bk/bookmarks/{name}", gw.http))
            .bearer_auth(tok)
            .json(&body)
            .send()
    };
    let r = put(token.clone(), "laptop", json!({"cursor": cursor}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        (b["seq"].as_u64(), b["cursor"].as_str()),
        (Some(5), Some(cursor))
    );
    let (status, got) = gw
        .get_json(&token, "/v1/deployments/bk/bookmarks/laptop")
        .await;
    assert_eq!((status, got["seq"].as_u64()), (200, Some(5)));
    // Another subject of the same tenant does not see it.
    let other = gw.state.auth.mint(
        "someone-else",
        "acme",
        &[Scope::Read],
        Duration::from_secs(600),
        None,
    );
    let (status, e) = gw
        .get_json(&other, "/v1/deployments/bk/bookmarks/laptop")
        .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (404, Some("bookmark_not_found"))
    );
    // Bad names, a cursor of another deployment, garbage.
    gw.push(&token, "elsewhere", &lines("x", 0..2)).await;
    let foreign = gw.read_all(&token, "elsewhere").await[0]["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    for (name, body, code) in [
        (
            "has space",
            json!({"cursor": cursor}),
            "invalid_bookmark_name",
        ),
        ("ok", json!({"cursor": foreign}), "invalid_cursor"),
        ("ok", json!({"cursor": "nope"}), "invalid_cursor"),
        ("ok", json!({"seq": 3}), "invalid_json"),
    ] {
        let r = put(token.clone(), name, body.clone()).await.unwrap();
        assert_eq!(r.status(), 400, "{name} {body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], code, "{name} {body}: {e}");
    }
    // Moving it, deleting it.
    let later = all[14]["cursor"].as_str().unwrap();
    put(token.clone(), "laptop", json!({"cursor": later}))
        .await
        .unwrap();
    let (_, got) = gw
        .get_json(&token, "/v1/deployments/bk/bookmarks/laptop")
        .await;
    assert_eq!(got["seq"], 15);
    let del = || {
        client()
            .delete(format!("{}/v1/deployments/bk/bookmarks/laptop", gw.http))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(del().await.unwrap().status(), 204);
    assert_eq!(del().await.unwrap().status(), 404);
    // Set again, then the deployment is deleted: its bookmarks go with it.
    put(token.clone(), "laptop", json!({"cursor": later}))
        .await
        .unwrap();
    let admin = gw.token("acme", &[Scope::Read, Scope::Write, Scope::LogsAdmin]);
    let r = client()
        .delete(format!("{}/v1/deployments/bk?reason=test", gw.http))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!tmp.path().join("store/tenants/acme/bk").exists());
    let audit = gw.token("acme", &[Scope::Admin]);
    let (_, page) = gw.get_json(&audit, "/v1/audit?action=bookmark_set").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 3, "{page}");
    gw.shutdown().await;
}
