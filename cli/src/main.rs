//! `kubectl logstream`: the viewer and CI agent of logstream.
//!
//! ```text
//! logs ID [-f] ──GET /logs (history pages)──> print
//!          └─ -f: GET /stream (SSE) ──reconnect with Last-Event-ID──> print ──end──> exit code
//! run -- CMD ──pipes──> batch ──POST /logs (idempotent batches, retried)──> complete ──> exit CMD's code
//! ```
//!
//! Exit codes: 0 success (or the deployment succeeded, with `-f`), 1 the deployment
//! failed, 3 it was cancelled, 5 it timed out (nobody completed it), 2 usage errors and
//! final refusals (an error code the contract says not to retry), 130 interrupted,
//! 4 server/network errors.
//!
//! Retries are decided by the error body's code alone (`logstream_model::retry`); see
//! [`ApiError`].

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod export;
mod hotfix;
mod kube;
mod output;
mod run;
mod style;

use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use logstream_model::wire;
use serde::de::DeserializeOwned;

use crate::output::{Format, Printer};

#[derive(Parser)]
#[command(
    name = "kubectl-logstream",
    bin_name = "kubectl logstream",
    version,
    about = "Tail, query and export logstream deployments; run CI steps that stream their output"
)]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: Command,
}

/// Where the gateway is and who we are.
#[derive(Args, Clone)]
struct Conn {
    /// Gateway URL, e.g. http://127.0.0.1:8080.
    #[arg(long, global = true, env = "LOGSTREAM_SERVER")]
    server: Option<String>,
    /// Bearer token.
    #[arg(long, global = true, env = "LOGSTREAM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the bearer token (re-read on every reconnect, so rotation works).
    #[arg(long, global = true, env = "LOGSTREAM_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Colour output.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    color: style::ColorWhen,
    /// Without --server: the kubeconfig context to use (default: the current one).
    #[arg(long, global = true)]
    context: Option<String>,
    /// Without --server: the namespace of the LogStream (default: the context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Without --server: which LogStream, when the namespace has several.
    #[arg(long, global = true)]
    logstream: Option<String>,
    /// Without --server: the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// Set when the server was found through the kubeconfig.
    #[arg(skip)]
    via_kubeconfig: bool,
    /// Gets the kubeconfig user's token again (exec plugin, token file).
    #[arg(skip)]
    refresh: Option<Refresh>,
}

/// Gets a fresh token (the kubeconfig user's exec plugin run again).
pub type Refresh = std::sync::Arc<dyn Fn() -> Option<String> + Send + Sync>;

#[derive(Subcommand)]
enum Command {
    /// Print a deployment's log; with -f, follow it until it completes.
    Logs(LogsArgs),
    /// List deployments.
    Get {
        /// What to list: `deployments`.
        #[arg(value_parser = ["deployments", "deployment", "deploy"])]
        what: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: ListFormat,
        /// After the table, print a row each time a deployment appears or changes
        /// (status, steps or line count; the gateway's change feed, no polling), like
        /// `kubectl get -w`; Ctrl+C to stop.
        #[arg(short = 'w', long)]
        watch: bool,
        /// At most this many deployments, newest first [default: all].
        #[arg(long)]
        limit: Option<usize>,
        /// Only these statuses (comma-separated: running, succeeded, failed, cancelled,
        /// timed_out, completed).
        #[arg(long)]
        status: Option<String>,
    },
    /// One deployment's status and counts.
    Describe { id: String },
    /// Download a deployment's whole log (progress bar on a terminal; with -o,
    /// resumable: run the same command again after an interruption).
    Export {
        id: String,
        #[arg(long, value_parser = ["text", "ndjson", "csv"], default_value = "text")]
        format: String,
        /// Write to this file instead of standard output (via FILE.part, which a later
        /// run resumes).
        #[arg(short = 'o', long)]
        output: Option<std::path::PathBuf>,
        /// Discard an interrupted FILE.part and start over.
        #[arg(long, requires = "output")]
        restart: bool,
    },
    /// Run a command as a pipeline step: stream its output, exit with its code; a failing
    /// step completes the deployment (see --help for a three-step pipeline).
    #[command(after_long_help = run::PIPELINE_EXAMPLE)]
    Run(run::RunArgs),
    /// Complete a deployment (for a wrapper that decides how the pipeline ended).
    Complete(run::CompleteArgs),
    /// Mask a leaked secret in a stored log (scope logs:admin): --seq A-B and/or
    /// --match REGEX, --reason; audited, and `store verify` still passes and names it.
    Redact(hotfix::RedactArgs),
    /// Delete a deployment and every line of it (scope logs:admin); audited.
    Delete(hotfix::DeleteArgs),
    /// Serve the Model Context Protocol on stdin/stdout for an assistant or IDE (its
    /// tools and resources read deployments with this CLI's gateway and token; see the
    /// README for client configuration).
    Mcp,
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the version.
    Version,
}

#[derive(Clone, Copy, ValueEnum)]
enum ListFormat {
    Table,
    Json,
}

