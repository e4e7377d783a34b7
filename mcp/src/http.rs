//! `/mcp`: MCP's streamable HTTP transport (rmcp's), behind the checks a network door
//! needs: an allowed `Host` and `Origin` (DNS rebinding, cross-site requests), then a
//! valid token (401 before any MCP), on every request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::{HeaderMap, StatusCode, header};
use logstream_model::wire::ErrorBody;
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::server::{Caller, LogServer, Shared};

/// Verifies a request's token: `Ok` names the caller (its token for the limits, its
/// owner for sessions); `Err` is the refusal to send (the gateway's 401).
pub type Authenticate = Arc<
    dyn Fn(HeaderMap, Option<SocketAddr>) -> BoxFuture<'static, Result<Caller, Response>>
        + Send
        + Sync,
>;

#[derive(Clone)]
struct Door {
    shared: Arc<Shared>,
    authenticate: Authenticate,
    sessions: Arc<LocalSessionManager>,
    /// Who opened each session: a session is used only by its owner's tokens (its
    /// stream, its replayed answers, its end), whatever its id.
    owners: Arc<parking_lot::Mutex<Owners>>,
}

#[derive(Default)]
struct Owners {
    by_session: HashMap<String, String>,
    /// Size after the last sweep of ended sessions.
    swept: usize,
}

/// The `/mcp` routes over `shared` (whose API is this gateway's own HTTP listener).
/// `stop` ends the sessions (shutdown).
pub fn router(
    shared: Arc<Shared>,
    authenticate: Authenticate,
    stop: CancellationToken,
) -> axum::Router {
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(shared.config.session_idle_timeout());
    let factory = {
        let shared = shared.clone();
        move || Ok(LogServer::for_http(shared.clone()))
    };
    let config = StreamableHttpServerConfig::default()
        // Checked below, with JSON answers like every other refusal of the gateway.
        .disable_allowed_hosts()
        .with_cancellation_token(stop);
    let sessions = Arc::new(sessions);
    let service = StreamableHttpService::new(factory, sessions.clone(), config);
    let door = Door {
        shared,
        authenticate,
        sessions,
        owners: Arc::default(),
    };
    axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn_with_state(door, guard))
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(ErrorBody::new(code, message))).into_response()
}

async fn guard(State(door): State<Door>, mut req: Request, next: Next) -> Response {
    let cfg = &door.shared.config;
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if !host.is_some_and(|h| host_allowed(&h, &cfg.allowed_hosts)) {
        return refuse(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            "this Host is not one /mcp answers (DNS rebinding protection): add it to mcp.allowed_hosts in the gateway config",
        );
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let ok = origin
            .to_str()
            .is_ok_and(|o| origin_allowed(o, &cfg.allowed_hosts, &cfg.allowed_origins));
        if !ok {
            return refuse(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "requests from this Origin are refused (cross-site protection): add it to mcp.allowed_origins in the gateway config",
            );
        }
    }
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    match (door.authenticate)(req.headers().clone(), client).await {
        Ok(caller) => {
            let session = req
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let Some(id) = &session {
                let owner = door.owners.lock().by_session.get(id).cloned();
                if owner.is_some_and(|o| o != caller.owner) {
                    // Another subject's session: as if it did not exist.
                    return refuse(
                        StatusCode::NOT_FOUND,
                        "session_not_found",
                        "no such MCP session for this token: start one with initialize",
                    );
                }
            }
            let owner = caller.owner.clone();
            req.extensions_mut().insert(caller);
            let delete = req.method() == http::Method::DELETE;
            let mut resp = next.run(req).await;
            if delete && resp.status().is_success() {
                if let Some(id) = &session {
                    door.owners.lock().by_session.remove(id);
                }
                // A session ended (rmcp says 202); clients expect 200 or 204.
                if resp.status() == StatusCode::ACCEPTED {
                    *resp.status_mut() = StatusCode::NO_CONTENT;
                }
            }
            if session.is_none()
                && let Some(id) = resp
                    .headers()
                    .get("mcp-session-id")
                    .and_then(|v| v.to_str().ok())
            {
                door.remember(id.to_owned(), owner).await;
            }
            resp
        }
        Err(mut refused) => {
            if refused.status() == StatusCode::UNAUTHORIZED {
                refused.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
            }
            refused
        }
    }
}

impl Door {
    /// Records a new session's owner; now and then forgets the sessions that ended
    /// (idle ones close without a DELETE).
    async fn remember(&self, id: String, owner: String) {
        let ids = {
            let mut o = self.owners.lock();
            o.by_session.insert(id, owner);
            if o.by_session.len() < 64 || o.by_session.len() < 2 * o.swept {
                return;
            }
            o.by_session.keys().cloned().collect::<Vec<_>>()
        };
        let mut ended = Vec::new();
        for id in ids {
            if !self
                .sessions
                .has_session(&id.as_str().into())
                .await
                .unwrap_or(true)
            {
                ended.push(id);
            }
        }
        let mut o = self.owners.lock();
        for id in ended {
            o.by_session.remove(&id);
        }
        o.swept = o.by_session.len();
    }
}

/// The host part of `host[:port]` (brackets of an IPv6 literal removed) and the port.
fn split_host(hp: &str) -> (&str, Option<&str>) {
    if let Some(rest) = hp.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':')),
            None => (hp, None),
        };
    }
    match hp.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (hp, None),
    }
}

/// Whether `host` (a `Host` value) is allowed: an entry without a port allows the host
/// on any port; with one, that port only. Case-insensitive.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let (h, p) = split_host(host.trim());
    allowed.iter().any(|a| {
        let (ah, ap) = split_host(a.trim());
        // A client leaves the scheme's default port out of Host.
        let port_ok = match (ap, p) {
            (None, _) => true,
            (Some(a), Some(p)) => a == p,
            (Some(a), None) => a == "80" || a == "443",
        };
        ah.eq_ignore_ascii_case(h) && port_ok
    })
}

/// Whether a browser `Origin` is allowed: its host is an allowed host, or it is listed.
pub fn origin_allowed(origin: &str, hosts: &[String], origins: &[String]) -> bool {
    let origin = origin.trim().trim_end_matches('/');
    if origins
        .iter()
        .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    !rest.contains('/') && host_allowed(rest, hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn hosts_match_by_name_and_optionally_port() {
        let allowed = v(&["localhost", "127.0.0.1", "::1", "logs.example.com:443"]);
        for ok in [
            "logs.example.com",
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1:9",
            "[::1]:8080",
            "logs.example.com:443",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for bad in [
            "evil.example",
            "localhost.evil.example",
            "logs.example.com:8443",
            "127.0.0.2:80",
            "",
        ] {
            assert!(!host_allowed(bad, &allowed), "{bad}");
        }
    }

    #[test]
    fn origins_need_an_allowed_host_or_a_listing() {
        let hosts = v(&["localhost", "127.0.0.1"]);
        let origins = v(&["https://ide.example.com"]);
        for ok in [
            "http://localhost:5173",
            "http://127.0.0.1",
            "https://ide.example.com",
        ] {
            assert!(origin_allowed(ok, &hosts, &origins), "{ok}");
        }
        for bad in [
            "http://evil.example",
            "null",
            "https://ide.example.com.evil",
            "file://localhost",
            "http://localhost/x",
        ] {
            assert!(!origin_allowed(bad, &hosts, &origins), "{bad}");
        }
    }
}
