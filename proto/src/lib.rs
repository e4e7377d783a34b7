//! `logstream.v1`: the gRPC protocol spoken by collectors, CI agents, stores and edges.
//!
//! ```text
//! collector / agent ──Ingest.Push (batches ⇄ durable acks)──> store
//!                   ──Ingest.Complete──────────────────────> store
//! edge / any client <──Tail.Subscribe (server stream from a cursor)── store
//! ```
//!
//! The code is generated at build time from `proto/logstream.proto` (see `build.rs`).

#![allow(clippy::all, missing_docs)]

/// Generated messages and services of package `logstream.v1`.
pub mod v1 {
    tonic::include_proto!("logstream.v1");
}