#[derive(Args)]
struct LogsArgs {
    /// Deployment id.
    id: String,
    /// Follow: stream new lines until the deployment completes; exit with its status.
    /// A deployment with no line yet (a queued pipeline) is waited for.
    #[arg(short = 'f', long)]
    follow: bool,
    /// With -f: give up waiting for a deployment with no line yet after this long
    /// (exit 5) [default: wait until Ctrl+C].
    #[arg(long, requires = "follow", value_name = "DURATION")]
    wait_timeout: Option<String>,
    /// No lines of our own on stderr (the waiting notice, the summary at the end).
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Remove the log's own ANSI escape sequences (colours, cursor moves) from messages
    /// [default: keep them, as raw logs do].
    #[arg(long)]
    strip_ansi: bool,
    /// Only lines newer than a duration (10m, 1h) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only the last N lines (then follow, with -f).
    #[arg(long)]
    tail: Option<usize>,
    /// Prefix each line with its timestamp.
    #[arg(long)]
    timestamps: bool,
    /// Levels: `error`, `warn+` (warn and above), `info,warn`.
    #[arg(long)]
    level: Option<String>,
    /// Only these steps (comma-separated).
    #[arg(long)]
    step: Option<String>,
    /// Only lines matching this regular expression.
    #[arg(long)]
    grep: Option<String>,
    /// Resume after this cursor.
    #[arg(long)]
    cursor: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
    /// How -f receives live lines: Server-Sent Events, or a WebSocket (batched frames;
    /// needs --server: the kubeconfig route carries SSE only).
    #[arg(long, value_enum, default_value = "sse")]
    transport: Transport,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Transport {
    Sse,
    Ws,
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Exit(pub i32, pub String);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Exit {}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // `run` handles Ctrl+C itself (it completes the deployment as cancelled).
    let is_run = matches!(cli.command, Command::Run(_));
    let code = rt.block_on(async move {
        if is_run {
            return match dispatch(cli).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    e.downcast_ref::<Exit>().map_or(4, |x| x.0)
                }
            };
        }
        tokio::select! {
            r = dispatch(cli) => match r {
                Ok(code) => code,
                Err(e) => {
                    let code = e.downcast_ref::<Exit>().map_or(4, |x| x.0);
                    eprintln!("error: {e:#}");
                    code
                }
            },
            _ = tokio::signal::ctrl_c() => {
                style::restore_terminal();
                130
            }
        }
    });
    std::process::exit(code);
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let mut conn = cli.conn;
    let needs_server = !matches!(cli.command, Command::Completion { .. } | Command::Version);
    if needs_server && conn.server.is_none() {
        let found = kube::discover(&kube::KubeOpts {
            kubeconfig: conn.kubeconfig.clone(),
            context: conn.context.clone(),
            namespace: conn.namespace.clone(),
            logstream: conn.logstream.clone(),
        })
        .await?;
        if std::env::var_os("LOGSTREAM_DEBUG").is_some() {
            eprintln!("gateway: {}", found.describe);
        }
        conn.server = Some(found.server);
        conn.via_kubeconfig = true;
        if conn.token.is_none() && conn.token_file.is_none() {
            conn.token = found.user_token;
            conn.refresh = found.refresh;
        }
    }
    match cli.command {
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "kubectl-logstream",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Command::Version => {
            println!("kubectl-logstream {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        Command::Logs(args) => logs(&Client::new(&conn)?, &conn, args).await,
        Command::Get {
            output,
            watch: false,
            limit,
            status,
            ..
        } => list(&Client::new(&conn)?, output, limit, status).await,
        Command::Get {
            output: ListFormat::Json,
            watch: true,
            ..
        } => Err(Exit(
            2,
            "-w prints table rows; use it without -o json (or poll `get deployments -o json`)"
                .into(),
        )
        .into()),
        Command::Get {
            watch: true,
            limit,
            status,
            ..
        } => watch_list(&Client::new(&conn)?, limit, status).await,
        Command::Describe { id } => describe(&Client::new(&conn)?, &id).await,
        Command::Export {
            id,
            format,
            output,
            restart,
        } => {
            export::export(
                &Client::new(&conn)?,
                export::ExportArgs {
                    id: &id,
                    format: &format,
                    output,
                    restart,
                },
            )
            .await
        }
        Command::Run(args) => run::run(Client::new(&conn)?, args).await,
        Command::Mcp => mcp(Client::new(&conn)?).await,
        Command::Complete(args) => run::complete_cmd(Client::new(&conn)?, args).await,
        Command::Redact(args) => hotfix::redact(&Client::new(&conn)?, args).await,
        Command::Delete(args) => hotfix::delete(&Client::new(&conn)?, args).await,
    }
}

/// The gateway client: base URL, token source, HTTP client.
#[derive(Clone)]
pub struct Client {
    base: String,
    /// The bearer token (replaced by `refresh` after a 401).
    token: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    refresh: Option<Refresh>,
    token_file: Option<std::path::PathBuf>,
    http: reqwest::Client,
    color: bool,
    /// The server is the local forwarder to the API server's service proxy.
    via_kubeconfig: bool,
}

impl Client {
    fn new(conn: &Conn) -> anyhow::Result<Client> {
        let Some(server) = conn.server.clone() else {
            return Err(Exit(
                2,
                "no gateway: pass --server URL or set LOGSTREAM_SERVER".into(),
            )
            .into());
        };
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Exit(
                2,
                format!("--server {server:?}: must start with http:// or https://"),
            )
            .into());
        }
        let color = style::enabled(conn.color);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Client {
            base,
            token: std::sync::Arc::new(std::sync::Mutex::new(conn.token.clone())),
            refresh: conn.refresh.clone(),
            token_file: conn.token_file.clone(),
            http,
            color,
            via_kubeconfig: conn.via_kubeconfig,
        })
    }

    /// The current token (the file is re-read each time, so a rotated token is picked up).
    fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(f) = &self.token_file {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("--token-file {}", f.display()))?;
            return Ok(Some(t.trim().to_owned()));
        }
        Ok(self.token.lock().expect("token lock").clone())
    }

    /// Whether a 401 may be cured by getting the token again.
    fn refreshable(&self) -> bool {
        self.token_file.is_some() || self.refresh.is_some()
    }

    /// Gets the token again where it comes from a command (the file is re-read anyway).
    fn refresh_token(&self) {
        if let Some(r) = &self.refresh
            && let Some(t) = r()
        {
            *self.token.lock().expect("token lock") = Some(t);
        }
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = self.token()? {
            r = r.bearer_auth(t);
        }
        Ok(r)
    }
}

