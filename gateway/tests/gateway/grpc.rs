//! gRPC: push acks durably and dedups retried batches, tail subscribes from a cursor,
//! and calls without a valid token are unauthenticated.

use logstream_gateway::testkit::TestGateway;
use logstream_proto::v1 as pb;

#[tokio::test]
async fn grpc_push_acks_durably_dedups_and_tail_subscribes_from_a_cursor() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    let channel = gw.grpc_channel().await;
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
    let (_, page) = gw.get_json(&token, "/v1/deployments/g/logs").await;
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
            pb::subscribe_response::Event::Redacted(r) => panic!("nothing was redacted: {r:?}"),
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
    let gw = TestGateway::start(tmp.path()).await;
    let channel = gw.grpc_channel().await;
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
async fn a_batch_refused_over_quota_says_how_long_to_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(tmp.path(), |c| c.quotas.ingest_lines_per_sec = 50).await;
    let token = gw.rw();
    let auth = format!("Bearer {token}");
    let with_auth = move |mut req: tonic::Request<()>| {
        req.metadata_mut()
            .insert("authorization", auth.parse().unwrap());
        Ok(req)
    };
    let mut ingest =
        pb::ingest_client::IngestClient::with_interceptor(gw.grpc_channel().await, with_auth);
    let batch = |id: u64| pb::PushRequest {
        deployment: "q".into(),
        source: "s".into(),
        batch_id: id,
        lines: (0..100)
            .map(|i| pb::Line {
                message: format!("l{i}"),
                ..Default::default()
            })
            .collect(),
    };
    let mut acks = ingest
        .push(futures::stream::iter((1..=50).map(batch)))
        .await
        .unwrap()
        .into_inner();
    let mut refused = None;
    while let Some(a) = acks.message().await.unwrap() {
        if let Some(e) = a.error {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("the quota refuses a batch");
    assert_eq!(e.code, "quota_exceeded");
    assert!(e.retry_after_secs >= 1, "{e:?}");
    gw.shutdown().await;
}
