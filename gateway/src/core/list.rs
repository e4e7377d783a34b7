//! Listing a tenant's deployments, from the store's catalog only (no log is opened):
//! newest first, in pages with an opaque cursor, filtered by status, time and id; and
//! the body of one deployment.

use std::collections::HashMap;

use logstream_model::b64;
use logstream_model::wire;

use super::{Error, Gateway, Result};
use crate::auth::Principal;
use crate::store::{ListQuery, LogStats};

/// Query parameters `GET /v1/deployments` takes.
pub const PARAMS: [&str; 5] = ["limit", "cursor", "status", "since", "q"];

/// Statuses a listing can ask for.
pub const STATUSES: [&str; 6] = [
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "timed_out",
    "completed",
];

/// The largest page.
pub const MAX_LIMIT: usize = 1000;

/// One deployment as the API shows it.
pub fn deployment(id: &str, st: &LogStats) -> wire::Deployment {
    let ts = |t: Option<i64>| t.map(logstream_model::time::format_rfc3339);
    wire::Deployment {
        id: id.to_owned(),
        status: st
            .completion
            .map_or("running", |c| c.status.as_str())
            .to_owned(),
        exit_code: st.completion.map(|c| c.exit_code),
        lines: st.lines(),
        first_seq: st.first_seq,
        last_seq: st.last_seq,
        bytes: st.bytes,
        first_ts: ts(st.first_ts),
        last_ts: ts(st.last_ts),
        created_at: logstream_model::time::format_rfc3339(st.created_at),
        updated_at: Some(logstream_model::time::format_rfc3339(st.updated_at)),
        completed_at: st
            .completion
            .map(|c| logstream_model::time::format_rfc3339(c.at)),
        steps: st.steps.clone(),
        viewers: None,
    }
}

fn encode_cursor((created_at, id): &(i64, String)) -> String {
    b64::encode(format!("{created_at}:{id}").as_bytes(), b64::URL_SAFE)
}

fn decode_cursor(raw: &str) -> Option<(i64, String)> {
    let text = String::from_utf8(b64::decode(raw)?).ok()?;
    let (at, id) = text.split_once(':')?;
    logstream_model::validate_deployment_id(id).ok()?;
    Some((at.parse().ok()?, id.to_owned()))
}

/// Parses the listing's query parameters; every bad one is named with its fix.
pub fn params(q: &HashMap<String, String>) -> Result<ListQuery> {
    for k in q.keys() {
        if !PARAMS.contains(&k.as_str()) && k != "access_token" {
            return Err(Error::invalid(
                "unknown_parameter",
                format!(
                    "unknown query parameter {k:?}; this endpoint takes {}",
                    PARAMS.join(", ")
                ),
            ));
        }
    }
    let limit = match q.get("limit") {
        None => 100,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(Error::invalid(
                    "invalid_limit",
                    format!("limit {l:?} must be a number from 1 to {MAX_LIMIT}"),
                ));
            }
        },
    };
    let after = match q.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| {
            Error::invalid(
                "invalid_cursor",
                format!("cursor {c:?} is not one this endpoint gave (pass next_cursor as it came)"),
            )
        })?),
    };
    let mut status = Vec::new();
    for s in q
        .get("status")
        .map(|s| s.split(',').map(str::trim).filter(|s| !s.is_empty()))
        .into_iter()
        .flatten()
    {
        if !STATUSES.contains(&s) {
            return Err(Error::invalid(
                "invalid_status",
                format!("status {s:?} is not one of {}", STATUSES.join(", ")),
            ));
        }
        if s == "completed" {
            status.extend(STATUSES[1..5].iter().map(|s| (*s).to_owned()));
        } else {
            status.push(s.to_owned());
        }
    }
    let since = match q.get("since") {
        None => None,
        Some(s) => Some(
            logstream_model::time::parse_time(s, super::read::now_ns()).ok_or_else(|| {
                Error::invalid(
                    "invalid_since",
                    format!("since {s:?} is neither a duration (10m, 24h) nor an RFC 3339 time"),
                )
            })?,
        ),
    };
    Ok(ListQuery {
        limit,
        after,
        status,
        since,
        q: q.get("q").filter(|s| !s.is_empty()).cloned(),
    })
}

