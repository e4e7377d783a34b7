//! Ingest in other tools' protocols: OpenTelemetry logs (OTLP over HTTP and gRPC) and
//! Loki push. Each protocol's request is mapped to lines grouped by deployment, then
//! stored by the one ingest path (`core::ingest::append`: the same quotas, redaction and
//! durable ack as native ingest); each protocol answers in its own form.
//!
//! A request can name several deployments. Groups are stored in the order they first
//! appear, each in its own order. A group the token may not write, or one the store
//! refuses with a final error, is rejected alone (OTLP: partial success; Loki: 400 after
//! the rest is stored). A retryable refusal before anything of the request was stored
//! fails the whole request with the protocol's retryable status, so the client's retry
//! stores every line once; after part of it was stored, the rest is rejected instead
//! (a retry would store the stored part twice: neither protocol carries a batch id).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use crate::auth::{Principal, Scope};
use crate::core::ingest::{self, IngestLine};
use crate::core::{Error, Gateway, access};

pub mod loki;
pub mod otlp;

/// Most metadata entries one line keeps (the first in key order), and the longest key
/// and value kept (a longer key is dropped, a longer value cut on a character boundary).
pub const MAX_METADATA: usize = 32;
pub const MAX_METADATA_KEY: usize = 128;
pub const MAX_METADATA_VALUE: usize = 1024;

/// The lines of one deployment in a request.
#[derive(Debug, Default)]
pub struct Group {
    pub deployment: String,
    pub lines: Vec<IngestLine>,
    /// The protocol's items (OTLP log records, Loki entries) these lines came from.
    pub items: u64,
}

/// A request mapped to groups, with the items that named no deployment.
#[derive(Debug, Default)]
pub struct Mapped {
    pub groups: Vec<Group>,
    index: HashMap<String, usize>,
    pub rejected: Rejected,
    /// Bytes of messages and metadata mapped so far, and the most allowed (0: no limit).
    bytes: usize,
    limit: usize,
    /// The limit was passed: the request is refused whole (413).
    pub over_limit: bool,
}

impl Mapped {
    /// At most `limit` bytes of messages and metadata: a small request whose items
    /// share big resource attributes or labels must not expand without bound.
    pub fn with_limit(limit: usize) -> Mapped {
        Mapped {
            limit,
            ..Mapped::default()
        }
    }

