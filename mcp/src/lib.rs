//! logstream's Model Context Protocol server: deployments' logs as resources and tools
//! for assistants and agents (issue 22).
//!
//! - [`http::router`]: `/mcp` on the gateway (streamable HTTP), each request
//!   authenticated by its own Bearer token;
//! - [`serve_stdio`]: the same server on standard input and output, for
//!   `kubectl logstream mcp` (an IDE starts it as a local MCP server).
//!
//! Every tool and resource calls the gateway's public HTTP API with the caller's
//! credentials ([`api::Api`]), so authentication, tenancy, redaction, quotas and audit
//! are the API's own: nothing here can see more than the token can.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use logstream_mcp::{api::{Api, TokenSource}, server::Shared};
//!
//! struct Fixed(String);
//! impl TokenSource for Fixed {
//!     fn token(&self) -> Result<Option<String>, String> { Ok(Some(self.0.clone())) }
//! }
//! let shared = Shared::new(Api::new("http://127.0.0.1:8080")?, Default::default());
//! logstream_mcp::serve_stdio(shared, Arc::new(Fixed("TOKEN".into()))).await?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod http;
mod limits;
pub mod server;

use std::sync::Arc;

use rmcp::ServiceExt;

/// Serves MCP on stdin/stdout until the client closes stdin.
pub async fn serve_stdio(
    shared: Arc<server::Shared>,
    token: Arc<dyn api::TokenSource>,
) -> anyhow::Result<()> {
    let running = server::LogServer::for_stdio(shared, token)
        .serve(rmcp::transport::stdio())
        .await?;
    running.waiting().await?;
    Ok(())
}