/// A page of the caller's deployments (those its token may see).
pub fn list(state: &Gateway, p: &Principal, q: &ListQuery) -> wire::DeploymentList {
    // Kafka mode: only the deployments this replica serves (its copies of partitions
    // another replica owns now may be behind); the other replicas list theirs.
    let serves = |d: &str| {
        state
            .kafka
            .as_ref()
            .is_none_or(|k| k.serves(&crate::store::DeploymentId::new(&p.tenant, d)))
    };
    let page = state
        .store
        .catalog()
        .list(&p.tenant, q, |d| p.may_access(d) && serves(d));
    wire::DeploymentList {
        deployments: page
            .entries
            .iter()
            .map(|(id, st)| deployment(id, st))
            .collect(),
        next_cursor: page.next.as_ref().map(encode_cursor),
    }
}

/// Kafka mode: one page from the pages every replica gave for the same query (each
/// holds other deployments): newest first, at most `limit`, continuing after the last
/// one taken.
pub fn merge(pages: Vec<wire::DeploymentList>, limit: usize) -> wire::DeploymentList {
    let more = pages.iter().any(|p| p.next_cursor.is_some());
    let key = |d: &wire::Deployment| {
        let at = logstream_model::time::parse_time(&d.created_at, 0).unwrap_or(0);
        (std::cmp::Reverse(at), d.id.clone())
    };
    let mut all: Vec<wire::Deployment> = pages.into_iter().flat_map(|p| p.deployments).collect();
    all.sort_by_cached_key(key);
    // A deployment listed by two replicas (one of them between a rebalance's two
    // halves) once.
    all.dedup_by(|a, b| a.id == b.id);
    let more = more || all.len() > limit;
    all.truncate(limit);
    let next_cursor = match (more, all.last()) {
        (true, Some(last)) => {
            let (std::cmp::Reverse(at), id) = key(last);
            Some(encode_cursor(&(at, id)))
        }
        _ => None,
    };
    wire::DeploymentList {
        deployments: all,
        next_cursor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_pages_merge_newest_first_and_continue_after_the_last_taken() {
        let d = |id: &str, at: i64| wire::Deployment {
            id: id.into(),
            status: "running".into(),
            exit_code: None,
            lines: 0,
            first_seq: 0,
            last_seq: 0,
            bytes: 0,
            first_ts: None,
            last_ts: None,
            created_at: logstream_model::time::format_rfc3339(at),
            updated_at: None,
            completed_at: None,
            steps: vec![],
            viewers: None,
        };
        let a = wire::DeploymentList {
            deployments: vec![d("a3", 30), d("a1", 10)],
            next_cursor: None,
        };
        let b = wire::DeploymentList {
            deployments: vec![d("b4", 40), d("b2", 20)],
            next_cursor: Some("x".into()),
        };
        let m = merge(vec![a, b], 3);
        let ids: Vec<_> = m.deployments.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["b4", "a3", "b2"]);
        assert_eq!(
            decode_cursor(m.next_cursor.as_deref().unwrap()),
            Some((20, "b2".into()))
        );
        let last = merge(
            vec![wire::DeploymentList {
                deployments: vec![d("a1", 10)],
                next_cursor: None,
            }],
            3,
        );
        assert_eq!(last.next_cursor, None);
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let c = (1_700_000_000_123_456_789, "build-42".to_owned());
        assert_eq!(decode_cursor(&encode_cursor(&c)), Some(c));
        assert_eq!(decode_cursor("not a cursor"), None);
        let bad_id = b64::encode(b"12:../etc", b64::URL_SAFE);
        assert_eq!(decode_cursor(&bad_id), None);
    }

    #[test]
    fn bad_parameters_are_named() {
        let q = |k: &str, v: &str| HashMap::from([(k.to_owned(), v.to_owned())]);
        for (k, v, code) in [
            ("limit", "0", "invalid_limit"),
            ("limit", "1001", "invalid_limit"),
            ("cursor", "zz", "invalid_cursor"),
            ("status", "done", "invalid_status"),
            ("since", "yesterday", "invalid_since"),
            ("sort", "asc", "unknown_parameter"),
        ] {
            assert_eq!(params(&q(k, v)).unwrap_err().code, code, "{k}={v}");
        }
        let p = params(&q("status", "completed,running")).unwrap();
        assert_eq!(p.status.len(), 5);
        assert_eq!(params(&HashMap::new()).unwrap().limit, 100);
    }
}
