//! The MCP handler: one per session (HTTP) or process (stdio). Every tool and resource
//! is a call of the public HTTP API with the caller's credentials.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use logstream_model::config::McpConfig;
use logstream_model::wire::{Deployment, DeploymentList, HistoryPage, Line};
use parking_lot::Mutex;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::*;
use rmcp::service::RequestContext;
use rmcp::{
    ErrorData as McpError, Json, RoleServer, ServerHandler, tool, tool_handler, tool_router,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{Api, ApiError, Credentials, TOO_MANY, TokenSource};
use crate::limits::{Counter, Held};

/// Subscriptions one session may hold, and one token across its sessions.
const MAX_SUBSCRIPTIONS: usize = 64;
/// Pages of the API one answer may read to fill itself (filters over a large log can
/// return short pages: the API stops at its scan budget).
const MAX_PAGES: usize = 4;
/// `wait_for_completion`'s timeout when not given: under the 60 s many clients allow a
/// request (one that sends a progress token gets progress each poll and may wait longer).
const DEFAULT_WAIT_SECS: u64 = 55;
/// Deployments a resources/list names.
const LISTED: usize = 50;

/// What every session of one server shares: the API, the limits and the per-token counts.
pub struct Shared {
    pub api: Api,
    pub config: McpConfig,
    max_wait: Duration,
    notify_interval: Duration,
    sessions: Counter,
    calls: Counter,
    subscriptions: Counter,
}

impl Shared {
    /// `config` must have been validated (`Config::validate`).
    pub fn new(api: Api, config: McpConfig) -> Arc<Shared> {
        Arc::new(Shared {
            api,
            max_wait: config.max_wait(),
            notify_interval: config.notify_interval(),
            config,
            sessions: Counter::default(),
            calls: Counter::default(),
            subscriptions: Counter::default(),
        })
    }
}

/// Who is calling: set by the HTTP layer (in the request's extensions) once the token
/// verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token (its tenant and hash): the key of the per-token limits.
    pub token: String,
    /// The token's tenant and subject: who owns the sessions it opens (a refreshed
    /// token of the same subject goes on using them).
    pub owner: String,
}

/// A session's own state, released when the session ends.
struct Session {
    slot: Mutex<Option<Held>>,
    subscriptions: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// The client's last request: a subscription of a client gone quiet for the idle
    /// timeout stops (its notifications would otherwise keep the session alive).
    last_seen: Mutex<Instant>,
}

