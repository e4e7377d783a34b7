//! The logstream collector: CRI log files on the node -> redaction -> gRPC `Ingest.Push`.
//!
//! ```text
//! /var/log/pods/<ns>_<pod>_<uid>/<container>/N.log ──tail──> parse (cri / docker)
//!     ──> join partials per stream ──> enrich ──> redact ──> batch ──Ingest.Push──> gateway
//!                         checkpoint <── ack ───────────────────────────────┘
//!                         spool (on disk) <── batches the gateway is slow to take
//! ```
//!
//! `parser` and `partial` are pure; `tail` follows one file; `engine` owns discovery,
//! batching and checkpoints; `forward` owns the gRPC stream; `pods` maps pods to
//! deployments and steps; `spool` keeps undelivered batches on disk.

pub mod checkpoint;
pub mod engine;
pub mod forward;
pub mod metrics;
pub mod parser;
pub mod partial;
pub mod pods;
pub mod spool;
pub mod tail;
