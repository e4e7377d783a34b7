//! `LogStream` custom resource types (`logstream.dev/v1alpha1`).
//!
//! This crate holds the types the operator reconciles and the collector selects pods
//! with. The types, their schemars schema and the generated CRD YAML arrive with the
//! operator work (issue 9); until then the crate is intentionally empty so the workspace
//! layout of `ARCHITECTURE.md` is in place.
