//! Audited hotfixes of stored logs: masking leaked bytes in stored lines (the store
//! rewrites the blocks and records the rewrite in the deployment's ledger, so `store
//! verify` still passes and names it) and deleting a whole deployment. Scope
//! `logs:admin`; the request is audited (durably) before it runs and its outcome after.
//! The regex is never recorded anywhere: it may be the secret itself.

use std::sync::Arc;

use logstream_model::wire;
use regex::Regex;

use crate::auth::Principal;
use crate::core::read::blocking;
use crate::core::{Error, Gateway, Result};
use crate::store::{DeploymentId, RedactRequest};

/// What masked bytes become.
pub const REPLACEMENT: &str = "[REDACTED:hotfix]";
/// Longest accepted `reason`, in bytes.
const MAX_REASON: usize = 1024;

/// Checks a redaction request; every problem names the field and the fix.
pub fn parse(b: &wire::RedactionRequest, subject: &str) -> Result<RedactRequest> {
    let bad = |m: String| Error::invalid("invalid_redaction", m);
    let reason = b.reason.trim();
    if reason.is_empty() || reason.len() > MAX_REASON {
        return Err(bad(format!(
            "reason: say why, in 1 to {MAX_REASON} bytes (it is recorded with the rewrite)"
        )));
    }
    let seqs = match b.seqs.as_deref().map(str::trim) {
        None => None,
        Some(s) => {
            let (a, z) = s.split_once('-').unwrap_or((s, s));
            match (a.trim().parse::<u64>(), z.trim().parse::<u64>()) {
                (Ok(a), Ok(z)) if a >= 1 && a <= z => Some((a, z)),
                _ => {
                    return Err(bad(format!(
                        "seqs {s:?}: use A-B with 1 <= A <= B (line numbers, as in cursors and `logs -n`), or A for one line"
                    )));
                }
            }
        }
    };
    let pattern = match b.pattern.as_deref() {
        None => None,
        Some("") => return Err(bad("match: empty; give a regex, or only seqs".into())),
        Some(p) if p.len() > 4096 => {
            return Err(bad("match: longer than 4096 bytes".into()));
        }
        Some(p) => Some(
            regex::RegexBuilder::new(p)
                .size_limit(1 << 20)
                .build()
                // The error text quotes the pattern, which may be the secret itself.
                .map_err(|e| {
                    bad(match e {
                        regex::Error::CompiledTooBig(_) => {
                            "match: the regex is too large; anchor it to the leaked value".into()
                        }
                        _ => "match: not a valid regex (its syntax is Rust's `regex`; the pattern is not repeated here, it may be the secret)".into(),
                    })
                })?,
        ),
    };
    if seqs.is_none() && pattern.is_none() {
        return Err(bad(
            "give seqs (\"A-B\"), match (a regex), or both: with neither nothing would be masked"
                .into(),
        ));
    }
    if pattern.as_ref().is_some_and(|p: &Regex| p.is_match("")) {
        return Err(bad(
            "match: this regex matches the empty string; anchor it to the leaked value".into(),
        ));
    }
    Ok(RedactRequest {
        seqs,
        pattern,
        replacement: REPLACEMENT.into(),
        subject: subject.to_owned(),
        reason: reason.to_owned(),
    })
}

fn describe(req: &RedactRequest) -> String {
    let seqs = match req.seqs {
        Some((a, z)) => format!("seqs {a}-{z}"),
        None => "every line".into(),
    };
    let what = if req.pattern.is_some() {
        "matches of a regex"
    } else {
        "whole lines"
    };
    format!("{what} in {seqs}; reason: {}", req.reason)
}

/// Masks what `req` names in `id`'s stored lines; the edges' windows and the store's
/// live viewers hear of it (`redacted`).
pub async fn redact(
    state: &Arc<Gateway>,
    p: &Principal,
    id: &DeploymentId,
    req: RedactRequest,
) -> Result<wire::RedactionReply> {
    // Kafka mode: the owner's check is existing_log's.
    drop(state.existing_log(id).await?);
    state
        .audit(
            crate::audit::Need::Durable,
            "redact",
            &p.subject,
            &id.tenant,
            &id.deployment,
            &format!("requested: {}", describe(&req)),
            None,
        )
        .await?;
    let (s, lid) = (state.clone(), id.clone());
    let outcome = blocking(move || s.store.redact(&lid, &req)).await;
    match &outcome {
        Ok(o) => {
            let seqs: Vec<String> = o.seqs.iter().map(|(a, z)| format!("{a}-{z}")).collect();
            state.audit_later(
                "redact",
                &p.subject,
                &id.tenant,
                &id.deployment,
                &format!(
                    "ok: {} lines ({}), {} matches, {} blocks rewritten; ledger {}",
                    o.lines,
                    seqs.join(","),
                    o.matches,
                    o.blocks,
                    o.ledger_head
                ),
            );
            if !o.seqs.is_empty() {
                crate::core::links::invalidate(state, id);
                state.hub.redacted(id, &o.seqs);
                state.alerts.redacted(id);
            }
        }
        Err(e) => state.audit_later(
            "redact",
            &p.subject,
            &id.tenant,
            &id.deployment,
            &format!("failed: {}", e.code),
        ),
    }
    let o = outcome?;
    Ok(wire::RedactionReply {
        lines: o.lines,
        matches: o.matches,
        blocks: o.blocks,
        seqs: o.seqs.iter().map(|&(a, z)| [a, z]).collect(),
        ledger_head: o.ledger_head,
    })
}

/// Deletes `id` (every line, its files and objects); its live viewers are ended.
pub async fn delete(
    state: &Arc<Gateway>,
    p: &Principal,
    id: &DeploymentId,
    reason: &str,
) -> Result<()> {
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > MAX_REASON {
        return Err(Error::invalid(
            "invalid_reason",
            format!(
                "reason: say why, in 1 to {MAX_REASON} bytes: DELETE /v1/deployments/{{id}}?reason=..."
            ),
        ));
    }
    // Kafka mode: the owner's check is existing_log's.
    drop(state.existing_log(id).await?);
    state
        .audit(
            crate::audit::Need::Durable,
            "delete",
            &p.subject,
            &id.tenant,
            &id.deployment,
            &format!("requested; reason: {reason}"),
            None,
        )
        .await?;
    let (s, lid) = (state.clone(), id.clone());
    let r = blocking(move || s.store.delete(&lid)).await;
    state.audit_later(
        "delete",
        &p.subject,
        &id.tenant,
        &id.deployment,
        match &r {
            Ok(()) => "ok",
            Err(e) => e.code,
        },
    );
    r?;
    crate::core::links::invalidate(state, id);
    state.hub.deleted(id);
    state.alerts.forget(id);
    state.redaction.lock().remove(id);
    Ok(())
}
