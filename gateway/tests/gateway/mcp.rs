//! `/mcp` (issue 22) as a client reaches it: the transport's checks (Host, Origin,
//! token) answer like the rest of the API, the tools read with the caller's token
//! (tenancy, audit), and the per-token limits hold. Real MCP clients (the Python SDK,
//! the Inspector) are run against the binary by `e2e/mcp`.

use logstream_gateway::auth::Scope;
use logstream_gateway::testkit::{McpSession, TestGateway, client, lines};
use serde_json::{Value, json};

fn init_body() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}})
}

async fn raw_initialize(gw: &TestGateway, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut r = client()
        .post(format!("{}/mcp", gw.http))
        .header("accept", "application/json, text/event-stream")
        .json(&init_body());
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let www = resp.headers().get("www-authenticate").cloned();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status == 401 {
        assert_eq!(www.unwrap(), "Bearer");
    }
    (status, body)
}

#[tokio::test]
async fn the_transport_refuses_foreign_hosts_and_origins_and_missing_tokens_in_the_apis_own_form() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    let bearer = format!("Bearer {token}");
    let (status, body) = raw_initialize(&gw, &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let (status, _) = raw_initialize(&gw, &[("authorization", "Bearer not-a-token")]).await;
    assert_eq!(status, 401);
    let (status, body) = raw_initialize(
        &gw,
        &[("authorization", &bearer), ("host", "evil.example:80")],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("host_not_allowed"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mcp.allowed_hosts")
    );
    let (status, body) = raw_initialize(
        &gw,
        &[
            ("authorization", &bearer),
            ("origin", "http://evil.example"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("origin_not_allowed"))
    );
    let (status, _) = raw_initialize(
        &gw,
        &[
            ("authorization", &bearer),
            ("origin", "http://localhost:5173"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    // The proxy-safe header works like Authorization (kubectl's service proxy).
    let (status, _) = raw_initialize(&gw, &[("logstream-authorization", &bearer)]).await;
    assert_eq!(status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn tools_read_with_the_callers_token_tenancy_holds_and_reads_are_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let a = gw.rw();
    let b = gw.token("other", &[Scope::Read]);
    gw.push(&a, "d1", &lines("line", 0..30)).await;

    let mut s = McpSession::open(&gw.http, &a).await.unwrap();
    let page = s
        .call("get_logs", json!({"deployment": "d1", "lines": 5}))
        .await
        .unwrap();
    let seqs: Vec<u64> = page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [26, 27, 28, 29, 30]);
    assert_eq!(
        (page["at_end"].as_bool(), page["at_start"].as_bool()),
        (Some(true), Some(false))
    );
    // Back from the older cursor, then forward from the first page's newest line.
    let older = s
        .call(
            "get_logs",
            json!({"deployment": "d1", "lines": 1000, "cursor": page["older_cursor"]}),
        )
        .await
        .unwrap();
    assert_eq!(older["lines"].as_array().unwrap().len(), 25);
    assert_eq!(older["at_start"], true);
    assert!(older.get("older_cursor").is_none(), "{older}");
    let newer = s
        .call(
            "get_logs",
            json!({"deployment": "d1", "cursor": older["newer_cursor"], "direction": "forward"}),
        )
        .await
        .unwrap();
    assert_eq!(newer["lines"][0]["seq"], 26);
    assert_eq!(newer["lines"].as_array().unwrap().len(), 5);

    let e = s
        .call("get_logs", json!({"deployment": "d1", "lines": 1001}))
        .await
        .unwrap_err();
    assert_eq!(e["code"], -32602);
    assert!(
        e["message"].as_str().unwrap().contains("mcp.max_lines"),
        "{e}"
    );
    let e = s
        .call("get_logs", json!({"deployment": "d1", "cursor": "garbage"}))
        .await
        .unwrap_err();
    assert!(
        e["message"].as_str().unwrap().starts_with("cursor: "),
        "{e}"
    );

    let mut other = McpSession::open(&gw.http, &b).await.unwrap();
    for (tool, args) in [
        ("get_deployment", json!({"deployment": "d1"})),
        ("get_logs", json!({"deployment": "d1"})),
    ] {
        let e = other.call(tool, args).await.unwrap_err();
        assert_eq!(e["code"], -32002, "{tool}: {e}");
        assert!(e["message"].as_str().unwrap().contains("not found"), "{e}");
    }
    let e = other
        .request(
            "resources/read",
            json!({"uri": "logstream://deployments/d1/logs"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e["code"], -32002);
    let listed = other.request("resources/list", json!({})).await.unwrap();
    assert_eq!(listed["resources"], json!([]));

    // The read through MCP is in the audit trail, with the caller's subject.
    let admin = gw.token("acme", &[Scope::Admin]);
    let (status, audit) = gw
        .get_json(&admin, "/v1/audit?action=read&deployment=d1")
        .await;
    assert_eq!(status, 200, "{audit}");
    assert!(audit["events"].as_array().unwrap().len() >= 3, "{audit}");
    gw.shutdown().await;
}

#[tokio::test]
async fn sessions_and_running_calls_per_token_are_bounded_and_name_their_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(tmp.path(), |c| {
        c.mcp.max_sessions_per_token = 2;
        c.mcp.max_calls_per_token = 1;
    })
    .await;
    let a = gw.rw();
    gw.push(&a, "running", &lines("x", 0..3)).await;
    let first = McpSession::open(&gw.http, &a).await.unwrap();
    let mut second = McpSession::open(&gw.http, &a).await.unwrap();
    let e = McpSession::open(&gw.http, &a).await.err().unwrap();
    assert_eq!(e["code"], -32029, "{e}");
    assert_eq!(e["data"]["status"], 429);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("mcp.max_sessions_per_token"),
        "{e}"
    );
    // Another token has its own sessions.
    McpSession::open(&gw.http, &gw.token("acme", &[Scope::Read]))
        .await
        .unwrap();
    first.close().await;
    let mut third = McpSession::open(&gw.http, &a).await.unwrap();

    // One call at a time: a wait holds the only slot, a second call is refused.
    let waiting = tokio::spawn(async move {
        third
            .call(
                "wait_for_completion",
                json!({"deployment": "running", "timeout_secs": 3}),
            )
            .await
    });
    let refused = loop {
        match second
            .call("get_deployment", json!({"deployment": "running"}))
            .await
        {
            Err(e) => break e,
            Ok(_) => tokio::task::yield_now().await,
        }
    };
    assert_eq!(refused["code"], -32029);
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("mcp.max_calls_per_token"),
        "{refused}"
    );
    let waited = waiting.await.unwrap().unwrap();
    assert_eq!(
        (waited["completed"].as_bool(), waited["status"].as_str()),
        (Some(false), Some("running"))
    );
    second
        .call("get_deployment", json!({"deployment": "running"}))
        .await
        .unwrap();
    gw.shutdown().await;
}

#[tokio::test]
async fn a_session_is_used_only_by_its_owners_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let a = gw.rw();
    let s = McpSession::open(&gw.http, &a).await.unwrap();
    let foreign = gw.token("other", &[Scope::Read]);
    for (method, token) in [("POST", &foreign), ("GET", &foreign), ("DELETE", &foreign)] {
        let r = client()
            .request(method.parse().unwrap(), format!("{}/mcp", gw.http))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", s.id())
            .json(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "{method}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "session_not_found", "{method}");
    }
    // A fresh token of the same subject goes on using it.
    let again = gw.token("acme", &[Scope::Read]);
    let r = client()
        .post(format!("{}/mcp", gw.http))
        .bearer_auth(&again)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", s.id())
        .json(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    s.close().await;
    gw.shutdown().await;
}
