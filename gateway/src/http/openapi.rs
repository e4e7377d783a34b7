//! The OpenAPI description served at `/openapi.json`, derived from the handlers'
//! `#[utoipa::path]` attributes and the wire types of `logstream_model::wire` (the same
//! types the handlers serialize), so the document cannot drift from the bodies. The test
//! `openapi_matches_the_served_routes_and_bodies` checks it against the router and real
//! answers.

use std::sync::OnceLock;

use logstream_model::wire;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};

/// Filters every reading endpoint takes.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct FilterQuery {
    /// A level, a list (`warn,error`) or a floor (`warn+`).
    level: Option<String>,
    /// Step name(s), comma-separated.
    step: Option<String>,
    /// `stdout`, `stderr`, or both comma-separated.
    stream: Option<String>,
    /// RFC 3339, a duration ago (`10m`) or Unix seconds.
    since: Option<String>,
    /// RFC 3339, a duration ago (`10m`) or Unix seconds.
    until: Option<String>,
    /// Regular expression matched against the message.
    q: Option<String>,
}

/// History paging.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct PageQuery {
    /// Resume after this cursor (a line's `cursor` or a page's `next_cursor`).
    cursor: Option<String>,
    /// Lines per page, 1 to 5000 (default 1000).
    #[param(minimum = 1, maximum = 5000)]
    limit: Option<u32>,
    /// `forward` (default) or `backward` (newest first).
    direction: Option<String>,
    /// Start at this line number (seq), that line included: forward from it, or backward
    /// from it. Not with `cursor`. How a viewer opens a link to line N.
    #[param(minimum = 1)]
    at: Option<u64>,
}

/// Where a viewer starts.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct StreamQuery {
    /// Resume after this cursor (or send `Last-Event-ID`).
    cursor: Option<String>,
    /// Without a cursor: start with the last N matching lines (0 to 100000).
    #[param(maximum = 100_000)]
    tail: Option<u32>,
    /// The token, for browsers' EventSource (only on GET stream and export).
    access_token: Option<String>,
}

/// Export options.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct ExportQuery {
    /// `text` (default), `ndjson` or `csv`.
    format: Option<String>,
    /// Resume an interrupted export after this line (no CSV header then).
    cursor: Option<String>,
    /// The token, for browser downloads.
    access_token: Option<String>,
}

/// Text ingest options.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct IngestQuery {
    /// For `text/plain` bodies: the step of every line.
    step: Option<String>,
    /// For `text/plain` bodies: `stdout` (default) or `stderr`.
    stream: Option<String>,
}

/// Audit log query.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct AuditQuery {
    /// Only this action (`read`, `export`, `stream_open`, `complete`, ...).
    action: Option<String>,
    /// Only this deployment.
    deployment: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    #[param(minimum = 1, maximum = 5000)]
    limit: Option<u32>,
    direction: Option<String>,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.bearer_format = Some("JWT".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
        components.add_security_scheme(
            "proxySafeBearer",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Logstream-Authorization",
                "`Bearer <token>`, for requests through the Kubernetes API server's service proxy, which strips Authorization.",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "logstream gateway",
        version = "v1",
        description = "Ingest, live tail (SSE/WebSocket), history and export of deployment logs. Tenant comes from the bearer token. Errors: `{\"error\":{\"code\",\"message\"}}`; which codes may be retried is in ARCHITECTURE.md."
    ),
    paths(
        super::list,
        super::changes,
        super::get_one,
        super::ingest_http,
        super::history,
        super::complete,
        super::secrets,
        super::redactions,
        super::delete_one,
        super::stream,
        super::export,
        super::links::create,
        super::links::download,
        super::bookmarks::put,
        super::bookmarks::get,
        super::bookmarks::del,
        super::alerts,
        super::audit_log,
        super::audit_append,
        super::healthz,
        super::readyz,
        super::cluster,
        super::metrics,
        super::openapi,
        crate::compat::otlp::http,
        crate::compat::loki::push,
    ),
    components(schemas(
        wire::AuditRecorded,
        wire::ErrorBody,
        wire::ErrorDetail,
        wire::Line,
        wire::HistoryPage,
        wire::IngestLine,
        wire::IngestReply,
        wire::CompleteRequest,
        wire::Completion,
        wire::Deployment,
        wire::DeploymentList,
        wire::SecretsRequest,
        wire::SecretsReply,
        wire::AuditPage,
        wire::AlertList,
        wire::Alert,
        wire::AlertReceiver,
        wire::RedactionRequest,
        wire::RedactionReply,
        wire::Deleted,
        wire::ExportLinkRequest,
        wire::ExportLink,
        wire::BookmarkRequest,
        wire::Bookmark,
    )),
    modifiers(&Security),
    security(("bearer" = []), ("proxySafeBearer" = []))
)]
struct ApiDoc;

/// The document, rendered once.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("OpenAPI serialises")
    })
}
