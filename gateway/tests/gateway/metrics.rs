//! Every metric `docs/metrics.md` lists for the gateway (and `process_*`) is exported,
//! after traffic over every door: HTTP ingest with a secret, reads, a stream, a quota
//! refusal, a bad token, gRPC.

use logstream_gateway::testkit::{TestGateway, assert_documented_metrics_exported, client, lines};
use logstream_proto::v1 as pb;

#[tokio::test]
async fn every_documented_gateway_metric_is_exported() {
    let tmp = tempfile::tempdir().unwrap();
    // An alert receiver that refuses (400, not retried), and a rule that can track one
    // deployment: every alert metric gets a series.
    let refusing = logstream_gateway::testkit::loopback_listener().await;
    let hook = format!("http://{}/", refusing.local_addr().unwrap());
    tokio::spawn(async move {
        let app = axum::Router::new().fallback(|| async { axum::http::StatusCode::BAD_REQUEST });
        axum::serve(refusing, app).await
    });
    let alerts = toml::from_str(&format!(
        r#"
        [[receivers]]
        name = "hook"
        webhook = {{ url = "{hook}" }}
        [[rules]]
        name = "any"
        condition = {{ matches = {{ count = 1, window = "1h" }} }}
        "#
    ))
    .unwrap();
    let gw = TestGateway::start_with(tmp.path(), |c| {
        c.quotas.ingest_lines_per_sec = 50;
        c.tenant_alerts.insert("acme".into(), alerts);
        c.alerting.max_series_per_rule = 1;
    })
    .await;
    let token = gw.rw();
    gw.push(
        &token,
        "m",
        &["deploying with AKIAIOSFODNN7EXAMPLE".to_owned()],
    )
    .await;
    gw.push(&token, "m", &lines("x", 0..5)).await;
    gw.push(&token, "m2", &lines("z", 0..1)).await; // over the alert rule's one series
    // Over the 50 lines/s quota (a bucket may go into debt by one request): refused,
    // and counted.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let r = gw.post_lines(&token, "m", &lines("y", 0..500)).await;
        statuses.push(r.status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(
        gw.get_json("bad.token.here", "/v1/deployments").await.0,
        401
    );
    gw.read_all(&token, "m").await;
    gw.complete(&token, "m", "succeeded", 0).await;
    let mut tail = pb::tail_client::TailClient::new(gw.grpc_channel().await);
    let mut req = tonic::Request::new(pb::SubscribeRequest {
        deployment: "m".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tail.subscribe(req).await.unwrap();
    let failed =
        "logstream_alert_notifications_total{receiver=\"hook\",result=\"failed\",tenant=\"acme\"}";
    for _ in 0..100 {
        if gw.metric(failed).await.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    gw.state.alerts.tick(); // the state gauges are set by the evaluation tick
    let text = client()
        .get(format!("{}/metrics", gw.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Kafka mode only: tests/kafka.rs checks it.
    assert_documented_metrics_exported(&text, "gateway", &["logstream_kafka_consumer_lag_records"]);
    // Routes are templates, not paths (ids would explode the label set).
    assert!(
        text.contains(r#"route="/v1/deployments/{id}/logs""#),
        "{text}"
    );
    assert!(!text.contains(r#"route="/v1/deployments/m/logs""#));
    assert!(text.contains(r#"method="logstream.v1.Tail/Subscribe""#));
}
