//! The log record: one line of one step of one deployment.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Level;

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    #[default]
    Stdout,
    Stderr,
}

impl Stream {
    /// Stable numeric code used by storage formats (0 = stdout, 1 = stderr).
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Stream> {
        match code {
            0 => Some(Stream::Stdout),
            1 => Some(Stream::Stderr),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    pub fn parse(s: &str) -> Option<Stream> {
        match s.to_ascii_lowercase().as_str() {
            "stdout" | "out" => Some(Stream::Stdout),
            "stderr" | "err" => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// What the redaction engine masked in a line: detector name -> number of matches.
/// Never contains the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct RedactionState(pub BTreeMap<String, u32>);

impl RedactionState {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Records `count` more matches of `detector`.
    pub fn add(&mut self, detector: &str, count: u32) {
        *self.0.entry(detector.to_owned()).or_default() += count;
    }
}

/// One line of a deployment's log.
///
/// `tenant` and `deployment` are carried by the enclosing log (store path, API route) and
/// are not repeated in every stored record; `seq` is 0 until the store assigns it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LogRecord {
    /// Position in the deployment's log, dense from 1; assigned by the store.
    pub seq: u64,
    /// When the line was produced, Unix time in nanoseconds.
    pub ts: i64,
    /// Step of the pipeline (a container name, a CI step).
    pub step: String,
    pub stream: Stream,
    pub level: Level,
    /// The line itself, without the trailing newline. ANSI colour codes are kept.
    pub message: String,
    /// Free-form labels (pod, container, node, split markers for lines over 1 MiB).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// What redaction masked in this line.
    #[serde(default, skip_serializing_if = "RedactionState::is_empty")]
    pub redaction: RedactionState,
}

impl LogRecord {
    /// A stdout line with its level detected from the message.
    pub fn new(ts: i64, step: impl Into<String>, message: impl Into<String>) -> LogRecord {
        let message = message.into();
        LogRecord {
            level: Level::detect(&message),
            ts,
            step: step.into(),
            message,
            ..LogRecord::default()
        }
    }
}
