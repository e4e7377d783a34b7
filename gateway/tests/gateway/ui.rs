//! The web UI's files: served at `/` and `/deployments/{id}` with a strict
//! Content-Security-Policy, revalidated by ETag, and unknown files refused by name. (The
//! page itself is tested in a real browser: `e2e/ui`.)

use logstream_gateway::testkit::{TestGateway, client};

#[tokio::test]
async fn the_ui_is_served_with_a_strict_policy_and_revalidates_by_etag() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let c = client();
    for path in ["/", "/deployments/any-id", "/ui/app.js", "/ui/style.css"] {
        let r = c.get(format!("{}{path}", gw.http)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        let etag = h["etag"].to_str().unwrap().to_owned();
        let ctype = h["content-type"].to_str().unwrap().to_owned();
        let want = if path.ends_with(".js") {
            "text/javascript"
        } else if path.ends_with(".css") {
            "text/css"
        } else {
            "text/html"
        };
        assert!(ctype.starts_with(want), "{path}: {ctype}");
        let again = c
            .get(format!("{}{path}", gw.http))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
    }
    let r = c
        .get(format!("{}/ui/nope.js", gw.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_such_asset");
    // The API keeps its own 404s.
    let r = c
        .get(format!("{}/v2/nothing", gw.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_such_route");
}