impl logstream_mcp::api::TokenSource for Client {
    fn token(&self) -> Result<Option<String>, String> {
        Client::token(self).map_err(|e| format!("{e:#}"))
    }

    fn refresh(&self) -> bool {
        if !self.refreshable() {
            return false;
        }
        self.refresh_token();
        true
    }
}

/// `mcp`: the MCP server on stdio, calling the gateway as this CLI does.
async fn mcp(c: Client) -> anyhow::Result<i32> {
    let api = logstream_mcp::api::Api::new(&c.base)?;
    let shared = logstream_mcp::server::Shared::new(api, Default::default());
    logstream_mcp::serve_stdio(shared, std::sync::Arc::new(c))
        .await
        .context("serving MCP on stdin/stdout")?;
    Ok(0)
}

/// GETs `path` and parses the JSON answer; an error answer becomes its message.
async fn get_json<T: DeserializeOwned>(
    c: &Client,
    path: &str,
    query: &[(&str, String)],
) -> anyhow::Result<T> {
    let resp = c
        .request(reqwest::Method::GET, path)?
        .query(query)
        .send()
        .await
        .context("connecting to the gateway")?;
    if !resp.status().is_success() {
        return Err(api_error(resp).await);
    }
    let body = resp.bytes().await.context("reading the gateway's answer")?;
    serde_json::from_slice(&body).with_context(|| format!("the gateway's answer to GET {path}"))
}

/// Turns a gateway error answer into a message and exit code (see [`ApiError::exit`]).
async fn api_error(resp: reqwest::Response) -> anyhow::Error {
    ApiError::read(resp).await.exit()
}

/// A refusal: the gateway's error body (`wire::ErrorBody`) with its status and
/// `Retry-After`, or what stands in for one when the answer came from something in front
/// of the gateway (a proxy's HTML page, the API server's own `Status`).
#[derive(Debug)]
pub struct ApiError {
    status: reqwest::StatusCode,
    /// The contract's error code. A body that is not the gateway's counts as
    /// `unavailable` (retryable) on a 5xx or 429, and as final (no code) otherwise.
    code: String,
    message: String,
    retry_after: Option<Duration>,
}

/// The longest `Retry-After` honoured (a bigger one is taken as this).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

impl ApiError {
    /// Reads the error answer's body.
    async fn read(resp: reqwest::Response) -> ApiError {
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let body = resp.bytes().await.unwrap_or_default();
        ApiError::parse(status, retry_after, &body)
    }

    fn parse(status: reqwest::StatusCode, retry_after: Option<Duration>, body: &[u8]) -> ApiError {
        match serde_json::from_slice::<wire::ErrorBody>(body) {
            Ok(wire::ErrorBody { error }) => ApiError {
                status,
                code: error.code,
                message: error.message,
                retry_after,
            },
            Err(_) => {
                let transient =
                    status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                ApiError {
                    status,
                    code: if transient { "unavailable" } else { "" }.to_owned(),
                    message: format!("HTTP {status}"),
                    retry_after,
                }
            }
        }
    }

    /// Whether the contract allows trying again (after a backoff, and `retry_after`).
    fn retryable(&self) -> bool {
        logstream_model::retry::is_retryable(&self.code)
    }

    /// The error to end with: exit code 4 for what may pass (a retryable code: the
    /// server or the network), 2 for a final refusal.
    fn exit(self) -> anyhow::Error {
        let code = if self.retryable() { 4 } else { 2 };
        Exit(code, self.to_string()).into()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {})", self.message, self.status.as_u16())
    }
}

impl std::error::Error for ApiError {}

/// `Retry-After` in seconds (the form the gateway sends), at most [`MAX_RETRY_AFTER`].
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

fn query(args: &LogsArgs) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    for (k, v) in [
        ("since", &args.since),
        ("level", &args.level),
        ("step", &args.step),
        ("q", &args.grep),
    ] {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    }
    q
}