impl Default for Session {
    fn default() -> Session {
        Session {
            slot: Mutex::default(),
            subscriptions: Mutex::default(),
            last_seen: Mutex::new(Instant::now()),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for (_, task) in self.subscriptions.lock().drain() {
            task.abort();
        }
    }
}

/// The logstream MCP server.
#[derive(Clone)]
pub struct LogServer {
    shared: Arc<Shared>,
    /// stdio: the CLI's token; HTTP: `None` (each request's own `Authorization`).
    source: Option<Arc<dyn TokenSource>>,
    session: Arc<Session>,
    tool_router: ToolRouter<Self>,
}

/// The error of a per-token limit: JSON-RPC -32029 with `{status: 429, limit}`.
fn over_limit(limit: &str, max: usize, what: &str, fix: &str) -> McpError {
    McpError::new(
        TOO_MANY,
        format!("too many {what} for this token ({limit} = {max}); {fix}"),
        Some(
            json!({"status": 429, "code": "quota_exceeded", "limit": limit, "retry_after_secs": 1}),
        ),
    )
}

fn bad(param: &str, problem: impl std::fmt::Display) -> McpError {
    McpError::invalid_params(
        format!("{param}: {problem}"),
        Some(json!({"status": 400, "code": "invalid_parameter", "parameter": param})),
    )
}

// ---- tool inputs and outputs ----

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Only these statuses, comma-separated: running, succeeded, failed, cancelled,
    /// timed_out, completed (= any but running).
    pub status: Option<String>,
    /// Only deployments with a line or change since: a duration back from now (`90m`,
    /// `2h`, `7d`) or an RFC 3339 time.
    pub since: Option<String>,
    /// Only ids containing this text (case-insensitive).
    pub query: Option<String>,
    /// At most this many, newest first (1-100, default 20).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous answer, for the next page.
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentArgs {
    /// The deployment id (see list_deployments).
    pub deployment: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Older lines: without a cursor, the latest lines.
    #[default]
    Backward,
    /// Newer lines: without a cursor, from the first line.
    Forward,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsArgs {
    /// The deployment id.
    pub deployment: String,
    /// How many lines (default: the server's default_lines, 100; at most max_lines, 1000).
    pub lines: Option<u32>,
    /// Continue from here: an `older_cursor` or `newer_cursor` of a previous answer
    /// (each goes its own way), or a line's `cursor` (then `direction` says which way).
    pub cursor: Option<String>,
    /// `backward` (default without a cursor): the lines before the cursor, or the
    /// latest lines without one. `forward`: the lines after the cursor, or from the first line without one.
    pub direction: Option<Direction>,
    /// Only lines of this level (e.g. error, warn, info).
    pub level: Option<String>,
    /// Only lines of this step.
    pub step: Option<String>,
    /// Only lines containing this text (case-insensitive), or matching it when `regex`.
    pub grep: Option<String>,
    /// `grep` is a regular expression (Rust syntax), used as written.
    pub regex: Option<bool>,
}

/// Lines of one deployment, oldest first, with cursors to go on either way.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LogsPage {
    pub deployment: String,
    /// The deployment's status when read: running, succeeded, failed, cancelled, timed_out.
    pub status: String,
    /// Oldest first.
    pub lines: Vec<Line>,
    /// Pass as `cursor` with direction backward for the lines before these; absent
    /// when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub older_cursor: Option<String>,
    /// Pass as `cursor` with direction forward for the lines after these (also once
    /// more have arrived).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newer_cursor: Option<String>,
    /// No older lines (matching the filters).
    pub at_start: bool,
    /// No newer lines (matching the filters) when read.
    pub at_end: bool,
    /// The answer stopped early at the server's bytes-per-result limit; the cursors go on
    /// from the last line included.
    pub truncated: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    /// Text to find (case-insensitive), or a regular expression when `regex`.
    pub query: String,
    /// `query` is a regular expression (Rust syntax), used as written.
    pub regex: Option<bool>,
    /// Only lines since: a duration back from now (`2h`, `7d`) or an RFC 3339 time.
    pub since: Option<String>,
    /// Only lines until: a duration back from now or an RFC 3339 time.
    pub until: Option<String>,
    /// Only deployments of these statuses (comma-separated, see list_deployments).
    pub status: Option<String>,
    /// Only deployments whose id contains this text.
    pub deployments: Option<String>,
    /// At most this many matching lines (default 50, at most max_lines).
    pub limit: Option<u32>,
}

/// A matching line and its deployment.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Match {
    pub deployment: String,
    #[serde(flatten)]
    pub line: Line,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SearchResult {
    /// Newest deployments first; within one, newest lines first.
    pub matches: Vec<Match>,
    /// Deployments looked through.
    pub deployments_searched: usize,
    /// More matches (or deployments) exist than this answer holds: narrow the search
    /// (since, deployments, status) or raise limit.
    pub truncated: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitArgs {
    /// The deployment id.
    pub deployment: String,
    /// Seconds to wait at most (default 55; at most the server's max_wait, 600). Progress
    /// is sent each second to a client that asks for it (a progress token).
    pub timeout_secs: Option<u64>,
    /// Error lines to return (default 20, at most 200).
    pub error_lines: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WaitResult {
    pub deployment: String,
    /// running (if the wait timed out), succeeded, failed, cancelled or timed_out.
    pub status: String,
    pub exit_code: Option<i32>,
    /// It completed (false: the timeout passed first).
    pub completed: bool,
    pub waited_secs: f64,
    /// Lines stored.
    pub lines: u64,
    /// The last lines of level error (or, when none has a level, the last lines that
    /// mention an error, failure, panic or exception), oldest first.
    pub error_lines: Vec<Line>,
}

// ---- the server ----

impl LogServer {
    /// A session's handler over HTTP: each request's `Authorization` is forwarded.
    pub fn for_http(shared: Arc<Shared>) -> LogServer {
        LogServer::new(shared, None)
    }

    /// The stdio server: every call uses `source`'s token.
    pub fn for_stdio(shared: Arc<Shared>, source: Arc<dyn TokenSource>) -> LogServer {
        LogServer::new(shared, Some(source))
    }

    /// The caller's credentials and its key for the per-token limits.
    fn caller(&self, ctx: &RequestContext<RoleServer>) -> Result<(Credentials, String), McpError> {
        if let Some(s) = &self.source {
            return Ok((Credentials::Source(s.clone()), "stdio".into()));
        }
        let parts = ctx
            .extensions
            .get::<http::request::Parts>()
            .ok_or_else(|| McpError::internal_error("no HTTP request with this call", None))?;
        let auth = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .or_else(|| parts.headers.get("logstream-authorization"))
            .cloned()
            .ok_or_else(|| {
                McpError::new(
                    crate::api::UNAUTHENTICATED,
                    "no token: send Authorization: Bearer <token> with every request",
                    None,
                )
            })?;
        let key = parts
            .extensions
            .get::<Caller>()
            .map(|c| c.token.clone())
            .unwrap_or_default();
        Ok((Credentials::Header(auth), key))
    }

    /// Starts a call: the credentials, and one of the token's `max_calls_per_token`
    /// (held until the returned guard drops).
    fn begin(&self, ctx: &RequestContext<RoleServer>) -> Result<(Credentials, Held), McpError> {
        *self.session.last_seen.lock() = Instant::now();
        let (creds, key) = self.caller(ctx)?;
        let max = self.shared.config.max_calls_per_token;
        let held = self.shared.calls.try_take(&key, max).ok_or_else(|| {
            over_limit(
                "mcp.max_calls_per_token",
                max,
                "calls running at once",
                "wait for one to finish (or cancel it) and retry",
            )
        })?;
        Ok((creds, held))
    }

    async fn deployment(&self, creds: &Credentials, id: &str) -> Result<Deployment, McpError> {
        self.shared
            .api
            .get::<Deployment>(creds, &["v1", "deployments", id], &[])
            .await
            .map_err(|e| e.into_mcp(Some(id)))
    }

    async fn history(
        &self,
        creds: &Credentials,
        id: &str,
        query: &[(&str, String)],
    ) -> Result<HistoryPage, McpError> {
        self.shared
            .api
            .get::<HistoryPage>(creds, &["v1", "deployments", id, "logs"], query)
            .await
            .map_err(|e| history_error(e, id))
    }

    /// `get_logs`: up to `want` lines within the bytes budget, oldest first.
    async fn page(&self, creds: &Credentials, a: &LogsArgs) -> Result<LogsPage, McpError> {
        let cfg = &self.shared.config;
        let want = match a.lines {
            None => cfg.default_lines,
            Some(n) if n == 0 || n as usize > cfg.max_lines => {
                return Err(bad(
                    "lines",
                    format!(
                        "{n} is out of range: ask for 1 to {} lines (mcp.max_lines) and page with the cursors for more",
                        cfg.max_lines
                    ),
                ));
            }
            Some(n) => n as usize,
        };
        let (given, implied) = split_cursor(a.cursor.as_deref());
        let direction = a.direction.or(implied).unwrap_or_default();
        let mut filters = Vec::new();
        if let Some(l) = a.level.as_deref().filter(|s| !s.is_empty()) {
            filters.push(("level", l.to_owned()));
        }
        if let Some(s) = a.step.as_deref().filter(|s| !s.is_empty()) {
            filters.push(("step", s.to_owned()));
        }
        if let Some(g) = a.grep.as_deref().filter(|s| !s.is_empty()) {
            filters.push(("q", pattern("grep", g, a.regex.unwrap_or(false))?));
        }
        // One line more than wanted is asked for: whether it came tells whether this
        // answer reaches the start (backward) or the end (forward).
        let query = |have: usize, cursor: &Option<String>| {
            let mut q = filters.clone();
            q.push(("limit", (want - have + 1).min(5000).to_string()));
            if direction == Direction::Backward {
                q.push(("direction", "backward".into()));
            }
            if let Some(c) = cursor {
                q.push(("cursor", c.clone()));
            }
            q
        };
        let mut cursor = given.clone();
        // The status (for the boundaries) and the first page at once. Read in either
        // order: a status read after new lines only makes `at_end` false, never wrong.
        let first = query(0, &cursor);
        let (status, first) = tokio::join!(
            self.deployment(creds, &a.deployment),
            self.history(creds, &a.deployment, &first)
        );
        let status = status?;
        let mut first = Some(first?);
        let mut budget = Budget::new(cfg.max_result_bytes);
        let mut lines: Vec<Line> = Vec::new();
        let mut more = false;
        let mut boundary = false;
        for _ in 0..MAX_PAGES {
            let page = match first.take() {
                Some(p) => p,
                None => {
                    let q = query(lines.len(), &cursor);
                    self.history(creds, &a.deployment, &q).await?
                }
            };
            let got = page.lines.len();
            for l in page.lines {
                if lines.len() == want {
                    more = true;
                    break;
                }
                match budget.take(l) {
                    Some(l) => lines.push(l),
                    None => break,
                }
            }
            if budget.full || more {
                break;
            }
            // An empty page whose cursor did not move: nothing more now (a page that
            // stopped at the API's scan budget moves its cursor on).
            let stuck = got == 0 && cursor.as_deref() == Some(page.next_cursor.as_str());
            cursor = Some(page.next_cursor).filter(|c| !c.is_empty()).or(cursor);
            if page.complete || stuck {
                boundary = true;
                break;
            }
        }
        let truncated = budget.full;
        // Without filters, the deployment's own first and last line say it too (a
        // running deployment's forward page never comes back `complete`).
        let unfiltered = filters.is_empty();
        if !more && !truncated && unfiltered {
            boundary |= match direction {
                Direction::Backward => lines.last().is_some_and(|l| l.seq <= status.first_seq),
                Direction::Forward => lines.last().is_some_and(|l| l.seq >= status.last_seq),
            };
        }
        // Where to go on from: after the last line included when this answer stopped
        // before the API's page did, else the API's own cursor (it may be past lines a
        // filter skipped).
        let go_on = if truncated || more {
            lines.last().map(|l: &Line| l.cursor.clone())
        } else {
            cursor
        };
        let page = match direction {
            Direction::Backward => {
                let newer = lines.first().map(|l| l.cursor.clone()).or(given.clone());
                lines.reverse();
                LogsPage {
                    older_cursor: if boundary { None } else { go_on.map(older) },
                    newer_cursor: newer.map(newer_cursor),
                    at_start: boundary,
                    at_end: given.is_none(),
                    ..LogsPage::new(&a.deployment, status.status, lines, truncated)
                }
            }
            Direction::Forward => LogsPage {
                older_cursor: (lines.first().map(|l| l.cursor.clone()).or(given.clone()))
                    .map(older),
                newer_cursor: go_on.map(newer_cursor),
                at_start: given.is_none(),
                at_end: boundary,
                ..LogsPage::new(&a.deployment, status.status, lines, truncated)
            },
        };
        Ok(page)
    }

    /// The logs resource: the last `default_lines` lines as text and how to page.
    async fn logs_text(&self, creds: &Credentials, id: &str) -> Result<String, McpError> {
        let status = self.deployment(creds, id).await?;
        let page = self
            .page(
                creds,
                &LogsArgs {
                    deployment: id.to_owned(),
                    ..LogsArgs::default()
                },
            )
            .await?;
        let mut out = format!(
            "# deployment {id}: {}, {} lines{}\n",
            status.status,
            status.lines,
            status
                .exit_code
                .map(|c| format!(", exit code {c}"))
                .unwrap_or_default()
        );
        for l in &page.lines {
            let step = if l.step.is_empty() { "-" } else { &l.step };
            out.push_str(&format!("{} [{step}] {}\n", l.seq, l.message));
        }
        match (page.lines.first(), page.lines.last()) {
            (Some(first), Some(last)) => out.push_str(&format!(
                "# lines {}-{} of {}.",
                first.seq, last.seq, status.last_seq
            )),
            _ => out.push_str("# no lines yet."),
        }
        if let Some(older) = &page.older_cursor {
            out.push_str(&format!(
                " Older lines: call get_logs with {{\"deployment\": {id:?}, \"cursor\": {older:?}, \"direction\": \"backward\"}}."
            ));
        }
        if status.status == "running" {
            out.push_str(
                " It is running: subscribe to this resource to hear when lines arrive, or call wait_for_completion.",
            );
        }
        out.push('\n');
        Ok(out)
    }

    /// Follows one subscribed deployment: announces `uri` as updated when its lines or
    /// status change (at most once per `notify_interval`), until it completes.
    fn follow(
        &self,
        uri: String,
        id: String,
        creds: Credentials,
        peer: rmcp::Peer<RoleServer>,
        seen: Deployment,
        slot: Held,
    ) {
        if seen.status != "running" {
            // Completed: nothing more will change (a read shows all of it).
            return;
        }
        let shared = self.shared.clone();
        let session = Arc::downgrade(&self.session);
        let idle = shared.config.session_idle_timeout();
        let key = uri.clone();
        // Held while spawning, so the task's own removal comes after this insert.
        let mut subscriptions = self.session.subscriptions.lock();
        let task = tokio::spawn(async move {
            // Given back when this task ends or is aborted.
            let _slot = slot;
            let mut last = (seen.last_seq, seen.status);
            let mut tick = tokio::time::interval(shared.notify_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            while last.1 == "running" {
                tick.tick().await;
                // The session ended, or its client went quiet: a crashed client's
                // session must be let to expire.
                let quiet = match session.upgrade() {
                    Some(s) => s.last_seen.lock().elapsed() > idle,
                    None => true,
                };
                if quiet || peer.is_transport_closed() {
                    break;
                }
                let now = match shared
                    .api
                    .get::<Deployment>(&creds, &["v1", "deployments", &id], &[])
                    .await
                {
                    Ok(d) => (d.last_seq, d.status),
                    // Gone (retention, deletion): say so once and stop.
                    Err(e) if e.status == 404 => (last.0, "deleted".into()),
                    // The token expired or lost its scope: one last update, so the
                    // client's read shows why, and the client must subscribe again.
                    Err(e) if e.status == 401 || e.status == 403 => (last.0, "refused".into()),
                    Err(_) => continue,
                };
                if now != last {
                    last = now;
                    let sent = peer
                        .notify_resource_updated(ResourceUpdatedNotificationParam::new(uri.clone()))
                        .await;
                    if sent.is_err() {
                        break;
                    }
                }
            }
            if let Some(s) = session.upgrade() {
                s.subscriptions.lock().remove(&uri);
            }
        });
        if let Some(old) = subscriptions.insert(key, task.abort_handle()) {
            old.abort();
        }
    }
}

impl LogsPage {
    fn new(deployment: &str, status: String, lines: Vec<Line>, truncated: bool) -> LogsPage {
        LogsPage {
            deployment: deployment.to_owned(),
            status,
            lines,
            older_cursor: None,
            newer_cursor: None,
            at_start: false,
            at_end: false,
            truncated,
        }
    }
}

/// `get_logs`' cursors say which way they go on: `older:` + the API's cursor, or
/// `newer:` + it (an assistant that forgets `direction` still goes the right way).
fn older(c: String) -> String {
    format!("older:{c}")
}

fn newer_cursor(c: String) -> String {
    format!("newer:{c}")
}

/// The API cursor of a `get_logs` cursor and the direction it implies. A line's own
/// `cursor` (from any answer) is taken as is.
fn split_cursor(c: Option<&str>) -> (Option<String>, Option<Direction>) {
    match c.map(str::trim).filter(|c| !c.is_empty()) {
        None => (None, None),
        Some(c) => match (c.strip_prefix("older:"), c.strip_prefix("newer:")) {
            (Some(api), _) => (Some(api.to_owned()), Some(Direction::Backward)),
            (_, Some(api)) => (Some(api.to_owned()), Some(Direction::Forward)),
            _ => (Some(c.to_owned()), None),
        },
    }
}

/// A history error: a bad cursor names the tool's parameter, a missing deployment the
/// tool to find one.
fn history_error(e: ApiError, id: &str) -> McpError {
    if e.status == 400 && e.code.contains("cursor") {
        return bad(
            "cursor",
            format!(
                "{} (pass an older_cursor or newer_cursor of this deployment's get_logs answers, unchanged)",
                e.message
            ),
        );
    }
    e.into_mcp(Some(id))
}

/// The API's `q` for a text (case-insensitive, literal) or a regular expression.
fn pattern(param: &str, text: &str, is_regex: bool) -> Result<String, McpError> {
    if is_regex {
        regex::Regex::new(text)
            .map_err(|e| bad(param, format!("not a valid regular expression: {e}")))?;
        Ok(text.to_owned())
    } else {
        Ok(format!("(?i){}", regex::escape(text)))
    }
}

/// Bytes of lines one answer may still take.
struct Budget {
    left: usize,
    full: bool,
    first: bool,
}

impl Budget {
    fn new(bytes: usize) -> Budget {
        Budget {
            left: bytes,
            full: false,
            first: true,
        }
    }

    /// The line if it fits (the first line always does, its message cut to fit and
    /// marked with `metadata.mcp_truncated` = its full length in bytes).
    fn take(&mut self, mut l: Line) -> Option<Line> {
        if self.full {
            return None;
        }
        let size = serde_json::to_vec(&l)
            .map(|v| v.len() + 1)
            .unwrap_or(usize::MAX);
        if size <= self.left {
            self.left -= size;
            self.first = false;
            return Some(l);
        }
        self.full = true;
        if !self.first {
            return None;
        }
        self.first = false;
        let keep = (self.left / 2).max(256);
        let full = l.message.len();
        let mut cut = keep.min(full);
        while !l.message.is_char_boundary(cut) {
            cut -= 1;
        }
        l.message.truncate(cut);
        l.metadata.insert("mcp_truncated".into(), full.to_string());
        self.left = 0;
        Some(l)
    }
}

/// `logstream://deployments/{id}` (status) or `.../{id}/logs`.
fn parse_uri(uri: &str) -> Result<(String, bool), McpError> {
    let invalid = || {
        McpError::invalid_params(
            format!(
                "resource {uri:?}: use logstream://deployments/{{id}} or logstream://deployments/{{id}}/logs"
            ),
            Some(json!({"status": 400, "code": "invalid_uri"})),
        )
    };
    let rest = uri
        .strip_prefix("logstream://deployments/")
        .ok_or_else(invalid)?;
    let (id, logs) = match rest.strip_suffix("/logs") {
        Some(id) => (id, true),
        None => (rest, false),
    };
    if id.is_empty() || id.contains('/') {
        return Err(invalid());
    }
    // Not an id any deployment can have: not found, like an unknown one.
    logstream_model::validate_deployment_id(id).map_err(|_| {
        McpError::resource_not_found(
            format!("deployment {id:?} not found: check the id with the list_deployments tool"),
            Some(json!({"status": 404, "code": "deployment_not_found"})),
        )
    })?;
    Ok((id.to_owned(), logs))
}

#[tool_router]
impl LogServer {
    fn new(shared: Arc<Shared>, source: Option<Arc<dyn TokenSource>>) -> LogServer {
        LogServer {
            shared,
            source,
            session: Arc::default(),
            tool_router: Self::tool_router(),
        }
    }

    /// The tenant's deployments (pipelines, CI runs), newest first, with status, exit
    /// code, line counts and step names.
    #[tool(name = "list_deployments", annotations(read_only_hint = true))]
    async fn list_deployments(
        &self,
        Parameters(a): Parameters<ListArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<DeploymentList>, McpError> {
        let (creds, _held) = self.begin(&ctx)?;
        let limit = a.limit.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(bad("limit", format!("{limit} is out of range: 1 to 100")));
        }
        let mut q = vec![("limit", limit.to_string())];
        for (k, v) in [
            ("status", a.status),
            ("since", a.since),
            ("q", a.query),
            ("cursor", a.cursor),
        ] {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                q.push((k, v));
            }
        }
        self.shared
            .api
            .get::<DeploymentList>(&creds, &["v1", "deployments"], &q)
            .await
            .map(Json)
            .map_err(|e| e.into_mcp(None))
    }

    /// One deployment: status (running, succeeded, failed, cancelled, timed_out), exit
    /// code, line count, first and last line, steps.
    #[tool(name = "get_deployment", annotations(read_only_hint = true))]
    async fn get_deployment(
        &self,
        Parameters(a): Parameters<DeploymentArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<Deployment>, McpError> {
        let (creds, _held) = self.begin(&ctx)?;
        self.deployment(&creds, &a.deployment).await.map(Json)
    }

    /// A deployment's log lines, oldest first: by default the latest 100. Filter by
    /// level, step or text (grep); page with older_cursor (direction backward) or
    /// newer_cursor (direction forward). Secrets are already masked.
    #[tool(name = "get_logs", annotations(read_only_hint = true))]
    async fn get_logs(
        &self,
        Parameters(a): Parameters<LogsArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<LogsPage>, McpError> {
        let (creds, _held) = self.begin(&ctx)?;
        self.page(&creds, &a).await.map(Json)
    }

    /// Finds lines containing a text (or matching a regex) across the tenant's recent
    /// deployments, newest first; bounded by limit.
    #[tool(name = "search_logs", annotations(read_only_hint = true))]
    async fn search_logs(
        &self,
        Parameters(a): Parameters<SearchArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SearchResult>, McpError> {
        let (creds, _held) = self.begin(&ctx)?;
        let cfg = &self.shared.config;
        let limit = a.limit.map_or(50.min(cfg.max_lines), |n| n as usize);
        if limit == 0 || limit > cfg.max_lines {
            return Err(bad(
                "limit",
                format!(
                    "{limit} is out of range: 1 to {} (mcp.max_lines)",
                    cfg.max_lines
                ),
            ));
        }
        if a.query.is_empty() {
            return Err(bad("query", "empty: give the text or regex to find"));
        }
        let q = pattern("query", &a.query, a.regex.unwrap_or(false))?;
        let mut list = vec![("limit", cfg.search_deployments.to_string())];
        for (k, v) in [
            ("status", &a.status),
            ("since", &a.since),
            ("q", &a.deployments),
        ] {
            if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                list.push((k, v.clone()));
            }
        }
        let listed = self
            .shared
            .api
            .get::<DeploymentList>(&creds, &["v1", "deployments"], &list)
            .await
            .map_err(|e| e.into_mcp(None))?;
        let mut budget = Budget::new(cfg.max_result_bytes);
        let mut out = SearchResult {
            matches: Vec::new(),
            deployments_searched: 0,
            truncated: listed.next_cursor.is_some(),
        };
        'deployments: for d in &listed.deployments {
            out.deployments_searched += 1;
            let mut cursor: Option<String> = None;
            let mut searched_all = false;
            for _ in 0..MAX_PAGES {
                let mut h = vec![
                    ("q", q.clone()),
                    ("direction", "backward".to_owned()),
                    (
                        "limit",
                        (limit - out.matches.len() + 1).min(5000).to_string(),
                    ),
                ];
                for (k, v) in [("since", &a.since), ("until", &a.until)] {
                    if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                        h.push((k, v.clone()));
                    }
                }
                if let Some(c) = &cursor {
                    h.push(("cursor", c.clone()));
                }
                let page = match self.history(&creds, &d.id, &h).await {
                    Ok(p) => p,
                    // Deleted between the list and the read.
                    Err(e) if e.code == ErrorCode::RESOURCE_NOT_FOUND => continue 'deployments,
                    Err(e) => return Err(e),
                };
                for l in page.lines {
                    if out.matches.len() == limit {
                        out.truncated = true;
                        break 'deployments;
                    }
                    match budget.take(l) {
                        Some(line) => out.matches.push(Match {
                            deployment: d.id.clone(),
                            line,
                        }),
                        None => {
                            out.truncated = true;
                            break 'deployments;
                        }
                    }
                }
                if page.complete
                    || page.next_cursor.is_empty()
                    || cursor.as_deref() == Some(&page.next_cursor)
                {
                    searched_all = true;
                    break;
                }
                cursor = Some(page.next_cursor);
            }
            // A large log not searched to its start within the pages allowed.
            out.truncated |= !searched_all;
        }
        if out.deployments_searched < listed.deployments.len() {
            out.truncated = true;
        }
        Ok(Json(out))
    }

    /// Waits until a deployment completes (or the timeout passes) and returns its status,
    /// exit code and last error lines: what failed.
    #[tool(name = "wait_for_completion", annotations(read_only_hint = true))]
    async fn wait_for_completion(
        &self,
        Parameters(a): Parameters<WaitArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<WaitResult>, McpError> {
        let (creds, _held) = self.begin(&ctx)?;
        let max = self.shared.max_wait;
        let timeout = Duration::from_secs(a.timeout_secs.unwrap_or(DEFAULT_WAIT_SECS));
        if timeout > max {
            return Err(bad(
                "timeout_secs",
                format!(
                    "at most {} (mcp.max_wait); call again to wait longer",
                    max.as_secs()
                ),
            ));
        }
        let n = a.error_lines.unwrap_or(20);
        if n > 200 {
            return Err(bad("error_lines", format!("{n} is out of range: 0 to 200")));
        }
        let start = Instant::now();
        let mut tick =
            tokio::time::interval(self.shared.notify_interval.min(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let progress = ctx.meta.get_progress_token();
        let path = ["v1", "deployments", a.deployment.as_str()];
        let d = loop {
            let read = self.shared.api.get::<Deployment>(&creds, &path, &[]);
            let read = tokio::select! {
                r = read => r,
                () = ctx.ct.cancelled() => return Err(McpError::invalid_request("cancelled", None)),
            };
            match read {
                Ok(d) if d.status != "running" || start.elapsed() >= timeout => break d,
                Ok(d) => {
                    if let Some(token) = &progress {
                        let mut p = ProgressNotificationParam::new(
                            token.clone(),
                            start.elapsed().as_secs_f64().floor(),
                        );
                        p.total = Some(timeout.as_secs_f64());
                        p.message = Some(format!("running, {} lines", d.lines));
                        let _ = ctx.peer.notify_progress(p).await;
                    }
                }
                // A passing refusal (a quota, a restart): keep waiting.
                Err(e) if (e.status == 429 || e.status >= 500) && start.elapsed() < timeout => {}
                Err(e) => return Err(e.into_mcp(Some(&a.deployment))),
            }
            tokio::select! {
                _ = tick.tick() => {}
                () = ctx.ct.cancelled() => return Err(McpError::invalid_request("cancelled", None)),
            }
        };
        let error_lines = if n == 0 {
            Vec::new()
        } else {
            self.error_lines(&creds, &a.deployment, n as usize).await?
        };
        Ok(Json(WaitResult {
            deployment: a.deployment,
            completed: d.status != "running",
            status: d.status,
            exit_code: d.exit_code,
            waited_secs: (start.elapsed().as_millis() as f64) / 1000.0,
            lines: d.lines,
            error_lines,
        }))
    }
}

impl LogServer {
    /// The last `n` lines of level error, else the last that mention a failure.
    async fn error_lines(
        &self,
        creds: &Credentials,
        id: &str,
        n: usize,
    ) -> Result<Vec<Line>, McpError> {
        for filter in [
            ("level", "error".to_owned()),
            ("q", r"(?i)\b(error|errors|failed|failure|fail|fatal|panic|panicked|exception|traceback)\b".to_owned()),
        ] {
            let q = vec![filter, ("direction", "backward".into()), ("limit", n.to_string())];
            let page = self.history(creds, id, &q).await?;
            if !page.lines.is_empty() {
                let mut budget = Budget::new(self.shared.config.max_result_bytes);
                let mut lines: Vec<Line> = page.lines.into_iter().map_while(|l| budget.take(l)).collect();
                lines.reverse();
                return Ok(lines);
            }
        }
        Ok(Vec::new())
    }
}

#[allow(deprecated)] // subscribe/unsubscribe: the initialize lifecycle's (every SDK today)
#[tool_handler(router = self.tool_router)]
impl ServerHandler for LogServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .build(),
        )
        .with_server_info(
            Implementation::new("logstream", env!("CARGO_PKG_VERSION")).with_title("logstream"),
        )
        .with_instructions(
            "logstream stores CI/CD pipelines' and deployments' logs. Start with list_deployments \
             (or search_logs to find a text across them); get_deployment for status and steps; \
             get_logs for lines (latest first page; page with the cursors it returns; filter by \
             level, step or grep); wait_for_completion to wait for a running one and get its error \
             lines. Resources: logstream://deployments/{id} (status JSON) and \
             logstream://deployments/{id}/logs (the latest lines as text; subscribe to follow). \
             Secrets are masked before anything is stored.",
        )
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        if self.source.is_none() {
            let (_, key) = self.caller(&context)?;
            let max = self.shared.config.max_sessions_per_token;
            let slot = self.shared.sessions.try_take(&key, max).ok_or_else(|| {
                over_limit(
                    "mcp.max_sessions_per_token",
                    max,
                    "open MCP sessions",
                    "close sessions you no longer use (HTTP DELETE /mcp with their Mcp-Session-Id) or wait for idle ones to expire",
                )
            })?;
            *self.session.slot.lock() = Some(slot);
        }
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let (creds, _held) = self.begin(&ctx)?;
        let mut q = vec![("limit", LISTED.to_string())];
        if let Some(c) = request.and_then(|r| r.cursor) {
            q.push(("cursor", c));
        }
        let list = self
            .shared
            .api
            .get::<DeploymentList>(&creds, &["v1", "deployments"], &q)
            .await
            .map_err(|e| e.into_mcp(None))?;
        let mut resources = Vec::with_capacity(list.deployments.len() * 2);
        for d in &list.deployments {
            let what = format!(
                "{}, {} lines{}",
                d.status,
                d.lines,
                d.exit_code
                    .map(|c| format!(", exit code {c}"))
                    .unwrap_or_default()
            );
            resources.push(
                Resource::new(
                    format!("logstream://deployments/{}/logs", d.id),
                    format!("{} log", d.id),
                )
                .with_mime_type("text/plain")
                .with_description(format!("The latest lines of {} ({what})", d.id)),
            );
            resources.push(
                Resource::new(
                    format!("logstream://deployments/{}", d.id),
                    format!("{} status", d.id),
                )
                .with_mime_type("application/json")
                .with_description(format!("Status and counts of {} ({what})", d.id)),
            );
        }
        let mut result = ListResourcesResult::with_all_items(resources);
        result.next_cursor = list.next_cursor;
        Ok(result)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("logstream://deployments/{id}/logs", "deployment log")
                .with_mime_type("text/plain")
                .with_description(
                    "The latest lines of a deployment and how to page further (get_logs); subscribe to hear when lines arrive",
                ),
            ResourceTemplate::new("logstream://deployments/{id}", "deployment status")
                .with_mime_type("application/json")
                .with_description("A deployment's status, exit code, counts and steps"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let (id, logs) = parse_uri(&request.uri)?;
        let (creds, _held) = self.begin(&ctx)?;
        let contents = if logs {
            ResourceContents::text(self.logs_text(&creds, &id).await?, request.uri.clone())
                .with_mime_type("text/plain")
        } else {
            let d = self.deployment(&creds, &id).await?;
            let json = serde_json::to_string_pretty(&d)
                .map_err(|e| McpError::internal_error(e.to_string(), None))?;
            ResourceContents::text(json, request.uri.clone()).with_mime_type("application/json")
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let (id, _) = parse_uri(&request.uri)?;
        let (creds, held) = self.begin(&ctx)?;
        if self.session.subscriptions.lock().len() >= MAX_SUBSCRIPTIONS
            && !self.session.subscriptions.lock().contains_key(&request.uri)
        {
            return Err(over_limit(
                "subscriptions per session",
                MAX_SUBSCRIPTIONS,
                "subscriptions in this session",
                "unsubscribe from completed deployments first",
            ));
        }
        let d = self.deployment(&creds, &id).await?;
        drop(held);
        // Across the token's sessions too: each is a status read per notify_interval.
        let (_, key) = self.caller(&ctx)?;
        let max = MAX_SUBSCRIPTIONS;
        let slot = self
            .shared
            .subscriptions
            .try_take(&key, max)
            .ok_or_else(|| {
                over_limit(
                    "subscriptions per token",
                    max,
                    "subscriptions",
                    "unsubscribe from deployments you no longer follow",
                )
            })?;
        self.follow(request.uri, id, creds, ctx.peer.clone(), d, slot);
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        if let Some(task) = self.session.subscriptions.lock().remove(&request.uri) {
            task.abort();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, message: &str) -> Line {
        Line {
            cursor: format!("c{seq}"),
            seq,
            ts: "2026-12-01T00:00:00.000000000Z".into(),
            step: "build".into(),
            stream: "stdout".into(),
            level: "info".into(),
            message: message.into(),
            metadata: Default::default(),
            redaction: Default::default(),
        }
    }

    #[test]
    fn resource_uris_name_a_valid_deployment() {
        assert_eq!(
            parse_uri("logstream://deployments/b-1").unwrap(),
            ("b-1".into(), false)
        );
        assert_eq!(
            parse_uri("logstream://deployments/b-1/logs").unwrap(),
            ("b-1".into(), true)
        );
        for bad in [
            "logstream://deployments/",
            "logstream://deployments/a/b/logs",
            "file:///etc/passwd",
            "logstream://deployments/b-1/status",
        ] {
            let e = parse_uri(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::INVALID_PARAMS, "{bad}");
            assert!(
                e.message.contains("logstream://deployments/{id}/logs"),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn the_budget_stops_at_its_bytes_but_always_gives_a_first_line_cut_to_fit() {
        let mut b = Budget::new(4096);
        let mut n = 0;
        while b.take(line(n, &"x".repeat(500))).is_some() {
            n += 1;
        }
        assert!(b.full && (5..8).contains(&n), "{n}");

        let mut b = Budget::new(4096);
        let big = b.take(line(1, &"é".repeat(10_000))).unwrap();
        assert!(big.message.len() <= 2048, "{}", big.message.len());
        assert_eq!(big.metadata["mcp_truncated"], "20000");
        assert!(b.take(line(2, "small")).is_none());
    }

    #[test]
    fn cursors_of_an_answer_carry_their_direction_and_line_cursors_pass_as_they_are() {
        assert_eq!(split_cursor(None), (None, None));
        assert_eq!(split_cursor(Some(" ")), (None, None));
        assert_eq!(
            split_cursor(Some(&older("abc".into()))),
            (Some("abc".into()), Some(Direction::Backward))
        );
        assert_eq!(
            split_cursor(Some(&newer_cursor("abc".into()))),
            (Some("abc".into()), Some(Direction::Forward))
        );
        assert_eq!(split_cursor(Some("abc")), (Some("abc".into()), None));
    }

    #[test]
    fn grep_text_is_literal_and_case_insensitive_regexes_are_checked() {
        assert_eq!(pattern("grep", "a.b(", false).unwrap(), r"(?i)a\.b\(");
        assert_eq!(pattern("grep", "a.b", true).unwrap(), "a.b");
        let e = pattern("grep", "a(", true).unwrap_err();
        assert!(
            e.message
                .starts_with("grep: not a valid regular expression"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_bad_cursor_names_the_parameter_and_a_missing_deployment_the_tool_to_find_one() {
        let e = history_error(
            ApiError {
                status: 400,
                code: "invalid_cursor".into(),
                message: "cursor is not valid".into(),
                retry_after: None,
            },
            "d",
        );
        assert_eq!(e.code, ErrorCode::INVALID_PARAMS);
        assert!(e.message.starts_with("cursor: "), "{}", e.message);
        let e = history_error(
            ApiError {
                status: 404,
                code: "deployment_not_found".into(),
                message: "no such deployment".into(),
                retry_after: None,
            },
            "d",
        );
        assert_eq!(e.code, ErrorCode::RESOURCE_NOT_FOUND);
        assert!(e.message.contains("list_deployments"), "{}", e.message);
    }
}
