//! Ingest, the same for every transport: lines in, durable ack out; and completion.
//!
//! Lines over `max_line_bytes` are split on character boundaries into parts marked
//! `metadata.split = "i/n"` (never dropped, never cut without a marker); a missing level
//! is detected from the text.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use logstream_model::redact::StreamRedactor;
use logstream_model::{Cursor, Level, LogRecord, RedactionState, Stream};

use crate::core::{Error, Gateway, Result};
use crate::store::{BatchId, Completion, DeploymentId, Outcome};

/// One line as a producer sends it.
#[derive(Debug, Clone)]
pub struct IngestLine {
    /// Unix ns; 0 = now.
    pub ts: i64,
    pub step: String,
    pub stream: Stream,
    /// `None` = detect from the message.
    pub level: Option<Level>,
    pub message: String,
    /// Labels kept with the line (OTLP attributes, Loki labels); redacted like the
    /// message.
    pub metadata: BTreeMap<String, String>,
}

/// The durable ack.
#[derive(Debug, Clone)]
pub struct Reply {
    pub accepted: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub cursor: String,
    pub duplicate: bool,
}

/// Splits `message` into parts of at most `max` bytes, on character boundaries.
pub fn split_line(message: &str, max: usize) -> Vec<&str> {
    if message.len() <= max {
        return vec![message];
    }
    let mut parts = Vec::new();
    let mut rest = message;
    while !rest.is_empty() {
        let mut cut = rest.len().min(max);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        parts.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    parts
}

/// Redacts (before splitting, so a secret is never cut in two), detects levels, splits
/// long lines.
fn to_records(
    lines: Vec<IngestLine>,
    max_line: usize,
    redactor: &mut StreamRedactor,
) -> Vec<LogRecord> {
    let mut out = Vec::with_capacity(lines.len());
    for l in lines {
        let mut redaction = RedactionState::default();
        let message = redactor.redact(&l.message, &mut redaction).into_owned();
        let level = l.level.unwrap_or_else(|| Level::detect(&message));
        let metadata: BTreeMap<String, String> = l
            .metadata
            .into_iter()
            .map(|(k, v)| {
                let v = redactor.redact_value(&v, &mut redaction);
                (k, v)
            })
            .collect();
        let parts = split_line(&message, max_line);
        let n = parts.len();
        for (i, part) in parts.into_iter().enumerate() {
            let mut r = LogRecord {
                ts: l.ts,
                step: l.step.clone(),
                stream: l.stream,
                level,
                message: part.to_owned(),
                redaction: redaction.clone(),
                metadata: metadata.clone(),
                ..LogRecord::default()
            };
            if n > 1 {
                r.metadata.insert("split".into(), format!("{}/{n}", i + 1));
            }
            out.push(r);
        }
    }
    out
}

/// Appends `lines` to `id` (creating the deployment on its first line) and returns once
/// they are durable. A refusal is counted by its code (`logstream_ingest_errors_total`),
/// whatever the transport.
pub async fn append(
    state: &Arc<Gateway>,
    id: &DeploymentId,
    lines: Vec<IngestLine>,
    batch: Option<BatchId>,
    started: Instant,
) -> Result<Reply> {
    let r = append_counted(state, id, lines, batch, started).await;
    if let Err(e) = &r {
        state
            .metrics
            .ingest_errors
            .with_label_values(&[e.code])
            .inc();
    }
    r
}

async fn append_counted(
    state: &Arc<Gateway>,
    id: &DeploymentId,
    lines: Vec<IngestLine>,
    batch: Option<BatchId>,
    started: Instant,
) -> Result<Reply> {
    // Quotas first: an over-quota request does no work at all.
    let (lines_n, bytes_n) = (
        lines.len() as u64,
        lines
            .iter()
            .map(|l| crate::compat::line_bytes(l) as u64)
            .sum::<u64>(),
    );
    // Whether this creates a deployment: the catalog knows (in memory, no log opened).
    let catalog = state.store.catalog();
    let new_deployment = catalog.get(&id.tenant, &id.deployment).is_none();
    state
        .quotas
        .check_ingest(
            &id.tenant,
            lines_n,
            bytes_n,
            new_deployment,
            || catalog.tenant_bytes(&id.tenant),
            || catalog.running(&id.tenant),
        )
        .map_err(|q| {
            state.metrics.requests_refused.with_label_values(&[q.quota]).inc();
            // Noise: one record per deployment and quota per interval, with a count.
            state
                .audit
                .noise("ingest_refused", &id.tenant, &id.deployment, q.quota);
            Error::too_many(
                "quota_exceeded",
                format!("tenant {} is over its {} quota ({}); nothing from this request was stored, retry after the Retry-After seconds", id.tenant, q.quota, q.limit),
                q.retry_after.max(std::time::Duration::from_secs(1)),
            )
        })?;
    let records = {
        let redactor = state.stream_redactor(id);
        let mut redactor = redactor.lock();
        to_records(lines, state.config.max_line_bytes, &mut redactor)
    };
    for r in &records {
        for (detector, n) in &r.redaction.0 {
            state
                .metrics
                .redactions
                .with_label_values(&[detector])
                .inc_by(u64::from(*n));
        }
    }
    let outcome = match &state.kafka {
        Some(kafka) => {
            match through_kafka(kafka, id, records, batch, state.store.hooks().clock.now()).await? {
                Some(o) => o,
                None => {
                    state
                        .metrics
                        .ack_latency
                        .observe(started.elapsed().as_secs_f64());
                    return Ok(Reply {
                        accepted: lines_n,
                        first_seq: 0,
                        last_seq: 0,
                        cursor: String::new(),
                        duplicate: false,
                    });
                }
            }
        }
        None => {
            let (s, lid) = (state.clone(), id.clone());
            tokio::task::spawn_blocking(move || {
                let log = s.store.log(&lid, true)?.expect("created");
                log.append(records, batch)
            })
            .await??
        }
    };
    state
        .metrics
        .ack_latency
        .observe(started.elapsed().as_secs_f64());
    if outcome.duplicate {
        state.metrics.ingest_duplicates.inc();
    }
    Ok(Reply {
        accepted: outcome.accepted(),
        first_seq: outcome.first_seq,
        last_seq: outcome.last_seq,
        cursor: Cursor::new(
            &id.tenant,
            &id.deployment,
            outcome.last_seq,
            outcome.last_ts,
        )
        .encode(),
        duplicate: outcome.duplicate,
    })
}

/// Kafka mode: produces the batch (stamped now, so every replica that applies it stores
/// the same times), then waits for this replica's consumer to apply it when it owns the
/// partition. `None`: durable in Kafka, not applied here within `kafka.apply_wait`
/// (the answer then has no seqs and no cursor).
async fn through_kafka(
    kafka: &crate::kafka::Kafka,
    id: &DeploymentId,
    mut records: Vec<LogRecord>,
    batch: Option<BatchId>,
    now: i64,
) -> Result<Option<crate::store::AppendOutcome>> {
    for r in &mut records {
        if r.ts == 0 {
            r.ts = now;
        }
    }
    let (partition, offset) = kafka.produce_lines(id, &records, batch.as_ref()).await?;
    match kafka.applied(&id.tenant, partition, offset).await {
        Some(crate::kafka::Applied::Appended(o)) => Ok(Some(o)),
        Some(crate::kafka::Applied::Failed(e)) => Err(e.into()),
        Some(crate::kafka::Applied::Completed(_)) => unreachable!("lines applied as a completion"),
        None => Ok(None),
    }
}

/// The exit code a completion records: the one given, else 0 for `succeeded` and 1
/// otherwise. The one rule for every transport (gRPC's `exit_code` is `optional`, so
/// "not given" is told apart from 0 there too).
pub fn exit_code(status: Outcome, given: Option<i32>) -> i32 {
    given.unwrap_or(if status == Outcome::Succeeded { 0 } else { 1 })
}

/// Parses a completion status as clients send it.
pub fn parse_status(status: &str) -> Result<Outcome> {
    Outcome::parse(status).ok_or_else(|| {
        Error::invalid(
            "invalid_status",
            format!("status {status:?} is not succeeded, failed, cancelled or timed_out"),
        )
    })
}

/// Completes `id`: seals its log and ends its viewers' sessions.
pub async fn complete(
    state: &Arc<Gateway>,
    id: &DeploymentId,
    status: Outcome,
    exit_code: Option<i32>,
    subject: &str,
) -> Result<Completion> {
    let exit_code = self::exit_code(status, exit_code);
    // Recorded before it takes effect (no completion without its audit record); a
    // completion then refused gets a second record saying why.
    state
        .audit(
            crate::audit::Need::Durable,
            "complete",
            subject,
            &id.tenant,
            &id.deployment,
            &format!("ok: {} ({exit_code})", status.as_str()),
            None,
        )
        .await?;
    let c = match &state.kafka {
        Some(kafka) => {
            let (partition, offset) = kafka.produce_completion(id, status, exit_code).await?;
            match kafka.applied(&id.tenant, partition, offset).await {
                Some(crate::kafka::Applied::Completed(c)) => Ok(c),
                Some(crate::kafka::Applied::Failed(e)) => Err(e),
                Some(crate::kafka::Applied::Appended(_)) => {
                    unreachable!("a completion applied as lines")
                }
                // Durable in Kafka, ordered after every line acknowledged before it; the
                // owner applies it (`last_seq` unknown here: 0).
                None => Ok(Completion {
                    status,
                    exit_code,
                    at: state.store.hooks().clock.now(),
                    last_seq: 0,
                }),
            }
        }
        None => {
            let (s, lid) = (state.clone(), id.clone());
            tokio::task::spawn_blocking(move || {
                let log = s.store.log(&lid, true)?.expect("created");
                log.complete(status, exit_code)
            })
            .await?
        }
    };
    let c = c.inspect_err(|e| {
        state.audit_later(
            "complete",
            subject,
            &id.tenant,
            &id.deployment,
            &format!("refused: {e}"),
        )
    })?;
    state.redaction.lock().remove(id);
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_split_on_char_boundaries_with_markers() {
        let line = "é".repeat(1000); // 2000 bytes
        let parts = split_line(&line, 1001);
        assert_eq!(parts.concat(), line);
        assert!(parts.iter().all(|p| p.len() <= 1001));
        let mut redactor = StreamRedactor::new(std::sync::Arc::new(
            logstream_model::redact::Redactor::builtin(),
        ));
        let recs = to_records(
            vec![IngestLine {
                ts: 0,
                step: "s".into(),
                stream: Stream::Stdout,
                level: None,
                message: line.clone(),
                metadata: Default::default(),
            }],
            1001,
            &mut redactor,
        );
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].metadata["split"], "1/2");
        assert_eq!(recs[1].metadata["split"], "2/2");
    }
}