async fn logs(c: &Client, conn: &Conn, args: LogsArgs) -> anyhow::Result<i32> {
    logstream_model::validate_deployment_id(&args.id)
        .map_err(|e| Exit(2, format!("ID {:?}: {e}", args.id)))?;
    let mut printer = Printer::new(args.output, c.color, args.timestamps);
    printer.strip_ansi = args.strip_ansi;
    let wait_timeout = match &args.wait_timeout {
        None => None,
        Some(v) => Some(
            logstream_model::time::parse_duration(v)
                .filter(|n| *n > 0)
                .map(|n| Duration::from_nanos(n as u64))
                .ok_or_else(|| {
                    usage(format!(
                        "--wait-timeout {v:?}: use a duration like 10m or 90s"
                    ))
                })?,
        ),
    };
    if !args.follow {
        return history(c, &args, &mut printer).await.map(|()| 0);
    }
    if args.transport == Transport::Ws && c.via_kubeconfig {
        return Err(usage(format!(
            "--transport ws: the route found from the kubeconfig (context {}) carries SSE only; drop --transport or pass --server",
            conn.context.as_deref().unwrap_or("current")
        )));
    }
    // Follow: reconnect with the last cursor after any disconnect, backoff with jitter.
    let mut f = Follow {
        cursor: args.cursor.clone(),
        tail: args.tail,
        attempt: 0,
        unauthorized: 0,
        waiting: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        said_waiting: args.quiet,
    };
    // Fires once the deadline has passed while the gateway says the deployment has no
    // line yet; never once it started.
    let deadline = wait_timeout.map(|t| tokio::time::Instant::now() + t);
    let waiting = f.waiting.clone();
    let gave_up = async move {
        let Some(deadline) = deadline else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(deadline).await;
        while !waiting.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::pin!(gave_up);
    loop {
        let follow = async {
            match args.transport {
                Transport::Sse => follow_sse(c, &args, &mut f, &mut printer).await,
                Transport::Ws => follow_ws(c, &args, &mut f, &mut printer).await,
            }
        };
        let ended = tokio::select! {
            ended = follow => ended?,
            () = &mut gave_up => {
                return Err(Exit(
                    5,
                    format!(
                        "deployment {} did not start within {} (--wait-timeout)",
                        args.id,
                        args.wait_timeout.as_deref().unwrap_or_default()
                    ),
                )
                .into());
            }
        };
        printer.flush()?;
        match ended {
            Session::End(end) => {
                let code = follow_code(&end);
                if !args.quiet {
                    eprintln!("{}", summary(c, &args.id, &end).await);
                }
                return Ok(code);
            }
            Session::Dropped { why, at_least } => {
                f.attempt += 1;
                reconnect_wait(c, f.attempt, &why, at_least).await;
            }
        }
    }
}

/// The exit code of a follow that saw its deployment complete.
fn follow_code(end: &wire::Completion) -> i32 {
    match end.status.as_str() {
        "succeeded" => 0,
        "cancelled" => 3,
        "timed_out" => 5,
        _ => 1,
    }
}

/// The line said on stderr after the last log line of a follow: status, exit code,
/// duration and lines (the output may be a pipe nobody reads; `-q` leaves it out).
async fn summary(c: &Client, id: &str, end: &wire::Completion) -> String {
    let what = match end.status.as_str() {
        "succeeded" => "succeeded".to_owned(),
        "failed" => format!("failed (exit code {})", end.exit_code),
        "cancelled" => "was cancelled".to_owned(),
        "timed_out" => "timed out: nobody completed it and no line came for the gateway's deployment idle timeout (its runner may have died)".to_owned(),
        other => format!("ended as {other} (exit code {})", end.exit_code),
    };
    // Duration and lines from the deployment itself; without them the status still says
    // what matters.
    let d: Option<wire::Deployment> = get_json(c, &format!("/v1/deployments/{id}"), &[])
        .await
        .ok();
    let Some(d) = d else {
        return format!("deployment {id} {what}");
    };
    let took = match (
        logstream_model::time::parse_rfc3339(&d.created_at),
        d.completed_at
            .as_deref()
            .and_then(logstream_model::time::parse_rfc3339),
    ) {
        (Some(a), Some(b)) if b >= a => format!(" after {}", output::age(b - a)),
        _ => String::new(),
    };
    let lines = if d.lines == 1 { "line" } else { "lines" };
    format!("deployment {id} {what}{took}, {} {lines}", d.lines)
}

/// Where a follow is, across reconnections.
struct Follow {
    cursor: Option<String>,
    /// `--tail N`, until the first line arrives (then the cursor rules).
    tail: Option<usize>,
    attempt: u32,
    unauthorized: u32,
    /// The gateway said the deployment has no line yet (cleared by the first line).
    waiting: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The waiting notice was printed (or `-q`).
    said_waiting: bool,
}

impl Follow {
    fn query(&self, args: &LogsArgs) -> Vec<(&'static str, String)> {
        let mut q = query(args);
        // A deployment with no line yet is waited for (a queued pipeline's link).
        q.push(("wait", "true".to_owned()));
        if self.cursor.is_none()
            && let Some(n) = self.tail
        {
            q.push(("tail", n.to_string()));
        }
        q
    }

    /// A line arrived: print it now (live output shows up at once, also through a pipe).
    /// The gateway holds the stream until the deployment's first line.
    fn waiting(&mut self, id: &str) {
        self.attempt = 0;
        self.waiting
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if !self.said_waiting {
            self.said_waiting = true;
            eprintln!("waiting for deployment {id} to start (no line yet)...");
        }
    }

    fn line(&mut self, printer: &mut Printer, line: wire::Line) -> anyhow::Result<()> {
        self.waiting
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.attempt = 0;
        self.unauthorized = 0;
        printer.line(&line)?;
        self.cursor = Some(line.cursor);
        self.tail = None;
        Ok(())
    }

    /// How a refused connection ends the session: reconnect when its code may be
    /// retried (`unavailable` and the like, after any `Retry-After`), or on a 401 while
    /// the token can be got again (a token file being rotated, the kubeconfig's exec
    /// plugin); otherwise the refusal is final (a viewer limit, a missing deployment).
    fn refused(&mut self, c: &Client, e: ApiError) -> anyhow::Result<Session> {
        let retry = if e.status == reqwest::StatusCode::UNAUTHORIZED {
            let refreshable = c.refreshable() && self.unauthorized < 5;
            if refreshable {
                self.unauthorized += 1;
                c.refresh_token();
            }
            refreshable
        } else {
            e.retryable()
        };
        if !retry {
            return Err(e.exit());
        }
        Ok(Session::Dropped {
            why: format!("HTTP {}", e.status),
            at_least: e.retry_after,
        })
    }
}

/// How one connection of a follow ended.
enum Session {
    /// The deployment completed.
    End(wire::Completion),
    /// Reconnect: why (for the status line), and not sooner than `at_least`.
    Dropped {
        why: String,
        at_least: Option<Duration>,
    },
}

impl Session {
    fn dropped(why: impl Into<String>) -> Session {
        Session::Dropped {
            why: why.into(),
            at_least: None,
        }
    }
}

/// A WebSocket text frame of a live stream.
#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WsFrame {
    /// `{"type":"lines","lines":[Line]}`
    Lines { lines: Vec<wire::Line> },
    /// `{"type":"end", ...Completion}`
    End(wire::Completion),
    /// `{"type":"waiting", "message": ...}`: the deployment has no line yet.
    Waiting,
    /// A frame type this version does not know: ignored.
    #[serde(other)]
    Other,
}

