//! Reading, the same for every transport: request parameters to a `Filter` (one
//! builder for HTTP query strings and gRPC messages), cursors, page limits, and store
//! calls moved off the async runtime.

use std::collections::HashMap;
use std::sync::Arc;

use logstream_model::{Cursor, Filter, FilterParams};

use crate::core::{Error, Gateway, Result};
use crate::store::{DeploymentId, DeploymentLog, Direction, StoreError};

/// The filter parameters every reading endpoint takes.
pub const FILTERS: [&str; 6] = ["level", "step", "stream", "since", "until", "q"];

/// `wait=true|false` of a live stream (absent: false).
pub fn wait(q: &HashMap<String, String>) -> Result<bool> {
    match q.get("wait").map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(Error::invalid(
            "invalid_wait",
            format!(
                "wait={v:?}: use wait=true (wait for the deployment's first line) or leave it out"
            ),
        )),
    }
}

/// Parameters shared by history, viewers and export.
pub struct ReadParams {
    pub filter: Filter,
    pub cursor: Option<Cursor>,
    pub limit: usize,
    pub direction: Direction,
    pub tail: Option<usize>,
}

/// Now, in Unix nanoseconds (resolves relative times such as `since=10m`).
pub fn now_ns() -> i64 {
    crate::store::Clock::now(&crate::store::SystemClock)
}

/// The one builder from filter parameters to a `Filter`.
pub fn filter(p: &FilterParams<'_>) -> Result<Filter> {
    Filter::parse(p, now_ns()).map_err(|e| Error::invalid("invalid_filter", e.to_string()))
}

/// Decodes a cursor of deployment `id`.
pub fn cursor(raw: &str, id: &DeploymentId, what: &str) -> Result<Cursor> {
    Cursor::decode(raw, &id.tenant, &id.deployment).map_err(|e| {
        Error::invalid(
            "invalid_cursor",
            if what == "cursor" {
                e.to_string()
            } else {
                format!("{what}: {e}")
            },
        )
    })
}

/// Validates query parameters `q` (only `allowed` ones, plus `access_token`) into read
/// parameters for deployment `id`.
pub fn read_params(
    q: &HashMap<String, String>,
    id: &DeploymentId,
    allowed: &[&str],
) -> Result<ReadParams> {
    for k in q.keys() {
        if !allowed.contains(&k.as_str()) && k != "access_token" {
            return Err(Error::invalid(
                "unknown_parameter",
                format!(
                    "unknown query parameter {k:?}; this endpoint takes {}",
                    allowed.join(", ")
                ),
            ));
        }
    }
    let g = |k: &str| q.get(k).map(String::as_str);
    let filter = filter(&FilterParams {
        level: g("level"),
        step: g("step"),
        stream: g("stream"),
        since: g("since"),
        until: g("until"),
        q: g("q"),
    })?;
    let cursor = match g("cursor").filter(|c| !c.is_empty()) {
        Some(c) => Some(cursor(c, id, "cursor")?),
        None => None,
    };
    let limit = match g("limit") {
        None => 1000,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=5000).contains(&n) => n,
            _ => {
                return Err(Error::invalid(
                    "invalid_limit",
                    format!("limit {l:?} must be a number from 1 to 5000"),
                ));
            }
        },
    };
    let direction = match g("direction") {
        None | Some("forward") => Direction::Forward,
        Some("backward") => Direction::Backward,
        Some(d) => {
            return Err(Error::invalid(
                "invalid_direction",
                format!("direction {d:?} must be forward or backward"),
            ));
        }
    };
    let tail = match g("tail") {
        None => None,
        Some(t) => match t.parse::<usize>() {
            Ok(n) if n <= 100_000 => Some(n),
            _ => {
                return Err(Error::invalid(
                    "invalid_tail",
                    format!("tail {t:?} must be a number from 0 to 100000"),
                ));
            }
        },
    };
    Ok(ReadParams {
        filter,
        cursor,
        limit,
        direction,
        tail,
    })
}

/// History's `at`: a page starting at line number (seq) N, that line included (forward:
/// N and after; backward: N and before). How a viewer opens a deep link or jumps to any
/// point of a long log without walking cursors. Exclusive with `cursor`.
pub fn line_number(q: &HashMap<String, String>, has_cursor: bool) -> Result<Option<u64>> {
    let Some(raw) = q.get("at") else {
        return Ok(None);
    };
    if has_cursor {
        return Err(Error::invalid(
            "invalid_at",
            "at and cursor both given; send one: at=N starts at line N, cursor resumes after a line",
        ));
    }
    match raw.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(Error::invalid(
            "invalid_at",
            format!("at {raw:?} must be a line number, 1 or more"),
        )),
    }
}

/// Runs a store call on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, StoreError> + Send + 'static,
) -> Result<T> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

impl Gateway {
    /// Kafka mode: refuses (retryably) a deployment whose partition this replica does
    /// not serve now.
    pub fn check_owner(&self, id: &DeploymentId) -> Result<()> {
        match &self.kafka {
            Some(k) if !k.serves(id) => {
                let p = k.partition_of(id)?;
                Err(Error::not_owner(&match k.ownership.state(&id.tenant, p) {
                    Some(_) => format!(
                        "this store replica took partition {p} of deployment {} over and is still rebuilding it from Kafka",
                        id.deployment
                    ),
                    None => format!(
                        "partition {p} of deployment {} is owned by another store replica",
                        id.deployment
                    ),
                }))
            }
            _ => Ok(()),
        }
    }

    /// The log of an existing deployment (`deployment_not_found` otherwise).
    /// In Kafka mode only the replica that serves the deployment's partition answers
    /// (`not_owner` otherwise: its copy may be behind).
    pub async fn existing_log(self: &Arc<Self>, id: &DeploymentId) -> Result<Arc<DeploymentLog>> {
        self.check_owner(id)?;
        self.local_log(id).await
    }

    /// [`existing_log`](Self::existing_log) without the Kafka owner check: for a log that
    /// is this store's own (the audit log), never a routed deployment.
    pub async fn local_log(self: &Arc<Self>, id: &DeploymentId) -> Result<Arc<DeploymentLog>> {
        let (s, id) = (self.clone(), id.clone());
        blocking(move || s.store.log(&id, false))
            .await?
            .ok_or_else(Error::deployment_not_found)
    }
}
