//! The audit trail never drops a record: what is served is recorded first, noise is
//! aggregated, and a request whose record cannot be written is refused, not served.

use std::collections::HashMap;

use futures::StreamExt;
use logstream_gateway::audit::{AuditEvent, audit_log_id};
use logstream_gateway::store::Direction;
use logstream_gateway::testkit::{TestGateway, client, lines};
use logstream_model::Filter;

/// Every record of the audit log, read from the store.
async fn audit_records(gw: &TestGateway) -> Vec<AuditEvent> {
    gw.state.audit.flush().await;
    let log = gw
        .state
        .store
        .log(&audit_log_id(), false)
        .unwrap()
        .expect("audit log");
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let page = log
            .read(Direction::Forward, from, &Filter::default(), 10_000)
            .unwrap();
        out.extend(
            page.records
                .iter()
                .map(|r| serde_json::from_str::<AuditEvent>(&r.message).unwrap()),
        );
        if page.exhausted {
            return out;
        }
        from = page.scanned_to + 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_tokens_is_aggregated_while_every_served_read_and_export_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    for d in 0..10 {
        gw.push(&token, &format!("d{d}"), &lines("x", 0..20)).await;
    }
    let base = gw.http.clone();
    // 20,000 failed authentications at full speed (64 at a time)...
    let flood = {
        let base = base.clone();
        tokio::spawn(async move {
            let c = client();
            let bad = futures::stream::iter(0..20_000).map(|i| {
                let c = c.clone();
                let url = format!("{base}/v1/deployments");
                async move {
                    c.get(url)
                        .bearer_auth(format!("forged.token.{i}"))
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                }
            });
            let statuses: Vec<u16> = bad.buffer_unordered(64).collect().await;
            statuses
        })
    };
    // ...while 1,000 reads and exports run; each served one is counted by deployment.
    let mut served: HashMap<(String, String), usize> = HashMap::new();
    let c = client();
    let mut work = Vec::new();
    for i in 0..1000 {
        let (c, base, token) = (c.clone(), base.clone(), token.clone());
        work.push(tokio::spawn(async move {
            let d = format!("d{}", i % 10);
            let (action, path) = if i % 4 == 0 {
                ("export", format!("/v1/deployments/{d}/export"))
            } else {
                ("read", format!("/v1/deployments/{d}/logs"))
            };
            let r = c
                .get(format!("{base}{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body = r.bytes().await.unwrap();
            (action, d, status, body.len())
        }));
    }
    for w in work {
        let (action, d, status, len) = w.await.unwrap();
        assert_eq!(status, 200, "{action} of {d} served");
        assert!(len > 0);
        *served.entry((action.to_owned(), d)).or_default() += 1;
    }
    let statuses = flood.await.unwrap();
    assert_eq!(statuses.len(), 20_000);
    assert!(statuses.iter().all(|s| *s == 401));

    let records = audit_records(&gw).await;
    // Every served read and export has its record (as many as were served, per
    // deployment).
    let mut recorded: HashMap<(String, String), usize> = HashMap::new();
    for e in records
        .iter()
        .filter(|e| e.action == "read" || e.action == "export")
    {
        assert_eq!((e.tenant.as_str(), e.result.as_str()), ("acme", "ok"));
        *recorded
            .entry((e.action.clone(), e.deployment.clone()))
            .or_default() += 1;
    }
    assert_eq!(recorded, served);
    // The rejections are counts, not 20,000 records: per client and reason, each
    // interval.
    let rejected: Vec<&AuditEvent> = records
        .iter()
        .filter(|e| e.action == "auth_rejected")
        .collect();
    let counted: u64 = rejected.iter().map(|e| e.count.unwrap_or(1)).sum();
    assert_eq!(counted, 20_000, "every rejection counted");
    assert!(
        rejected.len() <= 10,
        "{} records for 20,000 rejections from one client",
        rejected.len()
    );
    assert!(rejected.iter().all(|e| e.client == "127.0.0.1"));
    let report =
        logstream_gateway::store::verify_dir(&tmp.path().join("store/system/audit")).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test]
async fn a_request_whose_audit_record_cannot_be_written_is_refused_not_served() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(tmp.path(), |c| c.audit_wait = "300ms".into()).await;
    let token = gw.rw();
    gw.push(&token, "d", &lines("x", 0..5)).await;
    let faults = &gw.state.store.hooks().faults;
    faults.arm("segment_sync", std::io::ErrorKind::Other);
    let reads_before = audit_records_count(&gw, "read").await;
    for path in [
        "/v1/deployments/d/logs",
        "/v1/deployments/d/export",
        "/v1/deployments/d/stream",
    ] {
        let r = client()
            .get(format!("{}{path}", gw.http))
            .bearer_auth(&token)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 503, "{path}");
        assert!(r.headers().contains_key("retry-after"), "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "audit_unavailable", "{path}: {body}");
        assert!(logstream_model::retry::is_retryable("audit_unavailable"));
    }
    // A completion is refused too, and does not take effect.
    let r = client()
        .post(format!("{}/v1/deployments/d/complete", gw.http))
        .bearer_auth(&token)
        .json(&serde_json::json!({"status": "succeeded"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    faults.disarm("segment_sync");
    let (status, one) = gw.get_json(&token, "/v1/deployments/d").await;
    assert_eq!(status, 200);
    assert_eq!(one["status"], "running", "{one}");
    // Served again once the disk recovers; no record of the refused reads exists.
    let (status, _) = gw.get_json(&token, "/v1/deployments/d/logs").await;
    assert_eq!(status, 200);
    assert_eq!(audit_records_count(&gw, "read").await, reads_before + 1);
    assert!(gw.metric("logstream_audit_refused_total").await.unwrap() >= 4.0);
}

async fn audit_records_count(gw: &TestGateway, action: &str) -> usize {
    audit_records(gw)
        .await
        .iter()
        .filter(|e| e.action == action)
        .count()
}
