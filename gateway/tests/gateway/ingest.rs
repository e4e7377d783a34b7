//! Ingest: long lines split with markers, gzip bodies, retried batches stored once,
//! secrets redacted before the store, per-tenant quotas under a flood, per-tenant
//! redaction patterns, and a bad custom pattern refused at start.

use std::sync::Arc;

use logstream_gateway::auth::Scope;
use logstream_gateway::config::Config;
use logstream_gateway::testkit::{TestGateway, client, lines};
use serde_json::{Value, json};

use crate::walk;

#[tokio::test]
async fn long_lines_are_split_with_markers_and_gzip_bodies_are_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(tmp.path(), |c| c.max_line_bytes = 1024).await;
    let token = gw.rw();
    let long = "y".repeat(2500);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, format!("short\n{long}\n").as_bytes()).unwrap();
    let r = client()
        .post(format!("{}/v1/deployments/g/logs?step=compile", gw.http))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .header("content-encoding", "gzip")
        .body(enc.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, page) = gw.get_json(&token, "/v1/deployments/g/logs").await;
    let lines = page["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["step"], "compile");
    let parts: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l["metadata"]["split"].as_str().unwrap())
        .collect();
    assert_eq!(parts, vec!["1/3", "2/3", "3/3"]);
    let joined: String = lines[1..]
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(joined, long);
}

