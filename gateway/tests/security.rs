//! The security suite: bad tokens of every kind, asymmetric keys and JWKS, odd ids,
//! cross-tenant access through every door, and a flood of failed authentications.
//! Each case expects the exact status and that no stored data changed.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use logstream_gateway::auth::Scope;
use logstream_gateway::config::PublicKeyConfig;
use logstream_gateway::testkit::{TestGateway, loopback_listener};
use serde_json::{Value, json};

fn keys() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(tenant: &str) -> Value {
    json!({"sub": "sec", "tenant": tenant, "scopes": "logs:read logs:write logs:export", "exp": now() + 600, "iat": now()})
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(keys().join(name)).unwrap()
}

async fn status_and_message(g: &TestGateway, token: &str, path: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", g.http))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["message"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test]
async fn every_bad_token_is_refused_with_401_saying_why() {
    let tmp = tempfile::tempdir().unwrap();
    let g = TestGateway::start_with(tmp.path(), |c| {
        c.audience = Some("logstream".into());
        c.public_keys = vec![PublicKeyConfig {
            file: keys().join("rsa.pub"),
            alg: "RS256".into(),
            kid: Some("rsa1".into()),
        }];
    })
    .await;
    let hs = EncodingKey::from_secret(&std::fs::read(tmp.path().join("dev-signing-key")).unwrap());
    let rsa = EncodingKey::from_rsa_pem(&pem("rsa.key")).unwrap();
    let mut good = claims("acme");
    good["aud"] = json!("logstream");
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let b64 = |v: &Value| {
        logstream_model::b64::encode(v.to_string().as_bytes(), logstream_model::b64::URL_SAFE)
    };
    let none_token = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&good)
    );
    // Alg confusion: an HS256 token keyed with the RSA public key's bytes.
    let confused = sign(
        Algorithm::HS256,
        Some("rsa1"),
        &good,
        &EncodingKey::from_secret(&pem("rsa.pub")),
    );
    let cases: Vec<(&str, String, &str)> = vec![
        ("valid HS256", sign(Algorithm::HS256, None, &good, &hs), ""),
        (
            "valid RS256",
            sign(Algorithm::RS256, Some("rsa1"), &good, &rsa),
            "",
        ),
        ("alg none", none_token, "none"),
        (
            "alg confusion HS with the RSA public key",
            confused,
            "signature",
        ),
        (
            "RS256 token naming an unknown kid",
            sign(Algorithm::RS256, Some("other"), &good, &rsa),
            "key id",
        ),
        (
            "expired",
            sign(
                Algorithm::HS256,
                None,
                &with("exp", json!(now() - 3600)),
                &hs,
            ),
            "expired",
        ),
        (
            "not yet valid",
            sign(
                Algorithm::HS256,
                None,
                &with("nbf", json!(now() + 3600)),
                &hs,
            ),
            "not valid yet",
        ),
        (
            "wrong audience",
            sign(Algorithm::HS256, None, &with("aud", json!("other")), &hs),
            "audience",
        ),
        (
            "wrong key",
            sign(
                Algorithm::HS256,
                None,
                &good,
                &EncodingKey::from_secret(b"guess"),
            ),
            "signature",
        ),
        (
            "bad tenant",
            sign(
                Algorithm::HS256,
                None,
                &with("tenant", json!("../etc")),
                &hs,
            ),
            "tenant",
        ),
        (
            "unknown scope",
            sign(
                Algorithm::HS256,
                None,
                &with("scopes", json!("logs:everything")),
                &hs,
            ),
            "scope",
        ),
        ("garbage", "not-a-token".into(), "JWT"),
    ];
    for (name, token, needle) in cases {
        let (status, msg) = status_and_message(&g, &token, "/v1/deployments").await;
        if needle.is_empty() {
            assert_eq!(status, 200, "{name}: {msg}");
        } else {
            assert_eq!(status, 401, "{name}");
            assert!(
                msg.contains(needle),
                "{name}: {msg:?} should mention {needle:?}"
            );
        }
    }
    let r = reqwest::Client::new()
        .get(format!("{}/v1/deployments", g.http))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn es256_eddsa_and_jwks_keys_are_accepted_and_hs256_can_be_turned_off() {
    let tmp = tempfile::tempdir().unwrap();
    // A JWKS with the Ed25519 key under kid "ed1": x is the raw public key, base64url.
    let der = {
        let text = String::from_utf8(pem("ed.pub")).unwrap();
        let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        logstream_model::b64::decode(&b64).unwrap()
    };
    let x = logstream_model::b64::encode(&der[der.len() - 32..], logstream_model::b64::URL_SAFE);
    let jwks = tmp.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "ed1", "use": "sig", "x": x}]}).to_string()).unwrap();
    let g = TestGateway::start_with(tmp.path(), |c| {
        c.accept_hs256 = false;
        c.public_keys = vec![PublicKeyConfig {
            file: keys().join("ec.pub"),
            alg: "ES256".into(),
            kid: None,
        }];
        c.jwks_file = Some(jwks.clone());
    })
    .await;
    let es = sign(
        Algorithm::ES256,
        None,
        &claims("acme"),
        &EncodingKey::from_ec_pem(&pem("ec.key")).unwrap(),
    );
    assert_eq!(status_and_message(&g, &es, "/v1/deployments").await.0, 200);
    let ed = sign(
        Algorithm::EdDSA,
        Some("ed1"),
        &claims("acme"),
        &EncodingKey::from_ed_pem(&pem("ed.key")).unwrap(),
    );
    assert_eq!(
        status_and_message(&g, &ed, "/v1/deployments").await.0,
        200,
        "JWKS key"
    );
    let key = std::fs::read(tmp.path().join("dev-signing-key")).unwrap();
    let hs = sign(
        Algorithm::HS256,
        None,
        &claims("acme"),
        &EncodingKey::from_secret(&key),
    );
    let (status, msg) = status_and_message(&g, &hs, "/v1/deployments").await;
    assert_eq!(status, 401);
    assert!(msg.contains("HS256"), "{msg}");
}

