//! The logstream operator: `LogStream` in, per-tenant gateway objects out.
//!
//! ```text
//! LogStream ──desired()──> StatefulSet(store) + Deployment(edge) + HPA + Services + ...
//!                 └──server-side apply──> API server ──status──> LogStream.status
//! ```
//!
//! Not built yet (issue 9): this crate reserves its place in the workspace.
