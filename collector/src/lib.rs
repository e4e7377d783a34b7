//! The logstream collector: CRI log files on the node -> redaction -> gRPC `Ingest.Push`.
//!
//! ```text
//! /var/log/pods/<ns>_<pod>_<uid>/<container>/N.log ──tail──> parse CRI ──> enrich
//!     ──> redact ──> batch ──Ingest.Push──> gateway (acks) ──> checkpoint
//! ```
//!
//! Not built yet (issue 8): this crate reserves its place in the workspace.