async fn follow_sse(
    c: &Client,
    args: &LogsArgs,
    f: &mut Follow,
    printer: &mut Printer,
) -> anyhow::Result<Session> {
    let mut req = c
        .request(
            reqwest::Method::GET,
            &format!("/v1/deployments/{}/stream", args.id),
        )?
        .query(&f.query(args))
        .header("accept", "text/event-stream");
    if let Some(cur) = &f.cursor {
        req = req.header("last-event-id", cur);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Ok(Session::dropped(e.to_string())),
    };
    if !resp.status().is_success() {
        return f.refused(c, ApiError::read(resp).await);
    }
    let mut events = resp.bytes_stream().eventsource();
    while let Some(Ok(ev)) = events.next().await {
        match ev.event.as_str() {
            "line" => {
                let line: wire::Line =
                    serde_json::from_str(&ev.data).context("a line from the gateway")?;
                f.line(printer, line)?;
                printer.flush()?;
            }
            "end" => {
                let end: wire::Completion =
                    serde_json::from_str(&ev.data).context("the end event from the gateway")?;
                return Ok(Session::End(end));
            }
            "waiting" => f.waiting(&args.id),
            // Retry hint and comments come without an event name.
            "" | "message" => {}
            // reconnect (gateway restarting), auth_expired (token re-read on reconnect)
            _ => break,
        }
    }
    Ok(Session::dropped("stream interrupted"))
}

async fn follow_ws(
    c: &Client,
    args: &LogsArgs,
    f: &mut Follow,
    printer: &mut Printer,
) -> anyhow::Result<Session> {
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
    let mut q = f.query(args);
    if let Some(cur) = &f.cursor {
        q.push(("cursor", cur.clone()));
    }
    let mut url = reqwest::Url::parse(&format!("{}/v1/deployments/{}/stream", c.base, args.id))
        .context("--server")?;
    url.query_pairs_mut().extend_pairs(&q);
    let ws_url = url.as_str().replacen("http", "ws", 1);
    let mut req = ws_url.into_client_request().context("--server")?;
    if let Some(t) = c.token()? {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().context("the token")?,
        );
    }
    let (mut ws, _) = match tokio_tungstenite::connect_async(req).await {
        Ok(ok) => ok,
        Err(tungstenite::Error::Http(resp)) => {
            let status = reqwest::StatusCode::from_u16(resp.status().as_u16())
                .unwrap_or(reqwest::StatusCode::BAD_GATEWAY);
            let body = resp.body().as_deref().unwrap_or_default();
            return f.refused(
                c,
                ApiError::parse(status, retry_after(resp.headers()), body),
            );
        }
        Err(e) => return Ok(Session::dropped(e.to_string())),
    };
    while let Some(msg) = ws.next().await {
        let text = match msg {
            Ok(tungstenite::Message::Text(t)) => t,
            Ok(tungstenite::Message::Close(frame)) => {
                let why = frame.map_or_else(|| "closed".to_owned(), |f| f.reason.to_string());
                return Ok(Session::dropped(why));
            }
            Ok(_) => continue,
            Err(e) => return Ok(Session::dropped(e.to_string())),
        };
        match serde_json::from_str(&text).context("a frame from the gateway")? {
            WsFrame::Lines { lines } => {
                for line in lines {
                    f.line(printer, line)?;
                }
                printer.flush()?;
            }
            WsFrame::End(end) => return Ok(Session::End(end)),
            WsFrame::Waiting => f.waiting(&args.id),
            WsFrame::Other => {}
        }
    }
    Ok(Session::dropped("stream interrupted"))
}

/// Exponential backoff with jitter (200 ms doubling, at most 10 s; at least the
/// server's `Retry-After`), one dim status line on stderr. `attempt` counts from 1.
async fn reconnect_wait(c: &Client, attempt: u32, why: &str, at_least: Option<Duration>) {
    let wait = logstream_model::retry::backoff(
        attempt.saturating_sub(1),
        Duration::from_millis(200),
        Duration::from_secs(10),
        rand::random(),
    )
    .max(at_least.unwrap_or_default());
    let msg = format!("reconnecting in {:.1}s ({why})", wait.as_secs_f64());
    eprintln!("{}", style::dim(c.color, msg));
    tokio::time::sleep(wait).await;
}