    /// Adds one item's lines to its deployment's group (created on first use).
    pub fn push(&mut self, deployment: &str, lines: Vec<IngestLine>) {
        if self.over_limit {
            return;
        }
        self.bytes += lines.iter().map(line_bytes).sum::<usize>();
        if self.limit > 0 && self.bytes > self.limit {
            self.over_limit = true;
            self.groups.clear();
            self.index.clear();
            return;
        }
        let i = match self.index.get(deployment) {
            Some(i) => *i,
            None => {
                self.groups.push(Group {
                    deployment: deployment.to_owned(),
                    ..Group::default()
                });
                self.index
                    .insert(deployment.to_owned(), self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        let g = &mut self.groups[i];
        g.lines.extend(lines);
        g.items += 1;
    }
}

/// Items refused, with the distinct reasons (the first few).
#[derive(Debug, Default)]
pub struct Rejected {
    pub items: u64,
    reasons: Vec<String>,
}

impl Rejected {
    pub fn add(&mut self, items: u64, reason: String) {
        self.items += items;
        if self.reasons.len() < 4 && !self.reasons.contains(&reason) {
            self.reasons.push(reason);
        }
    }

    /// The reasons joined for an error message (empty when nothing was rejected).
    pub fn message(&self) -> String {
        self.reasons.join("; ")
    }
}

/// What storing a request did.
#[derive(Debug, Default)]
pub struct Stored {
    /// Items whose lines are durable.
    pub items: u64,
    pub rejected: Rejected,
}

/// Stores every group (see the module comment for the failure rules). `Err` only for a
/// refusal of the whole request: a retryable one before anything was stored.
pub async fn store(state: &Arc<Gateway>, p: &Principal, mapped: Mapped) -> Result<Stored, Error> {
    if mapped.over_limit {
        return Err(over_limit(mapped.limit));
    }
    let started = Instant::now();
    let mut out = Stored {
        rejected: mapped.rejected,
        ..Stored::default()
    };
    for g in mapped.groups {
        let id = match access::deployment(p, &g.deployment, Scope::Write) {
            Ok(id) => id,
            Err(e) => {
                out.rejected
                    .add(g.items, format!("deployment {:?}: {e}", g.deployment));
                continue;
            }
        };
        match ingest::append(state, &id, g.lines, None, started).await {
            Ok(_) => out.items += g.items,
            Err(e) if e.retryable() && out.items == 0 => return Err(e),
            Err(e) => out
                .rejected
                .add(g.items, format!("deployment {:?}: {e}", g.deployment)),
        }
    }
    Ok(out)
}

/// The bytes a line holds: its message and its metadata.
pub fn line_bytes(l: &IngestLine) -> usize {
    l.message.len()
        + l.metadata
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

/// The refusal of a request that maps to more than `limit` bytes.
pub fn over_limit(limit: usize) -> Error {
    Error::new(
        crate::core::ErrorKind::TooLarge,
        "body_too_large",
        format!(
            "the request expands to more than {limit} bytes of lines and metadata (4 x max_body_bytes); send smaller batches or fewer attributes"
        ),
    )
}

/// Splits a message into lines (a multi-line body or entry becomes consecutive lines
/// with the same step, level, time and metadata); a trailing newline adds no line.
pub fn lines_of(
    message: &str,
    ts: i64,
    step: &str,
    stream: logstream_model::Stream,
    level: Option<logstream_model::Level>,
    metadata: &BTreeMap<String, String>,
) -> Vec<IngestLine> {
    let message = message.strip_suffix('\n').unwrap_or(message);
    message
        .split('\n')
        .map(|l| IngestLine {
            ts,
            step: step.to_owned(),
            stream,
            level,
            message: l.strip_suffix('\r').unwrap_or(l).to_owned(),
            metadata: metadata.clone(),
        })
        .collect()
}

/// Keeps metadata within the bounds above.
pub fn bounded(entries: impl IntoIterator<Item = (String, String)>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, mut v) in entries {
        if k.is_empty() || k.len() > MAX_METADATA_KEY || out.contains_key(&k) {
            continue;
        }
        if v.len() > MAX_METADATA_VALUE {
            let mut cut = MAX_METADATA_VALUE;
            while !v.is_char_boundary(cut) {
                cut -= 1;
            }
            v.truncate(cut);
            v.push('…');
        }
        out.insert(k, v);
        if out.len() == MAX_METADATA {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_keep_first_appearance_order_and_line_order() {
        let mut m = Mapped::default();
        let md = BTreeMap::new();
        let line = |s: &str| lines_of(s, 0, "", logstream_model::Stream::Stdout, None, &md);
        m.push("b", line("b1"));
        m.push("a", line("a1\na2\n"));
        m.push("b", line("b2"));
        let got: Vec<(String, Vec<String>, u64)> = m
            .groups
            .iter()
            .map(|g| {
                (
                    g.deployment.clone(),
                    g.lines.iter().map(|l| l.message.clone()).collect(),
                    g.items,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("b".into(), vec!["b1".into(), "b2".into()], 2),
                ("a".into(), vec!["a1".into(), "a2".into()], 1),
            ]
        );
    }

    #[test]
    fn metadata_is_bounded_in_count_key_and_value_length() {
        let long = "é".repeat(MAX_METADATA_VALUE);
        let mut entries = vec![
            ("k".repeat(MAX_METADATA_KEY + 1), "dropped".to_owned()),
            ("v".into(), long),
        ];
        entries.extend((0..100).map(|i| (format!("x{i:03}"), i.to_string())));
        let m = bounded(entries);
        assert_eq!(m.len(), MAX_METADATA);
        assert!(!m.contains_key(&"k".repeat(MAX_METADATA_KEY + 1)));
        let v = &m["v"];
        assert!(v.ends_with('…') && v.len() <= MAX_METADATA_VALUE + '…'.len_utf8());
    }

    #[test]
    fn rejections_count_items_and_keep_a_few_distinct_reasons() {
        let mut r = Rejected::default();
        for i in 0..10 {
            r.add(2, format!("reason {}", i % 6));
        }
        assert_eq!(r.items, 20);
        assert_eq!(r.message(), "reason 0; reason 1; reason 2; reason 3");
    }
}
