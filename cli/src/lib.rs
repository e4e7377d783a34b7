//! `kubectl logstream`: the viewer and CI agent.
//!
//! Not built yet (issue 10): this crate reserves its place in the workspace.
