//! History: paging forward and backward with filters never skips or repeats, export
//! formats round-trip (gzip when accepted), and lines survive a restart.

use logstream_gateway::testkit::{TestGateway, client, lines, seqs};
use serde_json::{Value, json};

#[tokio::test]
async fn history_pages_never_skip_or_repeat_in_both_directions() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    let records: Vec<Value> = (0..300)
        .map(|i| {
            let level = ["info", "warn", "error"][i % 3];
            let step = ["build", "test"][i % 2];
            json!({"message": format!("m{i}"), "level": level, "step": step, "stream": if i % 5 == 0 { "stderr" } else { "stdout" }})
        })
        .collect();
    gw.push_records(&token, "h", &records).await;
    for (query, want) in [
        ("", (1..=300).collect::<Vec<u64>>()),
        (
            "&level=warn%2B&step=test",
            (1..=300)
                .filter(|s| (s - 1) % 3 != 0 && (s - 1) % 2 == 1)
                .collect(),
        ),
        (
            "&stream=stderr",
            (1..=300).filter(|s| (s - 1) % 5 == 0).collect(),
        ),
    ] {
        for direction in ["forward", "backward"] {
            let mut got = Vec::new();
            let mut cursor = String::new();
            loop {
                let (status, page) = gw.get_json(&token, &format!("/v1/deployments/h/logs?limit=7&direction={direction}&cursor={cursor}{query}")).await;
                assert_eq!(status, 200, "{page}");
                got.extend(seqs(page["lines"].as_array().unwrap()));
                cursor = page["next_cursor"].as_str().unwrap().to_owned();
                if page["lines"].as_array().unwrap().is_empty() {
                    break;
                }
            }
            if direction == "backward" {
                got.reverse();
            }
            assert_eq!(got, want, "{direction} {query}");
        }
    }
}

/// `at=N` opens a page at line number N, that line included, in either direction and
/// under a filter (how the web UI opens `#L1234`); with a cursor, or not a line number,
/// it is refused by name.
#[tokio::test]
async fn history_at_a_line_number_starts_there_in_both_directions() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    let records: Vec<Value> = (1..=50)
        .map(|i| json!({"message": format!("m{i}"), "step": if i % 2 == 0 { "even" } else { "odd" }}))
        .collect();
    gw.push_records(&token, "at", &records).await;
    for (query, want) in [
        ("at=20&limit=3", vec![20, 21, 22]),
        ("at=20&limit=3&direction=backward", vec![20, 19, 18]),
        ("at=1&limit=2&direction=backward", vec![1]),
        ("at=49&limit=5", vec![49, 50]),
        ("at=60&limit=5", vec![]),
        ("at=21&limit=2&step=even", vec![22, 24]),
        ("at=21&limit=2&step=even&direction=backward", vec![20, 18]),
    ] {
        let (status, page) = gw
            .get_json(&token, &format!("/v1/deployments/at/logs?{query}"))
            .await;
        assert_eq!(status, 200, "{query}: {page}");
        assert_eq!(seqs(page["lines"].as_array().unwrap()), want, "{query}");
    }
    // A page opened with `at` continues by its `next_cursor` with no gap.
    let (_, page) = gw
        .get_json(&token, "/v1/deployments/at/logs?at=30&limit=2")
        .await;
    let next = page["next_cursor"].as_str().unwrap();
    let (_, page) = gw
        .get_json(
            &token,
            &format!("/v1/deployments/at/logs?cursor={next}&limit=2"),
        )
        .await;
    assert_eq!(seqs(page["lines"].as_array().unwrap()), vec![32, 33]);
    for bad in ["at=0", "at=x", "at=-1", &format!("at=3&cursor={next}")] {
        let (status, body) = gw
            .get_json(&token, &format!("/v1/deployments/at/logs?{bad}"))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_at", "{bad}");
    }
}

#[tokio::test]
async fn export_formats_round_trip_and_gzip_when_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    let msgs = vec![
        "plain".to_owned(),
        "with, comma".into(),
        "with \"quotes\"".into(),
        "ünïcødé ✓".into(),
    ];
    gw.push(&token, "ex", &msgs).await;
    let get = |format: &'static str, gzip: bool| {
        let (gw_http, token) = (gw.http.clone(), token.clone());
        async move {
            let mut req = client()
                .get(format!(
                    "{gw_http}/v1/deployments/ex/export?format={format}"
                ))
                .bearer_auth(token);
            if gzip {
                req = req.header("accept-encoding", "gzip");
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert!(
                r.headers()["content-disposition"]
                    .to_str()
                    .unwrap()
                    .contains("ex.")
            );
            let enc = r
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = r.bytes().await.unwrap().to_vec();
            if gzip {
                assert_eq!(enc.as_deref(), Some("gzip"));
                let mut out = String::new();
                std::io::Read::read_to_string(
                    &mut flate2::read::GzDecoder::new(&body[..]),
                    &mut out,
                )
                .unwrap();
                out
            } else {
                String::from_utf8(body).unwrap()
            }
        }
    };
    let nd = get("ndjson", false).await;
    let (_, hist) = gw.get_json(&token, "/v1/deployments/ex/logs").await;
    let exported: Vec<Value> = nd
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(&exported, hist["lines"].as_array().unwrap());
    assert_eq!(get("ndjson", true).await, nd);
    let csv = get("csv", false).await;
    let mut rdr = csv.split("\r\n");
    assert_eq!(rdr.next(), Some("seq,ts,step,stream,level,message"));
    assert!(csv.contains("\"with, comma\"") && csv.contains("\"with \"\"quotes\"\"\""));
    let text = get("text", true).await;
    let got: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
    assert_eq!(got, msgs);
}

#[tokio::test]
async fn lines_survive_a_restart_between_ingest_and_read() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(tmp.path()).await;
    let token = gw.rw();
    let cursor = gw.push(&token, "rs", &lines("before", 0..100)).await["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    gw.shutdown().await;
    let gw = TestGateway::start(tmp.path()).await;
    let (status, page) = gw.get_json(&token, "/v1/deployments/rs/logs").await;
    assert_eq!(
        status, 200,
        "the token from before the restart still works (same key)"
    );
    assert_eq!(page["lines"].as_array().unwrap().len(), 100);
    gw.push(&token, "rs", &lines("after", 0..5)).await;
    let (_, page) = gw
        .get_json(&token, &format!("/v1/deployments/rs/logs?cursor={cursor}"))
        .await;
    assert_eq!(
        seqs(page["lines"].as_array().unwrap()),
        (101..=105).collect::<Vec<_>>()
    );
}
