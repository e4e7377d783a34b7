//! `/mcp` (issue 22): the MCP server of `logstream-mcp` on this process's HTTP
//! listener. Its tools call this same listener's public API with the caller's token, so
//! every role serves it the way it serves that API (an edge forwards to its store,
//! a Kafka replica to the owner of each deployment).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::response::IntoResponse;
use futures::future::BoxFuture;
use logstream_mcp::api::Api;
use logstream_mcp::server::{Caller, Shared};
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, Principal};
use crate::config::McpConfig;
use crate::core::access;

/// Verifies a token (the gateway's or the edge's authenticator).
pub type Verify = Arc<
    dyn Fn(
            Result<String, AuthError>,
            Option<SocketAddr>,
        ) -> BoxFuture<'static, crate::core::Result<Principal>>
        + Send
        + Sync,
>;

/// The `/mcp` routes, calling the API at `listening` (this process's HTTP listener; an
/// unspecified address is reached on loopback). `None` when `[mcp] enabled = false`.
pub fn routes(
    config: &McpConfig,
    listening: SocketAddr,
    verify: Verify,
    stop: CancellationToken,
) -> anyhow::Result<Option<axum::Router>> {
    if !config.enabled {
        return Ok(None);
    }
    let mut own = listening;
    if own.ip().is_unspecified() {
        own.set_ip(match own {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let shared = Shared::new(Api::new(&format!("http://{own}"))?, config.clone());
    let authenticate: logstream_mcp::http::Authenticate = Arc::new(move |headers, client| {
        let verify = verify.clone();
        Box::pin(async move {
            let token = access::token_from_headers(
                headers
                    .get(axum::http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes()),
                headers
                    .get(access::PROXY_SAFE_AUTHORIZATION)
                    .map(|v| v.as_bytes()),
            )
            .unwrap_or(Err(AuthError::Missing))
            .map(str::to_owned);
            match verify(token, client).await {
                Ok(p) => Ok(Caller {
                    token: format!("{}/{:016x}", p.tenant, p.token_id),
                    owner: format!("{}/{}", p.tenant, p.subject),
                }),
                Err(e) => Err(e.into_response()),
            }
        })
    });
    Ok(Some(logstream_mcp::http::router(
        shared,
        authenticate,
        stop,
    )))
}
