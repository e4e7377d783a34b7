//! HTTP and gRPC are two doors to one core: the same token header spellings, the same
//! completion defaults, the same error codes (in `PushAck.error.code` too), and the same
//! end of a viewer session when its token expires.

use std::time::Duration;

use futures::StreamExt;
use logstream_gateway::auth::Scope;
use logstream_gateway::testkit::{TestGateway, client, lines};
use logstream_proto::v1 as pb;
use tonic::metadata::MetadataValue;

fn with_header<T>(msg: T, name: &'static str, value: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert(name, MetadataValue::try_from(value).unwrap());
    req
}

fn subscribe(id: &str) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        deployment: id.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_grpc_accept_and_refuse_the_same_token_header_spellings() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(dir.path()).await;
    let token = gw.rw();
    gw.push(&token, "d", &lines("x", 0..1)).await;
    let ch = gw.grpc_channel().await;
    let accepted = ["Bearer {t}", "bearer {t}", "BEARER {t}", "  Bearer   {t}  "];
    let refused = ["Basic {t}", "{t}", "Bearer", "Token {t}"];
    for header in ["authorization", "logstream-authorization"] {
        for (spelling, ok) in accepted
            .iter()
            .map(|s| (s, true))
            .chain(refused.iter().map(|s| (s, false)))
        {
            let value = spelling.replace("{t}", &token);
            let http = client()
                .get(format!("{}/v1/deployments", gw.http))
                .header(header, value.trim())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            let mut tail = pb::tail_client::TailClient::new(ch.clone());
            let grpc = tail
                .subscribe(with_header(subscribe("d"), header, value.trim()))
                .await
                .map(|_| ())
                .map_err(|s| s.code());
            assert_eq!(http == 200, ok, "HTTP {header}: {value:?} -> {http}");
            assert_eq!(grpc.is_ok(), ok, "gRPC {header}: {value:?} -> {grpc:?}");
            if !ok {
                assert_eq!(http, 401, "HTTP {header}: {value:?}");
                assert_eq!(grpc, Err(tonic::Code::Unauthenticated), "{value:?}");
            }
        }
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_grpc_complete_with_the_same_exit_code_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(dir.path()).await;
    let token = gw.rw();
    let mut ingest = pb::ingest_client::IngestClient::new(gw.grpc_channel().await);
    let auth = format!("Bearer {token}");
    for (status, given, expected) in [
        ("failed", None, 1),
        ("cancelled", None, 1),
        ("succeeded", None, 0),
        ("failed", Some(0), 0),
        ("failed", Some(7), 7),
    ] {
        let (h, g) = (
            format!("http-{status}-{given:?}").replace(['(', ')'], ""),
            format!("grpc-{status}-{given:?}").replace(['(', ')'], ""),
        );
        for id in [&h, &g] {
            gw.push(&token, id, &lines("x", 0..1)).await;
        }
        let mut body = serde_json::json!({ "status": status });
        if let Some(code) = given {
            body["exit_code"] = code.into();
        }
        let r = client()
            .post(format!("{}/v1/deployments/{h}/complete", gw.http))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let req = pb::CompleteRequest {
            deployment: g.clone(),
            status: status.into(),
            exit_code: given,
        };
        ingest
            .complete(with_header(req, "authorization", &auth))
            .await
            .unwrap();
        for id in [&h, &g] {
            let (_, d) = gw.get_json(&token, &format!("/v1/deployments/{id}")).await;
            assert_eq!(d["status"], status, "{id}");
            assert_eq!(d["exit_code"], expected, "{id}: {status} with {given:?}");
        }
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_grpc_batches_carry_the_contract_codes() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(dir.path()).await;
    let token = gw.rw();
    gw.push(&token, "done", &lines("x", 0..1)).await;
    gw.complete(&token, "done", "succeeded", 0).await;
    let read_only = gw.token("acme", &[Scope::Read]);
    let mut ingest = pb::ingest_client::IngestClient::new(gw.grpc_channel().await);
    let batch = |deployment: &str, batch_id: u64| pb::PushRequest {
        deployment: deployment.into(),
        source: "test".into(),
        batch_id,
        lines: vec![pb::Line {
            message: "m".into(),
            ..Default::default()
        }],
    };
    for (tok, deployment, code) in [
        (&token, "done", "deployment_completed"),
        (&token, "-bad id", "invalid_deployment_id"),
        (&read_only, "fresh", "missing_scope"),
    ] {
        let stream = futures::stream::iter([batch(deployment, 1)]);
        let req = with_header(stream, "authorization", &format!("Bearer {tok}"));
        let mut acks = ingest.push(req).await.unwrap().into_inner();
        let ack = acks.next().await.unwrap().unwrap();
        let error = ack.error.expect("refused");
        assert_eq!(error.code, code, "{deployment}: {}", error.message);
        assert!(
            !logstream_model::retry::is_retryable(&error.code),
            "{code} is final"
        );
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_tail_ends_with_auth_expired_when_its_token_expires() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(dir.path()).await;
    let writer = gw.rw();
    gw.push(&writer, "d", &lines("x", 0..3)).await;
    let short = gw.token_for("acme", &[Scope::Read], Duration::from_secs(2));
    let mut tail = pb::tail_client::TailClient::new(gw.grpc_channel().await);
    let mut events = tail
        .subscribe(with_header(
            subscribe("d"),
            "authorization",
            &format!("Bearer {short}"),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut seen = 0;
    let status = loop {
        let next = tokio::time::timeout(Duration::from_secs(15), events.next())
            .await
            .expect("the tail ends within 15 s of its token's expiry");
        match next {
            Some(Ok(pb::SubscribeResponse {
                event: Some(pb::subscribe_response::Event::Lines(b)),
            })) => seen += b.lines.len(),
            Some(Ok(other)) => panic!("unexpected event {other:?}"),
            Some(Err(status)) => break status,
            None => panic!("the tail ended without saying why"),
        }
    };
    assert_eq!(seen, 3, "the lines before the expiry arrived");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status.message().starts_with("auth_expired:"),
        "{}",
        status.message()
    );
    assert_eq!(
        status.metadata().get("logstream-error-code").unwrap(),
        "auth_expired"
    );
    gw.shutdown().await;
}
