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
async fn a_failing_disk_refuses_exports_and_admin_actions_and_loses_no_read_record() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(tmp.path(), |c| c.audit_wait = "300ms".into()).await;
    let token = gw.rw();
    gw.push(&token, "d", &lines("x", 0..5)).await;
    let reads_before = audit_records_count(&gw, "read").await;
    let faults = &gw.state.store.hooks().faults;
    faults.arm("segment_sync", std::io::ErrorKind::Other);
    // An export and a completion wait for a durable record: refused, not served or done.
    let r = client()
        .get(format!("{}/v1/deployments/d/export", gw.http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "audit_unavailable", "{body}");
    assert!(logstream_model::retry::is_retryable("audit_unavailable"));
    let r = client()
        .post(format!("{}/v1/deployments/d/complete", gw.http))
        .bearer_auth(&token)
        .json(&serde_json::json!({"status": "succeeded"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    // Reads wait only for the writer to take their record; the writer retries the failed
    // batch before it takes anything else, so none of these records is given up.
    for _ in 0..3 {
        let r = client()
            .get(format!("{}/v1/deployments/d/logs", gw.http))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    faults.disarm("segment_sync");
    let (status, one) = gw.get_json(&token, "/v1/deployments/d").await;
    assert_eq!(status, 200);
    assert_eq!(
        one["status"], "running",
        "the refused completion took no effect: {one}"
    );
    assert_eq!(
        audit_records_count(&gw, "read").await,
        reads_before + 3,
        "every served read recorded once the disk is back"
    );
    assert_eq!(
        audit_records_count(&gw, "export").await,
        0,
        "the refused export is not recorded as served"
    );
    assert!(gw.metric("logstream_audit_refused_total").await.unwrap() >= 2.0);
    assert!(
        gw.metric("logstream_audit_write_failures_total")
            .await
            .unwrap()
            >= 1.0
    );
}

#[tokio::test]
async fn when_the_writer_cannot_take_more_reads_are_refused_not_served() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(tmp.path(), |c| {
        c.audit_wait = "200ms".into();
        c.audit_queue = 64;
    })
    .await;
    let token = gw.rw();
    gw.push(&token, "d", &lines("x", 0..5)).await;
    gw.state
        .store
        .hooks()
        .faults
        .arm("segment_sync", std::io::ErrorKind::Other);
    // The writer is stuck retrying its batch; the reads' records fill the queue behind
    // it (64), then reads are refused.
    let (mut served, mut refused) = (0, 0);
    let c = client();
    for _ in 0..1_000 {
        let r = c
            .get(format!("{}/v1/deployments/d/logs", gw.http))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => served += 1,
            503 => {
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "audit_unavailable", "{body}");
                refused += 1;
                break;
            }
            s => panic!("status {s}"),
        }
    }
    assert_eq!(
        refused, 1,
        "{served} reads served behind a failing disk and none refused"
    );
    gw.state.store.hooks().faults.disarm("segment_sync");
    assert_eq!(
        audit_records_count(&gw, "read").await,
        served,
        "every served read recorded"
    );
}

async fn audit_records_count(gw: &TestGateway, action: &str) -> usize {
    audit_records(gw)
        .await
        .iter()
        .filter(|e| e.action == action)
        .count()
}