async fn history(c: &Client, args: &LogsArgs, printer: &mut Printer) -> anyhow::Result<()> {
    let path = format!("/v1/deployments/{}/logs", args.id);
    let mut q = query(args);
    // --tail N: the last N lines, read backwards then printed in order.
    if let Some(n) = args.tail {
        q.push(("direction", "backward".into()));
        q.push(("limit", n.clamp(1, 5000).to_string()));
        let page: wire::HistoryPage = get_json(c, &path, &q).await?;
        let mut lines = page.lines;
        lines.truncate(n);
        for l in lines.iter().rev() {
            printer.line(l)?;
        }
        return printer.flush();
    }
    let mut cursor = args.cursor.clone();
    loop {
        let mut q = q.clone();
        q.push(("limit", "5000".into()));
        if let Some(cur) = &cursor {
            q.push(("cursor", cur.clone()));
        }
        let page: wire::HistoryPage = get_json(c, &path, &q).await?;
        for l in &page.lines {
            printer.line(l)?;
        }
        if page.lines.is_empty() {
            return printer.flush();
        }
        cursor = Some(page.next_cursor);
    }
}

const LIST_HEADERS: [&str; 6] = ["ID", "STATUS", "STEPS", "LINES", "SIZE", "AGE"];

/// The deployments, newest first: pages of up to 1,000 until `limit` or the end.
async fn list_all(
    c: &Client,
    limit: Option<usize>,
    status: &Option<String>,
) -> anyhow::Result<wire::DeploymentList> {
    let mut all = wire::DeploymentList {
        deployments: Vec::new(),
        next_cursor: None,
    };
    let mut cursor: Option<String> = None;
    loop {
        let want = limit.map_or(1000, |l| (l - all.deployments.len()).min(1000));
        if want == 0 {
            return Ok(all);
        }
        let mut q = vec![("limit", want.to_string())];
        q.extend(cursor.take().map(|c| ("cursor", c)));
        q.extend(status.clone().map(|s| ("status", s)));
        let page: wire::DeploymentList = get_json(c, "/v1/deployments", &q).await?;
        all.deployments.extend(page.deployments);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(all),
        }
    }
}

async fn list(
    c: &Client,
    output: ListFormat,
    limit: Option<usize>,
    status: Option<String>,
) -> anyhow::Result<i32> {
    let body = list_all(c, limit, &status).await?;
    if let ListFormat::Json = output {
        // Through serde_json's map: keys sorted, as this has always printed them.
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::to_value(&body)?)?
        );
        return Ok(0);
    }
    output::table(&LIST_HEADERS, &list_rows(&body));
    Ok(0)
}

/// `get deployments -w`: the table, then one row per appearance or change, from the
/// gateway's change feed (`/v1/deployments/events`). The feed is opened before the
/// listing, so no change falls between the two; after a drop (or a `resync`) it is
/// opened and the listing read again, and only rows that changed meanwhile are printed.
/// Runs until interrupted; a dropped feed is reported once (dim) and retried.
async fn watch_list(
    c: &Client,
    limit: Option<usize>,
    status: Option<String>,
) -> anyhow::Result<i32> {
    let mut widths: Option<Vec<usize>> = None;
    // Key: id -> (status, steps and lines): what makes a row worth printing again.
    let key = |r: &[String; 6]| (r[1].clone(), r[2].clone() + " " + &r[3]);
    let mut seen: std::collections::HashMap<String, (String, String)> = Default::default();
    let mut attempt = 0u32;
    loop {
        let dropped = match c
            .request(reqwest::Method::GET, "/v1/deployments/events")?
            .header("accept", "text/event-stream")
            .send()
            .await
        {
            Err(e) => e.to_string(),
            Ok(r) if !r.status().is_success() => {
                let e = ApiError::read(r).await;
                if !e.retryable() && e.status != reqwest::StatusCode::UNAUTHORIZED {
                    return Err(e.exit());
                }
                c.refresh_token();
                e.to_string()
            }
            Ok(resp) => {
                let body = list_all(c, limit, &status).await?;
                let rows = list_rows(&body);
                let w = match &widths {
                    Some(w) => w.clone(),
                    None => {
                        let w = output::table(&LIST_HEADERS, &rows);
                        seen = rows.iter().map(|r| (r[0].clone(), key(r))).collect();
                        widths = Some(w.clone());
                        w
                    }
                };
                for r in &rows {
                    if seen.get(&r[0]) != Some(&key(r)) {
                        seen.insert(r[0].clone(), key(r));
                        output::row(&w, r);
                    }
                }
                if attempt > 0 {
                    eprintln!("{}", style::dim(c.color, "watch: following changes again"));
                }
                attempt = 0;
                let wanted = |d: &wire::Deployment| {
                    status.as_deref().is_none_or(|s| {
                        s.split(',').any(|s| {
                            let s = s.trim();
                            s == d.status || (s == "completed" && d.status != "running")
                        })
                    })
                };
                let mut events = resp.bytes_stream().eventsource();
                let mut why = "the change feed ended".to_owned();
                while let Some(ev) = events.next().await {
                    let Ok(ev) = ev else {
                        why = "the change feed broke".into();
                        break;
                    };
                    match ev.event.as_str() {
                        "created" | "updated" | "completed" => {
                            let d: wire::Deployment = serde_json::from_str(&ev.data)
                                .context("a change from the gateway")?;
                            if !wanted(&d) {
                                continue;
                            }
                            let rows = list_rows(&wire::DeploymentList {
                                deployments: vec![d],
                                next_cursor: None,
                            });
                            let r = &rows[0];
                            if seen.get(&r[0]) != Some(&key(r)) {
                                seen.insert(r[0].clone(), key(r));
                                output::row(&w, r);
                            }
                        }
                        "deleted" => {
                            if let Ok(d) = serde_json::from_str::<wire::Deployment>(&ev.data) {
                                seen.remove(&d.id);
                            }
                        }
                        // resync (changes missed), reconnect (restart), auth_expired
                        // (the token is read again on reconnect).
                        "resync" | "reconnect" | "auth_expired" => {
                            why = format!("the gateway said {}", ev.event);
                            if ev.event == "auth_expired" {
                                c.refresh_token();
                            }
                            break;
                        }
                        _ => {}
                    }
                }
                why
            }
        };
        attempt += 1;
        if attempt == 1 {
            eprintln!(
                "{}",
                style::dim(c.color, format!("watch: {dropped}; reconnecting"))
            );
        }
        tokio::time::sleep(logstream_model::retry::backoff(
            attempt,
            Duration::from_millis(200),
            Duration::from_secs(10),
            rand::random(),
        ))
        .await;
    }
}