#[tokio::test]
async fn odd_deployment_ids_are_refused_and_nothing_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let g = TestGateway::start(tmp.path()).await;
    let t = g.token_for(
        "acme",
        &[Scope::Read, Scope::Write],
        Duration::from_secs(600),
    );
    let long = "a".repeat(10_000);
    // `..` and `%2e%2e` are dot segments the client resolves (`/v1/deployments/../logs`
    // is `/v1/logs`, the OTLP endpoint); the forms below reach the server as an id.
    for id in [
        "%2E%2E%2Fetc",
        "a%00b",
        "d%C3%A9p",
        ".hidden",
        "-dash",
        long.as_str(),
        "a%2Fb",
        "%20",
    ] {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/deployments/{id}/logs", g.http))
            .bearer_auth(&t)
            .header("content-type", "text/plain")
            .body("x")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert!(status == 400 || status == 404, "{id}: {status}");
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!(body["error"]["code"].is_string(), "{id}: JSON error body");
    }
    let tenants_dir = tmp.path().join("store/tenants");
    assert!(
        std::fs::read_dir(&tenants_dir)
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "nothing was created under {}",
        tenants_dir.display()
    );
}

#[tokio::test]
async fn a_token_for_one_tenant_never_reaches_another_through_any_door() {
    let tmp = tempfile::tempdir().unwrap();
    let g = TestGateway::start(tmp.path()).await;
    let a = g.token_for(
        "acme",
        &[Scope::Read, Scope::Write, Scope::Export, Scope::Admin],
        Duration::from_secs(600),
    );
    let b = g.token_for(
        "beta",
        &[Scope::Read, Scope::Write, Scope::Export, Scope::Admin],
        Duration::from_secs(600),
    );
    let c = reqwest::Client::new();
    let r: Value = c
        .post(format!("{}/v1/deployments/secret-build/logs", g.http))
        .bearer_auth(&a)
        .header("content-type", "text/plain")
        .body("acme only")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cursor = r["cursor"].as_str().unwrap().to_owned();
    for (path, accept) in [
        ("/v1/deployments/secret-build".to_owned(), None),
        ("/v1/deployments/secret-build/logs".to_owned(), None),
        ("/v1/deployments/secret-build/export".to_owned(), None),
        (
            "/v1/deployments/secret-build/stream".to_owned(),
            Some("text/event-stream"),
        ),
        (
            format!("/v1/deployments/secret-build/export?access_token={b}"),
            None,
        ),
    ] {
        let mut req = c.get(format!("{}{path}", g.http));
        if !path.contains("access_token") {
            req = req.bearer_auth(&b);
        }
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    // acme's cursor on beta's deployment of the same name is foreign.
    c.post(format!("{}/v1/deployments/secret-build/logs", g.http))
        .bearer_auth(&b)
        .header("content-type", "text/plain")
        .body("beta")
        .send()
        .await
        .unwrap();
    let r = c
        .get(format!(
            "{}/v1/deployments/secret-build/logs?cursor={cursor}",
            g.http
        ))
        .bearer_auth(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let list: Value = c
        .get(format!("{}/v1/deployments", g.http))
        .bearer_auth(&b)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["deployments"].as_array().unwrap().len(), 1);
    // And over gRPC.
    let channel = g.grpc_channel().await;
    let auth = format!("Bearer {b}");
    let mut tail = logstream_proto::v1::tail_client::TailClient::with_interceptor(
        channel,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut()
                .insert("authorization", auth.parse().unwrap());
            Ok(r)
        },
    );
    let err = tail
        .subscribe(logstream_proto::v1::SubscribeRequest {
            deployment: "secret-build".into(),
            cursor,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "acme's cursor is foreign to beta"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_failed_auths_leave_the_server_responsive_and_memory_flat() {
    let tmp = tempfile::tempdir().unwrap();
    let g = TestGateway::start(tmp.path()).await;
    let good = g.token_for("acme", &[Scope::Read], Duration::from_secs(600));
    let rss = || -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap()
    };
    let c = reqwest::Client::new();
    let flood = |n: usize| {
        let (c, http) = (c.clone(), g.http.clone());
        async move {
            let mut tasks = Vec::new();
            for w in 0..8 {
                let (c, http) = (c.clone(), http.clone());
                tasks.push(tokio::spawn(async move {
                    for i in 0..n / 8 {
                        let r = c
                            .get(format!("{http}/v1/deployments"))
                            .bearer_auth(format!("forged.{w}.{i}"))
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status(), 401);
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    // A first round grows allocator pools and buffers to their working size; a leak
    // would keep growing in the second.
    flood(10_000).await;
    let before = rss();
    flood(10_000).await;
    let grown_kib = rss().saturating_sub(before);
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        c.get(format!("{}/v1/deployments", g.http))
            .bearer_auth(&good)
            .send(),
    )
    .await
    .expect("responsive")
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        grown_kib < 64 * 1024,
        "RSS grew {grown_kib} KiB over 10,000 failed auths"
    );
    assert!(g.state.metrics.auth_failures.get() >= 10_000);
    g.state.audit.flush().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    let g = TestGateway::start_with(tmp.path(), |c| c.header_read_timeout_secs = 1).await;
    let addr = g.http.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Half a request head, then nothing (slowloris).
    slow.write_all(b"GET /v1/deployments HTTP/1.1\r\nHost: x\r\nX-Slow: 1")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "the server closed the connection after the header timeout"
    );
    // A normal client is still served.
    let r = reqwest::Client::new()
        .get(format!("{}/healthz", g.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A local OIDC issuer: discovery document and JWKS over HTTP, counting JWKS fetches.
/// Like the Kubernetes API server it serves them only to a bearer of a token
/// (`ISSUER_READER`).
const ISSUER_READER: &str = "issuer-reader-token";

fn authorized(h: &axum::http::HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {ISSUER_READER}"))
}

async fn oidc_issuer(
    require_token: bool,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = loopback_listener().await;
    let base = format!("http://{}", listener.local_addr().unwrap());
    let fetches = std::sync::Arc::new(AtomicUsize::new(0));
    let jwks = std::fs::read_to_string(keys().join("jwks-rsa.json")).unwrap();
    let (b, f) = (base.clone(), fetches.clone());
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move |h: axum::http::HeaderMap| async move {
                if require_token && !authorized(&h) {
                    return Err(axum::http::StatusCode::UNAUTHORIZED);
                }
                Ok(axum::Json(
                    json!({"issuer": b, "jwks_uri": format!("{b}/openid/v1/jwks")}),
                ))
            }),
        )
        .route(
            "/openid/v1/jwks",
            axum::routing::get(move |h: axum::http::HeaderMap| async move {
                if require_token && !authorized(&h) {
                    return Err(axum::http::StatusCode::UNAUTHORIZED);
                }
                f.fetch_add(1, Ordering::SeqCst);
                Ok(([("content-type", "application/json")], jwks))
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, fetches)
}

#[tokio::test]
async fn kubernetes_service_account_tokens_map_to_their_tenant() {
    use logstream_gateway::config::{SaIssuerConfig, SaMappingConfig};
    let (issuer, fetches) = oidc_issuer(true).await;
    let tmp = tempfile::tempdir().unwrap();
    let iss = issuer.clone();
    let reader_token = tmp.path().join("reader-token");
    std::fs::write(&reader_token, format!("{ISSUER_READER}\n")).unwrap();
    let g = TestGateway::start_with(tmp.path(), move |c| {
        c.service_account_issuers = vec![SaIssuerConfig {
            issuer: iss,
            audience: "logstream".into(),
            jwks_url: None,
            ca_file: None,
            token_file: Some(reader_token),
        }];
        c.service_accounts = vec![SaMappingConfig {
            namespace: "ci".into(),
            name: "runner-*".into(),
            tenant: "acme".into(),
            scopes: vec!["logs:write".into()],
        }];
    })
    .await;
    let rsa = EncodingKey::from_rsa_pem(&pem("rsa.key")).unwrap();
    let sa = |sub: &str, aud: &str, kid: &str| {
        let c = json!({"iss": issuer, "sub": sub, "aud": [aud], "exp": now() + 600, "iat": now(), "kubernetes.io": {"namespace": "ci"}});
        sign(Algorithm::RS256, Some(kid), &c, &rsa)
    };
    let c = reqwest::Client::new();
    let push = |token: String| {
        c.post(format!("{}/v1/deployments/sa-build/logs", g.http))
            .bearer_auth(token)
            .header("content-type", "text/plain")
            .body("from the pod")
            .send()
    };
    let r = push(sa("system:serviceaccount:ci:runner-7", "logstream", "sa1"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    // The line landed in acme's tenant.
    let reader = g.token_for("acme", &[Scope::Read], Duration::from_secs(60));
    assert_eq!(
        status_and_message(&g, &reader, "/v1/deployments/sa-build")
            .await
            .0,
        200
    );
    // Scopes come from the mapping: this account may write, not read.
    assert_eq!(
        status_and_message(
            &g,
            &sa("system:serviceaccount:ci:runner-7", "logstream", "sa1"),
            "/v1/deployments"
        )
        .await
        .0,
        403
    );
    for (token, needle) in [
        (
            sa("system:serviceaccount:ci:deployer", "logstream", "sa1"),
            "not mapped",
        ),
        (
            sa("system:serviceaccount:other:runner-1", "logstream", "sa1"),
            "not mapped",
        ),
        (
            sa("system:serviceaccount:ci:runner-1", "kubernetes", "sa1"),
            "audience",
        ),
        (
            sa(
                "system:serviceaccount:ci:runner-1",
                "logstream",
                "rotated-away",
            ),
            "key id",
        ),
    ] {
        let r = push(token).await.unwrap();
        assert_eq!(r.status(), 401);
        let msg = r.json::<Value>().await.unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
    }
    // Keys were fetched through discovery once; the unknown kid did not refetch within 30 s.
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn tokens_signed_by_keys_at_a_jwks_url_are_accepted() {
    let (issuer, fetches) = oidc_issuer(false).await;
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("{issuer}/openid/v1/jwks");
    let g = TestGateway::start_with(tmp.path(), move |c| c.jwks_url = Some(url)).await;
    let rsa = EncodingKey::from_rsa_pem(&pem("rsa.key")).unwrap();
    let good = sign(Algorithm::RS256, Some("sa1"), &claims("acme"), &rsa);
    assert_eq!(
        status_and_message(&g, &good, "/v1/deployments").await.0,
        200
    );
    assert_eq!(
        status_and_message(&g, &good, "/v1/deployments").await.0,
        200,
        "served from the cache"
    );
    let (status, msg) = status_and_message(
        &g,
        &sign(Algorithm::RS256, Some("nope"), &claims("acme"), &rsa),
        "/v1/deployments",
    )
    .await;
    assert_eq!(status, 401);
    assert!(msg.contains("key id"), "{msg}");
    assert_eq!(
        fetches.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one fetch; the unknown kid is within the 30 s floor"
    );
}
