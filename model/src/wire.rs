//! The HTTP API's JSON bodies as types, shared by the gateway (which writes them) and
//! the CLI (which reads them), so both sides of the contract in ARCHITECTURE.md are
//! checked by the compiler. Field names and shapes are the contract: change them only
//! with the contract.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::RedactionState;

/// Every error answer: `{"error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// A stable snake_case `code` (see `crate::retry` for which a client may retry) and a
/// message naming the problem and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: &str, message: &str) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: message.to_owned(),
            },
        }
    }
}

/// One stored line as every reading door gives it (history, viewers, NDJSON export).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Line {
    /// Resume after this line (opaque).
    pub cursor: String,
    pub seq: u64,
    /// RFC 3339 with nanoseconds.
    pub ts: String,
    pub step: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub level: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Secrets masked in this line, by detector: how many.
    #[serde(default, skip_serializing_if = "RedactionState::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, u32>))]
    pub redaction: RedactionState,
}

/// `GET /v1/deployments/{id}/logs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryPage {
    pub lines: Vec<Line>,
    pub next_cursor: String,
    /// Nothing more in this direction (and, forward, the deployment has completed).
    pub complete: bool,
}

/// One NDJSON line of `POST /v1/deployments/{id}/logs` (all but `message` optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IngestLine {
    /// RFC 3339, or a Unix time number (seconds, milliseconds or nanoseconds by
    /// magnitude); default: when the gateway receives it.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub ts: Option<serde_json::Value>,
    #[serde(default)]
    pub step: Option<String>,
    /// `stdout` (default) or `stderr`.
    #[serde(default)]
    pub stream: Option<String>,
    /// trace, debug, info, warn, error, fatal; default: detected from the message.
    #[serde(default)]
    pub level: Option<String>,
    pub message: Option<String>,
}

/// `POST /v1/deployments/{id}/secrets` body: values to mask in later lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SecretsRequest {
    /// 1 to 1000 values of 4 to 4096 bytes.
    pub values: Vec<String>,
}

/// `POST /v1/deployments/{id}/secrets` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretsReply {
    pub registered: u64,
}

/// `GET /v1/audit`: the tenant's audit events, paginated like history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditPage {
    /// `{"action","subject","tenant","deployment","result","client","seq","time"}`.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub events: Vec<serde_json::Value>,
    pub next_cursor: String,
    pub complete: bool,
}

/// `POST /v1/audit/events` answer: how many records are now durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditRecorded {
    pub recorded: u64,
}

/// `POST /v1/deployments/{id}/logs`: the durable acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IngestReply {
    pub accepted: u64,
    pub cursor: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The batch (`Logstream-Source` + `Logstream-Batch`) was stored before.
    pub duplicate: bool,
}

/// `POST /v1/deployments/{id}/complete` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    /// `succeeded`, `failed`, `cancelled` or `timed_out`.
    pub status: String,
    /// Default: 0 when succeeded, else 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// How a deployment ended: the completion answer, and the `end` event of viewers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Completion {
    /// `succeeded`, `failed`, `cancelled`, or `timed_out` (nobody completed it and no
    /// line came for the gateway's `deployment_idle_timeout`).
    pub status: String,
    pub exit_code: i32,
    pub last_seq: u64,
}

/// One deployment (`GET /v1/deployments/{id}` and the items of the list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Deployment {
    pub id: String,
    /// `running`, `succeeded`, `failed`, `cancelled` or `timed_out`.
    pub status: String,
    pub exit_code: Option<i32>,
    pub lines: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub bytes: u64,
    pub first_ts: Option<String>,
    pub last_ts: Option<String>,
    pub created_at: String,
    /// The last line's (or change's) store time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    pub completed_at: Option<String>,
    /// Step names in the order of their first line.
    pub steps: Vec<String>,
    /// Live viewers now (only on `GET /v1/deployments/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub viewers: Option<u64>,
}

/// `GET /v1/deployments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DeploymentList {
    /// Newest first.
    pub deployments: Vec<Deployment>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /v1/alerts`: the tenant's log alerts (pending, firing, and resolved within
/// `alerting.resolved_retention`) and how delivery to its receivers goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertList {
    pub alerts: Vec<Alert>,
    pub receivers: Vec<AlertReceiver>,
}

/// One alert: one rule on one deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Alert {
    pub rule: String,
    pub deployment: String,
    /// `pending`, `firing` or `resolved`.
    pub state: String,
    /// `alertname`, `tenant`, `deployment` and the rule's labels.
    pub labels: BTreeMap<String, String>,
    /// The rule's annotations, templates filled in.
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339: since when it is in this state.
    pub since: String,
    /// The condition's value: matching lines in the window, the error ratio, or the
    /// seconds of silence.
    pub value: f64,
}

/// One receiver's delivery record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertReceiver {
    pub name: String,
    /// `alertmanager`, `webhook` or `slack`.
    pub kind: String,
    /// Notices delivered.
    pub sent: u64,
    /// Notices given up on (a 4xx answer, attempts used up, or dropped from a full
    /// queue).
    pub failed: u64,
    /// The last failure: what the receiver answered or why it could not be reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sent_at: Option<String>,
}

/// `POST /v1/deployments/{id}/export-links` (scope `logs:export`): a link to download the
/// export without a token, until it expires. Every field is optional; the filters are
/// those of history and export.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExportLinkRequest {
    /// `text` (default), `ndjson` or `csv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// How long the link works: a duration from 1m to 7d (`168h`). Default `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
}

/// A signed export link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportLink {
    /// The absolute URL (`alerting.external_url`, else the host the client asked for).
    pub url: String,
    /// The same, without scheme and host.
    pub path: String,
    /// RFC 3339.
    pub expires_at: String,
    pub format: String,
}

/// `PUT /v1/deployments/{id}/bookmarks/{name}`: a named position of the token's subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BookmarkRequest {
    /// A line's cursor in this deployment (the last line read).
    pub cursor: String,
}

/// A stored bookmark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Bookmark {
    pub name: String,
    pub cursor: String,
    /// The seq the cursor names.
    pub seq: u64,
    /// RFC 3339.
    pub updated_at: String,
}

/// `POST /v1/deployments/{id}/redactions`: mask leaked bytes in stored lines (scope
/// `logs:admin`). At least one of `seqs` and `match`; `reason` is required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RedactionRequest {
    /// Lines `A-B` (inclusive; `A` alone for one line). Without `match`, their whole
    /// messages are masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seqs: Option<String>,
    /// A regex (Rust syntax) whose matches are masked, in `seqs` or in every line. It is
    /// never stored or logged (it may be the secret itself).
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Why: recorded with the rewrite and in the audit log.
    pub reason: String,
}

/// What a redaction changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RedactionReply {
    /// Lines changed.
    pub lines: u64,
    /// Matches masked (one per line when whole messages were).
    pub matches: u64,
    /// Blocks rewritten.
    pub blocks: u64,
    /// The changed lines, as inclusive `[first, last]` ranges.
    pub seqs: Vec<[u64; 2]>,
    /// BLAKE3 of the deployment's redaction ledger now (also in the audit log).
    pub ledger_head: String,
}

/// `DELETE /v1/deployments/{id}` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deleted {
    pub deployment: String,
    pub deleted: bool,
}