#[tokio::test]
async fn retried_http_batches_are_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    let send = |batch: u64| {
        client()
            .post(format!("{}/v1/deployments/r/logs", gw.http))
            .bearer_auth(&token)
            .header("content-type", "text/plain")
            .header("logstream-source", "agent-1")
            .header("logstream-batch", batch.to_string())
            .body("a\nb\n")
            .send()
    };
    let first: Value = send(1).await.unwrap().json().await.unwrap();
    let again: Value = send(1).await.unwrap().json().await.unwrap();
    assert_eq!(
        (
            first["accepted"].as_u64(),
            again["accepted"].as_u64(),
            again["duplicate"].as_bool()
        ),
        (Some(2), Some(0), Some(true))
    );
    assert_eq!(again["last_seq"], first["last_seq"]);
    let (_, page) = gw.get_json(&token, "/v1/deployments/r/logs").await;
    assert_eq!(page["lines"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn secrets_never_reach_the_store_and_registered_values_are_masked() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    let ghp = "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789";
    gw.push(
        &token,
        "sec",
        &[
            format!("export GITHUB_TOKEN={ghp}"),
            "::add-mask::hunter2-value".into(),
            "echo hunter2-value".into(),
        ],
    )
    .await;
    let r = client()
        .post(format!("{}/v1/deployments/sec/secrets", gw.http))
        .bearer_auth(&token)
        .json(&json!({"values": ["registered-by-api"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.push(
        &token,
        "sec",
        &["token registered-by-api in use".to_owned()],
    )
    .await;
    let short = client()
        .post(format!("{}/v1/deployments/sec/secrets", gw.http))
        .bearer_auth(&token)
        .json(&json!({"values": ["ab"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(short.status(), 400);
    let (_, page) = gw.get_json(&token, "/v1/deployments/sec/logs").await;
    let msgs: Vec<&str> = page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        msgs,
        vec![
            "export GITHUB_TOKEN=****************************************",
            "::add-mask::***",
            "echo *************",
            "token ***************** in use"
        ]
    );
    assert_eq!(page["lines"][0]["redaction"]["github_token"], 1);
    // Not in the segment files either.
    let mut stored = Vec::new();
    for e in walk(tmp.path()) {
        stored.extend(std::fs::read(e).unwrap());
    }
    for secret in [ghp.as_bytes(), b"hunter2-value", b"registered-by-api"] {
        assert!(
            !stored.windows(secret.len()).any(|w| w == secret),
            "{} found on disk",
            String::from_utf8_lossy(secret)
        );
    }
    let m = client()
        .get(format!("{}/metrics", gw.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("logstream_redactions_total{detector=\"github_token\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_gets_429s_and_the_other_tenant_is_unaffected() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Arc::new(
        TestGateway::start_with(tmp.path(), |c| {
            c.tenant_quotas.insert(
                "noisy".into(),
                logstream_gateway::quota::QuotaLimits {
                    ingest_lines_per_sec: 500,
                    ..Default::default()
                },
            );
        })
        .await,
    );
    let noisy = gw.token("noisy", &[Scope::Read, Scope::Write]);
    let calm = gw.token("calm", &[Scope::Read, Scope::Write]);
    let flood = {
        let (gw, noisy) = (gw.clone(), noisy.clone());
        tokio::spawn(async move {
            let (mut accepted, mut refused) = (0u64, 0u64);
            for _ in 0..60 {
                let body: String = (0..100)
                    .map(|i| json!({"message": format!("n{i}")}).to_string() + "\n")
                    .collect();
                let r = client()
                    .post(format!("{}/v1/deployments/flood/logs", gw.http))
                    .bearer_auth(&noisy)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    200 => {
                        accepted += r.json::<Value>().await.unwrap()["accepted"]
                            .as_u64()
                            .unwrap()
                    }
                    429 => {
                        assert!(r.headers().contains_key("retry-after"));
                        let e: Value = r.json().await.unwrap();
                        assert_eq!(e["error"]["code"], "quota_exceeded");
                        assert!(
                            e["error"]["message"]
                                .as_str()
                                .unwrap()
                                .contains("ingest_lines_per_sec")
                        );
                        refused += 1;
                    }
                    s => panic!("unexpected {s}"),
                }
            }
            (accepted, refused)
        })
    };
    for i in 0..20 {
        let r = gw
            .push(&calm, "steady", &lines(&format!("c{i}"), 0..100))
            .await;
        assert_eq!(r["accepted"], 100, "the calm tenant is never refused");
    }
    let (accepted, refused) = flood.await.unwrap();
    assert!(refused > 0, "the flood was limited");
    assert!(accepted >= 500, "a full bucket's worth got through");
    let (_, d) = gw.get_json(&noisy, "/v1/deployments/flood").await;
    assert_eq!(
        d["lines"].as_u64().unwrap(),
        accepted,
        "every accepted line is stored, nothing else"
    );
    let (_, d) = gw.get_json(&calm, "/v1/deployments/steady").await;
    assert_eq!(d["lines"], 2000);
}

#[tokio::test]
async fn tenants_get_their_own_redaction_patterns_and_style() {
    use logstream_gateway::config::{NamedPattern, RedactionConfig};
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(tmp.path(), |c| {
        c.tenant_redaction.insert(
            "acme".into(),
            RedactionConfig {
                style: "label".into(),
                patterns: vec![NamedPattern {
                    name: "ticket".into(),
                    regex: "TICKET-[0-9]{6}".into(),
                }],
                ..RedactionConfig::default()
            },
        );
    })
    .await;
    let acme = gw.rw();
    let beta = gw.token("beta", &[Scope::Read, Scope::Write]);
    let line = "closing TICKET-123456 with AKIAIOSFODNN7EXAMPLE".to_owned();
    gw.push(&acme, "r", std::slice::from_ref(&line)).await;
    gw.push(&beta, "r", &[line]).await;
    let (_, a) = gw.get_json(&acme, "/v1/deployments/r/logs").await;
    let (_, b) = gw.get_json(&beta, "/v1/deployments/r/logs").await;
    assert_eq!(
        a["lines"][0]["message"],
        "closing [REDACTED:ticket] with AKIA[REDACTED:aws_access_key_id]"
    );
    assert_eq!(
        b["lines"][0]["message"],
        "closing TICKET-123456 with AKIA****************"
    );
}

#[test]
fn a_bad_custom_pattern_is_refused_at_start_naming_it() {
    use logstream_gateway::config::{NamedPattern, RedactionConfig};
    let mut c = Config::default();
    c.tenant_redaction.insert(
        "acme".into(),
        RedactionConfig {
            patterns: vec![NamedPattern {
                name: "broken".into(),
                regex: "(".into(),
            }],
            ..RedactionConfig::default()
        },
    );
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.contains("tenant_redaction") && err.contains("broken"),
        "{err}"
    );
}

#[tokio::test]
async fn a_tenant_over_its_stored_bytes_is_refused_at_once_and_others_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(tmp.path(), |c| {
        c.tenant_quotas.insert(
            "small".into(),
            logstream_gateway::quota::QuotaLimits {
                max_stored_bytes: 4096,
                ..Default::default()
            },
        );
    })
    .await;
    let small = gw.token("small", &[Scope::Read, Scope::Write]);
    // Stored bytes are the store's own (compressed segment bytes, from the catalog), not a
    // cached walk of the directories: every push is accepted while the tenant is under
    // its quota, and the first one after it crossed is refused.
    let mut refused = false;
    for i in 0..200 {
        let before = gw.state.store.catalog().tenant_bytes("small");
        let r = gw
            .post_lines(&small, &format!("d{i}"), &lines(&format!("x{i}"), 0..200))
            .await;
        if before < 4096 {
            assert_eq!(r.status(), 200, "push {i} with {before} bytes stored");
            continue;
        }
        assert_eq!(r.status(), 429, "push {i} with {before} bytes stored");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "quota_exceeded", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_stored_bytes"),
            "{v}"
        );
        refused = true;
        break;
    }
    assert!(refused, "never refused");
    // Another tenant is not limited.
    gw.push(&gw.rw(), "big", &lines("y", 0..2000)).await;
}
