//! The logstream collector: CRI log files on the node -> redaction -> gRPC `Ingest.Push`.
//!
//! ```text
//! /var/log/pods/<ns>_<pod>_<uid>/<container>/N.log ──tail──> parse (cri / docker)
//!     ──> join partials per stream ──> enrich ──> redact ──> batch ──Ingest.Push──> gateway
//! ```
//!
//! Built so far: the pure parsers (`parser`) and the partial-line joiner (`partial`).
//! Tailing, checkpoints, pod metadata and forwarding are not built yet (see
//! `docs/status.md`).

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod parser;
pub mod partial;