fn list_rows(body: &wire::DeploymentList) -> Vec<[String; 6]> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    body.deployments
        .iter()
        .map(|d| {
            let age = logstream_model::time::parse_rfc3339(&d.created_at)
                .map_or("?".into(), |t| output::age(now - t));
            let status = match (d.status.as_str(), d.exit_code) {
                ("running", _) | (_, None) => d.status.clone(),
                (s, Some(code)) => format!("{s} ({code})"),
            };
            [
                d.id.clone(),
                status,
                steps_cell(&d.steps),
                d.lines.to_string(),
                output::bytes(d.bytes),
                age,
            ]
        })
        .collect()
}

/// `build,test,+3`: the first steps by name, then how many more.
fn steps_cell(names: &[String]) -> String {
    if names.is_empty() {
        return "<none>".into();
    }
    let mut cell = String::new();
    for (i, n) in names.iter().enumerate() {
        if cell.len() + n.len() > 30 && i > 0 {
            cell.push_str(&format!(",+{}", names.len() - i));
            break;
        }
        if i > 0 {
            cell.push(',');
        }
        cell.push_str(n);
    }
    cell
}

async fn describe(c: &Client, id: &str) -> anyhow::Result<i32> {
    logstream_model::validate_deployment_id(id).map_err(|e| Exit(2, format!("ID {id:?}: {e}")))?;
    let d: wire::Deployment = get_json(c, &format!("/v1/deployments/{id}"), &[]).await?;
    print!("{}", describe_text(&d));
    Ok(0)
}

/// `key:` and value, one a line; absent values are left out.
fn describe_text(d: &wire::Deployment) -> String {
    let rows: [(&str, Option<String>); 11] = [
        ("id", Some(d.id.clone())),
        ("status", Some(d.status.clone())),
        ("exit_code", d.exit_code.map(|c| c.to_string())),
        ("lines", Some(d.lines.to_string())),
        ("bytes", Some(d.bytes.to_string())),
        ("first_ts", d.first_ts.clone()),
        ("last_ts", d.last_ts.clone()),
        ("created_at", Some(d.created_at.clone())),
        ("completed_at", d.completed_at.clone()),
        ("steps", Some(d.steps.join(", "))),
        ("viewers", d.viewers.map(|v| v.to_string())),
    ];
    let mut out = String::new();
    for (key, value) in rows {
        if let Some(value) = value {
            out.push_str(&format!("{:<13}{value}\n", format!("{key}:")));
        }
    }
    out
}

