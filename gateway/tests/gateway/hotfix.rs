//! Audited hotfixes (issue 23): a leaked value masked in a stored log is gone from every
//! door (history, export, live viewers told, a new viewer), `store verify` passes and
//! names the rewrite, the audit log has the request (and never the regex), only
//! `logs:admin` may ask, and a deleted deployment is gone. The store's own tests cover the
//! on-disk bytes, tampering, crashes and object storage.

use futures::StreamExt;
use logstream_gateway::audit::audit_log_id;
use logstream_gateway::auth::Scope;
use logstream_gateway::store::{DeploymentId, Direction};
use logstream_gateway::testkit::{TestGateway, client, lines, sse_events};
use logstream_model::Filter;
use serde_json::{Value, json};

/// Not a format any detector knows: only a hotfix can mask it.
const LEAK: &str = "hunter2-Zq8vXw3kLm";

async fn post_redaction(gw: &TestGateway, token: &str, id: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(format!("{}/v1/deployments/{id}/redactions", gw.http))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn audit_text(gw: &TestGateway) -> String {
    let log = gw.state.store.log(&audit_log_id(), false).unwrap().unwrap();
    let page = log
        .read(Direction::Forward, 0, &Filter::default(), 100_000)
        .unwrap();
    page.records
        .iter()
        .map(|r| r.message.clone() + "\n")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaked_value_is_masked_at_every_door_and_the_chain_still_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(tmp.path(), |c| c.segment_bytes = 4096).await;
    let rw = gw.rw();
    let admin = gw.token("acme", &[Scope::LogsAdmin, Scope::Read]);
    let id = "deploy-9";
    // Several pushes (blocks) and, with 4 KiB segments, several segments.
    for round in 0..6 {
        gw.push(&rw, id, &lines(&format!("r{round}"), 0..40)).await;
        if round == 2 {
            gw.push(&rw, id, &[format!("the vault answered {LEAK} (oops)")])
                .await;
        }
    }
    let all = gw.read_all(&rw, id).await;
    let leaked: Vec<u64> = all
        .iter()
        .filter(|l| l["message"].as_str().unwrap().contains(LEAK))
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(leaked.len(), 1, "the value is not a known secret format");
    let mut viewer = sse_events(&gw.http, &rw, id, "").await;

    // Refusals, each naming the problem: a token without logs:admin, no reason, nothing
    // to mask, a bad range, a bad regex, an unknown field, a foreign tenant.
    let body = json!({"match": LEAK, "reason": "leaked DB password"});
    assert_eq!(post_redaction(&gw, &rw, id, body.clone()).await.0, 403);
    for (bad, want) in [
        (json!({"match": LEAK}), "reason"),
        (json!({"match": LEAK, "reason": " "}), "reason"),
        (json!({"reason": "x"}), "give seqs"),
        (json!({"seqs": "9-3", "reason": "x"}), "seqs \"9-3\""),
        (json!({"seqs": "0", "reason": "x"}), "seqs \"0\""),
        (json!({"match": "(a", "reason": "x"}), "not a valid regex"),
        (json!({"match": ".*", "reason": "x"}), "empty string"),
        (
            json!({"match": LEAK, "reason": "x", "sqes": "1"}),
            "unknown field",
        ),
    ] {
        let (status, err) = post_redaction(&gw, &admin, id, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(want),
            "{bad}: {err}"
        );
    }
    let other = gw.token("globex", &[Scope::LogsAdmin]);
    assert_eq!(post_redaction(&gw, &other, id, body.clone()).await.0, 404);

    let (status, done) = post_redaction(&gw, &admin, id, body).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["lines"], 1);
    assert_eq!(done["matches"], 1);
    assert_eq!(done["seqs"], json!([[leaked[0], leaked[0]]]));

    // History: same seqs and cursors, the value masked.
    let after = gw.read_all(&rw, id).await;
    assert_eq!(after.len(), all.len());
    for (a, b) in all.iter().zip(&after) {
        assert_eq!(a["seq"], b["seq"]);
        assert_eq!(a["cursor"], b["cursor"], "cursors stay valid");
    }
    let line = &after[(leaked[0] - 1) as usize];
    assert_eq!(
        line["message"],
        "the vault answered [REDACTED:hotfix] (oops)"
    );
    // Export, text and NDJSON.
    for format in ["text", "ndjson"] {
        let text = client()
            .get(format!(
                "{}/v1/deployments/{id}/export?format={format}",
                gw.http
            ))
            .bearer_auth(&rw)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains("[REDACTED:hotfix]"), "{format}");
        assert!(!text.contains(LEAK), "{format}");
    }
    // The live viewer that was sent the line is told which lines changed.
    let told = loop {
        let ev = viewer.next().await.expect("the stream stays open");
        if ev.event == "redacted" {
            break ev;
        }
    };
    let data: Value = serde_json::from_str(&told.data).unwrap();
    assert_eq!(data["seqs"], json!([[leaked[0], leaked[0]]]));
    // A new viewer from the start never sees the value.
    let mut fresh = sse_events(&gw.http, &rw, id, "").await;
    let mut seen = 0;
    while seen < after.len() {
        let ev = fresh.next().await.unwrap();
        if ev.event == "line" {
            assert!(!ev.data.contains(LEAK));
            seen += 1;
        }
    }

    // The chain verifies and names the audited rewrite.
    let report = gw
        .state
        .store
        .verify(&DeploymentId::new("acme", id))
        .unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.rewrites.len(), 1);
    assert_eq!(report.rewrites[0].reason, "leaked DB password");
    assert_eq!(report.rewrites[0].subject, "test");

    // The audit log has the request and its outcome, and never the regex.
    gw.state.audit.flush().await;
    let audit = audit_text(&gw);
    assert!(audit.contains("\"action\":\"redact\""), "{audit}");
    assert!(audit.contains("reason: leaked DB password"), "{audit}");
    assert!(
        audit.contains(&format!("ok: 1 lines ({0}-{0})", leaked[0])),
        "{audit}"
    );
    assert!(!audit.contains(LEAK), "the regex is not recorded");

    // Later lines still append and chain.
    gw.push(&rw, id, &lines("late", 0..10)).await;
    assert!(
        gw.state
            .store
            .verify(&DeploymentId::new("acme", id))
            .unwrap()
            .is_clean()
    );
    drop((viewer, fresh));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_lines_by_seq_and_a_deleted_deployment() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let rw = gw.rw();
    let admin = gw.token("acme", &[Scope::Admin]);
    gw.push(&rw, "d", &lines("x", 0..10)).await;
    gw.complete(&rw, "d", "succeeded", 0).await;
    let (status, done) = post_redaction(
        &gw,
        &admin,
        "d",
        json!({"seqs": "3-4", "reason": "pasted a key"}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["lines"], 2);
    let after = gw.read_all(&rw, "d").await;
    assert_eq!(after[2]["message"], "[REDACTED:hotfix]");
    assert_eq!(after[3]["message"], "[REDACTED:hotfix]");
    assert_eq!(after[4]["message"], "x 4");

    // Delete: logs:admin and a reason, then the deployment is gone.
    let delete = |token: String, q: &'static str| {
        let url = format!("{}/v1/deployments/d{q}", gw.http);
        async move {
            let r = client()
                .delete(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(delete(rw.clone(), "?reason=x").await.0, 403);
    let (status, err) = delete(admin.clone(), "").await;
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"].as_str().unwrap().contains("reason"),
        "{err}"
    );
    let (status, body) = delete(admin.clone(), "?reason=leaked%20everywhere").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"deployment": "d", "deleted": true}));
    assert_eq!(gw.get_json(&rw, "/v1/deployments/d").await.0, 404);
    assert_eq!(gw.get_json(&rw, "/v1/deployments/d/logs").await.0, 404);
    assert_eq!(delete(admin.clone(), "?reason=again").await.0, 404);
    gw.state.audit.flush().await;
    let audit = audit_text(&gw);
    assert!(audit.contains("\"action\":\"delete\""), "{audit}");
    assert!(audit.contains("reason: leaked everywhere"), "{audit}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_viewer_of_a_deleted_deployment_is_told() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let rw = gw.rw();
    let admin = gw.token("acme", &[Scope::LogsAdmin]);
    gw.push(&rw, "live", &lines("x", 0..3)).await;
    let mut viewer = sse_events(&gw.http, &rw, "live", "").await;
    let r = client()
        .delete(format!("{}/v1/deployments/live?reason=test", gw.http))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ev = loop {
        let ev = viewer.next().await.expect("told before the stream ends");
        if ev.event == "deleted" {
            break ev;
        }
    };
    assert!(ev.data.contains("deployment_deleted"), "{}", ev.data);
    assert!(viewer.next().await.is_none(), "the stream ends");
    drop(viewer);
    gw.shutdown().await;
}
