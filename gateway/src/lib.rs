//! logstream gateway: ingest, the segment store, live fan-out, and the HTTP/WS/SSE/gRPC
//! API.
//!
//! ```text
//! HTTP POST /logs ─┐                                     ┌─> SSE / WebSocket viewers
//! gRPC Ingest.Push ┼─> ingest ─> store (fsync, chain) ─> hub (one broadcast per
//!                  │            └─ durable ack         │     deployment, bounded)
//!                  └─ token auth                       └─> gRPC Tail.Subscribe
//! ```

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod alerts;
pub mod audit;
pub mod auth;
pub mod cluster;
pub mod compat;
pub mod config;
pub mod core;
pub mod edge;
pub mod grpc;
pub mod http;
pub mod hub;
pub mod kafka;
pub mod mcp;
pub mod metrics;
pub mod objstore;
pub mod quota;
pub mod server;
pub use logstream_store as store;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod ui;