/// Exit code 2 and a message, for usage errors found after parsing.
fn usage(msg: impl Into<String>) -> anyhow::Error {
    Exit(2, msg.into()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    fn exit_of(e: anyhow::Error) -> (i32, String) {
        let x = e.downcast_ref::<Exit>().expect("an Exit");
        (x.0, x.1.clone())
    }

    #[test]
    fn refusals_are_retried_by_their_code_not_their_status() {
        let body = |code: &str| {
            serde_json::to_vec(&wire::ErrorBody::new(code, &format!("{code} happened"))).unwrap()
        };
        // Viewer limits are 429s but final: exit 2 with the gateway's message.
        for code in [
            "viewers_per_deployment",
            "viewers_per_tenant",
            "streams_per_token",
        ] {
            let e = ApiError::parse(
                StatusCode::TOO_MANY_REQUESTS,
                Some(Duration::from_secs(5)),
                &body(code),
            );
            assert!(!e.retryable(), "{code}");
            assert_eq!(
                exit_of(e.exit()),
                (2, format!("{code} happened (HTTP 429)"))
            );
        }
        let e = ApiError::parse(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(3)),
            &body("quota_exceeded"),
        );
        assert!(e.retryable());
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        assert_eq!(exit_of(e.exit()).0, 4);
        for (status, code) in [
            (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
            (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        ] {
            assert!(
                ApiError::parse(status, None, &body(code)).retryable(),
                "{code}"
            );
        }
        for (status, code) in [
            (StatusCode::CONFLICT, "deployment_completed"),
            (StatusCode::NOT_FOUND, "deployment_not_found"),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            (StatusCode::FORBIDDEN, "missing_scope"),
            // An unknown code is final, whatever the status.
            (StatusCode::SERVICE_UNAVAILABLE, "something_new"),
        ] {
            let e = ApiError::parse(status, None, &body(code));
            assert!(!e.retryable(), "{code}");
            assert_eq!(exit_of(e.exit()).0, 2, "{code}");
        }
    }

    #[test]
    fn an_answer_that_is_not_the_gateways_is_unavailable_when_5xx_or_429() {
        let html = b"<html><body>502 Bad Gateway</body></html>";
        let status_json = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"no endpoints available","reason":"ServiceUnavailable","code":503}"#;
        for (status, body) in [
            (StatusCode::BAD_GATEWAY, html.as_slice()),
            (StatusCode::SERVICE_UNAVAILABLE, status_json.as_slice()),
            (StatusCode::GATEWAY_TIMEOUT, b"".as_slice()),
            (StatusCode::TOO_MANY_REQUESTS, b"slow down".as_slice()),
        ] {
            let e = ApiError::parse(status, None, body);
            assert_eq!(e.code, "unavailable", "{status}");
            assert!(e.retryable());
        }
        let e = ApiError::parse(StatusCode::BAD_GATEWAY, None, html);
        assert_eq!(
            exit_of(e.exit()),
            (4, "HTTP 502 Bad Gateway (HTTP 502)".to_owned())
        );
        // A foreign 4xx (a proxy's 404 or 403 page) is final, as before.
        let e = ApiError::parse(StatusCode::NOT_FOUND, None, html);
        assert!(!e.retryable());
        assert_eq!(
            exit_of(e.exit()),
            (2, "HTTP 404 Not Found (HTTP 404)".to_owned())
        );
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(http::header::RETRY_AFTER, v.parse().unwrap());
            m
        };
        assert_eq!(retry_after(&h("5")), Some(Duration::from_secs(5)));
        assert_eq!(retry_after(&h("86400")), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after(&h("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after(&http::HeaderMap::new()), None);
    }

    #[test]
    fn websocket_frames_are_lines_end_or_ignored() {
        let line = r#"{"cursor":"c1","seq":1,"ts":"2024-01-02T03:04:05.000000000Z","step":"build","stream":"stdout","level":"info","message":"hi"}"#;
        let frame: WsFrame =
            serde_json::from_str(&format!(r#"{{"type":"lines","lines":[{line}]}}"#)).unwrap();
        let WsFrame::Lines { lines } = frame else {
            panic!("lines")
        };
        assert_eq!(lines.len(), 1);
        assert_eq!((lines[0].cursor.as_str(), lines[0].seq), ("c1", 1));
        let frame: WsFrame =
            serde_json::from_str(r#"{"type":"end","status":"failed","exit_code":3,"last_seq":9}"#)
                .unwrap();
        let WsFrame::End(end) = frame else {
            panic!("end")
        };
        assert_eq!(
            end,
            wire::Completion {
                status: "failed".into(),
                exit_code: 3,
                last_seq: 9
            }
        );
        let frame: WsFrame = serde_json::from_str(r#"{"type":"news","x":1}"#).unwrap();
        assert!(matches!(frame, WsFrame::Other));
        assert!(serde_json::from_str::<WsFrame>(r#"{"type":"lines"}"#).is_err());
    }

    fn deployment() -> wire::Deployment {
        wire::Deployment {
            id: "d1".into(),
            status: "failed".into(),
            exit_code: Some(3),
            lines: 42,
            first_seq: 1,
            last_seq: 42,
            bytes: 2048,
            first_ts: Some("2024-01-02T03:04:05.000000000Z".into()),
            last_ts: None,
            created_at: "2024-01-02T03:04:00.000000000Z".into(),
            updated_at: None,
            completed_at: None,
            steps: vec!["build".into(), "test".into()],
            viewers: Some(2),
        }
    }

    #[test]
    fn describe_prints_the_present_fields_in_order() {
        assert_eq!(
            describe_text(&deployment()),
            "id:          d1\n\
             status:      failed\n\
             exit_code:   3\n\
             lines:       42\n\
             bytes:       2048\n\
             first_ts:    2024-01-02T03:04:05.000000000Z\n\
             created_at:  2024-01-02T03:04:00.000000000Z\n\
             steps:       build, test\n\
             viewers:     2\n"
        );
    }

    #[test]
    fn list_rows_show_status_with_exit_code_and_abbreviated_steps() {
        let mut running = deployment();
        running.status = "running".into();
        running.exit_code = None;
        running.steps = (0..10).map(|i| format!("step-number-{i}")).collect();
        let rows = list_rows(&wire::DeploymentList {
            deployments: vec![deployment(), running],
            next_cursor: None,
        });
        assert_eq!(
            rows[0][..5],
            ["d1", "failed (3)", "build,test", "42", "2.0KiB"]
        );
        assert_eq!(rows[1][1], "running");
        assert_eq!(rows[1][2], "step-number-0,step-number-1,+8");
        assert!(rows[0][5].ends_with('d'), "{}", rows[0][5]);
        assert_eq!(steps_cell(&[]), "<none>");
    }
}
