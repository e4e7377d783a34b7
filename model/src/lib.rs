//! logstream's record model: pure logic shared by every component, no I/O, no async.
//!
//! ```text
//! producer line ──Level::detect──> LogRecord ──store assigns seq──> stored record
//!                                      │                                │
//!                               Filter::matches                  Cursor::encode
//!                        (history, live and export alike)   (opaque resume token)
//! ```
//!
//! Everything a viewer can name (a deployment id, a cursor, a level, a filter) is parsed
//! here into a typed value or rejected with a typed error that says what was wrong.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod alert;
pub mod b64;
pub mod config;
mod cursor;
pub mod export;
mod filter;
mod id;
mod level;
mod record;
pub mod redact;
pub mod retry;
pub mod time;
pub mod wire;

pub use cursor::{Cursor, CursorError};
pub use filter::{Filter, FilterError, FilterParams};
pub use id::{IdError, validate_bookmark_name, validate_deployment_id, validate_tenant};
pub use level::{Level, LevelSet, strip_ansi};
pub use record::{LogRecord, RedactionState, Stream};
