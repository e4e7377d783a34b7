//! Tenancy: tenants see only their own deployments (and tokens only their globs), and
//! reads, streams, exports and rejections land in the tenant's audit log.

use std::time::Duration;

use logstream_gateway::auth::Scope;
use logstream_gateway::testkit::{TestGateway, client, lines};

use crate::{read_sse, walk};

#[tokio::test]
async fn tenants_see_only_their_own_deployments() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let a = gw.rw();
    let b = gw.token("beta", &[Scope::Read, Scope::Write, Scope::Export]);
    gw.push(&a, "shared-name", &lines("secret of acme", 0..2))
        .await;
    let (status, _) = gw.get_json(&b, "/v1/deployments/shared-name").await;
    assert_eq!(status, 404, "another tenant's deployment looks missing");
    let (_, list) = gw.get_json(&b, "/v1/deployments").await;
    assert_eq!(list["deployments"].as_array().unwrap().len(), 0);
    gw.push(&b, "shared-name", &lines("beta's own", 0..1)).await;
    let (_, page) = gw.get_json(&b, "/v1/deployments/shared-name/logs").await;
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
        gw.get_json(&limited, "/v1/deployments/shared-name/logs")
            .await
            .0,
        404,
        "outside the token's deployment globs"
    );
}

#[tokio::test]
async fn reads_streams_exports_and_rejections_land_in_the_tenants_audit_log() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    gw.push(&token, "aud", &lines("x", 0..3)).await;
    gw.get_json(&token, "/v1/deployments/aud/logs").await;
    client()
        .get(format!("{}/v1/deployments/aud/export", gw.http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    gw.complete(&token, "aud", "succeeded", 0).await;
    read_sse(&gw, &token, "aud", "", None, None).await;
    assert_eq!(
        gw.get_json("forged.token.value", "/v1/deployments").await.0,
        401
    );
    let beta_admin = gw.token("beta", &[Scope::Admin]);
    gw.get_json(&beta_admin, "/v1/deployments").await;
    let admin = gw.token("acme", &[Scope::Admin]);
    // `stream_close` is written when the server notices the viewer left: await it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        gw.state.audit.flush().await;
        let (_, closed) = gw.get_json(&admin, "/v1/audit?action=stream_close").await;
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
        gw.get_json(&token, "/v1/audit").await.0,
        403,
        "logs:* scopes do not read the audit log"
    );
    let (status, page) = gw.get_json(&admin, "/v1/audit?limit=100").await;
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
    let (_, only) = gw.get_json(&admin, "/v1/audit?action=export").await;
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
