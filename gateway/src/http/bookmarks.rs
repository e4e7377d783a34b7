//! Bookmarks (issue 24): named cursors per token subject and deployment, so a viewer that
//! reconnects, on any machine, goes on where it stopped (`kubectl logstream logs -f
//! --bookmark NAME`).
//!
//! `PUT/GET/DELETE /v1/deployments/{id}/bookmarks/{name}` (scope `logs:read`). They are
//! kept in the deployment's directory (`bookmarks.json`, replaced atomically), so they
//! go with the deployment at retention or deletion. Setting and deleting are audited
//! (reading is, like any read).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use logstream_model::wire::{self, ErrorBody};
use serde::{Deserialize, Serialize};

use super::{Auth, json_body};
use crate::audit::Need;
use crate::auth::Scope;
use crate::core::{Error, Gateway, Result, access, read};
use crate::store::{DeploymentId, DeploymentLog};

/// Most bookmarks one subject keeps per deployment.
pub const MAX_PER_SUBJECT: usize = 100;

const FILE: &str = "bookmarks.json";

/// The file: subject -> name -> bookmark.
#[derive(Default, Serialize, Deserialize)]
struct Book(BTreeMap<String, BTreeMap<String, Stored>>);

#[derive(Clone, Serialize, Deserialize)]
struct Stored {
    cursor: String,
    seq: u64,
    updated_at: i64,
}

/// One writer at a time per process (the file is replaced whole).
static LOCK: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

fn load(log: &DeploymentLog) -> Result<Book> {
    match std::fs::read(log.dir().join(FILE)) {
        Ok(b) => serde_json::from_slice(&b).map_err(Error::internal),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Book::default()),
        Err(e) => Err(Error::internal(e)),
    }
}

fn save(log: &DeploymentLog, book: &Book) -> Result<()> {
    let tmp = log.dir().join(format!(".{FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(book).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, log.dir().join(FILE))?;
        std::fs::File::open(log.dir())?.sync_all()
    };
    write().map_err(Error::internal)
}

/// Changes the log's bookmarks with `f` and saves them (one writer at a time).
async fn update(
    log: Arc<DeploymentLog>,
    f: impl FnOnce(&mut Book) -> Result<()> + Send + 'static,
) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        let _g = LOCK.lock();
        let mut book = load(&log)?;
        f(&mut book)?;
        save(&log, &book)
    })
    .await
    .map_err(Error::internal)?
}

fn check_name(name: &str) -> Result<()> {
    logstream_model::validate_bookmark_name(name)
        .map_err(|e| Error::invalid("invalid_bookmark_name", e.to_string()))
}

fn not_found(name: &str) -> Error {
    Error::new(
        crate::core::ErrorKind::NotFound,
        "bookmark_not_found",
        format!(
            "no bookmark {name:?} for this token's subject on this deployment; PUT one with {{\"cursor\":\"...\"}}"
        ),
    )
}

fn reply(name: &str, b: &Stored) -> wire::Bookmark {
    wire::Bookmark {
        name: name.to_owned(),
        cursor: b.cursor.clone(),
        seq: b.seq,
        updated_at: logstream_model::time::format_rfc3339(b.updated_at),
    }
}

async fn open(
    s: &Arc<Gateway>,
    p: &crate::auth::Principal,
    id: &str,
    name: &str,
) -> Result<(DeploymentId, Arc<DeploymentLog>)> {
    let lid = access::deployment(p, id, Scope::Read)?;
    check_name(name)?;
    let log = s.existing_log(&lid).await?;
    Ok((lid, log))
}

#[utoipa::path(put, path = "/v1/deployments/{id}/bookmarks/{name}", summary = "Set a bookmark: a named cursor of the token's subject", params(("id" = String, Path), ("name" = String, Path, description = "[A-Za-z0-9][A-Za-z0-9._-]{0,127}")), request_body = wire::BookmarkRequest, responses((status = 200, description = "Stored", body = wire::Bookmark), (status = "default", description = "An error: its code says what was wrong and how to fix it", body = ErrorBody)))]
pub(super) async fn put(
    State(s): State<Arc<Gateway>>,
    Auth(p): Auth,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let (lid, log) = open(&s, &p, &id, &name).await?;
    let req: wire::BookmarkRequest =
        json_body(&s, &headers, body, "{\"cursor\":\"<a line's cursor>\"}").await?;
    let cursor = read::cursor(&req.cursor, &lid, "cursor")?;
    s.audit(
        Need::Accepted,
        "bookmark_set",
        &p.subject,
        &lid.tenant,
        &lid.deployment,
        &format!("{name} at {}", cursor.seq),
        None,
    )
    .await?;
    let subject = p.subject.clone();
    let stored = Stored {
        cursor: req.cursor,
        seq: cursor.seq,
        updated_at: read::now_ns(),
    };
    let (n, b) = (name.clone(), stored.clone());
    update(log, move |book| {
        let mine = book.0.entry(subject).or_default();
        if !mine.contains_key(&n) && mine.len() >= MAX_PER_SUBJECT {
            return Err(Error::invalid(
                "too_many_bookmarks",
                format!("this subject has {MAX_PER_SUBJECT} bookmarks on this deployment; DELETE one first"),
            ));
        }
        mine.insert(n, b);
        Ok(())
    })
    .await?;
    Ok(axum::Json(reply(&name, &stored)).into_response())
}

#[utoipa::path(get, path = "/v1/deployments/{id}/bookmarks/{name}", summary = "Read a bookmark of the token's subject", params(("id" = String, Path), ("name" = String, Path)), responses((status = 200, description = "The bookmark", body = wire::Bookmark), (status = "default", description = "An error (404 bookmark_not_found)", body = ErrorBody)))]
pub(super) async fn get(
    State(s): State<Arc<Gateway>>,
    Auth(p): Auth,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response> {
    let (lid, log) = open(&s, &p, &id, &name).await?;
    s.audit(
        Need::Accepted,
        "bookmark_read",
        &p.subject,
        &lid.tenant,
        &lid.deployment,
        &name,
        None,
    )
    .await?;
    let book = tokio::task::spawn_blocking(move || load(&log))
        .await
        .map_err(Error::internal)??;
    let b = book
        .0
        .get(&p.subject)
        .and_then(|m| m.get(&name))
        .ok_or_else(|| not_found(&name))?;
    Ok(axum::Json(reply(&name, b)).into_response())
}

#[utoipa::path(delete, path = "/v1/deployments/{id}/bookmarks/{name}", summary = "Delete a bookmark of the token's subject", params(("id" = String, Path), ("name" = String, Path)), responses((status = 204, description = "Deleted"), (status = "default", description = "An error (404 bookmark_not_found)", body = ErrorBody)))]
pub(super) async fn del(
    State(s): State<Arc<Gateway>>,
    Auth(p): Auth,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response> {
    let (lid, log) = open(&s, &p, &id, &name).await?;
    s.audit(
        Need::Durable,
        "bookmark_delete",
        &p.subject,
        &lid.tenant,
        &lid.deployment,
        &name,
        None,
    )
    .await?;
    let (subject, n) = (p.subject.clone(), name.clone());
    update(log, move |book| {
        let mine = book.0.get_mut(&subject).ok_or_else(|| not_found(&n))?;
        mine.remove(&n).ok_or_else(|| not_found(&n))?;
        if mine.is_empty() {
            book.0.remove(&subject);
        }
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
